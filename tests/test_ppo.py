"""ppo.py: each formula against a hand-computed example, and the update step on a real tiny model."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ppo import (aggregate, compute_advantages, discounted_returns, dr_grpo_advantages, gae_advantages,
                 grpo_advantages, kl_estimate, kl_k3, make_optimizer, naive_response_logprobs_and_entropy, ppo_clip_loss,
                 ppo_update, response_logprobs_and_entropy, rloo_advantages, token_level_rewards, value_loss, whiten)


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
    # Inside the clamp the gradient is d/dlogp k3 = 1 - exp(ref - logp).
    logprobs.requires_grad_(True)
    kl_k3(logprobs, ref_logprobs).sum().backward()
    torch.testing.assert_close(logprobs.grad, 1 - torch.exp(ref_logprobs - logprobs.detach()))


def test_kl_k3_tails_are_clamped_as_verl():
    # verl's low_var_kl clamps the estimate to [-10, 10]: log-prob 0, reference 3 gives 10 (not
    # exp(3) - 3 - 1 = 16.09) and no gradient (not 1 - e^3 = -19.09); the same far out on both sides.
    logprobs = torch.tensor([0.0, 0.0, 0.0, -60.0, 0.0], requires_grad=True)
    ref_logprobs = torch.tensor([3.0, -50.0, 2.0, 0.0, -float("inf")])
    estimate = kl_k3(logprobs, ref_logprobs)
    torch.testing.assert_close(estimate.detach(), torch.tensor([10.0, 10.0, math.exp(2) - 2 - 1, 10.0, 10.0]))
    estimate.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([0.0, 0.0, 1 - math.exp(2), 0.0, 0.0]))
    # Just inside the clamp: exp(2.3) - 3.3 = 6.67, with its gradient.
    assert kl_k3(torch.tensor([0.0]), torch.tensor([2.3])).item() == pytest.approx(math.exp(2.3) - 2.3 - 1, rel=1e-6)


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
    advantages = torch.tensor([1.0, -1.0] * (size // 2))[:, None] * response_mask  # [B, R]
    return dict(sequences=sequences, prompt_lengths=prompt_lengths, old_logprobs=old_logprobs,
                ref_logprobs=old_logprobs.clone(), advantages=advantages, response_mask=response_mask)


def surrogate_loss(model, batch):
    """The token-mean PPO surrogate of `batch` under `model`'s current weights."""
    with torch.no_grad():
        logprobs, _ = response_logprobs_and_entropy(model, batch["sequences"], batch["prompt_lengths"])
    loss, _ = ppo_clip_loss(logprobs, batch["old_logprobs"], batch["advantages"], clip_ratio=0.2)
    mask = batch["response_mask"].float()
    return float((loss * mask).sum() / mask.sum())


UPDATE_ARGS = dict(ppo_epochs=1, clip_ratio=0.2, kl_coef=1e-3, entropy_coef=1e-3, max_grad_norm=1.0,
                   temperature=1.0, pad_token_id=0, seed=0)


