"""What `lora_tune.py` tunes: the model shapes, the cells (one op at one shape) and the candidate configs of each."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

MODELS = {"7b": {"hidden": 3584, "intermediate": 18944, "heads": 28, "kv_heads": 4, "layers": 28},
          "32b": {"hidden": 5120, "intermediate": 27648, "heads": 40, "kv_heads": 8, "layers": 64},
          "tiny": {"hidden": 64, "intermediate": 128, "heads": 2, "kv_heads": 1, "layers": 2}}  # CPU check of the script
DECODE = (1, 8, 16, 32, 64, 96, 128, 192, 256)
PREFILL = (2048, 8192, 16384)


@dataclass(frozen=True)
class Cell:
    """One op at one shape: what vLLM keys a config by, and the tensors it runs on."""
    op: str  # "shrink" | "expand"
    layer: str  # qkv, o, gate_up, down (expand: "o+down", the same shape)
    m: int
    k_in: int  # the layer's input width
    outs: tuple[int, ...]  # output width of each slice
    rank: int

    @property
    def key(self) -> tuple[int, int, int, int]:
        """(num_slices, m, k, n) as vLLM looks the config up."""
        k, n = (self.k_in, self.rank) if self.op == "shrink" else (self.rank, max(self.outs))
        return len(self.outs), self.m, k, n


def lora_layers(model: str) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, input width, output slices) of one decoder layer's LoRA layers as vLLM packs them."""
    s = MODELS[model]
    h, i, kv = s["hidden"], s["intermediate"], s["kv_heads"] * s["hidden"] // s["heads"]
    return [("qkv", h, (h, kv, kv)), ("o", h, (h,)), ("gate_up", h, (i, i)), ("down", i, (h,))]


def cells(model: str, rank: int, ms) -> list[tuple[Cell, int]]:
    """(cell, calls per decoder layer) for every m: 4 shrinks, 3 expands (o's and down's are one shape)."""
    out = []
    for m in ms:
        for name, k_in, outs in lora_layers(model):
            out.append((Cell("shrink", name, m, k_in, outs, rank), 1))
            if name != "down":
                out.append((Cell("expand", "o+down" if name == "o" else name, m, k_in, outs, rank),
                            2 if name == "o" else 1))
    return out


def candidates(cell: Cell, default: dict) -> list[dict]:
    """The configs to try (the default first): block sizes around the shape, shrink's split-K set so that each
    program walks 1, 2 or 4 blocks of K at decode sizes."""
    m, found = cell.m, [dict(default)]
    bms = (16,) if m <= 16 else (16, 32) if m <= 64 else (32, 64) if m <= 256 else (64, 128)
    if cell.op == "shrink":
        bns = tuple(b for b in (16, 32, 64) if b <= max(16, cell.rank))[-2:]
        splits = sorted({(bk, math.ceil(cell.k_in / (bk * it))) for bk in (64, 128, 256) for it in (1, 2, 4)}
                        if m <= 256 else {(bk, sk) for bk in (32, 64, 128) for sk in (1, 2, 4)})
        for bm in bms:
            for bn in bns:
                for bk, sk in splits:
                    stages = 2 if math.ceil(cell.k_in / (bk * sk)) == 1 else 3
                    found.append(dict(default, block_m=bm, block_n=bn, block_k=bk, split_k=sk, num_warps=4,
                                      num_stages=stages, num_ctas=1, group_size_m=8))
    else:
        bms = (16, 32, 64) if 16 < m <= 64 else (32, 64, 128) if 64 < m <= 256 else bms
        for bm in bms:
            for bn in (64, 128, 256):
                for warps in (4, 8):
                    found.append(dict(default, block_m=bm, block_n=bn, block_k=max(16, min(cell.rank, 64)),
                                      num_warps=warps, num_stages=2, num_ctas=1))
    unique = {json.dumps(c, sort_keys=True): c for c in found}
    return list(unique.values())


def compile_key(cell: Cell, config: dict) -> str:
    """What Triton compiles anew: the config and the shape, with m only as 1 / a multiple of 16 / other."""
    m_class = 1 if cell.m == 1 else 16 if cell.m % 16 == 0 else 0
    return json.dumps([cell.op, cell.k_in, cell.outs, cell.rank, m_class, config], sort_keys=True)
