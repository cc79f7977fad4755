"""The memory plan against the card: what `QeRLModule`'s start-up plan says for each phase of a `benchmarks/step.py
--rollout vllm` row, next to what the card held (issue #36).

    PYTHONPATH=. python benchmarks/plan_vs_measured.py benchmarks/results/step-NVIDIA-H100-80GB-HBM3-2026-12-06-gsm8k-shape.json

The plan is qerl's own code, rebuilt on the CPU from the row: the engine's need from the vLLM settings step.py gave
it (`qerl.memory.engine.estimate_engine`), what the engine takes at the row's resolved `gpu_memory_utilization` of
the card (`EngineEstimate.with_budget`), asleep or awake through training as the row ran, and `estimate_memory`
with that engine at the row's micro-batch - the table `QeRLModule` prints. Per phase:

    rollout   plan: static + the engine awake
              card: `device_used_gib_rollout` (total - free during the rollout: every allocator, vLLM's included)
    training  plan: static + activations and log-prob buffers + the engine asleep (graphs, workspaces) or awake
              card: `device_used_gib_after_train` - torch's caching allocator keeps the segments the update
                    reserved, so this is the phase's high-water mark on the card
              torch: `peak_gb`, torch's peak allocation over the step

A row's `est_vs_peak` divides the plan's peak by torch's peak when the engine stays awake (the engine runs in the
training process and allocates through torch, so that peak counts the policy, the update and the engine: the plan's
terms) and by the card's larger reading when it sleeps: vLLM's CuMemAllocator unmaps a sleeping engine's memory
(`unmap_and_release` on each handle) while its tensors stay allocated in torch's accounting, so torch's peak then
books memory the card does not hold (87.89 GB on an 85.0 GB card, 2026-12-06).

Units: GB = 1e9 bytes in every number here (the plan's unit); the rows' `device_used_gib*` readings are GiB (2**30)
and are converted. Rows up to the 2026-12-06 lease did not record the card's size or the plan's budget: the size comes from
`CARD_TOTAL_GIB` (or `--total-gib`), and the budget is unknown (the sleep decision is then taken from the row).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GB, GIB = 1e9, 2**30
#: total_memory of cards whose rows did not record it: the "total capacity" torch printed in those leases' OOM
#: messages (the H100 80GB HBM3 cards lent here have 79.18 GiB = 85.0 GB, not the 79.65 GiB of the data sheet)
CARD_TOTAL_GIB = {"NVIDIA-H100-80GB-HBM3": 79.18, "NVIDIA-H200": 139.80}
#: step.py's engine: `max_model_len` = prompt + new + this; LoRA r32 on every projection (`apply_lora`'s default)
MODEL_LEN_EXTRA, LORA_RANK = 8, 32


def gb_of_gib(value: float | None) -> float | None:
    return None if value is None else value * GIB / GB


def measured(row: dict) -> dict[str, float | None]:
    """What a row measured, in GB: the card during the first step's rollout (an awake engine's later rollouts also
    hold the previous update's cached segments), with the engine asleep before the update, and after training;
    torch's peak allocation and peak reserve over the step (the asleep reading and the reserve: rows after
    the 2026-12-06 lease)."""
    first = row.get("device_used_gib_first_rollout", row.get("device_used_gib_rollout"))
    return {"card_rollout": gb_of_gib(first),
            "card_asleep": gb_of_gib(row.get("device_used_gib_asleep")),
            "card_after_train": gb_of_gib(row.get("device_used_gib_after_train")),
            "torch_peak": row.get("peak_gb"), "torch_peak_reserved": row.get("peak_reserved_gb")}


def off_pct(plan: float | None, seen: float | None) -> float | None:
    """How far the plan is off, in % of the measurement (+: the plan says more than was held)."""
    return None if plan is None or not seen else round(100 * (plan - seen) / seen, 1)


def compare(plan: dict[str, float], seen: dict[str, float | None], slept: bool) -> dict:
    """The plan (`rollout_peak`, `training_peak`, `peak`, GB) against a row's measurements (`measured`) per phase,
    and the row's `est_vs_peak` with what it was divided by (see the module docstring)."""
    def gb(v):
        return None if v is None else round(v, 2)

    phases = {
        "rollout": {"plan_gb": plan["rollout_peak"], "card_gb": gb(seen["card_rollout"]),
                    "off_card_pct": off_pct(plan["rollout_peak"], seen["card_rollout"])},
        "training": {"plan_gb": plan["training_peak"], "card_gb": gb(seen["card_after_train"]),
                     "off_card_pct": off_pct(plan["training_peak"], seen["card_after_train"]),
                     "torch_peak_gb": seen["torch_peak"],
                     "off_torch_pct": None if slept else off_pct(plan["training_peak"], seen["torch_peak"])}}
    cards = [v for v in (seen["card_rollout"], seen["card_after_train"]) if v is not None]
    card = max(cards) if cards else None
    if slept:
        against, value = ("the card (larger of its rollout and after-training readings): torch's peak counts the "
                          "sleeping engine's unmapped pool"), card
    else:
        against, value = ("torch's peak allocation (the awake engine allocates through torch; the card also holds "
                          "torch's cached segments and non-torch memory)"), seen["torch_peak"]
    return {"phases": phases, "est_vs_peak": round(plan["peak"] / value, 3) if value else None,
            "est_vs_peak_against": against, "est_vs_card": round(plan["peak"] / card, 3) if card else None}


