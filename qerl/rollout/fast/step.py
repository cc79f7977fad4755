"""One decode step on static buffers - sample, record, forward - and the CUDA graphs that replay it.

Sampling is exact: the token is the argmax of the processed log-probs (temperature, top-p; the same
`processed_logprobs` as the slow path) plus Gumbel noise -log(-log(u)), which draws from exactly that
distribution (Gumbel-max). `u` is filled before each step from the caller's seeded generator, outside the
graph, so the graph holds no random-number state of its own. Greedy (temperature <= 0) takes the argmax.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qerl.rollout.fast.forward import decode
from qerl.rollout.fast.layout import DecoderLayout
from qerl.rollout.fast.state import DecodeState
from qerl.rollout.sampling import processed_logprobs


@dataclass(frozen=True)
class SampleSpec:
    temperature: float
    top_p: float
    pad_id: int

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def sample_record(state: DecodeState, rows: int, spec: SampleSpec, eos: torch.Tensor) -> None:
    """Draw the next token of rows [0, rows) from `state.logits`, record it at `state.step`, mark EOS rows done."""
    logprobs = processed_logprobs(state.logits[:rows], spec.temperature, spec.top_p)
    if spec.greedy:
        tok = logprobs.argmax(dim=-1)
    else:
        gumbel = state.noise[:rows].log().neg_().log_().neg_()
        tok = (logprobs + gumbel).argmax(dim=-1)
    lp = logprobs.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    alive = ~state.finished[:rows]
    tok = torch.where(alive, tok, torch.full_like(tok, spec.pad_id))
    lp = torch.where(alive, lp, torch.zeros_like(lp))
    state.tokens[:rows].index_copy_(1, state.step, tok.unsqueeze(1))
    state.logps[:rows].index_copy_(1, state.step, lp.unsqueeze(1))
    state.alive[:rows].index_copy_(1, state.step, alive.unsqueeze(1))
    ended = torch.isin(tok, eos) & alive
    state.stopped[:rows] |= ended
    state.finished[:rows] |= ended
    state.cur_tok[:rows].copy_(tok)
    state.step += 1


def full_step(layout: DecoderLayout, state: DecodeState, rows: int, keys: int, spec: SampleSpec,
              eos: torch.Tensor) -> None:
    sample_record(state, rows, spec, eos)
    decode(layout, state, rows, keys)


class StepRunner:
    """Runs `full_step` eagerly, or through one CUDA graph per (rows, keys, sampling) captured on first use.

    The first step of a new shape runs eagerly (warming up kernels, Triton compiles and cuBLAS handles), then the
    graph is captured for the next one; capture records work without running it, so state is not disturbed.
    Graphs live in `state.graphs` and share one memory pool; they read weights by address.
    """

    def __init__(self, use_graphs: bool) -> None:
        self.use_graphs = use_graphs
        self.pool = None
        self.captures = 0
        self.replays = 0

    def run(self, state: DecodeState, key: tuple, fn: Callable[[], None]) -> None:
        if not self.use_graphs:
            fn()
            return
        graph = state.graphs.get(key)
        if graph is not None:
            graph.replay()
            self.replays += 1
            return
        fn()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, pool=self.pool):
            fn()
        state.graphs[key] = graph
        self.captures += 1
