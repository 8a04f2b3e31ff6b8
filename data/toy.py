"""A toy zero-RL task that runs on a laptop CPU: two-digit addition with a boxed answer.

    python data/toy.py --out toy            # about 2 minutes on 2 CPU cores
    python train.py --model toy/model --train-data toy/train.jsonl --eval-data toy/test.jsonl --output-dir runs/toy

It builds, with no download:
  - a byte-level BPE tokenizer trained on the task's own text (digits kept as single tokens, as in Qwen's),
  - a ~1M-parameter Qwen2-architecture model (head_dim 64: vLLM's CPU attention kernel needs it),
  - a short supervised warm-up on worked answers (sft.py), stopped as soon as greedy held-out accuracy reaches
    --start-accuracy, so that RL starts from a partially able policy (as zero RL starts from a base
    model that can already sometimes solve the problems),
and writes DIR/model (save_pretrained, with the tokenizer), DIR/train.jsonl, DIR/test.jsonl, DIR/sft.jsonl
(the worked answers of the warm-up) and DIR/toy.json (greedy held-out accuracy before and after it).
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
from sft import load_sft_pairs, train_supervised  # noqa: E402

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
    parser.add_argument("--eval-every", type=int, default=10)
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

    # Supervised warm-up (sft.py, the same code as SimpleRL's warm-up setting) on the RL training
    # problems' worked answers, until partially able. The held-out problems are never trained on.
    with open(out / "sft.jsonl", "w") as file:
        file.writelines(json.dumps({**p, "response": worked_answer(p)}) + "\n" for p in train)
    pairs, _ = load_sft_pairs(out / "sft.jsonl", TEMPLATE, tokenizer)
    monitor = test[:100]  # a slice of the held-out set decides when to stop
    accuracy = {"before_warm_up": greedy_accuracy(model, tokenizer, monitor)}
    start = time.time()

    def stop_once_able(step, loss):
        if step % args.eval_every:
            return False
        accuracy["after_warm_up"] = greedy_accuracy(model, tokenizer, monitor)
        print(f"warm-up step {step}: loss {loss:.3f}, held-out greedy accuracy {accuracy['after_warm_up']:.2f} "
              f"({time.time() - start:.0f}s)", flush=True)
        return accuracy["after_warm_up"] >= args.start_accuracy

    train_supervised(model, tokenizer, pairs, steps=args.max_sft_steps, batch_size=args.batch_size, lr=args.lr,
                     seed=args.seed, on_step=stop_once_able, progress=False)
    accuracy.setdefault("after_warm_up", greedy_accuracy(model, tokenizer, monitor))

    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    for name, rows in (("train", train), ("test", test)):
        with open(out / f"{name}.jsonl", "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    (out / "toy.json").write_text(json.dumps({"held_out_accuracy": accuracy, "seed": args.seed}) + "\n")
    print(f"wrote {out}/model, {out}/train.jsonl ({len(train)}), {out}/test.jsonl ({len(test)}), {out}/sft.jsonl; "
          f"greedy accuracy {accuracy['before_warm_up']:.2f} before the warm-up, {accuracy['after_warm_up']:.2f} after")


if __name__ == "__main__":
    main()
