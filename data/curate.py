"""Difficulty curation: keep the prompts the current model sometimes, but not always, solves.

    python data/curate.py --model Qwen/Qwen2.5-Math-7B --data train.parquet --output curated.jsonl
    python data/curate.py --model runs/stage1/final --data curated.jsonl --output stage2.jsonl \\
        --samples-per-prompt 16 --max-new-tokens 8192
    python data/curate.py ... --min-pass-rate -1      # keep the never-solved prompts too
    python data/curate.py ... --max-pass-rate 0.75    # also drop prompts solved 75% of the time or more

For every prompt it samples --samples-per-prompt responses with the model, with the engine, prompt
template and grader that training uses, and takes the prompt's pass rate: correct responses / samples.
A prompt the model always solves teaches GRPO nothing: every response in its group gets the same
reward, so every advantage is zero and the prompt only costs generation time. The same holds for a
prompt it never solves. AceReason-Nemotron curates its RL data this way, dropping the prompts the
current model already always solves (between stages, with the model of the stage before), and
optionally the ones it never solves.

Which prompts are kept (both bounds exclusive):

    keep a prompt when  --min-pass-rate < pass rate < --max-pass-rate

The defaults 0 and 1 drop exactly the never-solved (rate 0) and always-solved (rate 1) prompts. A
negative --min-pass-rate keeps the never-solved ones; a --max-pass-rate above 1 keeps the always-solved.

It writes:
  OUT                     the kept rows of the input, each exactly as it was in the input file plus a
                          "pass_rate" field, as JSON lines: train.py reads OUT just as it read the input
  OUT.pass_rates.jsonl    one line per prompt, kept or not: index (the row's position in the input),
                          task, problem, pass_rate, correct, samples, kept
and prints a summary: prompts kept, always solved, never solved, and a histogram of the pass rates.

Responses are generated and graded by evaluate.generate_and_grade, as in training's held-out
evaluation: math problems against their gold answer (reward.grade_batch); code problems ("task": "code",
as load_problems marks them) are asked with the code template of the same style
(data.problems.task_template) and graded by running their tests (reward_code.grade_code_batch). A
problem without a "task" key is math.
"""

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the project's modules
from data.problems import (PROMPT_TEMPLATES, _read_rows, default_template,  # noqa: E402
                           load_problems, task_of)

#### Reading: the problems as train.py sees them, and the input row behind each


def _same_value(first, second):
    """Equal, or equal as JSON (so that a NaN read from parquet equals itself)."""
    as_json = lambda value: json.dumps(value, sort_keys=True, default=str)  # noqa: E731
    return first == second or as_json(first) == as_json(second)


def load_rows_and_problems(source, limit=None):
    """(rows, problems, indices): the problems of `source` exactly as train.py loads them (load_problems),
    the raw input row each one came from, and that row's position in the input.

    Why not just the raw rows: load_problems decides what a row's problem and gold answer are, and skips
    rows it cannot grade (an empty answer), so the pass rates must be taken over its problems. Why not just
    its problems: they are a digest ("problem", "answer", ...), and the output must be the input's own rows
    so that it loads exactly as the input did. So we load twice, once plainly and once with every field of
    the input copied over (keep_fields), and find each problem's row as the next raw row whose fields all
    equal the copied ones. Both loads skip the same rows, so the two lists line up.
    """
    raw_rows = [row for _, row in _read_rows(str(source))]
    problems = load_problems(source, limit=limit)
    all_fields = sorted({name for row in raw_rows if isinstance(row, dict) for name in row})
    with contextlib.redirect_stdout(io.StringIO()):  # its report of skipped rows was printed by the first load
        copies = load_problems(source, limit=limit, keep_fields=all_fields)
    rows, indices, position = [], [], 0
    for copy in copies:
        while position < len(raw_rows) and not all(_same_value(value, copy.get(name))
                                                    for name, value in raw_rows[position].items()):
            position += 1
        if position == len(raw_rows):
            raise RuntimeError(f"{source}: could not find the input row of problem {copy['problem'][:80]!r}")
        rows.append(raw_rows[position])
        indices.append(position)
        position += 1
    return rows, problems, indices


#### Pass rates


