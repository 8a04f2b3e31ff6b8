"""Benchmark: programs graded per second by reward_code.py, on the reference solutions of HumanEval (164,
one check() each) and MBPP (974, three asserts each), with 1 worker and with the default (os.cpu_count()).

    python bench/bench_code_reward.py [--data ../shared/data] [--workers 1,0]     # 0: the default

Every program runs in its own sandbox (namespaces, rlimits, its own directory), so the rate is bounded by
starting processes: mostly the interpreter's start-up. The first call, which probes the sandbox, is not timed.
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import reward_code  # noqa: E402
from data.problems import load_problems  # noqa: E402


def reference_responses(data_dir):
    """{name: (responses, tests)} with the reference solutions as responses in a ```python block."""
    code = Path(data_dir) / "code"
    humaneval = load_problems(code / "humaneval" / "test.jsonl", keep_fields=("canonical_solution",))
    mbpp = load_problems(code / "mbpp" / "mbpp_revised.jsonl", keep_fields=("code",))
    return {
        "humaneval": ([f"```python\n{p['tests']['prefix']}{p['canonical_solution']}\n```" for p in humaneval],
                      [p["tests"] for p in humaneval]),
        "mbpp": ([f"```python\n{p['code']}\n```" for p in mbpp], [p["tests"] for p in mbpp]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data directory")
    parser.add_argument("--workers", default="1,0", help="comma-separated worker counts (0: os.cpu_count())")
    args = parser.parse_args()

    sets = reference_responses(args.data)
    print(reward_code.sandbox_status())  # probes the sandbox once, before any clock starts
    print(f"{os.cpu_count()} CPUs")
    for workers in [int(w) for w in args.workers.split(",")]:
        label = f"{workers or os.cpu_count()} worker{'s' if (workers or os.cpu_count()) > 1 else ''}"
        for name, (responses, tests) in sets.items():
            # Twice: the first batch of a spec also runs its reference once (which tests the grader can
            # decide, cached per spec where the grader has that step); later batches, training's steady
            # state, do not.
            for batch in ("first", "again"):
                start = time.perf_counter()
                graded = reward_code.grade_code_batch(responses, tests, num_workers=workers or None)
                seconds = time.perf_counter() - start
                in_process = sum(graded.get("in_process_tests", [0]))
                print(f"{name:10s} {label:10s} {batch:5s} {len(responses)} programs in {seconds:6.1f} s: "
                      f"{len(responses) / seconds:6.1f} programs/s, {sum(graded['correct'])} correct, "
                      f"{in_process} of {sum(graded['total'])} tests in the program's interpreter")


if __name__ == "__main__":
    main()
