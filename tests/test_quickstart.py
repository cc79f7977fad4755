"""The quickstart recipe with the real SmolLM2: `qerl demo` runs two RL steps of it and reports start and end numbers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def test_demo_summary_reads_start_and_end_from_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from qerl.commands.demo import summary

    writer = SummaryWriter(str(tmp_path))
    for step, (reward, acc) in enumerate([(0.0, 0.0), (0.2, 0.1), (0.6, 0.5), (1.0, 0.9)]):
        writer.add_scalar("reward/total_mean", reward, step)
        writer.add_scalar("train/accuracy", acc, step)
    writer.close()
    text = summary(str(tmp_path), window=2)
    assert "reward    start  0.100  ->  end  0.800" in text
    assert "accuracy  start  0.050  ->  end  0.700" in text


@pytest.mark.slow
def test_quickstart_runs_two_steps_through_qerl_demo(tmp_path, monkeypatch, capsys, smollm2_path):
    from qerl.commands.demo import main

    monkeypatch.chdir(tmp_path)  # the recipe logs and checkpoints under ./runs
    rc = main(["--config", str(QUICKSTART), "--trainer.max_steps=2", "--data.init_args.batch_size=2",
               "--model.sampling.n=4", "--model.sampling.max_new_tokens=4", "--model.log_samples_every=1"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, captured.err[-3000:]
    assert "2 RL steps" in out and "accuracy  start" in out and "reward    start" in out
    log_dir = tmp_path / "runs" / "quickstart" / "version_0"
    assert f"TensorBoard logs: {os.path.relpath(log_dir, tmp_path)}" in out or str(log_dir) in out
    assert (log_dir / "adapter" / "final" / "adapter_model.safetensors").is_file()
