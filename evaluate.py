"""Benchmark accuracy and training dynamics, with the same engine, template and grader as training.

    python evaluate.py --model runs/toy/final --data toy/test.jsonl --output runs/toy/eval.json
    python evaluate.py --model hkust-nlp/Qwen-2.5-0.5B-SimpleRL-Zoo --benchmarks all --data-dir ../shared/data/eval
    python evaluate.py --model RUN/final --data-dir ../shared/data/eval --output-dir RUN/eval \\
        --benchmarks gsm8k,math500,minerva_math,olympiadbench,aime24,amc23
    python evaluate.py ... --n 8 --temperature 1.0 --top-p 0.95     # avg@8 and unbiased pass@1,2,4,8
    python evaluate.py --model RUN/final --data-dir ../shared/data/code --benchmarks humaneval,mbpp \\
        --n 10 --temperature 0.8 --top-p 0.95                        # code: pass@1 and pass@10
    python evaluate.py plot runs/a runs/b --output dynamics.png        # training dynamics, runs overlaid

By default the command line evaluates as SimpleRL-Zoo did (paper_protocol): the prompt the model was
trained with, greedy decoding for a base model and temperature 1.0 with top-p 0.95 for a trained one, at
most 16000 new tokens, the harness's stop strings; --protocol none gives plain greedy decoding. train.py
calls generate_and_grade() on its colocated engine (greedy, its own response limit), so the numbers logged
during training and the numbers printed here come from one code path. The benchmark form writes, in --output-dir:
  results.json           {"benchmarks": {name: {"accuracy", "n", ...}}, "average": mean accuracy, ...}
  results.md             the table: accuracy per benchmark and their average, response length,
                         truncation, boxed and reflection-keyword rates
  <name>.samples.jsonl   one line per response: problem, gold, response, pred, correct, ...

Code problems (task "code": the humaneval and mbpp benchmarks, or a --data file of code problems, see
data/problems.py) are asked with the code template of the same style (task_template: qwen-boxed ->
qwen-code, simple -> simple-code) and graded by running their tests in reward_code.py's sandbox: a
response is correct when its last ```python block passes every test, so accuracy is pass@1 and --n gives
pass@k. For code, format_rate (the "format" column) is the share of responses with a code block.

Every response is also measured for the training dynamics SimpleRL-Zoo looks at (dynamics_metrics):
how often it uses reflection words ("wait", "recheck", ...), and how long correct and wrong answers are.
"""

import argparse
import json
import math
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

import torch

from data.problems import (PROMPT_TEMPLATES, TEMPLATE_STOP_STRINGS, default_template, format_prompt, load_problems,
                           problem_prompt, task_of, task_template)
from reward import extract_boxed, grade_batch
from reward_code import grade_code_batch

#### Benchmarks: where each file lies under --data-dir, and how the gold answer is taken
#
# The layout and the gold rules are those of the SimpleRL-Zoo evaluation harness
# (hkust-nlp/simpleRL-reason, examples/simplelr_math_eval: data/<name>/test.jsonl and
# parser.py:parse_ground_truth). The harness then normalizes gold and prediction with its own
# strip_string; we leave that to reward.py, which normalizes both sides the same way.


def _gold_after_hashes(row):
    """GSM8K: the text after "####" in `answer`, thousands commas dropped ("2,125" -> "2125"; the
    harness drops them too when it compares numbers)."""
    return row["answer"].split("####")[-1].strip().replace(",", "")


def _gold_last_boxed(row):
    """MATH500 and Minerva Math: the last \\boxed{} of `solution`. (MATH500's `answer` field is not
    used, as in the harness; on the shared copy the two agree for all 500 rows.)"""
    return extract_boxed(row["solution"])


def _gold_first_final_answer(row):
    """OlympiadBench: final_answer[0] without its surrounding $ signs (inner "$,$" of multi-answers stays)."""
    return row["final_answer"][0].strip("$")


def _gold_answer_field(row):
    """AIME24 and AMC23: the `answer` field. AMC23 stores numbers as floats ("27.0"); a whole number is
    written as an integer ("27"), as the harness's strip_string does."""
    answer = row["answer"]
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer).strip()


# Code benchmarks have no gold answer: their rows carry tests (data/problems.py reads them). They lie in
# another directory than the math ones (../shared/data/code rather than ../shared/data/eval), so a code
# evaluation gets its own --data-dir. MBPP is evaluated on its test split, task ids 11-510 (the MBPP
# README), of the revised file, whose 974 reference solutions all pass their tests.
MBPP_TEST_TASK_IDS = range(11, 511)

# name -> (file under --data-dir, how its gold answer is taken (None: a code benchmark), problems)
BENCHMARKS = {
    "gsm8k": ("gsm8k/test.jsonl", _gold_after_hashes, 1319),
    "math500": ("math500/test.jsonl", _gold_last_boxed, 500),
    "minerva_math": ("minerva_math/test.jsonl", _gold_last_boxed, 272),
    "olympiadbench": ("olympiadbench/test.jsonl", _gold_first_final_answer, 675),
    "aime24": ("aime24/test.jsonl", _gold_answer_field, 30),
    "amc23": ("amc23/test.jsonl", _gold_answer_field, 40),
    "humaneval": ("humaneval/test.jsonl", None, 164),
    "mbpp": ("mbpp/mbpp_revised.jsonl", None, len(MBPP_TEST_TASK_IDS)),
}
# The six benchmarks SimpleRL-Zoo reports ("all" on the command line)
PAPER_BENCHMARKS = ("gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23")
CODE_BENCHMARKS = ("humaneval", "mbpp")


