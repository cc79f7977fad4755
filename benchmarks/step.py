"""One full GRPO step on one GPU: rollout, scoring, log-probs, backward, optimizer - Qwen2.5 7B/14B/32B shapes.

Random weights (speed and memory do not depend on values), quantized on load (streamed, never a full bf16
copy), LoRA r32 on all 7 projections, group 8, prompt 256 tokens, EOS ignored (every completion is `new`
tokens long), temperature 1. The step runs the same pieces `QeRLModule` runs (the `HF` backend with its fast
engine, its `release_memory` between rollout and update, `qerl.training.update.accumulate_gradients` with the chunked
log-prob head, GRPO advantages and loss, gradient clipping, AdamW over the LoRA parameters), driven without a
Lightning Trainer so a 32B step needs nothing else. The reward is a real per-token computation on the sampled
ids (1 when most of a completion's ids are even, else 0: `step_overlap.even_reward`), so advantages are non-zero
and every micro-batch back-propagates.

Row spec: model:format:batch:new[:steps], format nvfp4|mxfp4|nf4|bf16; batch = completions per step (group
min(8, batch)). Each row: load (timed: `load_s` is the quantize-on-load time), then `steps` steps (default 2:
the first pays CUDA-graph capture and Triton compiles, the last is reported). Micro-batch: `--micro-batch auto`
(default) picks it from free memory with `qerl.memory.auto_micro_batch`; gradient checkpointing on by default.
Columns: peak = max allocated over the step; est = `qerl.memory` estimate (vLLM rows on a GPU: the engine-aware
plan `QeRLModule` prints - the engine at the utilization it got, asleep or awake as decided, at the row's
micro-batch - with `est_phases_gb`, `est_policy_peak_gb` the plan without the engine, and `plan_vs_measured` per
phase against the card, GB = 1e9 bytes: see `plan_vs_measured.py`); rollout share; tokens/s = batch x
new / step time; train TFLOP/s = (fwd + input-grad [+ recompute]) matmul FLOPs / training-phase time.
OOM is a result (`torch.cuda.OutOfMemoryError` is caught and reported). Rows starting after --budget-s are
listed as not run. Writes benchmarks/results/step-<card>-<date>.json after every row; prints the table last.

    PYTHONPATH=. python benchmarks/step.py --rows 32b:nvfp4:8:512 7b:nvfp4:8:512 7b:bf16:8:512 --budget-s 200

`--rollout vllm` generates with the `VLLM` backend instead (a colocated vLLM engine, NVFP4 served packed, bf16
dense; ignore_eos; the backend's default mismatch scoring under the policy is part of the rollout phase);
`setup_s` is the engine build. `--vllm-sleep` puts the engine to sleep during training (weights to CPU, KV
cache dropped); `--vllm-sleep auto` lets `QeRLModule`'s start-up plan decide (`qerl.memory.startup.decide_sleep`:
off when the row fits the card with the engine awake through training). The rollout phase is split into `wake_s` (map the pool back, copy the weights in, apply the
adapter), `generate_s` (`generate_split`: the engine's part and the policy's scoring forward for the mismatch
metrics) and `sleep_s` (copy the weights out); after the optimizer the adapter is synced to the
engine (`sync_s`, inside `step_s`, as `RolloutSyncCallback` does; rows before 2026-12-02's fourth lease left
the sync out). `--memory-cap-gib 80` caps torch's allocator (`set_per_process_memory_fraction`) so an 80 GB
card is modelled on a bigger one; `device_used_gib` (total - free, all allocators, vLLM's included) is sampled
after loading the policy, after setup, in the rollout (`device_used_gib_first_rollout`: the first step's), with the
engine asleep (`device_used_gib_asleep`) and after training, since vLLM's sleep-mode pool bypasses torch's cap;
`peak_reserved_gb` is torch's peak reserve and `vllm_kv_cache` the KV cache vLLM allocated (tokens, GB). With `--vllm-sleep` the cap
also counts the sleeping engine's pool (unmapped, but still in torch's accounting): a 32B 16 x 2,048 row hit the
76 GiB cap while the card held 43.6 GiB (2026-12-02). `--card-gib 79` models the smaller card instead by holding
the rest of the free memory as ballast, which binds every allocator; the ballast is left out of every number.
A `--card-gib` row that finishes fits that card. With `--vllm-sleep` the row's `peak_gb` (torch's peak allocation)
still books the sleeping engine's unmapped pool (105.55 GB for a 32B 16 x 2,048 row that ran inside 79 GiB):
read `device_used_gib_*` for what the card held. With `--rollout vllm` on one GPU each row runs in a child
process (`child_rows.py`): an engine released in the same process can still be handing memory back while the
next one profiles the card, which stops vLLM ("Error in memory profiling", seen 2026-12-02).

`--aqn [RECIPE]` turns AQN on as `qerl fit` does for the recipe's `model.noise` (default the 7B NVFP4 GSM8K
recipe's `Exponential`; `--aqn-relative` for relative noise; see `step_aqn.py`): float32 targeted norms, sigma per
step from `NoiseCallback`, generation inside the backend's noise block. The row records `aqn` (the schedule, each
step's `noise/sigma`, `noise/realized_sigma`, `noise/moved_fraction`, `noise/row_sigma`, and whether the norms were
bit-exactly restored) and `aqn_s` (applying + restoring the noise, inside the rollout, out of `generate_s`). Compare
AQN on and off with two processes, one row each, the same flags otherwise.

`--vllm-lora-configs DIR` hands the engine tuned LoRA kernel configs (`benchmarks/lora_tune.py --out X` writes
X/lora-configs on the GPU that runs the row); the row records the folder and the async scheduling the engine ran.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # step_ranks, child_rows

from child_rows import rows_from_child, write_child_rows
from step_aqn import DEFAULT_RECIPE as DEFAULT_AQN_RECIPE

PROMPT, GROUP, PEAK_TFLOPS = 256, 8, 790.0
RESAMPLE = {"rounds": 0}  # --resample-rounds: extra generations of the whole batch per step (DAPO's resampling)
OVERLAP = {"on": False, "sm_share": 1.0, "gil_turn": None, "unit": "group"}  # --train-during-rollout [--train-sm-share, --gil-turn]: QeRLModule(train_during_rollout=True)'s step (step_overlap.py)
LAYOUT = {"pack_groups": False, "segments": None, "batched": False}  # --pack-groups: the update as qerl.models.packed.PackedGroups
STAGE = {"now": "start"}  # where a row is, so an OOM says in which phase it happened
QUANT = {"bf16": None, "nvfp4": "NVFP4", "mxfp4": "MXFP4", "nf4": "NF4"}
PRESET = {"7b": "qwen2.5-7b", "14b": "qwen2.5-14b", "32b": "qwen2.5-32b", "tiny": "tiny"}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(model: str, fmt: str, device: str, checkpointing: bool, aqn: bool = False):
    from qerl.lora.apply import apply_lora
    from qerl.models.logprobs import causal_lm
    from qerl.models.random_init import RandomInit

    loader = RandomInit(PRESET[model], tokenizer="bytes")
    sync()
    t0 = time.perf_counter()
    policy, tok = loader.load(quantizer=QUANT[fmt], dtype="bfloat16", device=device)
    sync()
    load_s = time.perf_counter() - t0
    policy = apply_lora(policy, rank=32, alpha=64.0)
    if aqn:  # as build_policy(noise=True): the targeted norms in float32, before any engine copies them
        from qerl.noise.precision import keep_norms_float32

        keep_norms_float32(policy)
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; fill it so the adapter changes every output
            torch.nn.init.normal_(p, std=1e-3)
    if checkpointing:
        causal_lm(policy).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    return policy, tok, loader.hf_config(), load_s


def train_flops(cfg, completions: list[int], checkpointing: bool) -> float:
    """Matmul FLOPs of the training phase over the real tokens: forward + input gradient (frozen base; LoRA terms
    ignored) over every prompt + completion position, LM head on completion positions, causal attention; plus one
    more forward with checkpointing. `completions`: each row's completion length (padding is not counted)."""
    from qerl.memory import ModelShape

    s = ModelShape.from_config(cfg)
    seqs = [PROMPT + c for c in completions]
    linear = 2 * s.layer_linear_params() * s.layers * sum(seqs) + 2 * s.vocab * s.hidden * sum(completions)
    attention = 2 * s.layers * s.hidden * sum(q * q for q in seqs)  # QK^T and PV, causal half, forward
    forward = linear + attention
    return forward * (2 + (1 if checkpointing else 0))


