"""The policy update: log-probs, advantages, the PPO loss and the optimizer step.

Tensor layout. A rollout batch of B sequences (prompt + response, right-padded to L tokens) has its
per-token quantities in *response coordinates*: [B, R] with R the longest response, where column j is
the j-th response token, predicted from the hidden state of the token before it. response_mask [B, R]
marks the real (non-padding) response tokens.
"""

import random

import torch
from torch.utils.checkpoint import checkpoint


#### Log-probs and entropy, without a full [tokens, vocab] logits tensor

def _chunk_logprob_and_entropy(hidden, targets, lm_head, temperature):
    """hidden [N, H], targets [N] -> log p(target) [N] and entropy [N] of softmax(logits / temperature)."""
    logits = lm_head(hidden).float() / temperature  # [N, vocab]
    log_normalizer = torch.logsumexp(logits, dim=-1)  # [N]
    logprob = logits.gather(-1, targets[:, None]).squeeze(-1) - log_normalizer
    probs = torch.softmax(logits, dim=-1)
    entropy = log_normalizer - (probs * logits).sum(-1)  # H = logsumexp(z) - sum_v p_v z_v
    return logprob, entropy


def pad_sequences(sequences, pad_token_id, device):
    """Right-pad token lists to input_ids [B, L]. Right padding needs no attention mask: under the
    causal mask, real tokens only ever attend to earlier (real) tokens."""
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [pad_token_id] * (width - len(s)) for s in sequences], device=device)


