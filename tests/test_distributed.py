"""Several ranks on CPU with the gloo backend: two ranks, each with part of the batch, must end with the
same weights as one process that saw the whole batch (global normalizers, summed gradients), with
replicated models (our own gradient all-reduce) and with FSDP2-sharded ones (FSDP2's reduce-scatter)."""

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

from ppo import full_weights, ppo_update, response_values, shard_model, whiten
from test_ppo import UPDATE_ARGS, fixed_batch

LOSS_AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
# Uneven shares, as after --drop-zero-signal-groups: rank 0 gets 3 sequences, rank 1 gets 5; and a rank
# left with nothing at all, which must still join every collective of the sharded model.
SHARES = {"3+5": [range(0, 3), range(3, 8)], "0+8": [range(0, 0), range(0, 8)]}
# (sharding, shares, loss aggregation, with a critic)
VARIANTS = [("replicate", "3+5", agg, False) for agg in LOSS_AGGREGATIONS] + \
           [("fsdp", "3+5", agg, False) for agg in LOSS_AGGREGATIONS] + \
           [("fsdp", "3+5", "token-mean", True), ("fsdp", "0+8", "token-mean", True)]


def shard(batch, rows):
    rows = list(rows)
    return {name: (None if value is None else [value[i] for i in rows] if isinstance(value, list) else value[rows])
            for name, value in batch.items()}


def training_state_bytes(models, optimizers):
    """Bytes this rank holds of weights, gradients and optimizer state (its shards, when sharded)."""
    local = lambda tensor: tensor.to_local() if hasattr(tensor, "to_local") else tensor  # noqa: E731
    total = 0
    for model in models:
        for parameter in model.parameters():
            total += local(parameter).nbytes + (local(parameter.grad).nbytes if parameter.grad is not None else 0)
    for optimizer in optimizers:
        for state in optimizer.state.values():
            total += sum(local(value).nbytes for value in state.values() if torch.is_tensor(value) and value.dim())
    return total


def update(model_dir, batch, loss_agg, *, sharding="replicate", with_critic=False):
    """Two PPO epochs over `batch` (this rank's share); the full weights afterwards, the metrics, the
    training-state bytes. SGD without clipping: Adam's per-element normalization and gradient clipping
    would both hide a wrongly scaled loss, which is the bug this test is for."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    critic = critic_optimizer = None
    if with_critic:
        critic = AutoModelForTokenClassification.from_pretrained(
            model_dir, config=AutoConfig.from_pretrained(model_dir, num_labels=1), dtype=torch.float32)
    if sharding == "fsdp":
        mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (dist.get_world_size(),))
        shard_model(model, mesh)
        if critic is not None:
            shard_model(critic, mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    if critic is not None:
        critic_optimizer = torch.optim.SGD(critic.parameters(), lr=0.5, momentum=0.9)
    metrics = ppo_update(model, optimizer, batch, mini_batches=1, micro_batch_size=2, loss_agg=loss_agg,
                         max_response_length=16, critic=critic, critic_optimizer=critic_optimizer,
                         **{**UPDATE_ARGS, "ppo_epochs": 2, "max_grad_norm": 1e9})
    state_bytes = training_state_bytes([m for m in (model, critic) if m is not None],
                                       [o for o in (optimizer, critic_optimizer) if o is not None])
    weights = {name: tensor.clone() for name, tensor in full_weights(model)}
    if critic is not None:
        weights.update({f"critic.{name}": tensor.clone() for name, tensor in full_weights(critic)})
    return weights, metrics, state_bytes


def add_critic_targets(batch, model_dir):
    """old_values and returns [B, R] for the gae variant: the untrained critic's values and made-up returns."""
    torch.manual_seed(0)
    critic = AutoModelForTokenClassification.from_pretrained(
        model_dir, config=AutoConfig.from_pretrained(model_dir, num_labels=1), dtype=torch.float32)
    with torch.no_grad():
        values = response_values(critic, batch["sequences"], batch["prompt_lengths"])
    mask = batch["response_mask"].float()
    return dict(batch, old_values=values, returns=(values + torch.linspace(-1.0, 1.0, len(values))[:, None]) * mask)


