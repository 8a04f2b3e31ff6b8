"""sft.py: the supervised warm-up puts its loss on response tokens only, drops wrong worked answers,
buckets by length, and runs before RL from one train.py command."""

import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, shared_data
from sft import length_bucketed_batches, load_sft_pairs, sft_loss


def test_loss_is_the_mean_nll_of_response_tokens_only(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = [{"prompt_ids": [5, 6, 7, 8], "response_ids": [9, 10, 11]},
             {"prompt_ids": [12, 13], "response_ids": [14, 15, 16, 17, 18]}]
    with torch.no_grad():
        loss = sft_loss(model, batch, pad_token_id=0).item()
        response_terms, all_terms = [], []
        for pair in batch:
            sequence = pair["prompt_ids"] + pair["response_ids"]
            logprobs = torch.log_softmax(model(torch.tensor([sequence])).logits[0], dim=-1)
            for position in range(1, len(sequence)):
                term = -logprobs[position - 1, sequence[position]].item()
                all_terms.append(term)
                if position >= len(pair["prompt_ids"]):
                    response_terms.append(term)
    assert len(response_terms) == 8
    assert abs(loss - sum(response_terms) / len(response_terms)) < 1e-5
    assert abs(loss - sum(all_terms) / len(all_terms)) > 1e-3  # prompt tokens would change it


def test_rows_whose_worked_answer_misses_the_gold_are_dropped(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"problem": "What is 1+2?", "response": "1+2=3. \\boxed{3}", "answer": "3"},
            {"problem": "What is 2+2?", "response": "2+2=5. \\boxed{5}", "answer": "4"},
            {"problem": "What is 3+3?", "response": "6, unboxed", "answer": "6"},
            {"question": "Say hi.", "completion": "hi"}]  # no gold answer: kept unchecked
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs, counts = load_sft_pairs(path, "simple", tokenizer)
    assert counts == {"rows": 4, "without_response": 0, "checked": 3, "dropped_wrong_answer": 2, "kept": 2}
    assert all(pair["response_ids"][-1] == tokenizer.eos_token_id for pair in pairs)
    assert tokenizer.decode(pairs[0]["response_ids"][:-1]) == "1+2=3. \\boxed{3}"


def test_math500_worked_solutions_load_as_pairs(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs, counts = load_sft_pairs(shared_data("eval", "math500", "test.jsonl"), "qwen-boxed", tokenizer)
    assert counts["rows"] == 500 and counts["checked"] == 500
    assert counts["dropped_wrong_answer"] <= 2 and counts["kept"] == 500 - counts["dropped_wrong_answer"]


def test_length_bucketing_keeps_similar_lengths_together():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (256,), generator=generator).tolist()
    pairs = [{"prompt_ids": [1], "response_ids": [2] * n} for n in lengths]
    batches = length_bucketed_batches(pairs, batch_size=8, seed=0)
    spreads = []
    for _ in range(32):  # one pass over the data
        batch_lengths = [len(p["response_ids"]) for p in next(batches)]
        spreads.append(max(batch_lengths) - min(batch_lengths))
    # Random batches of 8 from 1..199 spread ~150 on average; pools of 128 sorted give a few tokens.
    assert sum(spreads) / len(spreads) < 25


def test_warm_up_then_rl_from_one_command(tiny_model_dir, tmp_path):
    from data.toy import make_problems, worked_answer

    train, test = make_problems(seed=2, n_train=16, n_test=4)
    for name, rows in (("train", train), ("test", test)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({**r, "response": worked_answer(r)}) + "\n" for r in train))
    output_dir = tmp_path / "run"
    command = [sys.executable, "train.py", "--model", str(tiny_model_dir), "--train-data", str(tmp_path / "train.jsonl"),
               "--eval-data", str(tmp_path / "test.jsonl"), "--sft-data", str(tmp_path / "sft.jsonl"), "--sft-steps", "3",
               "--sft-batch-size", "4", "--output-dir", str(output_dir), "--rollout-engine", "hf", "--max-steps", "1",
               "--prompts-per-step", "4", "--samples-per-prompt", "2", "--max-new-tokens", "8"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert '"kept": 16' in result.stdout
    warmed = AutoModelForCausalLM.from_pretrained(output_dir / "sft")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert any(not torch.equal(a, b) for a, b in zip(warmed.parameters(), base.parameters()))
    assert (output_dir / "final" / "config.json").exists()