def response_logprobs_and_entropy(model, sequences, prompt_lengths, temperature=1.0, pad_token_id=0,
                                  chunk_tokens=4096):
    """Log-probs [B, R] of the response tokens and the policy entropy [B, R] at each of them.

    The vocabulary projection runs over chunks of `chunk_tokens` response tokens, each under activation
    checkpointing, so at most one [chunk_tokens, vocab] float32 block of logits lives at a time, in the
    forward and in the backward pass (Qwen2.5: 152k vocab x 4 bytes = 0.6 MB per token otherwise).
    Prompt positions never reach the vocabulary projection at all.
    """
    device = next(model.parameters()).device
    input_ids = pad_sequences(sequences, pad_token_id, device)  # [B, L]
    prompt_lengths = torch.tensor(prompt_lengths, device=device)  # [B]
    response_lengths = torch.tensor([len(s) for s in sequences], device=device) - prompt_lengths  # [B]
    width = int(response_lengths.max())
    columns = torch.arange(width, device=device)[None, :]  # [1, R]
    response_mask = columns < response_lengths[:, None]  # [B, R]
    target_positions = (prompt_lengths[:, None] + columns).clamp(max=input_ids.shape[1] - 1)  # [B, R]

    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state  # [B, L, H]
    hidden = hidden.gather(1, (target_positions - 1)[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, R, H]
    hidden, targets = hidden[response_mask], input_ids.gather(1, target_positions)[response_mask]  # [N, H], [N]

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

    logprobs = torch.zeros(response_mask.shape, device=device).masked_scatter(response_mask, torch.cat(logprob_chunks))
    entropy = torch.zeros(response_mask.shape, device=device).masked_scatter(response_mask, torch.cat(entropy_chunks))
    return logprobs, entropy


#### Advantages

def grpo_advantages(rewards, samples_per_prompt, eps=1e-6):
    """GRPO (DeepSeekMath, Shao et al. 2024): A_i = (r_i - mean(group)) / (std(group) + eps).

    rewards [B] with B = prompts * samples_per_prompt, each prompt's samples contiguous. std is the
    unbiased sample std (as verl, which SimpleRL-Zoo runs on). A group whose rewards are all equal gets
    advantage 0: it carries no learning signal.
    """
    groups = rewards.view(-1, samples_per_prompt)  # [prompts, samples_per_prompt]
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if samples_per_prompt > 1 else torch.ones_like(mean)
    return ((groups - mean) / (std + eps)).view(-1)


#### Losses

def kl_k3(logprobs, ref_logprobs):
    """Schulman's low-variance, always non-negative KL(pi || pi_ref) estimator:
    k3 = exp(ref - logp) - (ref - logp) - 1, with the log-ratio clamped to [-10, 10] for stability (as verl)."""
    log_ratio = (ref_logprobs - logprobs).clamp(-10, 10)
    return torch.exp(log_ratio) - log_ratio - 1


def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_ratio):
    """Per-token PPO clipped surrogate (Schulman et al. 2017), negated for minimization:
    max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)). Returns (loss [B, R], clipped [B, R] bool)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio, 1 + clip_ratio)
    return torch.maximum(unclipped, clipped), clipped > unclipped


#### The update step

def ppo_update(model, optimizer, batch, *, mini_batch_size, micro_batch_size, ppo_epochs,
               clip_ratio, kl_coef, entropy_coef, max_grad_norm, temperature, pad_token_id, seed,
               autocast_dtype=None):
    """PPO over one rollout batch: ppo_epochs passes, each over shuffled mini-batches (one optimizer
    step each), each mini-batch accumulated over micro-batches (one forward/backward each).

    batch: "sequences" (token lists), "prompt_lengths" [B], "old_logprobs" [B, R], "ref_logprobs"
    [B, R] or None, "advantages" [B], "response_mask" [B, R].

    Loss aggregation is the token mean over the whole mini-batch: every micro-batch's summed token loss
    is divided by the mini-batch's total response-token count, so the gradient does not depend on how
    the mini-batch is split into micro-batches.
    Returns a dict of metrics averaged over the optimizer steps.
    """
    device = next(model.parameters()).device
    size = len(batch["sequences"])
    order = list(range(size))
    history = {"pg_loss": [], "kl": [], "entropy": [], "clip_frac": [], "grad_norm": [], "ratio_max": []}
    for epoch in range(ppo_epochs):
        random.Random(seed * 1000 + epoch).shuffle(order)
        for mini_start in range(0, size, mini_batch_size):
            mini_indices = order[mini_start:mini_start + mini_batch_size]
            mini_tokens = sum(int(batch["response_mask"][i].sum()) for i in mini_indices)
            sums = {"pg_loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_frac": 0.0}
            ratio_max = 0.0
            for micro_start in range(0, len(mini_indices), micro_batch_size):
                indices = mini_indices[micro_start:micro_start + micro_batch_size]
                index_tensor = torch.tensor(indices)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logprobs, entropy = response_logprobs_and_entropy(
                        model, [batch["sequences"][i] for i in indices], [batch["prompt_lengths"][i] for i in indices],
                        temperature=temperature, pad_token_id=pad_token_id)  # [b, r]
                width = logprobs.shape[1]
                mask = batch["response_mask"][index_tensor, :width].to(device).float()  # [b, r]
                old_logprobs = batch["old_logprobs"][index_tensor, :width].to(device)
                advantages = batch["advantages"][index_tensor].to(device)[:, None]  # [b, 1]

                pg_loss, clipped = ppo_clip_loss(logprobs, old_logprobs, advantages, clip_ratio)
                loss = pg_loss - entropy_coef * entropy
                if kl_coef > 0:
                    kl = kl_k3(logprobs, batch["ref_logprobs"][index_tensor, :width].to(device))
                    loss = loss + kl_coef * kl
                    sums["kl"] += float((kl.detach() * mask).sum())
                ((loss * mask).sum() / mini_tokens).backward()

                sums["pg_loss"] += float((pg_loss.detach() * mask).sum())
                sums["entropy"] += float((entropy.detach() * mask).sum())
                sums["clip_frac"] += float((clipped.float() * mask).sum())
                ratio_max = max(ratio_max, float((torch.exp(logprobs.detach() - old_logprobs) * mask).max()))

            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for name, total in sums.items():
                history[name].append(total / mini_tokens)
            history["grad_norm"].append(float(grad_norm))
            history["ratio_max"].append(ratio_max)
    return {name: sum(values) / len(values) for name, values in history.items() if values}


#### Optimizer

def make_optimizer(model, optim, lr, weight_decay, warmup_steps):
    """AdamW (fused on GPU) or bitsandbytes' 8-bit AdamW; a constant learning rate after a linear warm-up."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if optim == "adamw":
        fused = next(model.parameters()).is_cuda
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)
    elif optim == "adamw8bit":
        import bitsandbytes

        optimizer = bitsandbytes.optim.AdamW8bit(parameters, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optim!r}; choose adamw or adamw8bit")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)
    return optimizer, scheduler
