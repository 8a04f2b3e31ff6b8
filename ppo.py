"""The policy update: log-probs, advantages, the PPO loss and the optimizer step.

Tensor layout. A rollout batch of B sequences (prompt + response, right-padded to L tokens) has its
per-token quantities in *response coordinates*: [B, R] with R the longest response, where column j is
the j-th response token, predicted from the hidden state of the token before it. response_mask [B, R]
marks the real (non-padding) response tokens. Sequence-level quantities are [B], and the
samples_per_prompt responses to one prompt are contiguous (a "group").

Several ranks (torchrun). Each rank holds its own share of the rollout, always whole groups, and the
model either replicated (every rank a full copy; we sum the gradients over ranks ourselves) or sharded
with PyTorch's FSDP2 (each rank keeps 1/N of the weights, gradients and optimizer state; FSDP2 gathers
a layer's weights just before it runs and reduce-scatters its gradients). Either way everything that
spans the batch is computed over all ranks: the whitening statistics, the loss normalizers (tokens and
sequences of the global mini-batch) and the gradients (summed, not averaged). So with one mini-batch
per rollout the update equals a single process's update on the whole batch, whatever the number of
ranks; with several, each rank shuffles its own share into them, so which samples share a mini-batch
depends on the split (the same update in distribution, not bit for bit).
"""

import math
import random

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

ADV_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "gae")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


#### Several ranks: sums over all ranks (no-ops in a single process), and FSDP2 sharding


def distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_ranks_sum(tensor, op="sum"):
    """The elementwise sum (or max) of `tensor` over all ranks, as a new tensor; the tensor itself when alone."""
    if not distributed():
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return reduced


def all_reduce_gradients(parameters):
    """Replicas: sum every gradient over the ranks (the job DistributedDataParallel does, written out).
    The loss is already normalized by global counts, so the sum (not the mean) is the whole batch's
    gradient. A rank whose share of the mini-batch was empty contributes zeros. (Sharded models need
    none of this: FSDP2 reduces their gradients itself, in the backward pass.)"""
    if not distributed():
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)


def shard_model(model, mesh, *, mixed_precision=False, cpu_offload=False):
    """Shard `model` over the ranks of `mesh` with FSDP2 (torch.distributed.fsdp.fully_shard), in place.

    Each decoder layer is one unit: its weights are all-gathered just before it runs and freed after,
    in the forward pass and again in the backward pass, and its gradients are reduce-scattered as soon
    as they are complete, so a rank holds 1/N of the weights, gradients and (through them) the optimizer
    state, plus one layer's full weights at a time. The root unit holds the rest (embeddings, final
    norm, vocabulary projection); FSDP2 keeps it gathered from the forward to the end of the backward.
    mixed_precision (GPUs): compute in bf16 from float32 master weights, reduce gradients in float32
    (what autocast does for replicas). cpu_offload: weights, gradients and optimizer state live in CPU
    memory, the optimizer step runs there (for models too big for the GPUs even when sharded).

    FSDP2 averages gradients over ranks by default; we make it sum them, because the loss is already
    normalized by the whole batch's counts (see the module docstring).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    options = dict(mesh=mesh, offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
                   mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                   if mixed_precision else MixedPrecisionPolicy())
    # The decoder layer classes, as transformers names them for model parallelism ("do not split").
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (_no_split_modules is empty)")
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no pre-scaled sum)
    return model


def is_sharded(model):
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_weights(model, dtype=None):
    """(name, tensor) for every entry of the model's state dict, each one whole, one at a time.

    A sharded entry is cast to `dtype` on each rank and then all-gathered (a collective: every rank must
    iterate, in the same order). Beyond the rank's own shard, the memory this takes is one full tensor
    at a time (the largest: the embedding matrix), never a second copy of the model."""
    for name, tensor in model.state_dict().items():
        if dtype is not None:
            tensor = tensor.to(dtype)
        if hasattr(tensor, "full_tensor"):  # a DTensor: this rank's shard
            if tensor.device.type != tensor.device_mesh.device_type:  # offloaded to CPU: gather on the GPU
                tensor = tensor.to(tensor.device_mesh.device_type)
            tensor = tensor.full_tensor()
        yield name, tensor


def clip_gradients(model, max_norm):
    """Clip the gradient norm to max_norm; returns the norm before clipping (of the whole model, also
    when sharded: FSDP2's DTensor gradients make it a norm over all ranks' shards)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def micro_batches(indices, lengths, *, micro_batch_size, max_tokens=None, pack=False, lockstep=False):
    """`indices` (into `lengths`, the sequences' token counts) grouped into micro-batches, one forward and
    backward pass each. The loss is normalized by the whole mini-batch's counts, so the grouping changes
    what is computed at once (memory, padding), never the update.

    By count: micro_batch_size sequences each, in the given order.
    By token budget (max_tokens, as verl's ppo_max_token_len_per_gpu): the sequences sorted by length,
    longest first, each micro-batch filled while the tokens its pass computes stay within the budget:
    the sum of their lengths when packed, the longest length x their number when padded. Sorting puts
    sequences of similar length together, so padded micro-batches waste little too; a sequence longer
    than the budget gets a micro-batch of its own.

    lockstep (sharded models): every forward and backward pass of a sharded model is a collective (it
    gathers weights and reduces gradients with all ranks), so every rank must run the same number of
    them, although ranks can hold different numbers of sequences (after --drop-zero-signal-groups,
    even none). The list is then padded with empty micro-batches up to the longest list of any rank;
    an empty one runs on a placeholder sequence with zero weight (placeholder_sequence)."""
    if max_tokens is None:
        batches = [indices[start:start + micro_batch_size] for start in range(0, len(indices), micro_batch_size)]
    else:
        batches = []
        for index in sorted(indices, key=lambda i: (-lengths[i], i)):
            members = batches[-1] + [index] if batches else [index]
            cost = sum(lengths[i] for i in members) if pack else len(members) * lengths[members[0]]
            if batches and cost <= max_tokens:
                batches[-1].append(index)
            else:
                batches.append([index])
    if lockstep:
        longest = int(all_ranks_sum(torch.tensor(len(batches)), op="max"))
        batches += [[] for _ in range(longest - len(batches))]
    return batches


