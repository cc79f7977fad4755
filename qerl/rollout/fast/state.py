"""`DecodeState`: every buffer a decode step reads or writes, preallocated once (static KV cache included).

A captured CUDA graph reads and writes fixed addresses, so nothing a step touches is allocated per step: the
per-layer K/V caches (rows, kv_heads, capacity, head_dim), the key-valid mask, positions, the write column and
step counters (1-element device tensors, advanced inside the step), the logits of the next token, the Gumbel
noise filled before each sampled step, and the per-step outputs (tokens, log-probs, alive flags).
Batch buckets use the first `nb` rows of each buffer; `permute` moves surviving rows to the front.
"""
from __future__ import annotations

import torch

from qerl.rollout.fast.layout import DecoderLayout

#: per-row tensors permuted together when the batch bucket shrinks
_ROW_BUFFERS = ("logits", "tokens", "logps", "alive", "finished", "stopped", "pos", "cur_tok", "valid")


class DecodeState:
    """Static buffers for `rows` sequences of up to `capacity` columns (prompt + new tokens)."""

    def __init__(self, layout: DecoderLayout, rows: int, capacity: int, max_new: int) -> None:
        dev, dt = layout.device, layout.dtype
        self.rows, self.capacity, self.max_new = rows, capacity, max_new
        shape = (rows, layout.num_kv_heads, capacity, layout.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dt, device=dev) for _ in layout.layers]
        self.v_cache = [torch.zeros(shape, dtype=dt, device=dev) for _ in layout.layers]
        self.valid = torch.zeros((rows, capacity), dtype=torch.bool, device=dev)
        self.logits = torch.zeros((rows, layout.vocab_size), dtype=dt, device=dev)
        self.noise = torch.full((rows, layout.vocab_size), 0.5, dtype=torch.float32, device=dev)
        self.tokens = torch.zeros((rows, max_new), dtype=torch.long, device=dev)
        self.logps = torch.zeros((rows, max_new), dtype=torch.float32, device=dev)
        self.alive = torch.zeros((rows, max_new), dtype=torch.bool, device=dev)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.stopped = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.pos = torch.zeros(rows, dtype=torch.long, device=dev)
        self.cur_tok = torch.zeros(rows, dtype=torch.long, device=dev)
        self.col = torch.zeros(1, dtype=torch.long, device=dev)
        self.step = torch.zeros(1, dtype=torch.long, device=dev)
        self.graphs: dict[tuple, object] = {}
        self._eos: dict[tuple, torch.Tensor] = {}
        self.key: tuple | None = None
        self.lora = None  # a LoraPack, set by the engine

    def eos_tensor(self, eos_ids: list[int]) -> torch.Tensor:
        """The EOS ids as a device tensor kept alive with the graphs that read it ([-1]: none)."""
        key = tuple(eos_ids) or (-1,)
        if key not in self._eos:
            self._eos[key] = torch.tensor(key, dtype=torch.long, device=self.valid.device)
        return self._eos[key]

    def fits(self, rows: int, capacity: int, max_new: int) -> bool:
        return self.rows == rows and self.capacity >= capacity and self.max_new >= max_new

    def reset(self, mask: torch.Tensor, pad_id: int) -> None:
        """Start a new batch of left-padded prompts with attention `mask` (rows, P)."""
        width = mask.shape[1]
        self.valid.zero_()
        self.valid[:, :width] = mask.bool()
        self.pos.copy_(mask.sum(dim=1))
        self.col.fill_(width)
        self.step.zero_()
        self.finished.zero_()
        self.stopped.zero_()
        self.tokens.fill_(pad_id)
        self.logps.zero_()
        self.alive.zero_()

    def permute(self, order: torch.Tensor) -> None:
        """Rows `order` (device long tensor of length n) become rows 0..n-1 of every per-row buffer."""
        n = order.numel()
        for name in _ROW_BUFFERS:
            buf = getattr(self, name)
            buf[:n].copy_(buf.index_select(0, order))
        for cache in (*self.k_cache, *self.v_cache):
            cache[:n].copy_(cache.index_select(0, order))
