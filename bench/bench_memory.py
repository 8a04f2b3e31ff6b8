"""Memory per GPU for the seeds' models on one multi-GPU box: a computed plan, and its formula checked
against memory measured on this machine's CPU.

    python bench/bench_memory.py                               # the plan: 8 x 80 GB, 8 x 9K-token micro-batches
    python bench/bench_memory.py --gpus 8 --gpu-gb 80 --seq-len 16384 --micro-batch 4
    python bench/bench_memory.py --measure                     # the formula against measured peaks (CPU, 2 ranks)

The plan is arithmetic, not a measurement: bytes per parameter of each piece of the training state, the
activations that gradient checkpointing keeps, the vLLM engine's weights and KV cache; the README says
which figures were measured. The pieces, per GPU, for a model of P parameters on N GPUs:

  weights      float32 master weights: 4P (replicas), 4P/N (FSDP2), 0 (FSDP2 with CPU offload)
  gradients    float32: 4P, 4P/N, 0
  optimizer    AdamW's two float32 moments: 8P, 8P/N, 0; bitsandbytes AdamW8bit (replicas only): 2P
  reference    the frozen float32 reference model for the KL: 4P, 4P/N, 0
  gathered     FSDP2 only: the bf16 weights it gathers while they run (the root unit: embeddings and
               head, kept from forward to backward; two decoder layers, the running one and the next),
               and one layer's float32 gradient before its reduce-scatter
  activations  one micro-batch of T tokens in bf16: the L layer inputs gradient checkpointing keeps
               (L x T x hidden x 2 bytes), what one layer's recomputation saves for its backward
               (about T x (6 hidden + 4 intermediate) x 2 bytes), and one 512-token chunk of float32
               vocabulary logits, softmax and gradient (512 x vocab x 12 bytes)
  peak         the state above, with the gradients and the larger of the activations and the optimizer
               step's temporaries (AdamW's foreach implementation, which FSDP2's DTensors use, allocates
               about one float32 copy of the weights it updates: 4P/N; the fused one on replicas, none):
               weights + optimizer + reference + gathered + gradients + max(activations, step temporaries)
  engine       vLLM's bf16 weights (2P / rollout TP) and its KV cache (2 x layers x kv_heads x head_dim x
               2 bytes per token, / rollout TP), in the share --vllm-memory-utilization gives it, plus
               about 2 GB of its own buffers; --vllm-sleep frees the KV cache during the update

--measure runs a small model (random weights) on this CPU in float32, one process with a replica and two
gloo ranks with FSDP2, and compares each rank's peak resident memory during one PPO update (above what
it held before the model was built) with the same formula in float32.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
# Published configs (config.json on the Hugging Face hub): hidden, layers, heads, kv_heads, head_dim,
# intermediate, vocab, tied embeddings, q/k/v biases.
MODELS = {
    "Qwen2.5-0.5B": (896, 24, 14, 2, 64, 4864, 151936, True, True),
    "Qwen2.5-1.5B": (1536, 28, 12, 2, 128, 8960, 151936, True, True),
    "Qwen2.5-3B": (2048, 36, 16, 2, 128, 11008, 151936, True, True),
    "Qwen2.5-7B": (3584, 28, 28, 4, 128, 18944, 152064, False, True),
    "Qwen2.5-Math-7B": (3584, 28, 28, 4, 128, 18944, 152064, False, True),
    "Qwen2.5-14B": (5120, 48, 40, 8, 128, 13824, 152064, False, True),
    "Qwen2.5-32B": (5120, 64, 40, 8, 128, 27648, 152064, False, True),
    "Llama-3.1-8B": (4096, 32, 32, 8, 128, 14336, 128256, False, False),
    "Mistral-7B-v0.1": (4096, 32, 32, 8, 128, 14336, 32000, False, False),
    "Mistral-Small-24B": (5120, 40, 32, 8, 128, 32768, 131072, False, False),
    "DeepSeek-Math-7B": (4096, 30, 32, 32, 128, 11008, 102400, False, False),
}
# The --measure model: small enough for this CPU, big enough that its training state dominates.
MEASURE_SHAPE = (512, 8, 8, 2, 64, 1408, 32000, False, True)


#### Counting

def layer_parameters(shape):
    hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, tied, bias = shape
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    if bias:
        attention += heads * head_dim + 2 * kv_heads * head_dim
    return attention + 3 * hidden * intermediate + 2 * hidden  # q, k, v, o; gate, up, down; two norms


def root_parameters(shape):
    """Embeddings, the final norm and (untied) the vocabulary projection: FSDP2's root unit."""
    hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, tied, bias = shape
    return vocab * hidden * (1 if tied else 2) + hidden


