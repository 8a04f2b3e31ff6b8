"""Time and extra memory of one weight sync (trainer -> colocated vLLM engine), replicated and sharded.

    python bench/bench_sync.py                       # CPU: 2 gloo ranks, each with its own vLLM engine
    python bench/bench_sync.py --hidden 1024 --layers 16

A model with random weights is built from a config and saved once; then, under torchrun with two ranks,
each rank starts its vLLM engine on it, loads the policy (a replica, or an FSDP2 shard), and syncs it
into the engine (rollout.VLLMEngine.sync_weights: ppo.full_weights streams the tensors, gathered one at a
time when sharded). Memory is the rank's peak resident memory during the sync above what it held just
before (Linux's VmHWM after resetting it); the sync then holds at most one full tensor beyond its shard,
the largest being the embedding matrix. The engine's log-probs are checked against the trainer's after.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def resident_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def build(directory, args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from data.toy import build_tokenizer

    config = Qwen2Config(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=2, intermediate_size=args.hidden * 3, vocab_size=args.vocab,
                         tie_word_embeddings=False, max_position_embeddings=512)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    build_tokenizer(["What is 12+34? The answer is \\boxed{46}."] * 10, vocab_size=300).save_pretrained(directory)


def rank_main(args):
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from ppo import response_logprobs_and_entropy, shard_model
    from rollout import VLLMEngine
    from train import load_model

    dist.init_process_group("gloo")
    rank, ranks = dist.get_rank(), dist.get_world_size()
    engine = VLLMEngine(args.model_dir, dtype="float32", seed=rank, max_model_len=256, memory_utilization=0.1,
                        enable_sleep=False)
    policy = load_model(args.model_dir, torch.device("cpu"))
    if args.sharding == "fsdp":
        shard_model(policy, init_device_mesh("cpu", (ranks,)))
    with torch.no_grad():  # a changed policy, as after an update
        for parameter in policy.parameters():
            parameter.mul_(1.01)
    dist.barrier()
    before = resident_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    start = time.perf_counter()
    engine.sync_weights(policy)
    seconds = time.perf_counter() - start
    extra = (resident_kib("VmHWM") - before) * 1024
    samples = engine.generate(["What is 12+34?"] * 2, samples_per_prompt=2, temperature=1.0, top_p=1.0,
                              max_new_tokens=8, stop=[], seed=0)
    with torch.no_grad():
        trainer, _ = response_logprobs_and_entropy(policy, [s.prompt_token_ids + s.response_token_ids for s in samples],
                                                   [len(s.prompt_token_ids) for s in samples])
    gap = max(abs(float(trainer[row, column]) - logprob) for row, s in enumerate(samples)
              for column, logprob in enumerate(s.response_logprobs))
    model_bytes = sum(p.numel() for p in load_model(args.model_dir, torch.device("cpu")).parameters()) * 4
    largest = max(p.numel() for p in load_model(args.model_dir, torch.device("cpu")).parameters()) * 4
    print("RESULT " + json.dumps(dict(rank=rank, sharding=args.sharding, seconds=seconds, extra_bytes=extra,
                                      model_bytes=model_bytes, largest_tensor_bytes=largest, logprob_gap=gap)), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--model-dir", default="")
    parser.add_argument("--sharding", default="")
    args = parser.parse_args()
    if args.sharding:
        return rank_main(args)
    with tempfile.TemporaryDirectory() as directory:
        build(directory, args)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
        print("| sharding | rank | sync seconds | extra memory during sync (MB) | model (MB) | largest tensor (MB) "
              "| engine vs trainer log-prob gap |")
        print("|---|---|---|---|---|---|---|")
        for sharding in ("replicate", "fsdp"):
            output = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                     str(Path(__file__).resolve()), "--model-dir", directory, "--sharding", sharding],
                                    cwd=ROOT, capture_output=True, text=True, env=env)
            rows = [json.loads(line.split("RESULT ", 1)[1]) for line in output.stdout.splitlines() if "RESULT " in line]
            if output.returncode or not rows:
                sys.exit(f"{sharding} failed:\n{output.stderr[-3000:]}")
            for row in sorted(rows, key=lambda r: r["rank"]):
                print(f"| {sharding} | {row['rank']} | {row['seconds']:.3f} | {row['extra_bytes'] / 1e6:.0f} | "
                      f"{row['model_bytes'] / 1e6:.0f} | {row['largest_tensor_bytes'] / 1e6:.0f} | "
                      f"{row['logprob_gap']:.1e} |")


if __name__ == "__main__":
    main()
