"""Agreement of reward.py with labels it did not make: the stored verdicts of 800 real responses
(samples/eval_rm_maj_example/math_cot_100.jsonl, graded by the Qwen2.5-Math harness) and the gold answers
of the six benchmarks (for rows with a worked solution, the solution's last box must match the answer).

    python bench/grader_agreement.py [--data ../shared/data] [--reward-from /path/to/other/checkout]

--reward-from grades with the reward.py of another checkout (say, main), for a before/after comparison.
Prints each count, then every pair that disagrees.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23")


def load_reward(checkout):
    """reward.py of that checkout; first on sys.path, so that its worker processes import the same file."""
    sys.path.insert(0, str(Path(checkout).resolve()))
    return importlib.import_module("reward")


def read_rows(path):
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stored_verdict_pairs(data):
    """(key, response, gold, stored verdict) for the 100 problems x 8 responses."""
    path = Path(data) / "samples" / "eval_rm_maj_example" / "math_cot_100.jsonl"
    for row in read_rows(path):
        for sample, (response, score) in enumerate(zip(row["code"], row["score"])):
            yield f"{row['idx']}/{sample}", response, row["gt"], score


def solution_pairs(data, reward):
    """(key, solution, gold) for benchmark rows whose solution has a box: it must match the gold answer."""
    for name in BENCHMARKS:
        for path in sorted((Path(data) / "eval" / name).glob("test.jsonl")):
            for index, row in enumerate(read_rows(path)):
                solution = row.get("solution")
                solution = "\n".join(solution) if isinstance(solution, list) else solution
                if not isinstance(solution, str) or reward.extract_boxed(solution) is None:
                    continue
                yield f"{name}/{index}", solution, str(row.get("answer", reward.extract_boxed(solution)))


def benchmark_golds(data, reward):
    """(benchmark/row, gold) for the six benchmarks, read as the Qwen2.5-Math harness reads them."""
    for name in BENCHMARKS:
        for index, row in enumerate(read_rows(Path(data) / "eval" / name / "test.jsonl")):
            if name == "gsm8k":
                gold = row["answer"].split("####")[-1].strip()
            elif name == "olympiadbench":
                gold = row["final_answer"][0].strip("$")
            elif name in ("math500", "minerva_math"):
                gold = reward.extract_boxed(row["solution"])
            else:
                gold = str(row["answer"])
            if gold:
                yield f"{name}/{index}", gold


def restated_gold_pairs(data, reward):
    """Real gold answers in the forms of issue 15, each against the same answer as a response would also
    write it: a labelled gold ("m_{\\max}=n^{2}-n-1") against its value, a percent against the word."""
    for key, gold in benchmark_golds(data, reward):
        sides = gold.split("=")
        if len(sides) == 2 and sides[1].strip() and not any(sign in sides[0] for sign in "+-*/$,"):
            yield key, sides[1].strip(), gold
        if gold.rstrip().endswith("%"):
            yield key, gold.rstrip().rstrip("%").rstrip("\\").strip() + " percent", gold


def report(title, keys, golds, graded, expected):
    agree = sum(correct == label for correct, label in zip(graded["correct"], expected))
    print(f"{title}: {agree}/{len(keys)} agree, timeouts {sum(graded['timeouts'])}")
    for key, gold, prediction, correct, label in zip(keys, golds, graded["pred"], graded["correct"], expected):
        if correct != label:
            print(f"  {key}: gold {gold!r}, boxed {prediction!r}: grader {correct}, label {label}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data directory")
    parser.add_argument("--reward-from", default=str(REPO), help="the checkout whose reward.py grades")
    args = parser.parse_args()
    reward = load_reward(args.reward_from)
    print(f"reward.py from {Path(args.reward_from).resolve()}")

    keys, responses, golds, stored = zip(*stored_verdict_pairs(args.data))
    report("800 responses vs stored verdicts", keys, golds, reward.grade_batch(list(responses), list(golds)),
           stored)
    keys, solutions, golds = zip(*solution_pairs(args.data, reward))
    report("benchmark solutions' last box vs gold answer", keys, golds,
           reward.grade_batch(list(solutions), list(golds)), [True] * len(keys))
    keys, restated, golds = zip(*restated_gold_pairs(args.data, reward))
    report("benchmark golds with a label or a percent vs their value / the word", keys, golds,
           reward.grade_batch(["\\boxed{" + answer + "}" for answer in restated], list(golds)), [True] * len(keys))
    reward.close_workers()


if __name__ == "__main__":
    main()
