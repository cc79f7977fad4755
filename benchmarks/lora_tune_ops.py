"""vLLM's Triton LoRA ops (`_lora_shrink` / `_lora_expand`) run on one cell's tensors with a config forced in place
of what `get_lora_op_configs` answers; vLLM's default config for the cell."""
from __future__ import annotations

from contextlib import contextmanager

from lora_tune_grid import Cell


def vllm_ops():
    from vllm.lora.ops.triton_ops import lora_expand_op, lora_shrink_op, utils
    return lora_shrink_op, lora_expand_op, utils


def default_config(cell: Cell, max_loras: int = 1) -> dict:
    """vLLM's own default for the cell (its lookup with no folder set)."""
    _, _, utils = vllm_ops()
    slices, m, k, n = cell.key
    return dict(utils.get_lora_op_configs(cell.op, max_loras=max_loras + 1, batch=m,
                                          hidden_size=k if cell.op == "shrink" else n, rank=cell.rank,
                                          num_slices=slices, add_inputs=True if cell.op == "expand" else None))


class Tensors:
    """`copies` sets of (input, weights, output) of a cell on `device`, and the one-adapter kernel metadata."""

    def __init__(self, cell: Cell, dtype, device, copies: int = 1):
        import torch
        from vllm.lora.ops.triton_ops.lora_kernel_metadata import LoRAKernelMeta

        _, _, utils = vllm_ops()
        utils._LORA_A_PTR_DICT.clear()  # keyed by data_ptr: a freed cell's entries would match new tensors
        utils._LORA_B_PTR_DICT.clear()
        meta = LoRAKernelMeta.make(1, cell.m, device)
        meta.prepare_tensors(torch.zeros(cell.m, dtype=torch.int32, device=device))  # every token: adapter 0
        self.meta = meta.meta_args(cell.m, False)  # grid over max_loras + 1 slots, as the engine runs it
        gen, self.sets = torch.Generator(device).manual_seed(0), []
        for _ in range(copies):
            def randn(*shape, scale=1.0, dt=dtype):
                return (torch.randn(*shape, generator=gen, device=device) * scale).to(dt)
            if cell.op == "shrink":
                x = randn(cell.m, cell.k_in)
                w = [randn(1, 1, cell.rank, cell.k_in, scale=cell.k_in ** -0.5) for _ in cell.outs]
                out = torch.zeros(len(cell.outs), cell.m, cell.rank, dtype=torch.float32, device=device)
            else:
                x = randn(len(cell.outs), cell.m, cell.rank, dt=torch.float32)
                w = [randn(1, 1, n, cell.rank, scale=cell.rank ** -0.5) for n in cell.outs]
                out = randn(cell.m, sum(cell.outs))
            self.sets.append((x, w, out))
        self.y0 = self.sets[0][2].clone() if cell.op == "expand" else None

    def reference(self, cell: Cell, rows: int = 1024):
        """torch's result on copy 0 (the first `rows` tokens)."""
        import torch

        x, w, _ = self.sets[0]
        if cell.op == "shrink":
            return torch.stack([x[:rows].float() @ a[0, 0].float().T for a in w])
        return self.y0[:rows].float() + torch.cat([x[s, :rows] @ b[0, 0].float().T for s, b in enumerate(w)], 1)


@contextmanager
def forced(config: dict):
    """vLLM's ops take `config` whatever their lookup would answer."""
    shrink_op, expand_op, _ = vllm_ops()
    saved = shrink_op.get_lora_op_configs, expand_op.get_lora_op_configs
    shrink_op.get_lora_op_configs = expand_op.get_lora_op_configs = lambda *a, **k: config
    try:
        yield
    finally:
        shrink_op.get_lora_op_configs, expand_op.get_lora_op_configs = saved


def run(cell: Cell, t: Tensors, copy: int = 0) -> None:
    """One call of vLLM's op on copy `copy` (the config is whatever `forced` set)."""
    shrink_op, expand_op, _ = vllm_ops()
    x, w, out = t.sets[copy]
    if cell.op == "shrink":
        shrink_op._lora_shrink(x, w, out, *t.meta, 1.0)
    else:
        expand_op._lora_expand(x, w, out, *t.meta, offset_start=0, add_inputs=True)


def output_of(cell: Cell, t: Tensors, config: dict):
    """The op's output on copy 0 with `config` (expand starts from the same y each time)."""
    if t.y0 is not None:
        t.sets[0][2].copy_(t.y0)
    with forced(config):
        run(cell, t)
    return t.sets[0][2].clone()
