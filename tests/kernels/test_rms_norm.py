"""The float32-weight RMSNorm kernels against vLLM's native definition of the ops they replace in the engine.

Interpreted on the CPU (TRITON_INTERPRET=1, set by conftest), compiled on CUDA (the `gpu` tests: real hidden sizes).
"""
from __future__ import annotations

import pytest
import torch

from qerl.kernels import rms_norm

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def native_rms_norm(x, weight, eps):  # vllm/ir/ops/layernorm.py's arithmetic, written out
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (y.to(weight.dtype) * weight).to(x.dtype)


def native_fused(x, residual, weight, eps):
    s = x.float() + residual.float()
    y = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (y * weight).to(x.dtype), s.to(x.dtype)


def exact_share(dtype) -> float:
    """The share of outputs bit-equal to the native op's: the reductions' order differs (a last-bit tie now and
    then); Triton's CPU interpreter rounds float32 -> bfloat16 towards zero (CUDA to nearest), so there only the
    one-step bound holds for bf16."""
    return 0.95 if dtype == torch.float16 or DEV == "cuda" else 0.0


def ulps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable steps of the tensors' dtype lie between a and b (same-sign values)."""
    view = torch.int16 if a.dtype in (torch.bfloat16, torch.float16) else torch.int32
    return (a.view(view).int() - b.view(view).int()).abs()


def inputs(rows: int, hidden: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, hidden, generator=g) * 3).to(dtype).to(DEV)
    residual = torch.randn(rows, hidden, generator=g).to(dtype).to(DEV)
    # a norm weight near 1 carrying AQN noise below bf16's resolution: what the float32 weight is for
    weight = (1 + 5e-4 * torch.randn(hidden, generator=g)).float().to(DEV)
    return x, residual, weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("rows", "hidden"), [(5, 96), (3, 64), (1, 200)])
def test_rms_norm_matches_the_native_op_to_one_rounding(dtype, rows, hidden):
    x, _, weight = inputs(rows, hidden, dtype)
    out = rms_norm.rms_norm_f32w(x, weight, 1e-6)
    ref = native_rms_norm(x, weight, 1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    apart = ulps_apart(out, ref)
    assert int(apart.max()) <= 1 and float((apart == 0).float().mean()) >= exact_share(dtype)
    # the float32 weight is what arrives: rounding it to the activations' dtype first gives another result
    assert not torch.equal(out, native_rms_norm(x, weight.to(dtype), 1e-6))


def test_rms_norm_keeps_leading_dimensions_and_reads_strided_rows():
    x, _, weight = inputs(6, 64, torch.bfloat16)
    wide = torch.cat([x, x], dim=1)[:, :64]  # rows with a stride of 128 (a q/k/v split): read in place
    assert torch.equal(rms_norm.rms_norm_f32w(wide, weight, 1e-5), rms_norm.rms_norm_f32w(x, weight, 1e-5))
    columns = x.t().contiguous().t()  # last dimension not contiguous: copied first, same result
    assert torch.equal(rms_norm.rms_norm_f32w(columns, weight, 1e-5), rms_norm.rms_norm_f32w(x, weight, 1e-5))
    three = rms_norm.rms_norm_f32w(x.view(2, 3, 64), weight, 1e-5)
    assert three.shape == (2, 3, 64) and torch.equal(three.reshape(6, 64), rms_norm.rms_norm_f32w(x, weight, 1e-5))
    assert rms_norm.rms_norm_f32w(x[:0], weight, 1e-5).shape == (0, 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_add_writes_the_rounded_sum_back_and_normalizes_the_float32_sum(dtype):
    x, residual, weight = inputs(4, 96, dtype, seed=1)
    ref_out, ref_res = native_fused(x, residual, weight, 1e-6)
    x_in, res_in = x.clone(), residual.clone()
    out, res = rms_norm.fused_add_rms_norm_f32w_(x_in, res_in, weight, 1e-6)
    assert out.data_ptr() == x_in.data_ptr() and res.data_ptr() == res_in.data_ptr()  # in place, as vllm_c's
    assert int(ulps_apart(res, ref_res).max()) <= (0 if exact_share(dtype) else 1)  # the sum, rounded once
    apart = ulps_apart(out, ref_out)
    assert int(apart.max()) <= 1 and float((apart == 0).float().mean()) >= exact_share(dtype)


def test_the_kernels_take_only_a_float32_weight_over_half_precision_rows():
    x, _, weight = inputs(2, 64, torch.bfloat16)
    assert rms_norm.supports(x, weight)
    assert not rms_norm.supports(x, weight.to(torch.bfloat16))  # vLLM's own kernel takes that
    assert not rms_norm.supports(x.float(), weight)
    assert not rms_norm.supports(x, None)
    assert not rms_norm.supports(x.t(), weight[:2])  # last dimension not contiguous
    assert not rms_norm.supports(x, weight[:32])
    with pytest.raises(ValueError, match="last dimension is contiguous"):
        rms_norm.fused_add_rms_norm_f32w_(x.t().contiguous().t(), x.clone(), weight, 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [896, 3584, 5120])  # 0.5B, 7B, 32B
@pytest.mark.parametrize("rows", [1, 8, 256, 4096])
def test_gpu_real_hidden_sizes_match_the_native_op(rows, hidden):
    x, residual, weight = inputs(rows, hidden, torch.bfloat16)
    apart = ulps_apart(rms_norm.rms_norm_f32w(x, weight, 1e-6), native_rms_norm(x, weight, 1e-6))
    assert int(apart.max()) <= 1
    ref_out, ref_res = native_fused(x, residual, weight, 1e-6)
    out, res = rms_norm.fused_add_rms_norm_f32w_(x.clone(), residual.clone(), weight, 1e-6)
    assert torch.equal(res, ref_res) and int(ulps_apart(out, ref_out).max()) <= 1


@pytest.mark.gpu
def test_gpu_the_fast_engine_norm_takes_the_kernel_for_a_float32_weight():
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    from qerl.rollout.fast.blocks import rms_norm as fast_rms_norm

    x, _, weight = inputs(8, 3584, torch.bfloat16)
    norm = Qwen2RMSNorm(3584, eps=1e-6).cuda()
    norm.weight.data = weight  # float32, as AQN keeps it
    two_casts = torch.nn.functional.rms_norm(x.float(), (3584,), weight=weight, eps=1e-6).to(x.dtype)
    assert int(ulps_apart(fast_rms_norm(norm, x), two_casts).max()) <= 1
