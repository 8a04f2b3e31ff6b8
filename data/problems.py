"""Problems in, prompts and graders' inputs out: the file formats we read and the prompt templates.

Every problem is a dict {"problem": text for the model, "answer", "level", "task"}: task "math" (graded
by reward.py against the gold "answer") or "code" (answer None; graded by reward_code.py running the
"tests" spec). The task of each row is detected from its fields (or forced with task=...).

Math formats (one row = one problem):
  - MATH style:          {"problem": ..., "answer": ...}  (or the last \\boxed{} of "solution")
  - GSM8K style:         {"question": ..., "answer": "... #### 72"}  (the text after ####)
  - SimpleRL parquet:    {"question" or "extra_info.question" or "prompt": [...], "reward_model": {"ground_truth": ...}}
  - OlympiadBench:       {"question": ..., "final_answer": ["$...$"]}
Code formats (the test spec kinds are documented in reward_code.py):
  - our own:             {"problem": ..., "tests": {"kind": "assert" | "function_check" | "stdio", ...}}
  - HumanEval:           {"prompt", "test", "entry_point"}: a function to complete; tests: function_check
                         (with canonical_solution as the spec's "reference")
  - MBPP:                {"text", "test_list", "code"}: the text and the first assert (which names the
                         function); tests: assert (test_setup_code, then each of test_list; code is the
                         spec's "reference")
  - APPS (MapCoder):     {"description", "test_list", "starter_code"}: rows with an empty starter_code
                         are stdin/stdout problems; call-based rows (a starter function) are skipped and
                         counted, as are repeated ids (the MapCoder sample repeats 21 problems)
  - xCodeEval (MapCoder): {"description", "sample_inputs", "sample_outputs", ...}: stdin/stdout on the
                         public examples (the hidden tests are not in the file)
Files: .jsonl, .json (a list or JSON lines), .parquet, or a Hugging Face dataset 'owner/name[/data_dir][:split]'.
"""

import json
import re
from pathlib import Path

from reward import extract_boxed

#### Prompt templates

PROMPT_TEMPLATES = {
    # SimpleRL-Zoo's "complex" prompt in the Qwen chat format (paper appendix B.3, Figure 10), for the models
    # with stronger instruction following (Qwen2.5-7B/14B/32B, Qwen2.5-Math-7B, DeepSeek-Math-7B,
    # Mistral-Small-24B). (Deviation: SimpleRL-Zoo's data files literally contain "\boxed{{}}" from a
    # format-string slip; we write the intended "\boxed{}".)
    "qwen-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{problem}\n"
        "Please reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # For base models without chat tokens: the simple prompt with the format instruction added (zerorl's own;
    # the CPU toy is built on it).
    "simple": (
        "Question:\n{problem}\n"
        "Please reason step by step, and put your final answer within \\boxed{{}}.\n"
        "Answer:\nLet's think step by step.\n"
    ),
    # SimpleRL-Zoo's simple prompt, word for word (paper appendix B.3 and Figure 10; the "abel" prompt type of
    # its evaluation harness, examples/simplelr_math_eval/utils.py): no format instruction at all. The paper
    # uses it for the models with weak instruction following: Llama-3.1-8B, Mistral-7B-v0.1, Qwen2.5-0.5B/1.5B.
    "abel": "Question:\n{problem}\nAnswer:\nLet's think step by step.\n",
    # The SimpleRL blog's prompt (Qwen2.5-Math's chat format, the instruction in the system turn): the
    # "qwen25-math-cot" prompt type the blog's evaluation used (simpleRL-reason branch v0, eval/sh/run.sh).
    "qwen-math-cot": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>user\n{problem}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # The code templates ask for one fenced block (reward_code.extract_code takes the last one). Whether
    # the program reads stdin or defines a function is said in the problem text, which the loader writes.
    "qwen-code": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{problem}\n"
        "Write your solution in Python, in a single ```python code block.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "simple-code": (
        "Question:\n{problem}\n"
        "Write your solution in Python, in a single ```python code block.\n"
        "Answer:\nLet's think step by step.\n"
    ),
}