def count_correct(engine, problems, template, *, samples_per_prompt, temperature=1.0, top_p=1.0,
                  max_new_tokens=1024, batch_size=None, progress=True):
    """How many of samples_per_prompt sampled responses to each problem are correct: a list of ints, in
    the order of `problems`.

    Generating and grading is evaluate.generate_and_grade, the code path of training's held-out
    evaluation: math problems graded against their gold answer, code problems asked with the code
    template of `template`'s style and graded on their tests. A problem marked "prompt_too_long" (its
    prompt fills the model's context; see main) is not generated for and counts as never solved.
    batch_size: problems per generate_and_grade call (None: all at once). Smaller batches give a
    progress line each (progress=True, to stderr), hold fewer responses in memory at a time, and bound
    the transformers fallback's padding.
    """
    from evaluate import generate_and_grade  # imports torch and the code grader; the filter needs neither

    counts = []
    step = batch_size or max(len(problems), 1)
    batches = [problems[start:start + step] for start in range(0, len(problems), step)]
    started = time.time()
    for number, batch in enumerate(batches, start=1):
        records = generate_and_grade(engine, batch, template, max_new_tokens, temperature, top_p,
                                     samples_per_problem=samples_per_prompt)
        # One record per response, grouped by problem: problem j's are j * k ... (j + 1) * k - 1.
        k = samples_per_prompt
        counts += [sum(bool(record["correct"]) for record in records[j * k:(j + 1) * k]) for j in range(len(batch))]
        if progress:
            print(f"batch {number}/{len(batches)}: {len(counts)}/{len(problems)} prompts, "
                  f"{sum(counts) / (len(counts) * samples_per_prompt):.3f} of responses correct so far "
                  f"({time.time() - started:.0f}s)", file=sys.stderr, flush=True)
    return counts


def pass_rates(engine, problems, template, *, samples_per_prompt, temperature=1.0, top_p=1.0,
               max_new_tokens=1024, batch_size=None, progress=False):
    """Each problem's pass rate, the share of its samples_per_prompt sampled responses that are correct
    (a list of floats in the order of `problems`; arguments as in count_correct)."""
    counts = count_correct(engine, problems, template, samples_per_prompt=samples_per_prompt,
                           temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, progress=progress)
    return [count / samples_per_prompt for count in counts]


#### Filtering


def keep_pass_rate(rate, *, min_pass_rate=0.0, max_pass_rate=1.0):
    """The rule, in one place: keep when min_pass_rate < rate < max_pass_rate (both exclusive)."""
    return min_pass_rate < rate < max_pass_rate


def filter_by_pass_rate(rows, rates, *, min_pass_rate=0.0, max_pass_rate=1.0):
    """(kept rows, counts): the rows whose pass rate lies strictly between the bounds, each a copy with a
    "pass_rate" field added, and counts {"kept", "too_hard" (rate <= min), "too_easy" (rate >= max)}.

    The defaults drop exactly the never-solved (0) and always-solved (1) rows; min_pass_rate below 0
    keeps the never-solved ones, max_pass_rate above 1 the always-solved ones.
    """
    if len(rows) != len(rates):
        raise ValueError(f"{len(rows)} rows but {len(rates)} pass rates")
    if not min_pass_rate < max_pass_rate:
        raise ValueError(f"min_pass_rate {min_pass_rate} must be below max_pass_rate {max_pass_rate}: "
                         "nothing lies strictly between them")
    kept, counts = [], {"kept": 0, "too_hard": 0, "too_easy": 0}
    for row, rate in zip(rows, rates):
        if keep_pass_rate(rate, min_pass_rate=min_pass_rate, max_pass_rate=max_pass_rate):
            kept.append({**row, "pass_rate": rate})
            counts["kept"] += 1
        else:
            counts["too_hard" if rate <= min_pass_rate else "too_easy"] += 1
    return kept, counts


def pass_rate_histogram(counts, samples_per_prompt, width=40):
    """Text lines: how many prompts had 0, 1, ..., samples_per_prompt correct responses, with a bar each."""
    tally = [0] * (samples_per_prompt + 1)
    for count in counts:
        tally[count] += 1
    largest = max(tally) or 1
    return [f"  {correct:>3}/{samples_per_prompt} ({correct / samples_per_prompt:.2f}) {number:>7}  "
            f"{'#' * math.ceil(width * number / largest)}" for correct, number in enumerate(tally)]


