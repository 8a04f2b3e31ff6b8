"""The recipe table (train.py): SimpleRL-Zoo's per-model settings found from a hub id or a local directory,
flags overriding them, the printed line, the unknown-model path; the README's train.py and evaluate.py
commands parse (a dry run: nothing loaded); evaluate.py's default protocol per model."""

import json
import re
import shlex
import subprocess
import sys

import pytest

import evaluate
import train
from conftest import ROOT, shared_data
from data.problems import TEMPLATE_STOP_STRINGS

# The paper's own words, written out again by hand (arXiv 2503.18892v3), to check the table against:
# B.1 "we use Easy for LLama-3.1-8B, Mistral-v0.1-7B, and DeepSeek-Math-7B; Medium for Qwen2.5-0.5B; Hard for
# Mistral-Small-24B, Qwen-2.5-Math-7B, and Qwen-2.5-1.5B/7B/14B/32B"; B.3 simple prompts for "Llama-3.1-8B,
# Mistral-v0.1-7B, and Qwen-2.5-0.5B/1.5B"; B.5 KL 1e-4 "for models ranging from 0.5B to 14B", 1e-3 above.
PAPER = {  # row: (training split, template, KL coefficient)
    "Qwen2.5-0.5B": ("simplelr_abel_level1to4", "abel", 1e-4),
    "Qwen2.5-1.5B": ("simplelr_abel_level3to5", "abel", 1e-4),
    "Qwen2.5-7B": ("simplelr_qwen_level3to5", "qwen-boxed", 1e-4),
    "Qwen2.5-14B": ("simplelr_qwen_level3to5", "qwen-boxed", 1e-4),
    "Qwen2.5-32B": ("simplelr_qwen_level3to5", "qwen-boxed", 1e-3),
    "Qwen2.5-Math-7B": ("simplelr_qwen_level3to5", "qwen-boxed", 1e-4),
    "Llama-3.1-8B": ("simplelr_abel_gsm8k_level1", "abel", 1e-4),
    "Mistral-7B-v0.1": ("simplelr_abel_gsm8k_level1", "abel", 1e-4),
    "Mistral-Small-24B": ("simplelr_qwen_level3to5", "qwen-boxed", 1e-3),
    "DeepSeek-Math-7B": ("simplelr_qwen_gsm8k_level1", "qwen-boxed", 1e-4),
}
HUB_IDS = {"Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B", "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B", "Qwen2.5-7B": "Qwen/Qwen2.5-7B",
           "Qwen2.5-14B": "Qwen/Qwen2.5-14B", "Qwen2.5-32B": "Qwen/Qwen2.5-32B",
           "Qwen2.5-Math-7B": "Qwen/Qwen2.5-Math-7B", "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
           "Mistral-7B-v0.1": "mistralai/Mistral-7B-v0.1", "Mistral-Small-24B": "mistralai/Mistral-Small-24B-Base-2501",
           "DeepSeek-Math-7B": "deepseek-ai/deepseek-math-7b-base"}


def parse(capsys, *argv):
    """train.py's settings for a command line (a dry run, in this process) and what it printed."""
    config = train.main([*argv, "--dry-run"])
    return config, capsys.readouterr().out


def test_the_table_is_the_papers():
    assert set(train.SIMPLERL_ZOO_MODELS) == set(PAPER)
    for row, (split, template, kl_coef) in PAPER.items():
        fields = train.recipe_fields(f"simplerl-zoo/{row}")
        assert fields["train_data"] == f"hkust-nlp/SimpleRL-Zoo-Data/{split}"
        assert (fields["template"], fields["kl_coef"], fields["model"]) == (template, kl_coef, HUB_IDS[row])
        # Shared by all (paper B.5): 1024 prompts x 8 rollouts, 8192 tokens, mini-batch 256, temperature 1.0
        assert (fields["prompts_per_step"], fields["samples_per_prompt"], fields["max_new_tokens"],
                fields["mini_batch_prompts"], fields["temperature"], fields["clip_ratio"]) == (1024, 8, 8192, 256, 1.0, 0.2)
        assert (fields["adv_estimator"], fields["reward_scheme"], fields["loss_agg"]) == ("grpo", "correct", "token-mean")
        assert set(fields) <= {f.name for f in train.dataclasses.fields(train.Config)}


