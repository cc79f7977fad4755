"""`qerl.rollout.vllm.host_copy.to_host`: the adapter snapshot handed to the vLLM engine - the same numbers as a copy per
tensor, cast to the engine's LoRA dtype, one pinned transfer per dtype from a GPU, never aliasing the sources."""
from __future__ import annotations

import pytest
import torch

from qerl.rollout.vllm.host_copy import to_host


def adapter_like(device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"q.lora_A.weight": (8, 64), "q.lora_B.weight": (96, 8), "down.lora_A.weight": (8, 160),
              "down.lora_B.weight": (64, 8), "norm.weight": (64,)}
    return {n: torch.randn(s, generator=g).to(device) for n, s in shapes.items()}


def check_copy(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    got = to_host(tensors, dtype)
    assert list(got) == list(tensors)  # same order: vLLM reads the adapter in the order peft wrote it
    for name, source in tensors.items():
        want = source.detach().to("cpu", dtype or source.dtype)
        assert got[name].device.type == "cpu" and got[name].shape == source.shape
        assert got[name].dtype == (dtype or source.dtype)
        assert torch.equal(got[name], want)  # the device's cast rounds as the CPU's does: bit for bit
    with torch.no_grad():
        for source in tensors.values():
            source.add_(1.0)  # the next optimizer step must not reach the snapshot the engine holds
    for name, source in tensors.items():
        assert not torch.equal(got[name], source.to("cpu", got[name].dtype))
    return got


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float32])
def test_cpu_tensors_are_copied_and_cast(dtype):
    tensors = adapter_like("cpu")
    got = check_copy(tensors, dtype)
    if dtype == torch.bfloat16:  # a real cast: float32 values rounded to bf16, not kept
        assert not torch.equal(got["q.lora_A.weight"].float(), adapter_like("cpu")["q.lora_A.weight"])


def test_mixed_dtypes_keep_their_own_without_a_target():
    tensors = {"a": torch.ones(3, dtype=torch.float32), "b": torch.full((2, 2), 2.0, dtype=torch.bfloat16)}
    got = to_host(tensors)
    assert got["a"].dtype == torch.float32 and got["b"].dtype == torch.bfloat16
    assert got["a"].tolist() == [1.0, 1.0, 1.0] and got["b"].sum().item() == 8.0
    assert to_host({}) == {}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_gpu_tensors_come_over_in_one_pinned_buffer(dtype):
    tensors = adapter_like("cuda")
    got = check_copy(tensors, dtype)
    storages = {t.untyped_storage().data_ptr() for t in got.values()}
    assert len(storages) == 1 and all(t.is_pinned() for t in got.values())  # one transfer, pinned
    again = to_host(tensors, dtype)  # a second snapshot never shares the first one's buffer
    assert {t.untyped_storage().data_ptr() for t in again.values()}.isdisjoint(storages)
