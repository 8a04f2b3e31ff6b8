"""Rule-based rewards for zero RL: extract the final \\boxed{} answer and check it against the gold one.

The reward is the only training signal in zero RL, so every grading mistake is taught to the model.
The rules, each applied the same way to the gold answer and to the prediction:

  Extraction
    - The answer is the content of the LAST \\boxed{...} (or \\fbox{...}), braces matched:
      "so \\boxed{\\frac{1}{2}}"  ->  "\\frac{1}{2}".
    - A response cut off inside its box has no answer: "\\boxed{\\frac{1}{2"  ->  None.
    - No fallback to "the last number in the text" for training rewards: an unboxed answer scores as
      "no answer", so the policy is never taught to skip the format.

  Normalization (string level)
    - Strip $, spaces, \\left/\\right, thin spaces (\\, \\! \\;), \\dfrac/\\tfrac -> \\frac, a trailing
      period, "^\\circ" degree marks, and \\text{...} wrappers: "\\text{(B)}" -> "(B)", "5." -> "5".
    - Thousands separators only when they are well formed: "1,000,000" -> "1000000", but "3,2" stays a pair.
    - A leading "x =" style variable assignment is dropped: "x=5" matches "5".

  Equivalence
    1. Equal normalized strings.
    2. Both sides parse as numbers: compared as exact rationals, "0.5" == "\\frac{1}{2}" == "1/2",
       "-\\frac{3}{4}" == "-0.75". No x100 or /100 leniency: "50" != "0.5".

  Safety
    - Nothing here calls eval, sympify or parse_expr on model text; answers longer than
      MAX_ANSWER_CHARS are rejected before any parsing.

Reward schemes (--reward-scheme):
    correct   1.0 if the boxed answer is right, else 0.0 (SimpleRL-Zoo).
    simplerl  +1.0 right and boxed, -0.5 boxed but wrong, -1.0 no boxed answer (SimpleRL blog).
A truncated response (finish reason "length") is graded like any other: if the cut fell before a
complete \\boxed{}, it has no answer and gets the no-answer reward.
"""

import argparse
import json
import re
import sys
import time
from fractions import Fraction

MAX_ANSWER_CHARS = 1000  # longer "answers" are rambling or hostile; no real gold answer comes close

REWARD_SCHEMES = ("correct", "simplerl")


#### Extraction

