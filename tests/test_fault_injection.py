"""kill -9, SIGTERM and SIGINT at chosen points of a short `qerl fit` (tiny random model), then `--ckpt_path last`:
the resumed run logs the same metrics as an uninterrupted one, into the same run folder, each step once. A full
disk at a checkpoint and a read-only output folder end the run with one line and nothing left behind."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
COMPARED = ["train/loss", "train/grad_norm", "reward/total_mean", "train/entropy", "noise/sigma", "train/lr",
            "rollout/length_mean"]


def recipe(save_dir: Path, kill: dict | None = None, hooks: tuple[dict, ...] = ()) -> dict:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"every_n_train_steps": 2, "save_last": True}}]
    if kill:
        callbacks.append({"class_path": "fault_hooks.KillAt", "init_args": kill})
    callbacks.extend(hooks)
    return {
        "seed_everything": 0,
        "trainer": {"max_steps": STEPS, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(save_dir), "name": "fault"}},
                    "callbacks": callbacks},
        "model": {"policy": {"class_path": "RandomInit", "init_args": {"config": "tiny", "seed": 0}},
                  "quantizer": "NVFP4", "lora": {"rank": 4, "alpha": 8.0},
                  "noise": {"class_path": "Exponential",
                            "init_args": {"sigma_start": 0.01, "sigma_end": 0.001, "num_stages": 3}},
                  "algorithm": "GRPO", "rewards": ["rl_helpers.DigitReward"],
                  "sampling": {"n": 4, "max_new_tokens": 6, "temperature": 1.0},
                  "optimizer": {"lr": 0.01, "warmup_steps": 2}, "dtype": "float32", "micro_batch_size": 8,
                  "log_samples_every": 0},
        "data": {"class_path": "Arithmetic",
                 "init_args": {"digits": 1, "batch_size": 2, "num_train": 8, "num_test": 4, "val_size": 0}},
    }


def fit_command(folder: Path, config: dict, *extra: str, tmpdir: Path | None = None) -> tuple[list[str], dict]:
    """The argv and environment of `qerl fit` on `config` (written to `folder/recipe.yaml`), run in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("QERL_DEBUG", None)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return [sys.executable, "-m", "qerl.cli", "fit", "--config", str(path), *extra], env


def qerl_fit(folder: Path, config: dict, *extra: str, tmpdir: Path | None = None) -> subprocess.CompletedProcess:
    argv, env = fit_command(folder, config, *extra, tmpdir=tmpdir)
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600, check=False)


def logged(version_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every compared tag's (step, value) as TensorBoard shows it (purged restarts applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(version_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in COMPARED}


def partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(".partial")]


def assert_same_run(resumed: dict, baseline: dict) -> None:
    for tag in COMPARED:
        steps = [s for s, _ in resumed[tag]]
        assert steps == list(range(STEPS)), (tag, steps)  # one folder, each step once
        for (step, value), (_, expected) in zip(resumed[tag], baseline[tag], strict=True):
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-7), (tag, step, value, expected)
    assert any(v > 0 for _, v in baseline["train/grad_norm"])  # not a comparison of all-zero runs


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory) -> Path:
    """The version folder of the uninterrupted run."""
    folder = tmp_path_factory.mktemp("straight")
    done = qerl_fit(folder, recipe(folder / "runs"))
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "runs" / "fault" / "version_0"


@pytest.fixture(scope="module")
def baseline(baseline_run) -> dict:
    return logged(baseline_run)


