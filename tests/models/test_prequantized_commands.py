"""`qerl eval` and `qerl fit` take a pre-quantized compressed-tensors folder as the model."""
from __future__ import annotations

import json

from qerl.cli import main as qerl_main
from qerl.commands.evaluate import main as eval_main

EVAL = ["--dataset", "arithmetic", "--limit", "2", "--n_samples", "2", "--max_new_tokens", "5", "--dtype", "float32",
        "--system_prompt", "none", "--seed", "4"]


def test_eval_from_a_folder_matches_quantizing_on_load(tmp_path, capsys):
    folder = tmp_path / "tiny-nvfp4-ct"
    assert qerl_main(["quantize", "--model", "tiny", "--dtype", "float32", "--quantizer", "NVFP4", "--output",
                      str(folder), "--format", "compressed-tensors"]) == 0
    assert eval_main(["--model", str(folder), "--quantizer", "NVFP4", *EVAL, "--output_dir", str(tmp_path / "a")]) == 0
    assert eval_main(["--model", "tiny", "--quantizer", "NVFP4", *EVAL, "--output_dir", str(tmp_path / "b")]) == 0
    rows = [(tmp_path / d / "completions.jsonl").read_text().splitlines() for d in ("a", "b")]
    completions = [[json.loads(r)["completion"] for r in part] for part in rows]
    assert len(completions[0]) == 4 and completions[0] == completions[1]  # the same base, bit for bit
    capsys.readouterr()
    assert eval_main(["--model", str(folder), *EVAL, "--output_dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qerl eval: ") and "holds pre-quantized NVFP4 weights" in err and "--quantizer NVFP4" in err
    assert len(err.splitlines()) == 1
    assert qerl_main(["quantize", "--model", str(folder), "--quantizer", "MXFP4", "--output", str(tmp_path / "d")]) == 2
    assert "the quantizer is MXFP4" in capsys.readouterr().err


def test_training_from_a_folder_matches_training_from_quantize_on_load(tmp_path, capsys):
    """Two GRPO steps on a folder written by `qerl quantize` log the very numbers of quantizing the same weights on
    load: the run cannot tell them apart, and the folder's packed base stays as it was."""
    import sys
    from pathlib import Path

    import lightning as L
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rl_helpers import MetricsRecorder, tiny_data, tiny_module, tiny_trainer

    from qerl.models import HFModel
    from qerl.quantizers.layers import QuantLinear

    folder = tmp_path / "tiny-nvfp4-ct"
    assert qerl_main(["quantize", "--model", "tiny", "--dtype", "float32", "--quantizer", "NVFP4", "--output",
                      str(folder), "--format", "compressed-tensors"]) == 0
    capsys.readouterr()
    runs = []
    for name, policy in (("folder", HFModel(str(folder))), ("on-load", None)):
        L.seed_everything(0)
        module = tiny_module(**({"policy": policy} if policy is not None else {}))
        recorder = MetricsRecorder()
        tiny_trainer(tmp_path / name, 2, callbacks=[recorder]).fit(module, tiny_data())
        runs.append((module, recorder.steps))
    (from_folder, steps_a), (_on_load, steps_b) = runs
    base_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("qerl: base: ")]
    assert len(base_lines) == 2, base_lines  # one line per run says how its base was loaded
    assert "pre-quantized NVFP4 layers read as stored (14 layers packed" in base_lines[0] and "base checksum" in \
        base_lines[0] and "RandomInit" in base_lines[1] and "checksum" not in base_lines[1], base_lines
    report = from_folder.policy.last_report
    assert report.checksum_seconds > 0 and report.seconds >= report.checksum_seconds
    assert f"(base checksum {report.checksum_seconds:.1f} s)" in report.summary()
    keys = ("train/loss", "reward/total_mean", "train/grad_norm", "train/entropy")
    assert len(steps_a) == 2 and [[s[k] for k in keys] for s in steps_a] == [[s[k] for k in keys] for s in steps_b]
    packed = [m for m in from_folder.model.modules() if isinstance(m, QuantLinear)]
    assert len(packed) == 14 and all(not any(p.requires_grad for p in m.parameters()) for m in packed)
    reloaded, _ = HFModel(str(folder)).load("NVFP4", dtype="float32")
    for a, b in zip(packed, [m for m in reloaded.modules() if isinstance(m, QuantLinear)]):
        assert torch.equal(a.codes, b.codes) and torch.equal(a.global_scale, b.global_scale)