#### Command line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a save_pretrained directory or a hub model id")
    parser.add_argument("--data", required=True, help="the problems: .jsonl, .json, .parquet or a hub dataset id "
                                                      "(anything train.py's --train-data takes)")
    parser.add_argument("--output", required=True, help="the curated rows, as JSON lines (.jsonl); the pass "
                                                        "rates of all prompts go beside it in OUT.pass_rates.jsonl")
    parser.add_argument("--samples-per-prompt", type=int, default=8, help="responses sampled per prompt")
    parser.add_argument("--min-pass-rate", type=float, default=0.0,
                        help="drop prompts whose pass rate is at or below this (exclusive bound; default 0 drops "
                             "the never-solved prompts, -1 keeps them)")
    parser.add_argument("--max-pass-rate", type=float, default=1.0,
                        help="drop prompts whose pass rate is at or above this (exclusive bound; default 1 drops "
                             "the always-solved prompts, 2 keeps them)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature (use training's: the pass rate is that of training's rollouts)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=1024,
                        help="response length limit (use training's: a truncated response counts as wrong)")
    parser.add_argument("--limit", type=int, default=None, help="curate only the first N problems")
    parser.add_argument("--template", default=None, choices=sorted(PROMPT_TEMPLATES),
                        help="prompt template style (default: qwen-boxed for tokenizers with Qwen's chat tokens, "
                             "else simple); code problems get its code variant")
    parser.add_argument("--rollout-engine", choices=["auto", "vllm", "hf"], default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="prompts per generate call, one progress line each (default: 512 with vLLM, "
                             "16 with transformers)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.samples_per_prompt < 1:
        parser.error("--samples-per-prompt must be at least 1")
    if args.samples_per_prompt > 1 and args.temperature == 0:
        parser.error("--samples-per-prompt above 1 needs --temperature above 0 (greedy decoding gives one "
                     "answer k times)")
    if not args.min_pass_rate < args.max_pass_rate:
        parser.error("--min-pass-rate must be below --max-pass-rate (both bounds are exclusive)")
    if Path(args.output).suffix != ".jsonl":
        parser.error("--output must end in .jsonl: the curated rows are written as JSON lines")

    from transformers import AutoTokenizer

    from evaluate import load_engine, mark_too_long_prompts, model_context_length
    from rollout import HFEngine

    rows, problems, indices = load_rows_and_problems(args.data, args.limit)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    template = args.template or default_template(tokenizer)
    # As evaluate.py does: prompt + response must fit in the model's context. A prompt that fills it is
    # not generated for and counts as never solved (train.py would skip it anyway).
    context_length = model_context_length(args.model) or float("inf")
    longest_prompt = mark_too_long_prompts(problems, tokenizer, template, context_length)
    too_long = sum(bool(p.get("prompt_too_long")) for p in problems)
    if too_long:
        print(f"{too_long} of {len(problems)} prompts do not fit in the model's context of {context_length} "
              "tokens; they count as never solved", file=sys.stderr)
    engine = load_engine(args.model, int(min(longest_prompt + args.max_new_tokens, context_length)),
                         args.rollout_engine, args.seed)
    batch_size = args.batch_size or (16 if isinstance(engine, HFEngine) else 512)
    print(f"sampling {args.samples_per_prompt} responses to each of {len(problems)} prompts "
          f"(template {template}, temperature {args.temperature}, top-p {args.top_p}, "
          f"at most {args.max_new_tokens} new tokens)", file=sys.stderr)

    counts = count_correct(engine, problems, template, samples_per_prompt=args.samples_per_prompt,
                           temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                           batch_size=batch_size, progress=True)
    rates = [count / args.samples_per_prompt for count in counts]
    kept, filter_counts = filter_by_pass_rate(rows, rates, min_pass_rate=args.min_pass_rate,
                                              max_pass_rate=args.max_pass_rate)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w") as file:  # default=str: a parquet date or the like still writes
        file.writelines(json.dumps(row, default=str) + "\n" for row in kept)
    pass_rates_path = output.with_suffix(".pass_rates.jsonl")
    with open(pass_rates_path, "w") as file:
        for problem, index, count, rate in zip(problems, indices, counts, rates):
            record = {"index": index, "task": task_of(problem), "problem": problem["problem"], "pass_rate": rate,
                      "correct": count, "samples": args.samples_per_prompt,
                      "kept": keep_pass_rate(rate, min_pass_rate=args.min_pass_rate, max_pass_rate=args.max_pass_rate)}
            if problem.get("prompt_too_long"):
                record["prompt_too_long"] = True
            file.write(json.dumps(record) + "\n")

    summary = {
        "prompts": len(problems), **filter_counts,
        "always_solved": sum(rate == 1 for rate in rates), "never_solved": sum(rate == 0 for rate in rates),
        "prompt_too_long": too_long, "mean_pass_rate": sum(rates) / len(rates),
        "min_pass_rate": args.min_pass_rate, "max_pass_rate": args.max_pass_rate,
        "samples_per_prompt": args.samples_per_prompt,
    }
    print(f"kept {summary['kept']} of {summary['prompts']} prompts ({args.min_pass_rate} < pass rate < "
          f"{args.max_pass_rate}); dropped {summary['too_hard']} too hard and {summary['too_easy']} too easy; "
          f"always solved {summary['always_solved']}, never solved {summary['never_solved']}, "
          f"mean pass rate {summary['mean_pass_rate']:.3f}")
    print("pass rates (correct of samples, prompts):")
    print("\n".join(pass_rate_histogram(counts, args.samples_per_prompt)))
    print(f"wrote {output} ({summary['kept']} rows) and {pass_rates_path} ({len(problems)} rows)")
    return summary


if __name__ == "__main__":
    main()