def test_kill_between_checkpoints_then_resume_matches_the_uninterrupted_run(baseline, tmp_path):
    runs = tmp_path / "runs"
    killed = qerl_fit(tmp_path, recipe(runs, kill={"step": 3}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done = qerl_fit(tmp_path, recipe(runs), "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (runs / "fault").iterdir()) == ["version_0"]
    assert_same_run(logged(runs / "fault" / "version_0"), baseline)
    assert "Warning" not in done.stderr, done.stderr[-3000:]  # no library warning on an exact resume


def other_filesystem_than(path: Path) -> Path | None:
    """A writable folder on a filesystem other than `path`'s (/dev/shm, a tmpfs), or None."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(path).st_dev:
        return shm
    return None


def test_kill_while_last_ckpt_is_written_run_folder_and_tmpdir_on_different_filesystems(baseline, tmp_path):
    fast = other_filesystem_than(tmp_path)
    if fast is None:
        pytest.skip("needs /dev/shm on a filesystem other than the temp folder's, to put the run folder and TMPDIR "
                    "on different filesystems")
    from qerl.training.checkpoint_io import read_checkpoint

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    runs = Path(tempfile.mkdtemp(prefix="qerl-fault-", dir=fast))
    try:
        killed = qerl_fit(tmp_path, recipe(runs, kill={"step": 4, "during_save": 2}), tmpdir=tmpdir)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        checkpoints = runs / "fault" / "version_0" / "checkpoints"
        assert len(partial_files(checkpoints)) == 1  # the half-written last.ckpt, beside it, not in TMPDIR
        assert read_checkpoint(str(checkpoints / "last.ckpt"))["global_step"] == 2  # the old one, whole
        assert read_checkpoint(str(checkpoints / "epoch=0-step=4.ckpt"))["global_step"] == 4

        done = qerl_fit(tmp_path, recipe(runs), "--ckpt_path", "last", tmpdir=tmpdir)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "epoch=0-step=4.ckpt" in done.stderr  # the newest intact checkpoint, not the older last.ckpt
        assert partial_files(runs) == [] and list(tmpdir.rglob("*.ckpt")) == []
        assert read_checkpoint(str(checkpoints / "last.ckpt"))["global_step"] == STEPS
        assert_same_run(logged(runs / "fault" / "version_0"), baseline)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def lora_weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def signal_mid_step(folder: Path, config_hooks: tuple[dict, ...], runs: Path, marker: Path, signum: int):
    """Run `qerl fit`, send it `signum` once `marker` exists (written by `fault_hooks.WaitForSignalAt`);
    (exit status, stderr)."""
    argv, env = fit_command(folder, recipe(runs, hooks=config_hooks))
    process = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 500
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), process.communicate(timeout=60)[1][-3000:]
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_a_signal_before_the_first_step_finished_stops_at_once_and_leaves_no_run_folder(tmp_path):
    runs, marker = tmp_path / "runs", tmp_path / "in-step"
    hook = {"class_path": "fault_hooks.WaitForSignalAt", "init_args": {"step": 0, "marker": str(marker)}}
    status, stderr = signal_mid_step(tmp_path, (hook,), runs, marker, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "stopped by SIGTERM before a step of this run finished: nothing new to save" in stderr
    assert not runs.exists()  # the fresh run folder is removed, with the runs/fault/ folders it made


@pytest.mark.parametrize(("signum", "after_step"), [(signal.SIGTERM, 3), (signal.SIGINT, 5)])
def test_a_real_signal_mid_step_saves_that_step_and_the_adapter_and_resumes_exactly(baseline_run, baseline, tmp_path,
                                                                                    signum, after_step):
    """The signal arrives during step `after_step` (not a checkpoint step of the recipe): the step finishes, its
    checkpoint and adapter are written, the exit status is 128 + the signal; the resume matches the straight run."""
    runs, marker = tmp_path / "runs", tmp_path / "in-step"
    hook = {"class_path": "fault_hooks.WaitForSignalAt", "init_args": {"step": after_step - 1, "marker": str(marker)}}
    status, stderr = signal_mid_step(tmp_path, (hook,), runs, marker, signum)
    assert status == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr and "Warning" not in stderr and "weights_only" not in stderr, stderr[-3000:]
    version = runs / "fault" / "version_0"
    checkpoint = version / "checkpoints" / "last.ckpt"
    from qerl.training.checkpoint_io import read_checkpoint

    assert read_checkpoint(str(checkpoint))["global_step"] == after_step
    adapter = version / "adapter" / f"step-{after_step}"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    name = signal.Signals(signum).name
    assert f"stopped by {name} after step {after_step}; saved checkpoint {checkpoint}, adapter {adapter}." in stderr
    assert "resume with: qerl fit --config" in stderr and stderr.rstrip().endswith("--ckpt_path last"), stderr[-800:]

    done = qerl_fit(tmp_path, recipe(runs), "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (runs / "fault").iterdir()) == ["version_0"]
    assert_same_run(logged(version), baseline)
    resumed, straight = lora_weights(checkpoint), lora_weights(baseline_run / "checkpoints" / "last.ckpt")
    assert resumed.keys() == straight.keys() and resumed
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_full_disk_at_a_checkpoint_names_it_and_the_intact_earlier_one(tmp_path):
    """From step 4's checkpoint on the disk is full (a fake filesystem layer at the real write): one line, exit 1,
    no temp file; the step-2 checkpoints stay intact and the run resumes from them."""
    runs = tmp_path / "runs"
    full = qerl_fit(tmp_path, recipe(runs, hooks=({"class_path": "fault_hooks.DiskFullAt",
                                                  "init_args": {"step": 4, "free": 4096}},)))
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    checkpoints = runs / "fault" / "version_0" / "checkpoints"
    errors = [line for line in full.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, full.stderr[-3000:]
    assert f"checkpoint {checkpoints / 'epoch=0-step=4.ckpt'} was not written: no space left on the device" in errors[0]
    assert re.search(r"it needs \d[\d,.]* MiB, [\d,.]+ [MG]iB free there", errors[0]), errors[0]
    assert f"the earlier checkpoint {checkpoints / 'last.ckpt'} (step 2) is intact" in errors[0], errors[0]
    assert partial_files(runs) == [] and not (checkpoints / "epoch=0-step=4.ckpt").exists()
    from qerl.training.checkpoint_io import read_checkpoint

    assert read_checkpoint(str(checkpoints / "last.ckpt"))["global_step"] == 2


def read_only(folder: Path) -> list[dict]:
    """Make `folder` read-only for a `qerl fit` subprocess: chmod where that stops writes (not root), else the fake
    filesystem layer of `fault_hooks.ReadOnlyFolder` (root writes through any mode bits)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    return [{"class_path": "fault_hooks.ReadOnlyFolder", "init_args": {"folder": str(folder)}}]


def test_a_read_only_output_folder_is_named_before_the_model_loads(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        hooks = read_only(runs)
        done = qerl_fit(tmp_path, recipe(runs, hooks=tuple(hooks)))
    finally:
        runs.chmod(0o755)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"qerl fit --config {tmp_path / 'recipe.yaml'}: error: cannot write the run folder "
                           f"{runs / 'fault' / 'version_0'} (it would be created in {runs}): {runs} is not writable ("), line
    assert "choose a writable --trainer.logger.init_args.save_dir" in line
    assert "memory plan" not in done.stdout  # stopped before the model was built
    assert list(runs.iterdir()) == []  # nothing left behind
