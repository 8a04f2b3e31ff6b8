"""A toy zero-RL task that runs on a laptop CPU: two-digit addition with a boxed answer.

    python data/toy.py --out toy            # about 2 minutes on 2 CPU cores
    python train.py --model toy/model --train-data toy/train.jsonl --eval-data toy/test.jsonl --output-dir runs/toy

It builds, with no download:
  - a byte-level BPE tokenizer trained on the task's own text (digits kept as single tokens, as in Qwen's),
  - a ~1M-parameter Qwen2-architecture model (head_dim 64: vLLM's CPU attention kernel needs it),
  - a short supervised warm-up on worked answers, stopped as soon as greedy held-out accuracy reaches
    --start-accuracy, so that RL starts from a partially able policy (as zero RL starts from a base
    model that can already sometimes solve the problems),
and writes DIR/model (save_pretrained, with the tokenizer), DIR/train.jsonl and DIR/test.jsonl.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the project's modules
from data.problems import format_prompt  # noqa: E402
from reward import answers_match, extract_boxed  # noqa: E402

END_OF_TEXT, PAD = "<|endoftext|>", "<|pad|>"
TEMPLATE = "simple"


def make_problems(seed, n_train, n_test):
    """Disjoint train and test sets of "What is a+b?" with a, b in 10..99."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    to_row = lambda pair: {"problem": f"What is {pair[0]}+{pair[1]}?", "answer": str(pair[0] + pair[1])}
    return [to_row(p) for p in pairs[:n_train]], [to_row(p) for p in pairs[n_train:n_train + n_test]]


def worked_answer(problem):
    a, b = problem["problem"][len("What is "):-1].split("+")
    return f"{a}+{b}={int(a) + int(b)}. The answer is \\boxed{{{int(a) + int(b)}}}."


def build_tokenizer(texts, vocab_size):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, pad_token=PAD)


def build_model(tokenizer, seed):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=512, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config)


@torch.no_grad()
def greedy_accuracy(model, tokenizer, problems, max_new_tokens=24):
    model.eval()
    tokenizer.padding_side = "left"
    prompts = [format_prompt(p["problem"], TEMPLATE) for p in problems]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    output = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train()
    return sum(answers_match(extract_boxed(t), p["answer"]) for t, p in zip(texts, problems)) / len(problems)


def supervised_batch(tokenizer, problems):
    """input_ids and labels with the prompt masked out (-100), right-padded."""
    sequences, labels = [], []
    for problem in problems:
        prompt_ids = tokenizer(format_prompt(problem["problem"], TEMPLATE))["input_ids"]
        response_ids = tokenizer(worked_answer(problem))["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(prompt_ids + response_ids)
        labels.append([-100] * len(prompt_ids) + response_ids)
    width = max(len(s) for s in sequences)
    input_ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
    label_ids = torch.tensor([l + [-100] * (width - len(l)) for l in labels])
    return input_ids, label_ids


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=4000, help="RL training problems")
    parser.add_argument("--n-test", type=int, default=200, help="held-out problems")
    parser.add_argument("--start-accuracy", type=float, default=0.25,
                        help="stop the warm-up once greedy held-out accuracy reaches this")
    parser.add_argument("--max-sft-steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test = make_problems(args.seed, args.n_train, args.n_test)
    corpus = [format_prompt(p["problem"], TEMPLATE) + worked_answer(p) for p in train]
    tokenizer = build_tokenizer(corpus, vocab_size=400)
    model = build_model(tokenizer, args.seed)
    print(f"toy model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"vocabulary {len(tokenizer)}")

    # Supervised warm-up on the RL training problems' worked answers, until partially able.
    # (The held-out problems are never trained on.)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    generator = random.Random(args.seed)
    monitor = test[:100]  # a slice of the held-out set decides when to stop
    start, accuracy = time.time(), 0.0
    for step in range(1, args.max_sft_steps + 1):
        input_ids, labels = supervised_batch(tokenizer, generator.sample(train, args.batch_size))
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0:
            accuracy = greedy_accuracy(model, tokenizer, monitor)
            print(f"warm-up step {step}: loss {loss.item():.3f}, held-out greedy accuracy {accuracy:.2f} "
                  f"({time.time() - start:.0f}s)", flush=True)
            if accuracy >= args.start_accuracy:
                break

    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    for name, rows in (("train", train), ("test", test)):
        with open(out / f"{name}.jsonl", "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"wrote {out}/model, {out}/train.jsonl ({len(train)}), {out}/test.jsonl ({len(test)}); "
          f"starting accuracy {accuracy:.2f}")


if __name__ == "__main__":
    main()
