"""Benchmark: grade the 800 real responses of math_cot_100.jsonl with reward.py and with math-verify, side
by side in one run. Prints pairs per second for both, their ratio, and each grader's agreement with the
stored verdicts (the Qwen2.5-Math harness's `score`), then the pairs where the two graders disagree.

    pip install math-verify==0.9.0          # only for this benchmark; nothing else needs it
    python bench/bench_grader.py [--data ../shared/data] [--repeats 3]

math-verify runs single-process, as it is normally used (its timeouts need the main thread). reward.py
runs as in training: one grade_batch call per batch, cheap comparisons in this process and the rest in
its worker pool. "cold" is the first call and includes starting the pool; "warm" is the best of --repeats
calls, each on a freshly started pool (so no result is cached from an earlier run). math-verify gets one
warm-up call and the best of --repeats runs too.
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import reward  # noqa: E402


def load_pairs(data_dir):
    """(keys, responses, golds, stored verdicts) for the 100 problems x 8 responses."""
    path = Path(data_dir) / "samples" / "eval_rm_maj_example" / "math_cot_100.jsonl"
    keys, responses, golds, stored = [], [], [], []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for sample, (response, score) in enumerate(zip(row["code"], row["score"])):
            keys.append(f"{row['idx']}/{sample}")
            responses.append(response)
            golds.append(row["gt"])
            stored.append(score)
    return keys, responses, golds, stored


def grade_with_math_verify(responses, golds):
    from math_verify import parse, verify
    verdicts = []
    for response, gold in zip(responses, golds):
        verdicts.append(bool(verify(parse("\\boxed{" + gold + "}"), parse(response))))
    return verdicts


def timed(function, *arguments, **options):
    start = time.perf_counter()
    result = function(*arguments, **options)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data directory")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs of reward.py (the best is reported)")
    parser.add_argument("--workers", type=int, default=None, help="reward.py workers (default min(4, cpus))")
    args = parser.parse_args()

    keys, responses, golds, stored = load_pairs(args.data)
    count = len(responses)
    workers = args.workers or reward.default_num_workers()
    print(f"{count} responses from math_cot_100.jsonl; {os.cpu_count()} CPUs; reward.py with {workers} workers")

    graded, cold_seconds = timed(reward.grade_batch, responses, golds, "correct")
    ours = graded["correct"]

    def warm_run(num_workers):
        """A fresh pool (so no cached results from earlier runs), started before the clock starts."""
        reward.close_workers()
        reward._latex_to_sympy.cache_clear()  # nor parses cached in this process by the earlier runs
        warm_up = [(f"\\boxed{{{k}\\sqrt{{2}}}}", f"\\sqrt{{{2 * k * k}}}") for k in range(2, 2 + num_workers)]
        reward.grade_batch(*zip(*warm_up), num_workers=num_workers)  # distinct pairs, one per worker
        return timed(reward.grade_batch, responses, golds, "correct", num_workers=num_workers)[1]

    warm_seconds = min(warm_run(workers) for _ in range(args.repeats))
    one_worker_seconds = min(warm_run(1) for _ in range(args.repeats))

    if importlib.util.find_spec("math_verify") is None:
        sys.exit("math-verify is not installed: pip install math-verify==0.9.0")
    grade_with_math_verify(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"])  # warm-up: first use builds its parser
    runs = [timed(grade_with_math_verify, responses, golds) for _ in range(args.repeats)]
    theirs, math_verify_seconds = runs[0][0], min(seconds for _, seconds in runs)

    def agreement(verdicts):
        return sum(verdict == score for verdict, score in zip(verdicts, stored))

    rows = [
        ("reward.py, cold (starts its pool)", cold_seconds, ours),
        (f"reward.py, warm, {workers} workers", warm_seconds, ours),
        ("reward.py, warm, 1 worker", one_worker_seconds, ours),
        ("math-verify 0.9.0, single process", math_verify_seconds, theirs),
    ]
    print(f"{'grader':38} {'seconds':>8} {'pairs/s':>9} {'agreement with stored verdicts':>32}")
    for name, seconds, verdicts in rows:
        print(f"{name:38} {seconds:8.2f} {count / seconds:9.1f} {agreement(verdicts):>26}/{count}")
    print(f"speed ratio reward.py / math-verify: {math_verify_seconds / warm_seconds:.1f}x warm "
          f"({math_verify_seconds / one_worker_seconds:.1f}x with 1 worker), "
          f"{math_verify_seconds / cold_seconds:.1f}x cold")
    print(f"timeouts in reward.py: {sum(graded['timeouts'])}")

    print("\npairs where the graders disagree (problem idx/sample):")
    for key, gold, prediction, mine, other, score in zip(keys, golds, graded["pred"], ours, theirs, stored):
        if mine != other:
            print(f"  {key}: gold {gold!r}, boxed {prediction!r}: reward.py {mine}, math-verify {other}, "
                  f"stored {score}")
    print("pairs where reward.py disagrees with the stored verdict:")
    for key, gold, prediction, mine, score in zip(keys, golds, graded["pred"], ours, stored):
        if mine != score:
            print(f"  {key}: gold {gold!r}, boxed {prediction!r}: reward.py {mine}, stored {score}")


if __name__ == "__main__":
    main()