def update_footprint(estimate: dict[str, float], row: dict) -> dict[str, float | None]:
    """The update's own memory (GB), planned and measured. torch: peak - (allocated after the step - grads and AdamW
    m, v), the activations plus the LoRA grads at the peak; planned: the training terms + the grads. card: the card
    after training - before it (the engine asleep, or the rollout reading for an awake engine), everything the update
    left reserved; planned: the training terms + grads + AdamW m, v."""
    training = sum(v for k, v in estimate.items() if k.startswith("training/"))
    grads, states = estimate["static/trainable params"], estimate["static/grads + AdamW m, v"]
    seen = measured(row)
    before = seen["card_asleep"] if row["vllm"]["slept"] else seen["card_rollout"]
    torch_grew = (row["peak_gb"] - (row["after_step_gb"] - states)
                  if row.get("peak_gb") and row.get("after_step_gb") else None)
    card_grew = seen["card_after_train"] - before if before is not None and seen["card_after_train"] else None
    return {"plan_torch_gb": training + grads, "torch_gb": torch_grew,
            "off_torch_pct": off_pct(training + grads, torch_grew),
            "plan_card_gb": training + states, "card_gb": card_grew,
            "off_card_pct": off_pct(training + states, card_grew)}


def row_settings(row: dict, prompt: int):
    """The `EngineSettings` of the `VLLM` backend step.py built for `row`, as `VLLM.engine_estimate` maps them on a
    GPU (a test holds the two equal); `sleep_mode` as the row ran."""
    from qerl.lora.apply import DEFAULT_TARGETS
    from qerl.memory import EngineSettings, weight_bits

    v = row["vllm"]
    served = row.get("served_as") or ""
    packed = served.split()[0] if "compressed-tensors" in served else None
    kv_gb = v.get("kv_cache_memory_gb")
    return EngineSettings(
        max_num_seqs=row["batch"] // row.get("gpus", 1), max_model_len=prompt + row.get("engine_new", row["new"]) + MODEL_LEN_EXTRA,
        kv_dtype_bytes=1 if v.get("kv_cache_dtype") == "fp8" else None,
        packed_bits=weight_bits(packed.upper()) if packed else None, lora_rank=LORA_RANK,
        lora_targets=tuple(sorted(DEFAULT_TARGETS)), kv_cache_bytes=None if kv_gb is None else kv_gb * GIB,
        cuda_graphs=True, sleep_mode=bool(v["slept"]), utilization=v["gpu_memory_utilization"])


def engine_plan(shape, run, bits: float, need, utilization: float, total: float, sleep: bool):
    """`QeRLModule`'s plan with a colocated engine: `need` (an `EngineEstimate`) run at `utilization` of a
    `total`-byte card, asleep or awake through training, at `run`'s micro-batch (`qerl.memory.startup`'s steps)."""
    from qerl.memory import estimate_memory
    from qerl.memory.startup import with_sleep

    return estimate_memory(shape, run, bits, engine=with_sleep(need.with_budget(utilization, total), sleep))


def plan_fields(estimate, policy_only, utilization: float, sleep: bool, total: float,
                budget: float | None) -> dict:
    """A vLLM row's plan fields (GB): `est_peak_gb` and `estimate` the engine-aware plan, `est_phases_gb` its
    phases, `est_policy_peak_gb` the plan without the engine (what rows up to the 2026-12-06 lease called est_peak_gb)."""
    return {"est_peak_gb": round(estimate.peak / GB, 2), "estimate": estimate.as_dict(),
            "est_phases_gb": {"rollout_peak": round(estimate.rollout_peak / GB, 2),
                              "training_peak": round(estimate.training_peak / GB, 2)},
            "est_policy_peak_gb": round(policy_only.peak / GB, 2),
            "plan": {"utilization": utilization, "sleep": sleep, "card_total_gb": round(total / GB, 3),
                     "budget_gb": None if budget is None else round(budget / GB, 2), "units": "GB = 1e9 bytes"}}


