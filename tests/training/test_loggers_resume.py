"""TensorBoard, CSV and W&B (offline) each continue the same run with `qerl fit --ckpt_path last`, and get the
sample logs in their own form (TB text, CSV rows, a wandb.Table)."""
from __future__ import annotations

import csv
import glob
import json
import os
import textwrap

import pytest
import torch
from rl_helpers import RESUME_RECIPE

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py



def fit_twice(tmp_path, logger: str, init_args: str, after_first=None) -> None:
    """2 steps, then `--ckpt_path last` to step 3: the killed-and-resumed run."""
    from qerl.cli import main

    recipe = tmp_path / "recipe.yaml"
    text = RESUME_RECIPE.format(path=recipe, logger=logger, init_args=init_args, noise="", samples=1)
    recipe.write_text(textwrap.dedent(text))
    assert main(["fit", "--config", str(recipe)]) == 0
    if after_first is not None:
        after_first()
    assert main(["fit", "--config", str(recipe), "--trainer.max_steps=3", "--ckpt_path=last"]) == 0


def last_step(folder) -> int:
    return torch.load(os.path.join(folder, "checkpoints", "last.ckpt"), weights_only=False)["global_step"]


def test_tensorboard_resume_continues_its_version_folder_with_text_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit_twice(tmp_path, "lightning.pytorch.loggers.TensorBoardLogger", f"{{save_dir: {tmp_path}, name: run}}")
    assert sorted(os.listdir(tmp_path / "run")) == ["version_0"] and last_step(tmp_path / "run" / "version_0") == 3
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and len(steps) == 3  # one value per step, none twice
    assert [e.step for e in events.Tensors("samples/text/text_summary")] == [1, 2, 3]


def test_csv_resume_keeps_the_first_runs_rows_and_appends_samples(tmp_path):
    fit_twice(tmp_path, "lightning.pytorch.loggers.CSVLogger", f"{{save_dir: {tmp_path}, name: run}}")
    run = tmp_path / "run" / "version_0"
    assert sorted(os.listdir(tmp_path / "run")) == ["version_0"] and last_step(run) == 3
    with open(run / "metrics.csv") as f:
        loss_steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert loss_steps == sorted(set(loss_steps)) and len(loss_steps) == 3  # the first run's rows survived the resume
    with open(run / "samples.csv") as f:
        samples = list(csv.DictReader(f))
    assert [int(r["step"]) for r in samples] == [1, 2, 3]
    assert all(r["prompt"] and "GSM8KAccuracy" in json.loads(r["scores"]) for r in samples)


def test_wandb_offline_resume_keeps_the_run_id_and_logs_a_samples_table(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit_twice(tmp_path, "lightning.pytorch.loggers.WandbLogger",
              f"{{save_dir: {tmp_path}, project: qerl-test, offline: true}}", after_first=wandb.finish)
    wandb.finish()  # as the process exit would
    project = tmp_path / "qerl-test"
    (run_id,) = os.listdir(project)  # one run folder: the resumed run wrote into the first one
    assert last_step(project / run_id) == 3
    assert (project / run_id / "adapter" / "final" / "adapter_model.safetensors").is_file()  # the run's own folder
    assert {"config.yaml", "config-resume-step2.yaml"} <= set(os.listdir(project / run_id))
    offline = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*")))
    assert len(offline) == 2 and all(path.endswith(f"-{run_id}") for path in offline)  # the same W&B run id
    tables = [glob.glob(os.path.join(path, "files", "media", "table", "samples_*.table.json")) for path in offline]
    assert [len(t) for t in tables] == [2, 1]  # steps 1, 2 in the first process; step 3 after the resume
    with open(tables[1][0]) as f:
        table = json.load(f)
    assert table["columns"][:3] == ["step", "sample", "reward"] and table["data"][0][0] == 3

    from qerl.cli import main  # a new run in the same save_dir: its own run id and folder, its own config.yaml

    assert main(["fit", "--config", str(tmp_path / "recipe.yaml"), "--trainer.max_steps=1"]) == 0
    wandb.finish()
    (new_id,) = set(os.listdir(project)) - {run_id}
    assert last_step(project / new_id) == 1 and (project / new_id / "config.yaml").is_file()


def test_wandb_without_a_login_is_one_line_naming_the_logger_and_leaves_no_run_folder(tmp_path):
    """In a process of its own: wandb keeps its settings (offline mode) per process once a run has started."""
    import subprocess
    import sys

    pytest.importorskip("wandb")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_SILENT="true", PYTHONPATH=root)  # no key from the machine's own login
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(RESUME_RECIPE.format(
        path=recipe, logger="lightning.pytorch.loggers.WandbLogger", init_args=f"{{save_dir: {tmp_path / 'out'}}}",
        noise="", samples=1)))
    done = subprocess.run([sys.executable, "-m", "qerl", "fit", "--config", str(recipe)], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"qerl fit --config {recipe}: error: trainer.logger: WandbLogger could not start"), line
    assert "wandb login" in line and "offline=true" in line, line
    assert not any((tmp_path / "out").rglob("*.ckpt"))  # nothing saved (a missing folder has none)