def rank_main(rank, world_size, port, model_dir, batch, output):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = {"whitened": whiten(shard(batch, SHARES["3+5"][rank])["advantages"] + 0.5,
                                      shard(batch, SHARES["3+5"][rank])["response_mask"].float())}
        for sharding, shares, loss_agg, with_critic in VARIANTS:
            results[sharding, shares, loss_agg, with_critic] = update(
                model_dir, shard(batch, SHARES[shares][rank]), loss_agg, sharding=sharding, with_critic=with_critic)
        torch.save(results, f"{output}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tiny_model_dir, tmp_path_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = fixed_batch(model, size=8)
    # Non-uniform advantages, so that whitening and normalization mistakes show.
    batch["advantages"] = batch["advantages"] * torch.linspace(0.5, 2.0, 8)[:, None]
    batch = add_critic_targets(batch, tiny_model_dir)
    output = tmp_path_factory.mktemp("ranks") / "ranks"
    mp.spawn(rank_main, args=(2, free_port(), str(tiny_model_dir), batch, str(output)), nprocs=2)
    return batch, [torch.load(f"{output}.{rank}", weights_only=False) for rank in range(2)]


def test_whitening_over_two_ranks_equals_one_process(two_rank_results):
    batch, ranks = two_rank_results
    whole = whiten(batch["advantages"] + 0.5, batch["response_mask"].float())
    torch.testing.assert_close(torch.cat([r["whitened"] for r in ranks]), whole, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}{'-critic' * v[3]}")
def test_two_ranks_update_like_one_process(variant, two_rank_results, tiny_model_dir):
    sharding, _, loss_agg, with_critic = variant
    batch, ranks = two_rank_results
    single_weights, single_metrics, _ = update(tiny_model_dir, copy.deepcopy(batch), loss_agg, with_critic=with_critic)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    for rank in range(2):
        weights, metrics, _ = ranks[rank][variant]
        assert weights.keys() == single_weights.keys()
        for name, value in single_weights.items():
            if name in initial:
                assert not torch.equal(value, initial[name]) or "rotary" in name, f"{name} never moved"
            torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=1e-4,
                                       msg=lambda m: f"{variant}, rank {rank}, {name}: {m}")
        names = ["pg_loss", "entropy", "kl", "grad_norm"] + ["value_loss", "critic_grad_norm"] * with_critic
        for name in names:
            assert metrics[name] == pytest.approx(single_metrics[name], rel=1e-4, abs=1e-7), (variant, name)


def test_sharded_training_state_is_half_of_the_replicas(two_rank_results):
    """Per rank, weights + gradients + optimizer state: FSDP2 over 2 ranks holds half of a replica's."""
    _, ranks = two_rank_results
    for rank in range(2):
        replica = ranks[rank]["replicate", "3+5", "token-mean", False][2]
        sharded = ranks[rank]["fsdp", "3+5", "token-mean", False][2]
        print(f"rank {rank}: training state {sharded / 1e6:.2f} MB sharded vs {replica / 1e6:.2f} MB replicated "
              f"(ratio {sharded / replica:.3f})")
        assert 0.45 < sharded / replica < 0.55


def torchrun_command(model_dir, data_dir, output_dir, *extra, steps=3):
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "train.py", "--model", str(model_dir), "--train-data", str(data_dir / "train.jsonl"),
            "--eval-data", str(data_dir / "test.jsonl"), "--output-dir", str(output_dir), "--max-steps", str(steps),
            "--prompts-per-step", "4", "--samples-per-prompt", "4", "--max-new-tokens", "8", "--save-every", "2", *extra]


