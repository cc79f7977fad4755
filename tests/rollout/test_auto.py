"""`Auto` rollout: which engine generates, and the printed reason."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from qerl.rollout import HF, VLLM, Auto, RolloutBackend

ROOT = Path(__file__).resolve().parents[2]
BIG_RECIPES = sorted(ROOT.glob("recipes/qwen2.5-*/*.yaml"))


def test_without_cuda_the_fast_engine_generates_with_the_hf_settings(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend = Auto(vllm={"max_model_len": 512}, hf={"max_batch_rows": 48})
    assert type(backend) is HF and backend.max_batch_rows == 48
    assert "rollouts by HF (no CUDA device" in capsys.readouterr().err


def test_engine_can_be_forced_and_gets_its_own_settings(capsys):
    backend = Auto(vllm={"max_model_len": 640, "max_num_seqs": 24}, engine="VLLM")
    assert type(backend) is VLLM and backend.max_model_len == 640 and backend.max_num_seqs == 24
    assert backend.engine_kwargs["compilation_config"] == {"max_cudagraph_capture_size": 24,
                                                           "cudagraph_specialize_lora": False}
    assert "rollouts by VLLM (the recipe's rollout.init_args.engine)" in capsys.readouterr().err


def test_an_unknown_engine_is_named():
    with pytest.raises(ValueError, match="rollout.init_args.engine.*'vllm2'"):
        Auto(engine="vllm2")


@pytest.mark.parametrize("path", BIG_RECIPES, ids=lambda p: p.parent.name)
def test_the_3b_to_32b_recipes_choose_at_start_up(path, monkeypatch):
    rollout = yaml.safe_load(path.read_text())["model"]["rollout"]
    assert rollout["class_path"] == "Auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert isinstance(Auto(**rollout["init_args"]), HF)
    backend = Auto(**rollout["init_args"], engine="VLLM")
    assert isinstance(backend, RolloutBackend) and backend.enable_sleep_mode == "auto"  # the plan decides
    assert backend.compile is False  # 24 s start for 7B instead of 78-99 s, no cost measured (docs/vllm.md)
    assert backend.gpu_memory_utilization == "auto"  # the engine gets what the start-up plan says it needs


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm")
def test_on_cuda_with_vllm_the_recipes_generate_with_vllm(capsys):
    assert type(Auto()) is VLLM
    assert "rollouts by VLLM (CUDA device and vllm installed" in capsys.readouterr().err