def test_one_update_changes_the_weights_and_lowers_the_loss(policy):
    batch = fixed_batch(policy)
    before_weights = copy.deepcopy(policy.state_dict())
    before_loss = surrogate_loss(policy, batch)
    optimizer, _ = make_optimizer(policy, "adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0)
    metrics = ppo_update(policy, optimizer, batch, mini_batches=1, micro_batch_size=3, **UPDATE_ARGS)

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
        ppo_update(model, optimizer, batch, mini_batches=1, micro_batch_size=micro_batch_size,
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


#### Advantage estimators by hand

REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


def test_dr_grpo_advantages_by_hand():
    # Group means 0.25 and 1: no std division.
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(dr_grpo_advantages(REWARDS, 4), expected)


def test_rloo_advantages_by_hand():
    # Sample 0's baseline is the mean of the other three: 0 -> A = 1. Sample 1's: (1 + 0 + 0) / 3 -> A = -1/3.
    expected = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(rloo_advantages(REWARDS, 4), expected)


def test_token_level_rewards_put_the_outcome_on_the_last_real_token():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    token_rewards = token_level_rewards(torch.tensor([2.0, -1.0]), mask)
    torch.testing.assert_close(token_rewards, torch.tensor([[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0]]))
    # The KL folded into the reward: -coef * KL on every real token.
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    with_kl = token_level_rewards(torch.tensor([2.0, -1.0]), mask, kl_penalty=kl, kl_coef=0.5)
    torch.testing.assert_close(with_kl, torch.tensor([[-0.05, -0.1, 1.85], [-1.25, 0.0, 0.0]]))


def test_discounted_returns_by_hand():
    token_rewards = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    # gamma 0.5: row 0: G2 = 2, G1 = 1 + 0.5 * 2 = 2, G0 = 0 + 0.5 * 2 = 1; row 1: G0 = 3.
    torch.testing.assert_close(discounted_returns(token_rewards, mask, gamma=0.5),
                               torch.tensor([[1.0, 2.0, 2.0], [3.0, 0.0, 0.0]]))


def test_gae_by_hand():
    token_rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2]])
    mask = torch.ones(1, 2).bool()
    # gamma 0.9, lam 0.8: delta1 = 1 + 0 - 0.2 = 0.8; delta0 = 0 + 0.9 * 0.2 - 0.5 = -0.32
    # A1 = 0.8; A0 = -0.32 + 0.9 * 0.8 * 0.8 = 0.256; returns = A + V = [0.756, 1.0]
    advantages, returns = gae_advantages(token_rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.256, 0.8]]))
    torch.testing.assert_close(returns, torch.tensor([[0.756, 1.0]]))


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    generator = torch.Generator().manual_seed(0)
    token_rewards = torch.randn(4, 6, generator=generator)
    values = torch.randn(4, 6, generator=generator)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 1, 3])[:, None]
    token_rewards, values = token_rewards * mask, values * mask
    advantages, _ = gae_advantages(token_rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, (discounted_returns(token_rewards, mask, 1.0) - values) * mask)


def test_whiten_over_the_masked_entries_only():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # mean 2, unbiased variance ((1-2)^2 + (3-2)^2) / (2 - 1) = 2 (as verl's masked_whiten) -> [-0.7071, 0.7071],
    # the padding stays 0
    torch.testing.assert_close(whiten(values, mask), torch.tensor([[-0.7071, 0.7071, 0.0]]), atol=1e-4, rtol=0)
    # One entry: N - 1 = 0, the population variance 0 is used (verl raises): the entry becomes 0.
    torch.testing.assert_close(whiten(values, torch.tensor([[0.0, 1.0, 0.0]])), torch.zeros(1, 3))


def test_compute_advantages_broadcasts_group_estimators_over_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()
    advantages, returns = compute_advantages("grpo", torch.tensor([1.0, 0.0]), mask, samples_per_prompt=2)
    # mean 0.5, unbiased std 0.7071: +-0.7071 on every real token
    torch.testing.assert_close(advantages, torch.tensor([[0.7071, 0.7071, 0.0], [-0.7071, -0.7071, -0.7071]]),
                               atol=1e-4, rtol=0)
    assert returns is None
    # REINFORCE++: per-token returns whitened over the batch (5 tokens: 1, 1, 0, 0, 0 -> mean 0.4, unbiased
    # variance (2 * 0.36 + 3 * 0.16) / 4 = 0.3, std 0.5477)
    advantages, _ = compute_advantages("reinforce_pp", torch.tensor([1.0, 0.0]), mask, samples_per_prompt=2)
    torch.testing.assert_close(advantages, torch.tensor([[1.0954, 1.0954, 0.0], [-0.7303, -0.7303, -0.7303]]),
                               atol=1e-4, rtol=0)


#### Losses by hand

