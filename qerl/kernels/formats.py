"""Dequantization of one packed tile inside a Triton kernel, for the three 4-bit formats.

A tile is loaded as bytes shaped (rows, groups, 8), 16 weights per group: two codes per byte, the even
column in the low nibble. The helpers here turn it into two float32 tiles of the same shape, the
even (low nibble) and odd (high nibble) columns, already multiplied by their block scale.

Format ids (the ``FMT`` constexpr): 0 NVFP4, 1 MXFP4, 2 NF4. The E2M1 and E4M3 decodes are done
with bit operations (no lookup): an E2M1 code ``seee`` placed at bits 9..12 of a float16 is the
true value times 2**-14 (subnormals included), an E4M3 scale placed at bits 7..14 is the true
value times 2**-8; both powers of two are folded into one multiplier.
"""
from __future__ import annotations

import triton
import triton.language as tl

FORMAT_IDS = {"nvfp4": 0, "mxfp4": 1, "nf4": 2}
GROUP = 16  # weights per tile group (8 bytes); every format's block is a whole number of groups
BLOCK_SIZES = {"nvfp4": 16, "mxfp4": 32, "nf4": 64}

NF4_CODEBOOK = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


_LUTS: dict = {}


def nf4_lut(device):
    """The NF4 codebook as a float32 tensor on ``device`` (cached)."""
    import torch

    key = str(device)
    if key not in _LUTS:
        _LUTS[key] = torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=device)
    return _LUTS[key]


@triton.jit
def _e2m1_lo(b):
    """Low-nibble E2M1 code of each byte as float32, times 2**-14."""
    h = b.to(tl.uint16)
    bits = ((h & 7) << 9) | ((h & 8) << 12)
    return bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _e2m1_hi(b):
    """High-nibble E2M1 code of each byte as float32, times 2**-14."""
    h = b.to(tl.uint16)
    bits = ((h & 0x70) << 5) | ((h & 0x80) << 8)
    return bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _e2m1_pair_asm(b):
    """Both E2M1 codes of each byte as float16 times 2**-14, four bytes per PTX instance (GPU only).

    prmt spreads two bytes into the two 16-bit halves of a register; shifts and one lop3 per half
    place the magnitude at bits 9..11 and the sign at bit 15: ~2.3 integer ops per weight instead of ~10.
    """
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 t, a, c;
        prmt.b32 t, $4, 0, 0x4140;
        shl.b32 a, t, 9; shl.b32 c, t, 12; and.b32 c, c, 0x80008000; lop3.b32 $0, a, 0x0E000E00, c, 0xEA;
        shl.b32 a, t, 5; shl.b32 c, t, 8; and.b32 c, c, 0x80008000; lop3.b32 $2, a, 0x0E000E00, c, 0xEA;
        prmt.b32 t, $4, 0, 0x4342;
        shl.b32 a, t, 9; shl.b32 c, t, 12; and.b32 c, c, 0x80008000; lop3.b32 $1, a, 0x0E000E00, c, 0xEA;
        shl.b32 a, t, 5; shl.b32 c, t, 8; and.b32 c, c, 0x80008000; lop3.b32 $3, a, 0x0E000E00, c, 0xEA;
        }
        """,
        constraints="=r,=r,=r,=r,r",
        args=[b],
        dtype=(tl.float16, tl.float16),
        is_pure=True,
        pack=4,
    )


@triton.jit
def block_multiplier(s, g, FMT: tl.constexpr):
    """Float32 multiplier per block from the stored scale ``s`` (uint8 or float32) and ``g``.

    ``g`` is the NVFP4 global scale (float32 scalar); other formats ignore it.
    """
    if FMT == 0:
        sf = ((s.to(tl.uint16) & 0x7F) << 7).to(tl.float16, bitcast=True).to(tl.float32)
        return sf * (g * 4194304.0)  # 2**8 (E4M3 placement) * 2**14 (E2M1 placement)
    elif FMT == 1:
        sf = (s.to(tl.uint32) << 23).to(tl.float32, bitcast=True)
        return sf * 16384.0  # 2**14 (E2M1 placement)
    else:
        return s.to(tl.float32)


@triton.jit
def dequant_pair(b, mult, lut_ptr, FMT: tl.constexpr, ASM: tl.constexpr):
    """Bytes ``b`` (any shape) and a broadcastable multiplier -> (even, odd) float32 values.

    ``ASM`` selects the inline-PTX E2M1 decode (compiled GPU kernels; the interpreter cannot run PTX).
    NF4 reads its 16-entry float32 codebook at ``lut_ptr`` (64 bytes, always in L1): one load per
    weight is cheaper than a 15-select tree (measured ~20 instructions per weight in SASS).
    """
    if FMT == 2:
        h = b.to(tl.int32)
        lo = tl.load(lut_ptr + (h & 15))
        hi = tl.load(lut_ptr + (h >> 4))
    elif ASM:
        lo16, hi16 = _e2m1_pair_asm(b)
        lo = lo16.to(tl.float32)
        hi = hi16.to(tl.float32)
    else:
        lo = _e2m1_lo(b)
        hi = _e2m1_hi(b)
    return lo * mult, hi * mult
