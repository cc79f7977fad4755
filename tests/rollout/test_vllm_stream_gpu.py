"""`QeRLModule(train_during_rollout=True)` on a CUDA device with the real vLLM: the groups train on their own stream
and thread while the engine decodes, and the optimizer gets the gradient of training after generation.

The tiny NVFP4 Qwen2 of test_vllm_gpu.py, bf16, an engine awake through training (no sleep mode) with its decode
CUDA graphs (`compile: false`); the update on every SM, or confined to half of them by a CUDA green context, by
groups or by completions (`train_during_rollout_unit`; then both runs send one request per completion). The
first prompt's completions stop after 2 tokens and the others run 48, so the
first group trains while the engine decodes. bf16 gradients summed in another order: compared by their cosine and
norms, not bit for bit.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from qerl.types import SamplingConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                  reason="needs vllm (the CUDA build)")]

sys.path.insert(0, str(Path(__file__).parents[1]))  # rl_helpers
from rl_helpers import load_file, split_request_outputs

_SHARED = load_file(Path(__file__).with_name("test_vllm_gpu.py"))  # the tiny policy of test_vllm_gpu.py
CONFIG, tiny_policy = _SHARED.CONFIG, _SHARED.tiny_policy


class GradientRecorder(L.Callback):
    """Keeps the trainable gradients the optimizer is about to apply (after clipping)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {k: p.grad.detach().float().cpu() for k, p in pl_module.model.named_parameters()
                      if p.requires_grad and p.grad is not None}


@pytest.fixture(scope="module")
def engine():
    from qerl.rollout.vllm import VLLM

    class ShortFirstPrompt(VLLM):
        split_always = False  # `generate` too sends one request per completion (so it samples what pieces do)

        def sampling_params(self, sampling, prompt_index):
            params = super().sampling_params(sampling, prompt_index)
            if prompt_index == 0:
                params.max_tokens = 2
            params.ignore_eos = True
            return params

        def stream_requests(self, prompt_ids, sampling, split=False):
            prompts, params, owners = super().stream_requests(prompt_ids, sampling, split)
            if split:  # a group's completions end 8 steps apart (EOS is ignored): some train before their group
                for j, one in enumerate(params):
                    if one.max_tokens > 2:
                        one.max_tokens -= 8 * (j % sampling.n)
            return prompts, params, owners

        def request_outputs(self, prompt_ids, sampling):
            if not self.split_always:
                return super().request_outputs(prompt_ids, sampling)
            return split_request_outputs(self, prompt_ids, sampling)

    policy, tokenizer = tiny_policy()
    backend = ShortFirstPrompt(max_model_len=256, gpu_memory_utilization=0.1, max_num_seqs=16,
                               enable_sleep_mode=False, compile=False, measure_mismatch="update")
    backend.setup(policy, tokenizer)
    yield backend
    backend.close()


#: (sm_share, unit) of each twin; tests/training/test_overlap.py builds their modules on the CPU before any lease
TWINS = {"every-sm": (1.0, "group"), "green-context-half": (0.5, "group"), "by-completion-half": (0.5, "completion")}


def twin_module(engine, overlap: bool, sm_share: float, unit: str):
    """The module of one run of a twin: trained during the rollout (`overlap`) or after it (the reference)."""
    from rl_helpers import tiny_module

    from qerl.models import RandomInit
    from qerl.training.settings import LoRASettings

    return tiny_module(policy=RandomInit(config=CONFIG, seed=0), rollout=engine, dtype="bfloat16", noise=None,
                       train_during_rollout=overlap, train_during_rollout_sm_share=sm_share,
                       train_during_rollout_unit=unit if overlap else "group",
                       lora=LoRASettings(rank=8, alpha=16.0, train_norms=True),
                       sampling=SamplingConfig(n=4, max_new_tokens=48, temperature=1.0))


@pytest.mark.parametrize(("sm_share", "unit"), list(TWINS.values()), ids=list(TWINS))
def test_groups_trained_during_the_rollout_on_their_own_stream_give_the_same_gradient(engine, tmp_path, sm_share,
                                                                                      unit):
    from rl_helpers import tiny_data, tiny_trainer

    grads, logged = [], []
    engine.split_always = unit == "completion"  # both runs sample one request per completion
    try:
        for overlap in (False, True):
            module = twin_module(engine, overlap, sm_share, unit)
            recorder = GradientRecorder()
            trainer = tiny_trainer(tmp_path / str(overlap), 1, callbacks=[recorder], accelerator="gpu")
            torch.manual_seed(0)
            trainer.fit(module, tiny_data())
            grads.append(recorder.grads)
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        engine.split_always = False
    after, during = grads
    assert sorted(after) == sorted(during)
    flat_after = torch.cat([after[k].flatten() for k in sorted(after)])
    flat_during = torch.cat([during[k].flatten() for k in sorted(after)])
    assert float(flat_after.norm()) > 0
    assert float(torch.nn.functional.cosine_similarity(flat_after, flat_during, dim=0)) > 0.999
    assert float((flat_after - flat_during).norm() / flat_after.norm()) < 2e-2
    assert logged[1]["perf/groups_trained_under_rollout"] >= 1  # the short group trained while the others decoded
    assert logged[1]["rollout/mismatch_kl"] == pytest.approx(logged[0]["rollout/mismatch_kl"], rel=0.1, abs=1e-4)