def test_kl_estimators_by_hand():
    logprobs, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log-ratio log(pi/ref) = 1
    assert kl_estimate(logprobs, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(logprobs, ref, "k2").item() == pytest.approx(0.5)
    assert kl_estimate(logprobs, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)


def test_clip_higher_and_dual_clip_by_hand():
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.25, 1.25, 5.0]))
    advantages = torch.tensor([1.0, 1.0, -1.0])
    # clip-higher 0.28: ratio 1.25 is inside [0.8, 1.28] -> unclipped -1.25; symmetric 0.2 clips it to -1.2
    loss, clipped = ppo_clip_loss(new[:1], old[:1], advantages[:1], clip_ratio=0.2, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and not clipped.item()
    loss, clipped = ppo_clip_loss(new[:1], old[:1], advantages[:1], clip_ratio=0.2)
    assert loss.item() == pytest.approx(-1.2) and clipped.item()
    # dual clip c = 3: A = -1, ratio 5 -> plain PPO loss max(5, 1.2) = 5; dual clip bounds it at -c*A = 3
    loss, clipped = ppo_clip_loss(new[2:], old[2:], advantages[2:], clip_ratio=0.2)
    assert loss.item() == pytest.approx(5.0) and not clipped.item()
    loss, clipped = ppo_clip_loss(new[2:], old[2:], advantages[2:], clip_ratio=0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0) and clipped.item()


def test_value_loss_by_hand():
    # V = 2, V_old = 1, G = 3, clip 0.5: unclipped (2 - 3)^2 = 1; clipped V = 1.5 -> (1.5 - 3)^2 = 2.25
    loss = value_loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([3.0]), value_clip=0.5)
    assert loss.item() == pytest.approx(0.5 * 2.25)


def test_loss_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    normalizers = dict(mini_batch_tokens=4, mini_batch_sequences=2, max_response_length=10)
    assert aggregate(per_token, mask, "token-mean", **normalizers).item() == pytest.approx(10 / 4)
    assert aggregate(per_token, mask, "seq-mean-token-mean", **normalizers).item() == pytest.approx((2 + 4) / 2)
    assert aggregate(per_token, mask, "seq-mean-token-sum-norm", **normalizers).item() == pytest.approx(10 / 20)


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_other_aggregations_do_not_depend_on_micro_batch_split(policy, loss_agg):
    batch = fixed_batch(policy)

    def gradients(micro_batch_size):
        model = copy.deepcopy(policy)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        optimizer.zero_grad = lambda set_to_none=True: None
        ppo_update(model, optimizer, batch, mini_batches=1, micro_batch_size=micro_batch_size, loss_agg=loss_agg,
                   **{**UPDATE_ARGS, "max_grad_norm": 1e9})
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    torch.testing.assert_close(gradients(3), gradients(8), atol=1e-6, rtol=1e-4)


def test_second_mini_batch_is_off_policy_first_is_not(policy):
    batch = fixed_batch(policy, size=8)
    optimizer, _ = make_optimizer(policy, "adamw", lr=1e-2, weight_decay=0.0, warmup_steps=0)
    one = ppo_update(copy.deepcopy(policy), optimizer, batch, mini_batches=1, micro_batch_size=8, **UPDATE_ARGS)
    assert one["ratio_max"] == pytest.approx(1.0, abs=1e-5) and one["clip_frac"] == 0.0
    model = copy.deepcopy(policy)
    optimizer, _ = make_optimizer(model, "adamw", lr=1e-2, weight_decay=0.0, warmup_steps=0)
    two = ppo_update(model, optimizer, batch, mini_batches=2, micro_batch_size=4, **{**UPDATE_ARGS, "ppo_epochs": 2})
    assert two["ratio_max"] > 1.0 + 1e-3  # later mini-batches see a policy that has moved


