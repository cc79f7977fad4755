"""A trainer the machine cannot build (Lightning's MisconfigurationException) ends with one line naming the
`trainer.` key and what to do, exit 2 and no run folder: above all a GPU recipe started on a machine without CUDA."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from test_damaged_files import one_line_error

from qerl.cli import main
from qerl.commands.trainer_errors import trainer_error

ROOT = Path(__file__).resolve().parents[1]
GPU_RECIPES = ["qwen2.5-3b/grpo-nvfp4-gsm8k.yaml", "qwen2.5-7b/grpo-nvfp4-gsm8k.yaml",
               "qwen2.5-14b/dapo-nvfp4-math.yaml", "qwen2.5-32b/dapo-nvfp4-math.yaml"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA GPU: the recipe's trainer builds")
@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipe_on_a_cpu_machine_is_one_line_naming_the_key(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipes log under runs/: nothing may be left there
    assert main(["fit", "--config", str(ROOT / "recipes" / recipe)]) == 2
    line = one_line_error(capsys)
    assert "trainer.accelerator: gpu, but this machine has no CUDA GPU" in line, line
    assert "--trainer.accelerator cpu" in line and "recipes/quickstart.yaml" in line, line
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_other_misconfigurations_name_the_trainer_settings():
    said = trainer_error(MisconfigurationException("You requested gpu: [0, 1, 2, 3] But your machine only has: [0]"),
                         {"accelerator": "cuda", "devices": 4} if torch.cuda.is_available()
                         else {"accelerator": "cpu", "devices": 4})
    assert said.startswith("trainer (accelerator: ") and "devices: 4" in said, said
    assert "your machine only has: [0]" in said and "--trainer.devices" in said, said


def test_other_errors_are_left_to_the_build_error_handling():
    assert trainer_error(ValueError("lora.rank must be positive"), {"accelerator": "gpu"}) is None


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_a_lightning_precision_plugin_is_refused_with_model_dtype_named(precision, tmp_path, monkeypatch, capsys):
    """qerl sets its dtypes itself (model.dtype; float32 log-probs and AQN norms): autocast or a cast of the module
    over them would change the update and round AQN's noise away, so the recipe is stopped before anything loads."""
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "recipes" / "quickstart.yaml"
    assert main(["fit", "--config", str(recipe), f"--trainer.precision={precision}"]) == 2
    line = one_line_error(capsys)
    assert f"trainer.precision: {precision} is not used by qerl" in line, line
    assert f"--model.dtype {'float16' if precision.startswith('16') else 'bfloat16'}" in line, line
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_full_precision_is_what_qerl_runs_under():
    from qerl.commands.trainer_errors import precision_error

    assert precision_error("32-true") is None and precision_error(32) is None
    assert precision_error("bf16-mixed") is not None