@pytest.mark.parametrize("row", sorted(PAPER))
def test_hub_ids_and_released_models_are_recognized(row):
    assert train.recognize_model(HUB_IDS[row])[0::2] == (row, False)
    assert train.recognize_model(HUB_IDS[row].lower() + "/")[0::2] == (row, False)  # case and a slash do not matter
    released = train.SIMPLERL_ZOO_MODELS[row]["released"]
    assert released.startswith("hkust-nlp/") and released.endswith("-SimpleRL-Zoo")
    assert train.recognize_model(released)[0::2] == (row, True)


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-Math-7B-Instruct", "Qwen/Qwen2.5-3B",
                                   "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.2-1B", "Qwen/Qwen3-8B-Base",
                                   "mistralai/Mistral-7B-v0.3", "toy/model", "does/not-exist", "hkust-nlp/SimpleRL-Zoo"])
def test_other_models_are_not_recognized(model):
    assert train.recognize_model(model) == (None, None, False)


def write_config(directory, **fields):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(fields))
    return str(directory)


QWEN_05B = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=896, num_hidden_layers=24,
                vocab_size=151936, intermediate_size=4864, max_position_embeddings=32768)
QWEN_7B = dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, vocab_size=152064)
LLAMA_8B = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096, num_hidden_layers=32,
                vocab_size=128256, max_position_embeddings=131072)


def test_local_directories_by_name_and_by_shape(tmp_path):
    recognize = lambda directory: train.recognize_model(directory)[0::2]  # noqa: E731
    # transformers 4 recorded where a model came from, often a local path: its last part names the model.
    assert recognize(write_config(tmp_path / "a", _name_or_path="/cfs/zoo/deepseek-math-7b-base", model_type="llama",
                                  hidden_size=4096, num_hidden_layers=30, vocab_size=102400)) == ("DeepSeek-Math-7B", False)
    assert recognize(write_config(tmp_path / "b", _name_or_path="Qwen/Qwen2.5-1.5B")) == ("Qwen2.5-1.5B", False)
    # The directory's own name (a download of the released model).
    assert recognize(write_config(tmp_path / "Qwen-2.5-1.5B-SimpleRL-Zoo", **QWEN_05B)) == ("Qwen2.5-1.5B", True)
    # No name (transformers 5 writes none): the architecture and size.
    assert recognize(write_config(tmp_path / "c", **QWEN_05B)) == ("Qwen2.5-0.5B", False)
    assert recognize(write_config(tmp_path / "d", **LLAMA_8B)) == ("Llama-3.1-8B", False)
    assert recognize(write_config(tmp_path / "e", **QWEN_7B, max_position_embeddings=131072)) == ("Qwen2.5-7B", False)
    assert recognize(write_config(tmp_path / "f", **QWEN_7B, max_position_embeddings=4096)) == ("Qwen2.5-Math-7B", False)
    assert recognize(write_config(tmp_path / "g", **{**LLAMA_8B, "vocab_size": 32000})) == (None, False)  # Llama-2-7B
    assert recognize(write_config(tmp_path / "h", **{**QWEN_05B, "hidden_size": 128})) == (None, False)  # a tiny Qwen2
    # A name that says it is another model wins over the shape.
    assert recognize(write_config(tmp_path / "i", _name_or_path="Qwen/Qwen2.5-Math-7B-Instruct", **QWEN_7B,
                                  max_position_embeddings=4096)) == (None, False)
    _, how, _ = train.recognize_model(str(tmp_path / "d"))
    assert "config.json: a llama of Llama-3.1-8B's shape" in how