def reconstruct(row: dict, prompt: int, total: float) -> dict:
    """The engine-aware plan of a committed row, rebuilt on the CPU; `plan_fields` plus the engine's need and the
    peak with the engine awake through training (what `decide_sleep` weighs against the budget)."""
    from step import PRESET, QUANT

    from qerl.memory import ModelShape, RunShape, estimate_engine, estimate_memory, weight_bits
    from qerl.models.random_init import RandomInit

    shape = ModelShape.from_config(RandomInit(PRESET[row["model"]], tokenizer="bytes").hf_config())
    local = row["batch"] // row.get("gpus", 1)
    run = RunShape(rows=local, prompt_len=prompt, response_len=row["new"], micro_batch=row["micro_batch"],
                   rollout_rows=local, gradient_checkpointing=row.get("gradient_checkpointing", True),
                   packed=str(row.get("layout", "")).startswith("packed_groups"))
    bits = weight_bits(QUANT[row["format"]])
    need = estimate_engine(shape, row_settings(row, prompt))
    util, sleep = row["vllm"]["resolved_utilization"], bool(row["vllm"]["slept"])
    plan = engine_plan(shape, run, bits, need, util, total, sleep)
    awake = engine_plan(shape, run, bits, need, util, total, False)
    fields = plan_fields(plan, estimate_memory(shape, run, bits), util, sleep, total, None)
    return dict(fields, need_gb=round(need.need / GB, 2), awake_peak_gb=round(awake.peak / GB, 2))


def longest_micro_batch(row: dict, prompt: int) -> int | None:
    """Decoder positions of the step's longest micro-batch at the lengths it drew (`lengths_drawn`, in rollout order,
    cut into micro-batches of `micro_batch` completions): a packed micro-batch is one copy of the prompt and its
    completions back to back, a padded one `micro_batch` rows as long as its longest. None without drawn lengths."""
    lengths, mb = row.get("lengths_drawn"), row.get("micro_batch")
    if not lengths or not mb:
        return None
    chunks = [lengths[i:i + mb] for i in range(0, len(lengths), mb)]
    if str(row.get("layout", "")).startswith("packed_groups"):
        return max(prompt + sum(c) for c in chunks)
    return max(len(c) * (prompt + max(c)) for c in chunks)


