"""What training under the generation tail (`train_during_rollout`, issue #36) can reach at the 7B GSM8K shape, from
committed files, and what the decode must keep and the update must get for the 1.5x.

Inputs: a plain NVFP4 row and a bf16 row of the same drawn lengths (`step.py --lengths gsm8k --pack-groups`), the
rollout profile (`rollout_profile.py`: decode ms a step by batch), and optionally an overlap row of the same lengths
(what it hid and what it cost the generate, measured). The generate is `step_ceiling.py`'s model (step t runs the
rows still going, each step the profile's time at that batch), scaled so the modelled generate equals the plain
row's measured one.

The overlap is simulated step by step. A group (its 8 completions, as step.py draws them) ends at the step its
longest completion ends; its update costs the row's `train_s` times its share of the packed positions (the prompt
once, then its completions). One worker trains the ended groups one at a time, in the order they end. While it
trains during the generate, the decode runs at `keep` of its speed and the update at `share` of its own; when it has
nothing to train, the decode runs at full speed; what is left when the generate ends trains at full speed.
`keep + share = 1` is pure time-slicing (the 2026-12-07 H200 row); `keep = share = 1` is perfect hiding.
`benchmarks/probes/overlap_contention.py` measures both (`decode_kept`, `load_share` of its `train*` cells);
`--keep` / `--share` put its numbers in.

    python3 benchmarks/overlap_model.py \\
        benchmarks/results/step-NVIDIA-H100-80GB-HBM3-2026-12-07-gsm8k-nvfp4-packgroups.json \\
        benchmarks/results/step-NVIDIA-H100-80GB-HBM3-2026-12-07-gsm8k-bf16-packgroups.json \\
        benchmarks/results/rollout-profile-NVIDIA-H100-80GB-HBM3-2026-12-06.json --bf16-sleep-wake-s 1.1

The bf16 row's sleep and wake are the first step's (12.2 s on a one-step row, pinning host memory once); over many
steps they cost ~1 s (the H200 rows' second step: 0.77 s), which `--bf16-sleep-wake-s` puts in their place.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from step_ceiling import active_rows, interpolate, step_ms

PROMPT, GROUP = 256, 8  # step.py's prompt length and group size


@dataclass(frozen=True)
class Unit:
    """What the worker trains as one piece: a group (what is built) or a completion (`--per-completion`)."""

    end_step: int  # the decode step after which its last completion has ended (0-based; -1: at the prefill, which
    # samples every completion's first token)
    work_s: float  # its update at full speed


def groups_of(lengths: list[int], train_s: float, group: int = GROUP, prompt: int = PROMPT) -> list[Unit]:
    """The groups of a rollout (`group` consecutive completions each) in the order they end, each with its share of
    `train_s` by packed positions."""
    chunks = [lengths[i:i + group] for i in range(0, len(lengths), group)]
    positions = [prompt + sum(c) for c in chunks]
    total = sum(positions)
    made = [Unit(max(c) - 2, train_s * p / total) for c, p in zip(chunks, positions)]
    return sorted(made, key=lambda g: g.end_step)


def completions_of(lengths: list[int], train_s: float, group: int = GROUP, prompt: int = PROMPT) -> list[Unit]:
    """Each completion as its own update as it ends (`--per-completion`: `train_during_rollout_unit: completion`),
    in the order they end, priced at the packed rate by its tokens; a group's prompt is counted twice, with
    its first completion and its last (the ones ended together train as one packed batch sharing the prompt)."""
    positions = sum(prompt + sum(lengths[i:i + group]) for i in range(0, len(lengths), group))
    made = []
    for i in range(0, len(lengths), group):
        chunk = lengths[i:i + group]
        first, last = chunk.index(min(chunk)), chunk.index(max(chunk))
        for j, n in enumerate(chunk):
            extra = prompt * ((j == first) + (j == last))
            made.append(Unit(n - 2, train_s * (n + extra) / positions))
    return sorted(made, key=lambda g: g.end_step)


def decode_seconds(profile: dict, fmt: str, lengths: list[int], measured_s: float) -> tuple[float, list[float]]:
    """(prefill seconds, seconds of each decode step) of one generate, the model scaled to `measured_s`."""
    prefill = {r["batch"]: r["prefill_ms"] for r in profile["rows"] if r["fmt"] == fmt and r["lora"]}
    per_step = step_ms(profile, fmt)
    first = interpolate(prefill, len(lengths)) / 1e3
    steps = [interpolate(per_step, a) / 1e3 for a in active_rows(lengths)[1:]]
    scale = measured_s / (first + sum(steps))
    return first * scale, [s * scale for s in steps]


def simulate(prefill_s: float, steps_s: list[float], groups: list[Unit], keep: float, share: float) -> dict:
    """Generate seconds, update seconds left after it, and the units whose training began during it."""
    if not 0.0 < keep <= 1.0 or not 0.0 <= share <= 1.0:
        raise ValueError(f"keep {keep} must be in (0, 1] and share {share} in [0, 1]")
    clock, queue, begun, nxt, last = prefill_s, [], 0, 0, len(steps_s) - 1
    while nxt < len(groups) and groups[nxt].end_step < 0:  # ended at the prefill
        begun += 1 if share > 0.0 and not queue and steps_s else 0
        queue.append(groups[nxt].work_s)
        nxt += 1
    for t, decode in enumerate(steps_s):
        left = decode  # this step's decode work, in seconds at full speed
        while left > 0.0:
            if not queue or share == 0.0:  # nothing trains: the decode has the GPU
                clock, left = clock + left, 0.0
            elif queue[0] / share >= left / keep:  # the step ends first
                clock += left / keep
                queue[0] -= share * left / keep
                left = 0.0
            else:  # the group ends first; the next one (if any) starts now
                clock += queue[0] / share
                left -= keep * queue[0] / share
                queue.pop(0)
                begun += 1 if queue else 0
        while nxt < len(groups) and groups[nxt].end_step <= t:  # ended by this step: queued
            if not queue and share > 0.0 and t < last:
                begun += 1  # starts with the next step
            queue.append(groups[nxt].work_s)
            nxt += 1
    return {"generate_s": round(clock, 3), "train_after_s": round(sum(queue), 3), "trained_under_rollout": begun}


def model(nv: dict, bf: dict, profile: dict, keep: float, share: float, bf_sleep_wake_s: float | None,
          per_completion: bool = False) -> dict:
    """The NVFP4 step with training under the rollout at (`keep`, `share`) and its ratio to the bf16 step."""
    prefill, steps = decode_seconds(profile, "nvfp4", nv["lengths_drawn"], nv["generate_s"])
    items = (completions_of if per_completion else groups_of)(nv["lengths_drawn"], nv["train_s"])
    run = simulate(prefill, steps, items, keep, share)
    rest = nv["step_s"] - nv["generate_s"] - nv["train_s"]  # sync and the like
    step = run["generate_s"] + run["train_after_s"] + rest
    return {"keep": keep, "share": share, **run, "step_s": round(step, 2),
            "ratio": round(bf_step(bf, bf_sleep_wake_s) / step, 3)}


def bf_step(bf: dict, sleep_wake_s: float | None) -> float:
    """The bf16 row's step, its sleep and wake replaced by `sleep_wake_s` when given."""
    if sleep_wake_s is None:
        return bf["step_s"]
    return bf["step_s"] - bf.get("sleep_s", 0.0) - bf.get("wake_s", 0.0) + sleep_wake_s


