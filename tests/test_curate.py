"""data/curate.py: the pass-rate filter by hand, counting and grading dispatch with a stand-in engine, the
input rows written back as they were, and the command line end to end on a real (tiny) model whose pass
rates we arranged: one prompt always solved, one about half the time, one never. Code problems are graded
for real by reward_code.py's sandbox."""

import json
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

import data.problems
from conftest import ROOT
from data.curate import (count_correct, filter_by_pass_rate, keep_pass_rate, load_rows_and_problems, main,
                         pass_rate_histogram, pass_rates)
from data.problems import PROMPT_TEMPLATES, format_prompt, load_problems
from rollout import Sample

#### The filter, by hand


def test_default_thresholds_drop_exactly_the_never_and_always_solved():
    rows = [{"problem": "a"}, {"problem": "b"}, {"problem": "c"}, {"problem": "d"}]
    kept, counts = filter_by_pass_rate(rows, [0, 0.25, 1, 0.5])
    assert kept == [{"problem": "b", "pass_rate": 0.25}, {"problem": "d", "pass_rate": 0.5}]
    assert counts == {"kept": 2, "too_hard": 1, "too_easy": 1}
    assert rows[1] == {"problem": "b"}  # the input rows are not changed


@pytest.mark.parametrize("min_pass_rate, max_pass_rate, kept_problems, counts", [
    (-1, 1, ["a", "b", "d"], {"kept": 3, "too_hard": 0, "too_easy": 1}),  # keep the never-solved too
    (0, 2, ["b", "c", "d"], {"kept": 3, "too_hard": 1, "too_easy": 0}),  # keep the always-solved too
    (-1, 2, ["a", "b", "c", "d"], {"kept": 4, "too_hard": 0, "too_easy": 0}),  # keep everything
    (0.25, 1, ["d"], {"kept": 1, "too_hard": 2, "too_easy": 1}),  # bounds are exclusive: 0.25 itself goes
    (0, 0.5, ["b"], {"kept": 1, "too_hard": 1, "too_easy": 2}),  # ... and so does 0.5
])
def test_threshold_flags_move_the_exclusive_bounds(min_pass_rate, max_pass_rate, kept_problems, counts):
    rows = [{"problem": "a"}, {"problem": "b"}, {"problem": "c"}, {"problem": "d"}]
    kept, got_counts = filter_by_pass_rate(rows, [0, 0.25, 1, 0.5], min_pass_rate=min_pass_rate,
                                           max_pass_rate=max_pass_rate)
    assert [row["problem"] for row in kept] == kept_problems
    assert got_counts == counts
    assert all(keep_pass_rate(row["pass_rate"], min_pass_rate=min_pass_rate, max_pass_rate=max_pass_rate)
               for row in kept)


def test_filter_rejects_bounds_with_nothing_between_them_and_mismatched_lengths():
    with pytest.raises(ValueError, match="below"):
        filter_by_pass_rate([{}], [0.5], min_pass_rate=0.5, max_pass_rate=0.5)
    with pytest.raises(ValueError, match="1 rows but 2"):
        filter_by_pass_rate([{}], [0.5, 0.5])


def test_histogram_counts_prompts_per_number_correct():
    lines = pass_rate_histogram([0, 0, 2, 4, 2, 2], samples_per_prompt=4, width=6)
    assert [int(line.split()[2]) for line in lines] == [2, 0, 3, 0, 1]
    assert lines[2].endswith("######") and lines[1].rstrip().endswith("0")


#### Counting and grading, with a stand-in engine (the real engine is tested at the end)