def parameters(shape):
    return shape[1] * layer_parameters(shape) + root_parameters(shape)


def activation_bytes(shape, tokens, dtype_bytes=2):
    hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, tied, bias = shape
    kept_layer_inputs = layers * tokens * hidden * dtype_bytes
    one_layer_recomputed = tokens * (6 * hidden + 4 * intermediate) * dtype_bytes
    logits_chunk = min(tokens, 512) * vocab * 4 * 3
    return kept_layer_inputs + one_layer_recomputed + logits_chunk


def kv_bytes_per_token(shape, rollout_tp=1):
    hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, tied, bias = shape
    return 2 * layers * max(kv_heads // rollout_tp, 1) * head_dim * 2


def training_state(shape, *, ranks, sharding, optim="adamw", reference=True, offload=False, gathered_bytes=2,
                   fused=None):
    """Bytes per GPU of each piece of the trainer's state (see the module docstring)."""
    count = parameters(shape)
    share = 1 if sharding == "replicate" else ranks
    fused = sharding == "replicate" and optim == "adamw" if fused is None else fused  # as ppo.make_optimizer on GPUs
    on_gpu = 0 if offload else 1
    state = {"weights": 4 * count / share * on_gpu, "gradients": 4 * count / share * on_gpu,
             "optimizer": (2 if optim == "adamw8bit" else 8) * count / share * on_gpu,
             "reference": 4 * count / share * on_gpu * reference, "gathered": 0.0,
             "step temporaries": 4 * count / share * on_gpu * (not fused)}
    if sharding == "fsdp":
        state["gathered"] = gathered_bytes * (root_parameters(shape) + 2 * layer_parameters(shape)) + \
            4 * layer_parameters(shape)
    return state


def peak_bytes(state, activations):
    """Peak memory of the update step, per GPU (see "peak" in the module docstring)."""
    resident = sum(value for name, value in state.items() if name != "step temporaries")
    return resident + max(activations, state["step temporaries"])


#### The plan

LAYOUTS = [  # (label, sharding, optim, offload)
    ("replicas", "replicate", "adamw", False),
    ("replicas, AdamW8bit", "replicate", "adamw8bit", False),
    ("FSDP2", "fsdp", "adamw", False),
    ("FSDP2 + offload", "fsdp", "adamw", True),
]


def engine_share(shape, rollout_tp, kv_tokens, gpu_bytes):
    """(weights bytes, KV bytes, utilization) of the engine on one GPU."""
    weights = 2 * parameters(shape) / rollout_tp
    kv = kv_tokens * kv_bytes_per_token(shape, rollout_tp)
    return weights, kv, min(1.0, (weights + kv + 2 * GB) / gpu_bytes)


def fitting_flags(shape, *, ranks, gpu_bytes, seq_len, micro_batch, kv_tokens):
    """The least intrusive flags that fit the model, or None. Tried in order: replicas, FSDP2, FSDP2 with the
    engine asleep during the update, a tensor-parallel engine, smaller micro-batches, CPU offload."""
    for offload in (False, True):
        for rollout_tp in (1, 2, 4, 8):
            if rollout_tp > ranks:
                continue
            for sleep in (False, True):
                for sharding in ("replicate", "fsdp"):
                    if offload and sharding == "replicate":
                        continue
                    for batch in sorted({micro_batch, 4, 2, 1}, reverse=True):
                        if batch > micro_batch:
                            continue
                        weights, kv, utilization = engine_share(shape, rollout_tp, kv_tokens, gpu_bytes)
                        engine_during_update = weights + 2 * GB if sleep else utilization * gpu_bytes
                        trainer = peak_bytes(training_state(shape, ranks=ranks, sharding=sharding, offload=offload),
                                             activation_bytes(shape, batch * seq_len))
                        if utilization < 1.0 and trainer + engine_during_update <= 0.95 * gpu_bytes:
                            flags = [f"--sharding {sharding}", f"--vllm-memory-utilization {utilization:.2f}"]
                            flags += ["--vllm-sleep"] * sleep + [f"--rollout-tp {rollout_tp}"] * (rollout_tp > 1)
                            flags += [f"--micro-batch-size {batch}"] * (batch != micro_batch) + ["--fsdp-offload"] * offload
                            return " ".join(flags), trainer + engine_during_update
    return None, None


def print_plan(args):
    gpu_bytes = args.gpu_gb * GB
    tokens = args.micro_batch * args.seq_len
    print(f"Computed, not measured: per GPU of {args.gpus} x {args.gpu_gb} GB, micro-batches of {args.micro_batch} x "
          f"{args.seq_len} tokens, bf16 compute, float32 master weights, the reference model loaded, an engine KV "
          f"cache of {args.kv_tokens} tokens. GB = 1e9 bytes.\n")
    print("| model | parameters | weights + grads + AdamW (replicas / FSDP2) | reference (replicas / FSDP2) | "
          "FSDP2 gathered | activations per micro-batch | engine weights (TP 1 / 2) | KV cache per 1K tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, shape in MODELS.items():
        replica = training_state(shape, ranks=args.gpus, sharding="replicate")
        sharded = training_state(shape, ranks=args.gpus, sharding="fsdp")
        state = lambda s: (s["weights"] + s["gradients"] + s["optimizer"]) / GB  # noqa: E731
        print(f"| {name} | {parameters(shape) / 1e9:.2f}B | {state(replica):.1f} / {state(sharded):.1f} | "
              f"{replica['reference'] / GB:.1f} / {sharded['reference'] / GB:.2f} | {sharded['gathered'] / GB:.1f} | "
              f"{activation_bytes(shape, tokens) / GB:.1f} | {2 * parameters(shape) / GB:.1f} / "
              f"{parameters(shape) / GB:.1f} | {kv_bytes_per_token(shape) * 1000 / GB:.3f} |")
    print(f"\nTrainer peak per GPU (see 'peak' in bench/bench_memory.py), GB, and the flags that fit "
          f"{args.gpu_gb} GB with the engine beside it:\n")
    print("| model | " + " | ".join(label for label, *_ in LAYOUTS) + " | flags that fit | GPU total |")
    print("|---|" + "---|" * len(LAYOUTS) + "---|---|")
    for name, shape in MODELS.items():
        totals = []
        for label, sharding, optim, offload in LAYOUTS:
            state = training_state(shape, ranks=args.gpus, sharding=sharding, optim=optim, offload=offload)
            totals.append(f"{peak_bytes(state, activation_bytes(shape, tokens)) / GB:.1f}")
        flags, total = fitting_flags(shape, ranks=args.gpus, gpu_bytes=gpu_bytes, seq_len=args.seq_len,
                                     micro_batch=args.micro_batch, kv_tokens=args.kv_tokens)
        print(f"| {name} | " + " | ".join(totals) + f" | {'`' + flags + '`' if flags else 'does not fit'} | "
              f"{total / GB:.0f} GB |" if flags else f"| {name} | " + " | ".join(totals) + " | does not fit | - |")


#### The check against measured memory (CPU, float32)

def resident_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_one(args):
    """In its own process (one rank of a torchrun, or alone): peak resident memory of one PPO update."""
    import torch
    import torch.distributed as dist
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ppo import ppo_update, shard_model

    torch.set_num_threads(1)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if ranks > 1:
        dist.init_process_group("gloo")
    hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, tied, bias = MEASURE_SHAPE
    baseline = resident_kib("VmRSS")
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=intermediate, vocab_size=vocab,
                         tie_word_embeddings=tied, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if ranks > 1:
        shard_model(model, torch.distributed.device_mesh.init_device_mesh("cpu", (ranks,)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, vocab, (args.measure_seq_len,), generator=generator).tolist()
                 for _ in range(args.measure_batch)]
    prompt_lengths = [args.measure_seq_len // 4] * args.measure_batch
    response_length = args.measure_seq_len - prompt_lengths[0]
    mask = torch.ones(args.measure_batch, response_length, dtype=torch.bool)
    zeros = torch.zeros(args.measure_batch, response_length)
    batch = dict(sequences=sequences, prompt_lengths=prompt_lengths, old_logprobs=zeros - 10.0, ref_logprobs=None,
                 advantages=zeros + 1.0, response_mask=mask)
    for update in range(2):  # the second update is the steady state: AdamW's moments exist already
        if update == 1:
            with open("/proc/self/clear_refs", "w") as clear:  # reset the peak (VmHWM) to what is resident now
                clear.write("5")
        ppo_update(model, optimizer, batch, mini_batches=1, micro_batch_size=args.measure_batch, ppo_epochs=1,
                   clip_ratio=0.2, kl_coef=0.0, entropy_coef=0.0, max_grad_norm=1.0, temperature=1.0,
                   pad_token_id=0, seed=0)
    peak = (resident_kib("VmHWM") - baseline) * 1024
    print("MEASURED " + json.dumps({"rank": int(os.environ.get("RANK", "0")), "ranks": ranks, "peak_bytes": peak}),
          flush=True)


def measure(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed blocks go back
    script = [str(Path(__file__).resolve()), "--measure-one", "--measure-batch", str(args.measure_batch),
              "--measure-seq-len", str(args.measure_seq_len)]
    runs = {"replica (1 process)": [sys.executable, *script],
            "FSDP2 (2 gloo ranks)": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *script]}
    tokens = args.measure_batch * args.measure_seq_len
    print(f"Model: hidden {MEASURE_SHAPE[0]}, {MEASURE_SHAPE[1]} layers, vocab {MEASURE_SHAPE[6]} "
          f"({parameters(MEASURE_SHAPE) / 1e6:.1f}M parameters), float32, one PPO update of {args.measure_batch} x "
          f"{args.measure_seq_len} tokens, AdamW, gradient checkpointing, no reference model.\n")
    print("| layout | rank | predicted (GB) | measured peak (GB) | measured / predicted |")
    print("|---|---|---|---|---|")
    measured, predictions = {}, {}
    for label, command in runs.items():
        output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        rows = [json.loads(line.split("MEASURED ", 1)[1]) for line in output.stdout.splitlines() if "MEASURED " in line]
        if output.returncode != 0 or not rows:
            sys.exit(f"{label} failed:\n{output.stderr[-3000:]}")
        for row in sorted(rows, key=lambda r: r["rank"]):
            state = training_state(MEASURE_SHAPE, ranks=row["ranks"], sharding="fsdp" if row["ranks"] > 1 else
                                   "replicate", reference=False, gathered_bytes=4, fused=False)  # CPU: foreach
            predicted = peak_bytes(state, activation_bytes(MEASURE_SHAPE, tokens, dtype_bytes=4))
            measured.setdefault(label, []).append(row["peak_bytes"])
            predictions[label] = predicted
            print(f"| {label} | {row['rank']} | {predicted / GB:.3f} | {row['peak_bytes'] / GB:.3f} | "
                  f"{row['peak_bytes'] / predicted:.2f} |")
    replica, sharded = measured["replica (1 process)"][0], max(measured["FSDP2 (2 gloo ranks)"])
    print(f"\nFSDP2 rank / replica peak: {sharded / replica:.2f} measured, "
          f"{predictions['FSDP2 (2 gloo ranks)'] / predictions['replica (1 process)']:.2f} predicted")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-gb", type=float, default=80)
    parser.add_argument("--seq-len", type=int, default=9216, help="prompt + response tokens (1K + 8K by default)")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward (--micro-batch-size)")
    parser.add_argument("--kv-tokens", type=int, default=262144, help="tokens the engine's KV cache must hold "
                        "(256K: about 28 sequences of 9K in flight)")
    parser.add_argument("--measure", action="store_true", help="check the formula against measured peaks on this CPU")
    parser.add_argument("--measure-batch", type=int, default=8)
    parser.add_argument("--measure-seq-len", type=int, default=1024)
    parser.add_argument("--measure-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_one:
        measure_one(args)
    elif args.measure:
        measure(args)
    else:
        print_plan(args)


if __name__ == "__main__":
    main()