# Where generation should stop besides the tokenizer's end-of-text token.
TEMPLATE_STOP_STRINGS = {
    "qwen-boxed": ["<|im_end|>", "<|endoftext|>"],
    "simple": ["\nQuestion:"],
    # None: verl's rollouts, which SimpleRL-Zoo trained with, stop only at the end-of-text token, so a model
    # that goes on to write a next "Question:" is graded on all it wrote (its last boxed answer).
    "abel": [],
    "qwen-math-cot": ["<|im_end|>", "<|endoftext|>"],
    "qwen-code": ["<|im_end|>", "<|endoftext|>"],
    "simple-code": ["\nQuestion:"],
}

# The same prompt style for the other task: (math template, code template) pairs.
_TEMPLATE_PAIRS = (("qwen-boxed", "qwen-code"), ("simple", "simple-code"), ("qwen-math-cot", "qwen-code"),
                   ("abel", "simple-code"))


def default_template(tokenizer):
    """qwen-boxed when the tokenizer knows Qwen's chat tokens, else simple."""
    vocabulary = tokenizer.get_vocab()
    return "qwen-boxed" if "<|im_start|>" in vocabulary and "<|im_end|>" in vocabulary else "simple"


def task_template(template, task):
    """The template of the same style for `task`: ("qwen-boxed", "code") -> "qwen-code",
    ("simple-code", "math") -> "simple"; a template already for that task is returned unchanged."""
    if task not in ("math", "code"):
        raise ValueError(f"unknown task {task!r}; choose from math, code")
    for math_template, code_template in _TEMPLATE_PAIRS:
        if template in (math_template, code_template):
            return code_template if task == "code" else math_template
    return template