def placeholder_sequence(pad_token_id):
    """(sequences, prompt_lengths) of one padding token answered by another: a pass that exists only to
    take part in the sharded model's collectives; whatever it computes is weighted 0."""
    return [[pad_token_id, pad_token_id]], [1]


@torch.no_grad()
def batched_forward(per_token_fn, sequences, prompt_lengths, *, micro_batch_size, autocast_dtype, device,
                    max_tokens=None, pack=False, lockstep=False, pad_token_id=0):
    """per_token_fn(sequences, prompt_lengths) -> [b, r], run micro-batch by micro-batch (micro_batches)
    into one [B, R]; lockstep: with placeholder passes where this rank has run out."""
    width = max((len(s) - p for s, p in zip(sequences, prompt_lengths)), default=0)
    out = torch.zeros(len(sequences), width)
    lengths = [len(s) for s in sequences]
    for rows in micro_batches(list(range(len(sequences))), lengths, micro_batch_size=micro_batch_size,
                              max_tokens=max_tokens, pack=pack, lockstep=lockstep):
        chunk = ([sequences[i] for i in rows], [prompt_lengths[i] for i in rows]) if rows else \
            placeholder_sequence(pad_token_id)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            values = per_token_fn(*chunk)
        if rows:
            out[torch.tensor(rows), :values.shape[1]] = values.float().cpu()
    return out


#### Log-probs, entropy and values at the response positions

def pad_sequences(sequences, pad_token_id, device):
    """Right-pad token lists to input_ids [B, L]. Right padding needs no attention mask: under the
    causal mask, real tokens only ever attend to earlier (real) tokens."""
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [pad_token_id] * (width - len(s)) for s in sequences], device=device)


def _response_positions(sequences, prompt_lengths, pad_token_id, device):
    """input_ids [B, L]; response_mask [B, R]; target_positions [B, R]: where response token j sits in L."""
    input_ids = pad_sequences(sequences, pad_token_id, device)
    prompt_lengths = torch.tensor(prompt_lengths, device=device)  # [B]
    response_lengths = torch.tensor([len(s) for s in sequences], device=device) - prompt_lengths  # [B]
    columns = torch.arange(int(response_lengths.max()), device=device)[None, :]  # [1, R]
    response_mask = columns < response_lengths[:, None]
    target_positions = (prompt_lengths[:, None] + columns).clamp(max=input_ids.shape[1] - 1)
    return input_ids, response_mask, target_positions