def test_naive_and_chunked_logprobs_agree(policy):
    batch = fixed_batch(policy)
    with torch.no_grad():
        chunked, chunked_entropy = response_logprobs_and_entropy(policy, batch["sequences"], batch["prompt_lengths"],
                                                                 chunk_tokens=4)
        naive, naive_entropy = naive_response_logprobs_and_entropy(policy, batch["sequences"], batch["prompt_lengths"])
    torch.testing.assert_close(chunked * batch["response_mask"], naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_entropy * batch["response_mask"], naive_entropy, atol=1e-5, rtol=1e-5)


def test_adamw8bit_step_runs_on_cpu(policy):
    pytest.importorskip("bitsandbytes")
    batch = fixed_batch(policy)
    optimizer, _ = make_optimizer(policy, "adamw8bit", lr=1e-3, weight_decay=0.0, warmup_steps=0)
    before = surrogate_loss(policy, batch)
    ppo_update(policy, optimizer, batch, mini_batches=1, micro_batch_size=8, **UPDATE_ARGS)
    assert surrogate_loss(policy, batch) < before


def test_a_non_finite_gradient_skips_the_optimizer_step(policy):
    batch = fixed_batch(policy)
    batch["advantages"] = batch["advantages"].clone()
    batch["advantages"][0, 0] = float("nan")
    before = copy.deepcopy(policy.state_dict())
    optimizer, _ = make_optimizer(policy, "adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0)
    metrics = ppo_update(policy, optimizer, batch, mini_batches=2, micro_batch_size=4, **UPDATE_ARGS)
    # Two mini-batches: the one holding the NaN is skipped, the other one updates.
    assert metrics["skipped_update_frac"] == 0.5
    assert all(torch.isfinite(value).all() for value in policy.state_dict().values())
    assert any(not torch.equal(value, before[name]) for name, value in policy.state_dict().items())

    batch["advantages"][:] = float("nan")
    model = copy.deepcopy(policy)
    optimizer, _ = make_optimizer(model, "adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0)
    state = copy.deepcopy(model.state_dict())
    assert ppo_update(model, optimizer, batch, mini_batches=1, micro_batch_size=8, **UPDATE_ARGS)[
        "skipped_update_frac"] == 1.0
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())


#### Micro-batches by token budget, packed rows, the on-policy reuse of the update's log-probs

def varied_sequences(model, seed=0):
    """Sequences whose responses are 4, 0 (empty), 6, 1 and 16 tokens long, after prompts of 4-6 tokens."""
    generator = torch.Generator().manual_seed(seed)
    prompts, responses = [5, 5, 6, 6, 4], [4, 0, 6, 1, 16]
    sequences = [torch.randint(2, model.config.vocab_size, (p + r,), generator=generator).tolist()
                 for p, r in zip(prompts, responses)]
    return sequences, prompts


def test_packed_rows_give_the_padded_logprobs_entropies_and_values(policy, tiny_model_dir):
    from transformers import AutoConfig, AutoModelForTokenClassification

    from ppo import model_inputs, response_values

    sequences, prompt_lengths = varied_sequences(policy)
    for grad in (False, True):  # with gradients the projection runs under checkpointing
        with torch.set_grad_enabled(grad):
            padded = response_logprobs_and_entropy(policy, sequences, prompt_lengths)
            packed = response_logprobs_and_entropy(policy, sequences, prompt_lengths, pack=True)
        for name, a, b in zip(("logprobs", "entropy"), padded, packed):
            assert a.shape == b.shape == (5, 16)
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=lambda m: f"{name}, grad {grad}: {m}")
    critic = AutoModelForTokenClassification.from_pretrained(
        tiny_model_dir, config=AutoConfig.from_pretrained(tiny_model_dir, num_labels=1))
    with torch.no_grad():
        torch.testing.assert_close(response_values(critic, sequences, prompt_lengths, pack=True),
                                   response_values(critic, sequences, prompt_lengths), atol=1e-5, rtol=0)
    # The control: the same packed row with position ids that do not restart lets each sequence attend
    # to the ones before it, and the log-probs move.
    inputs, response_mask, flat_targets = model_inputs(policy, sequences, prompt_lengths, 0, pack=True)
    inputs["position_ids"] = torch.arange(inputs["input_ids"].shape[1])[None, :]
    with torch.no_grad():
        logits = policy(**inputs).logits.flatten(0, 1).log_softmax(-1)
    positions = flat_targets[response_mask]
    leaked = logits[positions - 1].gather(-1, inputs["input_ids"].flatten()[positions][:, None]).squeeze(-1)
    assert (leaked - padded[0][response_mask]).abs().max() > 1e-2


