"""Agreement of reward.py with labels it did not make: the stored verdicts of 800 real responses
(samples/eval_rm_maj_example/math_cot_100.jsonl, graded by the Qwen2.5-Math harness) and the gold answers
of the six benchmarks (for rows with a worked solution, the solution's last box must match the answer).

    python bench/grader_agreement.py [--data ../shared/data] [--reward-from /path/to/other/checkout]

--reward-from grades with the reward.py of another checkout (say, main), for a before/after comparison.
Prints each count, then every pair that disagrees.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23")


def load_reward(checkout):
    spec = importlib.util.spec_from_file_location("reward", Path(checkout) / "reward.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reward"] = module  # the worker processes import it by this name
    spec.loader.exec_module(module)
    return module


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
    reward.close_workers()


if __name__ == "__main__":
    main()
