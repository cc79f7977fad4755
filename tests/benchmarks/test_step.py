"""benchmarks/step.py with `--aqn`: a tiny CPU row carries the recipe's AQN noise in its rollout, as `qerl fit` does."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROW = ["--rows", "tiny:nvfp4:8:8:2", "--micro-batch", "8"]


def load_script():
    spec = importlib.util.spec_from_file_location("step_bench", os.path.join(ROOT, "benchmarks", "step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def norms(policy) -> torch.Tensor:
    from step_aqn import targeted_snapshot

    return targeted_snapshot(policy)


def run_row(tmp_path, monkeypatch, *flags):
    """Run one tiny CPU row of step.py; return (its JSON row, the policy, the norms right after building, the norms
    each generation ran with)."""
    from qerl.rollout.hf import HF

    script = load_script()
    seen = {"generating": []}
    build = script.build

    def recording_build(*args, **kwargs):
        policy, *rest = build(*args, **kwargs)
        seen["policy"], seen["clean"] = policy, norms(policy)
        return (policy, *rest)

    generate = HF.generate

    def recording_generate(self, prompt_ids, sampling):
        seen["generating"].append(norms(self.policy))
        return generate(self, prompt_ids, sampling)

    monkeypatch.setattr(script, "build", recording_build)
    monkeypatch.setattr(HF, "generate", recording_generate)
    monkeypatch.setattr(sys, "argv", ["step.py", *ROW, "--out", str(tmp_path), *flags])
    script.main()
    (path,) = glob.glob(str(tmp_path / "step-*.json"))
    with open(path) as f:
        (row,) = json.load(f)["rows"]
    return row, seen["policy"], seen["clean"], seen["generating"]


def test_a_tiny_row_with_aqn_generates_with_the_recipes_noise_and_restores_the_norms_exactly(tmp_path, monkeypatch):
    row, policy, clean, generating = run_row(tmp_path, monkeypatch, "--aqn")
    assert row["status"] == "ok"
    aqn = row["aqn"]
    # the 7B recipe's schedule, as `qerl fit` builds it: Exponential 1e-2 -> 5e-4 in 10 stages of a 500-step run;
    # stage 0 is noise-free, so the row starts at step 50 (stage 1: sigma_start)
    assert aqn["on"] and aqn["schedule"] == \
        "Exponential(relative=False, sigma_start=0.01, sigma_end=0.0005, num_stages=10)"
    assert (aqn["total_steps"], aqn["first_step"], aqn["seed"], aqn["in_training"]) == (500, 50, 0, False)
    assert [s["step"] for s in aqn["steps"]] == [50, 51]
    # the norms are float32 from the start (as build_policy(noise=True)), and every channel moved while generating
    assert clean.numel() == 2 * 2 * 64 and policy.get_submodule(
        "base_model.model.model.layers.0.input_layernorm").weight.dtype == torch.float32
    assert len(generating) == 2
    for step, during in zip(aqn["steps"], generating, strict=True):
        change = during - clean
        assert step["noise/sigma"] == 0.01
        assert step["noise/moved_fraction"] == 1.0 and bool((change != 0).all())
        # the logged realized sigma is what the generating weights really carried
        assert step["noise/realized_sigma"] == pytest.approx(float(change.std(correction=0)), rel=1e-9)
        assert 0.0085 < step["noise/realized_sigma"] < 0.0115  # sigma 1e-2 over 256 channels
        assert step["noise/row_sigma"] == pytest.approx(float((change / clean).std(correction=0)), rel=1e-9)
        assert step["norms_restored"] is True
    assert not torch.equal(generating[0], generating[1])  # each step its own seed, its own Z
    assert torch.equal(norms(policy), clean)  # restored bit-exactly after the row
    assert row["noise"] == {k: v for k, v in aqn["steps"][-1].items() if k.startswith("noise/")}
    assert row["aqn_s"] > 0


def test_a_row_without_aqn_keeps_the_norms_in_the_models_dtype_and_records_aqn_off(tmp_path, monkeypatch):
    row, policy, clean, generating = run_row(tmp_path, monkeypatch)
    assert row["status"] == "ok" and row["aqn"] == {"on": False} and row["noise"] is None and row["aqn_s"] == 0.0
    assert policy.get_submodule("base_model.model.model.layers.0.input_layernorm").weight.dtype == torch.bfloat16
    assert all(torch.equal(during, clean) for during in generating)


def test_aqn_relative_takes_the_recipes_schedule_with_relative_noise_drawn_by_noise_callback():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from step_aqn import StepNoise

    noise = StepNoise(relative=True)
    assert noise.schedule.relative and noise.schedule.sigma_start == 0.01 and noise.first_step == 50
    draw = noise.begin_step(1)  # global step 51: still stage 1
    assert (draw.sigma, draw.relative, draw.seed) == (0.01, True, noise.callback.seed_for(51))
    assert noise.module.logged == {"noise/sigma": 0.01}
    later = StepNoise(first_step=100).begin_step(0)  # stage 2: 1e-2 * (5e-4 / 1e-2) ** (1 / 8)
    assert later.sigma == pytest.approx(0.01 * 0.05 ** (1 / 8)) and not later.relative


@pytest.mark.parametrize(("flags", "message"), [
    (["--aqn-relative"], "--aqn-relative and --aqn-step need --aqn"),
    (["--aqn", "--synthetic-rollout"], "--aqn needs a rollout"),
])
def test_aqn_flags_that_cannot_work_are_refused_before_any_work(monkeypatch, capsys, flags, message):
    script = load_script()
    monkeypatch.setattr(sys, "argv", ["step.py", *ROW, *flags])
    with pytest.raises(SystemExit) as exc:
        script.main()
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_packed_rows_compute_one_prompt_per_group_by_segments_or_by_the_mask(tmp_path, monkeypatch):
    rows = {}
    for name, flags in {"padded": [], "segments": ["--pack-groups", "--pack-attention", "segments"],
                        "mask": ["--pack-groups", "--pack-attention", "mask"],
                        "batched": ["--pack-groups", "--pack-attention", "batched"]}.items():
        out = tmp_path / name
        out.mkdir()
        rows[name] = run_row(out, monkeypatch, *flags)[0]
        assert rows[name]["status"] == "ok"
    assert [rows[n]["layout"] for n in rows] == ["rows", "packed_groups-segments", "packed_groups-mask",
                                                 "packed_groups-segments-batched"]
    assert rows["segments"]["decoder_positions"] == rows["mask"]["decoder_positions"] \
        == rows["batched"]["decoder_positions"] < rows["padded"]["decoder_positions"]


def test_pack_attention_without_pack_groups_is_refused(monkeypatch, capsys):
    script = load_script()
    monkeypatch.setattr(sys, "argv", ["step.py", *ROW, "--pack-attention", "mask"])
    with pytest.raises(SystemExit) as exc:
        script.main()
    assert exc.value.code == 2 and "--pack-attention needs --pack-groups" in capsys.readouterr().err


@pytest.mark.parametrize(("aqn", "unit"), [([], "group"), (["--aqn"], "group"), ([], "completion")],
                         ids=["no-noise", "aqn", "by-completion"])
def test_a_row_trained_during_the_rollout_takes_the_same_update(tmp_path, monkeypatch, aqn, unit):
    rows = {}
    for name, flags in {"after": [*aqn], "during": [*aqn, "--train-during-rollout", "--train-unit", unit]}.items():
        out = tmp_path / name
        out.mkdir()
        rows[name], policy, clean, _ = run_row(out, monkeypatch, *flags)
        assert rows[name]["status"] == "ok" and rows[name]["train_during_rollout"] == (name == "during")
        assert rows[name]["train_unit"] == (unit if name == "during" else None)
        assert torch.equal(norms(policy), clean)  # the generation's noise never stays on the trained policy
    # the CPU rows generate with the fast engine, which hands the groups over after the whole batch: none overlap
    assert rows["during"]["groups_under_rollout"] == 0 and rows["after"]["groups_under_rollout"] is None
    assert rows["during"]["losses"] == pytest.approx(rows["after"]["losses"], rel=1e-5, abs=1e-7)
    assert rows["during"]["completion_tokens"] == rows["after"]["completion_tokens"]
    assert rows["during"]["aqn"] == rows["after"]["aqn"]  # the same noise drawn, realized and restored


def test_a_row_trained_during_the_rollout_refuses_a_sleeping_engine():
    """Two H100 rows (2026-12-07) timed plain steps under `--train-during-rollout`: the engine slept, so nothing
    trained under the rollout. Such a row is now refused, naming the flag and what to use."""
    load_script()  # puts benchmarks/ on sys.path
    from step_overlap import check_awake

    from qerl.rollout import VLLM

    check_awake(VLLM(enable_sleep_mode=False), "off")
    awake = VLLM(enable_sleep_mode="auto")
    awake.resolved_sleep_mode = False  # the plan kept it awake (its KV cache cut to fit)
    check_awake(awake, "auto")
    with pytest.raises(SystemExit, match=r"--vllm-sleep on\), so nothing would train under the rollout"):
        check_awake(VLLM(enable_sleep_mode=True), "on")
