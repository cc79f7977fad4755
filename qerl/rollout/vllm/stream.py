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
from qerl.rollout.vllm.outputs import check_finite_logprobs, check_lengths, rollout_from_outputs
from qerl.types import Rollout, SamplingConfig


def external_id(request_id: str) -> str:
    """The id vLLM's outputs carry for a request `LLM.enqueue` returned (vLLM appends `-<8 random chars>`)."""
    head, _, tail = request_id.rpartition("-")
    return head if head and len(tail) == 8 else request_id


class EngineStream:
    """`generate_groups` / `finish_groups` for a backend holding `llm`, `policy`, `tokenizer`, `pad_id`,
    `served_as`, `measure_mismatch`, `update_measures_mismatch()`, `_noise_args` and `_ready()`."""

    streams_groups = True

    def stream_requests(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> tuple[list, list, list[int]]:
        """The engine requests of one rollout: prompts, their SamplingParams, and the prompt each belongs to
        (default: one request of `sampling.n` completions per prompt, as `generate` sends them)."""
        prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompt_ids]
        params = [self.sampling_params(sampling, i) for i in range(len(prompt_ids))]
        return prompts, params, list(range(len(prompt_ids)))

    def merge_outputs(self, outputs: list) -> object:
        """One prompt's finished RequestOutputs (in request order) as one output holding its `n` completions."""
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
        self._ready()
        check_lengths(prompt_ids, sampling.max_new_tokens, self.max_model_len)
        if getattr(self, "_tp_group", None) is not None:  # a tensor-parallel group generates together
            raise RuntimeError("VLLM.generate_groups: not under tensor-parallel data parallelism (one process only).")
        self.mismatch_deferred = self.update_measures_mismatch()  # decided before the first group trains
        start = time.perf_counter()
        prompts, params, owners = self.stream_requests(prompt_ids, sampling)
        ids = self.llm.enqueue(prompts, params, lora_request=self.lora_request(), use_tqdm=False)
        request_of = {external_id(rid): k for k, rid in enumerate(ids)}
        expected = Counter(owners)  # requests per prompt
        finished: dict[int, list] = {g: [] for g in expected}
        device = next(self.policy.parameters()).device
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
                    group = finished[owners[k]]
                    group.append((k, out))
                    if len(group) == expected[owners[k]]:
                        merged = self.merge_outputs([o for _, o in sorted(group, key=lambda item: item[0])])
                        g = owners[k]
                        rollout = rollout_from_outputs([merged], [prompt_ids[g]], sampling.n, self.pad_id,
                                                       self.tokenizer, device)
                        check_finite_logprobs(rollout, self.served_as)
                        yield g, rollout
        finally:
            if open_ids:  # stopped early (an error while training a group): leave the engine empty
                engine.abort_request(sorted(open_ids), internal=True)
        self.last_timings = {"engine_s": time.perf_counter() - start, "scoring_s": 0.0}

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
