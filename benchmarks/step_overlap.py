"""`step.py --train-during-rollout`: the step of `QeRLModule(train_during_rollout=True)` on a benchmark row.

Each group is scored (the row's synthetic reward: `even_reward`) and trained the moment the engine
finishes it, while the engine decodes the rest (`qerl.training.overlap.stream_and_train`); then clip and step. The
phases: `generate` is the engine's stream (with the groups training under it), `train` what the update still
needs after the last group is out (the tail), `score` 0 (scored on the worker thread, under the generate).
"""
from __future__ import annotations

import time


def even_reward(rollout):
    """The rows' synthetic reward of each completion (`step.py` scores with it too): 1 when more than half of its
    ids are even, else 0 - a 0/1 reward, as a verifiable answer check gives (training by completion keeps one
    gradient buffer per reward value)."""
    even = ((rollout.completion_ids % 2 == 0) & rollout.completion_mask.bool()).float().sum(1)
    return (even / rollout.completion_mask.sum(1).clamp(min=1) > 0.5).float()


def check_awake(backend, vllm_sleep: str) -> None:
    """Refuse a `--train-during-rollout` row whose engine sleeps while the policy trains: nothing would train under
    the rollout, and the row would time a plain step (two H100 rows of 2026-12-07 did, with `--vllm-sleep auto`
    before the plan learned to keep the engine awake for it)."""
    if backend.sleep_mode:
        raise SystemExit(f"step.py --train-during-rollout: the engine sleeps while the policy trains (--vllm-sleep "
                         f"{vllm_sleep}), so nothing would train under the rollout; use --vllm-sleep off, or auto "
                         "(which keeps the engine awake and cuts its KV cache to fit).")


def overlapped_step(policy, backend, opt, algorithm, prompt_ids, cfg, micro_batch, layout, noise, phases, sync,
                    used_gib, sm_share: float = 1.0, unit: str = "group"):
    """One step; returns (rollout, the update's result, what the card holds after the generate and the groups'
    update (`used_gib()`), completion tokens, extra row fields) and fills `phases`."""
    from qerl.noise.base import NoiseDraw
    from qerl.training.overlap import stream_and_train
    from qerl.training.scoring import Scored
    from qerl.training.step_metrics import StepTimer
    from qerl.training.update import accumulate_gradients, clip_gradients
    from qerl.types import PromptBatch

    def score(index, group):
        rewards = even_reward(group)
        return Scored(group, PromptBatch([""], [""]), {"even": rewards}, rewards, rewards > 0.5)

    def train(batch):
        return accumulate_gradients(policy, algorithm, batch, micro_batch, cfg.temperature,
                                    lambda loss: loss.backward(), totals=(1, 1.0), layout=layout)

    start = time.perf_counter()
    if hasattr(backend, "prepare"):  # wake (sleep mode) and take the synced adapter, timed on its own
        backend.prepare()
        sync()
    phases["wake"] = time.perf_counter() - start
    params = [p for p in policy.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    timer = StepTimer()
    draw = noise.draw if noise is not None else NoiseDraw()
    device = next(policy.parameters()).device
    done = stream_and_train(backend, algorithm, prompt_ids, cfg, score, draw, timer, train, params, device, sm_share,
                            unit)
    sync()
    used = used_gib()  # the engine awake and the groups' activations freed: what the card held through the stream
    begin = time.perf_counter()
    if done.update.finite:
        clip_gradients(params, 1.0)
        opt.step()
    sync()
    phases.update(generate=timer.phases.get("rollout", 0.0), rollout=timer.phases.get("rollout", 0.0), sleep=0.0,
                  score=0.0, train=timer.phases.get("train", 0.0) + time.perf_counter() - begin)
    rollout = done.scored.rollout
    extra = {"groups_under_rollout": done.overlapped_groups, "groups": done.scored.num_groups}
    return rollout, done.update, used, float(rollout.completion_mask.sum()), extra