def _chunk_logprob_and_entropy(hidden, targets, lm_head, temperature):
    """hidden [N, H], targets [N] -> log p(target) [N] and entropy [N] of softmax(logits / temperature)."""
    # The projection runs under autocast (bf16 on a GPU, as verl); everything after it in float32, with
    # autocast off: einsum would otherwise be cast back to bf16 and ruin small entropies.
    logits = lm_head(hidden).float() / temperature  # [N, vocab]
    with torch.autocast(logits.device.type, enabled=False):
        log_normalizer = torch.logsumexp(logits, dim=-1)  # [N]
        logprob = logits.gather(-1, targets[:, None]).squeeze(-1) - log_normalizer
        probs = torch.softmax(logits, dim=-1)
        entropy = log_normalizer - torch.einsum("nv,nv->n", probs, logits)  # H = logsumexp(z) - sum_v p_v z_v
    return logprob, entropy


def model_inputs(model, sequences, prompt_lengths, pad_token_id, pack=False):
    """A micro-batch's inputs for the forward pass, padded or packed, and where its response tokens are.

    padded  input_ids [B, L], each sequence right-padded to the longest: L x B positions are computed,
            of which the padding is waste (no attention mask is needed: under the causal mask, real
            tokens only ever attend to earlier, real tokens).
    packed  input_ids [1, T], the sequences one after another (T: their total length, no padding), with
            position_ids restarting at 0 for each. transformers (5.x) reads the sequence boundaries off
            the restarted position ids and keeps each sequence's attention within itself, whatever the
            attention implementation: sdpa and eager with a block-diagonal causal mask it builds
            (T x T booleans), flex_attention with a block mask, flash_attention_2 with its variable-length
            kernels (no mask at all; use it on GPUs where it is installed). Measured here for sdpa:
            packed log-probs equal padded ones (tests/test_ppo.py).
    Returns (kwargs for model(...), response_mask [B, R], flat_targets [B, R]): response token j of
    sequence i is input_ids.flatten()[flat_targets[i, j]], predicted from the hidden state just before.
    """
    device = next(model.parameters()).device
    lengths = torch.tensor([len(s) for s in sequences], device=device)  # [B]
    prompt_lengths = torch.tensor(prompt_lengths, device=device)  # [B]
    response_lengths = lengths - prompt_lengths
    columns = torch.arange(int(response_lengths.max()) if len(sequences) else 0, device=device)[None, :]  # [1, R]
    response_mask = columns < response_lengths[:, None]  # [B, R]
    if not pack:
        input_ids = pad_sequences(sequences, pad_token_id, device)  # [B, L]
        row_starts = torch.arange(len(sequences), device=device) * input_ids.shape[1]
        kwargs = dict(input_ids=input_ids)
    else:
        input_ids = torch.tensor([[token for sequence in sequences for token in sequence]], device=device)  # [1, T]
        row_starts = torch.cumsum(lengths, 0) - lengths  # where each sequence begins in the row
        position_ids = torch.cat([torch.arange(int(length), device=device) for length in lengths])[None, :]
        kwargs = dict(input_ids=input_ids, position_ids=position_ids)  # no attention_mask: see above
    flat_targets = (row_starts[:, None] + prompt_lengths[:, None] + columns).clamp(max=input_ids.numel() - 1)
    return kwargs, response_mask, flat_targets


def final_hidden_states(model, **inputs):
    """The last layer's (normalized) hidden states [rows, L, H], from a forward pass of the whole model.

    Why not model.base_model(...): FSDP2 gathers the root unit's weights (embeddings, final norm,
    vocabulary projection) around the whole model's forward only. So the whole model runs, with
    logits_to_keep selecting no position (no [rows, L, vocab] logits), and a hook takes the base model's
    output on its way to the projection, which the caller applies in chunks."""
    captured = []
    hook = model.base_model.register_forward_hook(lambda module, args, output: captured.append(output.last_hidden_state))
    try:
        model(**inputs, use_cache=False,
              logits_to_keep=torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device))
    finally:
        hook.remove()
    return captured[0]


