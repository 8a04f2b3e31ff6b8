"""data/problems.py: the loaders over the real files in ../shared/data, and errors that name the row."""

import json

import pytest

from conftest import shared_data
from data.problems import default_template, format_prompt, load_problems


@pytest.mark.parametrize("relative_path, count, first_answer", [
    ("eval/math500/test.jsonl", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("eval/gsm8k/test.jsonl", 1319, "18"),  # the text after "####"
    ("eval/olympiadbench/test.jsonl", 675, None),  # final_answer[0] without its $...$
    ("eval/aime24/test.jsonl", 30, None),
    ("train/simplelr_qwen_level3to5_pr57/train.parquet", 8521, "118"),  # 8523 rows, two with an empty answer
    ("train/gsm8k_train_verl_pr57/train.parquet", 7473, "72"),  # a ground truth ending in "#### 72"
])
def test_loaders_over_the_shared_files(relative_path, count, first_answer):
    problems = load_problems(shared_data(*relative_path.split("/")))
    assert len(problems) == count
    assert all(p["problem"].strip() and p["answer"].strip() for p in problems)
    if first_answer is not None:
        assert problems[0]["answer"] == first_answer
    # As the SimpleRL harness takes it: final_answer[0].strip("$") (inner "$,$" of multi-answers stays).
    assert not any(p["answer"].startswith("$") or p["answer"].endswith("$") for p in problems)


def test_difficulty_band_uses_the_level_field():
    path = shared_data("train", "simplelr_qwen_level3to5_pr57", "train.parquet")
    # SOURCES.md: levels 3: 2514, 4: 2648, 5: 3361 (less the two level-5 rows with an empty answer)
    assert len(load_problems(path, min_level=5)) == 3359
    assert len(load_problems(path, min_level=4, max_level=4)) == 2648
    math500 = load_problems(shared_data("eval", "math500", "test.jsonl"), max_level=2)
    assert math500 and all(p["level"] <= 2 for p in math500)


def test_a_row_without_an_answer_names_its_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"problem": "2+2?"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no gold answer"):
        load_problems(path)


def test_an_empty_answer_is_skipped_and_reported(tmp_path, capsys):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"problem": "?", "answer": " "}))
    assert [p["answer"] for p in load_problems(path)] == ["2"]
    assert "skipped 1 rows with an empty gold answer (" in capsys.readouterr().out


def test_invalid_json_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON"):
        load_problems(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_problems(tmp_path / "nope.jsonl")


def test_templates(tiny_model_dir):
    from transformers import AutoTokenizer

    assert default_template(AutoTokenizer.from_pretrained(tiny_model_dir)) == "simple"  # no chat tokens
    prompt = format_prompt("What is 1+1?", "qwen-boxed")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "What is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}." in prompt
    with pytest.raises(ValueError, match="unknown template"):
        format_prompt("x", "nope")


def test_a_hub_dataset_id_is_not_mistaken_for_a_missing_file(tmp_path):
    try:
        import datasets  # noqa: F401
    except ImportError:
        # Without `datasets` the loader must say what to install, not "file not found".
        with pytest.raises(ImportError, match="pip install datasets"):
            load_problems("hkust-nlp/SimpleRL-Zoo-Data/simplelr_qwen_level3to5:train")
    else:
        pytest.skip("datasets is installed; loading from the hub needs network access")
    with pytest.raises(FileNotFoundError):
        load_problems("missing/file.jsonl")


#### Code problems

@pytest.mark.parametrize("relative_path, count, kind", [
    ("code/humaneval/test.jsonl", 164, "function_check"),
    ("code/mbpp/mbpp_revised.jsonl", 974, "assert"),
    ("code/mapcoder/APPS/selected150.jsonl", 49, "stdio"),  # 52 stdio rows, 49 distinct ids; call-based skipped
    ("code/mapcoder/xCodeEval/prog_syn_val.jsonl", 106, "stdio"),
])
def test_code_loaders_over_the_shared_files(relative_path, count, kind):
    problems = load_problems(shared_data(*relative_path.split("/")))
    assert len(problems) == count
    assert all(p["task"] == "code" and p["answer"] is None and p["tests"]["kind"] == kind for p in problems)
    assert json.loads(json.dumps([p["tests"] for p in problems])) == [p["tests"] for p in problems]
    if kind == "stdio":  # the loader, not the template, says how the program gets its input
        assert all("standard input" in p["problem"] for p in problems)


def test_mbpp_problem_text_shows_the_first_assert():
    first = load_problems(shared_data("code", "mbpp", "mbpp_revised.jsonl"), limit=1)[0]
    assert "assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8" in first["problem"]
    assert first["tests"]["asserts"][0] in first["problem"] and len(first["tests"]["asserts"]) == 3


def test_task_detection_and_forcing(tmp_path):
    math_rows = load_problems(shared_data("eval", "math500", "test.jsonl"), limit=2)
    assert [p["task"] for p in math_rows] == ["math", "math"]
    ours = tmp_path / "ours.jsonl"
    ours.write_text(json.dumps({"problem": "Print the sum of two numbers.",
                                "tests": {"kind": "stdio", "cases": [{"input": "1 2", "output": "3"}]}}) + "\n"
                    + json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    mixed = load_problems(ours)
    assert [p["task"] for p in mixed] == ["code", "math"]
    assert "standard input" in mixed[0]["problem"]  # a stdio problem says so
    with pytest.raises(ValueError, match=r"ours.jsonl:2: not a code problem"):
        load_problems(ours, task="code")
    with pytest.raises(ValueError, match=r"ours.jsonl:1: this is a code problem"):
        load_problems(ours, task="math")
    with pytest.raises(ValueError, match="unknown task"):
        load_problems(ours, task="poetry")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "x", "tests": {"kind": "magic"}}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: tests.kind must be one of"):
        load_problems(bad)


def test_code_templates():
    from data.problems import PROMPT_TEMPLATES, TEMPLATE_STOP_STRINGS, task_template

    assert task_template("qwen-boxed", "code") == "qwen-code" and task_template("simple", "code") == "simple-code"
    assert task_template("qwen-boxed", "math") == "qwen-boxed" and task_template("qwen-code", "math") == "qwen-boxed"
    assert task_template("simple-code", "code") == "simple-code"
    assert set(TEMPLATE_STOP_STRINGS) == set(PROMPT_TEMPLATES)
    prompt = format_prompt("Reverse a string.", "qwen-code")
    assert "Reverse a string.\nWrite your solution in Python, in a single ```python code block." in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