@pytest.fixture(scope="module")
def toy_data_dir(tmp_path_factory):
    import json

    from data.toy import make_problems

    directory = tmp_path_factory.mktemp("toy_data")
    train, test = make_problems(seed=1, n_train=16, n_test=4)
    for name, rows in (("train", train), ("test", test)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def run_torchrun(arguments):
    import subprocess

    from conftest import ROOT

    result = subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return result


# Token-budget micro-batches of packed rows: ranks then run different numbers of passes, which the
# lockstep placeholders even out.
SHARDED_FLAGS = ["--pack-sequences", "--max-tokens-per-micro-batch", "48"]


@pytest.fixture(scope="module")
def sharded_run(tiny_model_dir, toy_data_dir, tmp_path_factory):
    """A 4-step run under torchrun with --sharding fsdp, never interrupted."""
    output_dir = tmp_path_factory.mktemp("sharded") / "run"
    result = run_torchrun(torchrun_command(tiny_model_dir, toy_data_dir, output_dir, "--sharding", "fsdp", *SHARDED_FLAGS,
                                           steps=4))
    return output_dir, result


@pytest.mark.parametrize("sharding", ["replicate", "fsdp"])
def test_torchrun_runs_the_whole_loop_on_two_ranks(sharding, sharded_run, tiny_model_dir, toy_data_dir, tmp_path):
    """train.py under torchrun (gloo), with its logs gathered. fsdp: each rank its own engine, fed the
    gathered weights. replicate, with --rollout-tp 2: both ranks share one tensor-parallel engine (each
    holds half of every layer), which its loaders slice from the full weights; each trains on half of
    the prompts it sampled for."""
    import json

    if sharding == "fsdp":
        output_dir, result = sharded_run
    else:
        output_dir = tmp_path / "run"
        result = run_torchrun(torchrun_command(tiny_model_dir, toy_data_dir, output_dir, "--sharding", sharding,
                                               "--rollout-tp", "2"))
    assert f"sharding: {sharding} over 2 ranks" in result.stdout
    rows = [json.loads(line) for line in open(output_dir / "metrics.jsonl")]
    assert [row["step"] for row in rows] == list(range(len(rows))) and len(rows) >= 4
    assert rows[0]["eval/n"] == 4 and rows[-1]["eval/n"] == 4  # both ranks' shares of the held-out set
    for row in rows[1:]:
        assert row["rollout_logprob_diff"] < 1e-4  # every rank's engine holds the policy's current weights
    checkpoint = output_dir / "checkpoints" / "step_000002"
    assert (checkpoint / "rng_rank1.pt").exists() and (checkpoint / "model" / "model.safetensors").exists()
    assert (checkpoint / "training_state" / ".metadata").exists()
    assert (output_dir / "final" / "model.safetensors").exists()


def test_sharded_run_killed_and_resumed_ends_with_the_same_weights(sharded_run, tiny_model_dir, toy_data_dir, tmp_path):
    """SIGKILL to every process of a 2-rank FSDP2 run after its step-2 checkpoint; the same command again
    continues from the sharded checkpoint and ends with the uninterrupted run's weights, bit for bit."""
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    from conftest import ROOT

    expected_dir, _ = sharded_run
    output_dir = tmp_path / "run"
    arguments = torchrun_command(tiny_model_dir, toy_data_dir, output_dir, "--sharding", "fsdp", *SHARDED_FLAGS, steps=4)
    process = subprocess.Popen(arguments, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 600
    while not (output_dir / "checkpoints" / "step_000002").exists():
        assert process.poll() is None, f"the run ended before its checkpoint: {process.stderr.read()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.01)
    import psutil

    for child in psutil.Process(process.pid).children(recursive=True):  # both ranks (torchrun gives each a session)
        child.send_signal(signal.SIGKILL)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (output_dir / "final").exists(), "the run finished before it was killed"

    result = run_torchrun(arguments)
    assert "resuming from" in result.stdout
    expected, resumed = load_file(expected_dir / "final" / "model.safetensors"), load_file(output_dir / "final" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name
