"""ppo.py against verl 0.9.1's core_algos (the framework SimpleRL-Zoo ran on), on seeded random batches.

verl is not a dependency: it imports ray (240 MB) at package import time. To run these tests, install it
beside the project without its dependencies, then point PYTHONPATH at it:

    pip install --target /tmp/verlpkgs --no-deps verl==0.9.1 omegaconf tensordict antlr4-python3-runtime==4.9.3 \
        pyvers orjson codetiming ray msgpack
    PYTHONPATH=/tmp/verlpkgs python -m pytest -q tests/test_verl_agreement.py

The deviations that are deliberate (and labelled in ppo.py) are tested as deviations: verl's policy loss
always applies dual-clip (clip_ratio_c = 3) and clamps the log-ratio to [-20, 20] before exp; zerorl's
dual-clip is off unless --dual-clip is given (as the verl fork SimpleRL-Zoo shipped, which had no dual-clip).
"""
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

import ppo


def import_verl():
    """verl's core_algos and torch_functional without running verl/__init__.py (which imports ray's cluster
    machinery and a protocol layer we do not need): the package is registered by its path only."""
    if "verl" not in sys.modules:
        spec = importlib.util.find_spec("verl")
        if spec is None:
            pytest.skip("verl is not installed (see this file's docstring for the no-dependencies install)")
        package = types.ModuleType("verl")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["verl"] = package
    try:
        from verl.trainer.ppo import core_algos
        from verl.utils import torch_functional
    except ImportError as error:
        pytest.skip(f"verl's core_algos does not import here ({error}); see this file's docstring")
    return core_algos, torch_functional


def random_batch(seed, batch=16, length=12):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    response_mask = (torch.arange(length)[None, :] < lengths[:, None]).float()  # [batch, length]
    logprobs = -torch.rand(batch, length, generator=generator) * 3
    old_logprobs = logprobs + 0.3 * torch.randn(batch, length, generator=generator)
    ref_logprobs = logprobs + 2.0 * torch.randn(batch, length, generator=generator)  # wide: reaches k3's clamp
    rewards = torch.randint(0, 2, (batch,), generator=generator).float()
    values = torch.randn(batch, length, generator=generator)
    return dict(response_mask=response_mask, logprobs=logprobs, old_logprobs=old_logprobs,
                ref_logprobs=ref_logprobs, rewards=rewards, values=values)


SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimates_and_their_gradients_equal_verls(seed, estimator):
    core_algos, _ = import_verl()
    batch = random_batch(seed)
    ours_input = batch["logprobs"].clone().requires_grad_(True)
    verl_input = batch["logprobs"].clone().requires_grad_(True)
    ours = ppo.kl_estimate(ours_input, batch["ref_logprobs"], estimator)
    theirs = core_algos.kl_penalty(verl_input, batch["ref_logprobs"], estimator)
    if estimator == "k3":
        assert (theirs.detach() == 10).any(), "the batch should reach the clamp"
    torch.testing.assert_close(ours.detach(), theirs.detach(), atol=1e-6, rtol=1e-6)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(ours_input.grad, verl_input.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_whitening_equals_verls_masked_whiten(seed):
    _, torch_functional = import_verl()
    batch = random_batch(seed)
    mask = batch["response_mask"]
    theirs = torch_functional.masked_whiten(batch["values"], mask) * mask  # verl leaves padding unwhitened
    torch.testing.assert_close(ppo.whiten(batch["values"], mask), theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp", "gae"])
def test_advantages_equal_verls(seed, estimator):
    core_algos, _ = import_verl()
    from verl.trainer.config import AlgoConfig

    batch = random_batch(seed)
    mask = batch["response_mask"]
    samples_per_prompt = 4
    token_rewards = ppo.token_level_rewards(batch["rewards"], mask.bool())
    ours, _ = ppo.compute_advantages(estimator, batch["rewards"], mask.bool(), samples_per_prompt=samples_per_prompt,
                                     values=batch["values"], gamma=1.0, lam=0.95)
    index = np.repeat(np.arange(len(batch["rewards"]) // samples_per_prompt), samples_per_prompt)
    if estimator == "grpo":
        theirs, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, index)
    elif estimator == "rloo":
        theirs, _ = core_algos.compute_rloo_outcome_advantage(token_rewards, mask, index)
    elif estimator == "reinforce_pp":
        theirs, _ = core_algos.compute_reinforce_plus_plus_outcome_advantage(token_rewards, mask,
                                                                            config=AlgoConfig(gamma=1.0))
    else:
        theirs, _ = core_algos.compute_gae_advantage_return(token_rewards, batch["values"], mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(ours, theirs * mask, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_loss_aggregations_equal_verls(seed, mode):
    core_algos, _ = import_verl()
    batch = random_batch(seed)
    mask = batch["response_mask"]
    per_token = batch["values"]
    length = mask.shape[1]
    ours = ppo.aggregate(per_token, mask, mode, mini_batch_tokens=mask.sum(), mini_batch_sequences=len(mask),
                         max_response_length=length)
    theirs = core_algos.agg_loss(per_token, mask, mode)  # verl's horizon: the padded response length
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_clipped_value_loss_equals_verls(seed):
    core_algos, _ = import_verl()
    batch = random_batch(seed)
    mask = batch["response_mask"]
    returns = batch["values"] + torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed + 100))
    new_values = batch["values"] + 0.5 * torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed + 200))
    ours = ppo.aggregate(ppo.value_loss(new_values, batch["values"], returns, 0.2), mask, "token-mean",
                         mini_batch_tokens=mask.sum(), mini_batch_sequences=len(mask), max_response_length=None)
    theirs, _ = core_algos.compute_value_loss(new_values, returns, batch["values"], mask, cliprange_value=0.2,
                                              loss_agg_mode="token-mean")
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_loss_equals_verls_with_dual_clip_and_differs_without(seed):
    core_algos, _ = import_verl()
    from omegaconf import OmegaConf

    batch = random_batch(seed)
    mask = batch["response_mask"]
    advantages = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed + 300)) * mask
    config = OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28,
                               "clip_ratio_c": 3.0, "global_batch_info": {}})
    theirs, _ = core_algos.compute_policy_loss_vanilla(batch["old_logprobs"], batch["logprobs"] - 1.5 * advantages,
                                                       advantages, mask, "token-mean", config)

    def ours(dual_clip):
        per_token, _ = ppo.ppo_clip_loss(batch["logprobs"] - 1.5 * advantages, batch["old_logprobs"], advantages,
                                         0.2, clip_ratio_high=0.28, dual_clip=dual_clip)
        return ppo.aggregate(per_token, mask, "token-mean", mini_batch_tokens=mask.sum(),
                             mini_batch_sequences=len(mask), max_response_length=None)

    torch.testing.assert_close(ours(3.0), theirs, atol=1e-6, rtol=1e-5)
    assert abs(ours(None) - theirs) > 1e-4  # zerorl's default (no dual-clip) is a labelled deviation
