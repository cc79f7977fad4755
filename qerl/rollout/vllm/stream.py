"""The `VLLM` backend's groups as they finish: what lets `QeRLModule(train_during_rollout=True)` train a group while
the engine still decodes the others.

`vllm.LLM.generate` returns when every request has finished. Here the requests go in through `LLM.enqueue` (vLLM's
public queue) and the engine is stepped by hand (`LLM.llm_engine.step()`, what `generate` runs in its loop); a
prompt's group is handed over the step its last completion finishes. The engine noise is engine-only while it
streams (`EngineNoise.engine_noise`): the policy trains during the stream, so its norms stay clean, and the
policy's mismatch forward (when the update cannot measure it) runs in `finish_groups`, under the same Z, after
training.
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace

from qerl.noise.inject import noisy_norms
from qerl.rollout.base import Piece
from qerl.rollout.vllm.outputs import check_finite_logprobs, check_lengths, rollout_from_outputs
from qerl.types import Rollout, SamplingConfig


def external_id(request_id: str) -> str:
    """The id vLLM's outputs carry for a request `LLM.enqueue` returned (vLLM appends `-<8 random chars>`)."""
    head, _, tail = request_id.rpartition("-")
    return head if head and len(tail) == 8 else request_id


class EngineStream:
    """`generate_groups` / `generate_pieces` / `finish_groups` for a backend holding `llm`, `policy`, `tokenizer`,
    `pad_id`, `served_as`, `measure_mismatch`, `update_measures_mismatch()`, `_noise_args` and `_ready()`."""

    streams_groups = True
    streams_completions = True

    def stream_requests(self, prompt_ids: list[list[int]], sampling: SamplingConfig,
                        split: bool = False) -> tuple[list, list, list[int]]:
        """The engine requests of one rollout: prompts, their SamplingParams, and the prompt each belongs to.
        Default: one request of `sampling.n` completions per prompt, as `generate` sends them; `split`: one request
        per completion (its own seed), so that each completion is handed over when it ends."""
        prompts, params, owners = [], [], []
        for i, prompt in enumerate(prompt_ids):
            whole = self.sampling_params(sampling, i)
            copies = sampling.n if split else 1
            for j in range(copies):
                one = whole
                if split:
                    one = whole.clone()
                    one.n, one.seed = 1, None if whole.seed is None else whole.seed + j
                prompts.append({"prompt_token_ids": list(map(int, prompt))})
                params.append(one)
                owners.append(i)
        return prompts, params, owners

    def merge_outputs(self, outputs: list) -> object:
        """One prompt's finished RequestOutputs (in request order) as one output holding its completions."""
        if len(outputs) == 1:
            return outputs[0]
        completions = []
        for out in outputs:
            for c in sorted(out.outputs, key=lambda c: c.index):
                c.index = len(completions)
                completions.append(c)
        return SimpleNamespace(outputs=completions)

    def generate_groups(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> Iterator[tuple[int, Rollout]]:
        """(prompt index, its group's rollout of `sampling.n` rows) for each prompt, the step its group finishes."""
        owners, finished = self._start(prompt_ids, sampling, split=False)
        expected = Counter(owners)  # requests per prompt
        ended: dict[int, list] = {g: [] for g in expected}
        for g, k, out in finished:
            ended[g].append((k, out))
            if len(ended[g]) == expected[g]:
                yield g, self._rollout_of(prompt_ids[g], ended[g], sampling.n)

    def generate_pieces(self, prompt_ids: list[list[int]], sampling: SamplingConfig,
                        open_groups: int) -> Iterator[Piece]:
        """Each completion its own request (`stream_requests(split=True)`); a group is handed over whole the step
        its last completion ends and, while at most `open_groups` groups are still generating, their completions
        as they end (`Piece`)."""
        owners, finished = self._start(prompt_ids, sampling, split=True)
        expected = Counter(owners)
        row_of = {k: owners[:k].count(g) for k, g in enumerate(owners)}  # its position in the group's rows
        ended: dict[int, list] = {g: [] for g in expected}
        handed: dict[int, int] = dict.fromkeys(expected, 0)  # how many of `ended[g]` went out in pieces
        still = set(expected)
        for g, k, out in finished:
            ended[g].append((k, out))
            if len(ended[g]) == expected[g]:
                still.discard(g)
                whole = sorted(ended[g], key=lambda item: item[0])
                fresh = sorted(row_of[k] for k, _ in ended[g][handed[g]:])
                yield Piece(g, self._rollout_of(prompt_ids[g], whole, sampling.n), fresh, complete=True)
            if len(still) > open_groups:
                continue
            for h in sorted(still):
                new = sorted(ended[h][handed[h]:], key=lambda item: item[0])
                if new:
                    handed[h] = len(ended[h])
                    yield Piece(h, self._rollout_of(prompt_ids[h], new, len(new)), [row_of[k] for k, _ in new],
                                complete=False)

    def _start(self, prompt_ids: list[list[int]], sampling: SamplingConfig, split: bool):
        """Checks, the requests enqueued: (each request's prompt index, an iterator of (prompt index, request index,
        its finished RequestOutput) that steps the engine until every request has ended)."""
        self._ready()
        check_lengths(prompt_ids, sampling.max_new_tokens, self.max_model_len)
        if getattr(self, "_tp_group", None) is not None:  # a tensor-parallel group generates together
            raise RuntimeError("VLLM.generate_groups: not under tensor-parallel data parallelism (one process only).")
        self.mismatch_deferred = self.update_measures_mismatch()  # decided before the first group trains
        prompts, params, owners = self.stream_requests(prompt_ids, sampling, split=split)
        return owners, self._finished(prompts, params, owners)

    def _finished(self, prompts: list, params: list, owners: list[int]) -> Iterator[tuple[int, int, object]]:
        start = time.perf_counter()
        ids = self.llm.enqueue(prompts, params, lora_request=self.lora_request(), use_tqdm=False)
        request_of = {external_id(rid): k for k, rid in enumerate(ids)}
        engine, open_ids = self.llm.llm_engine, set(ids)
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    k = request_of.get(out.request_id)
                    if k is None:
                        raise RuntimeError(f"VLLM.generate_groups: the engine finished request {out.request_id!r}, "
                                           "which this rollout did not send (another caller shares the engine?).")
                    open_ids.discard(ids[k])
                    yield owners[k], k, out
        finally:
            if open_ids:  # stopped early (an error while training a group): leave the engine empty
                self.llm.llm_engine.abort_request(sorted(open_ids), internal=True)
        self.last_timings = {"engine_s": time.perf_counter() - start, "scoring_s": 0.0}

    def _rollout_of(self, prompt: list[int], outputs: list, n: int) -> Rollout:
        """A Rollout of one prompt's finished (request index, RequestOutput) pairs, in request order."""
        device = next(self.policy.parameters()).device
        merged = self.merge_outputs([o for _, o in sorted(outputs, key=lambda item: item[0])])
        rollout = rollout_from_outputs([merged], [prompt], n, self.pad_id, self.tokenizer, device)
        check_finite_logprobs(rollout, self.served_as)
        return rollout

    def finish_groups(self, rollout: Rollout, sampling: SamplingConfig) -> None:
        """After the stream and the training of its groups: the preemption count and, when the update could not
        measure it, the policy's mismatch forward (under the engine's noise Z, put on the policy for it)."""
        self.last_metrics = self._preemption_metrics()
        if not self.measure_mismatch or self.mismatch_deferred:
            return
        from qerl.models.mismatch import mismatch

        begin = time.perf_counter()
        sigma, seed, relative = self._noise_args
        noisy = noisy_norms(self.policy, sigma, seed=seed, relative=relative) if sigma > 0 else contextlib.nullcontext()
        with noisy:
            found, _ = mismatch(self.policy, rollout, sampling.temperature, None, layout=self.scoring_layout)
        self.last_metrics.update(found)
        self.last_timings["scoring_s"] = time.perf_counter() - begin
