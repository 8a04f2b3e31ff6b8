"""Data parallel on CPU with the gloo backend: two ranks, each with part of the batch, must end with the
same weights as one process that saw the whole batch (global normalizers, summed gradients)."""

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from ppo import ppo_update, whiten
from test_ppo import UPDATE_ARGS, fixed_batch

LOSS_AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
# Uneven shares, as after --drop-zero-signal-groups: rank 0 gets 3 sequences, rank 1 gets 5.
SHARES = [range(0, 3), range(3, 8)]


def shard(batch, rows):
    rows = list(rows)
    return {name: (None if value is None else [value[i] for i in rows] if isinstance(value, list) else value[rows])
            for name, value in batch.items()}


def update(model_dir, batch, loss_agg):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # SGD without clipping: Adam's per-element normalization and gradient clipping would both hide a
    # wrongly scaled loss, which is the bug this test is for. Two epochs: the second step starts from
    # updated weights and momentum.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    metrics = ppo_update(model, optimizer, batch, mini_batches=1, micro_batch_size=2, loss_agg=loss_agg,
                         max_response_length=16, **{**UPDATE_ARGS, "ppo_epochs": 2, "max_grad_norm": 1e9})
    return model.state_dict(), metrics


def rank_main(rank, world_size, port, model_dir, batch, output):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = {"whitened": whiten(shard(batch, SHARES[rank])["advantages"] + 0.5,
                                      shard(batch, SHARES[rank])["response_mask"].float())}
        for loss_agg in LOSS_AGGREGATIONS:
            results[loss_agg] = update(model_dir, shard(batch, SHARES[rank]), loss_agg)
        torch.save(results, f"{output}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_update_like_one_process(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = fixed_batch(model, size=8)
    # Non-uniform advantages, so that whitening and normalization mistakes show.
    batch["advantages"] = batch["advantages"] * torch.linspace(0.5, 2.0, 8)[:, None]

    mp.spawn(rank_main, args=(2, free_port(), str(tiny_model_dir), batch, str(tmp_path / "ranks")), nprocs=2)
    ranks = [torch.load(tmp_path / f"ranks.{rank}", weights_only=False) for rank in range(2)]

    mask = batch["response_mask"].float()
    whole = whiten(batch["advantages"] + 0.5, mask)
    torch.testing.assert_close(torch.cat([r["whitened"] for r in ranks]), whole, atol=1e-6, rtol=1e-5)
    for loss_agg in LOSS_AGGREGATIONS:
        single_weights, single_metrics = update(tiny_model_dir, copy.deepcopy(batch), loss_agg)
        initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
        for rank in range(2):
            weights, metrics = ranks[rank][loss_agg]
            for name, value in single_weights.items():
                assert not torch.equal(value, initial[name]) or "rotary" in name, f"{name} never moved"
                torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=1e-4,
                                           msg=lambda m: f"{loss_agg}, rank {rank}, {name}: {m}")
            for name in ("pg_loss", "entropy", "kl", "grad_norm"):
                assert metrics[name] == pytest.approx(single_metrics[name], rel=1e-4, abs=1e-7), (loss_agg, name)



def test_torchrun_runs_the_whole_loop_on_two_ranks(tiny_model_dir, tmp_path):
    """train.py under torchrun (gloo): each rank its own engine and share of the prompts; logs gathered."""
    import json
    import subprocess
    import sys

    from conftest import ROOT
    from data.toy import make_problems

    train, test = make_problems(seed=1, n_train=16, n_test=4)
    for name, rows in (("train", train), ("test", test)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "train.py", "--model", str(tiny_model_dir), "--train-data", str(tmp_path / "train.jsonl"),
               "--eval-data", str(tmp_path / "test.jsonl"), "--output-dir", str(output_dir), "--max-steps", "3",
               "--prompts-per-step", "4", "--samples-per-prompt", "4", "--max-new-tokens", "8", "--save-every", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in open(output_dir / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert rows[0]["eval/n"] == 4 and rows[-1]["eval/n"] == 4  # both ranks' shares of the held-out set
    for row in rows[1:]:
        assert row["rollout_logprob_diff"] < 1e-4  # every rank's engine holds its replica's weights
    assert (output_dir / "checkpoints" / "step_000002" / "rng_rank1.pt").exists()
    assert (output_dir / "final" / "model.safetensors").exists()
