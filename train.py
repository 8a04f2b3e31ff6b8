"""Zero RL: PPO-style reinforcement learning straight from a base model, with rule-based math rewards.

    python train.py --model Qwen/Qwen2.5-0.5B                 # a GPU box: the SimpleRL-Zoo recipe
    python train.py --recipe toy        # a CPU: the toy from data/toy.py (--model toy/model --train-data ...)

Optionally first a supervised warm-up on worked answers (--sft-data, --sft-steps: SimpleRL's setting;
without it, SimpleRL-Zero's). Then one step of the loop (DeepSeek-R1-Zero; SimpleRL-Zoo, Zeng et al. 2025):
  1. take prompts_per_step problems and format them with the prompt template,
  2. sample samples_per_prompt responses to each with the colocated vLLM engine,
  3. reward each response by checking its last \\boxed{} answer against the gold answer,
  4. (optionally) drop prompts whose samples all got the same reward: they carry no signal,
  5. recompute the log-probs of the sampled tokens under the policy (old; when strictly on-policy the
     update's own forward pass gives them instead) and the reference model,
  6. turn rewards into advantages, normalized within each prompt's group of samples (GRPO; or
     Dr. GRPO, RLOO, REINFORCE++, or GAE with a learned critic),
  7. take PPO clipped-objective steps over mini-batches, with a KL penalty to the reference model,
  8. copy the updated weights into the engine,
  9. log, and now and then evaluate on held-out problems.

Every field of Config is a command-line flag (python train.py --help). A recipe fills fields first (see
Recipes: by default SimpleRL-Zoo's settings for the --model, when the paper trained it); a flag given on the
command line overrides its field. Fields whose default is None ("auto") then depend on the machine: on a GPU
they take SimpleRL-Zoo's values; on a CPU, toy-sized ones.
"""

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

#### Config


