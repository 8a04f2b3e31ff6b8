"""Speed and memory of the update step, variant by variant, on this machine's CPU or GPU.

    python bench/bench_update.py                       # CPU: a reduced model with Qwen2.5's 152k vocabulary
    python bench/bench_update.py --shape 0.5b --seq-len 4096 --batch 8     # a GPU: Qwen2.5-0.5B's shape
    python bench/bench_update.py --shape 1.5b --seq-len 4096 --batch 4 --variants update,update-no-ckpt

Every variant runs in a fresh subprocess, so peak memory is its own: on a GPU torch's peak allocation,
on a CPU the process's peak resident memory above what it held after building the model. Models are
built from a config with random weights (no download): they cost the same FLOPs and memory as trained
ones. Variants:
  logprobs-naive     log-probs and entropy from full [tokens, vocab] float32 logits, forward and backward
  logprobs-chunked   the same through ppo.response_logprobs_and_entropy (chunked, checkpointed projection)
  update             one PPO update step (ppo.ppo_update: forward, backward, AdamW step), checkpointing on
  update-no-ckpt     the same without gradient checkpointing
  update-8bit        the same with bitsandbytes AdamW8bit (needs a GPU build of bitsandbytes, or its CPU one)
  generate           transformers generate: rollout tokens per second (HF fallback engine)
Model-FLOPs utilization (GPU) counts 6 x parameters x tokens per update (forward + backward), against the
bf16 dense peak given by --peak-tflops (989 for an H100 SXM).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab)
    "cpu-small": (256, 2, 4, 2, 1024, 151936),  # Qwen2.5's vocabulary on a body small enough for a CPU
    # A CPU-sized model whose body, not its vocabulary projection, takes most of the FLOPs (about 80 %, as in
    # Qwen2.5-0.5B's 73 %), for what padding costs a real model
    "cpu-body": (256, 8, 4, 2, 1024, 8192),
    "0.5b": (896, 24, 14, 2, 4864, 151936),
    "1.5b": (1536, 28, 12, 2, 8960, 151936),
}
VARIANTS = ("logprobs-naive", "logprobs-chunked", "update", "update-no-ckpt", "update-8bit", "generate")


def build_model(shape, device, gradient_checkpointing):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv_heads, intermediate, vocab = SHAPES[shape]
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=intermediate, vocab_size=vocab,
                         max_position_embeddings=32768, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=torch.float32)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config._attn_implementation = "sdpa"
    return model


def peak_memory_gb(device, baseline):
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - baseline  # ru_maxrss is in KiB


def run_variant(args):
    """Runs in its own process; prints one JSON line."""
    import torch

    from ppo import make_optimizer, naive_response_logprobs_and_entropy, ppo_update, response_logprobs_and_entropy

    device = args.device
    model = build_model(args.shape, device, gradient_checkpointing=args.variant != "update-no-ckpt")
    parameters = sum(p.numel() for p in model.parameters())
    prompt_length = args.seq_len // 4
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, model.config.vocab_size, (args.seq_len,), generator=generator).tolist()
                 for _ in range(args.batch)]
    prompt_lengths = [prompt_length] * args.batch
    response_tokens = args.batch * (args.seq_len - prompt_length)
    autocast = dict(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")

    optimizer = None
    if args.variant.startswith("update"):
        optimizer, _ = make_optimizer(model, "adamw8bit" if args.variant == "update-8bit" else "adamw",
                                      lr=1e-6, weight_decay=0.0, warmup_steps=0)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def one_pass():
        if args.variant == "logprobs-naive":
            with torch.autocast(**autocast):
                logprobs, entropy = naive_response_logprobs_and_entropy(model, sequences, prompt_lengths)
            (logprobs.sum() + 1e-3 * entropy.sum()).backward()
        elif args.variant == "logprobs-chunked":
            with torch.autocast(**autocast):
                logprobs, entropy = response_logprobs_and_entropy(model, sequences, prompt_lengths,
                                                                  chunk_tokens=args.chunk_tokens)
            (logprobs.sum() + 1e-3 * entropy.sum()).backward()
        elif args.variant == "generate":
            with torch.no_grad(), torch.autocast(**autocast):
                model.generate(torch.tensor([s[:prompt_length] for s in sequences], device=device),
                               do_sample=True, max_new_tokens=args.generate_tokens, min_new_tokens=args.generate_tokens)
        else:
            width = args.seq_len - prompt_length
            mask = torch.ones(args.batch, width, dtype=torch.bool)
            batch = dict(sequences=sequences, prompt_lengths=prompt_lengths, old_logprobs=torch.zeros(args.batch, width),
                         ref_logprobs=None, advantages=torch.randn(args.batch, width, generator=generator),
                         response_mask=mask)
            ppo_update(model, optimizer, batch, mini_batches=1, micro_batch_size=args.micro_batch,
                       ppo_epochs=1, clip_ratio=0.2, kl_coef=0.0, entropy_coef=0.0, max_grad_norm=1.0,
                       temperature=1.0, pad_token_id=0, seed=0,
                       autocast_dtype=torch.bfloat16 if device == "cuda" else None)
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    one_pass()  # warm-up (allocator, kernels, optimizer state)
    start = time.perf_counter()
    for _ in range(args.repeats):
        one_pass()
    seconds = (time.perf_counter() - start) / args.repeats
    tokens = args.batch * args.generate_tokens if args.variant == "generate" else args.batch * args.seq_len
    result = {"variant": args.variant, "shape": args.shape, "device": device, "parameters_M": round(parameters / 1e6, 1),
              "batch": args.batch, "seq_len": args.seq_len, "seconds": round(seconds, 3),
              "tokens_per_s": round(tokens / seconds, 1), "peak_memory_GB": round(peak_memory_gb(device, baseline), 2)}
    if device == "cuda" and args.variant.startswith("update"):
        result["mfu"] = round(6 * parameters * tokens / seconds / (args.peak_tflops * 1e12), 3)
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: cpu-small on CPU, 0.5b on GPU")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=None, help="default: the whole batch")
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--generate-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child process
    parser.add_argument("--output", help="also write the results as JSON lines here")
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.shape = args.shape or ("0.5b" if args.device == "cuda" else "cpu-small")
    args.micro_batch = args.micro_batch or args.batch
    if args.variant:
        return run_variant(args)

    results = []
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, "--variant", variant] + [
            f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
            if name not in ("variant", "variants", "output") and value is not None]
        completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
        if completed.returncode != 0 or not lines:
            error = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{variant}: failed ({error})")
            continue
        results.append(json.loads(lines[-1]))
        print(lines[-1], flush=True)

    print(f"\n| variant | shape | batch x seq | seconds | tokens/s | peak memory (GB) | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['shape']} ({r['parameters_M']}M) | {r['batch']} x {r['seq_len']} | "
              f"{r['seconds']} | {r['tokens_per_s']} | {r['peak_memory_GB']} | {r.get('mfu', '')} |")
    if args.output:
        Path(args.output).write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