def drawn_plan(row: dict, prompt: int, total: float) -> dict | None:
    """The plan rebuilt at the step's own lengths: the same engine and micro-batch, the update sized for its longest
    micro-batch (`longest_micro_batch`) instead of the worst case the start-up plan must cover (every completion at
    the cap). A packed step's worst case is `prompt + micro_batch x new` positions, often 3x what a draw reaches, so
    its planned peak is an upper bound; this says whether the model is right where the step really was."""
    longest = longest_micro_batch(row, prompt)
    if longest is None:
        return None
    plan = reconstruct(row, prompt, total)
    packed = str(row.get("layout", "")).startswith("packed_groups")
    mb = row["micro_batch"]
    # the response length that gives the longest micro-batch's positions under the plan's update_tokens
    new = -(-(longest - prompt) // mb) if packed else -(-longest // mb) - prompt
    at_draw = reconstruct(replace_new(row, new), prompt, total)
    return {"longest_positions": longest, "worst_positions": (prompt + mb * row["new"]) if packed
            else mb * (prompt + row["new"]), "training_peak_gb": at_draw["est_phases_gb"]["training_peak"],
            "worst_training_peak_gb": plan["est_phases_gb"]["training_peak"]}


def replace_new(row: dict, new: int) -> dict:
    """`row` with its completion length `new` for the update but its engine (KV cache, `max_model_len`) as it ran:
    the engine's memory is fixed at start-up by the cap, not by what a step draws."""
    return dict(row, new=new, engine_new=row.get("engine_new", row["new"]))


def engine_kv_cache(backend, shape, settings) -> dict | None:
    """The KV cache the engine really allocated: vLLM's `num_gpu_blocks` x `block_size` tokens, and their GB on one
    GPU at the cache's dtype (`settings`: the engine's `EngineSettings`); None when the engine does not expose it."""
    from qerl.memory.engine import kv_bytes_per_token

    try:
        cache = backend.llm.llm_engine.vllm_config.cache_config
        tokens = int(cache.num_gpu_blocks) * int(cache.block_size)
    except (AttributeError, TypeError):  # an engine core in another process, or another vLLM layout
        return None
    per_token = kv_bytes_per_token(shape, settings.kv_dtype_bytes or settings.dtype_bytes)
    return {"tokens": tokens, "gb": round(tokens * per_token / settings.tensor_parallel_size / GB, 3)}


def drawn_text(row: dict, prompt: int, total: float) -> str:
    """One sentence: the training plan at the step's own lengths (`drawn_plan`) against the card, where the step's
    longest micro-batch fell short of the worst case the start-up plan covers; empty otherwise."""
    drawn = drawn_plan(row, prompt, total)
    if drawn is None or drawn["longest_positions"] >= drawn["worst_positions"]:
        return ""
    card = measured(row)["card_after_train"]
    off = off_pct(drawn["training_peak_gb"], card)
    return (f" At this step's lengths (its longest micro-batch {drawn['longest_positions']} positions, the worst "
            f"case {drawn['worst_positions']}) the training plan is {drawn['training_peak_gb']:.2f} GB against the "
            f"card's {card:.2f} GB ({'-' if off is None else f'{off:+.1f}%'}); the start-up plan's "
            f"{drawn['worst_training_peak_gb']:.2f} GB covers every completion at the cap.")


def report(path: str, total_gib: float | None = None) -> str:
    """The plan against the card for every vLLM row of a step-*.json file: a markdown table and a note per row."""
    with open(path) as f:
        data = json.load(f)
    lines = ["| row | phase | plan GB | card GB | plan vs card | torch peak GB | plan vs torch |",
             "|---|---|---|---|---|---|---|"]
    notes = []

    def pct(v):
        return "-" if v is None else f"{v:+.1f}%"

    def num(v):
        return "-" if v is None else f"{v:.2f}"

    for row in data["rows"]:
        if row.get("rollout") != "vllm" or row.get("status") != "ok":
            continue
        gib = total_gib or CARD_TOTAL_GIB.get(data["card"])
        total = row.get("plan", {}).get("card_total_gb", 0) * GB or (gib * GIB if gib else None)
        if total is None:
            raise SystemExit(f"{path}: the card {data['card']!r} has no recorded size; pass --total-gib")
        plan = reconstruct(row, data["prompt"], total)
        slept, util = bool(row["vllm"]["slept"]), row["vllm"]["resolved_utilization"]
        cmp = compare({**plan["est_phases_gb"], "peak": plan["est_peak_gb"]}, measured(row), slept)
        name = f"{row['model']} {row['format']}, engine {'asleep' if slept else 'awake'} in training"
        for phase, p in cmp["phases"].items():
            torch_peak = p.get("torch_peak_gb")
            torch_text = "-" if torch_peak is None else f"{torch_peak:.2f}" + (" (counts the unmapped engine)"
                                                                               if slept else "")
            lines.append(f"| {name} | {phase} | {p['plan_gb']:.2f} | {num(p['card_gb'])} | {pct(p['off_card_pct'])} "
                         f"| {torch_text} | {pct(p.get('off_torch_pct'))} |")
        update = update_footprint(plan["estimate"], row)
        kv = row.get("vllm_kv_cache")
        kv_text = (f" vLLM allocated {kv['gb']:.2f} GB of KV cache ({kv['tokens']} tokens), the plan "
                   f"{plan['estimate']['engine/vLLM KV cache']:.2f} GB." if kv else "")
        notes.append(
            f"{name}: engine need {plan['need_gb']:.2f} GB -> utilization {util} x {total / GB:.2f} GB = "
            f"{util * total / GB:.2f} GB; with the engine awake through training {plan['awake_peak_gb']:.2f} GB "
            f"(sleep {'on' if slept else 'off'}); without the engine {plan['est_policy_peak_gb']:.2f} GB (the row's "
            f"est_peak_gb then). est_vs_peak {cmp['est_vs_peak']} (plan peak {plan['est_peak_gb']:.2f} GB against "
            f"{cmp['est_vs_peak_against'].split(' (')[0].split(':')[0]}), est_vs_card {cmp['est_vs_card']}. The update"
            f" alone: plan {num(update['plan_torch_gb'])} vs torch {num(update['torch_gb'])} "
            f"({pct(update['off_torch_pct'])}), plan {num(update['plan_card_gb'])} vs card {num(update['card_gb'])} "
            f"({pct(update['off_card_pct'])}).{kv_text}{drawn_text(row, data['prompt'], total)}")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="benchmarks/results/step-*.json files with --rollout vllm rows")
    parser.add_argument("--total-gib", type=float, default=None,
                        help="the card's total memory in GiB, for rows that did not record it")
    args = parser.parse_args()
    for path in args.files:
        print(f"{os.path.basename(path)} (GB = 1e9 bytes; plan vs measured = (plan - measured) / measured)")
        print(report(path, args.total_gib))


if __name__ == "__main__":
    main()