def test_micro_batches_by_token_budget_by_hand():
    from ppo import micro_batches

    lengths = [10, 3, 7, 3, 12, 1]
    assert micro_batches(list(range(6)), lengths, micro_batch_size=4) == [[0, 1, 2, 3], [4, 5]]
    # Longest first (12, 10, 7, 3, 3, 1), each micro-batch filled while within the budget. Packed, a
    # micro-batch costs the sum of its lengths: 12 | 10 | 7+3+3+1 = 14.
    assert micro_batches(list(range(6)), lengths, micro_batch_size=4, max_tokens=14, pack=True) == \
        [[4], [0], [2, 1, 3, 5]]
    # Padded, it costs its count x its longest (its first): 12 | 10 | 2 x 7 = 14 | 2 x 3 (3 x 7 > 14).
    assert micro_batches(list(range(6)), lengths, micro_batch_size=4, max_tokens=14) == [[4], [0], [2, 1], [3, 5]]
    # A budget below a sequence's length: that sequence alone.
    assert micro_batches(list(range(6)), lengths, micro_batch_size=4, max_tokens=5) == [[4], [0], [2], [1], [3], [5]]
    assert micro_batches([], lengths, micro_batch_size=4, max_tokens=14) == []


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_token_budget_micro_batches_give_the_same_update(policy, pack):
    batch = fixed_batch(policy, size=8)

    def weights_after(**grouping):
        model = copy.deepcopy(policy)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        ppo_update(model, optimizer, batch, mini_batches=1, **grouping, **{**UPDATE_ARGS, "max_grad_norm": 1e9})
        return model.state_dict()

    fixed = weights_after(micro_batch_size=3)
    budget = weights_after(micro_batch_size=3, max_tokens_per_micro_batch=25, pack=pack)
    for name, value in fixed.items():
        torch.testing.assert_close(budget[name], value, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


def test_on_policy_update_reuses_its_own_logprobs(policy):
    """old_logprobs None: the ratio is exactly 1 and the step equals the two-pass one's."""
    batch = fixed_batch(policy, size=8)
    batch["engine_logprobs"] = batch["old_logprobs"] + 0.01

    def run(old_logprobs):  # SGD: Adam's first step, about lr x sign(gradient), would amplify float noise
        model = copy.deepcopy(policy)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        metrics = ppo_update(model, optimizer, dict(batch, old_logprobs=old_logprobs), mini_batches=1,
                             micro_batch_size=3, **{**UPDATE_ARGS, "max_grad_norm": 1e9})
        return model.state_dict(), metrics

    two_pass, two_pass_metrics = run(batch["old_logprobs"])
    reused, reused_metrics = run(None)
    assert reused_metrics["ratio_max"] == 1.0 and reused_metrics["ratio_mean"] == 1.0
    assert reused_metrics["clip_frac"] == 0.0
    assert reused_metrics["rollout_logprob_diff"] == pytest.approx(0.01, abs=1e-5)
    for name, value in two_pass.items():
        torch.testing.assert_close(reused[name], value, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    with pytest.raises(ValueError, match="one mini-batch and one epoch"):
        run_model = copy.deepcopy(policy)
        ppo_update(run_model, torch.optim.SGD(run_model.parameters(), lr=0.1), dict(batch, old_logprobs=None),
                   mini_batches=2, micro_batch_size=3, **UPDATE_ARGS)
