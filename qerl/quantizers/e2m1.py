"""FP4 E2M1 helpers shared by NVFP4 and MXFP4: encode (round to nearest even), decode, nibble packing.

A code is 4 bits: bit 3 the sign, bits 0-2 an index into `E2M1_MAGNITUDES`. This is the bit layout of
`torch.float4_e2m1fn_x2`; two codes share a byte, column 2j in the low nibble and 2j+1 in the high one.
"""
from __future__ import annotations

import torch

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0

# Midpoints between neighbouring magnitudes, and whether a tie there goes UP (to the even index above).
# Round-to-nearest-even: a tie goes to the neighbour whose mantissa bit (index bit 0) is 0.
_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round a float tensor to the nearest E2M1 value (ties to even, saturating at +-6); uint8 codes 0..15.

    The sign bit follows `torch.signbit`, so -0.1 becomes code 8 (-0.0), as torch's own conversion does.
    """
    mag = x.abs().float()
    index = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for mid, tie_up in _MIDPOINTS:
        index += (mag >= mid) if tie_up else (mag > mid)
    # NaN never reaches here (quantizers refuse it); +-inf saturates to +-6 through the comparisons above.
    return index | (torch.signbit(x).to(torch.uint8) << 3)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 -> float32 values."""
    table = torch.tensor(E2M1_MAGNITUDES + tuple(-m for m in E2M1_MAGNITUDES), dtype=torch.float32, device=codes.device)
    return table[codes.long()]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(..., 2n) uint8 codes 0..15 -> (..., n) bytes: even column in the low nibble, odd column in the high one."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles needs an even last dimension, got shape {tuple(codes.shape)}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(..., n) bytes -> (..., 2n) uint8 codes 0..15 (inverse of `pack_nibbles`)."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
