"""Bit-exactness of the 4-bit formats: against torch's own dtype conversions and hand-computed blocks."""
from __future__ import annotations

import pytest
import torch

from qerl.quantizers import MXFP4, NF4, NVFP4, QuantizationError
from qerl.quantizers.e2m1 import decode_e2m1, encode_e2m1, pack_nibbles, unpack_nibbles
from qerl.quantizers.nf4 import NF4_CODEBOOK


def test_e2m1_ties_go_to_even_and_saturate():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.25, -5.0, -100.0])
    assert decode_e2m1(encode_e2m1(x)).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.0, -4.0, -6.0]


def test_nvfp4_hand_computed_block():
    # one row, one block of 16: amax 6 -> global 6/(6*448) = 1/448; block scale e4m3(6/6*448) = 448
    row = torch.tensor([[6.0, -3.0, 1.0, 0.26, 0.24, 2.5, -1.25, 0, 4.4, 5.1, 0.75, -0.76, 1.75, 3.4, 3.6, -6.0]])
    qw = NVFP4().quantize(row)
    assert qw.tensors["global_scale"].item() == (torch.tensor(6.0) / (6 * 448)).item()
    assert qw.tensors["scales"].float().item() == 448.0
    expect = [6.0, -3.0, 1.0, 0.5, 0.0, 2.0, -1.0, 0.0, 4.0, 6.0, 1.0, -1.0, 2.0, 3.0, 4.0, -6.0]
    assert qw.dequantize(torch.float32).flatten().tolist() == pytest.approx(expect, rel=1e-6)


def test_nvfp4_scales_are_torch_e4m3_of_the_definition():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(2)) * torch.logspace(-3, 1, 32)[:, None]
    qw = NVFP4().quantize(w)
    g = w.abs().amax() / (6 * 448)
    assert torch.equal(qw.tensors["global_scale"], g)
    block_amax = w.reshape(32, -1, 16).abs().amax(-1)
    assert qw.tensors["scales"].dtype == torch.float8_e4m3fn
    assert torch.equal(qw.tensors["scales"].view(torch.uint8), (block_amax / 6 / g).to(torch.float8_e4m3fn).view(torch.uint8))
    s = qw.tensors["scales"].float() * g
    codes = encode_e2m1(w.reshape(32, -1, 16) / s[..., None]).reshape(32, 128)
    assert torch.equal(qw.tensors["codes"], pack_nibbles(codes))
    assert torch.equal(qw.dequantize(torch.float32), (decode_e2m1(codes).reshape(32, -1, 16) * s[..., None]).reshape(32, 128))


def test_mxfp4_floor_hand_computed_block_clips_between_6x_and_8x():
    # amax 7 -> floor(log2 7) = 2 -> X = 2^0 = 1: 7 clips to 6, 6.9 clips too, 0.25 ties to 0
    block = torch.tensor([[7.0, 6.9, -5.1, 3.3, 0.25, 0.75] + [0.0] * 26])
    qw = MXFP4().quantize(block)
    assert qw.tensors["scales"].tolist() == [[127]]
    assert qw.dequantize(torch.float32)[0, :6].tolist() == [6.0, 6.0, -6.0, 3.0, 0.0, 1.0]
    # ceil mode: X = 2^ceil(log2(7/6)) = 2 -> nothing clips; 7/2 = 3.5 ties to 4 (even), 0.75/2 -> 0.5
    qc = MXFP4(rounding="ceil").quantize(block)
    assert qc.tensors["scales"].tolist() == [[128]]
    assert qc.dequantize(torch.float32)[0, :6].tolist() == [8.0, 6.0, -6.0, 3.0, 0.0, 1.0]


def test_mxfp4_scales_are_e8m0_bits():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(3)) * torch.logspace(-6, 3, 16)[:, None]
    qw = MXFP4().quantize(w)
    scale = qw.tensors["scales"].view(torch.float8_e8m0fnu).float()
    amax = w.reshape(16, -1, 32).abs().amax(-1)
    assert torch.equal(scale, torch.exp2(torch.floor(torch.log2(amax)) - 2))
    codes = unpack_nibbles(qw.tensors["codes"])
    assert torch.equal(qw.dequantize(torch.float32), (decode_e2m1(codes).reshape(16, -1, 32) * scale[..., None]).reshape(16, 256))