def test_a_recognized_model_gets_its_recipe_and_the_line_says_so(capsys):
    config, out = parse(capsys, "--model", "meta-llama/Llama-3.1-8B")
    assert config.recipe == "simplerl-zoo/Llama-3.1-8B"
    assert (config.train_data, config.template, config.kl_coef, config.lr) == (
        "hkust-nlp/SimpleRL-Zoo-Data/simplelr_abel_gsm8k_level1", "abel", 1e-4, 5e-7)
    assert (config.prompts_per_step, config.mini_batch_prompts, config.max_new_tokens, config.entropy_coef) == (
        1024, 256, 8192, 1e-3)
    line = out.splitlines()[0]
    assert line.startswith("recipe: simplerl-zoo/Llama-3.1-8B (named meta-llama/Llama-3.1-8B): ")
    for part in ("train_data hkust-nlp/SimpleRL-Zoo-Data/simplelr_abel_gsm8k_level1", "template abel",
                 "kl_coef 0.0001", "lr 5e-07", "prompts_per_step 1024", "samples_per_prompt 8"):
        assert part in line
    assert "(flag)" not in line
    config, _ = parse(capsys, "--model", "Qwen/Qwen2.5-32B")
    assert (config.kl_coef, config.template, config.train_data.split("/")[-1]) == (1e-3, "qwen-boxed",
                                                                                   "simplelr_qwen_level3to5")
    config, _ = parse(capsys)  # the default model is Qwen2.5-0.5B: its recipe
    assert (config.recipe, config.train_data.split("/")[-1], config.template) == (
        "simplerl-zoo/Qwen2.5-0.5B", "simplelr_abel_level1to4", "abel")


def test_every_flag_given_overrides_its_field(capsys):
    # A flag given with the default's value still overrides: --kl-coef 1e-4 against the 32B row's 1e-3.
    config, out = parse(capsys, "--model", "Qwen/Qwen2.5-32B", "--kl-coef", "1e-4", "--lr", "1e-6", "--template",
                        "abel", "--train-data", "mine.jsonl", "--max-new-tokens", "4096", "--eval-every", "10")
    assert (config.kl_coef, config.lr, config.template, config.train_data, config.max_new_tokens, config.eval_every) == (
        1e-4, 1e-6, "abel", "mine.jsonl", 4096, 10)
    assert config.samples_per_prompt == 8 and config.entropy_coef == 1e-3  # the rest is the recipe's
    assert "kl_coef 0.0001 (flag)" in out and "lr 1e-06 (flag)" in out and "template abel (flag)" in out
    # Fewer prompts per step keep the recipe's four updates per rollout.
    config, _ = parse(capsys, "--model", "Qwen/Qwen2.5-7B", "--prompts-per-step", "64")
    assert (config.prompts_per_step, config.mini_batch_prompts) == (64, 16)
    config, _ = parse(capsys, "--model", "Qwen/Qwen2.5-7B", "--prompts-per-step", "6")  # 4 does not divide 6
    assert config.mini_batch_prompts == 6
    # A boolean flag, and a recipe applied to another model than its own.
    config, out = parse(capsys, "--recipe", "simplerl-blog", "--no-kl-in-reward", "--model", "Qwen/Qwen2.5-7B")
    assert (config.model, config.kl_in_reward, config.adv_estimator, config.reward_scheme) == (
        "Qwen/Qwen2.5-7B", False, "gae", "simplerl")
    assert "kl_in_reward False (flag)" in out and "model Qwen/Qwen2.5-7B (flag)" in out


def test_named_recipes(capsys):
    config, _ = parse(capsys, "--recipe", "simplerl-zoo/Mistral-Small-24B")
    assert (config.model, config.kl_coef, config.template) == ("mistralai/Mistral-Small-24B-Base-2501", 1e-3,
                                                               "qwen-boxed")
    config, _ = parse(capsys, "--recipe", "simplerl-blog")
    assert (config.model, config.template, config.adv_estimator, config.temperature, config.max_new_tokens) == (
        "Qwen/Qwen2.5-Math-7B", "qwen-math-cot", "gae", 0.6, 3000)
    assert (config.kl_coef, config.kl_in_reward, config.kl_estimator, config.lr, config.critic_lr) == (
        0.01, True, "k1", 5e-7, 9e-6)
    assert (config.prompts_per_step, config.mini_batch_prompts, config.max_steps, config.entropy_coef) == (
        1024, 16, 120, 0.0)


