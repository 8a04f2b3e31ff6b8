"""Math problems in, (prompt text, gold answer) out: the file formats we read and the prompt templates.

Formats detected (one row = one problem):
  - MATH style:          {"problem": ..., "answer": ...}  (or the last \\boxed{} of "solution")
  - GSM8K style:         {"question": ..., "answer": "... #### 72"}  (the text after ####)
  - SimpleRL parquet:    {"question" or "extra_info.question" or "prompt": [...], "reward_model": {"ground_truth": ...}}
  - OlympiadBench:       {"question": ..., "final_answer": ["$...$"]}
Files: .jsonl, .json (a list or JSON lines), .parquet, or a Hugging Face dataset 'owner/name[/data_dir][:split]'.
"""

import json
from pathlib import Path

from reward import extract_boxed

#### Prompt templates

PROMPT_TEMPLATES = {
    # The Qwen chat format SimpleRL-Zoo trains Qwen models with. (Deviation: SimpleRL-Zoo's data files
    # literally contain "\boxed{{}}" from a format-string slip; we write the intended "\boxed{}".)
    "qwen-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{problem}\n"
        "Please reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    # For base models without chat tokens (SimpleRL-Zoo's "abel" style prompt for Llama and Mistral).
    "simple": (
        "Question:\n{problem}\n"
        "Please reason step by step, and put your final answer within \\boxed{{}}.\n"
        "Answer:\nLet's think step by step.\n"
    ),
}

# Where generation should stop besides the tokenizer's end-of-text token.
TEMPLATE_STOP_STRINGS = {
    "qwen-boxed": ["<|im_end|>", "<|endoftext|>"],
    "simple": ["\nQuestion:"],
}


def default_template(tokenizer):
    """qwen-boxed when the tokenizer knows Qwen's chat tokens, else simple."""
    vocabulary = tokenizer.get_vocab()
    return "qwen-boxed" if "<|im_start|>" in vocabulary and "<|im_end|>" in vocabulary else "simple"


def format_prompt(problem, template):
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {sorted(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[template].format(problem=problem)


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


def load_problems(source, min_level=None, max_level=None, limit=None, require_answer=True, keep_fields=()):
    """A list of {"problem", "answer", "level"} dicts from `source`, optionally kept to a difficulty band.

    A row without a problem or an answer field is malformed: it stops with an error that names the
    file and line. A row whose answer field is present but empty (SimpleRL-Zoo's level 3-5 set has two)
    cannot be graded: it is skipped, and the skips are reported. With require_answer=False (supervised
    data) a row without an answer is kept with answer None. keep_fields are copied from the row as they are.
    """
    problems, empty_answers = [], []
    for where, row in _read_rows(str(source)):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
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
        if level is not None and ((min_level is not None and level < min_level)
                                  or (max_level is not None and level > max_level)):
            continue
        problems.append({"problem": problem, "answer": None if answer is None else str(answer).strip(), "level": level,
                         **{name: row[name] for name in keep_fields if name in row}})
        if limit is not None and len(problems) >= limit:
            break
    if empty_answers:
        print(f"{source}: skipped {len(empty_answers)} rows with an empty gold answer "
              f"({', '.join(empty_answers[:3])}{', ...' if len(empty_answers) > 3 else ''})")
    if not problems:
        raise ValueError(f"{source}: no problems left (empty file, or none in the level band "
                         f"{min_level}..{max_level})")
    return problems