def measured_overlap(nv: dict, overlap: dict) -> dict:
    """What an overlap row did against the plain row of the same lengths, without the model: the update seconds it
    hid (plain `train_s` minus what was left after the generate), how much longer its generate ran, and their
    quotient `slicing` (1: pure time-slicing, the decode lost what the update gained; 0: perfect hiding)."""
    hidden = nv["train_s"] - overlap["train_s"]
    stretch = overlap["generate_s"] - nv["generate_s"]
    return {"hidden_s": round(hidden, 2), "stretch_s": round(stretch, 2),
            "slicing": round(stretch / hidden, 3) if hidden > 0 else None,
            "groups_under_rollout": overlap.get("groups_under_rollout"),
            "step_s": {"plain": nv["step_s"], "overlap": overlap["step_s"]}}


def report(nv: dict, bf: dict, profile: dict, bf_sleep_wake_s: float | None, overlap: dict | None = None,
           per_completion: bool = False, keeps=(1.0, 0.9, 0.8, 0.7), shares=(0.3, 0.45, 0.6, 1.0)) -> dict:
    """The plain and perfect cases, a grid of (keep, share), the pairs that reach 1.5x, and (given an overlap row)
    what it measured."""
    plain = model(nv, bf, profile, 1.0, 0.0, bf_sleep_wake_s)
    out = {"bf16_step_s": round(bf_step(bf, bf_sleep_wake_s), 2), "nvfp4_plain_step_s": plain["step_s"],
           "ratio_plain": plain["ratio"], "unit": "completion" if per_completion else "group",
           "perfect": model(nv, bf, profile, 1.0, 1.0, bf_sleep_wake_s, per_completion),
           "grid": [model(nv, bf, profile, k, s, bf_sleep_wake_s, per_completion) for k in keeps for s in shares]}
    out["reaches_1_5x"] = [(c["keep"], c["share"]) for c in out["grid"] if c["ratio"] >= 1.5]
    if overlap is not None:
        out["measured_overlap"] = measured_overlap(nv, overlap)
    return out