def flag(default, help, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


# The fields a stage of --stages may set; every other field holds for the whole run.
STAGE_FIELDS = ("train_data", "task", "max_steps", "max_new_tokens", "temperature", "min_level", "max_level")


@dataclass
class Config:
    # What to train on
    model: str = flag("Qwen/Qwen2.5-0.5B", "base model: hub id or a save_pretrained directory")
    recipe: str = flag("auto", "settings to start from (see Recipes below; a flag given here overrides its field): "
                               "auto: SimpleRL-Zoo's for the --model when the paper trained it, else the defaults; "
                               "simplerl-zoo (stop when the model is not in the table), simplerl-zoo/<model> (that "
                               "row, e.g. simplerl-zoo/Llama-3.1-8B), simplerl-blog (SimpleRL-Zero: PPO on "
                               "Qwen2.5-Math-7B), toy (the CPU quick start on the data/toy.py output in toy/), none")
    train_data: str = flag("hkust-nlp/SimpleRL-Zoo-Data/simplelr_qwen_level3to5",
                           "training problems: .jsonl/.json/.parquet file, or a hub dataset "
                           "'owner/name[/data_dir][:split]' (default: SimpleRL-Zoo's MATH level 3-5 set)")
    eval_data: str = flag("HuggingFaceH4/MATH-500:test", "held-out problems evaluated at the start, every "
                          "--eval-every steps and the end ('' for none)")
    output_dir: str = flag("runs/zerorl", "where metrics.jsonl, samples.jsonl and final/ are written")
    template: str = flag("", "prompt template: qwen-boxed, simple, abel (SimpleRL-Zoo's simple prompt) or "
                             "qwen-math-cot (the SimpleRL blog's) ('' picks by the tokenizer: qwen-boxed or simple)",
                         choices=["", "qwen-boxed", "simple", "abel", "qwen-math-cot"])
    min_level: int = flag(None, "keep only problems of at least this difficulty level (where rows have one)")
    max_level: int = flag(None, "keep only problems of at most this difficulty level")
    max_prompt_len: int = flag(1024, "prompts longer than this many tokens are skipped (and counted)")
    task: str = flag("auto", "how responses are graded: math (the boxed answer against the gold one) or code "
                             "(the last ```python block against the tests, in the sandbox); auto: from the "
                             "data's fields", choices=["auto", "math", "code"])
    stages: str = flag("", "run as a sequence of stages, each with its own data, steps, response length and "
                           "temperature (AceReason: math then code; a length curriculum): a .json file holding a "
                           "list of {field: value}, or inline 'train_data=A,max_steps=100;train_data=B,"
                           f"max_new_tokens=16384'; fields: {', '.join(STAGE_FIELDS)}. A field a stage leaves out "
                           "takes its flag's value ('': one stage, the flags)")
    drop_solved_prompts: bool = flag(False, "leave prompts whose samples were all correct out of the later epochs "
                                            "(AceReason's on-line filtering of prompts the policy has mastered)")

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
    vllm_memory_utilization: float = flag(None, "share of GPU memory the engine may use (on CPU: the share of RAM for its KV cache) "
                                                "(auto: 0.5 on GPU, 0.15 on CPU)")
    vllm_sleep: bool = flag(False, "put the engine to sleep (free its KV cache) during the update; GPU only")

    # Reward and advantages
    code_partial_credit: bool = flag(False, "code tasks: reward the fraction of tests passed instead of 1 only "
                                            "when all pass")
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
    max_tokens_per_micro_batch: int = flag(None, "a token budget per forward/backward pass instead of a count: "
                                                 "sequences sorted by length and grouped up to this many tokens "
                                                 "(padded: longest x count; packed: their sum), as verl's "
                                                 "ppo_max_token_len_per_gpu (default: --micro-batch-size sequences)")
    pack_sequences: bool = flag(None, "run each micro-batch as one row of its sequences packed end to end, no "
                                      "padding (restarted position ids keep their attention apart); auto: on when "
                                      "flash-attention is installed (its variable-length kernels), else off (sdpa "
                                      "then builds a tokens x tokens mask)")
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

    # Several GPUs (torchrun)
    sharding: str = flag("auto", "how the ranks of torchrun hold the policy, reference and critic: replicate (each a "
                                 "full copy of the weights, gradients and optimizer state; fewest collectives) or "
                                 "fsdp (FSDP2: each rank keeps 1/N of them and gathers a layer's weights when it "
                                 "runs; what 7B and up need); auto: fsdp when the replicated training state would "
                                 "take more than half of the memory the engine leaves a GPU, else replicate "
                                 "(ignored in a single process)", choices=["auto", "replicate", "fsdp"])
    rollout_tp: int = flag(1, "ranks that share one vLLM engine, split over their GPUs (vLLM tensor parallel): for "
                              "models whose engine does not fit one GPU beside the training state (32B); the K "
                              "ranks of a group generate for the group's prompts together, then each trains on "
                              "its share")
    fsdp_offload: bool = flag(False, "with --sharding fsdp: keep weights, gradients and optimizer state in CPU "
                                     "memory, the optimizer step on the CPU (FSDP2's CPU offload; slower; for models "
                                     "that do not fit the GPUs even sharded)")

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
    save_every: int = flag(50, "write a checkpoint every N steps, and at the end (0: only final/)")
    keep_checkpoints: int = flag(2, "keep the newest N checkpoints in OUTPUT_DIR/checkpoints")
    resume: bool = flag(None, "continue from the newest checkpoint in --output-dir; auto: when it holds one of "
                              "this same run; --no-resume: refuse to start over a run that has checkpoints")
    seed: int = flag(0, "seed for prompt order, sampling and initialization")
    dry_run: bool = flag(False, "print the resolved settings (recipe and auto values filled in) and stop before "
                                "loading any data or model")


# SimpleRL-Zoo's settings (verl; paper section 3) and a CPU-sized toy recipe, for the "auto" fields.
GPU_DEFAULTS = dict(prompts_per_step=1024, max_new_tokens=8192, vllm_memory_utilization=0.5,
                    lr=1e-6, critic_lr=1e-5, mini_batch_prompts=256, micro_batch_size=8, eval_every=10,
                    sft_lr=1e-5, sft_batch_size=32)
CPU_DEFAULTS = dict(prompts_per_step=32, max_new_tokens=32, vllm_memory_utilization=0.15,
                    lr=1e-4, critic_lr=1e-3, mini_batch_prompts=None, micro_batch_size=64, eval_every=0,
                    sft_lr=1e-3, sft_batch_size=64)


#### Recipes: what SimpleRL-Zoo (and the SimpleRL blog before it) ran, per base model
#
# A recipe is a set of Config fields. apply_recipe() gives each field that no flag on the command line set the
# recipe's value (a flag always wins) and prints one line saying what it did. Sources, cited at every value:
#   paper   Zeng et al. 2025, "SimpleRL-Zoo: Investigating and Taming Zero Reinforcement Learning for Open
#           Base Models in the Wild", arXiv 2503.18892v3 (section or appendix given)
#   script  hkust-nlp/simpleRL-reason (branch v1), train_grpo_math_tune_ray.sh: its default values
#   readme  that repository's README (v1): its two training commands and its list of released models
#   issue   an answer of the authors in that repository's issues (number given)
#   blog    the SimpleRL blog's code, branch v0 of the same repository: its README, its training script
#           train/examples/script/train_ppo_qwen_base_math_lv35_new.sh ("blog script"), and the defaults of
#           the OpenRLHF fork it runs (train/openrlhf/cli/train_ppo_ray_box.py, "blog defaults")

# The six training sets (readme "Dataset", the hub dataset hkust-nlp/SimpleRL-Zoo-Data): the problems with the
# simple ("abel") or the Qwen prompt, at three difficulties (paper 2.1, B.1): easy = GSM8K and MATH level 1,
# medium = MATH levels 1-4, hard = MATH levels 3-5, about 8,000 problems each. train.py reads the problems
# from them and writes its own prompt (the template below), which is the one the file's name says.
SIMPLERL_ZOO_DATA = "hkust-nlp/SimpleRL-Zoo-Data/simplelr_{prompt}_{difficulty}"
DIFFICULTY_SPLITS = {"easy": "gsm8k_level1", "medium": "level1to4", "hard": "level3to5"}
PROMPT_TEMPLATES_OF = {"abel": "abel", "qwen": "qwen-boxed"}  # data/problems.py's template for each prompt

# What every SimpleRL-Zoo run shares ("we adopt the same training hyperparameters to train all the models",
# paper section 1).
SIMPLERL_ZOO_SHARED = dict(
    adv_estimator="grpo",     # paper 2.1
    reward_scheme="correct",  # paper 2.1 and B.2: +1 for a correct answer, 0 otherwise, no format reward (3.1)
    loss_agg="token-mean",    # paper appendix A, eq. 1 and footnote 2: GRPO without length normalization
    prompts_per_step=1024,    # paper B.5: prompt batch size 1,024 (readme: --train_batch_size 1024)
    samples_per_prompt=8,     # paper B.5: 8 rollouts per prompt (readme: --rollout_n 8)
    max_new_tokens=8192,      # paper B.5: maximum rollout length 8,192 tokens (readme: --max_response_length 8192)
    mini_batch_prompts=256,   # paper B.5: mini-batch size 256, so 4 updates per rollout (script: PPO_MINI_BATCH_SIZE)
    temperature=1.0,          # paper B.5: sampling temperature 1.0
    clip_ratio=0.2,           # paper B.5: clip ratio 0.2
    entropy_coef=1e-3,        # readme: --entropy_coeffient 0.001 in both commands (paper: not stated)
    kl_estimator="k3",        # script: kl_loss_type=low_var_kl, verl's clamped k3
    lr=5e-7,                  # script: LEARNING_RATE=5e-7, which the readme's commands keep (paper: not stated)
    max_prompt_len=1024,      # script: MAX_PROMPT_LENGTH=1024
    eval_every=5,             # script: TEST_FREQ=5; paper Figure 4: "we assess the models every five steps"
)
# Not stated per model, so not in the recipe: the number of steps (paper Figure 1 plots about 100 iterations,
# about 150 for Mistral-Small-24B and Qwen2.5-32B; readme: "approximately 100 steps" for 7B and 14B), which
# stays at --max-steps's default of 100, and the micro-batch and engine memory settings, which are machine knobs.

# One row per base model the paper trains (paper 2.1 and Table 1), by the paper's name:
#   hub_ids     the base model's hub ids (the first is what --recipe simplerl-zoo/<row> trains)
#   released    the trained model the authors released (readme "Model Checkpoints"); evaluate.py knows it
#   shape       config.json fields (the hub config of the base model) that identify a local copy naming no model
#   difficulty  paper B.1: "we use Easy for LLama-3.1-8B, Mistral-v0.1-7B, and DeepSeek-Math-7B; Medium for
#               Qwen2.5-0.5B; Hard for Mistral-Small-24B, Qwen-2.5-Math-7B, and Qwen-2.5-1.5B/7B/14B/32B"
#   prompt      paper B.3: the simple prompt for the models with weaker instruction following "(Llama-3.1-8B,
#               Mistral-v0.1-7B, and Qwen-2.5-0.5B/1.5B)", the complex (Qwen chat) prompt for the others;
#               issue #61 (the authors' data for 0.5B and 1.5B: simplelr_abel_level1to4, simplelr_abel_level3to5)
#   kl_coef     paper B.5 and readme: 1e-4 "for models ranging from 0.5B to 14B parameters", 1e-3 above 14B
SIMPLERL_ZOO_MODELS = {
    "Qwen2.5-0.5B": dict(hub_ids=["Qwen/Qwen2.5-0.5B"], released="hkust-nlp/Qwen-2.5-0.5B-SimpleRL-Zoo",
                         shape=dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, vocab_size=151936),
                         difficulty="medium", prompt="abel", kl_coef=1e-4),
    "Qwen2.5-1.5B": dict(hub_ids=["Qwen/Qwen2.5-1.5B"], released="hkust-nlp/Qwen-2.5-1.5B-SimpleRL-Zoo",
                         shape=dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, vocab_size=151936),
                         difficulty="hard", prompt="abel", kl_coef=1e-4),
    "Qwen2.5-7B": dict(hub_ids=["Qwen/Qwen2.5-7B"], released="hkust-nlp/Qwen-2.5-7B-SimpleRL-Zoo",
                       shape=dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, vocab_size=152064),
                       difficulty="hard", prompt="qwen", kl_coef=1e-4),
    "Qwen2.5-14B": dict(hub_ids=["Qwen/Qwen2.5-14B"], released="hkust-nlp/Qwen-2.5-14B-SimpleRL-Zoo",
                        shape=dict(model_type="qwen2", hidden_size=5120, num_hidden_layers=48, vocab_size=152064),
                        difficulty="hard", prompt="qwen", kl_coef=1e-4),
    "Qwen2.5-32B": dict(hub_ids=["Qwen/Qwen2.5-32B"], released="hkust-nlp/Qwen-2.5-32B-SimpleRL-Zoo",
                        shape=dict(model_type="qwen2", hidden_size=5120, num_hidden_layers=64, vocab_size=152064),
                        difficulty="hard", prompt="qwen", kl_coef=1e-3),
    # Its context is 4K tokens (paper appendix H; config.json max_position_embeddings 4096), shorter than the
    # 8K responses: how the authors handled that is not stated; train.py stops responses at the context.
    "Qwen2.5-Math-7B": dict(hub_ids=["Qwen/Qwen2.5-Math-7B"], released="hkust-nlp/Qwen-2.5-Math-7B-SimpleRL-Zoo",
                            shape=dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, vocab_size=152064,
                                       max_position_embeddings=4096),
                            difficulty="hard", prompt="qwen", kl_coef=1e-4),
    # Also what issue #71 gives for Llama: "the config in our README ... the data processed with our simple prompt".
    "Llama-3.1-8B": dict(hub_ids=["meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B"],
                         released="hkust-nlp/Llama-3.1-8B-SimpleRL-Zoo",
                         shape=dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, vocab_size=128256),
                         difficulty="easy", prompt="abel", kl_coef=1e-4),
    "Mistral-7B-v0.1": dict(hub_ids=["mistralai/Mistral-7B-v0.1"], released="hkust-nlp/Mistral-7B-v0.1-SimpleRL-Zoo",
                            shape=dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, vocab_size=32000),
                            difficulty="easy", prompt="abel", kl_coef=1e-4),
    "Mistral-Small-24B": dict(hub_ids=["mistralai/Mistral-Small-24B-Base-2501"],
                              released="hkust-nlp/Mistral-Small-24B-SimpleRL-Zoo",
                              shape=dict(model_type="mistral", hidden_size=5120, num_hidden_layers=40,
                                         vocab_size=131072),
                              difficulty="hard", prompt="qwen", kl_coef=1e-3),
    "DeepSeek-Math-7B": dict(hub_ids=["deepseek-ai/deepseek-math-7b-base"],
                             released="hkust-nlp/DeepSeek-Math-7B-SimpleRL-Zoo",
                             shape=dict(model_type="llama", hidden_size=4096, num_hidden_layers=30, vocab_size=102400),
                             difficulty="easy", prompt="qwen", kl_coef=1e-4),
}

