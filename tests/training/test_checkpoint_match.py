"""A resume whose model does not fit the checkpoint's weights (another LoRA rank or targets) stops with one line
naming the first tensor that differs and what to do, not torch's size-mismatch report or a silent partial load."""
from __future__ import annotations

import glob

import pytest
import torch
from torch import nn

from qerl.cli import main
from qerl.training.checkpoint_match import CheckpointMismatchError, check_resume, mismatch


class Adapted(nn.Module):
    def __init__(self, rank: int, targets=("a", "b")) -> None:
        super().__init__()
        self.base = nn.Linear(8, 8).requires_grad_(False)
        self.lora = nn.ParameterDict({t: nn.Parameter(torch.zeros(rank, 8)) for t in targets})


def trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach() for k, p in module.named_parameters() if p.requires_grad}


def test_a_matching_checkpoint_passes_and_frozen_weights_in_it_are_allowed():
    run = Adapted(4)
    assert mismatch(run, trainable(Adapted(4))) is None
    assert mismatch(run, Adapted(4).state_dict()) is None  # an older checkpoint that kept the frozen base too


@pytest.mark.parametrize(("saved", "said"), [
    (Adapted(8), "2 tensor(s) of another shape (first lora.a: checkpoint (8, 8), this run (4, 8))"),
    (Adapted(4, targets=("a",)), "1 trainable tensor(s) of this run missing from it (first lora.b)"),
    (Adapted(4, targets=("a", "b", "c")), "1 tensor(s) this run does not have (first lora.c)"),
])
def test_each_kind_of_difference_is_named(saved, said):
    assert mismatch(Adapted(4), trainable(saved)) == said
    with pytest.raises(CheckpointMismatchError, match="checkpoint x.ckpt does not fit .* without --ckpt_path"):
        check_resume(Adapted(4), {"state_dict": trainable(saved)}, "x.ckpt")


def test_qerl_fit_resumed_with_another_lora_rank_is_one_line(tmp_path, capsys):
    from test_damaged_files import one_line_error, write_recipe

    recipe = str(write_recipe(tmp_path))
    assert main(["fit", "--config", recipe, "--model.lora", "{rank: 4, alpha: 8}"]) == 0
    assert glob.glob(str(tmp_path / "runs" / "r" / "version_0" / "checkpoints" / "*.ckpt"))
    capsys.readouterr()
    status = main(["fit", "--config", recipe, "--model.lora", "{rank: 2, alpha: 8}", "--trainer.max_steps", "2",
                   "--ckpt_path", "last"])
    assert status == 1
    line = one_line_error(capsys)
    assert "does not fit this run's trainable weights" in line and "checkpoint (4, " in line, line
    assert "this run (2, " in line and "without --ckpt_path" in line, line


class Run:
    def __init__(self, path: str, quantizer) -> None:
        from qerl.models import GGUFModel

        self.policy, self.quantizer = GGUFModel(path=path), quantizer


def test_resuming_on_another_quantizer_or_model_warns_in_one_line():
    from qerl.quantizers import MXFP4, NVFP4
    from qerl.training.checkpoint_match import base_identity, warn_other_base

    saved = base_identity(Run("m.gguf", NVFP4()))
    assert saved == {"policy": "GGUFModel(m.gguf)", "quantizer": "NVFP4"}
    assert warn_other_base(Run("m.gguf", NVFP4()), saved, "last.ckpt") is None
    assert warn_other_base(Run("m.gguf", MXFP4()), None, "last.ckpt") is None  # an older checkpoint says nothing
    with pytest.warns(UserWarning, match=r"quantizer NVFP4 -> MXFP4"):
        warn_other_base(Run("m.gguf", MXFP4()), saved, "last.ckpt")
    with pytest.warns(UserWarning, match=r"policy GGUFModel\(m.gguf\) -> GGUFModel\(other.gguf\); quantizer NVFP4 -> None"):
        warn_other_base(Run("other.gguf", None), saved, "last.ckpt")
