"""Supervised warm-up: fine-tune the policy on (prompt, worked answer) pairs before RL.

    python sft.py --model Qwen/Qwen2.5-0.5B --data long_cot.jsonl --steps 500 --output-dir runs/sft
    python train.py --model Qwen/Qwen2.5-0.5B --sft-data long_cot.jsonl --sft-steps 500     # then RL

SimpleRL's second setting (the SimpleRL blog: "SimpleRL" versus "SimpleRL-Zero") first fine-tunes the
base model on long chain-of-thought answers, then runs the same RL. The warm-up uses the RL prompt
template, so the policy meets the same prompts in both stages, and puts the loss on response tokens only:
the prompt is context, not something to imitate. Batches are built from responses of similar length
(length bucketing), so padding does not dominate. The toy task (data/toy.py) starts its tiny model
with this same code.
"""

import argparse
import json
import random
from pathlib import Path

import torch

from data.problems import default_template, load_problems, problem_prompt
from ppo import make_optimizer, response_logprobs_and_entropy

RESPONSE_FIELDS = ("response", "solution", "output", "completion")


#### Data: (prompt, response) pairs whose response reaches the gold answer

def load_sft_pairs(source, template, tokenizer, check_answers=True):
    """Token-id pairs {"prompt_ids", "response_ids"} for supervised training, and counts of what was kept.

    Rows need a problem (problem/question/... as in data/problems.py) and a response (response, solution,
    output or completion). When a row also has a gold answer, the response's last \\boxed{} is graded
    against it with reward.py, and rows whose response does not reach the gold answer are dropped:
    imitating a wrong answer teaches the wrong thing.
    """
    from reward import grade_batch

    rows = load_problems(source, require_answer=False, keep_fields=RESPONSE_FIELDS)
    rows_with_response = [row for row in rows if any(isinstance(row.get(f), str) and row[f].strip()
                                                     for f in RESPONSE_FIELDS)]
    if not rows_with_response:
        raise ValueError(f"{source}: no row has a response field ({', '.join(RESPONSE_FIELDS)})")
    responses = [next(row[f] for f in RESPONSE_FIELDS if isinstance(row.get(f), str) and row[f].strip())
                 for row in rows_with_response]
    checked = {i for i, row in enumerate(rows_with_response) if row["answer"] is not None}
    correct = set(checked)
    if check_answers and checked:
        order = sorted(checked)
        graded = grade_batch([responses[i] for i in order], [rows_with_response[i]["answer"] for i in order])
        correct = {i for i, ok in zip(order, graded["correct"]) if ok}

    pairs = []
    for index, (row, response) in enumerate(zip(rows_with_response, responses)):
        if index in checked and index not in correct:
            continue
        # The prompt RL will ask it with: code rows (with "tests") take the code template.
        prompt_ids = tokenizer(problem_prompt(row, template), add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        pairs.append({"prompt_ids": prompt_ids, "response_ids": response_ids})
    counts = {"rows": len(rows), "without_response": len(rows) - len(rows_with_response),
              "checked": len(checked), "dropped_wrong_answer": len(checked - correct),
              "kept": len(pairs)}
    return pairs, counts


def length_bucketed_batches(pairs, batch_size, seed, pool_batches=16):
    """Endless batches: shuffle, then within pools of pool_batches batches sort by length and cut, so each
    batch holds responses of similar length; the batch order is shuffled again."""
    generator = random.Random(seed)
    while True:
        order = list(range(len(pairs)))
        generator.shuffle(order)
        batches = []
        pool_size = batch_size * pool_batches
        for pool_start in range(0, len(order), pool_size):
            pool = sorted(order[pool_start:pool_start + pool_size],
                          key=lambda i: len(pairs[i]["prompt_ids"]) + len(pairs[i]["response_ids"]))
            batches += [pool[start:start + batch_size] for start in range(0, len(pool), batch_size)]
        generator.shuffle(batches)
        for batch in batches:
            yield [pairs[i] for i in batch]


#### The loss and the loop

def sft_loss(model, batch, pad_token_id):
    """Mean negative log-likelihood of the response tokens; prompt tokens carry no loss."""
    sequences = [pair["prompt_ids"] + pair["response_ids"] for pair in batch]
    prompt_lengths = [len(pair["prompt_ids"]) for pair in batch]
    logprobs, _ = response_logprobs_and_entropy(model, sequences, prompt_lengths, pad_token_id=pad_token_id)
    response_mask = torch.arange(logprobs.shape[1], device=logprobs.device)[None, :] < torch.tensor(
        [len(pair["response_ids"]) for pair in batch], device=logprobs.device)[:, None]  # [B, R]
    return -(logprobs * response_mask).sum() / response_mask.sum()


def train_supervised(model, tokenizer, pairs, *, steps, batch_size, lr, optim="adamw", seed=0, on_step=None,
                     autocast_dtype=None, progress=True):
    """`steps` optimizer steps of supervised training on `pairs`. on_step(step, loss) may return True to
    stop early (the toy task stops once it reaches its target accuracy). Returns the last loss."""
    from tqdm import tqdm

    model.train()
    optimizer, _ = make_optimizer(model, optim, lr, weight_decay=0.0, warmup_steps=0)
    device = next(model.parameters()).device
    batches = length_bucketed_batches(pairs, batch_size, seed)
    loss_value = float("nan")
    for step in tqdm(range(1, steps + 1), desc="sft", dynamic_ncols=True, disable=not progress):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = sft_loss(model, next(batches), tokenizer.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if on_step is not None and on_step(step, loss_value):
            break
    return loss_value


#### Command line: the warm-up on its own

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base model: hub id or save_pretrained directory")
    parser.add_argument("--data", required=True, help="pairs: .jsonl/.json/.parquet with a problem and a response")
    parser.add_argument("--output-dir", required=True, help="where the fine-tuned model is saved (save_pretrained)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--optim", choices=["adamw", "adamw8bit"], default="adamw")
    parser.add_argument("--template", default=None, help="prompt template (default: by the tokenizer)")
    parser.add_argument("--no-answer-check", action="store_true", help="keep responses that miss the gold answer")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from train import load_model

    torch.manual_seed(args.seed)
    on_gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = args.template or default_template(tokenizer)
    pairs, counts = load_sft_pairs(args.data, template, tokenizer, check_answers=not args.no_answer_check)
    print(f"supervised pairs: {json.dumps(counts)}")
    model = load_model(args.model, torch.device("cuda" if on_gpu else "cpu"), args.gradient_checkpointing)
    loss = train_supervised(model, tokenizer, pairs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            optim=args.optim, seed=args.seed, autocast_dtype=torch.bfloat16 if on_gpu else None)
    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    print(f"final loss {loss:.4f}; saved {output_dir}")


if __name__ == "__main__":
    main()
