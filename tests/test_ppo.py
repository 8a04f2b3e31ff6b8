"""ppo.py: each formula against a hand-computed example, and the update step on a real tiny model."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ppo import grpo_advantages, kl_k3, make_optimizer, ppo_clip_loss, ppo_update, response_logprobs_and_entropy


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # Group 1: mean 0.25; unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.25) = 0.5.
    # Group 2: all equal -> advantage 0, no signal.
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(grpo_advantages(rewards, samples_per_prompt=4, eps=0.0).nan_to_num(0.0), expected)
    torch.testing.assert_close(grpo_advantages(rewards, samples_per_prompt=4), expected, atol=1e-5, rtol=0)


def test_kl_k3_by_hand():
    logprobs, ref_logprobs = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-2.0, -2.0, -0.4])
    # k3 = exp(ref - logp) - (ref - logp) - 1
    expected = torch.tensor([math.exp(-1) + 1 - 1, 0.0, math.exp(0.1) - 0.1 - 1])
    torch.testing.assert_close(kl_k3(logprobs, ref_logprobs), expected)
    # The clamp keeps a wild log-ratio finite: exp(10) - 10 - 1.
    assert kl_k3(torch.tensor([0.0]), torch.tensor([-50.0])).item() == pytest.approx(math.exp(-10) + 10 - 1)


def test_ppo_clip_loss_by_hand():
    # ratio = e^0.5 = 1.6487 (too big), e^-0.5 = 0.6065 (too small), e^0.1 = 1.1052 (inside), eps = 0.2
    old = torch.zeros(4)
    new = torch.tensor([0.5, 0.5, -0.5, 0.1])
    advantages = torch.tensor([1.0, -1.0, 1.0, 1.0])
    loss, clipped = ppo_clip_loss(new, old, advantages, clip_ratio=0.2)
    # A>0, ratio>1+eps: max(-1.6487, -1.2) = -1.2, clipped (no gradient to push further)
    # A<0, ratio>1+eps: max(1.6487, 1.2) = 1.6487, not clipped (a bad action made likelier is always punished)
    # A>0, ratio<1-eps: max(-0.6065, -0.8) = -0.6065, not clipped
    # inside the range: -1.1052
    torch.testing.assert_close(loss, torch.tensor([-1.2, math.exp(0.5), -math.exp(-0.5), -math.exp(0.1)]))
    assert clipped.tolist() == [True, False, False, False]


@pytest.fixture()
def policy(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def fixed_batch(model, size=8, prompt_length=6, seed=0):
    """A rollout batch of random token sequences with responses of different lengths and +-1 advantages."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    sequences, prompt_lengths = [], []
    for index in range(size):
        response_length = 3 + index % 5
        sequences.append(torch.randint(2, vocab, (prompt_length + response_length,), generator=generator).tolist())
        prompt_lengths.append(prompt_length)
    with torch.no_grad():
        old_logprobs, _ = response_logprobs_and_entropy(model, sequences, prompt_lengths)
    width = old_logprobs.shape[1]
    response_mask = torch.tensor([[column < len(s) - p for column in range(width)]
                                  for s, p in zip(sequences, prompt_lengths)])
    advantages = torch.tensor([1.0, -1.0] * (size // 2))
    return dict(sequences=sequences, prompt_lengths=prompt_lengths, old_logprobs=old_logprobs,
                ref_logprobs=old_logprobs.clone(), advantages=advantages, response_mask=response_mask)


def surrogate_loss(model, batch):
    """The token-mean PPO surrogate of `batch` under `model`'s current weights."""
    with torch.no_grad():
        logprobs, _ = response_logprobs_and_entropy(model, batch["sequences"], batch["prompt_lengths"])
    loss, _ = ppo_clip_loss(logprobs, batch["old_logprobs"], batch["advantages"][:, None], clip_ratio=0.2)
    mask = batch["response_mask"].float()
    return float((loss * mask).sum() / mask.sum())


UPDATE_ARGS = dict(ppo_epochs=1, clip_ratio=0.2, kl_coef=1e-3, entropy_coef=1e-3, max_grad_norm=1.0,
                   temperature=1.0, pad_token_id=0, seed=0)


def test_one_update_changes_the_weights_and_lowers_the_loss(policy):
    batch = fixed_batch(policy)
    before_weights = copy.deepcopy(policy.state_dict())
    before_loss = surrogate_loss(policy, batch)
    optimizer, _ = make_optimizer(policy, "adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0)
    metrics = ppo_update(policy, optimizer, batch, mini_batch_size=8, micro_batch_size=3, **UPDATE_ARGS)

    changed = [name for name, value in policy.state_dict().items() if not torch.equal(value, before_weights[name])]
    assert len(changed) == len(before_weights)
    assert surrogate_loss(policy, batch) < before_loss - 1e-3
    # On-policy first mini-batch: the ratio is exactly 1, nothing is clipped.
    assert metrics["clip_frac"] == 0.0 and metrics["ratio_max"] == pytest.approx(1.0, abs=1e-5)


def test_gradient_does_not_depend_on_micro_batch_split(policy):
    batch = fixed_batch(policy)

    def gradients(micro_batch_size):
        model = copy.deepcopy(policy)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # step() keeps weights; we read the grads
        optimizer.zero_grad = lambda set_to_none=True: None  # keep .grad after the step for inspection
        ppo_update(model, optimizer, batch, mini_batch_size=8, micro_batch_size=micro_batch_size,
                   **{**UPDATE_ARGS, "max_grad_norm": 1e9})
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    whole, split = gradients(8), gradients(3)
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=1e-4)


def test_chunked_logprobs_and_entropy_equal_the_full_softmax(policy):
    batch = fixed_batch(policy)
    logprobs, entropy = response_logprobs_and_entropy(policy, batch["sequences"], batch["prompt_lengths"],
                                                      chunk_tokens=5)
    mask = batch["response_mask"]
    for row, (sequence, prompt_length) in enumerate(zip(batch["sequences"], batch["prompt_lengths"])):
        with torch.no_grad():
            logits = policy(torch.tensor([sequence])).logits[0]  # [L, vocab]
        full = torch.log_softmax(logits, dim=-1)
        positions = range(prompt_length, len(sequence))
        expected_logprobs = torch.stack([full[p - 1, sequence[p]] for p in positions])
        expected_entropy = torch.stack([-(full[p - 1].exp() * full[p - 1]).sum() for p in positions])
        width = len(positions)
        assert mask[row, :width].all() and not mask[row, width:].any()
        torch.testing.assert_close(logprobs[row, :width], expected_logprobs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy[row, :width], expected_entropy, atol=1e-5, rtol=1e-5)
