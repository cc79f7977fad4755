"""`FastEngine`: static-KV-cache decoding for the `HF` backend, CUDA-graph replayed on GPU, eager on CPU.

Per batch of rows: left-padded prompts run once (prefill) into a preallocated per-layer KV cache; then every
step samples a token and runs the decoder on it in one captured graph (one graph per batch bucket x attention
length bucket x sampling setting). Every `check_every` steps the host looks at which rows finished: stop
strings are matched there (exactly as the slow path does, token by token), the loop ends when all rows are done,
and when the live rows fit a smaller power-of-two bucket they move to the front and decoding continues on the
smaller batch. The same code runs without graphs on CPU, which is how CI tests it against the slow path.
"""
from __future__ import annotations

import weakref

import torch

from qerl.rollout.fast.forward import prefill
from qerl.rollout.fast.layout import decoder_layout, weights_fingerprint
from qerl.rollout.fast.lora import LoraPack
from qerl.rollout.fast.state import DecodeState
from qerl.rollout.fast.step import SampleSpec, StepRunner, full_step, sample_record
from qerl.rollout.sampling import left_pad
from qerl.types import SamplingConfig


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def batch_buckets(rows: int) -> list[int]:
    """Batch sizes decoding may shrink to: powers of two below `rows`, and `rows` itself (ascending)."""
    sizes = {rows}
    p = 1
    while p < rows:
        sizes.add(p)
        p *= 2
    return sorted(sizes)