def extract_boxed(text):
    """The content of the last \\boxed{...} or \\fbox{...} in `text`, or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    # "\boxed{" must follow directly; "\boxed 5" and other forms are not answers we accept.
    command_end = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if brace != command_end:
        return None
    depth = 0
    for position in range(brace, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1:position]
    return None  # the box was never closed: the response was cut off inside it


#### Normalization

_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_ASSIGNMENT = re.compile(r"^[a-zA-Z]\s*=\s*(?=[^=])")


def _unwrap_command(text, command):
    """Replace every \\command{content} by content (brace-matched)."""
    marker = "\\" + command + "{"
    while marker in text:
        start = text.find(marker)
        depth = 0
        for position in range(start + len(marker) - 1, len(text)):
            if text[position] == "{":
                depth += 1
            elif text[position] == "}":
                depth -= 1
                if depth == 0:
                    break
        else:
            return text  # unbalanced: leave as is
        inner = text[start + len(marker):position]
        text = text[:start] + inner + text[position + 1:]
    return text


def normalize_answer(answer):
    text = answer.strip()
    for command in ("text", "textbf", "mathrm", "mbox"):
        text = _unwrap_command(text, command)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace("\\left", "").replace("\\right", "")
    for thin_space in ("\\,", "\\!", "\\;", "\\:", "\\ ", "~"):
        text = text.replace(thin_space, "")
    text = text.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "%")
    text = text.replace("$", "").replace(" ", "").replace("\n", "")
    text = _ASSIGNMENT.sub("", text)
    text = text.rstrip(".")
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    return text


_INTEGER_OR_DECIMAL = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)$")
_LATEX_FRACTION = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_LATEX_FRACTION_SHORT = re.compile(r"^(-?)\\frac(\d)(\d)$")  # \frac12
_SLASH_FRACTION = re.compile(r"^(-?\d+)/(-?\d+)$")


def parse_number(text):
    """An exact Fraction for integers, decimals and simple fractions; None for anything else."""
    if _INTEGER_OR_DECIMAL.match(text):
        return Fraction(text)
    for pattern in (_LATEX_FRACTION, _LATEX_FRACTION_SHORT):
        match = pattern.match(text)
        if match:
            sign, numerator, denominator = match.groups()
            if int(denominator) == 0:
                return None
            value = Fraction(int(numerator), int(denominator))
            return -value if sign else value
    match = _SLASH_FRACTION.match(text)
    if match and int(match.group(2)) != 0:
        return Fraction(int(match.group(1)), int(match.group(2)))
    return None


#### Equivalence

def answers_match(prediction, gold):
    """True when the extracted prediction is equivalent to the gold answer (rules in the module docstring)."""
    if prediction is None or gold is None:
        return False
    if len(prediction) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    prediction, gold = normalize_answer(prediction), normalize_answer(gold)
    if prediction == gold:
        return True
    predicted_number, gold_number = parse_number(prediction), parse_number(gold)
    if predicted_number is not None and gold_number is not None:
        return predicted_number == gold_number
    return False


#### Rewards

def grade_response(response, gold, reward_scheme="correct"):
    """(pred, correct, reward) for one response: pred is the extracted answer or None."""
    if reward_scheme not in REWARD_SCHEMES:
        raise ValueError(f"unknown reward scheme {reward_scheme!r}; choose from {REWARD_SCHEMES}")
    prediction = extract_boxed(response)
    correct = answers_match(prediction, gold)
    if reward_scheme == "correct":
        reward = 1.0 if correct else 0.0
    else:  # simplerl
        reward = 1.0 if correct else (-0.5 if prediction is not None else -1.0)
    return prediction, correct, reward


def grade_batch(responses, golds, reward_scheme="correct"):
    """Grade one rollout batch. Returns a dict of lists: pred, correct, reward."""
    graded = [grade_response(response, gold, reward_scheme) for response, gold in zip(responses, golds)]
    return {
        "pred": [prediction for prediction, _, _ in graded],
        "correct": [correct for _, correct, _ in graded],
        "reward": [reward for _, _, reward in graded],
    }


#### Command line: grade a jsonl file of {"response", "gold"} rows

def main():
    parser = argparse.ArgumentParser(description="Grade responses against gold answers.")
    parser.add_argument("--input", required=True, help="jsonl with 'response' and 'gold' on each line")
    parser.add_argument("--output", required=True, help="jsonl: each input row plus pred, correct, reward")
    parser.add_argument("--reward-scheme", default="correct", choices=REWARD_SCHEMES)
    args = parser.parse_args()

    rows = []
    with open(args.input) as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                sys.exit(f"{args.input}:{line_number}: not valid JSON ({error})")
            if not isinstance(row, dict) or not isinstance(row.get("response"), str) or "gold" not in row:
                sys.exit(f"{args.input}:{line_number}: needs a string 'response' and a 'gold' field")
            rows.append(row)

    start = time.perf_counter()
    graded = grade_batch([row["response"] for row in rows], [str(row["gold"]) for row in rows],
                         args.reward_scheme)
    seconds = time.perf_counter() - start
    with open(args.output, "w") as file:
        for index, row in enumerate(rows):
            row.update(pred=graded["pred"][index], correct=graded["correct"][index],
                       reward=graded["reward"][index])
            file.write(json.dumps(row) + "\n")
    accuracy = sum(graded["correct"]) / max(len(rows), 1)
    print(f"graded {len(rows)} responses: accuracy {accuracy:.4f}, "
          f"{len(rows) / max(seconds, 1e-9):.0f} pairs/s", file=sys.stderr)


if __name__ == "__main__":
    main()
