"""Our E2M1/MXFP4 encoders against torch's own reference conversions (torch.testing._internal.common_quantized).

torch 2.13 has the `float4_e2m1fn_x2` dtype but no CPU cast to it; its test-suite reference functions
(`_f32_to_floatx_unpacked`, `_bfloat16_to_float4_e2m1fn_x2`, `to_mxfp`) are what produce it. They import
`expecttest` (a torch test dependency, in qerl's dev extras).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("expecttest")
from torch.testing._internal.common_quantized import (
    _bfloat16_to_float4_e2m1fn_x2,
    _f32_to_floatx_unpacked,
    to_mxfp,
)

from qerl.quantizers import MXFP4
from qerl.quantizers.e2m1 import encode_e2m1, pack_nibbles, unpack_nibbles


def _e2m1_probe() -> torch.Tensor:
    """Every grid point, every midpoint (the ties), their float32 neighbours, out-of-range and random values."""
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    mids = (grid[1:] + grid[:-1]) / 2
    pts = torch.cat([grid, mids, torch.tensor([6.5, 7.0, 8.0, 1e6])])
    pts = torch.cat([pts, torch.nextafter(pts, torch.tensor(-1.0)), torch.nextafter(pts, torch.tensor(1e9))])
    pts = torch.cat([pts, torch.rand(4000, generator=torch.Generator().manual_seed(0)) * 7])
    return torch.cat([pts, -pts]).clamp(-6e6, 6e6)


def test_e2m1_encode_matches_torch_reference_rne():
    x = _e2m1_probe()
    ours = encode_e2m1(x)
    ref = _f32_to_floatx_unpacked(x.clamp(-6, 6), 2, 1)  # torch's float -> e2m1 bits (RNE)
    assert torch.equal(ours, ref)


def test_packing_matches_torch_float4_e2m1fn_x2():
    x = (torch.randn(8, 64, generator=torch.Generator().manual_seed(1)) * 3).to(torch.bfloat16)
    ours = pack_nibbles(encode_e2m1(x.float()))
    ref = _bfloat16_to_float4_e2m1fn_x2(x.clamp(-6, 6))
    assert ref.dtype == torch.float4_e2m1fn_x2
    assert torch.equal(ours, ref.view(torch.uint8))
    assert torch.equal(unpack_nibbles(ours), encode_e2m1(x.float()))


def test_mxfp4_ceil_matches_torch_to_mxfp_rceil():
    w = (torch.randn(64, 256, generator=torch.Generator().manual_seed(4)) * 0.02).to(torch.bfloat16)
    ref_scale, ref_data = to_mxfp(w, block_size=32, format="mxfp4")
    qw = MXFP4(rounding="ceil").quantize(w)
    assert torch.equal(qw.tensors["scales"], ref_scale.view(torch.uint8))
    assert torch.equal(qw.tensors["codes"], ref_data.view(torch.uint8))
