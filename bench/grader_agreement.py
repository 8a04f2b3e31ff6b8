"""How often reward.py agrees with references it did not write: the stored verdicts of 800 graded model
responses, and the worked solutions of the evaluation sets against their own gold answers.

    python bench/grader_agreement.py [--data ../shared/data]

Prints one line per source (agreed / total) and every disagreement, so a grader change can be compared
before and after on the same material.
"""
import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reward import close_workers, extract_boxed, grade_batch  # noqa: E402


def rows_of(path):
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stored_verdicts(data):
    responses, golds, stored, keys = [], [], [], []
    for row in rows_of(data / "samples/eval_rm_maj_example/math_cot_100.jsonl"):
        for sample, (response, score) in enumerate(zip(row["code"], row["score"])):
            responses.append(response)
            golds.append(row["gt"])
            stored.append(bool(score))
            keys.append(f"{row['idx']}/{sample}")
    return responses, golds, stored, keys


def solutions(data):
    """Every eval row with a worked solution that ends in a box: the solution graded against the answer."""
    responses, golds, keys = [], [], []
    for path in sorted((data / "eval").glob("*/*.json*")):
        for index, row in enumerate(rows_of(path)):
            solution = row.get("solution")
            solution = "\n".join(solution) if isinstance(solution, list) else solution
            if not isinstance(solution, str) or extract_boxed(solution) is None:
                continue
            responses.append(solution)
            golds.append(row.get("answer", extract_boxed(solution)))
            keys.append(f"{path.parent.name}/{index}")
    return responses, golds, [True] * len(responses), keys


SIX_BENCHMARKS = ("gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23")


def labelled_golds(data):
    """Gold answers of the six benchmarks written as "label = value" (OlympiadBench's "$M=2^{N-2}+1$",
    MATH500's "x=5"): the bare value, as a model would box it, must be judged equal to the gold."""
    responses, golds, keys = [], [], []
    for name in SIX_BENCHMARKS:
        for path in sorted((data / "eval" / name).glob("*.json*")):
            for index, row in enumerate(rows_of(path)):
                answers = row.get("final_answer", row.get("answer"))
                for answer in answers if isinstance(answers, list) else [answers]:
                    text = str(answer).strip().strip("$").strip()
                    if text.count("=") != 1 or any(c in text for c in "<>,") or "\\le" in text or "\\ge" in text:
                        continue
                    label, value = text.split("=")
                    if not label.strip() or not value.strip() or re.search(r"\d", re.sub(r"_\{[^{}]*\}|\([^()]*\)", "", label)):
                        continue  # "5x - 7y + 11z + 4 = 0" is an equation, not a labelled value
                    responses.append(f"\\boxed{{{value.strip()}}}")
                    golds.append(text)
                    keys.append(f"{name}/{index}")
    return responses, golds, [True] * len(responses), keys


def report(name, responses, golds, expected, keys):
    graded = grade_batch(responses, golds)
    disagreements = [(key, gold, prediction, want) for key, gold, prediction, want, got
                     in zip(keys, golds, graded["pred"], expected, graded["correct"]) if got != want]
    print(f"{name}: {len(responses) - len(disagreements)} of {len(responses)} agree "
          f"({sum(graded['timeouts'])} timeouts)")
    for key, gold, prediction, want in disagreements:
        print(f"  {key}: gold {gold!r}, boxed {prediction!r}, reference says {want}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    data = Path(parser.parse_args().data)
    report("stored verdicts (math_cot_100.jsonl)", *stored_verdicts(data))
    report("eval solutions vs their gold answers", *solutions(data))
    report("labelled gold answers vs their bare value", *labelled_golds(data))
    close_workers()


if __name__ == "__main__":
    main()