def test_mxfp4_ceil_never_clips_and_floor_does():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(5))
    amax = w.reshape(64, -1, 32).abs().amax(-1)
    step = lambda q: torch.exp2(q.tensors["scales"].float() - 127)
    ceil, floor = MXFP4(rounding="ceil").quantize(w), MXFP4().quantize(w)
    assert torch.all(amax <= 6 * step(ceil))  # ceil: the block max fits the E2M1 range, nothing clips
    assert torch.all(amax > 3 * step(ceil))  # ... and the scale is the smallest power of two that fits
    assert (amax > 6 * step(floor)).float().mean() > 0.2  # the spec rule clips a good share of blocks
    assert (step(ceil) == 2 * step(floor)).any()


def test_nf4_hand_computed_block():
    book = torch.tensor(NF4_CODEBOOK)
    row = torch.cat([book * 2.0, torch.tensor([0.05, -0.05, 0.999, 0.0])] * 3 + [torch.tensor([0.0] * 4)]).reshape(1, 64)
    qw = NF4().quantize(row)
    assert qw.tensors["scales"].tolist() == [[2.0]]
    got = qw.dequantize(torch.float32)[0]
    assert torch.equal(got[:16], book * 2.0)  # codebook points map to themselves
    assert got[16:20].tolist() == pytest.approx([0.0, 0.0, 2 * 0.44070982933044434, 0.0])  # 0.025 -> 0, 0.4995 -> 0.4407


def test_nf4_double_quant_decodes_absmax_closely():
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(6))
    plain, dq = NF4().quantize(w), NF4(double_quant=True).quantize(w)
    assert dq.tensors["scales"].dtype == torch.uint8 and dq.tensors["scales"].shape == (64, 16)
    assert dq.tensors["scales_scale"].shape == (4,) and dq.tensors["scales_offset"].dim() == 0
    absmax = plain.tensors["scales"]
    decoded = NF4.block_scales(dq.tensors, torch.Size((64, 1024)))
    assert (decoded - absmax).abs().max() <= dq.tensors["scales_scale"].max() / 2 + 1e-6
    err = lambda q: ((q.dequantize(torch.float32) - w).norm() / w.norm()).item()
    assert err(dq) < err(plain) * 1.02


@pytest.mark.parametrize("quantizer, bits", [(NVFP4(), 4.5), (MXFP4(), 4.25), (NF4(), 4.5), (NF4(double_quant=True), 4.127)])
def test_storage_bits_per_weight(quantizer, bits):
    w = torch.randn(256, 4096, dtype=torch.bfloat16)
    qw = quantizer.quantize(w)
    assert qw.nbytes == sum(t.numel() * t.element_size() for t in qw.tensors.values())
    assert qw.bits_per_weight == pytest.approx(bits, abs=2e-3)
    assert qw.dequantize().shape == w.shape and qw.dequantize().dtype == torch.bfloat16


@pytest.mark.parametrize("quantizer", [NVFP4(), MXFP4(), MXFP4(rounding="ceil"), NF4(), NF4(double_quant=True)])
def test_relative_error_is_4bit_sized_and_zero_rows_stay_zero(quantizer):
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(7))
    w[3] = 0.0
    d = quantizer.quantize(w).dequantize(torch.float32)
    assert 0.05 < ((d - w).norm() / w.norm()).item() < 0.13
    assert torch.all(d[3] == 0)


def test_quantize_runs_on_the_weight_device_and_keeps_it():
    qw = NVFP4().quantize(torch.randn(16, 64))
    assert all(t.device.type == "cpu" for t in qw.tensors.values())


@pytest.mark.parametrize("quantizer", [NVFP4(), MXFP4(), NF4()])
def test_refuses_in_features_not_multiple_of_block(quantizer):
    with pytest.raises(QuantizationError, match=r"layer 'model.layers.0.mlp.down_proj'.*\(8, 40\).*block size"):
        quantizer.quantize(torch.randn(8, 40), name="model.layers.0.mlp.down_proj")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_nan_and_inf_naming_the_layer(bad):
    w = torch.randn(8, 64)
    w[2, 5] = bad
    with pytest.raises(QuantizationError, match=r"layer 'q_proj'.*1 NaN/Inf"):
        NVFP4().quantize(w, name="q_proj")


def test_mxfp4_rejects_unknown_rounding():
    with pytest.raises(ValueError, match="rounding='nearest'"):
        MXFP4(rounding="nearest")
