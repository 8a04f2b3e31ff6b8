"""Zero RL: PPO-style reinforcement learning straight from a base model, with rule-based math rewards.

    python train.py --model Qwen/Qwen2.5-0.5B                 # a GPU box: the SimpleRL-Zoo recipe
    python train.py --model toy/model --train-data toy/train.jsonl --eval-data toy/test.jsonl   # a CPU

Optionally first a supervised warm-up on worked answers (--sft-data, --sft-steps: SimpleRL's setting;
without it, SimpleRL-Zero's). Then one step of the loop (DeepSeek-R1-Zero; SimpleRL-Zoo, Zeng et al. 2025):
  1. take prompts_per_step problems and format them with the prompt template,
  2. sample samples_per_prompt responses to each with the colocated vLLM engine,
  3. reward each response by checking its last \\boxed{} answer against the gold answer,
  4. (optionally) drop prompts whose samples all got the same reward: they carry no signal,
  5. recompute the log-probs of the sampled tokens under the policy (old) and the reference model,
  6. turn rewards into advantages, normalized within each prompt's group of samples (GRPO; or
     Dr. GRPO, RLOO, REINFORCE++, or GAE with a learned critic),
  7. take PPO clipped-objective steps over mini-batches, with a KL penalty to the reference model,
  8. copy the updated weights into the engine,
  9. log, and now and then evaluate on held-out problems.

Every field of Config is a command-line flag (python train.py --help). Fields whose default is None
("auto") depend on the machine: on a GPU they take SimpleRL-Zoo's values; on a CPU, toy-sized ones.
"""

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

#### Config