class ScriptedEngine:
    """Answers prompt i's j-th sample with script[problem text][j]; records every generate call."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, samples_per_prompt, temperature, top_p, max_new_tokens, stop):
        self.calls.append({"prompts": prompts, "samples_per_prompt": samples_per_prompt, "stop": stop})
        samples = []
        for index, prompt in enumerate(prompts):
            problem = next(text for text in self.script
                           if any(prompt == format_prompt(text, template) for template in PROMPT_TEMPLATES))
            for text in self.script[problem][:samples_per_prompt]:
                samples.append(Sample(prompt_index=index, prompt_token_ids=[], response_token_ids=[],
                                      response_logprobs=[], response_text=text, finish_reason="stop"))
        return samples


def test_count_correct_counts_per_prompt_across_batches_and_skips_prompts_too_long():
    boxed = lambda answer: f"so \\boxed{{{answer}}}"
    problems = [{"problem": "p0", "answer": "1"}, {"problem": "p1", "answer": "2"},
                {"problem": "p2", "answer": "3"}, {"problem": "p3", "answer": "4", "prompt_too_long": True},
                {"problem": "p4", "answer": "5"}]
    engine = ScriptedEngine({"p0": [boxed(1)] * 4, "p1": [boxed(2), "no box", boxed(9), boxed(2)],
                             "p2": [boxed(7)] * 4, "p3": [boxed(4)] * 4, "p4": [boxed(5), "x", "y", "z"]})
    counts = count_correct(engine, problems, "simple", samples_per_prompt=4, batch_size=2, progress=False)
    assert counts == [4, 2, 0, 0, 1]  # p3 is never generated for: its prompt does not fit
    assert [len(call["prompts"]) for call in engine.calls] == [2, 1, 1]  # p0 p1 | p2 (p3 too long) | p4
    assert all(call["stop"] == data.problems.TEMPLATE_STOP_STRINGS["simple"] for call in engine.calls)
    rates = pass_rates(ScriptedEngine(engine.script), problems, "simple", samples_per_prompt=4)
    assert rates == [1.0, 0.5, 0.0, 0.0, 0.25]


def test_code_problems_use_the_code_template_and_the_code_grader(tmp_path):
    # A file with a math row and a code row ("problem" + "tests"): load_problems marks the task; the code
    # prompt is asked with the code template of the same style and graded by running its tests.
    from data.problems import task_template

    source = tmp_path / "mixed.jsonl"
    source.write_text(json.dumps({"problem": "add", "answer": "2"}) + "\n" + json.dumps(
        {"problem": "Write add(a, b).", "tests": {"kind": "assert", "setup": "", "asserts": ["assert add(1, 2) == 3"]}})
                      + "\n")
    problems = load_problems(source)
    assert [p["task"] for p in problems] == ["math", "code"]
    solution, wrong = "```python\ndef add(a, b):\n    return a + b\n```", "```python\ndef add(a, b):\n    return a\n```"
    engine = ScriptedEngine({"add": ["\\boxed{2}", "\\boxed{3}", "\\boxed{2}"],
                             "Write add(a, b).": [solution, wrong, solution]})
    assert count_correct(engine, problems, "simple", samples_per_prompt=3, progress=False) == [2, 2]
    code_template = task_template("simple", "code")
    assert code_template != "simple"
    assert [call["prompts"] for call in engine.calls] == [[format_prompt("add", "simple")],
                                                          [format_prompt("Write add(a, b).", code_template)]]
    assert engine.calls[1]["stop"] == data.problems.TEMPLATE_STOP_STRINGS[code_template]
    # A problem without a "task" key is math; an unknown task is an error.
    assert count_correct(engine, [{"problem": "add", "answer": "2"}], "simple", samples_per_prompt=3,
                         progress=False) == [2]
    with pytest.raises(ValueError, match="unknown task"):
        count_correct(engine, [{"problem": "add", "answer": "2", "task": "poetry"}], "simple", samples_per_prompt=1)


#### Reading: every problem paired with its input row, as it was


def test_rows_come_back_as_they_were_with_skipped_rows_and_parquet(tmp_path):
    rows = [
        {"question": "Sam has 3+4 apples", "answer": "3+4 = 7\n#### 7", "level": "Level 2"},  # GSM8K style
        {"problem": "no gold", "answer": ""},  # skipped by load_problems: an empty gold answer
        {"problem": "What is 1+1?", "answer": "2", "extra": {"nested": [1, 2]}},
        {"problem": "What is 1+1?", "answer": "2", "extra": {"nested": [3]}},  # same problem, other row
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    got_rows, problems, indices = load_rows_and_problems(source)
    assert got_rows == [rows[0], rows[2], rows[3]] and indices == [0, 2, 3]
    assert [p["answer"] for p in problems] == ["7", "2", "2"]  # graded on what load_problems takes as gold
    assert load_rows_and_problems(source, limit=2)[2] == [0, 2]

    import pyarrow
    import pyarrow.parquet

    parquet = tmp_path / "in.parquet"
    simplerl = [{"question": f"q{i}", "reward_model": {"ground_truth": str(i)}} for i in range(3)]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(simplerl), parquet)
    got_rows, problems, indices = load_rows_and_problems(parquet)
    assert got_rows == simplerl and [p["answer"] for p in problems] == ["0", "1", "2"] and indices == [0, 1, 2]


#### The command line on a real model


@contextmanager
def one_thread():
    """Tiny models run fastest on one thread (two threads on two busy cores is several times slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# What the arranged model answers: 11+11 always right, 12+12 right about half the time (it says 24 or
# 25 equally often), 13+13 always wrong (it says 99).
TAUGHT = [("What is 11+11?", "22"), ("What is 12+12?", "24"), ("What is 12+12?", "25"), ("What is 13+13?", "99")]


@pytest.fixture(scope="module")
def arranged_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random model, fine-tuned for a few seconds (sft.py) on the answers in TAUGHT."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft import train_supervised

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    pairs = [{"prompt_ids": tokenizer(format_prompt(question, "simple"), add_special_tokens=False)["input_ids"],
              "response_ids": tokenizer(f"The answer is \\boxed{{{answer}}}.", add_special_tokens=False)["input_ids"]
              + [tokenizer.eos_token_id]} for question, answer in TAUGHT]
    with one_thread():
        train_supervised(model, tokenizer, pairs, steps=80, batch_size=4, lr=3e-3, seed=0, progress=False)
    directory = tmp_path_factory.mktemp("arranged") / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_curate_end_to_end_on_a_real_model(arranged_model_dir, tmp_path, capsys):
    from data.toy import make_problems

    _, toy_problems = make_problems(seed=1, n_train=0, n_test=3)
    rows = ([{"problem": "What is 11+11?", "answer": "22", "source": "arranged"},
             {"problem": "What is 12+12?", "answer": "24", "source": "arranged"},
             {"problem": "What is 13+13?", "answer": "26", "source": "arranged"}]
            + [dict(row, source="toy") for row in toy_problems])
    source, output = tmp_path / "in.jsonl", tmp_path / "curated.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    arguments = ["--model", str(arranged_model_dir), "--data", str(source), "--output", str(output),
                 "--rollout-engine", "hf", "--samples-per-prompt", "16", "--max-new-tokens", "16", "--batch-size", "4"]
    with one_thread():
        summary = main(arguments)
    printed = capsys.readouterr()

    records = [json.loads(line) for line in output.with_suffix(".pass_rates.jsonl").read_text().splitlines()]
    assert len(records) == len(rows)  # one line per prompt, kept or not
    assert [r["index"] for r in records] == list(range(len(rows)))
    assert [r["problem"] for r in records] == [row["problem"] for row in rows]
    assert all(r["samples"] == 16 and r["pass_rate"] == r["correct"] / 16 and r["task"] == "math" for r in records)
    rate = {r["problem"]: r["pass_rate"] for r in records}
    print(f"pass rates: {rate}")
    assert rate["What is 11+11?"] >= 0.75  # arranged: always right (a rare slip of sampling allowed)
    assert 0 < rate["What is 12+12?"] < 1  # about half (all 16 alike: odds 2 in 65536 for a fair coin)
    assert rate["What is 13+13?"] == 0  # it answers 99

    kept = [json.loads(line) for line in output.read_text().splitlines()]
    assert all(0 < row["pass_rate"] < 1 for row in kept)  # the default thresholds
    assert [r["kept"] for r in records] == [0 < r["pass_rate"] < 1 for r in records]
    assert [{k: v for k, v in row.items() if k != "pass_rate"} for row in kept] == \
        [row for row, r in zip(rows, records) if r["kept"]]  # the input rows as they were
    assert any(row["problem"] == "What is 12+12?" for row in kept)
    assert summary["kept"] == len(kept) and summary["prompts"] == len(rows)
    assert summary["never_solved"] == sum(r["pass_rate"] == 0 for r in records) >= 1
    assert f"kept {len(kept)} of {len(rows)} prompts" in printed.out
    assert "batch 2/2: 6/6 prompts" in printed.err  # progress, a line per batch

    # The output loads as training data, as the input did.
    reloaded = load_problems(output)
    assert [(p["problem"], p["answer"]) for p in reloaded] == [(row["problem"], row["answer"]) for row in kept]

    # Keeping the never-solved too: every prompt but the always-solved ones.
    everything_but_easy = tmp_path / "keep_hard.jsonl"
    with one_thread():
        summary = main(arguments[:5] + [str(everything_but_easy)] + arguments[6:] + ["--min-pass-rate", "-1"])
    assert summary["kept"] == sum(r["pass_rate"] < 1 for r in records)  # same seed, same samples
    assert summary["too_hard"] == 0


def test_the_script_runs_and_documents_the_thresholds(tmp_path):
    result = subprocess.run([sys.executable, "data/curate.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--min-pass-rate < pass rate < --max-pass-rate" in result.stdout
    result = subprocess.run([sys.executable, "data/curate.py", "--model", "m", "--data", "d", "--output",
                             str(tmp_path / "o.jsonl"), "--min-pass-rate", "0.5", "--max-pass-rate", "0.5"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "below --max-pass-rate" in result.stderr