# The blog's SimpleRL-Zero (January 2025): PPO with a critic on Qwen2.5-Math-7B, OpenRLHF.
SIMPLERL_BLOG = dict(
    model="Qwen/Qwen2.5-Math-7B",  # blog README: "starting from Qwen2.5-Math-7B (base model)"
    # The blog trained on "8K MATH examples" of levels 3-5 (blog README), the file
    # train/data/math_level3to5_data_processed_with_qwen_prompt.json, which is not on the hub. SimpleRL-Zoo's
    # hard split is the same selection by its description (paper B.1: MATH levels 3-5, 500 of MATH's test set
    # held out, like the blog, issue #7); that the two files hold the same problems was not checked.
    train_data=SIMPLERL_ZOO_DATA.format(prompt="qwen", difficulty=DIFFICULTY_SPLITS["hard"]),
    template="qwen-math-cot",      # blog: eval/sh/run.sh --template qwen25-math-cot (its training file: issue #87)
    adv_estimator="gae",           # blog README: "the code currently uses PPO rather than GRPO"; a critic
    gamma=1.0,                     # blog defaults: --gamma 1
    lam=0.95,                      # blog defaults: --lambd 0.95 (the blog script leaves it)
    value_clip=0.2,                # blog defaults: --value_clip 0.2
    critic_lr=9e-6,                # blog script: --critic_learning_rate 9e-6
    lr=5e-7,                       # blog script: --actor_learning_rate 5e-7
    reward_scheme="simplerl",      # blog: experience_maker.py: 1.0 correct, -0.5 wrong, -1.0 without "boxed"
    kl_coef=0.01,                  # blog script: --init_kl_coef 0.01 (a fixed coefficient: no --kl_target)
    kl_in_reward=True,             # blog: OpenRLHF's compute_reward puts -kl_coef * KL into each token's reward
    kl_estimator="k1",             # blog defaults: the log-ratio (k3 only with --use_kl_estimator_k3, not given)
    entropy_coef=0.0,              # blog: OpenRLHF's PolicyLoss has no entropy term
    loss_agg="seq-mean-token-mean",  # blog: PolicyLoss, masked_mean(loss, action_mask, dim=-1).mean()
    temperature=0.6,               # blog script: --temperature 0.6
    prompts_per_step=1024,         # blog script: --rollout_batch_size 1024
    samples_per_prompt=8,          # blog script: --n_samples_per_prompt 8
    mini_batch_prompts=16,         # blog script: --train_batch_size 128 samples = 16 prompts' 8, so 64 updates
    ppo_epochs=1,                  # blog script: --max_epochs 1
    max_new_tokens=3000,           # blog script: --generate_max_len 3000
    max_prompt_len=1024,           # blog script: --prompt_max_len 1024
    max_steps=120,                 # blog README: "on 8K MATH examples for 120 steps"
)
# Not reproduced: --normalize_reward (OpenRLHF's running reward normalization; whether it touches this fork's
# rule reward was not checked), AdamW betas (0.9, 0.95) (blog defaults; here torch's (0.9, 0.999)), and
# OpenRLHF's mini-batches of samples drawn across prompts (here whole groups of 8 samples per prompt).

# The CPU quick start: the data/toy.py output in toy/ (README "Two commands"); every other field stays auto.
TOY = dict(model="toy/model", train_data="toy/train.jsonl", eval_data="toy/test.jsonl", output_dir="runs/toy")


def _normalized_name(name):
    """A model name for comparison: its last path part, lower case, letters and digits only
    ("Qwen/Qwen2.5-0.5B" -> "qwen2505b", "/models/deepseek-math-7b-base/" -> "deepseekmath7bbase")."""
    return re.sub(r"[^a-z0-9]", "", str(name).rstrip("/").split("/")[-1].lower())


def recognize_model(model):
    """(row of SIMPLERL_ZOO_MODELS, how it was recognized, released) for a hub id or a local directory, or
    (None, None, False). A name is the hub id, or a directory's own name and then the _name_or_path its
    config.json records (transformers 4 wrote it; 5 does not); released is True for the trained model the
    authors released. A directory whose config.json names no model is known by its shape (architecture and
    size): the row whose shape fields it matches, the most specific when several do."""
    config_file = Path(model) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    names = [model] if config is None else [model, config.get("_name_or_path") or ""]
    for name in filter(None, names):
        for row, entry in SIMPLERL_ZOO_MODELS.items():
            if _normalized_name(name) == _normalized_name(entry["released"]):
                return row, f"{name} is its released SimpleRL-Zoo model", True
            if _normalized_name(name) in {_normalized_name(alias) for alias in [row, *entry["hub_ids"]]}:
                return row, f"named {name}", False
    if config is None or config.get("_name_or_path"):
        return None, None, False
    matches = sorted(((len(entry["shape"]), row) for row, entry in SIMPLERL_ZOO_MODELS.items()
                      if all(config.get(key) == value for key, value in entry["shape"].items())), reverse=True)
    if matches and (len(matches) == 1 or matches[0][0] > matches[1][0]):  # Qwen2.5-Math-7B: 7B's shape, 4K context
        return matches[0][1], f"{model}/config.json: a {config['model_type']} of {matches[0][1]}'s shape", False
    return None, None, False


def recipe_fields(recipe):
    """{Config field: value} of a recipe: simplerl-zoo/<row>, simplerl-blog or toy."""
    if recipe == "simplerl-blog":
        return dict(SIMPLERL_BLOG)
    if recipe == "toy":
        return dict(TOY)
    row = SIMPLERL_ZOO_MODELS[recipe.removeprefix("simplerl-zoo/")]
    return dict(model=row["hub_ids"][0],
                train_data=SIMPLERL_ZOO_DATA.format(prompt=row["prompt"], difficulty=DIFFICULTY_SPLITS[row["difficulty"]]),
                template=PROMPT_TEMPLATES_OF[row["prompt"]], kl_coef=row["kl_coef"], **SIMPLERL_ZOO_SHARED)


def apply_recipe(config, given):
    """Resolve config.recipe: every field the recipe sets and no flag in `given` (the fields written on the
    command line) set takes the recipe's value, and config.recipe becomes the recipe's full name (or none).
    Prints one line: which recipe, why, and its fields ("(flag)" where a flag kept its own value)."""
    say = print if int(os.environ.get("RANK", "0")) == 0 else (lambda *args: None)
    recipe, why = config.recipe, f"--recipe {config.recipe}"
    if recipe in ("auto", "simplerl-zoo"):
        row, why, _ = recognize_model(config.model)
        if row is None:
            rows = ", ".join(SIMPLERL_ZOO_MODELS)
            if recipe == "simplerl-zoo":
                sys.exit(f"--recipe simplerl-zoo: SimpleRL-Zoo did not train {config.model} (it trained {rows}); "
                         "name a row with --recipe simplerl-zoo/<model>")
            say(f"recipe: none: SimpleRL-Zoo did not train {config.model}; the defaults hold "
                "(--recipe simplerl-zoo/<model> applies one of its rows anyway)")
            config.recipe = "none"
            return config
        recipe = f"simplerl-zoo/{row}"
    if recipe == "none":
        return config
    if recipe not in ("simplerl-blog", "toy") and recipe.removeprefix("simplerl-zoo/") not in SIMPLERL_ZOO_MODELS:
        sys.exit(f"--recipe {recipe}: unknown; choose from auto, simplerl-zoo, "
                 + ", ".join(f"simplerl-zoo/{row}" for row in SIMPLERL_ZOO_MODELS) + ", simplerl-blog, toy, none")
    fields = recipe_fields(recipe)
    if config.recipe in ("auto", "simplerl-zoo"):
        fields.pop("model")  # the recipe was found by the model: it is already the one
    if "prompts_per_step" in given and "mini_batch_prompts" in fields and "mini_batch_prompts" not in given:
        # A recipe's mini-batch goes with its batch: keep its number of updates per rollout where that divides.
        updates = fields["prompts_per_step"] // fields["mini_batch_prompts"]
        fields["mini_batch_prompts"] = (config.prompts_per_step // updates if config.prompts_per_step % updates == 0
                                        else config.prompts_per_step)
    for name, value in fields.items():
        if name not in given:
            setattr(config, name, value)
    config.recipe = recipe
    say(f"recipe: {recipe} ({why}): " + ", ".join(
        f"{name} {getattr(config, name)}" + (" (flag)" if name in given and getattr(config, name) != value else "")
        for name, value in fields.items()))
    if "prompts_per_step" in fields and not torch.cuda.is_available():
        say(f"note: no GPU: this recipe's rollouts ({config.prompts_per_step} prompts x {config.samples_per_prompt} "
            f"samples, up to {config.max_new_tokens} tokens) are sized for GPUs; flags override them")
    return config


