"""Bad input a user can cause (issue #35, items 4-6 and 10): one line naming the file, row or key, exit 2, no
traceback and no run folder left behind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_damaged_files import ARITHMETIC, TINY, one_line_error, write_recipe

from qerl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def fit(tmp_path, policy=TINY, data=ARITHMETIC) -> int:
    return main(["fit", "--config", str(write_recipe(tmp_path, data, policy, quantizer="NVFP4"))])


def jsonl_with_latin1(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "1+1", "answer": "2"}\n{"question": "caf\xe9 costs 3", "answer": "3"}\n')
    return path


# ------------------------------------------------------------------------------------------ 4: bytes, nulls
def test_non_utf8_jsonl_in_fit_names_file_and_line(tmp_path, capsys):
    path = jsonl_with_latin1(tmp_path)
    data = f"  class_path: JsonlPrompts\n  init_args: {{train_path: {path}, batch_size: 2}}"
    assert fit(tmp_path, data=data) == 2
    line = one_line_error(capsys)
    assert f"{path}:2: byte 0xe9" in line and "not UTF-8" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("content", "said"), [
    (None, "latin1.jsonl:2: byte 0xe9"),
    ('{"question": "1+1", "answer": null}\n', "rows.jsonl:1: field 'answer' is null"),
])
def test_eval_names_the_file_for_bad_bytes_and_nulls(content, said, tmp_path, capsys):
    path = jsonl_with_latin1(tmp_path) if content is None else tmp_path / "rows.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["eval", "--model", "tiny", "--dataset", "jsonl", "--data_path", str(path), "--limit", "2",
                 "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and said in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ 5: GGUF files
@pytest.mark.parametrize("kind", ["random_bytes", "missing"])
def test_bad_gguf_is_one_line_exit_2_and_no_run_folder(kind, tmp_path, capsys):
    path = tmp_path / "model.gguf"
    if kind == "random_bytes":
        path.write_bytes(bytes(range(256)) * 16)
    assert fit(tmp_path, policy=f"{{class_path: GGUFModel, init_args: {{path: {path}}}}}") == 2
    line = one_line_error(capsys)
    assert str(path) in line and ("is not a GGUF file" if kind == "random_bytes" else "neither") in line, line
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ 6: safetensors
@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """A dense tiny folder (quantized on load) and the same model written pre-quantized by `qerl quantize`."""
    from qerl.models import RandomInit

    root = tmp_path_factory.mktemp("folders")
    model, tokenizer = RandomInit("tiny", stream=False).load(dtype="float32")
    model.save_pretrained(root / "dense")
    tokenizer.save_pretrained(root / "dense")
    assert main(["quantize", "--model", "tiny", "--dtype", "float32", "--quantizer", "NVFP4", "--output",
                 str(root / "packed"), "--format", "compressed-tensors"]) == 0
    return root


def damaged_copy(source, tmp_path, damage: str):
    import shutil

    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    weights = next(folder.glob("*.safetensors"))
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) * 2 // 3])
    else:  # the header's length field and first bytes overwritten
        weights.write_bytes(b"\xff" * 16 + data[16:])
    return weights


@pytest.mark.parametrize("folder", ["dense", "packed"])
@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_damaged_safetensors_is_named_before_the_model_loads(folder, damage, tiny_folders, tmp_path, capsys):
    weights = damaged_copy(tiny_folders / folder, tmp_path, damage)
    capsys.readouterr()
    assert fit(tmp_path, policy=f"{{class_path: HFModel, init_args: {{path: {weights.parent}}}}}") == 2
    line = one_line_error(capsys)
    assert f"{weights} is damaged" in line, line
    assert not (tmp_path / "runs").exists()


def test_intact_folders_pass_the_header_check(tiny_folders):
    from qerl.models import HFModel

    for name in ("dense", "packed"):
        HFModel(str(tiny_folders / name)).check_files()
    assert json.loads((tiny_folders / "packed" / "config.json").read_text())["quantization_config"]


# ------------------------------------------------------------------------------------------ 10: recipes
def test_yaml_syntax_error_names_the_recipe_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("# qerl fit --config broken.yaml\ntrainer:\n  max_steps: 1\n  accelerator: [cpu\nmodel:\n")
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "<unicode string>" not in err, err
    assert f"{path}:5:" in err and "not valid YAML" in err and "line 4" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("edit", "said"), [
    ("  lora: {rank: abc}", "'model.lora.rank' must be int, got 'abc'."),
    ("  noise: {class_path: Exponential, init_args: {sigma_start: abc}}",
     "'model.noise.init_args.sigma_start' (Exponential) must be float, got 'abc'."),
    ("  batches_per_step: four", "'model.batches_per_step' must be int, got 'four'."),
])
def test_wrong_nested_type_is_one_line_naming_the_key(edit, said, tmp_path, capsys):
    path = write_recipe(tmp_path, quantizer="NVFP4")
    path.write_text(path.read_text().replace("  dtype: float32\n", f"  dtype: float32\n{edit}\n"))
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Union" not in err and said in err, err
    assert len(err.strip().splitlines()) == 2  # the error and the pointer to --help


def test_wrong_type_under_init_args_names_the_class(tmp_path, capsys):
    policy = "{class_path: RandomInit, init_args: {config: tiny, seed: abc}}"
    assert fit(tmp_path, policy=policy) == 2
    err = capsys.readouterr().err
    assert "'model.policy.init_args.seed' (RandomInit) must be int, got 'abc'." in err, err


# ------------------------------------------------------------------------------------------ 9: the recipe scores
def test_prequantized_recipe_reward_credits_8_token_replies():
    """The recipe's replies are cut at 8 tokens: its reward must credit a cut reply that ends in the right number
    (the strict GSM8K rule scored every step 0, so GRPO had no gradient); a wrong number still scores 0."""
    from pathlib import Path

    from qerl.lightning_cli import parse_recipe
    from qerl.registry import REWARDS

    recipe = Path(__file__).resolve().parents[1] / "recipes/smollm2/grpo-nvfp4-prequantized-arithmetic.yaml"
    config = parse_recipe(recipe)
    assert config.model.sampling.max_new_tokens == 8
    rewards = []
    for entry in config.model.rewards:
        name = entry if isinstance(entry, str) else entry["class_path"]
        init = {} if isinstance(entry, str) else dict(entry.get("init_args") or {})
        rewards.append(REWARDS.get(name.rsplit(".", 1)[-1])(**init))
    replies, golds = ["3 + 4 = 7", "The sum of 3 and 4 is 7", "3 + 4 = 8"], ["7", "7", "7"]
    total = [sum(r.weight * s for r, s in zip(rewards, scores))
             for scores in zip(*(r(replies, golds, truncated=[True] * 3) for r in rewards))]
    assert total == [1.0, 1.0, 0.0]


def test_missing_local_folder_is_named_but_a_hub_id_is_left_to_the_hub(tmp_path, monkeypatch):
    from qerl.models import HFModel, ModelNotFoundError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for path in ("checkpoints/smollm2-nvfp4", str(tmp_path / "gone"), "./gone"):
        with pytest.raises(ModelNotFoundError, match="is not a folder"):
            HFModel(path).check_files()
    HFModel("HuggingFaceTB/SmolLM2-135M-Instruct").check_files()  # a hub id: from_pretrained decides


def test_a_path_that_is_neither_a_folder_nor_a_hub_model_says_so_and_leaves_no_folders(tmp_path, monkeypatch,
                                                                                      capsys):
    """The prequantized recipe's `checkpoints/smollm2-nvfp4` before `qerl quantize` made it: no checkpoints/ folder
    here, so it reads as a hub id, which the (offline) hub cannot serve: one line, and runs/<name>/ is gone too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_recipe(tmp_path, policy="{class_path: HFModel, init_args: {path: checkpoints/smollm2-nvfp4}}")
    assert main(["fit", "--config", str(path)]) == 1
    line = one_line_error(capsys)
    assert "HFModel: 'checkpoints/smollm2-nvfp4' is not a folder here" in line, line
    assert "as a Hugging Face hub id it could not be loaded" in line and "path of a model folder" in line, line
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))