def _question_of(row):
    """The problem text, from the first of the fields the harness looks at: question, problem,
    Question, input. (AIME24 and AMC23 carry identical `question` and `problem` fields.)"""
    for field in ("question", "problem", "Question", "input"):
        if isinstance(row.get(field), str) and row[field].strip():
            return row[field]
    return None


def benchmark_names(names):
    """A list of benchmark names from a list or a comma-separated string ("all" is the six)."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    if list(names) == ["all"]:
        return list(PAPER_BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)} (or all)")
    return list(names)


def _load_code_benchmark(name, path, limit):
    """A code benchmark's problems (task "code", with tests), in file order, MBPP kept to its test split."""
    problems = load_problems(path, task="code", keep_fields=("task_id",))
    if name == "mbpp":
        problems = [p for p in problems if int(p["task_id"]) in MBPP_TEST_TASK_IDS]
    problems = problems[:limit] if limit is not None else problems
    return [dict(problem, index=index) for index, problem in enumerate(problems)]


def load_benchmark(name, data_dir, limit=None):
    """The problems of one benchmark, in file order: a list of {"problem", "answer", "index"} dicts
    ("index" is the row's position in the file; code benchmarks: in the evaluated split, and their
    problems also carry "task": "code" and "tests"). `limit` keeps the first N."""
    relative_path, gold_of, _ = BENCHMARKS[benchmark_names([name])[0]]
    path = Path(data_dir) / relative_path
    if not path.exists():
        if gold_of is None:
            raise FileNotFoundError(f"{name}: {path} not found; for code benchmarks --data-dir must hold "
                                    "humaneval/test.jsonl and mbpp/mbpp_revised.jsonl (../shared/data/code)")
        raise FileNotFoundError(f"{name}: {path} not found; --data-dir must hold <benchmark>/test.jsonl as "
                                "simpleRL-reason's examples/simplelr_math_eval/data does")
    if gold_of is None:
        return _load_code_benchmark(name, path, limit)
    problems = []
    with open(path) as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            problem, answer = _question_of(row), gold_of(row)
            if not problem or answer is None or not str(answer).strip():
                raise ValueError(f"{path}:{line_number}: no problem text or no gold answer")
            problems.append({"problem": problem, "answer": answer.strip(), "index": len(problems)})
            if limit is not None and len(problems) >= limit:
                break
    return problems


def load_benchmarks(names, data_dir, limit=None):
    """{name: problems} for each benchmark in `names` (a list or "gsm8k,math500,...")."""
    return {name: load_benchmark(name, data_dir, limit) for name in benchmark_names(names)}


#### Training dynamics: reflection keywords, response length of correct and wrong answers

# Words and phrases of reflection ("wait, let me recheck") and verification. Configurable: every
# function takes `keywords`, and the command line takes --reflection-keywords.
REFLECTION_KEYWORDS = (
    "wait", "recheck", "re-check", "rethink", "re-think", "reconsider", "re-evaluate", "reevaluate",
    "try again", "retry", "alternatively", "however", "double-check", "double check", "check again",
    "let me verify", "let me check", "let's verify", "let's check", "verify this", "verify that",
)


@lru_cache(maxsize=32)
def _keyword_pattern(keywords):
    """One regex for a tuple of keywords; see count_keywords for the rules."""
    if not keywords:
        return None
    alternatives = []
    for keyword in sorted({k.strip().lower().replace("\u2019", "'") for k in keywords if k.strip()},
                          key=len, reverse=True):  # longest first: "let me check" before "check again"
        alternatives.append(r"\s+".join(re.escape(word) for word in keyword.split()))
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def count_keywords(text, keywords=REFLECTION_KEYWORDS):
    """How many times the keywords occur in `text`.

    Rules: case-insensitive; whole words only (a keyword must not touch a letter, digit or underscore
    on either side: "wait" matches "Wait," but not "awaited" or "waiting", "however" not "howevers");
    a space inside a keyword matches any run of whitespace ("try  again", "try\\nagain"); the curly
    apostrophe counts as a straight one ("let’s check"); occurrences do not overlap, and where two
    keywords start at the same place the longer one is counted ("let me check again" counts once).
    """
    pattern = _keyword_pattern(tuple(keywords))
    return 0 if pattern is None else len(pattern.findall(text.replace("\u2019", "'")))


def reflection_rate(texts, keywords=REFLECTION_KEYWORDS):
    """The share of `texts` that contain at least one keyword (rules in count_keywords); 0.0 for none."""
    texts = list(texts)
    return sum(count_keywords(text, keywords) > 0 for text in texts) / len(texts) if texts else 0.0


def parse_keywords(value):
    """Keywords from a --reflection-keywords value: comma-separated; "" (or None) means REFLECTION_KEYWORDS."""
    if not value:
        return REFLECTION_KEYWORDS
    keywords = tuple(k.strip() for k in value.split(",") if k.strip())
    return keywords or REFLECTION_KEYWORDS


def _mean(values):
    return sum(values) / len(values)