def test_unknown_models_and_recipe_none_keep_the_defaults(capsys):
    defaults, _ = parse(capsys, "--model", "Qwen/Qwen2.5-0.5B", "--recipe", "none")
    unknown, out = parse(capsys, "--model", "my/own-model")
    assert out.splitlines()[0] == ("recipe: none: SimpleRL-Zoo did not train my/own-model; the defaults hold "
                                   "(--recipe simplerl-zoo/<model> applies one of its rows anyway)")
    assert unknown.recipe == defaults.recipe == "none"
    assert {k: v for k, v in vars(unknown).items() if k != "model"} == {k: v for k, v in vars(defaults).items()
                                                                        if k != "model"}
    assert defaults.train_data == train.Config.train_data and defaults.template == ""
    with pytest.raises(SystemExit, match="SimpleRL-Zoo did not train my/own-model"):
        parse(capsys, "--model", "my/own-model", "--recipe", "simplerl-zoo")
    with pytest.raises(SystemExit, match="--recipe simplerl-zoo/Qwen2.5-3B: unknown"):
        parse(capsys, "--recipe", "simplerl-zoo/Qwen2.5-3B")


def test_the_command_line_dry_run_loads_nothing(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--model", "meta-llama/Llama-3.1-8B", "--train-data",
                             str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "run"), "--dry-run"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    line, printed = result.stdout.split("\n", 1)
    assert line.startswith("recipe: simplerl-zoo/Llama-3.1-8B")
    settings = json.loads(printed[printed.index("{"):])
    assert settings["template"] == "abel" and settings["train_data"].endswith("missing.jsonl")
    assert settings["loss_agg"] == "token-mean" and settings["micro_batch_size"] is not None  # auto fields resolved
    assert not (tmp_path / "run").exists()  # nothing written, no data read, no model loaded


#### The README's commands


def readme_commands(script):
    """The README's command lines that run `script` (fenced code blocks, continuations joined, chains split,
    comments dropped), as (world_size, argument list after the script) pairs, world_size being what torchrun's
    --nnodes x --nproc_per_node would give (1 for python); placeholders ("...", RUN, FILE) are left out."""
    blocks, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if re.fullmatch(r"\s*```\w*\s*", line):
            inside = not inside
            blocks.append([]) if inside else None
        elif inside:
            blocks[-1].append(line)
    commands = []
    for block in blocks:
        for line in "\n".join(block).replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                if not part.strip().startswith(("python ", "torchrun ")):
                    continue
                words = shlex.split(part, comments=True)
                if (script in words and "..." not in words
                        and not {"RUN", "FILE"} & {w.split("/")[0] for w in words}):
                    launcher, arguments = words[:words.index(script)], words[words.index(script) + 1:]
                    world_size = 1
                    for option in ("--nnodes", "--nproc_per_node"):
                        if option in launcher:
                            world_size *= int(launcher[launcher.index(option) + 1])
                    if arguments[:1] != ["plot"]:
                        commands.append((world_size, arguments))
    return commands


def test_the_readme_train_commands_parse(capsys, monkeypatch):
    commands = readme_commands("train.py")
    assert any(world_size == 8 for world_size, _ in commands)  # the torchrun lines are checked too
    recipes = set()
    for world_size, arguments in commands:
        monkeypatch.setenv("WORLD_SIZE", str(world_size))  # as torchrun sets it; a dry run starts no process group
        config, _ = parse(capsys, *arguments)
        recipes.add(config.recipe)
    assert {"toy", "simplerl-blog", "simplerl-zoo/Qwen2.5-0.5B", "simplerl-zoo/Llama-3.1-8B",
            "simplerl-zoo/Qwen2.5-32B"} <= recipes, recipes


def test_the_toy_recipe_is_the_quick_start_spelled_out(capsys):
    recipe, _ = parse(capsys, "--recipe", "toy")
    spelled_out, _ = parse(capsys, "--model", "toy/model", "--train-data", "toy/train.jsonl", "--eval-data",
                           "toy/test.jsonl", "--output-dir", "runs/toy")
    assert recipe.recipe == "toy" and spelled_out.recipe == "none"
    assert {k: v for k, v in vars(recipe).items() if k != "recipe"} == {k: v for k, v in vars(spelled_out).items()
                                                                       if k != "recipe"}