def test_remove_stub_removes_only_the_empty_folders_the_run_made(tmp_path):
    from qerl.training.run_folder import first_missing, remove_stub

    log_dir = tmp_path / "runs" / "recipe" / "version_0"
    (tmp_path / "runs").mkdir()
    created = first_missing(str(log_dir))
    assert created == str(tmp_path / "runs" / "recipe") and first_missing(str(tmp_path)) is None
    (log_dir / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "other").mkdir()
    remove_stub(str(log_dir), created)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other"]  # runs/ existed before: kept

    (log_dir / "adapter" / "final").mkdir(parents=True)  # a run that saved something keeps everything
    remove_stub(str(log_dir), created)
    assert (log_dir / "adapter" / "final").is_dir()


@pytest.mark.parametrize(("override", "said"), [
    (["--model.noise.init_args.sigma_start", "-1"], "could not build the run: Exponential: sigma_start=-1.0 is invalid"),
    (["--model.rollout.init_args.max_new_tokens_cap", "0"], None),  # no such key: the parse error names it
])
def test_an_optional_components_own_message_without_the_union_report(override, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(["fit", "--config", str(ROOT / "recipes" / "quickstart.yaml"), *override])
    assert status == 2
    line = one_line_error(capsys)
    assert "Union" not in line and "Subtypes" not in line, line
    if said:
        assert said in line, line
    assert not (tmp_path / "runs").exists()


def test_union_build_error_keeps_only_a_single_own_message():
    from qerl.commands.recipe_errors import union_build_error

    report = ("Does not validate against any of the Union subtypes\nSubtypes: [<class 'X'>, <class 'NoneType'>]\n"
              "Errors:\n  - VLLM: `max_num_seqs`=0 must be\n    \"auto\" or an int >= 1.\n"
              "  - Expected a <class 'NoneType'>\nGiven value type: <class 'Namespace'>\n")
    assert union_build_error(report) == 'VLLM: `max_num_seqs`=0 must be "auto" or an int >= 1.'
    two = report.replace("  - Expected a <class 'NoneType'>", "  - another: bad")
    assert union_build_error(two) is None and union_build_error("sigma must be >= 0") is None