def response_logprobs_and_entropy(model, sequences, prompt_lengths, temperature=1.0, pad_token_id=0,
                                  chunk_tokens=512, pack=False):
    """Log-probs [B, R] of the response tokens and the policy entropy [B, R] at each of them (pack: one
    packed row instead of padded rows, see model_inputs; the same numbers).

    The vocabulary projection runs over chunks of `chunk_tokens` response tokens, each under activation
    checkpointing, so only one chunk's [chunk_tokens, vocab] float32 blocks (logits, softmax and their
    gradients) live at a time, in the forward and in the backward pass. (Qwen2.5: 152k vocab x 4 bytes
    = 0.6 MB per token and per such tensor; 8 responses of 4096 tokens would need 20 GB each.)
    Prompt positions and padding never reach the vocabulary projection at all.
    """
    inputs, response_mask, flat_targets = model_inputs(model, sequences, prompt_lengths, pad_token_id, pack)
    device = response_mask.device
    hidden = final_hidden_states(model, **inputs).flatten(0, 1)  # [rows * L, H]
    positions = flat_targets[response_mask]  # [N]
    hidden, targets = hidden[positions - 1], inputs["input_ids"].flatten()[positions]  # [N, H], [N]

    lm_head = model.get_output_embeddings()
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, targets.shape[0], chunk_tokens):
        args = (hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens], lm_head, temperature)
        if torch.is_grad_enabled():
            logprob, entropy = checkpoint(_chunk_logprob_and_entropy, *args, use_reentrant=False)
        else:
            logprob, entropy = _chunk_logprob_and_entropy(*args)
        logprob_chunks.append(logprob)
        entropy_chunks.append(entropy)

    if not logprob_chunks:  # only empty responses
        return torch.zeros(response_mask.shape, device=device), torch.zeros(response_mask.shape, device=device)
    logprobs = torch.zeros(response_mask.shape, device=device).masked_scatter(response_mask, torch.cat(logprob_chunks))
    entropy = torch.zeros(response_mask.shape, device=device).masked_scatter(response_mask, torch.cat(entropy_chunks))
    return logprobs, entropy


def naive_response_logprobs_and_entropy(model, sequences, prompt_lengths, temperature=1.0, pad_token_id=0):
    """The textbook version, for comparison only: full [B, L, vocab] float32 logits, log_softmax, softmax."""
    device = next(model.parameters()).device
    input_ids, response_mask, target_positions = _response_positions(sequences, prompt_lengths, pad_token_id, device)
    logits = model(input_ids=input_ids, use_cache=False).logits.float() / temperature  # [B, L, vocab]
    logprobs_all = torch.log_softmax(logits, dim=-1)  # [B, L, vocab]
    entropy_all = -(logprobs_all.exp() * logprobs_all).sum(-1)  # [B, L]
    previous = target_positions - 1  # [B, R]
    logprobs = logprobs_all.gather(1, previous[..., None].expand(-1, -1, logits.shape[-1]))
    logprobs = logprobs.gather(-1, input_ids.gather(1, target_positions)[..., None]).squeeze(-1)
    return logprobs * response_mask, entropy_all.gather(1, previous) * response_mask


def response_values(critic, sequences, prompt_lengths, pad_token_id=0, pack=False):
    """The critic's value estimates V(s_j) [B, R] of the state before each response token j."""
    inputs, response_mask, flat_targets = model_inputs(critic, sequences, prompt_lengths, pad_token_id, pack)
    values = critic(**inputs, use_cache=False).logits[..., 0].float().flatten()  # [rows * L]
    return values[flat_targets - 1] * response_mask


#### Rewards per token, KL estimators

