"""Every algorithm variant runs from train.py by its flags (two short steps each on a tiny model)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

VARIANTS = {
    "grpo": [],
    "dr_grpo": ["--adv-estimator", "dr_grpo"],
    "rloo": ["--adv-estimator", "rloo", "--loss-agg", "seq-mean-token-mean"],
    "reinforce_pp": ["--adv-estimator", "reinforce_pp", "--kl-in-reward", "--kl-estimator", "k1"],
    "gae": ["--adv-estimator", "gae", "--gamma", "1.0", "--lam", "0.95"],
    "packed-token-budget": ["--pack-sequences", "--max-tokens-per-micro-batch", "40", "--mini-batch-prompts", "2"],
    "dapo-like": ["--clip-ratio-high", "0.28", "--kl-coef", "0", "--mask-truncated", "--drop-zero-signal-groups"],
    "dual-clip-tis-8bit": ["--dual-clip", "3", "--tis-cap", "2", "--optim", "adamw8bit", "--ppo-epochs", "2",
                           "--mini-batch-prompts", "2", "--no-gradient-checkpointing", "--reward-scheme", "simplerl"],
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from data.toy import make_problems

    train, test = make_problems(seed=1, n_train=16, n_test=4)
    directory = tmp_path_factory.mktemp("data")
    for name, rows in (("train", train), ("test", test)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_runs_from_the_command_line(name, tiny_model_dir, tiny_data, tmp_path):
    if "--optim" in VARIANTS[name]:
        pytest.importorskip("bitsandbytes")
    output_dir = tmp_path / "run"
    command = [sys.executable, "train.py", "--model", str(tiny_model_dir), "--train-data", str(tiny_data / "train.jsonl"),
               "--eval-data", str(tiny_data / "test.jsonl"), "--output-dir", str(output_dir), "--rollout-engine", "hf",
               "--max-steps", "2", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--max-new-tokens", "8",
               *VARIANTS[name]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    steps = [json.loads(line) for line in open(output_dir / "metrics.jsonl") if '"reward_mean"' in line]
    assert len(steps) == 2
    config = json.loads((output_dir / "config.json").read_text())
    assert config["loss_agg"] != "auto"
    if name == "dr_grpo":
        assert config["loss_agg"] == "seq-mean-token-sum-norm"
    for step in steps:
        if "grad_norm" in step:  # absent only when every group was dropped
            assert step["grad_norm"] == step["grad_norm"]  # not NaN
    if name == "gae":
        assert all("value_loss" in step for step in steps)
    assert (output_dir / "final" / "config.json").exists()


BAD_INPUTS = {
    "mini-batch": (["--prompts-per-step", "6", "--mini-batch-prompts", "4"], "not a multiple of"),
    "dual-clip": (["--dual-clip", "0.5"], "--dual-clip must be above 1"),
    "clip-high": (["--clip-ratio", "0.2", "--clip-ratio-high", "0.1"], "is below --clip-ratio"),
    "kl-in-reward": (["--kl-in-reward", "--kl-coef", "0"], "--kl-in-reward needs --kl-coef"),
    "temperature": (["--temperature", "0"], "--temperature must be above 0"),
    "missing-file": (["--train-data", "{dir}/missing.jsonl"], "missing.jsonl"),
    "empty-file": (["--train-data", "{dir}/empty.jsonl"], "no problems left"),
    "no-answer": (["--train-data", "{dir}/no_answer.jsonl"], "no_answer.jsonl:2: no gold answer"),
    "no-problem": (["--train-data", "{dir}/no_problem.jsonl"], "no_problem.jsonl:1: no problem"),
    "stage-field": (["--stages", "train_data={dir}/train.jsonl,lr=3"], "stage 1 sets lr"),
    "stage-syntax": (["--stages", "train_data"], "stage 1: train_data has no value"),
    "stage-value": (["--stages", "train_data={dir}/train.jsonl;max_steps=many"], "stage 2: max_steps='many'"),
    "stage-temperature": (["--stages", "train_data={dir}/train.jsonl,temperature=0"], "temperature must be above 0"),
    "too-few": (["--prompts-per-step", "64"], "fewer than --prompts-per-step"),
    "fsdp-8bit": (["--sharding", "fsdp", "--optim", "adamw8bit"], "--optim adamw8bit cannot run with --sharding fsdp"),
    "fsdp-hf": (["--sharding", "fsdp", "--rollout-engine", "hf"], "--rollout-engine hf cannot run with --sharding fsdp"),
    "offload-replicate": (["--sharding", "replicate", "--fsdp-offload"], "--fsdp-offload needs --sharding fsdp"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_flags_and_data_stop_with_a_clear_message_before_loading_a_model(name, tiny_model_dir, tiny_data, tmp_path):
    (tiny_data / "empty.jsonl").write_text("")
    (tiny_data / "no_answer.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n')
    (tiny_data / "no_problem.jsonl").write_text('{"answer": "2"}\n')
    flags, message = BAD_INPUTS[name]
    # Prompt lengths need the tokenizer, so "too-few" is checked after it is loaded (still before the model).
    model = str(tiny_model_dir) if name == "too-few" else "does/not-exist"
    command = [sys.executable, "train.py", "--model", model, "--train-data", str(tiny_data / "train.jsonl"),
               "--output-dir", str(tmp_path), "--eval-data", "", *[f.format(dir=tiny_data) for f in flags]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_benchmarks_and_dynamics_are_logged_during_training(tiny_model_dir, tiny_data, tmp_path):
    from conftest import shared_data

    data_dir = shared_data("eval")
    output_dir = tmp_path / "run"
    command = [sys.executable, "train.py", "--model", str(tiny_model_dir), "--train-data", str(tiny_data / "train.jsonl"),
               "--eval-data", "", "--eval-benchmarks", "gsm8k,amc23", "--eval-data-dir", str(data_dir),
               "--eval-limit", "2", "--reflection-keywords", "wait,the", "--output-dir", str(output_dir),
               "--rollout-engine", "hf", "--max-steps", "2", "--eval-every", "1", "--prompts-per-step", "4",
               "--samples-per-prompt", "2", "--max-new-tokens", "6"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in open(output_dir / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert row["eval/gsm8k/n"] == 2 and row["eval/amc23/n"] == 2 and "eval/average/accuracy" in row
    for row in rows[1:]:
        assert 0.0 <= row["reflection_rate"] <= 1.0 and "truncated_rate" in row
