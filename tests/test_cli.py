"""The `qerl` command: `qerl list`, recipe errors that name the key and the choices, and a real one-step `fit`."""
from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qerl.cli import main
from qerl.registry import REGISTRIES
from tests.rl_helpers import TINY_RECIPE

ROOT = Path(__file__).resolve().parents[1]


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(f"# qerl fit --config {name}\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


def stderr_of(capsys) -> str:
    """Captured stderr without Python's "--- Logging error ---" reports: a library logger (Lightning's
    "Seed set to") can hold a stream of an earlier test's capture, which pytest has closed meanwhile."""
    err = capsys.readouterr().err
    return re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", err, flags=re.DOTALL)


def edited(**changes) -> dict:
    """TINY_RECIPE with dotted-key changes; a value of None deletes the key."""
    recipe = copy.deepcopy(TINY_RECIPE)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = recipe
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(leaf)
        else:
            node[leaf] = value
    return recipe


# ------------------------------------------------------------------------------------------------ qerl list
def test_list_prints_every_registry_with_one_line_per_entry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, registry in REGISTRIES.items():
        assert f"{kind} ({len(registry)})" in out
        for entry in registry.list():
            line = next(line for line in out.splitlines() if line.lstrip().startswith(entry.name + " "))
            assert entry.summary in line
            assert all(alias in line for alias in entry.aliases)


def test_list_one_kind_forgives_singular_and_case(capsys):
    assert main(["list", "Quantizer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("quantizers (") and "algorithms (" not in out
    if "NVFP4" in REGISTRIES["quantizers"]:
        assert "NVFP4" in out


def test_list_unknown_kind_lists_the_kinds(capsys):
    assert main(["list", "gizmos"]) == 2
    err = capsys.readouterr().err
    assert "unknown kind 'gizmos'" in err and "quantizers, noise_schedulers, algorithms" in err


# ---------------------------------------------------------------------------------------------- the parser
def test_help_shows_subcommands_and_tools(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test}" in out and "qerl list" in out and "predict" not in out


BAD_RECIPES = {
    "typo_key": (edited(model__algoritm="GRPO", model__algorithm=None),
                 ["unknown key 'model.algoritm'", "Keys under 'model':", "Did you mean 'algorithm'"]),
    "typo_top_level": (dict(edited(), modle={"dtype": "float32"}), ["unknown key 'modle'", "Did you mean 'model'"]),
    "typo_trainer": (edited(trainer__max_step=3), ["unknown key 'trainer.max_step'", "Did you mean 'max_steps'"]),
    "unknown_class": (edited(model__quantizer="NVFP5"),
                      ["unknown class 'NVFP5' for 'model.quantizer'", "Choices (Quantizer):", "Did you mean 'NVFP4'"]),
    "class_of_wrong_kind": (edited(model__algorithm="NVFP4"), ["unknown class 'NVFP4' for 'model.algorithm'", "GRPO"]),
    "unknown_reward": (edited(model__rewards=["GSM8KAcuracy"]), ["unknown class 'GSM8KAcuracy'", "'GSM8KAccuracy'"]),
    "unknown_dataset": (edited(data__class_path="Arithmetc"), ["unknown class 'Arithmetc' for 'data'", "'Arithmetic'"]),
    "typo_init_arg": (edited(data__init_args={"batchsize": 2}),
                      ["unknown key 'batchsize' under 'data'", "Arithmetic arguments:", "Did you mean 'batch_size'"]),
    "wrong_type": (edited(model__batches_per_step="four"), ["'model.batches_per_step' must be int, got 'four'"]),
    "missing_required": (edited(model__algorithm=None), ["missing required key(s): model.algorithm"]),
    "own_class_not_installed": (edited(data__class_path="qerl_no_such_pkg.Data"),
                                [("'data': class_path 'qerl_no_such_pkg.Data' could not be imported "
                                 "(No module named 'qerl_no_such_pkg')"), "PYTHONPATH", "qerl.plugins"]),
    "own_class_misspelt": (edited(model__rewards=[{"class_path": "qerl.rewards.NoSuchReward"}]),
                           [("'model.rewards': class_path 'qerl.rewards.NoSuchReward' could not be imported "
                            "(module 'qerl.rewards' has no attribute 'NoSuchReward')")]),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipe_is_one_clear_message_and_exit_2(case, tmp_path, capsys):
    recipe, expected = BAD_RECIPES[case]
    path = write_recipe(tmp_path, recipe)
    assert main(["fit", "--config", str(path)]) == 2
    err = stderr_of(capsys)
    assert "Traceback" not in err and "usage:" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert err.startswith(f"qerl fit --config {path}: error: ")
    assert len(err.splitlines()) == 2 and err.splitlines()[1] == "(every option and its type: qerl fit --help)"


@pytest.mark.parametrize("form", ["NVFP4", {"class_path": "NVFP4"}, {"class_path": "NVFP4", "init_args": {}},
                                  "qerl.quantizers.nvfp4.NVFP4"])
def test_short_names_and_class_path_forms_resolve(form, tmp_path):
    from qerl.lightning_cli import parse_recipe

    config = parse_recipe(write_recipe(tmp_path, edited(model__quantizer=form)))
    assert config.model.quantizer.class_path.endswith(".NVFP4")
    assert config.data.class_path.endswith(".Arithmetic") and config.model.algorithm.class_path.endswith(".GRPO")


def test_plugin_component_is_named_by_short_name_too(tmp_path):
    if "INT4" not in REGISTRIES["quantizers"]:
        pytest.skip("qerl-example-plugin (INT4) is not installed")
    from qerl.lightning_cli import parse_recipe

    config = parse_recipe(write_recipe(tmp_path, edited(model__quantizer="INT4")))
    assert config.model.quantizer.class_path.startswith("qerl_example_plugin")


def test_a_value_the_component_rejects_is_reported_without_traceback(tmp_path, capsys):
    path = write_recipe(tmp_path, edited(model__sampling={"n": 1, "max_new_tokens": 4}))
    assert main(["fit", "--config", str(path)]) == 2
    err = stderr_of(capsys)
    assert "Traceback" not in err
    assert err.startswith(f"qerl fit --config {path}: error: could not build the run: ")
    assert err.rstrip().endswith("(QERL_DEBUG=1 shows the traceback)")


def test_python_dash_m_qerl_is_the_qerl_command():
    done = subprocess.run([sys.executable, "-m", "qerl", "list", "quantizers"], check=False, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "NVFP4" in done.stdout and "MXFP4" in done.stdout


def test_the_installed_command_exits_2_without_traceback(tmp_path):
    path = write_recipe(tmp_path, edited(model__quantizer="NVFP5"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "qerl.cli", "fit", "--config", str(path)], cwd=tmp_path, check=False,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "unknown class 'NVFP5'" in done.stderr


# ------------------------------------------------------------------------------------------- a real run
def test_fit_runs_one_step_and_logs_to_tensorboard_under_runs(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path, TINY_RECIPE, name="tiny.yaml")
    assert main(["fit", "--config", str(path)]) == 0
    version = tmp_path / "runs" / "tiny" / "version_0"
    saved = yaml.safe_load((version / "config.yaml").read_text())
    assert saved["model"]["quantizer"]["class_path"].endswith(".NVFP4")  # short names saved as full paths
    events = EventAccumulator(str(version)).Reload()
    tags = events.Tags()["scalars"]
    assert any(t.startswith("train/") for t in tags) and any(t.startswith("reward/") for t in tags), tags
    for tag in tags:
        assert all(math.isfinite(e.value) for e in events.Scalars(tag)), tag


@pytest.mark.parametrize("argv", [["--version"], ["version"]])
def test_version_names_qerl_and_its_stack(argv, capsys):
    import qerl

    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"qerl {qerl.__version__}"
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in out[1:]}
    assert set(listed) >= {"torch", "lightning", "transformers", "peft", "vllm", "triton", "jsonargparse"}
    import torch

    assert listed["torch"] == torch.__version__  # read from the installed metadata, the same version