def kl_estimate(logprobs, ref_logprobs, estimator):
    """Per-token estimates of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL divergence"):
    k1 = log pi - log ref            (unbiased, high variance, can be negative)
    k2 = (log pi - log ref)^2 / 2    (biased, low variance)
    k3 = exp(ref - logp) - (ref - logp) - 1   (unbiased, low variance, never negative)
    k3 as verl's "low_var_kl" (verl 0.9.1 core_algos.kl_penalty_forward; the verl fork SimpleRL-Zoo shipped
    clamps the same way): the estimate itself is clamped to [-10, 10], so a token whose KL estimate passes 10
    adds a constant 10 and no gradient (log-prob 0, reference 3: 10, not 16.09 with gradient -19.09); the
    log-ratio is first clamped to [-20, 20], which changes no finite value (past 20 the estimate is at 10
    anyway) but keeps exp() from overflowing into inf - inf = nan."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        negative_log_ratio = (-log_ratio).clamp(-20, 20)
        return (torch.exp(negative_log_ratio) - negative_log_ratio - 1).clamp(-10, 10)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose from {KL_ESTIMATORS}")


def kl_k3(logprobs, ref_logprobs):
    return kl_estimate(logprobs, ref_logprobs, "k3")


def token_level_rewards(rewards, response_mask, kl_penalty=None, kl_coef=0.0):
    """[B, R]: the outcome reward on each response's last token, minus kl_coef * KL on every token when
    the KL is folded into the reward (InstructGPT-style) rather than added to the loss."""
    response_lengths = response_mask.sum(1)  # [B]
    token_rewards = torch.zeros(response_mask.shape)
    token_rewards[torch.arange(len(rewards)), response_lengths - 1] = rewards.float()
    if kl_penalty is not None:
        token_rewards = token_rewards - kl_coef * kl_penalty * response_mask
    return token_rewards


#### Advantage estimators

def whiten(values, mask, eps=1e-8):
    """(x - mean) / sqrt(var + eps) over the masked entries of the whole batch (on every rank, under torchrun).

    var is the unbiased sample variance (divided by N - 1), as verl's masked_whiten; with a single entry
    (where N - 1 = 0 and verl raises) the population variance, 0, is used."""
    count = all_ranks_sum(mask.sum().double())
    mean = (all_ranks_sum((values * mask).sum().double()) / count).to(values.dtype)
    squares = all_ranks_sum((((values - mean) * mask) ** 2).sum().double())
    variance = (squares / (count - 1) if count > 1 else squares / count.clamp(min=1)).to(values.dtype)
    return (values - mean) * torch.rsqrt(variance + eps) * mask


def grpo_advantages(rewards, samples_per_prompt, eps=1e-6):
    """GRPO (DeepSeekMath, Shao et al. 2024): A_i = (r_i - mean(group)) / (std(group) + eps).

    std is the unbiased sample std (as verl, which SimpleRL-Zoo runs on). A group whose rewards are all
    equal gets advantage 0: it carries no learning signal."""
    groups = rewards.view(-1, samples_per_prompt)  # [prompts, samples_per_prompt]
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if samples_per_prompt > 1 else torch.ones_like(mean)
    return ((groups - mean) / (std + eps)).view(-1)


def dr_grpo_advantages(rewards, samples_per_prompt):
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): A_i = r_i - mean(group).
    Dividing by the group std up-weights near-solved and near-hopeless prompts; Dr. GRPO drops it (and
    pairs it with a constant length normalizer in the loss: seq-mean-token-sum-norm)."""
    groups = rewards.view(-1, samples_per_prompt)
    return (groups - groups.mean(dim=1, keepdim=True)).view(-1)


def rloo_advantages(rewards, samples_per_prompt):
    """RLOO (Ahmadian et al. 2024): each sample's baseline is the mean of the OTHER samples of its group,
    A_i = r_i - (sum_j r_j - r_i) / (n - 1) = n / (n - 1) * (r_i - mean(group))."""
    groups = rewards.view(-1, samples_per_prompt)
    leave_one_out_mean = (groups.sum(dim=1, keepdim=True) - groups) / (samples_per_prompt - 1)
    return (groups - leave_one_out_mean).view(-1)


def discounted_returns(token_rewards, response_mask, gamma):
    """Reward-to-go G_t = sum_{s >= t} gamma^(s - t) r_s, per token [B, R]."""
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros(token_rewards.shape[0])
    for column in reversed(range(token_rewards.shape[1])):
        running = token_rewards[:, column] + gamma * running * response_mask[:, column]
        returns[:, column] = running
    return returns * response_mask


def gae_advantages(token_rewards, values, response_mask, gamma, lam):
    """Generalized advantage estimation (Schulman et al. 2016) per token:
    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),  A_t = delta_t + gamma * lam * A_{t+1},
    with V = 0 past the last token. Returns (advantages, returns = advantages + values), both [B, R]."""
    advantages = torch.zeros_like(token_rewards)
    next_value = torch.zeros(token_rewards.shape[0])
    next_advantage = torch.zeros(token_rewards.shape[0])
    for column in reversed(range(token_rewards.shape[1])):
        valid = response_mask[:, column].float()
        delta = token_rewards[:, column] + gamma * next_value - values[:, column]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, column] = advantage * valid
        # Padding columns pass nothing back: the last real token sees V = 0 and A = 0 after it.
        next_value = values[:, column] * valid
        next_advantage = advantage * valid
    return advantages, (advantages + values) * response_mask