def format_prompt(problem, template):
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {sorted(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[template].format(problem=problem)


def task_of(problem):
    """"math" or "code"; a problem dict without a "task" key (built by hand, or before code support) is math."""
    return problem.get("task") or "math"


def problem_prompt(problem, template):
    """The prompt for a problem dict: its text in the template of its task (see task_template)."""
    return format_prompt(problem["problem"], task_template(template, task_of(problem)))


#### Reading rows

def _read_rows(source):
    """Yield (where, row) pairs; `where` names the file and line for error messages."""
    path = Path(source)
    if not path.exists():
        if path.suffix in (".jsonl", ".json", ".parquet") or source.startswith((".", "/")) or "/" not in source:
            raise FileNotFoundError(f"data file not found: {source}")
        yield from _read_hub_dataset(source)
        return
    if path.suffix == ".parquet":
        import pyarrow.parquet

        for index, row in enumerate(pyarrow.parquet.read_table(path).to_pylist()):
            yield f"{path}: row {index}", row
        return
    with open(path) as file:
        text = file.read()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        for index, row in enumerate(json.loads(text)):
            yield f"{path}: item {index}", row
        return
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
        yield f"{path}:{line_number}", row


def _read_hub_dataset(source):
    """A Hugging Face dataset named 'owner/name[/data_dir][:split]' (split defaults to train)."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{source!r} is not a local file; loading a Hugging Face dataset "
                          "needs `pip install datasets`") from None
    name, _, split = source.partition(":")
    owner, dataset, *data_dir = name.split("/")
    rows = datasets.load_dataset(f"{owner}/{dataset}", data_dir="/".join(data_dir) or None, split=split or "train")
    for index, row in enumerate(rows):
        yield f"{source} row {index}", row


def _problem_of(row):
    for field in ("problem", "question", "input"):
        if isinstance(row.get(field), str) and row[field].strip():
            return row[field]
    extra = row.get("extra_info")
    if isinstance(extra, dict) and isinstance(extra.get("question"), str):
        return extra["question"]
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return prompt[-1].get("content")
    return None


def _answer_of(row):
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict) and reward_model.get("ground_truth") is not None:
        answer = str(reward_model["ground_truth"])
    elif row.get("final_answer") is not None:  # OlympiadBench: a list of "$...$" strings
        final = row["final_answer"]
        answer = (final[0] if isinstance(final, list) and final else str(final)).strip("$")
    elif row.get("answer") is not None:
        answer = str(row["answer"])
    elif isinstance(row.get("solution"), str):
        answer = extract_boxed(row["solution"])
    else:
        return None
    if answer is not None and "####" in answer:  # GSM8K: the worked solution ends in "#### N"
        answer = answer.split("####")[-1].strip().replace(",", "")
    return answer


def _level_of(row):
    """The integer difficulty level (MATH's "Level 3" or 3), or None."""
    level = row.get("level")
    if isinstance(level, str):
        level = level.replace("Level", "").strip()
        return int(level) if level.isdigit() else None
    return level if isinstance(level, int) else None


#### Code rows: the problem text for the model and the test spec for reward_code.py

STDIO_INSTRUCTION = "Your program must read the input from standard input and print the answer to standard output."
FUNCTION_INSTRUCTION = "Define the function: the tests call it, so do not read from standard input."
_TEST_KINDS = ("assert", "function_check", "stdio")


def _looks_like_code(row):
    """The name of the code format a row is in, or None (then it is a math row)."""
    fields = set(row)
    if "problem" in fields and isinstance(row.get("tests"), dict):
        return "ours"
    if {"prompt", "test", "entry_point"} <= fields and isinstance(row["prompt"], str):
        return "humaneval"
    if {"text", "test_list", "code"} <= fields:
        return "mbpp"
    if {"description", "test_list", "starter_code"} <= fields:
        return "apps"
    if {"description", "sample_inputs", "sample_outputs"} <= fields:
        return "xcodeeval"
    return None


def _xcodeeval_statement(row):
    """A Codeforces statement from xCodeEval's fields, laid out as APPS lays out its own."""
    parts = [row["description"].strip()]
    for title, field in (("Input", "input_spec"), ("Output", "output_spec")):
        if row.get(field):
            parts.append(f"-----{title}-----\n{row[field].strip()}")
    examples = "\n\n".join(f"Input\n{given.strip()}\n\nOutput\n{expected.strip()}"
                           for given, expected in zip(row["sample_inputs"], row["sample_outputs"]))
    parts.append(f"-----Examples-----\n{examples}")
    if row.get("notes"):
        parts.append("-----Note-----\n" + re.sub(r"^Note", "", row["notes"].strip()).strip())
    return "\n\n".join(parts)


def _code_problem_of(row, kind, where):
    """(problem text, tests spec, level) of a code row, or (None, reason, None) for a row we skip."""
    if kind == "ours":
        tests = row["tests"]
        if tests.get("kind") not in _TEST_KINDS:
            raise ValueError(f"{where}: tests.kind must be one of {', '.join(_TEST_KINDS)}, got {tests.get('kind')!r}")
        problem = row["problem"]
        if tests["kind"] == "stdio" and "standard input" not in problem:
            problem = f"{problem.rstrip()}\n\n{STDIO_INSTRUCTION}"
        return problem, tests, _level_of(row)
    if kind == "humaneval":
        problem = f"Complete the following Python function.\n\n```python\n{row['prompt'].rstrip()}\n```"
        # The reference never enters a program's sandbox: reward_code.py runs it once, to find the tests
        # that can be decided outside the program's interpreter.
        tests = {"kind": "function_check", "prefix": row["prompt"], "check": row["test"],
                 "entry_point": row["entry_point"], "reference": row.get("canonical_solution") or ""}
        return problem, tests, None
    if kind == "mbpp":
        # The usual MBPP prompt: the task and its first test, which tells the model the function's name.
        problem = f"{row['text'].strip()}\nYour code should pass this test:\n{row['test_list'][0]}\n{FUNCTION_INSTRUCTION}"
        tests = {"kind": "assert", "setup": row.get("test_setup_code") or "", "asserts": list(row["test_list"]),
                 "reference": row.get("code") or ""}
        return problem, tests, None
    if kind == "apps":
        if row["starter_code"].strip():
            return None, "call-based (a starter function; reward_code has no call kind)", None
        cases = [{"input": case["input"], "output": case["output"][0] if isinstance(case["output"], list)
                  else case["output"]} for case in row["test_list"]]
        return f"{row['description'].strip()}\n\n{STDIO_INSTRUCTION}", {"kind": "stdio", "cases": cases}, \
            row.get("difficulty")
    # xCodeEval. Its time_limit is for C++ on Codeforces' machines: Python gets reward_code's default.
    cases = [{"input": given, "output": expected} for given, expected in zip(row["sample_inputs"], row["sample_outputs"])]
    return f"{_xcodeeval_statement(row)}\n\n{STDIO_INSTRUCTION}", {"kind": "stdio", "cases": cases}, \
        row.get("difficulty")


def _in_band(level, min_level, max_level):
    """Integer levels are kept to the band; other levels (APPS's "interview", None) are always kept."""
    if not isinstance(level, int) or isinstance(level, bool):
        return True
    return not ((min_level is not None and level < min_level) or (max_level is not None and level > max_level))


def _report_skips(source, what, wheres):
    if wheres:
        print(f"{source}: skipped {len(wheres)} rows {what} "
              f"({', '.join(wheres[:3])}{', ...' if len(wheres) > 3 else ''})")


def load_problems(source, min_level=None, max_level=None, limit=None, require_answer=True, keep_fields=(),
                  task=None):
    """A list of {"problem", "answer", "level", "task"} dicts from `source` (code problems also carry
    "tests"), optionally kept to a difficulty band (integer levels only).

    task: None detects each row's task from its fields (see the module docstring); "math" or "code"
    requires every row to be of that task and stops at the first that is not.
    A math row without a problem or an answer field is malformed: it stops with an error that names the
    file and line. A row whose answer field is present but empty (SimpleRL-Zoo's level 3-5 set has two)
    cannot be graded: it is skipped, and the skips are reported. With require_answer=False (supervised
    data) a row without an answer is kept with answer None. keep_fields are copied from the row as they are.
    Code rows that cannot be graded (APPS call-based rows) and repeated APPS ids are skipped and reported.
    """
    if task not in (None, "math", "code"):
        raise ValueError(f"unknown task {task!r}; choose from math, code (or None to detect)")
    problems, empty_answers, unsupported, repeated = [], [], [], []
    seen_ids = set()
    for where, row in _read_rows(str(source)):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        code_format = _looks_like_code(row)
        if task == "code" and code_format is None:
            raise ValueError(f"{where}: not a code problem (expected problem + tests, or the fields of HumanEval, "
                             "MBPP, APPS or xCodeEval)")
        if task == "math" and code_format is not None:
            raise ValueError(f"{where}: this is a code problem ({code_format} fields), not math; use task='code'")
        if code_format is not None:
            if code_format == "apps":
                if row.get("id") in seen_ids:
                    repeated.append(where)
                    continue
                seen_ids.add(row.get("id"))
            problem, tests, level = _code_problem_of(row, code_format, where)
            if problem is None:
                unsupported.append(where)
                continue
            if not _in_band(level, min_level, max_level):
                continue
            problems.append({"problem": problem, "answer": None, "level": level, "task": "code", "tests": tests,
                             **{name: row[name] for name in keep_fields if name in row}})
            if limit is not None and len(problems) >= limit:
                break
            continue
        problem, answer = _problem_of(row), _answer_of(row)
        if not problem:
            raise ValueError(f"{where}: no problem text (looked for problem, question, input, prompt)")
        if answer is None and require_answer:
            raise ValueError(f"{where}: no gold answer (looked for answer, reward_model.ground_truth, "
                             "final_answer, the last \\boxed{} of solution)")
        if answer is not None and not str(answer).strip():
            if require_answer:
                empty_answers.append(where)
                continue
            answer = None
        level = _level_of(row)
        if not _in_band(level, min_level, max_level):
            continue
        problems.append({"problem": problem, "answer": None if answer is None else str(answer).strip(), "level": level,
                         "task": "math", **{name: row[name] for name in keep_fields if name in row}})
        if limit is not None and len(problems) >= limit:
            break
    _report_skips(source, "with an empty gold answer", empty_answers)
    _report_skips(source, "of code problems we cannot grade: APPS call-based", unsupported)
    _report_skips(source, "repeating an APPS problem id", repeated)
    if not problems:
        raise ValueError(f"{source}: no problems left (empty file, or none in the level band "
                         f"{min_level}..{max_level})")
    return problems
