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

