"""Accuracy of a model on a file of math problems, with the same engine, template and grader as training.

    python evaluate.py --model runs/toy/final --data toy/test.jsonl --output runs/toy/eval.json

Greedy decoding by default. train.py calls evaluate_accuracy() on its colocated engine, so the numbers
logged during training and the numbers printed here come from one code path.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from data.problems import TEMPLATE_STOP_STRINGS, default_template, format_prompt, load_problems
from reward import grade_batch


def evaluate_accuracy(engine, problems, template, max_new_tokens, temperature=0.0, top_p=1.0):
    """Generate one response per problem and grade it. Returns (summary dict, per-sample records)."""
    prompts = [format_prompt(p["problem"], template) for p in problems]
    samples = engine.generate(prompts, samples_per_prompt=1, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, stop=TEMPLATE_STOP_STRINGS[template])
    graded = grade_batch([s.response_text for s in samples], [p["answer"] for p in problems])
    records = [
        {"problem": p["problem"], "gold": p["answer"], "response": s.response_text, "pred": pred,
         "correct": correct, "finish_reason": s.finish_reason, "response_length": len(s.response_token_ids)}
        for p, s, pred, correct in zip(problems, samples, graded["pred"], graded["correct"])
    ]
    n = len(records)
    summary = {
        "accuracy": sum(r["correct"] for r in records) / n,
        "n": n,
        "format_rate": sum(r["pred"] is not None for r in records) / n,
        "truncated_rate": sum(r["finish_reason"] == "length" for r in records) / n,
        "response_length_mean": sum(r["response_length"] for r in records) / n,
    }
    return summary, records


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a save_pretrained directory or a hub model id")
    parser.add_argument("--data", required=True, help="problems: .jsonl, .json, .parquet or a hub dataset id")
    parser.add_argument("--output", help="write the summary JSON here (per-sample records go beside it)")
    parser.add_argument("--template", default=None, help="prompt template (default: by the tokenizer)")
    parser.add_argument("--max-new-tokens", type=int, default=4096)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    parser.add_argument("--rollout-engine", choices=["auto", "vllm", "hf"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from rollout import HFEngine, VLLMEngine, vllm_available

    problems = load_problems(args.data, limit=args.limit)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    template = args.template or default_template(tokenizer)
    use_vllm = args.rollout_engine == "vllm" or (args.rollout_engine == "auto" and vllm_available())
    if use_vllm:
        longest_prompt = max(len(tokenizer(format_prompt(p["problem"], template))["input_ids"]) for p in problems)
        engine = VLLMEngine(args.model, dtype="bfloat16" if torch.cuda.is_available() else "float32",
                            seed=args.seed, max_model_len=longest_prompt + args.max_new_tokens,
                            memory_utilization=0.8 if torch.cuda.is_available() else 0.15, enable_sleep=False)
    else:
        from transformers import AutoModelForCausalLM

        print("vLLM not used: generating with transformers (slow)", file=sys.stderr)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
        engine = HFEngine(model, tokenizer)

    summary, records = evaluate_accuracy(engine, problems, template, args.max_new_tokens)
    print(f"accuracy {summary['accuracy']:.4f} on {summary['n']} problems "
          f"(boxed {summary['format_rate']:.3f}, truncated {summary['truncated_rate']:.3f})")
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"model": args.model, "data": args.data, "template": template, **summary},
                                     indent=2) + "\n")
        with open(output.with_suffix(".samples.jsonl"), "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)


if __name__ == "__main__":
    main()