def parse_config(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    given_parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)  # no defaults
    for config_field in dataclasses.fields(Config):
        name = "--" + config_field.name.replace("_", "-")
        kind = config_field.type
        default = config_field.default
        help = f"{config_field.metadata['help']} (default: {'auto' if default is None else repr(default)})"
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help)
            given_parser.add_argument(name, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(name, type=kind, default=default, help=help,
                                choices=config_field.metadata["choices"])
            given_parser.add_argument(name, type=kind)
    config = Config(**vars(parser.parse_args(argv)))
    given = set(vars(given_parser.parse_args(argv)))  # the fields a flag on the command line set
    return apply_recipe(config, given)


def resolve_auto(config, on_gpu, world_size=1):
    """Fill the fields left at None from GPU_DEFAULTS or CPU_DEFAULTS; stop on contradictory flags."""
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
    if world_size % config.rollout_tp:
        sys.exit(f"--rollout-tp {config.rollout_tp} does not divide the {world_size} ranks into engine groups")
    if config.rollout_tp > 1 and config.rollout_engine == "hf":
        sys.exit("--rollout-tp needs the vLLM engine (--rollout-engine vllm or auto)")
    if config.prompts_per_step % world_size:
        sys.exit(f"--prompts-per-step {config.prompts_per_step} does not split evenly over {world_size} ranks")
    if config.clip_ratio_high is not None and config.clip_ratio_high < config.clip_ratio:
        sys.exit(f"--clip-ratio-high {config.clip_ratio_high} is below --clip-ratio {config.clip_ratio}")
    if config.dual_clip is not None and config.dual_clip <= 1:
        sys.exit(f"--dual-clip must be above 1 (got {config.dual_clip}): it bounds the loss at c * |advantage|")
    if config.kl_in_reward and config.kl_coef <= 0:
        sys.exit("--kl-in-reward needs --kl-coef above 0")
    if config.tis_cap is not None and config.tis_cap <= 0:
        sys.exit(f"--tis-cap must be positive (got {config.tis_cap})")
    if config.temperature <= 0:
        sys.exit("--temperature must be above 0 for rollouts: PPO needs the sampling distribution's log-probs")
    if config.keep_checkpoints < 1:
        sys.exit("--keep-checkpoints must be at least 1")
    if config.vllm_sleep and not on_gpu:
        print("note: --vllm-sleep has no effect without a GPU; ignored")
        config.vllm_sleep = False
    if config.sharding == "fsdp" and config.optim == "adamw8bit":
        sys.exit("--optim adamw8bit cannot run with --sharding fsdp: bitsandbytes' 8-bit kernels refuse FSDP2's "
                 "sharded (DTensor) weights. Use --optim adamw (sharded, its state is 1/N per GPU anyway) or "
                 "--sharding replicate")
    if config.sharding == "fsdp" and config.rollout_engine == "hf":
        sys.exit("--rollout-engine hf cannot run with --sharding fsdp: each rank would generate a different number "
                 "of tokens, and every forward pass of a sharded model needs all ranks. Use vLLM, or --sharding "
                 "replicate")
    if config.fsdp_offload and config.sharding == "replicate":
        sys.exit("--fsdp-offload needs --sharding fsdp (or auto)")
    if config.fsdp_offload and not on_gpu:
        sys.exit("--fsdp-offload needs GPUs (FSDP2's CPU offload moves the shards between CPU and GPU memory)")
    return config


def choose_sharding(config, model_path, world_size, on_gpu, use_vllm):
    """replicate or fsdp (under torchrun), none (one process). auto: fsdp when the replicated training
    state, float32 weights + gradients + AdamW's two moments (16 bytes a parameter), the float32
    reference (4) and the critic (16), would take more than half of the memory the engine leaves a GPU
    (the other half is for activations); replicas otherwise: they gather nothing, and 8-bit AdamW and
    transformers generate run on them."""
    if world_size == 1:
        return "none"
    if config.sharding != "auto":
        return config.sharding
    if config.fsdp_offload:
        return "fsdp"
    if config.optim == "adamw8bit" or not use_vllm:
        return "replicate"
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: counts the parameters without loading the weights
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
                         .parameters())
    state_bytes = parameters * (16 + 4 * (config.kl_coef > 0) + 16 * (config.adv_estimator == "gae"))
    if on_gpu:
        device_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    else:
        device_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return "fsdp" if state_bytes > 0.5 * (1 - config.vllm_memory_utilization) * device_bytes else "replicate"


#### Helpers


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def attention_implementation():
    """flash_attention_2 where flash-attn is installed (GPUs; it also runs packed rows without a mask),
    else PyTorch's sdpa."""
    import importlib.util

    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


def load_model(path, device, gradient_checkpointing=False):
    from transformers import AutoModelForCausalLM

    # Float32 master weights; on a GPU the forward passes run under bf16 autocast (mixed precision).
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation=attention_implementation()).to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_critic(path, device, gradient_checkpointing=False):
    """The value model for gae: the policy's network with a fresh scalar head (as verl's critic)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0  # dropout would make the value estimates noisy
    critic = AutoModelForTokenClassification.from_pretrained(
        path, config=config, dtype=torch.float32, attn_implementation=attention_implementation()).to(device)
    if gradient_checkpointing:
        critic.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return critic


def next_prompt_batch(data_state, num_problems, prompts_per_step, seed):
    """The next prompts_per_step problem indices. Each epoch is a fresh shuffle (seeded by the epoch) of the
    problems not yet marked solved; a batch never straddles two epochs. All position is in data_state
    (epoch, order, position, solved), which checkpoints save: a resumed run takes the same batches."""
    order = data_state.get("order")
    if order is None or data_state["position"] + prompts_per_step > len(order):
        epoch = data_state["epoch"] + (order is not None)
        if num_problems - len(data_state["solved"]) < prompts_per_step:
            print(f"--drop-solved-prompts: only {num_problems - len(data_state['solved'])} unsolved problems left, "
                  f"fewer than --prompts-per-step {prompts_per_step}; every problem is back in from epoch {epoch}")
            data_state["solved"].clear()
        order = [index for index in range(num_problems) if index not in data_state["solved"]]
        random.Random(seed + epoch).shuffle(order)
        data_state.update(epoch=epoch, order=order, position=0)
    batch = order[data_state["position"]:data_state["position"] + prompts_per_step]
    data_state["position"] += prompts_per_step
    return batch


def new_data_state():
    return {"epoch": 0, "order": None, "position": 0, "solved": set()}


def parse_stages(config):
    """The run as a list of stages, each a dict of STAGE_FIELDS. Without --stages: one stage, the flags."""
    flags = {name: getattr(config, name) for name in STAGE_FIELDS}
    if not config.stages:
        specs = [{}]
    elif config.stages.endswith(".json"):
        if not Path(config.stages).exists():
            sys.exit(f"--stages {config.stages}: no such file")
        try:
            specs = json.loads(Path(config.stages).read_text())
        except ValueError as error:
            sys.exit(f"--stages {config.stages}: not valid JSON ({error})")
    else:
        specs = [dict(item.strip().split("=", 1) if "=" in item else (item.strip(), None)
                      for item in part.split(",") if item.strip())
                 for part in config.stages.split(";") if part.strip()]
    if not isinstance(specs, list) or not specs or not all(isinstance(spec, dict) for spec in specs):
        sys.exit(f"--stages {config.stages!r}: expected a non-empty list of stages, each of field=value pairs")
    kinds = {f.name: f.type for f in dataclasses.fields(Config)}
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(Config)}
    stages = []
    for number, spec in enumerate(specs, 1):
        unknown = sorted(set(spec) - set(STAGE_FIELDS))
        if unknown:
            sys.exit(f"--stages: stage {number} sets {', '.join(unknown)}; a stage may set {', '.join(STAGE_FIELDS)}")
        stage = dict(flags)
        for name, value in spec.items():
            if value is None:
                sys.exit(f"--stages: stage {number}: {name} has no value (write {name}=...)")
            try:
                stage[name] = kinds[name](value) if isinstance(value, str) else value
            except (TypeError, ValueError):
                sys.exit(f"--stages: stage {number}: {name}={value!r} is not a valid {kinds[name].__name__}")
        # The checks resolve_auto makes of the flags, made of every stage.
        problems = [f"{name} must be at least 1" for name in ("max_steps", "max_new_tokens")
                    if not isinstance(stage[name], int) or stage[name] < 1]
        if not isinstance(stage["temperature"], (int, float)) or stage["temperature"] <= 0:
            problems.append("temperature must be above 0 (PPO needs the sampling distribution's log-probs)")
        if stage["task"] not in choices["task"]:
            problems.append(f"task must be one of {', '.join(choices['task'])}")
        if problems:
            sys.exit(f"{'--stages: stage ' + str(number) if config.stages else 'flags'}: {'; '.join(problems)}")
        stages.append(stage)
    return stages


def stage_at(stages, step):
    """(stage number, stage) that global step `step` (1-based) falls in."""
    end = 0
    for number, stage in enumerate(stages):
        end += stage["max_steps"]
        if step <= end:
            return number, stage
    return len(stages) - 1, stages[-1]


#### Data parallel: one process per GPU under torchrun (a single process needs nothing)


def init_distributed(on_gpu):
    """(rank, world_size, device). torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. On GPUs, NCCL carries the
    gradients and gloo the small CPU tensors (counts, metrics) that NCCL would refuse."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1:
        if on_gpu:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if on_gpu else "gloo")
    return rank, world_size, torch.device(f"cuda:{local_rank}" if on_gpu else "cpu")


