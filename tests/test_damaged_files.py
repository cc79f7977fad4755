"""Each missing or damaged input gets one line naming the file and what is wrong, exit 2, before any model
loads, and no run folder is left behind."""
from __future__ import annotations

import os
import re
import textwrap

import pytest
import torch

from qerl.cli import main

RECIPE = """\
# qerl fit --config {path}
seed_everything: 0
trainer:
  max_steps: 1
  accelerator: cpu
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {root}/runs, name: r}}
model:
  policy: {policy}
  quantizer: {quantizer}
  algorithm: GRPO
  rewards: [GSM8KAccuracy]
  sampling: {{n: 2, max_new_tokens: 4}}
  dtype: float32
data:
{data}
"""
TINY = "{class_path: RandomInit, init_args: {config: tiny}}"
ARITHMETIC = "  class_path: Arithmetic\n  init_args: {batch_size: 2, num_train: 8, num_test: 4}"


def write_recipe(tmp_path, data=ARITHMETIC, policy=TINY, quantizer="null"):
    """A one-step recipe (tiny random policy, dense unless `quantizer` names a format) at `tmp_path`/r.yaml."""
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(RECIPE.format(path=path, root=tmp_path, data=data, policy=policy,
                                                  quantizer=quantizer)))
    return path


def one_line_error(capsys) -> str:
    # without pytest's "--- Logging error ---" reports (a library logger holding an earlier test's closed stream)
    err = re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", capsys.readouterr().err, flags=re.DOTALL)
    lines = [line for line in err.splitlines() if "error" in line or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in err and "weights_only" not in err, err
    return lines[0]


def checkpoint_file(tmp_path, kind: str) -> str:
    path = tmp_path / "bad.ckpt"
    good = {"global_step": 2, "state_dict": {"w": torch.zeros(64, 64)}}
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "objects":
        torch.save({"global_step": 2, "state_dict": {}, "x": ValueError("not a tensor")}, path)
    elif kind == "not_lightning":
        torch.save({"w": torch.zeros(2)}, path)
    return str(path)


@pytest.mark.parametrize(("kind", "said"), [
    ("missing", "no such file"), ("empty", "is empty (0 bytes)"), ("random", "is damaged"),
    ("truncated", "is damaged"), ("objects", "not written by a qerl run"), ("not_lightning", "not a Lightning checkpoint"),
])
def test_bad_checkpoint_is_one_line_and_exit_2_with_no_run_folder(kind, said, tmp_path, capsys):
    ckpt = str(tmp_path / "nowhere.ckpt") if kind == "missing" else checkpoint_file(tmp_path, kind)
    assert main(["fit", "--config", str(write_recipe(tmp_path)), "--ckpt_path", ckpt]) == 2
    line = one_line_error(capsys)
    assert ckpt in line and said in line, line
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_last_without_checkpoints_says_where_it_looked(tmp_path, capsys):
    assert main(["fit", "--config", str(write_recipe(tmp_path)), "--ckpt_path", "last"]) == 2
    line = one_line_error(capsys)
    assert "--ckpt_path last: no checkpoint in" in line and str(tmp_path / "runs" / "r") in line
    assert not (tmp_path / "runs").exists()


def test_damaged_last_falls_back_to_the_newest_intact_checkpoint_naming_both(tmp_path, capsys):
    from qerl.training.checkpoint_io import write_atomically
    from qerl.training.run_folder import plan_resume

    folder = tmp_path / "runs" / "r" / "version_0" / "checkpoints"
    write_atomically({"global_step": 4, "state_dict": {}}, str(folder / "epoch=0-step=4.ckpt"))
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    os.utime(folder / "epoch=0-step=4.ckpt", (1, 1))  # older than last.ckpt
    (folder / ".last.ckpt.999999999.x.partial").write_bytes(b"half")  # a killed writer's temp file
    trainer = {"logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                          "init_args": {"save_dir": str(tmp_path / "runs"), "name": "r", "version": None}}}
    lines = []
    plan = plan_resume("last", trainer, warn=lines.append)
    assert plan.ckpt_path.endswith("epoch=0-step=4.ckpt") and plan.step == 4 and plan.version == 0
    assert len(lines) == 1 and "last.ckpt" in lines[0] and "epoch=0-step=4.ckpt" in lines[0], lines
    assert not list(folder.glob("*.partial"))
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "epoch=0-step=4.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_missing_data_file_is_named_before_the_model_loads(tmp_path, capsys):
    data = f"  class_path: JsonlPrompts\n  init_args: {{train_path: {tmp_path}/gone.jsonl, batch_size: 2}}"
    assert main(["fit", "--config", str(write_recipe(tmp_path, data))]) == 2
    line = one_line_error(capsys)
    assert "gone.jsonl" in line
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_is_one_line(tmp_path, capsys):
    assert main(["fit", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in one_line_error(capsys)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_adapter_is_named_before_the_model_loads(damage, tmp_path, capsys):
    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    if damage == "truncated":
        weights = adapter / "adapter_model.safetensors"
        save_file({"a": torch.zeros(8, 8)}, str(weights))
        weights.write_bytes(weights.read_bytes()[:40])
    # a model path that does not exist: had the model been loaded first, the error would name it
    rc = main(["eval", "--model", str(tmp_path / "no-model.gguf"), "--adapter", str(adapter), "--dataset",
               "arithmetic", "--dataset_args", '{"digits": 1}', "--limit", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert ("adapter_model.safetensors are damaged" if damage == "truncated" else "no weights") in err, err
