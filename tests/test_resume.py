"""Checkpoints and resume: a run killed mid-way (SIGKILL) or stopped (SIGTERM) and started again with the
same command ends with exactly the weights of a run that was never interrupted (CPU, same seed)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

STEPS = 10


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from data.toy import make_problems

    train, _ = make_problems(seed=1, n_train=16, n_test=4)
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in train))
    return path


def command(model_dir, train_data, output_dir, *extra):
    return [sys.executable, "train.py", "--model", str(model_dir), "--train-data", str(train_data), "--eval-data", "",
            "--output-dir", str(output_dir), "--max-steps", str(STEPS), "--prompts-per-step", "4",
            "--samples-per-prompt", "4", "--max-new-tokens", "8", "--save-every", "2", "--keep-checkpoints", "2",
            *extra]


def interrupt(arguments, output_dir, signum, after_checkpoint):
    """Start the run, send `signum` as soon as checkpoint `after_checkpoint` exists, wait for the exit."""
    process = subprocess.Popen(arguments, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = Path(output_dir) / "checkpoints" / f"step_{after_checkpoint:06d}"
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None, f"the run ended before its checkpoint: {process.stderr.read()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def final_weights(output_dir):
    return load_file(Path(output_dir) / "final" / "model.safetensors")


def steps_logged(output_dir):
    return [json.loads(line)["step"] for line in open(Path(output_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, toy_data, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    result = subprocess.run(command(tiny_model_dir, toy_data, output_dir), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    # Only the newest two checkpoints are kept, and no half-written one is left behind.
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_000008", "step_000010"]
    return output_dir


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_interrupted_run_resumes_to_the_same_weights(signum, uninterrupted, tiny_model_dir, toy_data, tmp_path):
    arguments = command(tiny_model_dir, toy_data, tmp_path)
    returncode, stderr = interrupt(arguments, tmp_path, signum, after_checkpoint=4)
    assert not (tmp_path / "final").exists(), "the run finished before it was interrupted"
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    if signum == signal.SIGTERM:
        # SIGTERM: the step under way is finished and saved before exiting.
        assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
        stopped_at = int(checkpoints[-1].removeprefix("step_"))
        assert stopped_at >= 4 and stopped_at in steps_logged(tmp_path)
    else:
        assert returncode == -signal.SIGKILL

    result = subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True)  # the same command again
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"resuming from {tmp_path / 'checkpoints' / checkpoints[-1]}" in result.stdout
    assert steps_logged(tmp_path) == list(range(1, STEPS + 1))  # rows after the checkpoint were rewritten once

    expected, resumed = final_weights(uninterrupted), final_weights(tmp_path)
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name


def test_output_dir_of_another_run_is_refused_before_loading_a_model(uninterrupted, toy_data):
    arguments = command("does/not-exist", toy_data, uninterrupted, "--lr", "0.5")
    result = subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "holds a different run" in result.stderr and "--lr" in result.stderr


def test_resume_needs_a_checkpoint_and_no_resume_keeps_them(uninterrupted, tiny_model_dir, toy_data, tmp_path):
    result = subprocess.run(command("does/not-exist", toy_data, tmp_path, "--resume"), cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode != 0 and "no checkpoint" in result.stderr
    result = subprocess.run(command(tiny_model_dir, toy_data, uninterrupted, "--no-resume"), cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "would overwrite" in result.stderr


def test_extending_a_finished_gae_run_equals_running_it_longer(tiny_model_dir, toy_data, tmp_path):
    """--max-steps may grow between a run and its continuation; the critic and its optimizer come back too."""
    gae = ["--adv-estimator", "gae", "--lam", "0.95"]
    longer, extended = tmp_path / "longer", tmp_path / "extended"
    for output_dir, steps in ((longer, "6"), (extended, "4"), (extended, "6")):
        arguments = command(tiny_model_dir, toy_data, output_dir, *gae)
        arguments[arguments.index("--max-steps") + 1] = steps
        result = subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-4000:]
    assert "resuming from" in result.stdout and steps_logged(extended) == list(range(1, 7))
    expected, resumed = load_file(longer / "final/model.safetensors"), load_file(extended / "final/model.safetensors")
    assert all(torch.equal(resumed[key], value) for key, value in expected.items())
    expected, resumed = (training_state(directory / "checkpoints/step_000006", tmp_path / directory.name)
                         for directory in (longer, extended))
    critic_weights = [key for key in expected if key.startswith("critic.")]
    assert critic_weights and any(key.startswith("critic_optimizer.") for key in expected)
    for key, value in expected.items():
        assert torch.equal(resumed[key], value) if torch.is_tensor(value) else resumed[key] == value, key


def training_state(checkpoint, scratch):
    """The checkpoint's torch.distributed.checkpoint directory as one flat dict."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint / "training_state", scratch.with_suffix(".pt"))
    flat = {}

    def flatten(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                flatten(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                flatten(f"{prefix}.{index}", item)
        else:
            flat[prefix] = value

    flatten("", torch.load(scratch.with_suffix(".pt"), weights_only=False))
    return flat


def test_resuming_over_changed_data_is_refused(tiny_model_dir, toy_data, tmp_path):
    """The checkpoint's data position indexes the problems: a data file that changed under it stops the run."""
    data = tmp_path / "train.jsonl"
    data.write_text(toy_data.read_text())
    arguments = command(tiny_model_dir, data, tmp_path / "run")
    arguments[arguments.index("--max-steps") + 1] = "2"
    assert subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True).returncode == 0
    data.write_text("".join(toy_data.read_text().splitlines(keepends=True)[:12]))
    arguments[arguments.index("--max-steps") + 1] = "4"
    result = subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "made with other stages or other data" in result.stderr, result.stderr[-2000:]
