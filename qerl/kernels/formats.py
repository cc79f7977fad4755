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
def _nf4_value(c):
    """NF4 codebook value of codes 0..15 by a binary select tree (no memory lookup)."""
    b0 = (c & 1) != 0
    b1 = (c & 2) != 0
    b2 = (c & 4) != 0
    b3 = (c & 8) != 0
    v01 = tl.where(b0, -0.6961928009986877, -1.0)
    v23 = tl.where(b0, -0.39491748809814453, -0.5250730514526367)
    v45 = tl.where(b0, -0.18477343022823334, -0.28444138169288635)
    v67 = tl.where(b0, 0.0, -0.09105003625154495)
    v89 = tl.where(b0, 0.16093020141124725, 0.07958029955625534)
    vab = tl.where(b0, 0.33791524171829224, 0.24611230194568634)
    vcd = tl.where(b0, 0.5626170039176941, 0.44070982933044434)
    vef = tl.where(b0, 1.0, 0.7229568362236023)
    v03 = tl.where(b1, v23, v01)
    v47 = tl.where(b1, v67, v45)
    v8b = tl.where(b1, vab, v89)
    vcf = tl.where(b1, vef, vcd)
    v07 = tl.where(b2, v47, v03)
    v8f = tl.where(b2, vcf, v8b)
    return tl.where(b3, v8f, v07)


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
def dequant_pair(b, mult, FMT: tl.constexpr, ASM: tl.constexpr):
    """Bytes ``b`` (any shape) and a broadcastable multiplier -> (even, odd) float32 values.

    ``ASM`` selects the inline-PTX E2M1 decode (compiled GPU kernels; the interpreter cannot run PTX).
    NF4 uses a 15-select tree (~20 SASS instructions per weight). A 16-entry codebook in global memory
    read with one load per weight was tried and measured 4x slower on H100 (benchmarks/results/kernels-notes.md).
    """
    if FMT == 2:
        h = b.to(tl.int32)
        lo = _nf4_value(h & 15)
        hi = _nf4_value(h >> 4)
    elif ASM:
        lo16, hi16 = _e2m1_pair_asm(b)
        lo = lo16.to(tl.float32)
        hi = hi16.to(tl.float32)
    else:
        lo = _e2m1_lo(b)
        hi = _e2m1_hi(b)
    return lo * mult, hi * mult