def test_the_readme_evaluate_commands_parse(capsys):
    commands = readme_commands("evaluate.py")
    assert len(commands) >= 3  # the Table 1 commands
    for _, arguments in commands:
        settings = evaluate.main([*arguments, "--dry-run"])
        assert settings["max_new_tokens"] > 0 and settings["stop_strings"]


#### evaluate.py's protocol


@pytest.mark.parametrize("row", sorted(PAPER))
def test_the_protocol_decodes_base_models_greedily_and_trained_ones_at_temperature_1(row):
    base = evaluate.paper_protocol(HUB_IDS[row])
    trained = evaluate.paper_protocol(train.SIMPLERL_ZOO_MODELS[row]["released"])
    assert base["template"] == trained["template"] == PAPER[row][1]  # the training prompt (paper B.5)
    assert (base["stage"], base["temperature"], base["top_p"]) == ("base", 0.0, 1.0)  # Table 1: greedy baselines
    assert (trained["stage"], trained["temperature"], trained["top_p"]) == ("trained", 1.0, 0.95)
    assert base["max_new_tokens"] == trained["max_new_tokens"] == 16000
    assert evaluate.paper_protocol(HUB_IDS[row], stage="trained")["temperature"] == 1.0


def test_the_protocol_stop_strings_and_other_models(tmp_path):
    stops = evaluate.paper_protocol("Qwen/Qwen2.5-7B")["stop_strings"]
    assert stops["abel"] == ["</s>", "<|im_end|>", "<|endoftext|>", "Question:", "Answer:"]
    assert stops["qwen-boxed"][-4:] == ["assistant", "user", "_end", "_start"]
    assert stops["simple"] == TEMPLATE_STOP_STRINGS["simple"] and stops["qwen-code"] == TEMPLATE_STOP_STRINGS["qwen-code"]
    blog = evaluate.paper_protocol("hkust-nlp/Qwen-2.5-Math-7B-SimpleRL-Zero")
    assert (blog["template"], blog["temperature"], blog["max_new_tokens"]) == ("qwen-math-cot", 0.0, 3000)
    unknown = evaluate.paper_protocol("my/own-model")
    assert (unknown["template"], unknown["stage"], unknown["temperature"]) == (None, "base", 0.0)
    # The output of a train.py run: trained when its recipe was SimpleRL-Zoo's, with the run's template.
    for recipe, template, stage in (("simplerl-zoo/Qwen2.5-0.5B", "abel", "trained"), ("toy", "", "base")):
        run = tmp_path / recipe.replace("/", "_")
        (run / "final").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"model": "Qwen/Qwen2.5-0.5B", "train_data": "x.jsonl",
                                                     "samples_per_prompt": 8, "recipe": recipe, "template": template}))
        for saved in (run / "final", run / "checkpoints" / "step_000010" / "model"):
            saved.mkdir(parents=True, exist_ok=True)
            protocol = evaluate.paper_protocol(str(saved))
            assert (protocol["template"], protocol["stage"]) == (template or None, stage)


def test_a_benchmark_evaluation_with_the_protocol(tiny_model_dir, tmp_path):
    """The protocol's stop strings reach the engine: the tiny model, the transformers fallback, two problems."""
    output_dir = tmp_path / "eval"
    evaluate.main(["--model", str(tiny_model_dir), "--benchmarks", "gsm8k", "--data-dir", str(shared_data("eval")),
                   "--limit", "2", "--template", "abel", "--max-new-tokens", "6", "--rollout-engine", "hf",
                   "--output-dir", str(output_dir)])
    results = json.loads((output_dir / "results.json").read_text())
    assert results["template"] == "abel" and results["benchmarks"]["gsm8k"]["n"] == 2
    assert results["decoding"] == {"protocol": "simplerl-zoo", "stage": "base", "max_new_tokens": 6, "n": 1,
                                   "temperature": 0.0, "top_p": 1.0, "seed": 0}