def dynamics_metrics(response_texts, correct, finish_reasons, response_lengths, keywords=REFLECTION_KEYWORDS):
    """A flat dict of the training-dynamics metrics of one batch of responses (all lists align):

      reflection_rate                  share of responses with at least one keyword (count_keywords)
      reflection_keywords_mean         keyword occurrences per response
      accuracy_with_reflection         accuracy among responses with a keyword
      accuracy_without_reflection      accuracy among responses without one
      response_length_correct_mean     mean length (tokens) of the correct responses
      response_length_wrong_mean       mean length of the wrong ones
      truncated_rate                   share that hit the length limit (finish reason "length")

    A metric over an empty group (no correct response, say) is left out rather than logged as 0 or NaN.
    """
    if not len(response_texts) == len(correct) == len(finish_reasons) == len(response_lengths):
        raise ValueError("dynamics_metrics: the four lists must have the same length")
    if not response_texts:
        return {}
    counts = [count_keywords(text, keywords) for text in response_texts]
    metrics = {
        "reflection_rate": sum(count > 0 for count in counts) / len(counts),
        "reflection_keywords_mean": _mean(counts),
    }
    reflecting = [bool(ok) for ok, count in zip(correct, counts) if count > 0]
    not_reflecting = [bool(ok) for ok, count in zip(correct, counts) if count == 0]
    if reflecting:
        metrics["accuracy_with_reflection"] = _mean(reflecting)
    if not_reflecting:
        metrics["accuracy_without_reflection"] = _mean(not_reflecting)
    correct_lengths = [length for ok, length in zip(correct, response_lengths) if ok]
    wrong_lengths = [length for ok, length in zip(correct, response_lengths) if not ok]
    if correct_lengths:
        metrics["response_length_correct_mean"] = _mean(correct_lengths)
    if wrong_lengths:
        metrics["response_length_wrong_mean"] = _mean(wrong_lengths)
    metrics["truncated_rate"] = sum(reason == "length" for reason in finish_reasons) / len(finish_reasons)
    return metrics


#### pass@k