def flag(default, help, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    # What to train on
    model: str = flag("Qwen/Qwen2.5-0.5B", "base model: hub id or a save_pretrained directory")
    train_data: str = flag("hkust-nlp/SimpleRL-Zoo-Data/simplelr_qwen_level3to5",
                           "training problems: .jsonl/.json/.parquet file, or a hub dataset "
                           "'owner/name[/data_dir][:split]' (default: SimpleRL-Zoo's MATH level 3-5 set)")
    eval_data: str = flag("HuggingFaceH4/MATH-500:test", "held-out problems evaluated at the start, every "
                          "--eval-every steps and the end ('' for none)")
    output_dir: str = flag("runs/zerorl", "where metrics.jsonl, samples.jsonl and final/ are written")
    template: str = flag("", "prompt template: qwen-boxed or simple ('' picks by the tokenizer)",
                         choices=["", "qwen-boxed", "simple"])
    min_level: int = flag(None, "keep only problems of at least this difficulty level (where rows have one)")
    max_level: int = flag(None, "keep only problems of at most this difficulty level")
    max_prompt_len: int = flag(1024, "prompts longer than this many tokens are skipped (and counted)")

    # Supervised warm-up before RL (SimpleRL's setting; SimpleRL-Zero skips it)
    sft_data: str = flag("", "(prompt, worked answer) pairs for a supervised warm-up before RL: .jsonl/.parquet "
                             "rows with a problem and a response field (see sft.py)")
    sft_steps: int = flag(0, "supervised warm-up steps before RL (0: none, zero RL)")
    sft_lr: float = flag(None, "warm-up learning rate (auto: 1e-5 on GPU, 1e-3 for the CPU toy)")
    sft_batch_size: int = flag(None, "warm-up sequences per step (auto: 32 on GPU, 64 on CPU)")

    # Rollout
    max_steps: int = flag(100, "training steps")
    prompts_per_step: int = flag(None, "prompts sampled per step (auto: 1024 on GPU as SimpleRL-Zoo, 32 on CPU)")
    samples_per_prompt: int = flag(8, "responses sampled per prompt: the GRPO group size")
    max_new_tokens: int = flag(None, "response length limit in tokens (auto: 8192 on GPU, 32 on CPU)")
    temperature: float = flag(1.0, "sampling temperature for rollouts (evaluation is greedy)")
    top_p: float = flag(1.0, "nucleus sampling for rollouts")
    rollout_engine: str = flag("auto", "vllm, hf (transformers generate), or auto: vllm when installed",
                               choices=["auto", "vllm", "hf"])
    vllm_memory_utilization: float = flag(None, "share of GPU memory (on CPU: of RAM) the engine may use "
                                                "(auto: 0.5 on GPU, 0.15 on CPU)")
    vllm_sleep: bool = flag(False, "put the engine to sleep (free its KV cache) during the update; GPU only")

    # Reward and advantages
    reward_scheme: str = flag("correct", "correct: 1/0 (SimpleRL-Zoo); simplerl: +1 right, -0.5 wrong, -1 no "
                                         "box (SimpleRL blog); format: 1 right, 0 wrong, -1 badly formatted "
                                         "(no box, or boxes that disagree)", choices=["correct", "simplerl", "format"])
    adv_estimator: str = flag("grpo", "grpo: group mean/std (SimpleRL-Zoo); dr_grpo: group mean only, constant "
                                      "length normalizer; rloo: leave-one-out baseline; reinforce_pp: "
                                      "REINFORCE++, batch-normalized returns; gae: PPO with a learned critic",
                              choices=["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"])
    gamma: float = flag(1.0, "discount for gae and reinforce_pp returns")
    lam: float = flag(1.0, "GAE lambda")
    critic_lr: float = flag(None, "critic learning rate for gae (auto: 1e-5 on GPU, 1e-3 for the CPU toy)")
    value_clip: float = flag(0.5, "critic value clipping range for gae")
    drop_zero_signal_groups: bool = flag(False, "drop prompts whose samples all got the same reward (zero "
                                                "advantage under group baselines) before the update")

    # PPO update
    lr: float = flag(None, "learning rate (auto: 1e-6 on GPU as SimpleRL-Zoo, 1e-4 for the CPU toy)")
    lr_warmup_steps: int = flag(0, "linear learning-rate warm-up, in steps")
    weight_decay: float = flag(0.0, "AdamW weight decay")
    optim: str = flag("adamw", "adamw or adamw8bit (bitsandbytes: optimizer states in 8 bits)",
                      choices=["adamw", "adamw8bit"])
    mini_batch_prompts: int = flag(None, "prompts per optimizer step: prompts_per_step / mini_batch_prompts "
                                         "updates per rollout (auto: 256 on GPU as SimpleRL-Zoo, i.e. 4 "
                                         "updates; all prompts on CPU, i.e. strictly on-policy)")
    micro_batch_size: int = flag(None, "sequences per forward/backward pass, the memory knob; gradients are "
                                       "accumulated over micro-batches (auto: 8 on GPU, 64 on CPU)")
    ppo_epochs: int = flag(1, "passes over each rollout batch")
    clip_ratio: float = flag(0.2, "PPO clip range epsilon: ratios outside [1-eps, 1+eps] get no gradient")
    clip_ratio_high: float = flag(None, "upper clip range when different from --clip-ratio (DAPO's clip-higher: "
                                        "0.28); default: same as --clip-ratio")
    dual_clip: float = flag(None, "dual-clip constant c > 1: bounds negative-advantage token losses by -c*A "
                                  "(verl uses 3); default off")
    loss_agg: str = flag("auto", "token-mean, seq-mean-token-mean (original GRPO) or seq-mean-token-sum-norm "
                                 "(Dr. GRPO); auto: seq-mean-token-sum-norm for dr_grpo, else token-mean",
                         choices=["auto", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
    kl_coef: float = flag(1e-4, "weight of the KL(policy || reference) term; 0 skips loading the reference")
    kl_estimator: str = flag("k3", "k1, k2 or k3 (low variance, non-negative) per-token KL estimate",
                             choices=["k1", "k2", "k3"])
    kl_in_reward: bool = flag(False, "fold the KL into the reward (InstructGPT-style) instead of the loss")
    mask_truncated: bool = flag(False, "leave responses cut off at --max-new-tokens out of the loss (DAPO)")
    tis_cap: float = flag(None, "truncated importance sampling: weight tokens by min(pi_trainer / pi_engine, "
                                "cap) to correct engine-trainer mismatch (e.g. 2); default off")
    entropy_coef: float = flag(1e-3, "weight of the entropy bonus")
    max_grad_norm: float = flag(1.0, "gradient clipping threshold")
    gradient_checkpointing: bool = flag(True, "recompute activations in the backward pass to save memory")
    max_bad_steps: int = flag(3, "stop after this many steps in a row whose every update was skipped for a "
                                 "non-finite loss or gradient")

    # Evaluation, logging, the rest
    eval_every: int = flag(None, "evaluate on --eval-data every N steps (auto: 10 on GPU, 0 = start and end "
                                 "only on CPU)")
    eval_benchmarks: str = flag("", "benchmarks evaluated with --eval-data at the same steps, logged as "
                                    "eval/<name>/accuracy: comma list of gsm8k, math500, minerva_math, "
                                    "olympiadbench, aime24, amc23, or all ('' for none)")
    eval_data_dir: str = flag("", "directory holding <benchmark>/test.jsonl for --eval-benchmarks (the layout of "
                                  "simpleRL-reason's examples/simplelr_math_eval/data)")
    eval_limit: int = flag(0, "evaluate only the first N problems of each --eval-benchmarks set (0: all)")
    reflection_keywords: str = flag("", "comma-separated words counted as reflection in reflection_rate ('' for "
                                        "evaluate.REFLECTION_KEYWORDS: wait, recheck, rethink, try again, ...)")
    report_to: str = flag("none", "also send metrics to tensorboard (OUTPUT_DIR/tensorboard), wandb, or both "
                                  "('tensorboard,wandb'); needs that package installed")
    log_samples: int = flag(4, "responses per step written to samples.jsonl")
    seed: int = flag(0, "seed for prompt order, sampling and initialization")


# SimpleRL-Zoo's settings (verl; paper section 3) and a CPU-sized toy recipe, for the "auto" fields.
GPU_DEFAULTS = dict(prompts_per_step=1024, max_new_tokens=8192, vllm_memory_utilization=0.5,
                    lr=1e-6, critic_lr=1e-5, mini_batch_prompts=256, micro_batch_size=8, eval_every=10,
                    sft_lr=1e-5, sft_batch_size=32)
CPU_DEFAULTS = dict(prompts_per_step=32, max_new_tokens=32, vllm_memory_utilization=0.15,
                    lr=1e-4, critic_lr=1e-3, mini_batch_prompts=None, micro_batch_size=64, eval_every=0,
                    sft_lr=1e-3, sft_batch_size=64)


def parse_config(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for config_field in dataclasses.fields(Config):
        name = "--" + config_field.name.replace("_", "-")
        kind = config_field.type
        default = config_field.default
        help = f"{config_field.metadata['help']} (default: {'auto' if default is None else repr(default)})"
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help)
        else:
            parser.add_argument(name, type=kind, default=default, help=help,
                                choices=config_field.metadata["choices"])
    return Config(**vars(parser.parse_args(argv)))


def resolve_auto(config, on_gpu):
    """Fill the fields left at None from GPU_DEFAULTS or CPU_DEFAULTS; check the rest."""
    defaults = GPU_DEFAULTS if on_gpu else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(config, name) is None:
            setattr(config, name, value)
    if config.mini_batch_prompts is None:
        config.mini_batch_prompts = config.prompts_per_step
    if config.prompts_per_step % config.mini_batch_prompts:
        sys.exit(f"--prompts-per-step {config.prompts_per_step} is not a multiple of "
                 f"--mini-batch-prompts {config.mini_batch_prompts}")
    if config.samples_per_prompt < 2 and config.adv_estimator in ("grpo", "dr_grpo", "rloo"):
        sys.exit(f"--samples-per-prompt must be at least 2 for {config.adv_estimator}: its baseline comes "
                 "from the other samples of the same prompt")
    if config.loss_agg == "auto":
        config.loss_agg = "seq-mean-token-sum-norm" if config.adv_estimator == "dr_grpo" else "token-mean"
    if config.sft_steps > 0 and not config.sft_data:
        sys.exit("--sft-steps needs --sft-data")
    if config.eval_benchmarks and not config.eval_data_dir:
        sys.exit("--eval-benchmarks needs --eval-data-dir")
    if config.vllm_sleep and not on_gpu:
        print("note: --vllm-sleep has no effect without a GPU; ignored")
        config.vllm_sleep = False
    return config


#### Helpers


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def load_model(path, device, gradient_checkpointing=False):
    from transformers import AutoModelForCausalLM

    # Float32 master weights; on a GPU the forward passes run under bf16 autocast (mixed precision).
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_critic(path, device, gradient_checkpointing=False):
    """The value model for gae: the policy's network with a fresh scalar head (as verl's critic)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0  # dropout would make the value estimates noisy
    critic = AutoModelForTokenClassification.from_pretrained(
        path, config=config, dtype=torch.float32, attn_implementation="sdpa").to(device)
    if gradient_checkpointing:
        critic.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return critic


@torch.no_grad()
def batched_forward(per_token_fn, sequences, prompt_lengths, micro_batch_size, autocast_dtype, device):
    """per_token_fn(sequences, prompt_lengths) -> [b, r], run micro-batch by micro-batch into one [B, R]."""
    width = max(len(s) - p for s, p in zip(sequences, prompt_lengths))
    out = torch.zeros(len(sequences), width)
    for start in range(0, len(sequences), micro_batch_size):
        end = start + micro_batch_size
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            values = per_token_fn(sequences[start:end], prompt_lengths[start:end])
        out[start:end, :values.shape[1]] = values.float().cpu()
    return out


def prompt_stream(problems, prompts_per_step, seed):
    """Endless batches of problems: each epoch a fresh shuffle, batches never straddle two epochs."""
    epoch = 0
    while True:
        order = list(range(len(problems)))
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, len(order) - prompts_per_step + 1, prompts_per_step):
            yield [problems[i] for i in order[start:start + prompts_per_step]]
        epoch += 1


#### The loop


def main(argv=None):
    config = parse_config(argv)
    on_gpu = torch.cuda.is_available()
    config = resolve_auto(config, on_gpu)
    device = torch.device("cuda" if on_gpu else "cpu")
    autocast_dtype = torch.bfloat16 if on_gpu else None  # fp32 on CPU: faster there and exact
    seed_everything(config.seed)

    from transformers import AutoTokenizer

    from data.problems import TEMPLATE_STOP_STRINGS, default_template, format_prompt, load_problems
    from evaluate import (benchmark_metrics, dynamics_metrics, evaluate_accuracy, evaluate_benchmarks,
                          load_benchmarks, make_reporters, model_context_length, parse_keywords)
    from ppo import compute_advantages, kl_estimate, make_optimizer, ppo_update, response_logprobs_and_entropy, \
        response_values
    from reward import grade_batch
    from rollout import HFEngine, VLLMEngine, vllm_available
    from sft import load_sft_pairs, train_supervised

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    #### Data: problems -> prompts
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = config.template or default_template(tokenizer)
    stop = TEMPLATE_STOP_STRINGS[template]
    train_problems = load_problems(config.train_data, config.min_level, config.max_level)
    prompt_lengths = [len(ids) for ids in tokenizer([format_prompt(p["problem"], template)
                                                     for p in train_problems])["input_ids"]]
    too_long = sum(length > config.max_prompt_len for length in prompt_lengths)
    train_problems = [p for p, length in zip(train_problems, prompt_lengths) if length <= config.max_prompt_len]
    eval_problems = load_problems(config.eval_data) if config.eval_data else []
    eval_benchmarks = (load_benchmarks(config.eval_benchmarks, config.eval_data_dir, config.eval_limit or None)
                       if config.eval_benchmarks else {})
    held_out = eval_problems + [p for problems in eval_benchmarks.values() for p in problems]
    keywords = parse_keywords(config.reflection_keywords)
    # Training prompts past --max-prompt-len were dropped above; held-out ones are all evaluated.
    longest_prompt = max([length for length in prompt_lengths if length <= config.max_prompt_len]
                         + [len(tokenizer(format_prompt(p["problem"], template))["input_ids"]) for p in held_out])
    print(f"{len(train_problems)} training problems ({too_long} skipped as longer than --max-prompt-len), "
          f"{len(eval_problems)} held-out; template {template}")
    if len(train_problems) < config.prompts_per_step:
        sys.exit(f"only {len(train_problems)} training problems, fewer than --prompts-per-step "
                 f"{config.prompts_per_step}")

    #### Models: the policy (trained), the reference (frozen, for the KL loss), the rollout engine
    policy = load_model(config.model, device, config.gradient_checkpointing)
    policy.train()
    start_model = config.model
    if config.sft_steps > 0:
        # SimpleRL: supervised warm-up first; the RL stage then starts from, and stays close to, its result.
        pairs, counts = load_sft_pairs(config.sft_data, template, tokenizer)
        print(f"supervised warm-up on {config.sft_data}: {json.dumps(counts)}")
        train_supervised(policy, tokenizer, pairs, steps=config.sft_steps, batch_size=config.sft_batch_size,
                         lr=config.sft_lr, optim=config.optim, seed=config.seed, autocast_dtype=autocast_dtype)
        start_model = str(output_dir / "sft")
        policy.save_pretrained(start_model)
        tokenizer.save_pretrained(start_model)
    reference = None
    if config.kl_coef > 0:
        reference = load_model(start_model, device).eval().requires_grad_(False)
    optimizer, scheduler = make_optimizer(policy, config.optim, config.lr, config.weight_decay,
                                          config.lr_warmup_steps)
    critic = critic_optimizer = None
    if config.adv_estimator == "gae":
        critic = load_critic(start_model, device, config.gradient_checkpointing).train()
        critic_optimizer, _ = make_optimizer(critic, config.optim, config.critic_lr, config.weight_decay, 0)

    use_vllm = config.rollout_engine == "vllm" or (config.rollout_engine == "auto" and vllm_available())
    # A response that would run past the model's context stops there (counted as truncated).
    context_length = model_context_length(start_model) or longest_prompt + config.max_new_tokens
    if use_vllm:
        engine = VLLMEngine(start_model, dtype="bfloat16" if on_gpu else "float32", seed=config.seed,
                            max_model_len=min(longest_prompt + config.max_new_tokens, context_length),
                            memory_utilization=config.vllm_memory_utilization, enable_sleep=config.vllm_sleep)
    else:
        if config.rollout_engine == "auto":
            print("vLLM is not installed: rolling out with transformers generate (much slower)")
        engine = HFEngine(policy, tokenizer)

    def evaluate(step):
        """Greedy accuracy on the held-out sets, on the colocated engine (no second copy of the model)."""
        metrics = {}
        batch_size = None if use_vllm else 16  # transformers generate: bounded batches, or out of memory
        if eval_problems:
            summary, _ = evaluate_accuracy(engine, eval_problems, template, config.max_new_tokens, keywords=keywords,
                                           batch_size=batch_size)
            metrics.update({f"eval/{name}": value for name, value in summary.items()})
        if eval_benchmarks:  # one generate call over all sets
            summaries, _ = evaluate_benchmarks(engine, eval_benchmarks, template, config.max_new_tokens,
                                               keywords=keywords, batch_size=batch_size)
            metrics.update(benchmark_metrics(summaries))  # eval/<name>/<key> and eval/average/accuracy
        tqdm.write(f"step {step}: held-out " + ", ".join(f"{name} {value:.3f}" for name, value in metrics.items()
                                                          if name.endswith("accuracy")))
        return metrics

    metrics_file = open(output_dir / "metrics.jsonl", "w")
    samples_file = open(output_dir / "samples.jsonl", "w")
    report = make_reporters(config.report_to, output_dir, dataclasses.asdict(config))
    if held_out:
        row = {"step": 0, **evaluate(0)}
        metrics_file.write(json.dumps(row) + "\n")
        report(row, 0)

    prompts = prompt_stream(train_problems, config.prompts_per_step, config.seed)
    bad_steps_in_a_row = 0
    progress = tqdm(range(1, config.max_steps + 1), desc="zero-rl", dynamic_ncols=True)
    for step in progress:
        timings = {}

        #### 1-2. Rollout: samples_per_prompt responses to each of prompts_per_step prompts
        start = time.perf_counter()
        problems = next(prompts)
        engine.wake_up()
        samples = engine.generate([format_prompt(p["problem"], template) for p in problems],
                                  samples_per_prompt=config.samples_per_prompt, temperature=config.temperature,
                                  top_p=config.top_p, max_new_tokens=config.max_new_tokens, stop=stop)
        if config.vllm_sleep:
            engine.sleep()
        golds = [problems[s.prompt_index]["answer"] for s in samples]
        timings["time/rollout"] = time.perf_counter() - start

        #### 3. Reward
        start = time.perf_counter()
        graded = grade_batch([s.response_text for s in samples], golds, config.reward_scheme)
        rewards = torch.tensor(graded["reward"])  # [B]
        timings["time/reward"] = time.perf_counter() - start

        #### 4. Groups with no signal: every sample of the prompt got the same reward
        samples_per_prompt = config.samples_per_prompt
        zero_signal = (rewards.view(-1, samples_per_prompt) == rewards.view(-1, samples_per_prompt)[:, :1]).all(1)
        zero_signal &= samples_per_prompt > 1  # a group of one has no baseline to compare against
        train_samples, train_rewards = samples, rewards
        if config.drop_zero_signal_groups:
            keep = (~zero_signal).repeat_interleave(samples_per_prompt)  # [B]
            train_samples = [s for s, kept in zip(samples, keep.tolist()) if kept]
            train_rewards = rewards[keep]

        #### 5. Old-policy and reference log-probs of the sampled tokens (and the critic's values)
        start = time.perf_counter()
        sequences = [s.prompt_token_ids + s.response_token_ids for s in train_samples]
        prompt_token_counts = [len(s.prompt_token_ids) for s in train_samples]
        response_lengths = torch.tensor([len(s.response_token_ids) for s in train_samples])  # [B]
        width = int(response_lengths.max()) if train_samples else 0
        response_mask = torch.arange(width)[None, :] < response_lengths[:, None]  # [B, R]
        forward_args = dict(micro_batch_size=config.micro_batch_size, autocast_dtype=autocast_dtype, device=device)
        logprobs_of = lambda model: (lambda seqs, lens: response_logprobs_and_entropy(  # noqa: E731
            model, seqs, lens, temperature=config.temperature, pad_token_id=tokenizer.pad_token_id)[0])
        update_metrics = {}
        lr = optimizer.param_groups[0]["lr"]
        if train_samples:
            old_logprobs = batched_forward(logprobs_of(policy), sequences, prompt_token_counts, **forward_args)
            ref_logprobs = (batched_forward(logprobs_of(reference), sequences, prompt_token_counts, **forward_args)
                            if reference is not None else None)
            old_values = (batched_forward(lambda seqs, lens: response_values(critic, seqs, lens, tokenizer.pad_token_id),
                                          sequences, prompt_token_counts, **forward_args) if critic is not None else None)
            engine_logprobs = torch.zeros_like(old_logprobs)  # [B, R]
            for row, sample in enumerate(train_samples):
                engine_logprobs[row, :len(sample.response_logprobs)] = torch.tensor(sample.response_logprobs)
            # The health check of weight sync: the engine sampled from the same policy the trainer holds.
            update_metrics["rollout_logprob_diff"] = float(((engine_logprobs - old_logprobs).abs() * response_mask).sum()
                                                           / response_mask.sum())

            #### 6. Advantages [B, R]
            kl_penalty = None
            if config.kl_in_reward and reference is not None:
                kl_penalty = kl_estimate(old_logprobs, ref_logprobs, config.kl_estimator) * response_mask
                update_metrics["kl"] = float(kl_penalty.sum() / response_mask.sum())
            advantages, returns = compute_advantages(
                config.adv_estimator, train_rewards, response_mask, samples_per_prompt, kl_penalty=kl_penalty,
                kl_coef=config.kl_coef, values=old_values, gamma=config.gamma, lam=config.lam)
            loss_mask = response_mask
            if config.mask_truncated:
                truncated = torch.tensor([s.finish_reason == "length" for s in train_samples])
                loss_mask = response_mask & ~truncated[:, None]

            #### 7. PPO update: clipped surrogate + KL + entropy, over mini-batches of micro-batches
            batch = dict(sequences=sequences, prompt_lengths=prompt_token_counts, old_logprobs=old_logprobs,
                         ref_logprobs=ref_logprobs, engine_logprobs=engine_logprobs, advantages=advantages,
                         response_mask=loss_mask, old_values=old_values, returns=returns)
            mini_batches = config.prompts_per_step // config.mini_batch_prompts
            update_metrics.update(ppo_update(
                policy, optimizer, batch, mini_batch_size=-(-len(train_samples) // mini_batches),
                micro_batch_size=config.micro_batch_size, ppo_epochs=config.ppo_epochs,
                clip_ratio=config.clip_ratio, clip_ratio_high=config.clip_ratio_high, dual_clip=config.dual_clip,
                loss_agg=config.loss_agg, kl_coef=config.kl_coef, kl_estimator=config.kl_estimator,
                kl_in_loss=not config.kl_in_reward, entropy_coef=config.entropy_coef,
                max_grad_norm=config.max_grad_norm, temperature=config.temperature,
                pad_token_id=tokenizer.pad_token_id, seed=config.seed + step, max_response_length=config.max_new_tokens,
                tis_cap=config.tis_cap, critic=critic, critic_optimizer=critic_optimizer, value_clip=config.value_clip,
                autocast_dtype=autocast_dtype))
            scheduler.step()  # the schedule counts updates, not rollouts
            bad_steps_in_a_row = bad_steps_in_a_row + 1 if update_metrics["skipped_update_frac"] == 1.0 else 0
        timings["time/update"] = time.perf_counter() - start

        #### 8. Weight sync: the next rollout must sample from the updated policy
        start = time.perf_counter()
        engine.wake_up()
        engine.sync_weights(policy)
        timings["time/sync"] = time.perf_counter() - start

        #### 9. Log
        metrics = {
            "step": step,
            "reward_mean": float(rewards.mean()),
            "accuracy": sum(graded["correct"]) / len(samples),
            "format_rate": sum(p is not None for p in graded["pred"]) / len(samples),
            "response_length_mean": sum(len(s.response_token_ids) for s in samples) / len(samples),
            "grade_timeouts": sum(graded["timeouts"]),  # comparisons killed at the grader's deadline
            "zero_signal_groups": float(zero_signal.float().mean()),  # dropped, with --drop-zero-signal-groups
            "lr": lr,
            **update_metrics,
            **timings,
        }
        # Training dynamics: reflection keywords, length of right and wrong answers, truncation
        metrics.update(dynamics_metrics([s.response_text for s in samples], graded["correct"],
                                        [s.finish_reason for s in samples], [len(s.response_token_ids) for s in samples],
                                        keywords))
        if held_out and (step == config.max_steps or (config.eval_every and step % config.eval_every == 0)):
            metrics.update(evaluate(step))
        metrics_file.write(json.dumps(metrics) + "\n")
        metrics_file.flush()
        report(metrics, step)
        if bad_steps_in_a_row >= config.max_bad_steps:
            sys.exit(f"step {step}: {bad_steps_in_a_row} steps in a row had a non-finite loss or gradient and no "
                     f"update; stopping (see {output_dir / 'metrics.jsonl'}; a lower --lr often helps)")
        for sample, gold, prediction, reward in list(zip(samples, golds, graded["pred"], graded["reward"]))[
                :config.log_samples]:
            samples_file.write(json.dumps({"step": step, "prompt": format_prompt(problems[sample.prompt_index]["problem"],
                                                                                  template),
                                           "response": sample.response_text, "gold": gold, "pred": prediction,
                                           "reward": reward, "finish_reason": sample.finish_reason}) + "\n")
        samples_file.flush()
        progress.set_postfix(reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                             len=f"{metrics['response_length_mean']:.0f}", kl=f"{metrics.get('kl', 0):.4f}")

    #### Save: a directory vLLM and transformers load as it is
    policy.save_pretrained(output_dir / "final")
    tokenizer.save_pretrained(output_dir / "final")
    metrics_file.close()
    samples_file.close()
    report.close()
    print(f"saved {output_dir / 'final'}")


if __name__ == "__main__":
    main()