def gather_lists(items, world_size):
    """Every rank's list, concatenated in rank order, on every rank."""
    if world_size == 1:
        return list(items)
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, list(items))
    return [item for rank_items in gathered for item in rank_items]


def rank_share(items, rank, world_size):
    """This rank's contiguous share of a list (shares differ by at most one item)."""
    return items[rank * len(items) // world_size:(rank + 1) * len(items) // world_size]


def barrier(world_size):
    if world_size > 1:
        torch.distributed.barrier()


#### Checkpoints: everything needed to continue exactly where a run stopped

# Flags that may change between a run and its continuation: they change how long it runs, what is
# logged and evaluated, or how memory is used, not what is trained. (--max-steps lengthens the run,
# or with --stages its last stage.)
RESUMABLE_CHANGES = {"max_steps", "save_every", "keep_checkpoints", "resume", "eval_every", "eval_data",
                     "eval_benchmarks", "eval_data_dir", "eval_limit", "log_samples", "report_to",
                     "reflection_keywords", "micro_batch_size", "vllm_memory_utilization", "vllm_sleep",
                     "gradient_checkpointing", "rollout_engine", "sharding", "fsdp_offload",
                     "max_tokens_per_micro_batch", "pack_sequences",
                     "recipe", "dry_run"}  # (what a recipe sets is compared field by field)


def checkpoint_dirs(output_dir):
    """The complete checkpoints, oldest first (a half-written one is still named .tmp_step_*)."""
    return sorted((output_dir / "checkpoints").glob("step_*"))


def rng_states():
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_full_model(model, tokenizer, directory, main_process):
    """A save_pretrained directory (with the tokenizer) of the whole model, which vLLM and transformers
    load as it is. A sharded model is gathered one tensor at a time (every rank takes part); rank 0
    collects them in CPU memory and writes."""
    from ppo import full_weights, is_sharded

    if not is_sharded(model):
        if main_process:
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
        return
    state = {}
    for name, tensor in full_weights(model):
        if main_process:
            state[name] = tensor.cpu()
    if main_process:
        model.save_pretrained(directory, state_dict=state)
        tokenizer.save_pretrained(directory)


def training_states(policy, optimizer, critic, critic_optimizer):
    """The models' weights and optimizer states as torch.distributed.checkpoint saves and loads them:
    each rank its own shards of a sharded model (nothing is gathered), one copy of replicated ones."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    states = {}
    for name, model, model_optimizer in (("policy", policy, optimizer), ("critic", critic, critic_optimizer)):
        if model is not None:
            states[name], states[f"{name}_optimizer"] = get_state_dict(model, model_optimizer)
    return states


def load_training_state(checkpoint, *, policy, optimizer, critic, critic_optimizer):
    """Weights and optimizer states from checkpoint/training_state, into models of any sharding (the
    checkpoint may have been written with another one, or another number of ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    states = training_states(policy, optimizer, critic, critic_optimizer)
    dcp.load(states, checkpoint_id=checkpoint / "training_state")
    for name, model, model_optimizer in (("policy", policy, optimizer), ("critic", critic, critic_optimizer)):
        if model is not None:
            set_state_dict(model, model_optimizer, model_state_dict=states[name],
                           optim_state_dict=states[f"{name}_optimizer"])


def save_checkpoint(output_dir, step, *, rank, world_size, keep, policy, tokenizer, optimizer, critic,
                    critic_optimizer, trainer_state):
    """OUTPUT_DIR/checkpoints/step_N: model/ (save_pretrained, with the tokenizer), training_state/ (the
    policy's and critic's weights and optimizer states, sharded as they are: torch.distributed.checkpoint),
    trainer_state.pt (scheduler, step, data position) and rng_rank<r>.pt per rank. It is written under a
    temporary name and renamed when complete, so a crash while saving leaves the previous checkpoint as
    the newest; only the newest `keep` are kept."""
    import torch.distributed.checkpoint as dcp

    root = output_dir / "checkpoints"
    temporary, final = root / f".tmp_step_{step:06d}", root / f"step_{step:06d}"
    if rank == 0:
        for unfinished in root.glob(".tmp_step_*"):  # left by a crash while saving
            shutil.rmtree(unfinished)
        temporary.mkdir(parents=True)
    barrier(world_size)
    save_full_model(policy, tokenizer, temporary / "model", main_process=rank == 0)
    dcp.save(training_states(policy, optimizer, critic, critic_optimizer), checkpoint_id=temporary / "training_state")
    if rank == 0:
        torch.save(trainer_state, temporary / "trainer_state.pt")
    torch.save(rng_states(), temporary / f"rng_rank{rank}.pt")
    barrier(world_size)
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)  # atomic: the checkpoint exists whole or not at all
        for old in checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old)
    barrier(world_size)
    return final


def find_resume_checkpoint(config, output_dir):
    """The checkpoint to continue from, or None to start afresh. Stops, before any model is loaded, when
    the output dir holds a different run, or when --resume / --no-resume cannot be honoured."""
    saved_config = output_dir / "config.json"
    checkpoints = checkpoint_dirs(output_dir)
    # A run that died before its first checkpoint left nothing to protect: it may start over differently.
    if saved_config.exists() and (checkpoints or (output_dir / "final").exists()):
        saved, current = json.loads(saved_config.read_text()), dataclasses.asdict(config)
        differ = [name for name in current if name not in RESUMABLE_CHANGES and saved.get(name) != current[name]]
        if differ:
            sys.exit(f"{output_dir} holds a different run: " + "; ".join(
                f"--{name.replace('_', '-')} was {saved.get(name)!r}, now {current[name]!r}" for name in differ[:3])
                + ". Choose another --output-dir, or delete that one.")
    if config.resume is False and checkpoints:
        sys.exit(f"{output_dir} holds checkpoints ({checkpoints[-1].name}) and --no-resume would overwrite "
                 "them: delete them or choose another --output-dir")
    if config.resume and not checkpoints:
        sys.exit(f"--resume: no checkpoint in {output_dir / 'checkpoints'}")
    return checkpoints[-1] if checkpoints and config.resume is not False else None


def open_log(path, resume_step):
    """The log file to append to: rows a killed run wrote after its last checkpoint are dropped first."""
    if resume_step is None or not path.exists():
        return open(path, "w")
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= resume_step:
                kept.append(line + "\n")
        except (ValueError, KeyError):  # a line cut short by the kill
            pass
    path.write_text("".join(kept))
    return open(path, "a")


#### The loop