def compute_advantages(estimator, rewards, response_mask, samples_per_prompt, *, kl_penalty=None, kl_coef=0.0,
                       values=None, gamma=1.0, lam=1.0):
    """Token-level advantages [B, R] (and the critic's targets [B, R] for gae, else None).

    rewards [B] are outcome rewards. kl_penalty [B, R], when given, is folded into the reward:
    group estimators then use each response's total reward, r - kl_coef * sum_t KL_t."""
    mask = response_mask.float()
    token_rewards = token_level_rewards(rewards, response_mask, kl_penalty, kl_coef)
    if estimator == "gae":
        advantages, returns = gae_advantages(token_rewards, values, response_mask, gamma, lam)
        return whiten(advantages, mask), returns  # advantage whitening over the batch, as in PPO and verl
    if estimator == "reinforce_pp":
        # REINFORCE++ (Hu 2025): reward-to-go per token, normalized over the whole batch, not per group.
        return whiten(discounted_returns(token_rewards, response_mask, gamma), mask), None
    sequence_rewards = token_rewards.sum(1)  # [B]
    if estimator == "grpo":
        advantages = grpo_advantages(sequence_rewards, samples_per_prompt)
    elif estimator == "dr_grpo":
        advantages = dr_grpo_advantages(sequence_rewards, samples_per_prompt)
    elif estimator == "rloo":
        advantages = rloo_advantages(sequence_rewards, samples_per_prompt)
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose from {ADV_ESTIMATORS}")
    return advantages[:, None] * mask, None


#### Losses

def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_ratio, clip_ratio_high=None, dual_clip=None):
    """Per-token PPO clipped surrogate (Schulman et al. 2017), negated for minimization:
    max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high)).

    clip_ratio_high > clip_ratio is DAPO's clip-higher (Yu et al. 2025): room for unlikely tokens to rise.
    dual_clip = c > 1 (Ye et al. 2020) also bounds the loss of negative-advantage tokens by -c * A, so a
    huge ratio on a bad token cannot dominate the batch. Returns (loss [B, R], clipped [B, R] bool).

    Deviations from verl 0.9.1's compute_policy_loss_vanilla, both deliberate (tests/test_verl_agreement.py):
    - dual-clip is off unless dual_clip is given; verl always applies it with clip_ratio_c = 3. The verl fork
      SimpleRL-Zoo shipped had no dual-clip, and the default reproduces SimpleRL-Zoo (--dual-clip 3 gives verl's).
    - no clamp of the log-ratio to [-20, 20] before exp (verl has one): the ratio of an on-policy update is
      near 1, and a log-ratio past 20 means a broken rollout that the non-finite-step guard should see, not a
      value to hide."""
    clip_ratio_high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio, 1 + clip_ratio_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        was_clipped = was_clipped | dual
    return loss, was_clipped


def value_loss(values, old_values, returns, value_clip):
    """Clipped value loss (as PPO2 / verl): 0.5 * max((V - G)^2, (V_old + clip(V - V_old, +-eps) - G)^2)."""
    clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)


def aggregate(per_token, mask, mode, mini_batch_tokens, mini_batch_sequences, max_response_length):
    """This micro-batch's share of the mini-batch loss, so that summing over micro-batches gives:
    token-mean               sum of all token losses / tokens in the mini-batch (each token weighs the same)
    seq-mean-token-mean      mean over sequences of each sequence's token mean (each sequence weighs the same,
                             as in the original GRPO: short answers' tokens weigh more)
    seq-mean-token-sum-norm  sum of token losses / (sequences * max_response_length): a constant normalizer,
                             no length bias (Dr. GRPO)
    max_response_length is the fixed --max-new-tokens (train.py passes it). verl's default normalizer is the
    padded width of the response tensor, which its rollouts pad to the configured response length, so the two
    agree there; zerorl's micro-batches are padded only to their own longest response, hence the fixed value
    (a width-dependent normalizer would make the loss depend on how sequences were grouped)."""
    masked = per_token * mask
    if mode == "token-mean":
        return masked.sum() / mini_batch_tokens
    if mode == "seq-mean-token-mean":
        return (masked.sum(1) / mask.sum(1).clamp(min=1)).sum() / mini_batch_sequences
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (mini_batch_sequences * max_response_length)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose from {LOSS_AGGREGATIONS}")


#### The update step