def synthetic_rollout(prompt_ids, cfg, policy):
    """Random completions of full length in place of sampling (`--synthetic-rollout`): measures the training
    phase's memory and time only (the KV cache, 9.7 GB at 32B x 16 x 2304, is far below the training peak)."""
    from qerl.types import Rollout

    device = next(policy.parameters()).device
    rows, n = len(prompt_ids) * cfg.n, cfg.max_new_tokens
    prompts = torch.tensor(prompt_ids, device=device).repeat_interleave(cfg.n, dim=0)
    from qerl.models.logprobs import causal_lm

    completion = torch.randint(3, min(40000, causal_lm(policy).config.vocab_size), (rows, n), device=device)
    return Rollout(prompt_ids=prompts, prompt_mask=torch.ones_like(prompts), completion_ids=completion,
                   completion_mask=torch.ones_like(completion), logprobs=torch.zeros(rows, n, device=device),
                   texts=[""] * rows, group_index=torch.arange(len(prompt_ids), device=device).repeat_interleave(cfg.n),
                   truncated=torch.ones(rows, dtype=torch.bool, device=device), group_size=cfg.n)


def one_step(policy, backend, opt, algorithm, prompt_ids, cfg, micro_batch: int, noise=None, profile=None) -> dict:
    """One step; `noise` (a `step_aqn.StepNoise`, its draw for this step made): each generation in its noise block;
    `profile` (a `train_profile.TrainProfile`): its profiler around the training half."""
    import contextlib

    from step_ranks import slowest

    from qerl.models.logprobs import PaddedRows, padded_positions
    from qerl.models.packed import PackedGroups
    from qerl.parallel import sum_over_ranks
    from qerl.training.distributed import global_totals, sum_gradients
    from qerl.training.update import TrainBatch, accumulate_gradients, clip_gradients

    phases = {"aqn": 0.0}
    layout = (PackedGroups(segments=LAYOUT["segments"], batched=LAYOUT["batched"]) if LAYOUT["pack_groups"]
              else PaddedRows())
    backend.scoring_layout = layout  # VLLM's own mismatch forward (--mismatch rollout), as QeRLModule sets it

    extra = {}
    sync()
    t0 = time.perf_counter()
    if OVERLAP["on"] and backend is not None:  # --train-during-rollout
        from step_overlap import overlapped_step

        STAGE["now"] = "step: rollout with the groups training as they finish"
        rollout, result, used_at_rollout, tokens, extra = overlapped_step(
            policy, backend, opt, algorithm, prompt_ids, cfg, micro_batch, layout, noise, phases, sync, device_used_gib,
            OVERLAP["sm_share"], OVERLAP["unit"])
        used_asleep = None
    else:
        def generate():
            with noise.generating(backend, phases) if noise is not None else contextlib.nullcontext():
                return backend.generate(prompt_ids, cfg)

        STAGE["now"] = "step: rollout (generation and the policy's mismatch scoring)"
        if hasattr(backend, "prepare"):  # vLLM: wake (sleep mode) and take the synced adapter, timed on its own
            backend.prepare()
            sync()
        phases["wake"] = time.perf_counter() - t0
        rollout = synthetic_rollout(prompt_ids, cfg, policy) if backend is None else generate()
        for _ in range(RESAMPLE["rounds"] if backend is not None else 0):  # DAPO's dynamic sampling: a second draw
            generate()
        used_at_rollout = device_used_gib()
        sync()
        t_sleep = time.perf_counter()
        phases["generate"] = t_sleep - t0 - phases["wake"] - phases["aqn"]
        if backend is not None:
            backend.release_memory()  # KV cache and graphs go before the update, as QeRLModule's collect step does
        sync()
        used_asleep = device_used_gib() if getattr(backend, "sleep_mode", False) else None
        phases["sleep"] = time.perf_counter() - t_sleep
        phases["rollout"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        from step_overlap import even_reward

        rewards = even_reward(rollout)
        advantages = algorithm.advantages(rewards, rollout.group_size)
        sync()
        phases["score"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        STAGE["now"] = f"step: training (micro-batch {micro_batch})"
        profiling = profile.around() if profile is not None else contextlib.nullcontext()
        with profiling:
            opt.zero_grad(set_to_none=True)
            params = [p for p in policy.parameters() if p.requires_grad]
            tokens = float(rollout.completion_mask.sum())
            totals = global_totals(rollout.num_rows, tokens, rollout.completion_ids.device)  # None in one process
            deferred = getattr(backend, "mismatch_deferred", False)  # --mismatch update: measured in this forward
            result = accumulate_gradients(policy, algorithm, TrainBatch(rollout, advantages, measure_mismatch=deferred),
                                          micro_batch, cfg.temperature, lambda loss: loss.backward(), totals=totals,
                                          layout=layout)
            sum_gradients(params, result.finite)  # under torchrun: the one all-reduce of QeRLModule's DDP step
            clip_gradients(params, 1.0)
            opt.step()
            sync()
        phases["train"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    if backend is not None:
        backend.sync_weights(policy)  # the trained adapter to the engine, as RolloutSyncCallback does every step
    sync()
    phases["sync"] = time.perf_counter() - t3
    phases["step"] = time.perf_counter() - t0
    return {"phases": slowest(phases), "finite": result.finite, "loss": result.metrics.get("loss"),
            "device_used_gib_rollout": used_at_rollout, "device_used_gib_asleep": used_asleep,
            "mismatch": {k: round(float(v), 6) for k, v in {**getattr(backend, "last_metrics", {}), **{
                k: v for k, v in result.metrics.items() if k.startswith("rollout/mismatch")}}.items()},
            "generate_split": {k: round(v, 3) for k, v in getattr(backend, "last_timings", {}).items()},
            "sync_split": {k: round(v, 3) for k, v in getattr(backend, "sync_timings", {}).items()},
            "preemptions": getattr(backend, "last_metrics", {}).get("rollout/preemptions"),
            "recomputed_tokens": getattr(backend, "last_metrics", {}).get("rollout/recomputed_tokens"),
            "noise": noise.metrics(backend) if noise is not None else None,
            "completion_lengths": rollout.completion_mask.sum(1).tolist(),  # this rank's rows
            "padded_positions": padded_positions(rollout.completion_mask, micro_batch),  # completion positions, rows
            "layout": layout.name + {None: "", True: "-segments", False: "-mask"}[getattr(layout, "segments", None)]
            + ("-batched" if getattr(layout, "batched", False) else ""),
            "decoder_positions": layout.positions(rollout, micro_batch),  # what the update's decoder computed
            "completion_tokens": int(sum_over_ranks([tokens], rollout.completion_ids.device)[0]), **extra}


BALLAST: list = []  # --card-gib: device memory held so that everything else has the modelled card's size


def ballast_bytes() -> int:
    return sum(t.numel() for t in BALLAST)


def hold_ballast(card_gib: float) -> None:
    """Take all free device memory but `card_gib` GiB, so torch and vLLM together see a card of that size.

    Unlike `set_per_process_memory_fraction` (`--memory-cap-gib`), this binds every allocator: vLLM's sleep-mode
    pool stays in torch's accounting while it sleeps (its memory unmapped), so a cap counts memory the card does
    not hold. The ballast is left out of every reported number."""
    free, _ = torch.cuda.mem_get_info()
    spare = int(free - card_gib * 2**30)
    if spare > 0:
        BALLAST.append(torch.empty(spare, dtype=torch.uint8, device="cuda"))


def allocated_gb(peak: bool = False) -> float:
    """torch's allocated (or peak allocated) bytes in GB, the ballast left out."""
    used = torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()
    return round((used - ballast_bytes()) / 1e9, 2)


def reserved_gb(peak: bool = False) -> float:
    """torch's reserved (or peak reserved) bytes in GB, the ballast left out: what the caching allocator holds."""
    used = torch.cuda.max_memory_reserved() if peak else torch.cuda.memory_reserved()
    return round((used - ballast_bytes()) / 1e9, 2)


def device_used_gib() -> float | None:
    """What the card holds (all allocators, vLLM's included), the ballast left out."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return round((total - free - ballast_bytes()) / 2**30, 2)


def vllm_settings(batch: int, new: int, args) -> dict:
    """The `VLLM` keyword arguments of a row (`plan_vs_measured.row_settings` rebuilds the engine's from a row)."""
    return {"gpu_memory_utilization": args.vllm_util, "max_model_len": PROMPT + new + 8, "max_num_seqs": batch,
            "enable_sleep_mode": {"on": True, "off": False}.get(args.vllm_sleep, "auto"),
            "compile": not args.vllm_no_compile, "kv_cache_memory_gb": args.vllm_kv_gib,
            "kv_cache_dtype": args.vllm_kv_dtype, "measure_mismatch": "update" if args.mismatch == "update" else True,
            "lora_configs": args.vllm_lora_configs}


def vllm_backend(policy, tok, batch: int, new: int, args, plan=None, lengths: list[int] | None = None):
    """The `VLLM` backend (EOS ignored) built on `policy`; returns it and its setup seconds. `plan(backend, policy)`:
    the start-up memory plan (and `--vllm-sleep auto`'s decision), made before the engine starts."""
    from qerl.rollout.vllm import VLLM

    class NoEosVLLM(VLLM):
        def sampling_params(self, sampling, prompt_index):
            params = super().sampling_params(sampling, prompt_index)
            params.ignore_eos = True
            return params

    if lengths is not None:  # each completion its own drawn length (benchmarks/lengths.py)
        from lengths import length_model_vllm

        NoEosVLLM = length_model_vllm(NoEosVLLM, lengths)
    backend = NoEosVLLM(**vllm_settings(batch, new, args))
    if plan is not None:
        plan(backend, policy)
    sync()
    t0 = time.perf_counter()
    backend.setup(policy, tok)
    sync()
    return backend, round(time.perf_counter() - t0, 1)


def run_row(spec: dict, args) -> dict:
    from step_ranks import own_prompts

    from qerl.algorithms import GRPO
    from qerl.memory import ModelShape, RunShape, auto_micro_batch, estimate_memory, free_device_memory, weight_bits
    from qerl.parallel import world
    from qerl.rollout import HF
    from qerl.rollout.fast import FastEngine
    from qerl.types import SamplingConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ranks, rank = world()
    row = dict(spec, gpus=ranks, train_during_rollout=OVERLAP["on"],
               train_sm_share=OVERLAP["sm_share"] if OVERLAP["on"] else None,
               gil_turn_s=OVERLAP["gil_turn"] if OVERLAP["on"] else None,
               engine_priority=OVERLAP.get("engine_priority") if OVERLAP["on"] else None,
               train_unit=OVERLAP["unit"] if OVERLAP["on"] else None)
    model, fmt, batch, new = spec["model"], spec["format"], spec["batch"], spec["new"]
    local = batch // ranks  # completions per step on this rank (the global batch under torchrun)
    noise = None
    if args.aqn:  # the recipe parsed before the model loads: a bad recipe fails at once
        from step_aqn import StepNoise

        noise = StepNoise(args.aqn, args.aqn_relative, args.aqn_step)
        row["aqn"] = dict(noise.describe(), steps=[])
    else:
        row["aqn"] = {"on": False}
    STAGE["now"] = "load"
    policy, tok, hf_cfg, load_s = build(model, fmt, device, not args.no_checkpointing, aqn=noise is not None)
    row["load_s"] = round(load_s, 1)
    if device == "cuda":
        row["after_load_gb"] = allocated_gb()
    used_at_load = device_used_gib()  # the card before any engine: CUDA context + the policy (None off CUDA)
    STAGE["now"] = "step"
    shape = ModelShape.from_config(hf_cfg)
    from qerl.training.completion_trainer import MAX_BUFFERS

    by_completion = OVERLAP["on"] and OVERLAP["unit"] == "completion"  # its gradient buffers, as QeRLModule plans
    run = RunShape(rows=local, prompt_len=PROMPT, response_len=new, micro_batch=local, rollout_rows=local,
                   gradient_checkpointing=not args.no_checkpointing, packed=LAYOUT["pack_groups"],
                   gradient_buffers=MAX_BUFFERS if by_completion else 0)
    bits = weight_bits(QUANT[fmt])
    free = free_device_memory(device)
    allocated = torch.cuda.memory_allocated() - ballast_bytes() if device == "cuda" else 0
    budget = (free + allocated) * 0.95 if free is not None else float("inf")
    if args.memory_cap_gib:  # torch's allocator is capped: plan for the cap, not the bigger card's free memory
        budget = min(budget, args.memory_cap_gib * 2**30 * 0.95)
    if args.micro_batch == "auto":
        micro = auto_micro_batch(shape, run, budget, quant_bits=bits)
    else:
        micro = int(args.micro_batch)
    from dataclasses import replace

    estimate = estimate_memory(shape, replace(run, micro_batch=micro), quant_bits=bits)
    row.update(micro_batch=micro, est_peak_gb=round(estimate.peak / 1e9, 2), estimate=estimate.as_dict(),
               gradient_checkpointing=not args.no_checkpointing)
    if rank == 0:
        print(estimate.table(), flush=True)
    group = min(GROUP, batch)
    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, 259 if model == "tiny" else 40000, (batch // group, PROMPT), generator=gen).tolist()
    prompt_ids = own_prompts(prompt_ids, ranks, rank)
    cfg = SamplingConfig(n=group, temperature=1.0, top_p=1.0, max_new_tokens=new, seed=0)
    backend = None
    if args.synthetic_rollout:
        row["rollout"] = "synthetic (training phase only)"
    elif args.rollout == "vllm":
        engine = {}

        def plan(backend, policy):  # QeRLModule's start-up plan for this row (on the modelled card), before the engine
            from qerl.memory.engine import engine_as_run
            from qerl.memory.startup import cut_kv_cache_gb, decide_sleep

            if device != "cuda":  # no card: QeRLModule plans no engine either
                return
            engine.update(need=backend.engine_estimate(policy, device),
                          total=torch.cuda.get_device_properties(0).total_memory)
            if args.vllm_sleep == "auto":  # training under the rollout keeps the engine awake, its KV cache cut to fit
                runs, _ = engine_as_run(engine["need"], args.vllm_util, engine["total"], free)
                backend.resolved_sleep_mode, need, _ = decide_sleep(
                    shape, replace(run, micro_batch=micro), budget, bits, 2, engine["need"], runs,
                    stay_awake=OVERLAP["on"])
                backend.resolved_kv_cache_gb = cut_kv_cache_gb(engine["need"], need)
                engine["need"] = need
            if OVERLAP["on"]:
                from step_overlap import check_awake

                check_awake(backend, args.vllm_sleep)

        drawn = None
        if args.lengths != "fixed":
            from lengths import draw_lengths, summary

            drawn = draw_lengths(args.lengths, local, new, seed=0)
            row.update(lengths=args.lengths, lengths_drawn=drawn, lengths_summary=summary(drawn, new))
        backend, row["setup_s"] = vllm_backend(policy, tok, local, new, args, plan, drawn)
        if engine:  # the engine-aware plan QeRLModule prints, at the utilization the engine got (GB = 1e9 bytes)
            from plan_vs_measured import engine_kv_cache, engine_plan, plan_fields

            aware = engine_plan(shape, replace(run, micro_batch=micro), bits, engine["need"],
                                backend.resolved_utilization, engine["total"], backend.sleep_mode)
            row.update(plan_fields(aware, estimate, backend.resolved_utilization, backend.sleep_mode,
                                   engine["total"], budget),
                       vllm_kv_cache=engine_kv_cache(backend, shape, engine["need"].settings))
            if rank == 0:
                print(aware.table(), flush=True)
        row.update(rollout="vllm", served_as=backend.served_as,
                   device_used_gib={"load": used_at_load, "setup": device_used_gib()},
                   vllm={"gpu_memory_utilization": args.vllm_util, "resolved_utilization": backend.resolved_utilization,
                         "kv_cache_memory_gb": args.vllm_kv_gib, "kv_cache_dtype": args.vllm_kv_dtype,
                         "resample_rounds": args.resample_rounds,
                         "compile": not args.vllm_no_compile, "sleep": args.vllm_sleep, "slept": backend.sleep_mode, "mismatch": args.mismatch,
                         "lora_configs": backend.lora_configs, "async_scheduling": backend.resolved_async_scheduling})
    else:
        backend = HF(max_batch_rows=local)
        backend.setup(policy, tok)
        backend._fast_engine = FastEngine(backend)
        backend._fast_engine.eos_ids = []  # ignore EOS: every completion is `new` tokens
        row["rollout"] = "fast"
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.99))
    algorithm = GRPO()
    algorithm.configure(cfg)
    steps = []
    profile = None
    for index in range(spec.get("steps", 2) + (1 if args.profile_train else 0)):
        if index == spec.get("steps", 2):  # --profile-train: one more step, its update profiled, not timed
            from train_profile import TrainProfile

            profile = TrainProfile(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if noise is not None:
            from step_aqn import targeted_snapshot

            noise.begin_step(index)  # NoiseCallback: this step's sigma and seed
            clean = targeted_snapshot(policy)  # outside the timed step
        out = one_step(policy, backend, opt, algorithm, prompt_ids, cfg, micro, noise, profile)
        if profile is not None:
            from train_profile import table

            row["train_profile"] = dict(profile.summary(), train_s=round(out["phases"]["train"], 3),
                                        padded_positions=out.get("padded_positions"))
            if rank == 0:
                print(table(row["train_profile"]), flush=True)
            break
        if noise is not None:
            row["aqn"]["steps"].append(dict(out["noise"], step=noise.first_step + index,
                                            norms_restored=bool(torch.equal(clean, targeted_snapshot(policy)))))
        if args.rollout == "vllm" and backend is not None:
            out["device_used_gib_after_train"] = device_used_gib()
        out["peak_gb"] = allocated_gb(peak=True) if device == "cuda" else None
        out["peak_reserved_gb"] = reserved_gb(peak=True) if device == "cuda" else None
        if device == "cuda":
            row["after_step_gb"] = allocated_gb()  # weights + LoRA, grads, AdamW
        steps.append(out)
        if rank == 0:
            print(f"  step: {out['phases']} sync {out['sync_split']} peak {out['peak_gb']} GB", flush=True)
    last = steps[-1]
    ph = last["phases"]
    # this rank's rows; under torchrun every rank trains an equal share of the global batch
    flops = train_flops(hf_cfg, last["completion_lengths"], not args.no_checkpointing) * ranks
    row.update(status="ok", peak_gb=max(s["peak_gb"] or 0 for s in steps), step_s=round(ph["step"], 2),
               first_step_s=round(steps[0]["phases"]["step"], 2), rollout_s=round(ph["rollout"], 2),
               train_s=round(ph["train"], 2), wake_s=round(ph["wake"], 2), generate_s=round(ph["generate"], 2),
               sleep_s=round(ph["sleep"], 2), sync_s=round(ph["sync"], 3), aqn_s=round(ph["aqn"], 4),
               noise=last.get("noise"), rollout_share=round(ph["rollout"] / ph["step"], 3),
               tokens_per_s=round(last["completion_tokens"] / ph["step"], 1),
               rollout_tok_s=round(last["completion_tokens"] * (1 + RESAMPLE["rounds"]) / ph["rollout"], 1),
               preemptions=last.get("preemptions"), recomputed_tokens=last.get("recomputed_tokens"),
               padded_positions=last.get("padded_positions"),
               layout=last.get("layout"), decoder_positions=last.get("decoder_positions"),
               train_tflops=round(flops / ph["train"] / 1e12, 1), finite=last["finite"],
               completion_tokens=last["completion_tokens"], weight_bits=round(bits, 3),
               peak_reserved_gb=max(s["peak_reserved_gb"] or 0 for s in steps) or None,
               device_used_gib_rollout=last["device_used_gib_rollout"], device_used_gib_asleep=last["device_used_gib_asleep"],
               # an awake engine's later rollouts also hold the previous update's cached segments: the plan's rollout
               # phase is the first step's
               device_used_gib_first_rollout=steps[0]["device_used_gib_rollout"],
               device_used_gib_after_train=last.get("device_used_gib_after_train"), mismatch=last.get("mismatch"),
               generate_split=last.get("generate_split"), sync_split=last.get("sync_split"),
               losses=[s["loss"] for s in steps], groups_under_rollout=last.get("groups_under_rollout"))
    if backend is not None and hasattr(backend, "close"):
        backend.close()
    row["train_pct_peak"] = round(100 * row["train_tflops"] / PEAK_TFLOPS, 1)
    if "est_phases_gb" in row:  # a vLLM row: like with like (torch's peak counts a sleeping engine's unmapped pool)
        from plan_vs_measured import compare, measured

        row["plan_vs_measured"] = compare({**row["est_phases_gb"], "peak": row["est_peak_gb"]}, measured(row),
                                          row["plan"]["sleep"])
        row["est_vs_peak"] = row["plan_vs_measured"]["est_vs_peak"]
    else:
        row["est_vs_peak"] = round(row["est_peak_gb"] / row["peak_gb"], 3) if row["peak_gb"] else None
    del policy, backend, opt
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'model':<5}{'fmt':<7}{'gpus':>5}{'batch':>6}{'new':>6}{'mb':>4}{'load s':>8}{'peak GB':>9}{'est GB':>8}"
            f"{'step s':>8}{'1st s':>7}{'rollout':>8}{'tok/s':>8}{'TFLOP/s':>9}{'aqn ms':>8}  status")
    lines = [head]
    for r in rows:
        def f(key, fmt="{}", r=r):
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"{r['model']:<5}{r['format']:<7}{f('gpus'):>5}{r['batch']:>6}{r['new']:>6}{f('micro_batch'):>4}{f('load_s'):>8}"
                     f"{f('peak_gb'):>9}{f('est_peak_gb'):>8}{f('step_s'):>8}{f('first_step_s'):>7}"
                     f"{f('rollout_share', '{:.0%}'):>8}{f('tokens_per_s'):>8}{f('train_tflops'):>9}"
                     f"{aqn_ms(r):>8}  {r['status']}")
    return "\n".join(lines)


def aqn_ms(row: dict) -> str:
    """The table's AQN column: milliseconds applying and restoring the noise, "-" for a row without AQN."""
    return f"{1000 * row['aqn_s']:.1f}" if row.get("aqn", {}).get("on") and row.get("aqn_s") is not None else "-"


def spec_text(spec: dict) -> str:
    return ":".join(str(spec[k]) for k in ("model", "format", "batch", "new", "steps"))


def attempt(spec: dict, args) -> dict:
    """`run_row`, with an out-of-memory error as the row's status; memory handed back afterwards."""
    try:
        return run_row(spec, args)
    except (torch.OutOfMemoryError, RuntimeError) as exc:  # vLLM's cumem pool raises a plain RuntimeError
        if "out of memory" not in str(exc).lower():
            raise
        return dict(spec, status=f"OOM in {STAGE['now']}: " + str(exc).split("\n")[0][:200])
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=["32b:nvfp4:8:512", "7b:nvfp4:8:512", "7b:bf16:8:512",
                                                      "32b:nvfp4:16:2048:1"])
    parser.add_argument("--budget-s", type=float, default=1e9, help="rows starting after this many seconds are not run")
    parser.add_argument("--micro-batch", default="auto")
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--synthetic-rollout", action="store_true",
                        help="random full-length completions instead of sampling: training-phase memory/time only")
    parser.add_argument("--no-baseline", action="store_true",
                        help="under torchrun: skip rank 0's one-GPU run of each row before the data-parallel one")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--rollout", choices=("fast", "vllm"), default="fast", help="the rollout engine")
    parser.add_argument("--vllm-util", type=lambda v: v if v == "auto" else float(v), default=0.35,
                        help="gpu_memory_utilization of the vLLM engine (a fraction, or auto: the memory plan's need)")
    parser.add_argument("--vllm-no-compile", action="store_true",
                        help="VLLM(compile=False): no torch.compile, full CUDA graphs for decode only (faster setup)")
    parser.add_argument("--vllm-kv-gib", type=float, default=None,
                        help="VLLM kv_cache_memory_gb: a fixed KV cache instead of a share of gpu_memory_utilization")
    parser.add_argument("--vllm-sleep", nargs="?", const="on", default="off", choices=("on", "off", "auto"),
                        help="vLLM sleep mode during training (bare: on; auto: the start-up memory plan decides)")
    parser.add_argument("--mismatch", choices=("rollout", "update"), default="rollout",
                        help="VLLM measure_mismatch: a scoring forward in the rollout, or the update's forward")
    parser.add_argument("--memory-cap-gib", type=float, default=None, help="cap torch's allocator at this many GiB")
    parser.add_argument("--card-gib", type=float, default=None,
                        help="model a card of this many GiB: hold the rest of the device's free memory as ballast "
                             "(binds vLLM too; prefer it to --memory-cap-gib with --vllm-sleep)")
    parser.add_argument("--lengths", default="fixed", choices=("fixed", "gsm8k", "dapo"),
                        help="vLLM rows: each completion's length drawn from this distribution (benchmarks/lengths.py)")
    parser.add_argument("--resample-rounds", type=int, default=0,
                        help="extra generations of the whole batch per step, timed in the rollout (DAPO resampling)")
    parser.add_argument("--vllm-kv-dtype", default="auto", choices=("auto", "fp8"),
                        help="VLLM kv_cache_dtype: auto (the model's dtype) or fp8 (half the KV bytes)")
    parser.add_argument("--vllm-lora-configs", default=None, metavar="DIR",
                        help="VLLM lora_configs: tuned LoRA kernel configs (DIR/lora-configs of benchmarks/lora_tune.py)")
    parser.add_argument("--aqn", nargs="?", const=DEFAULT_AQN_RECIPE, default=None, metavar="RECIPE",
                        help="AQN on, as `qerl fit` runs this recipe's model.noise (bare: the 7B NVFP4 GSM8K recipe's "
                             "Exponential 1e-2 -> 5e-4, 10 stages); see benchmarks/step_aqn.py")
    parser.add_argument("--aqn-relative", action="store_true",
                        help="with --aqn: the schedule's relative noise (Z = sigma * |w| * N(0, 1))")
    parser.add_argument("--aqn-step", type=int, default=None,
                        help="with --aqn: the global step of the row's first step (default: the schedule's first "
                             "step with sigma > 0, 50 of 500 for the default recipe)")
    parser.add_argument("--profile-train", action="store_true",
                        help="one more step after the timed ones, its update under torch's profiler: the row's "
                             "`train_profile` (see benchmarks/train_profile.py)")
    parser.add_argument("--train-during-rollout", action="store_true",
                        help="each group trains as soon as the engine finishes it, under the rest of the generate "
                             "(QeRLModule(train_during_rollout=True), benchmarks/step_overlap.py); the row records "
                             "groups_under_rollout; with --rollout vllm and an engine awake through training")
    parser.add_argument("--train-sm-share", type=float, default=1.0,
                        help="with --train-during-rollout: the share of the GPU's SMs the update may use while the "
                             "engine decodes (QeRLModule(train_during_rollout_sm_share=...): a CUDA green context)")
    parser.add_argument("--train-unit", choices=["group", "completion"], default="group",
                        help="with --train-during-rollout: a group trains when its last completion ends (group), or "
                             "the last open groups' completions train as they end (completion; "
                             "QeRLModule(train_during_rollout_unit=...), qerl.training.completion_trainer)")
    parser.add_argument("--gil-turn", type=float, default=None,
                        help="with --train-during-rollout: seconds a thread may hold the GIL while the other waits "
                             "during the stream (qerl.training.gpu_sharing.GIL_TURN_S, 0.5 ms by default)")
    parser.add_argument("--engine-priority", choices=["high", "default"], default="high",
                        help="with --train-during-rollout: the engine's decode on a stream of the highest priority "
                             "(qerl.training.gpu_sharing.ENGINE_FIRST) or on the default one")
    parser.add_argument("--pack-groups", action="store_true",
                        help="the update packs each group's completions behind one copy of its prompt, no padding "
                             "(QeRLModule(pack_groups=True), qerl.models.packed); the row records decoder_positions")
    parser.add_argument("--pack-attention", choices=["auto", "segments", "mask", "batched"], default="auto",
                        help="with --pack-groups: how a packed group attends (PackedGroups(segments=...)): by its "
                             "length (auto, the default), always segment by segment, always through the dense "
                             "block mask, or segment by segment with all completions in one padded call "
                             "(PackedGroups(segments=True, batched=True))")
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run --rows here, write them to this file
    args = parser.parse_args()
    if args.lengths != "fixed" and args.rollout != "vllm":
        parser.error(f"--lengths {args.lengths} needs --rollout vllm (the fast engine generates every completion "
                     "to the cap)")
    if (args.aqn_relative or args.aqn_step is not None) and not args.aqn:
        parser.error("--aqn-relative and --aqn-step need --aqn")
    if args.aqn and args.synthetic_rollout:
        parser.error("--aqn needs a rollout to put the noise in; drop --synthetic-rollout")
    RESAMPLE["rounds"] = args.resample_rounds
    LAYOUT["pack_groups"] = args.pack_groups
    OVERLAP.update(on=args.train_during_rollout, sm_share=args.train_sm_share, unit=args.train_unit)
    from qerl.training import gpu_sharing

    if args.gil_turn is not None:
        if args.gil_turn <= 0:
            parser.error(f"--gil-turn {args.gil_turn}: seconds a thread may hold the GIL, > 0 (e.g. 0.0005)")
        gpu_sharing.GIL_TURN_S = args.gil_turn
    OVERLAP["gil_turn"] = gpu_sharing.GIL_TURN_S
    gpu_sharing.ENGINE_FIRST = args.engine_priority == "high"
    OVERLAP["engine_priority"] = args.engine_priority
    if not 0 < args.train_sm_share <= 1:
        parser.error(f"--train-sm-share {args.train_sm_share}: a share of the SMs in (0, 1]")
    if args.train_during_rollout and args.resample_rounds:
        parser.error("--train-during-rollout trains one rollout a step: it cannot run with --resample-rounds")
    LAYOUT["segments"] = {"auto": None, "segments": True, "mask": False, "batched": True}[args.pack_attention]
    LAYOUT["batched"] = args.pack_attention == "batched"
    if args.pack_attention != "auto" and not args.pack_groups:
        parser.error("--pack-attention needs --pack-groups")
    from step_ranks import agree, bind_device, compare_to_baseline, join, launched, leave

    ranks, rank, local_rank = launched()
    # vLLM rows on one GPU run each in its own process (the children cap themselves): the last engine's memory is
    # gone before the next engine profiles the card
    delegate = args.rollout == "vllm" and ranks == 1 and len(args.rows) > 1 and not args.child
    if args.memory_cap_gib and torch.cuda.is_available() and not delegate:
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, args.memory_cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory))
    if args.card_gib and torch.cuda.is_available() and not delegate:
        hold_ballast(args.card_gib)
    specs = []
    for text in args.rows:
        parts = text.split(":")
        if len(parts) not in (4, 5) or parts[0] not in PRESET or parts[1] not in QUANT:
            raise SystemExit(f"--rows {text!r}: expected model:format:batch:new[:steps], model in {list(PRESET)}, "
                             f"format in {list(QUANT)}, e.g. 32b:nvfp4:8:512")
        specs.append({"model": parts[0], "format": parts[1], "batch": int(parts[2]), "new": int(parts[3]),
                      "steps": int(parts[4]) if len(parts) == 5 else 2})
    if args.child:
        write_child_rows(args.child, [attempt(spec, args) for spec in specs])
        return
    bind_device(local_rank)
    card = torch.cuda.get_device_name().replace(" ", "-") if torch.cuda.is_available() else "cpu"
    tag = f"-x{ranks}" if ranks > 1 else ""
    path = os.path.join(args.out, f"step-{card}{tag}-{datetime.date.today().isoformat()}"
                                  f"{'-' + args.tag if args.tag else ''}.json")
    start, rows = time.perf_counter(), []
    if ranks > 1:  # the one-GPU baseline: rank 0 alone, before the others are joined; then every row on all ranks
        plan = ([("baseline", s) for s in specs] if rank == 0 and not args.no_baseline else []) + \
            [("ranks", s) for s in specs]
    else:
        plan = [("ranks", s) for s in specs]
    for phase, spec in plan:
        if phase == "ranks":
            join(ranks)
        if agree(time.perf_counter() - start > args.budget_s):  # rank 0 decides for every rank
            rows.append(dict(spec, status="not run (time budget)"))
        else:
            rows += rows_from_child(__file__, [*sys.argv[1:], "--rows", spec_text(spec)], [spec]) if delegate \
                else [attempt(spec, args)]
            compare_to_baseline(rows)
        if rank != 0:
            continue
        os.makedirs(args.out, exist_ok=True)
        with open(path, "w") as fh:
            json.dump({"card": card, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                       "prompt": PROMPT, "group": GROUP, "gpus": ranks, "rollout": args.rollout, "aqn": args.aqn,
                       "aqn_relative": args.aqn_relative,
                       "memory_cap_gib": args.memory_cap_gib, "card_gib": args.card_gib, "rows": rows}, fh, indent=1)
    leave()
    if rank == 0:
        print(table(rows))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