def main(argv=None):
    config = parse_config(argv)
    on_gpu = torch.cuda.is_available()
    if config.dry_run:  # the settings this command would run with (under torchrun: its WORLD_SIZE); nothing starts
        config = resolve_auto(config, on_gpu, int(os.environ.get("WORLD_SIZE", "1")))
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return config
    rank, world_size, device = init_distributed(on_gpu)
    config = resolve_auto(config, on_gpu, world_size)
    # Ranks sharing one rollout engine (--rollout-tp): a group per engine; without it, a group per rank.
    rollout_group, rollout_groups = rank // config.rollout_tp, world_size // config.rollout_tp
    autocast_dtype = torch.bfloat16 if on_gpu else None  # fp32 on CPU: faster there and exact
    seed_everything(config.seed)  # the same on every rank: the replicas must start identical
    main_process = rank == 0
    say = print if main_process else (lambda *args, **kwargs: None)

    from transformers import AutoTokenizer

    from data.problems import (TEMPLATE_STOP_STRINGS, default_template, load_problems, problem_prompt, task_of,
                               task_template)
    from evaluate import (benchmark_metrics, dynamics_metrics, generate_and_grade, load_benchmarks, make_reporters,
                          model_context_length, parse_keywords, summarize)
    from torch.distributed.device_mesh import init_device_mesh

    from ppo import all_ranks_sum, batched_forward, compute_advantages, is_sharded, kl_estimate, make_optimizer, \
        ppo_update, response_logprobs_and_entropy, response_values, shard_model
    from reward import grade_batch
    from rollout import HFEngine, VLLMEngine, vllm_available
    from sft import load_sft_pairs, train_supervised

    # Problems with the flags and the output dir are found here, before any model is loaded.
    output_dir = Path(config.output_dir)
    stages = parse_stages(config)
    resume_from = find_resume_checkpoint(config, output_dir)
    barrier(world_size)  # every rank has read the old config.json before rank 0 rewrites it
    if main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    barrier(world_size)
    if not (output_dir / "config.json").exists():  # ranks on other nodes must see rank 0's files
        sys.exit(f"rank {rank}: {output_dir} is not shared with rank 0; on several nodes --output-dir must be "
                 "on a shared filesystem (checkpoints, the warm-up's model and resuming all need it)")

    #### Data: problems -> prompts, stage by stage (read before anything is loaded: bad data stops here)
    stage_problems, stage_tasks = [], []
    for number, stage in enumerate(stages, 1):
        try:
            problems = load_problems(stage["train_data"], stage["min_level"], stage["max_level"],
                                     task=None if stage["task"] == "auto" else stage["task"])
        except (ValueError, FileNotFoundError) as error:
            sys.exit(f"training data of stage {number}: {error}")
        tasks = sorted({task_of(p) for p in problems})
        if len(tasks) > 1:
            sys.exit(f"{stage['train_data']} mixes {' and '.join(tasks)} problems: give each task its own stage")
        stage_problems.append(problems)
        stage_tasks.append(tasks[0])
    try:
        eval_problems = load_problems(config.eval_data) if config.eval_data else []
        eval_benchmarks = (load_benchmarks(config.eval_benchmarks, config.eval_data_dir, config.eval_limit or None)
                           if config.eval_benchmarks else {})
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"evaluation data: {error}")
    held_out = {"": eval_problems, **eval_benchmarks} if eval_problems else dict(eval_benchmarks)

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = config.template or default_template(tokenizer)
    for number, (stage, problems) in enumerate(zip(stages, stage_problems), 1):
        lengths = [len(ids) for ids in tokenizer([problem_prompt(p, template) for p in problems])["input_ids"]]
        kept = [p for p, length in zip(problems, lengths) if length <= config.max_prompt_len]
        say(f"stage {number}: {stage['max_steps']} steps on {len(kept)} {stage_tasks[number - 1]} problems from "
            f"{stage['train_data']} ({len(problems) - len(kept)} skipped as longer than --max-prompt-len "
            f"{config.max_prompt_len}), at most {stage['max_new_tokens']} new tokens, temperature {stage['temperature']}")
        if len(kept) < config.prompts_per_step:
            sys.exit(f"stage {number}: only {len(kept)} training problems, fewer than --prompts-per-step "
                     f"{config.prompts_per_step}")
        stage_problems[number - 1] = kept
    keywords = parse_keywords(config.reflection_keywords)
    longest_prompt = max([config.max_prompt_len] + [len(tokenizer(problem_prompt(p, template))["input_ids"])
                                                    for problems in held_out.values() for p in problems])
    longest_response = max(stage["max_new_tokens"] for stage in stages)
    total_steps = sum(stage["max_steps"] for stage in stages)

    # A continuation must see the stages and the data its checkpoint was made with (the data position
    # indexes into each stage's problems). Only the last stage may grow (--max-steps, or its max_steps).
    trainer_state = None
    stage_sizes = [len(problems) for problems in stage_problems]
    if resume_from is not None:
        trainer_state = torch.load(resume_from / "trainer_state.pt", weights_only=False, map_location="cpu")
        extendable = lambda stages: [dict(stage, max_steps=None) if number == len(stages) - 1 else stage  # noqa: E731
                                     for number, stage in enumerate(stages)]
        if (extendable(trainer_state["stages"]), trainer_state["stage_sizes"]) != (extendable(stages), stage_sizes):
            sys.exit(f"{resume_from} was made with other stages or other data (stages {trainer_state['stages']}, "
                     f"problems per stage {trainer_state['stage_sizes']}; now {stages}, {stage_sizes}). Choose "
                     "another --output-dir to start a new run.")

    #### Models: the policy (trained), the reference (frozen, for the KL loss), the rollout engine
    use_vllm = config.rollout_engine == "vllm" or (config.rollout_engine == "auto" and vllm_available())
    sharding = choose_sharding(config, config.model, world_size, on_gpu, use_vllm)
    if sharding == "fsdp" and not use_vllm:
        sys.exit("--sharding fsdp needs the vLLM engine (transformers generate would make each rank run a different "
                 "number of forward passes of the sharded model); install vllm, or use --sharding replicate")
    if world_size > 1:
        say(f"sharding: {sharding} over {world_size} ranks" + (" (auto)" if config.sharding == "auto" else ""))
    # Models to be sharded are read into CPU memory; FSDP2 then moves each layer's shard to its GPU.
    load_device = torch.device("cpu") if sharding == "fsdp" else device
    start_model = config.model  # what the reference, the critic and (unless resuming) the policy start from
    if config.sft_steps > 0 and resume_from is not None:
        start_model = str(output_dir / "sft")  # the warm-up was done before the checkpoint was written
    policy = load_model(str(resume_from / "model") if resume_from else config.model, load_device,
                        config.gradient_checkpointing)
    policy.train()
    if config.sft_steps > 0 and resume_from is None:
        # SimpleRL: supervised warm-up first; the RL stage then starts from, and stays close to, its result.
        # Under torchrun rank 0 warms up (unsharded, on its GPU) and the other ranks load its result.
        start_model = str(output_dir / "sft")
        if main_process:
            pairs, counts = load_sft_pairs(config.sft_data, template, tokenizer)
            say(f"supervised warm-up on {config.sft_data}: {json.dumps(counts)}")
            train_supervised(policy.to(device), tokenizer, pairs, steps=config.sft_steps,
                             batch_size=config.sft_batch_size, lr=config.sft_lr, optim=config.optim, seed=config.seed,
                             autocast_dtype=autocast_dtype)
            policy.to(load_device).save_pretrained(start_model)
            tokenizer.save_pretrained(start_model)
        barrier(world_size)
        if not main_process:
            policy = load_model(start_model, load_device, config.gradient_checkpointing).train()
    reference = None
    if config.kl_coef > 0:
        reference = load_model(start_model, load_device).eval().requires_grad_(False)
    critic = None
    if config.adv_estimator == "gae":
        critic = load_critic(start_model, load_device, config.gradient_checkpointing).train()
    if sharding == "fsdp":
        # FSDP2 over all ranks: each keeps 1/world_size of every model's weights (and of the policy's and the
        # critic's gradients and optimizer state). Its mixed precision replaces autocast on GPUs.
        mesh = init_device_mesh(device.type, (world_size,))
        for model in (policy, reference, critic):
            if model is not None:
                shard_model(model, mesh, mixed_precision=on_gpu, cpu_offload=config.fsdp_offload)
        autocast_dtype = None

    # How the update's passes are cut and laid out (ppo.micro_batches, ppo.model_inputs), and whether the
    # separate old-log-prob pass is needed at all (not when strictly on-policy: see step 5).
    pack = config.pack_sequences if config.pack_sequences is not None else \
        attention_implementation().startswith("flash")
    reuse_old_logprobs = config.prompts_per_step == config.mini_batch_prompts and config.ppo_epochs == 1 \
        and not config.kl_in_reward

    # The engine starts before the optimizer states exist: vLLM claims its share of the free GPU memory
    # at start, which a resumed run's Adam moments would otherwise have taken.
    # A response that would run past the model's context stops there (counted as truncated).
    context_length = model_context_length(start_model) or longest_prompt + longest_response
    if use_vllm:
        engine = VLLMEngine(str(resume_from / "model") if resume_from else start_model,
                            dtype="bfloat16" if on_gpu else "float32", seed=config.seed + rollout_group,
                            tensor_parallel_size=config.rollout_tp,
                            max_model_len=min(longest_prompt + longest_response, context_length),
                            memory_utilization=config.vllm_memory_utilization, enable_sleep=config.vllm_sleep)
    else:
        if config.rollout_engine == "auto":
            say("vLLM is not installed: rolling out with transformers generate (much slower)")
        engine = HFEngine(policy, tokenizer)

    optimizer, scheduler = make_optimizer(policy, config.optim, config.lr, config.weight_decay,
                                          config.lr_warmup_steps)
    critic_optimizer = None
    if critic is not None:
        critic_optimizer, _ = make_optimizer(critic, config.optim, config.critic_lr, config.weight_decay, 0)
    first_step, bad_steps_in_a_row = 1, 0
    data_states = [new_data_state() for _ in stages]
    if resume_from is not None:
        load_training_state(resume_from, policy=policy, optimizer=optimizer, critic=critic,
                            critic_optimizer=critic_optimizer)
        scheduler.load_state_dict(trainer_state["scheduler"])
        first_step, bad_steps_in_a_row = trainer_state["step"] + 1, trainer_state["bad_steps_in_a_row"]
        data_states = trainer_state["data_states"]
        rng_file = resume_from / f"rng_rank{rank}.pt"
        if rng_file.exists():  # absent when resuming on more ranks than wrote the checkpoint
            rng = torch.load(rng_file, weights_only=False)
            random.setstate(rng["python"])
            torch.set_rng_state(rng["torch"])
            if on_gpu and "cuda" in rng:
                torch.cuda.set_rng_state_all(rng["cuda"])
        say(f"resuming from {resume_from} at step {first_step}")

    def evaluate(step, max_new_tokens):
        """Greedy accuracy on the held-out sets, on the colocated engine (no second copy of the model).
        Under torchrun each rank generates for its share of every set; the records are gathered."""
        batch_size = None if use_vllm else 16  # transformers generate: bounded batches, or out of memory
        names = [name for name, problems in held_out.items() for _ in rank_share(problems, rollout_group, rollout_groups)]
        local = [p for problems in held_out.values() for p in rank_share(problems, rollout_group, rollout_groups)]
        records = generate_and_grade(engine, local, template, max_new_tokens, keywords=keywords,
                                     batch_size=batch_size) if local else []
        # The ranks of an engine group generated the same records: its first rank's count once.
        records = gather_lists(zip(names, records) if rank % config.rollout_tp == 0 else [], world_size)
        summaries = {name: summarize([r for n, r in records if n == name], keywords=keywords) for name in held_out}
        metrics = {f"eval/{key}": value for key, value in summaries.pop("", {}).items()}
        if summaries:
            metrics.update(benchmark_metrics(summaries))  # eval/<name>/<key> and eval/average/accuracy
        if main_process:
            tqdm.write(f"step {step}: held-out " + ", ".join(f"{name} {value:.3f}" for name, value in metrics.items()
                                                              if name.endswith("accuracy")))
        return metrics

    resume_step = first_step - 1 if resume_from is not None else None
    metrics_file = open_log(output_dir / "metrics.jsonl", resume_step) if main_process else None
    samples_file = open_log(output_dir / "samples.jsonl", resume_step) if main_process else None
    report = make_reporters(config.report_to if main_process else "none", output_dir, dataclasses.asdict(config))
    if held_out and resume_from is None:
        row = {"step": 0, **evaluate(0, stages[0]["max_new_tokens"])}
        if main_process:
            metrics_file.write(json.dumps(row) + "\n")
            report(row, 0)

    # SIGTERM (preemption, scancel, kill): finish the step, save a checkpoint, exit.
    signals_received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signals_received.append(signum))
    progress = tqdm(range(first_step, total_steps + 1), initial=first_step - 1, total=total_steps, desc="zero-rl",
                    dynamic_ncols=True, disable=not main_process)
    for step in progress:
        timings, step_start = {}, time.perf_counter()
        stage_number, stage = stage_at(stages, step)
        task, all_problems = stage_tasks[stage_number], stage_problems[stage_number]
        stage_template = task_template(template, task)

        #### 1-2. Rollout: samples_per_prompt responses to each of prompts_per_step prompts (this rank's share)
        start = time.perf_counter()
        batch_indices = next_prompt_batch(data_states[stage_number], len(all_problems), config.prompts_per_step,
                                          seed=config.seed + 1000 * stage_number)
        group_indices = rank_share(batch_indices, rollout_group, rollout_groups)  # this rank's engine's prompts
        group_problems = [all_problems[index] for index in group_indices]
        engine.wake_up()
        group_samples = engine.generate([problem_prompt(p, template) for p in group_problems],
                                        samples_per_prompt=config.samples_per_prompt,
                                        temperature=stage["temperature"], top_p=config.top_p,
                                        max_new_tokens=stage["max_new_tokens"], stop=TEMPLATE_STOP_STRINGS[stage_template],
                                        seed=random.Random(f"rollout {config.seed} {step} {rollout_group}").randrange(2 ** 31))
        # With --rollout-tp K the group's K ranks sampled the same responses; each trains on its share of the
        # prompts (whole groups of samples). Without it, a rank's share is all its engine generated.
        mine = rank_share(range(len(group_problems)), rank % config.rollout_tp, config.rollout_tp)
        local_indices, problems = [group_indices[i] for i in mine], [group_problems[i] for i in mine]
        samples = [dataclasses.replace(s, prompt_index=s.prompt_index - mine.start) for s in group_samples
                   if s.prompt_index in mine]
        if config.vllm_sleep:
            engine.sleep()
        timings["time/rollout"] = time.perf_counter() - start

        #### 3. Reward: math, the boxed answer against the gold one; code, the program against the tests
        start = time.perf_counter()
        responses = [s.response_text for s in samples]
        if task == "code":
            from reward_code import grade_code_batch

            # The ranks of one box share its cores: each takes its part, so time limits mean the same.
            workers = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            graded = grade_code_batch(responses, [problems[s.prompt_index]["tests"] for s in samples],
                                      partial_credit=config.code_partial_credit, num_workers=workers)
        else:
            graded = grade_batch(responses, [problems[s.prompt_index]["answer"] for s in samples],
                                 config.reward_scheme)
        rewards = torch.tensor(graded["reward"], dtype=torch.float32)  # [B]
        timings["time/reward"] = time.perf_counter() - start

        #### 4. Groups with no signal: every sample of the prompt got the same reward
        samples_per_prompt = config.samples_per_prompt
        grouped_rewards = rewards.view(-1, samples_per_prompt)  # [prompts, samples_per_prompt]
        zero_signal = (grouped_rewards == grouped_rewards[:, :1]).all(1)
        zero_signal &= samples_per_prompt > 1  # a group of one has no baseline to compare against
        train_samples, train_rewards = samples, rewards
        if config.drop_zero_signal_groups:
            keep = (~zero_signal).repeat_interleave(samples_per_prompt)  # [B]
            train_samples = [s for s, kept in zip(samples, keep.tolist()) if kept]
            train_rewards = rewards[keep]
        if config.drop_solved_prompts:  # AceReason: a prompt solved by every sample has nothing left to teach
            solved = torch.tensor(graded["correct"]).view(-1, samples_per_prompt).all(1)
            data_states[stage_number]["solved"].update(
                index for index, done in gather_lists(zip(local_indices, solved.tolist()), world_size) if done)

        #### 5. Old-policy and reference log-probs of the sampled tokens (and the critic's values)
        start = time.perf_counter()
        sequences = [s.prompt_token_ids + s.response_token_ids for s in train_samples]
        prompt_token_counts = [len(s.prompt_token_ids) for s in train_samples]
        response_lengths = torch.tensor([len(s.response_token_ids) for s in train_samples], dtype=torch.long)  # [B]
        width = int(response_lengths.max()) if train_samples else 0
        response_mask = torch.arange(width)[None, :] < response_lengths[:, None]  # [B, R]
        forward_args = dict(micro_batch_size=config.micro_batch_size, max_tokens=config.max_tokens_per_micro_batch,
                            pack=pack, autocast_dtype=autocast_dtype, device=device, lockstep=is_sharded(policy),
                            pad_token_id=tokenizer.pad_token_id)
        logprobs_of = lambda model: (lambda seqs, lens: response_logprobs_and_entropy(  # noqa: E731
            model, seqs, lens, temperature=stage["temperature"], pad_token_id=tokenizer.pad_token_id, pack=pack)[0])
        update_metrics = {}
        lr = optimizer.param_groups[0]["lr"]
        # Under torchrun a rank may have nothing left to train on (all its groups dropped) while others
        # do: it still takes part in every collective step of the update, with empty tensors.
        if int(all_ranks_sum(torch.tensor(len(train_samples)))) > 0:
            # Strictly on-policy (one mini-batch, one epoch, no KL folded into the reward): the old log-probs
            # are those of the weights about to be updated, so the update's own forward pass gives them and
            # this pass is skipped (ppo_update with old_logprobs None). Otherwise they are computed here.
            old_logprobs = None if reuse_old_logprobs else \
                batched_forward(logprobs_of(policy), sequences, prompt_token_counts, **forward_args)
            ref_logprobs = (batched_forward(logprobs_of(reference), sequences, prompt_token_counts, **forward_args)
                            if reference is not None else None)
            old_values = (batched_forward(lambda seqs, lens: response_values(critic, seqs, lens, tokenizer.pad_token_id,
                                                                             pack=pack),
                                          sequences, prompt_token_counts, **forward_args) if critic is not None else None)
            engine_logprobs = torch.zeros(response_mask.shape)  # [B, R]; its gap to the trainer's is logged
            for row, sample in enumerate(train_samples):
                engine_logprobs[row, :len(sample.response_logprobs)] = torch.tensor(sample.response_logprobs)

            #### 6. Advantages [B, R]
            kl_penalty = None
            if config.kl_in_reward and reference is not None:
                kl_penalty = kl_estimate(old_logprobs, ref_logprobs, config.kl_estimator) * response_mask
                kl_sum = all_ranks_sum(torch.tensor([float(kl_penalty.sum()), float(response_mask.sum())]))
                update_metrics["kl"] = float(kl_sum[0] / kl_sum[1].clamp(min=1))
            advantages, returns = compute_advantages(
                config.adv_estimator, train_rewards, response_mask, samples_per_prompt, kl_penalty=kl_penalty,
                kl_coef=config.kl_coef, values=old_values, gamma=config.gamma, lam=config.lam)
            loss_mask = response_mask
            if config.mask_truncated:
                truncated = torch.tensor([s.finish_reason == "length" for s in train_samples], dtype=torch.bool)
                loss_mask = response_mask & ~truncated[:, None]

            #### 7. PPO update: clipped surrogate + KL + entropy, over mini-batches of micro-batches
            batch = dict(sequences=sequences, prompt_lengths=prompt_token_counts, old_logprobs=old_logprobs,
                         ref_logprobs=ref_logprobs, engine_logprobs=engine_logprobs, advantages=advantages,
                         response_mask=loss_mask, old_values=old_values, returns=returns)
            update_metrics.update(ppo_update(
                policy, optimizer, batch, mini_batches=config.prompts_per_step // config.mini_batch_prompts,
                micro_batch_size=config.micro_batch_size, ppo_epochs=config.ppo_epochs,
                clip_ratio=config.clip_ratio, clip_ratio_high=config.clip_ratio_high, dual_clip=config.dual_clip,
                loss_agg=config.loss_agg, kl_coef=config.kl_coef, kl_estimator=config.kl_estimator,
                kl_in_loss=not config.kl_in_reward, entropy_coef=config.entropy_coef,
                max_grad_norm=config.max_grad_norm, temperature=stage["temperature"],
                pad_token_id=tokenizer.pad_token_id, seed=config.seed + step,
                max_response_length=stage["max_new_tokens"], tis_cap=config.tis_cap, critic=critic,
                critic_optimizer=critic_optimizer, value_clip=config.value_clip, autocast_dtype=autocast_dtype,
                max_tokens_per_micro_batch=config.max_tokens_per_micro_batch, pack=pack))
            scheduler.step()  # the schedule counts updates, not rollouts
            bad_steps_in_a_row = bad_steps_in_a_row + 1 if update_metrics["skipped_update_frac"] == 1.0 else 0
        timings["time/update"] = time.perf_counter() - start

        #### 8. Weight sync: the next rollout must sample from the updated policy
        start = time.perf_counter()
        engine.wake_up()
        engine.sync_weights(policy)
        timings["time/sync"] = time.perf_counter() - start

        #### 9. Log (over all ranks' samples), evaluate, checkpoint
        everything = gather_lists(zip(responses, graded["correct"], graded["reward"], graded["pred"], graded["timeouts"],
                                      [s.finish_reason for s in samples], [len(s.response_token_ids) for s in samples]),
                                  world_size)
        texts, correct, rewards_all, predictions, timeouts, finish_reasons, lengths = map(list, zip(*everything))
        zero_signal_all = gather_lists(zero_signal.tolist(), world_size)
        metrics = {
            "step": step,
            "stage": stage_number + 1,
            "reward_mean": sum(rewards_all) / len(rewards_all),
            "accuracy": sum(map(bool, correct)) / len(correct),
            "format_rate": sum(p is not None for p in predictions) / len(predictions),  # a boxed answer / a code block
            "response_length_mean": sum(lengths) / len(lengths),
            "grade_timeouts": sum(map(bool, timeouts)),  # grading cut off at its deadline
            "zero_signal_groups": sum(zero_signal_all) / len(zero_signal_all),  # dropped, with --drop-zero-signal-groups
            "lr": lr,
            **update_metrics,
            **timings,
        }
        for name in ("reward_mean", "accuracy", "response_length_mean"):  # per task, to follow math and code apart
            metrics[f"{task}/{name}"] = metrics[name]
        if task == "code":  # tests decided in the program's own interpreter (reward_code.py's docstring)
            metrics["code/in_process_tests"] = sum(gather_lists(graded["in_process_tests"], world_size))
            # programs whose grading failed (reward 0): a sandbox problem, not the policy's
            metrics["code/sandbox_errors"] = sum(map(bool, gather_lists(graded["sandbox_errors"], world_size)))
        if config.drop_solved_prompts:
            metrics["solved_prompts"] = len(data_states[stage_number]["solved"])
        # Training dynamics: reflection keywords, length of right and wrong answers, truncation
        metrics.update(dynamics_metrics(texts, correct, finish_reasons, lengths, keywords))
        if held_out and (step == total_steps or (config.eval_every and step % config.eval_every == 0)):
            start = time.perf_counter()
            metrics.update(evaluate(step, stage["max_new_tokens"]))
            timings["time/eval"] = metrics["time/eval"] = time.perf_counter() - start
        # Everything the timings above leave out: batching, gathering, logging (the checkpoint, if any, follows).
        metrics["time/other"] = time.perf_counter() - step_start - sum(timings.values())
        if main_process:
            metrics_file.write(json.dumps(metrics) + "\n")
            metrics_file.flush()
            report(metrics, step)
            for sample, prediction, reward in list(zip(samples, graded["pred"], graded["reward"]))[:config.log_samples]:
                problem = problems[sample.prompt_index]
                samples_file.write(json.dumps({"step": step, "prompt": problem_prompt(problem, template),
                                               "response": sample.response_text,
                                               "gold": problem.get("answer"), "pred": prediction, "reward": reward,
                                               "finish_reason": sample.finish_reason}) + "\n")
            samples_file.flush()
            progress.set_postfix(reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                                 len=f"{metrics['response_length_mean']:.0f}", kl=f"{metrics.get('kl', 0):.4f}")

        stop_signal = int(all_ranks_sum(torch.tensor(len(signals_received))))  # every rank stops together
        if stop_signal or (config.save_every and (step % config.save_every == 0 or step == total_steps)):
            trainer_state = {"step": step, "scheduler": scheduler.state_dict(),
                             "bad_steps_in_a_row": bad_steps_in_a_row, "data_states": data_states,
                             "stages": stages, "stage_sizes": stage_sizes}
            saved = save_checkpoint(output_dir, step, rank=rank, world_size=world_size, keep=config.keep_checkpoints,
                                    policy=policy, tokenizer=tokenizer, optimizer=optimizer, critic=critic,
                                    critic_optimizer=critic_optimizer, trainer_state=trainer_state)
            if stop_signal:
                say(f"SIGTERM: saved {saved} at step {step}; run the same command again to continue")
                sys.exit(128 + signal.SIGTERM)
        if bad_steps_in_a_row >= config.max_bad_steps:
            sys.exit(f"step {step}: {bad_steps_in_a_row} steps in a row had a non-finite loss or gradient and no "
                     f"update; stopping (see {output_dir / 'metrics.jsonl'}; a lower --lr often helps)")

    #### Save: a directory vLLM and transformers load as it is
    save_full_model(policy, tokenizer, output_dir / "final", main_process)
    if main_process:
        metrics_file.close()
        samples_file.close()
        say(f"saved {output_dir / 'final'}")
    report.close()
    barrier(world_size)


if __name__ == "__main__":
    main()