def load_row(path: str, fmt: str) -> dict:
    """The first row of `fmt` with drawn lengths in a step-*.json, or a one-line exit naming the file."""
    with open(path) as f:
        rows = json.load(f).get("rows", [])
    for row in rows:
        if row.get("format") == fmt and row.get("lengths_drawn"):
            return row
    raise SystemExit(f"{path}: no {fmt} row with `lengths_drawn` (step.py --rollout vllm --lengths gsm8k)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("nvfp4_row", help="step-*.json with the plain NVFP4 row")
    p.add_argument("bf16_row", help="step-*.json with the bf16 row of the same drawn lengths")
    p.add_argument("profile", help="rollout-profile-*.json (LoRA rows)")
    p.add_argument("--overlap-row", default=None, help="step-*.json with an NVFP4 --train-during-rollout row")
    p.add_argument("--per-completion", action="store_true",
                   help="each completion trained as it ends (train_during_rollout_unit: completion)")
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7],
                   help="decode speed kept while the update trains (the probe's `decode_kept`)")
    p.add_argument("--share", type=float, nargs="+", default=[0.3, 0.45, 0.6, 1.0],
                   help="the update's speed beside the decode (the probe's `load_share`)")
    p.add_argument("--bf16-sleep-wake-s", type=float, default=None,
                   help="seconds of the bf16 engine's sleep + wake over many steps (default: the row's own)")
    args = p.parse_args()
    nv, bf = load_row(args.nvfp4_row, "nvfp4"), load_row(args.bf16_row, "bf16")
    if nv["lengths_drawn"] != bf["lengths_drawn"]:
        raise SystemExit(f"{args.nvfp4_row} and {args.bf16_row}: the rows drew different lengths")
    with open(args.profile) as f:
        profile = json.load(f)
    overlap = load_row(args.overlap_row, "nvfp4") if args.overlap_row else None
    bad = [v for v in args.keep if not 0 < v <= 1] + [v for v in args.share if not 0 <= v <= 1]
    if bad:
        p.error(f"--keep must be in (0, 1] and --share in [0, 1]; got {bad}")
    print(json.dumps(report(nv, bf, profile, args.bf16_sleep_wake_s, overlap, args.per_completion,
                            tuple(args.keep), tuple(args.share)), indent=1))


if __name__ == "__main__":
    main()
