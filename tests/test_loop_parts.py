"""train.py's bookkeeping, by hand: the prompt order, solved prompts leaving it, and the stages."""

import json

import pytest

from train import Config, new_data_state, next_prompt_batch, parse_stages, stage_at


def test_batches_cover_each_epoch_once_and_never_straddle_two():
    state = new_data_state()
    epoch_one = [next_prompt_batch(state, 7, 3, seed=0) for _ in range(2)]
    assert state["epoch"] == 0 and len(set(sum(epoch_one, []))) == 6  # one problem sits this epoch out
    third = next_prompt_batch(state, 7, 3, seed=0)
    assert state["epoch"] == 1 and state["position"] == 3 and len(set(third)) == 3
    again = new_data_state()
    assert [next_prompt_batch(again, 7, 3, seed=0) for _ in range(3)] == epoch_one + [third]  # deterministic


def test_solved_prompts_leave_the_next_epoch_and_come_back_when_too_few_remain(capsys):
    state = new_data_state()
    next_prompt_batch(state, 6, 2, seed=0)
    state["solved"].update({0, 1, 2})
    for _ in range(2):  # the rest of epoch 0 still holds them
        next_prompt_batch(state, 6, 2, seed=0)
    epoch_one = next_prompt_batch(state, 6, 2, seed=0)
    assert state["epoch"] == 1 and sorted(state["order"]) == [3, 4, 5] and not set(epoch_one) & {0, 1, 2}
    state["solved"].update({3, 4})  # one unsolved problem left, two needed
    next_prompt_batch(state, 6, 2, seed=0)
    assert state["epoch"] == 2 and sorted(state["order"]) == list(range(6)) and not state["solved"]
    assert "every problem is back in" in capsys.readouterr().out


def test_stages_inline_and_from_a_file(tmp_path):
    config = Config(train_data="math.jsonl", max_steps=5, max_new_tokens=100, temperature=1.0,
                    stages="train_data=a.jsonl,max_steps=2;train_data=b.jsonl,max_new_tokens=300,temperature=0.6")
    stages = parse_stages(config)
    assert [(s["train_data"], s["max_steps"], s["max_new_tokens"], s["temperature"]) for s in stages] == [
        ("a.jsonl", 2, 100, 1.0), ("b.jsonl", 5, 300, 0.6)]
    assert [stage_at(stages, step)[0] for step in range(1, 8)] == [0, 0, 1, 1, 1, 1, 1]
    path = tmp_path / "stages.json"
    path.write_text(json.dumps([{"train_data": "c.jsonl", "max_steps": 3, "task": "code"}]))
    config.stages = str(path)
    assert parse_stages(config) == [{**parse_stages(Config(train_data="c.jsonl", max_steps=3, max_new_tokens=100,
                                                            temperature=1.0, task="code"))[0]}]
    config.stages = "train_data=a.jsonl,lr=1"
    with pytest.raises(SystemExit, match="stage 1 sets lr"):
        parse_stages(config)


def test_without_stages_the_flags_are_the_one_stage():
    config = Config(train_data="x.jsonl", max_steps=7, max_new_tokens=64)
    (stage,) = parse_stages(config)
    assert stage["train_data"] == "x.jsonl" and stage["max_steps"] == 7 and stage["max_new_tokens"] == 64
