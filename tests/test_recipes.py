"""The README's two recipes, CPU-sized: SimpleRL-Zoo (GRPO, KL loss, entropy bonus, 8 samples, temperature
1.0) and AceReason (strictly on-policy, token-level loss, no KL, math then code, longer responses stage by
stage). The flags are the README's; only the sizes (model, data, steps, lengths) are the toy's."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

SIMPLERL_ZOO = ["--adv-estimator", "grpo", "--kl-coef", "1e-4", "--kl-estimator", "k3", "--entropy-coef", "1e-3",
                "--samples-per-prompt", "8", "--temperature", "1.0", "--loss-agg", "token-mean"]
ACEREASON = ["--adv-estimator", "grpo", "--kl-coef", "0", "--entropy-coef", "0", "--loss-agg", "token-mean",
             "--ppo-epochs", "1", "--samples-per-prompt", "8", "--temperature", "1.0", "--drop-zero-signal-groups",
             "--drop-solved-prompts"]

ADD_PROGRAM = "```python\ndef add(a, b):\n    return a + b\n```"


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory):
    from data.toy import make_problems

    directory = tmp_path_factory.mktemp("recipes")
    math_problems, _ = make_problems(seed=1, n_train=16, n_test=4)
    (directory / "math.jsonl").write_text("".join(json.dumps(row) + "\n" for row in math_problems))
    # A code task in our own test-spec format: the same function asked four ways, its asserts as tests.
    code_rows = [{"problem": f"Write a function add(a, b) that returns the sum of a and b. ({variant})",
                  "tests": {"kind": "assert", "setup": "", "asserts": [f"assert add({a}, {b}) == {a + b}",
                                                                        "assert add(-1, 1) == 0"]}}
                 for variant, (a, b) in enumerate([(1, 2), (3, 4), (10, 20), (7, 7)])]
    (directory / "code.jsonl").write_text("".join(json.dumps(row) + "\n" for row in code_rows))
    # Worked answers for the supervised warm-up (the distilled start AceReason has), so that the tiny
    # model writes programs at all and the code stage has rewards to learn from.
    (directory / "code_sft.jsonl").write_text("".join(json.dumps({**row, "response": ADD_PROGRAM}) + "\n"
                                                      for row in code_rows))
    return directory


def run(arguments):
    result = subprocess.run([sys.executable, "train.py", *arguments], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_simplerl_zoo_recipe(tiny_model_dir, recipe_data, tmp_path):
    run(["--model", str(tiny_model_dir), "--train-data", str(recipe_data / "math.jsonl"), "--eval-data", "",
         "--output-dir", str(tmp_path), "--max-steps", "2", "--prompts-per-step", "4", "--mini-batch-prompts", "2",
         "--max-new-tokens", "8", *SIMPLERL_ZOO])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["kl"] >= 0 and "math/accuracy" in row for row in rows)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["kl_coef"], config["entropy_coef"], config["samples_per_prompt"]) == (1e-4, 1e-3, 8)


def test_acereason_recipe_math_then_code_with_longer_responses(tiny_model_dir, recipe_data, tmp_path):
    stages = (f"train_data={recipe_data / 'math.jsonl'},max_steps=2,max_new_tokens=8;"
              f"train_data={recipe_data / 'math.jsonl'},max_steps=1,max_new_tokens=12;"
              f"train_data={recipe_data / 'code.jsonl'},max_steps=2,max_new_tokens=64")
    run(["--model", str(tiny_model_dir), "--stages", stages, "--eval-data", "", "--output-dir", str(tmp_path),
         "--prompts-per-step", "4", "--mini-batch-prompts", "4",  # one update per rollout: strictly on-policy
         "--sft-data", str(recipe_data / "code_sft.jsonl"), "--sft-steps", "60", "--sft-lr", "3e-3",
         "--sft-batch-size", "4", "--save-every", "0", *ACEREASON])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(row["step"], row["stage"]) for row in rows] == [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3)]
    limits = {1: 8, 2: 12, 3: 64}
    for row in rows:
        task = "code" if row["stage"] == 3 else "math"
        assert f"{task}/accuracy" in row and f"{'math' if task == 'code' else 'code'}/accuracy" not in row
        assert row["response_length_mean"] <= limits[row["stage"]]
        assert "kl" not in row  # no KL term at all
        if "clip_frac" in row:  # strictly on-policy: every ratio is 1, nothing is clipped
            assert row["clip_frac"] == 0.0 and row["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    # The code stage ran the warmed-up model's programs against the tests in the sandbox and some passed.
    code_rows = [row for row in rows if row["stage"] == 3]
    assert max(row["code/accuracy"] for row in code_rows) > 0
    assert all(row["format_rate"] > 0 for row in code_rows)
    assert all("solved_prompts" in row for row in rows)  # --drop-solved-prompts keeps count