def ppo_update(model, optimizer, batch, *, mini_batches, micro_batch_size, ppo_epochs, clip_ratio,
               kl_coef, entropy_coef, max_grad_norm, temperature, pad_token_id, seed, clip_ratio_high=None,
               dual_clip=None, loss_agg="token-mean", kl_estimator="k3", kl_in_loss=True, max_response_length=None,
               tis_cap=None, critic=None, critic_optimizer=None, value_clip=0.2, autocast_dtype=None,
               max_tokens_per_micro_batch=None, pack=False):
    """PPO over one rollout batch: ppo_epochs passes, each over `mini_batches` shuffled mini-batches (one
    optimizer step each), each mini-batch accumulated over micro-batches (one forward/backward each).
    Under torchrun every rank takes the same number of optimizer steps over its own share of the batch
    (shares may differ in size, even be empty), and with a sharded model the same number of micro-batch
    passes (micro_batches); see the module docstring.

    batch: "sequences" (token lists), "prompt_lengths" [B], "old_logprobs" [B, R], "ref_logprobs" [B, R]
    or None, "advantages" [B, R], "response_mask" [B, R]; for a critic also "old_values" and "returns"
    [B, R]; "engine_logprobs" [B, R] (the rollout engine's own, for tis_cap and the rollout_logprob_diff
    metric: the mean |engine - old| over the loss's tokens, the health check of the weight sync).

    old_logprobs None: strictly on-policy (one mini-batch, one epoch), the old policy is the one being
    updated, so the old log-probs are this forward pass's own, detached (as verl lets the update reuse
    them): the separate pass that would compute the same numbers is skipped, and the ratio is exactly 1.
    Micro-batches: micro_batch_size sequences each, or max_tokens_per_micro_batch tokens (micro_batches);
    pack: each micro-batch as one packed row without padding (model_inputs).

    tis_cap: truncated importance sampling (Yao et al. 2025): the engine samples from slightly different
    numerics than the trainer's; weighting each token by min(pi_old / pi_engine, cap) corrects for it.
    An optimizer step whose gradient norm is not finite is skipped (skipped_update_frac counts them).
    Returns a dict of metrics averaged over the optimizer steps.
    """
    device = next(model.parameters()).device
    mask_all = batch["response_mask"]
    size = len(batch["sequences"])
    max_response_length = max_response_length or mask_all.shape[1]
    order = list(range(size))
    models = [model] if critic is None else [model, critic]
    lockstep = is_sharded(model)
    on_policy = batch["old_logprobs"] is None
    if on_policy and (mini_batches != 1 or ppo_epochs != 1):
        raise ValueError("old_logprobs=None (reused from the update's forward pass) needs one mini-batch and one epoch")
    lengths = [len(sequence) for sequence in batch["sequences"]]
    history = {}
    for epoch in range(ppo_epochs):
        random.Random(seed * 1000 + epoch).shuffle(order)
        for mini_batch in range(mini_batches):
            mini_indices = order[size * mini_batch // mini_batches:size * (mini_batch + 1) // mini_batches]
            # The loss is normalized by the whole mini-batch's counts, over all ranks: normalizing by the
            # rank's own count would make the result depend on the number of GPUs.
            counts = all_ranks_sum(torch.tensor([float(mask_all[mini_indices].sum()), float(len(mini_indices))]))
            normalizers = dict(mini_batch_tokens=max(int(counts[0]), 1), mini_batch_sequences=max(int(counts[1]), 1),
                               max_response_length=max_response_length)
            sums = {}
            for micro_indices in micro_batches(mini_indices, lengths, micro_batch_size=micro_batch_size,
                                               max_tokens=max_tokens_per_micro_batch, pack=pack, lockstep=lockstep):
                indices = torch.tensor(micro_indices, dtype=torch.long)
                sequences = [batch["sequences"][i] for i in indices]
                prompt_lengths = [batch["prompt_lengths"][i] for i in indices]
                if not micro_indices:  # this rank has run out: a zero-weight pass joins the collectives
                    sequences, prompt_lengths = placeholder_sequence(pad_token_id)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logprobs, entropy = response_logprobs_and_entropy(
                        model, sequences, prompt_lengths, temperature=temperature, pad_token_id=pad_token_id,
                        pack=pack)
                width = logprobs.shape[1]
                take = lambda name: (batch[name][indices, :width] if micro_indices  # noqa: E731
                                     else torch.zeros(logprobs.shape)).to(device)  # (a placeholder's: mask 0)
                mask = take("response_mask").float()  # [b, r]
                old_logprobs = logprobs.detach() if on_policy else take("old_logprobs")
                advantages = take("advantages")

                pg_loss, clipped = ppo_clip_loss(logprobs, old_logprobs, advantages, clip_ratio, clip_ratio_high,
                                                 dual_clip)
                if tis_cap is not None:
                    pg_loss = pg_loss * torch.exp(old_logprobs - take("engine_logprobs")).clamp(max=tis_cap)
                loss = pg_loss - entropy_coef * entropy
                metrics = {"pg_loss": pg_loss, "entropy": entropy, "clip_frac": clipped.float(),
                           "ratio_mean": torch.exp(logprobs - old_logprobs)}
                if batch.get("engine_logprobs") is not None:
                    metrics["rollout_logprob_diff"] = (take("engine_logprobs") - old_logprobs).abs()
                if kl_coef > 0 and kl_in_loss:
                    kl = kl_estimate(logprobs, take("ref_logprobs"), kl_estimator)
                    loss = loss + kl_coef * kl
                    metrics["kl"] = kl
                aggregate(loss, mask, loss_agg, **normalizers).backward()

                if critic is not None:
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        values = response_values(critic, sequences, prompt_lengths, pad_token_id, pack=pack)
                    critic_loss = value_loss(values, take("old_values"), take("returns"), value_clip)
                    aggregate(critic_loss, mask, "token-mean", **normalizers).backward()
                    metrics["value_loss"] = critic_loss

                with torch.no_grad():  # token means over the mini-batch, for logging
                    for name, per_token in metrics.items():
                        sums[name] = sums.get(name, 0.0) + float((per_token.detach() * mask).sum())
                    sums["ratio_max"] = max(sums.get("ratio_max", 0.0),
                                            float((metrics["ratio_mean"].detach() * mask).max()))

            for each_model in models:
                if not is_sharded(each_model):  # FSDP2 has reduced a sharded model's gradients already
                    all_reduce_gradients(each_model.parameters())
            names = ["pg_loss", "entropy", "clip_frac", "ratio_mean"] + ["kl"] * (kl_coef > 0 and kl_in_loss) \
                + ["value_loss"] * (critic is not None) \
                + ["rollout_logprob_diff"] * (batch.get("engine_logprobs") is not None)  # the same on every rank
            totals = all_ranks_sum(torch.tensor([sums.get(name, 0.0) for name in names], dtype=torch.float64))
            step_metrics = {name: float(total) / normalizers["mini_batch_tokens"] for name, total in zip(names, totals)}
            step_metrics["ratio_max"] = float(all_ranks_sum(torch.tensor(sums.get("ratio_max", 0.0)), op="max"))
            step_metrics["grad_norm"] = clip_gradients(model, max_grad_norm)
            if critic is not None:
                step_metrics["critic_grad_norm"] = clip_gradients(critic, max_grad_norm)
            # A non-finite loss or gradient would poison the weights and Adam's moments for good: skip the
            # optimizer step instead (train.py stops the run after several such steps in a row).
            finite = all(math.isfinite(step_metrics[name]) for name in ("grad_norm", "critic_grad_norm")
                         if name in step_metrics)
            step_metrics["skipped_update_frac"] = 0.0 if finite else 1.0
            for step_optimizer in (optimizer, critic_optimizer) if critic is not None else (optimizer,):
                if finite:
                    step_optimizer.step()
                step_optimizer.zero_grad(set_to_none=True)
            for name, value in step_metrics.items():
                history.setdefault(name, []).append(value)
    return {name: sum(values) / len(values) for name, values in history.items()}


#### Optimizer

def make_optimizer(model, optim, lr, weight_decay, warmup_steps):
    """AdamW (fused on GPU) or bitsandbytes' 8-bit AdamW; a constant learning rate after a linear warm-up."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if optim == "adamw":
        fused = next(model.parameters()).is_cuda and not is_sharded(model)  # (the default foreach on DTensors)
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)
    elif optim == "adamw8bit":
        if is_sharded(model):
            # Measured (bitsandbytes 0.50.2, torch 2.13): its 8-bit kernels refuse FSDP2's DTensor weights
            # ("got mixed torch.Tensor and DTensor"). train.py stops on this combination before loading.
            raise ValueError("--optim adamw8bit does not run on FSDP2-sharded weights; use --sharding replicate")
        import bitsandbytes

        optimizer = bitsandbytes.optim.AdamW8bit(parameters, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optim!r}; choose adamw or adamw8bit")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)
    return optimizer, scheduler