class FastEngine:
    """Decodes batches of prompts for a backend, reading only the `RolloutBackend` contract: its policy,
    tokenizer, `pad_id` and `eos_ids`.

    Args:
        backend: the backend (the `HF` one; read at each call, so a new `setup` is picked up).
        use_graphs: capture and replay CUDA graphs (default: when the policy is on CUDA).
        check_every: steps between host checks for finished rows and stop strings.
        length_bucket: attention reads the cache up to the next multiple of this many columns.
    """

    def __init__(self, backend, use_graphs: bool | None = None, check_every: int = 16, length_bucket: int = 256):
        self._backend = weakref.ref(backend)  # the backend holds the engine: no cycle keeping the policy alive
        self.use_graphs = use_graphs
        self.check_every = check_every
        self.length_bucket = length_bucket
        self.state: DecodeState | None = None
        self.runner: StepRunner | None = None
        self.eos_ids: list[int] | None = None  # None: the backend's; [] ignores EOS (benchmarks)

    @property
    def backend(self):
        backend = self._backend()
        if backend is None:
            raise RuntimeError("FastEngine: its HF backend no longer exists; build a new engine.")
        return backend

    def norm_scales(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(policy norm weight, the scale the decode step multiplies by) for every decoder norm AQN targets."""
        from qerl.rollout.fast.blocks import norm_scale

        layout = decoder_layout(self.backend.policy)
        return [(m.weight, norm_scale(m)) for lv in layout.layers for m in (lv.input_norm, lv.post_norm)]

    def release(self) -> None:
        """Drop the KV cache and the captured graphs (they are rebuilt on the next call)."""
        self.state = None
        self.runner = None

    # ------------------------------------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate_rows(self, rows: list[list[int]], sampling: SamplingConfig, generator, device) -> dict:
        """The same dict as `HF._generate_rows`: prompt ids/mask, completion ids/mask, log-probs, truncated."""
        hf = self.backend
        layout = decoder_layout(hf.policy)
        ids, mask = left_pad(rows, hf.pad_id, device)
        batch, width = ids.shape
        max_new = int(sampling.max_new_tokens)
        state = self._state_for(layout, batch, width + max_new, max_new, device)
        eos_ids = hf.eos_ids if self.eos_ids is None else self.eos_ids
        eos = state.eos_tensor(eos_ids)
        spec = SampleSpec(float(sampling.temperature), float(sampling.top_p), hf.pad_id)
        state.lora.refresh()  # the current adapter weights, into the buffers the graphs read
        state.reset(mask, hf.pad_id)
        prefill(layout, state, ids, mask)

        result = {"tokens": torch.full((batch, max_new), hf.pad_id, dtype=torch.long, device=device),
                  "logps": torch.zeros((batch, max_new), dtype=torch.float32, device=device),
                  "alive": torch.zeros((batch, max_new), dtype=torch.bool, device=device),
                  "stopped": torch.zeros(batch, dtype=torch.bool, device=device)}
        slots = torch.arange(batch, device=device)  # slot -> original row
        live, buckets, chunk_start = batch, batch_buckets(batch), 0
        for s in range(max_new):
            if not spec.greedy:
                state.noise[:live].uniform_(generator=generator)
            if s == max_new - 1:
                sample_record(state, live, spec, eos)
            else:
                keys = min(_round_up(width + s + 1, self.length_bucket), state.capacity)
                key = (live, keys, spec, tuple(eos_ids))
                self.runner.run(state, key, lambda live=live, keys=keys: full_step(layout, state, live, keys, spec, eos))
            if (s + 1) % self.check_every and s != max_new - 1:
                continue
            if sampling.stop:
                self._match_stops(state, live, chunk_start, s, sampling.stop)
            chunk_start = s + 1
            finished = state.finished[:live].cpu()
            alive_now = int((~finished).sum())
            if alive_now == 0:
                break
            smaller = min(b for b in buckets if b >= alive_now)
            if smaller < live:
                self._flush(state, result, slots, live)
                order = torch.cat([(~finished).nonzero().flatten(), finished.nonzero().flatten()])[:smaller]
                order = order.to(device)
                state.permute(order)
                slots = slots[order]
                live = smaller
        self._flush(state, result, slots, live)
        width_out = max(int(result["alive"].sum(dim=1).max()), 0)
        return {"prompt_ids": ids, "prompt_mask": mask, "completion_ids": result["tokens"][:, :width_out],
                "completion_mask": result["alive"][:, :width_out].long(), "logprobs": result["logps"][:, :width_out],
                "truncated": ~result["stopped"]}

    # ------------------------------------------------------------------------------------------------ helpers
    def _state_for(self, layout, batch: int, needed: int, max_new: int, device) -> DecodeState:
        graphs = self.use_graphs if self.use_graphs is not None else device.type == "cuda"
        key = (id(self.backend.policy), weights_fingerprint(self.backend.policy), graphs)
        if self.state is None or self.state.key != key or not self.state.fits(batch, needed, max_new):
            self.state = None  # free the old cache before allocating the new one
            capacity = _round_up(needed, self.length_bucket)
            self.state = DecodeState(layout, batch, capacity, max_new)
            self.state.key = key
            self.state.lora = LoraPack(layout)
            self.runner = StepRunner(graphs)
        return self.state

    @staticmethod
    def _flush(state: DecodeState, result: dict, slots: torch.Tensor, live: int) -> None:
        """Copy the outputs of slots [0, live) to their original rows."""
        rows = slots[:live]
        result["tokens"].index_copy_(0, rows, state.tokens[:live, : result["tokens"].shape[1]])
        result["logps"].index_copy_(0, rows, state.logps[:live, : result["logps"].shape[1]])
        result["alive"].index_copy_(0, rows, state.alive[:live, : result["alive"].shape[1]])
        result["stopped"].index_copy_(0, rows, state.stopped[:live])

    def _match_stops(self, state: DecodeState, live: int, first: int, last: int, stops: list[str]) -> None:
        """Rows whose tokens complete a stop string at step t in [first, last] end at t (later steps cleared)."""
        window = max(len(s) for s in stops) + 2  # the slow path's window (HF._hit_stop)
        lo = max(0, first - window + 1)
        toks = state.tokens[:live, lo : last + 1].tolist()
        alive = state.alive[:live, lo : last + 1].tolist()
        decode = self.backend.tokenizer.decode
        for slot in range(live):
            for t in range(first, last + 1):
                if not alive[slot][t - lo]:
                    break
                recent = toks[slot][max(0, t - window + 1) - lo : t - lo + 1]
                if any(s in decode(recent, skip_special_tokens=False) for s in stops):
                    state.finished[slot] = True
                    state.stopped[slot] = True
                    state.tokens[slot, t + 1 :] = self.backend.pad_id
                    state.logps[slot, t + 1 :] = 0.0
                    state.alive[slot, t + 1 :] = False
                    break
