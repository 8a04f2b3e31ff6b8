"""Shared fixtures: a tiny Qwen2 model with its own tokenizer, built here (no download)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(*parts):
    """A path under ../shared/data, or skip the test when the shared data is not beside the repo."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data directory is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialized ~1M-parameter Qwen2 (head_dim 64, as vLLM's CPU kernel needs) and a
    byte-level BPE tokenizer trained on the toy task's text, saved with save_pretrained."""
    from data.toy import build_model, build_tokenizer, make_problems, worked_answer
    from data.problems import format_prompt

    train, _ = make_problems(seed=0, n_train=500, n_test=10)
    tokenizer = build_tokenizer([format_prompt(p["problem"], "simple") + worked_answer(p) for p in train],
                                vocab_size=400)
    model = build_model(tokenizer, seed=0)
    directory = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