def pass_at_k(n, c, k):
    """The unbiased pass@k estimator of Chen et al. 2021 (Codex): with n samples of which c are correct,
    the chance that k of them drawn without replacement contain a correct one, 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which is the same number without the huge binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k contains a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_k_values(n):
    """The k reported for n samples per problem: powers of two below n, and n itself."""
    return sorted({2 ** j for j in range(n.bit_length()) if 2 ** j < n} | {n})


#### Evaluation: generate, grade, summarize



def generate_and_grade(engine, problems, template, max_new_tokens, temperature=0.0, top_p=1.0,
                       samples_per_problem=1, keywords=REFLECTION_KEYWORDS, batch_size=None, stop_strings=None):
    """samples_per_problem responses to each problem, graded: one record per response, grouped by problem.

    `template` is the math template; code problems (task "code") are asked with task_template(template,
    "code") and graded by reward_code.grade_code_batch (correct: every test passed), math ones by
    reward.grade_batch. Each template is generated in its own calls, as its stop strings differ.
    batch_size: prompts per engine.generate call (None: all at once, which vLLM schedules itself; the
    transformers fallback pads each call to its longest prompt, so give it a small batch).
    A problem marked "prompt_too_long" (its prompt fills the model's whole context; see main) is not
    generated for: its responses are empty, wrong and truncated, so it still counts in n.
    stop_strings: {template: strings generation stops at} (None: data/problems.py's TEMPLATE_STOP_STRINGS).
    """
    by_template = {}  # prompt template -> indices of the problems asked with it
    for index, problem in enumerate(problems):
        if not problem.get("prompt_too_long"):
            by_template.setdefault(task_template(template, task_of(problem)), []).append(index)
    samples = {}  # problem index -> its samples_per_problem samples
    for prompt_template, indices in by_template.items():
        prompts = [format_prompt(problems[index]["problem"], prompt_template) for index in indices]
        generated = []
        step = batch_size or max(len(prompts), 1)
        for start in range(0, len(prompts), step):
            generated += engine.generate(prompts[start:start + step], samples_per_prompt=samples_per_problem,
                                         temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                         stop=(stop_strings or TEMPLATE_STOP_STRINGS)[prompt_template])
        for position, index in enumerate(indices):
            samples[index] = generated[position * samples_per_problem:(position + 1) * samples_per_problem]
    responses = []  # (text, finish reason, length in tokens), samples_per_problem per problem, in order
    for index, problem in enumerate(problems):
        for sample in samples.get(index, [None] * samples_per_problem):
            if sample is None:  # prompt_too_long
                responses.append(("", "length", 0))
            else:
                responses.append((sample.response_text, sample.finish_reason, len(sample.response_token_ids)))
    rows_of = {"math": [], "code": []}  # response rows of each task
    for row in range(len(responses)):
        rows_of[task_of(problems[row // samples_per_problem])].append(row)
    graded = {}  # row -> (pred, correct, extra record fields)
    if rows_of["math"]:
        math_rows = rows_of["math"]
        result = grade_batch([responses[row][0] for row in math_rows],
                             [problems[row // samples_per_problem]["answer"] for row in math_rows])
        for row, pred, correct in zip(math_rows, result["pred"], result["correct"]):
            graded[row] = (pred, correct, {})
    if rows_of["code"]:
        code_rows = rows_of["code"]
        result = grade_code_batch([responses[row][0] for row in code_rows],
                                  [problems[row // samples_per_problem]["tests"] for row in code_rows])
        for position, row in enumerate(code_rows):
            graded[row] = (result["pred"][position], result["correct"][position],
                           {"task": "code", "passed": result["passed"][position], "total": result["total"][position],
                            "timeout": result["timeouts"][position]})
    records = []
    for row, (text, finish_reason, length) in enumerate(responses):
        problem = problems[row // samples_per_problem]
        pred, correct, extra = graded[row]
        records.append({
            "index": problem.get("index", row // samples_per_problem), "sample": row % samples_per_problem,
            "problem": problem["problem"], "gold": problem["answer"], "response": text, "pred": pred,
            "correct": correct, "finish_reason": finish_reason, "response_length": length,
            "reflection_keywords": count_keywords(text, keywords), **extra,
        })
        if problem.get("prompt_too_long"):
            records[-1]["prompt_too_long"] = True
    return records


def summarize(records, samples_per_problem=1, keywords=REFLECTION_KEYWORDS):
    """The summary of graded records (samples_per_problem consecutive records per problem):

      accuracy              share of correct responses (with k samples per problem: avg@k)
      n                     problems
      format_rate           share with a boxed answer (code: with a ```python block)
      truncated_rate        share cut off at max_new_tokens
      response_length_mean  tokens per response
      + dynamics_metrics    reflection_rate, response_length_correct_mean, ...
      with k > 1 samples:   samples_per_problem, avg@k (= accuracy), pass@j for j in pass_k_values(k)
      prompt_too_long       problems whose prompt did not fit in the model's context (only when any)
    """
    if not records or len(records) % samples_per_problem:
        raise ValueError(f"{len(records)} records is not a positive multiple of {samples_per_problem} samples")
    correct = [bool(r["correct"]) for r in records]
    summary = {
        "accuracy": _mean(correct),
        "n": len(records) // samples_per_problem,
        "format_rate": _mean([r["pred"] is not None for r in records]),
        "truncated_rate": _mean([r["finish_reason"] == "length" for r in records]),
        "response_length_mean": _mean([r["response_length"] for r in records]),
    }
    summary.update(dynamics_metrics([r["response"] for r in records], correct,
                                    [r["finish_reason"] for r in records], [r["response_length"] for r in records],
                                    keywords))
    too_long = sum(bool(r.get("prompt_too_long")) for r in records) // samples_per_problem
    if too_long:
        summary["prompt_too_long"] = too_long
    if samples_per_problem > 1:
        k = samples_per_problem
        per_problem = [sum(correct[start:start + k]) for start in range(0, len(correct), k)]
        summary["samples_per_problem"] = k
        summary[f"avg@{k}"] = summary["accuracy"]
        for j in pass_k_values(k):
            summary[f"pass@{j}"] = _mean([pass_at_k(k, c, j) for c in per_problem])
    return summary


def evaluate_accuracy(engine, problems, template, max_new_tokens, temperature=0.0, top_p=1.0, *,
                      samples_per_problem=1, keywords=REFLECTION_KEYWORDS, batch_size=None, stop_strings=None):
    """Generate samples_per_problem responses per problem and grade them.
    Returns (summary dict as in summarize(), per-response records)."""
    records = generate_and_grade(engine, problems, template, max_new_tokens, temperature, top_p,
                                 samples_per_problem, keywords, batch_size, stop_strings)
    return summarize(records, samples_per_problem, keywords), records


def evaluate_benchmarks(engine, benchmarks, template, max_new_tokens, temperature=0.0, top_p=1.0, *,
                        samples_per_problem=1, keywords=REFLECTION_KEYWORDS, batch_size=None, stop_strings=None):
    """Evaluate several problem sets at once ({name: problems}, e.g. from load_benchmarks): one
    generate call over all of them (the engine batches across sets), then a summary per set.
    Returns ({name: summary}, {name: records})."""
    names = list(benchmarks)
    everything = [dict(problem, benchmark=name) for name in names for problem in benchmarks[name]]
    records = generate_and_grade(engine, everything, template, max_new_tokens, temperature, top_p,
                                 samples_per_problem, keywords, batch_size, stop_strings)
    records_by_name = {name: [] for name in names}
    for record, problem in zip(records, (p for p in everything for _ in range(samples_per_problem))):
        records_by_name[problem["benchmark"]].append(dict(record, benchmark=problem["benchmark"]))
    summaries = {name: summarize(records_by_name[name], samples_per_problem, keywords) for name in names}
    return summaries, records_by_name


def average_accuracy(summaries):
    """The unweighted mean of the benchmarks' accuracies (the paper's "Avg." column)."""
    return _mean([summary["accuracy"] for summary in summaries.values()])


def benchmark_metrics(summaries, prefix="eval"):
    """Flat metrics for metrics.jsonl: "<prefix>/<name>/<key>" for every summary key, and
    "<prefix>/average/accuracy"."""
    metrics = {f"{prefix}/{name}/{key}": value for name, summary in summaries.items() for key, value in summary.items()}
    metrics[f"{prefix}/average/accuracy"] = average_accuracy(summaries)
    return metrics


def results_table(summaries):
    """A markdown table: one row per benchmark and their unweighted average; rates in percent."""
    k = next(iter(summaries.values())).get("samples_per_problem", 1)
    accuracy_name = "accuracy" if k == 1 else f"avg@{k}"
    columns = [(accuracy_name + " %", "accuracy", 100, 1)]
    if k > 1:
        columns.append((f"pass@{k} %", f"pass@{k}", 100, 1))
    columns += [("response length", "response_length_mean", 1, 0), ("truncated %", "truncated_rate", 100, 1),
                ("boxed/code block %", "format_rate", 100, 1), ("reflection %", "reflection_rate", 100, 1)]
    header = ["benchmark", "n"] + [title for title, *_ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in summaries.items():
        cells = [name, str(summary["n"])] + [f"{summary[key] * scale:.{digits}f}" for _, key, scale, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    averages = [f"{_mean([s[key] for s in summaries.values()]) * scale:.{digits}f}"
                for _, key, scale, digits in columns]
    total = sum(s["n"] for s in summaries.values())
    lines.append(f"| **average** | {total} | " + " | ".join(averages) + " |")
    return "\n".join(lines) + "\n"


#### Reporting to TensorBoard and Weights & Biases (optional, for train.py's --report-to)


def make_reporters(report_to, output_dir, config_dict=None):
    """A function report(metrics, step) that sends the numeric metrics of one step to TensorBoard and/or
    Weights & Biases; report.close() flushes and ends them.

    report_to: "none" (or "" / None: report() does nothing), "tensorboard", "wandb", or a comma list
    ("tensorboard,wandb"). Each backend is imported only when asked for, and a missing package is an
    ImportError that says what to install. TensorBoard writes to OUTPUT_DIR/tensorboard; W&B logs a run
    named after OUTPUT_DIR to the project in $WANDB_PROJECT (default "zerorl"), with config_dict as its config.
    """
    names = [name.strip() for name in (report_to or "none").split(",") if name.strip() and name.strip() != "none"]
    unknown = [name for name in names if name not in ("tensorboard", "wandb")]
    if unknown:
        raise ValueError(f"unknown --report-to {', '.join(unknown)}; choose from none, tensorboard, wandb")
    output_dir = Path(output_dir)
    senders, closers = [], []
    if "tensorboard" in names:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--report-to tensorboard needs the tensorboard package: "
                              "pip install tensorboard") from None
        writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        if config_dict is not None:
            writer.add_text("config", "```\n" + json.dumps(config_dict, indent=2) + "\n```")

        def send_to_tensorboard(metrics, step):
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
            writer.flush()  # a crashed run still leaves its curves

        senders.append(send_to_tensorboard)
        closers.append(writer.close)
    if "wandb" in names:
        try:
            import wandb
        except ImportError:
            raise ImportError("--report-to wandb needs the wandb package: pip install wandb") from None
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "zerorl"), name=output_dir.name,
                         dir=str(output_dir), config=config_dict)
        senders.append(lambda metrics, step: run.log(metrics, step=step))
        closers.append(run.finish)

    def report(metrics, step):
        numeric = {key: float(value) for key, value in metrics.items()
                   if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        for send in senders:
            send(numeric, step)

    def close():
        for closer in closers:
            closer()

    report.close = close
    return report


#### Pictures: the training dynamics of one or more runs, from their metrics.jsonl

_EVAL_ACCURACY = re.compile(r"^eval/(?:(.+)/)?accuracy$")  # eval/accuracy, eval/<name>/accuracy

# (panel title, y label, ((metrics.jsonl key, legend label), ...)); the held-out accuracy panel finds its
# keys (eval/accuracy, eval/<name>/accuracy). Held-out ("eval/...") values are drawn with dots: they are
# logged only on evaluation steps.
PLOT_PANELS = (
    ("reward and accuracy (rollouts)", "", (("reward_mean", "reward"), ("accuracy", "accuracy"))),
    ("held-out accuracy", "accuracy", None),
    ("response length", "tokens", (("response_length_mean", "all"), ("response_length_correct_mean", "correct"),
                                   ("response_length_wrong_mean", "wrong"), ("eval/response_length_mean", "held-out"))),
    ("reflection", "share of responses", (("reflection_rate", "rollouts"), ("eval/reflection_rate", "held-out"))),
    ("truncation and format", "share of responses", (("truncated_rate", "truncated"), ("format_rate", "boxed"))),
    ("policy entropy", "nats per token", (("entropy", "entropy"),)),
)
_LINE_STYLES = ("-", "--", ":", "-.")


def read_metrics(run):
    """The rows of RUN/metrics.jsonl (RUN may also be the metrics.jsonl file itself)."""
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: give train.py output directories (or their metrics.jsonl)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows, key):
    """(steps, values) of the rows that logged `key` as a number."""
    points = [(row["step"], row[key]) for row in rows
              if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool) and "step" in row]
    return [step for step, _ in points], [value for _, value in points]


def _run_labels(runs):
    """Legend labels: each run's directory name, or its whole path where two names clash."""
    names = [Path(run).name if Path(run).is_dir() else Path(run).parent.name for run in runs]
    return [name if names.count(name) == 1 else str(run) for name, run in zip(names, runs)]


def plot_runs(runs, output, title=None):
    """Draw the training dynamics of `runs` (train.py output directories) into one PNG, runs overlaid
    (one colour each). Panels are those of PLOT_PANELS; a metric a run did not log is skipped, and a
    panel nobody logged says so. Returns the output path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    all_rows = [read_metrics(run) for run in runs]
    labels = _run_labels(runs)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(2, 3, figsize=(16, 8.5), squeeze=False)
    for ax, (panel_title, y_label, keys) in zip(axes.flat, PLOT_PANELS):
        if keys is None:  # held-out accuracy: every eval/.../accuracy key any run logged
            found = sorted({key for rows in all_rows for row in rows for key in row if _EVAL_ACCURACY.match(key)})
            keys = tuple((key, _EVAL_ACCURACY.match(key).group(1) or "held-out") for key in found)
        styles = [dict(linestyle=_LINE_STYLES[i % len(_LINE_STYLES)], marker="o" if key.startswith("eval/") else None)
                  for i, (key, _) in enumerate(keys)]
        drawn = set()
        for run_index, rows in enumerate(all_rows):
            for key_index, (key, _) in enumerate(keys):
                steps, values = _series(rows, key)
                if steps:
                    ax.plot(steps, values, color=colors[run_index % len(colors)], markersize=4, linewidth=1.5,
                            **styles[key_index])
                    drawn.add(key_index)
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.set_ylabel(y_label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "not in metrics.jsonl", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif len(keys) > 1:  # which line style is which metric (colours are runs)
            ax.legend([Line2D([], [], color="black", **styles[i]) for i in sorted(drawn)],
                      [keys[i][1] for i in sorted(drawn)], fontsize=8, loc="best", handlelength=3.5)
    figure.suptitle(title or "training dynamics", y=0.99, fontsize=13)
    figure.legend([Line2D([], [], color=colors[i % len(colors)], linewidth=3) for i in range(len(runs))], labels,
                  loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=min(len(runs), 6), fontsize=10, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def plot_main(argv):
    parser = argparse.ArgumentParser(prog="evaluate.py plot",
                                     description="Draw the training dynamics of train.py runs into a PNG: "
                                                 "reward and accuracy, held-out accuracy, response length, "
                                                 "reflection rate, truncation, entropy against step.")
    parser.add_argument("runs", nargs="+", help="train.py --output-dir directories (their metrics.jsonl)")
    parser.add_argument("--output", default=None, help="the PNG to write (default: FIRST_RUN/dynamics.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    output = args.output or Path(args.runs[0]) / "dynamics.png"
    print(f"wrote {plot_runs(args.runs, output, args.title)}")


#### SimpleRL-Zoo's evaluation protocol: the command line's defaults
#
# Sources: the paper (Zeng et al. 2025, arXiv 2503.18892v3), appendix B.5 and Table 1; hkust-nlp/simpleRL-reason
# (branch v1): the README's evaluation command, eval_math_nodes.sh and examples/simplelr_math_eval/math_eval.py;
# for the blog's model, branch v0: eval/sh/eval.sh and eval/sh/run.sh.

PAPER_MAX_NEW_TOKENS = 16000  # eval_math_nodes.sh and the README's command: --max_tokens 16000 (paper B.5: "16K")
# Table 1: "baselines use greedy decoding, and models with SimpleRL-Zoo use temperature=1.0 and top-p=0.95";
# one sample per problem (the README's --n_sampling 1), seed 0 (sh/eval.sh).
PAPER_DECODING = {"base": dict(temperature=0.0, top_p=1.0), "trained": dict(temperature=1.0, top_p=0.95)}
BLOG_RELEASED = "hkust-nlp/Qwen-2.5-Math-7B-SimpleRL-Zero"  # the blog's model (v0 README "News")
BLOG_MAX_NEW_TOKENS = 3000  # v0 eval/sh/eval.sh: --max_tokens_per_call 3000, --temperature 0 (greedy)
# The harness's stop strings (math_eval.py): "</s>", "<|im_end|>", "<|endoftext|>" for every prompt, and
# "Question:", "Answer:" for the abel prompt, "assistant", "user", "_end", "_start" for the Qwen prompts (they
# catch a chat turn written as plain text by a tokenizer without Qwen's special tokens). They also cut a
# response that merely writes "Answer:" or the word "user": the published numbers include that.
_HARNESS_STOPS = ["</s>", "<|im_end|>", "<|endoftext|>"]
HARNESS_STOP_STRINGS = {"abel": _HARNESS_STOPS + ["Question:", "Answer:"],
                        "qwen-boxed": _HARNESS_STOPS + ["assistant", "user", "_end", "_start"],
                        "qwen-math-cot": _HARNESS_STOPS + ["assistant", "user", "_end", "_start"]}


def train_run_config(model):
    """The config.json of the train.py run that saved the directory `model` (RUN/final, RUN/sft or
    RUN/checkpoints/step_N/model), or None."""
    model = Path(model)
    for run_dir in (model.parent, model.parent.parent.parent):
        path = run_dir / "config.json"
        if model.is_dir() and path.is_file():
            saved = json.loads(path.read_text())
            if isinstance(saved, dict) and {"model", "train_data", "samples_per_prompt"} <= set(saved):
                return saved
    return None


def paper_protocol(model, stage="auto"):
    """How SimpleRL-Zoo's evaluation would decode `model`: {"template" (None: by the tokenizer), "stage",
    "temperature", "top_p", "max_new_tokens", "stop_strings", "why"}.

    The template is the one the model was trained with (paper B.5: "we adopt the same prompt template used
    during training"): for a base model or a released SimpleRL-Zoo model, its row's in train.py's recipe table;
    for a train.py output, the run's. stage "base" decodes greedily, "trained" samples at temperature 1.0 and
    top-p 0.95 (Table 1); auto: trained for a released SimpleRL-Zoo model or the output of a train.py run of a
    SimpleRL-Zoo recipe, base otherwise. The blog's model (or a simplerl-blog run) is decoded as the blog did."""
    from train import PROMPT_TEMPLATES_OF, SIMPLERL_ZOO_MODELS, recognize_model

    run = train_run_config(model)
    recipe = (run or {}).get("recipe", "none")
    stop_strings = {**TEMPLATE_STOP_STRINGS, **HARNESS_STOP_STRINGS}
    if str(model).rstrip("/").lower().endswith(BLOG_RELEASED.split("/")[1].lower()) or recipe == "simplerl-blog":
        decoding = PAPER_DECODING["trained"] if stage == "trained" else PAPER_DECODING["base"]
        return dict(template=(run or {}).get("template") or "qwen-math-cot", stage="blog", **decoding,
                    max_new_tokens=BLOG_MAX_NEW_TOKENS, stop_strings=stop_strings,
                    why="the SimpleRL blog's model, decoded as the blog's evaluation did")
    row, why, released = recognize_model(run["model"] if run else model)
    if run is not None:
        template, why = run.get("template") or None, f"trained by train.py from {run['model']}, recipe {recipe}"
    else:
        template = PROMPT_TEMPLATES_OF[SIMPLERL_ZOO_MODELS[row]["prompt"]] if row else None
        why = f"SimpleRL-Zoo's {row}: {why}" if row else "a model SimpleRL-Zoo did not train"
    if stage == "auto":
        stage = "trained" if released or recipe.startswith("simplerl-zoo/") else "base"
    return dict(template=template, stage=stage, **PAPER_DECODING[stage], max_new_tokens=PAPER_MAX_NEW_TOKENS,
                stop_strings=stop_strings, why=why)


#### Command line


def model_context_length(model):
    """The longest sequence the model was built for (config max_position_embeddings), or None."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


def mark_too_long_prompts(problems, tokenizer, template, context_length):
    """Mark each problem whose prompt fills the model's whole context ("prompt_too_long": it is not
    generated for, and counts as wrong); return the length in tokens of the longest prompt that fits."""
    longest_prompt = 0
    for problem in problems:
        prompt_length = len(tokenizer(problem_prompt(problem, template))["input_ids"])
        if prompt_length >= context_length:
            problem["prompt_too_long"] = True
        else:
            longest_prompt = max(longest_prompt, prompt_length)
    return longest_prompt


def load_engine(model, max_model_len, rollout_engine="auto", seed=0):
    """The generation engine for a saved model: vLLM when available (or asked for), else transformers.
    max_model_len (prompt plus response, vLLM only): a response that reaches it stops as truncated."""
    from transformers import AutoTokenizer

    from rollout import HFEngine, VLLMEngine, vllm_available

    use_vllm = rollout_engine == "vllm" or (rollout_engine == "auto" and vllm_available())
    if use_vllm:
        return VLLMEngine(model, dtype="bfloat16" if torch.cuda.is_available() else "float32", seed=seed,
                          max_model_len=max_model_len,
                          memory_utilization=0.8 if torch.cuda.is_available() else 0.15, enable_sleep=False)
    from transformers import AutoModelForCausalLM

    print("vLLM not used: generating with transformers (slow)", file=sys.stderr)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return HFEngine(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(device), tokenizer)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "plot":
        return plot_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a save_pretrained directory or a hub model id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="one problem file: .jsonl, .json, .parquet or a hub dataset id")
    source.add_argument("--benchmarks", help=f"comma-separated benchmarks from {', '.join(BENCHMARKS)}, or all")
    parser.add_argument("--data-dir", help="with --benchmarks: the directory holding <benchmark>/test.jsonl "
                                           "(simpleRL-reason's examples/simplelr_math_eval/data); for humaneval "
                                           "and mbpp the directory holding humaneval/test.jsonl and "
                                           "mbpp/mbpp_revised.jsonl (../shared/data/code)")
    parser.add_argument("--output", help="with --data: write the summary JSON here (per-sample records beside it)")
    parser.add_argument("--output-dir", help="with --benchmarks: where results.json, results.md and "
                                             "<name>.samples.jsonl go (default: runs/eval/<model>)")
    parser.add_argument("--protocol", default="simplerl-zoo", choices=["simplerl-zoo", "none"],
                        help="simplerl-zoo: SimpleRL-Zoo's evaluation (paper_protocol): the model's training prompt, "
                             "greedy for a base model and temperature 1.0, top-p 0.95 for a trained one, 16000 new "
                             "tokens, the harness's stop strings; none: greedy, 4096 tokens, the prompt by the "
                             "tokenizer. Each flag below overrides its part (default: simplerl-zoo)")
    parser.add_argument("--stage", default="auto", choices=["auto", "base", "trained"],
                        help="which of Table 1's decodings the protocol uses: base (greedy) or trained (temperature "
                             "1.0, top-p 0.95); auto: trained for a released SimpleRL-Zoo model or a train.py run "
                             "of a SimpleRL-Zoo recipe, else base")
    parser.add_argument("--template", default=None, choices=sorted(PROMPT_TEMPLATES),
                        help="prompt template (default: the protocol's; without one, qwen-boxed for tokenizers "
                             "with Qwen's chat tokens, else simple)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the protocol's (16000; 4096 "
                                                                         "with --protocol none)")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate only the first N problems (of each benchmark)")
    parser.add_argument("--n", type=int, default=1, help="responses per problem: with N > 1 reports avg@N and "
                                                         "pass@k (needs --temperature > 0)")
    parser.add_argument("--temperature", type=float, default=None, help="0: greedy (default: the protocol's)")
    parser.add_argument("--top-p", type=float, default=None, help="default: the protocol's")
    parser.add_argument("--reflection-keywords", default="", help="comma-separated keywords whose use counts as "
                                                                  "reflection (default: REFLECTION_KEYWORDS)")
    parser.add_argument("--rollout-engine", choices=["auto", "vllm", "hf"], default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="prompts per generate call (default: all with vLLM, 16 with transformers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved settings (protocol filled in) and stop before loading anything")
    args = parser.parse_args(argv)
    protocol = (paper_protocol(args.model, args.stage) if args.protocol == "simplerl-zoo" else
                dict(template=None, stage="none", temperature=0.0, top_p=1.0, max_new_tokens=4096, stop_strings=None,
                     why="--protocol none"))
    for name in ("template", "temperature", "top_p", "max_new_tokens"):  # a flag overrides its part
        if getattr(args, name) is None:
            setattr(args, name, protocol[name])
    print(f"protocol: {args.protocol} ({protocol['why']}): stage {protocol['stage']}, template "
          f"{args.template or 'by the tokenizer'}, temperature {args.temperature}, top-p {args.top_p}, at most "
          f"{args.max_new_tokens} new tokens, {args.n} per problem")
    if args.dry_run:
        settings = {**vars(args), "stage": protocol["stage"], "stop_strings": protocol["stop_strings"]}
        print(json.dumps(settings, indent=2))
        return settings
    if args.n > 1 and args.temperature == 0:
        parser.error("--n above 1 needs --temperature above 0 (greedy decoding gives the same answer n times)")
    if args.benchmarks and not args.data_dir:
        parser.error("--benchmarks needs --data-dir")
    if args.benchmarks and args.output:
        parser.error("--output goes with --data; --benchmarks writes into --output-dir")
    if args.data and args.output_dir:
        parser.error("--output-dir goes with --benchmarks; --data writes --output")

    from transformers import AutoTokenizer

    from rollout import HFEngine

    if args.benchmarks:
        benchmarks = load_benchmarks(args.benchmarks, args.data_dir, args.limit)
    else:
        benchmarks = {"data": load_problems(args.data, limit=args.limit)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    template = args.template or default_template(tokenizer)
    keywords = parse_keywords(args.reflection_keywords)
    # The engine holds prompt + response within the model's context: a response that would run past it
    # stops there (truncated), and a prompt that fills the context is not generated for (counted wrong).
    context_length = model_context_length(args.model) or float("inf")
    longest_prompt = 0
    for name, problems in benchmarks.items():
        longest_prompt = max(longest_prompt, mark_too_long_prompts(problems, tokenizer, template, context_length))
        too_long = sum(bool(p.get("prompt_too_long")) for p in problems)
        if too_long:
            print(f"{name}: {too_long} of {len(problems)} prompts do not fit in the model's context of "
                  f"{context_length} tokens; they count as wrong", file=sys.stderr)
    max_model_len = int(min(longest_prompt + args.max_new_tokens, context_length))
    engine = load_engine(args.model, max_model_len, args.rollout_engine, args.seed)
    batch_size = args.batch_size or (16 if isinstance(engine, HFEngine) else None)
    options = dict(samples_per_problem=args.n, keywords=keywords, batch_size=batch_size,
                   stop_strings=protocol["stop_strings"])

    if not args.benchmarks:  # the single-file form
        summary, records = evaluate_accuracy(engine, benchmarks["data"], template, args.max_new_tokens,
                                             args.temperature, args.top_p, **options)
        print(f"accuracy {summary['accuracy']:.4f} on {summary['n']} problems "
              f"(boxed or code block {summary['format_rate']:.3f}, truncated {summary['truncated_rate']:.3f}, "
              f"reflection {summary['reflection_rate']:.3f})")
        if args.output:
            output = Path(args.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps({"model": args.model, "data": args.data, "template": template, **summary},
                                         indent=2) + "\n")
            with open(output.with_suffix(".samples.jsonl"), "w") as file:
                file.writelines(json.dumps(record) + "\n" for record in records)
        return summary

    summaries, records = evaluate_benchmarks(engine, benchmarks, template, args.max_new_tokens, args.temperature,
                                             args.top_p, **options)
    output_dir = Path(args.output_dir or Path("runs", "eval", re.sub(r"[^\w.-]+", "_", args.model.strip("/"))))
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "model": args.model, "template": template, "data_dir": str(args.data_dir), "limit": args.limit,
        "decoding": {"protocol": args.protocol, "stage": protocol["stage"], "max_new_tokens": args.max_new_tokens,
                     "n": args.n, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed},
        "reflection_keywords": list(keywords),
        "benchmarks": summaries,
        "average": average_accuracy(summaries),
    }
    if args.n > 1:
        results[f"average_pass@{args.n}"] = _mean([s[f"pass@{args.n}"] for s in summaries.values()])
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = results_table(summaries)
    decoding = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, top-p {args.top_p}"
    (output_dir / "results.md").write_text(f"{args.model}, template {template}, {decoding}, {args.n} per problem, "
                                           f"at most {args.max_new_tokens} new tokens\n\n{table}")
    for name, name_records in records.items():
        with open(output_dir / f"{name}.samples.jsonl", "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in name_records)
    print(table)
    print(f"average accuracy {results['average']:.4f}; wrote {output_dir}/results.json, results.md, "
          f"<benchmark>.samples.jsonl")
    return results


if __name__ == "__main__":
    main()
