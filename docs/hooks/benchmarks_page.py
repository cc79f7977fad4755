"""The Benchmarks page, generated from `benchmarks/results/*.json` at build time.

Each results file belongs to a section by its name prefix (`kernels-`, `rollout-`, `step-`,
`quant-quality-`, `learning-`, `rewards-`; anything else lands under "Other results"). Kernel files get a pivot
table (speed-up over cuBLAS bf16 by M); every other file is shown as a table of its rows, so a new
benchmark shows up without changes here. A section with no file says "not yet measured".
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

SECTIONS = (  # (file name prefix, title, what it measures, the script that writes it)
    ("kernels-", "Kernels", ("W4A16 matmul time of qerl's Triton kernels against cuBLAS bf16 and "
     "dequantize-then-matmul, per format, layer shape and M."), "benchmarks/kernels.py"),
    ("rollout-", "Rollouts", "Generated tokens per second of the rollout backends.", "benchmarks/rollout.py"),
    ("step-", "Training steps", "Seconds and peak memory per RL step, end to end.", "benchmarks/step.py"),
    ("quant-quality-", "Quantization quality", ("How far each 4-bit format moves a real model "
     "(weight error, same greedy answers, perplexity)."), "benchmarks/quant_quality.py"),
    ("learning-", "Learning runs", ("GRPO runs of the real SmolLM2 side by side (NVFP4 / bf16 LoRA, AQN on "
     "and off): accuracy and entropy early and late, held-out accuracy before and after. Curves: "
     "[Evidence of learning](learning.md)."), "benchmarks/learning.py"),
    ("rewards-", "Reward checkers", "Answers per second and verdict quality of the reward functions.",
     "benchmarks/rewards.py"),
)
ROW_KEYS = ("rows", "records", "results")
META_KEYS = ("date", "device", "machine", "card", "model", "torch", "triton")


def number(value) -> str:
    """A value as a table shows it: 4 significant digits for floats, thousands separators for big ints."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    if value is None:
        return "-"
    return " ".join(str(value).split()).replace("|", "\\|")


def flatten(row: dict, prefix: str = "") -> dict:
    """Nested dicts become dotted keys; lists are shown by their length."""
    flat = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list):
            flat[name] = f"{len(value)} items"
        else:
            flat[name] = value
    return flat


def rows_of(data) -> list[dict]:
    """The list of result rows in a results file (top-level list, or under rows/records/results)."""
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    for key in ROW_KEYS:
        if isinstance(data.get(key), list):
            return [r for r in data[key] if isinstance(r, dict)]
    return []


def meta_of(data) -> dict:
    """Where and when: date, device/card, versions (top level or under `meta`)."""
    if not isinstance(data, dict):
        return {}
    found = {k: data[k] for k in META_KEYS if k in data and not isinstance(data[k], (dict, list))}
    meta = data.get("meta")
    if isinstance(meta, dict):
        found.update({k: meta[k] for k in META_KEYS if k in meta and not isinstance(meta[k], (dict, list))})
    return found


def generic_table(rows: list[dict]) -> list[str]:
    """Every row of a results file as one markdown table (columns in first-seen order)."""
    flat = [flatten(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(number(r.get(c)) for c in columns) + " |" for r in flat]
    return out


def kernel_tables(rows: list[dict]) -> list[str]:
    """Speed-up over cuBLAS bf16 (and kernel microseconds) per format/shape/pass, one column per M."""
    if not rows or not all({"format", "shape", "M", "pass", "us"} <= r.keys() for r in rows):
        return generic_table(rows)
    ms = sorted({r["M"] for r in rows})
    cells: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        cells[(r["pass"], r["format"], r["shape"], r.get("K"), r.get("N"))][r["M"]] = r
    out = ["Each cell: speed-up over cuBLAS bf16 (kernel microseconds).", "",
           "| pass | format | shape (K x N) | " + " | ".join(f"M={m}" for m in ms) + " |",
           "|" + "---|" * (3 + len(ms))]
    for (pas, fmt, shape, k, n), by_m in sorted(cells.items(), key=lambda kv: tuple(map(str, kv[0]))):
        values = []
        for m in ms:
            r = by_m.get(m)
            speed = r.get("speedup") if r else None
            values.append("-" if r is None else f"{number(speed)}x ({number(r['us'])})" if speed else number(r["us"]))
        out.append(f"| {pas} | {fmt} | {shape} ({k} x {n}) | " + " | ".join(values) + " |")
    return out


def read_results(folder: Path) -> list[tuple[Path, object]]:
    """(path, parsed JSON) for every results file; an unreadable file raises ValueError naming it."""
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read benchmark results ({exc}); fix or remove the file.") from None
    return found


def file_block(path: Path, data, kind: str, root: Path) -> list[str]:
    meta = meta_of(data)
    where = ", ".join(f"{k} {number(v)}" for k, v in meta.items())
    out = [f"### `{path.relative_to(root).as_posix()}`", ""]
    if where:
        out += [where, ""]
    rows = rows_of(data)
    if not rows:
        return out + ["*(no rows in this file)*", ""]
    table = kernel_tables(rows) if kind == "kernels-" else generic_table(rows)
    skipped = data.get("skipped") if isinstance(data, dict) else None
    if skipped:
        out += [f"Not measured (time budget): {', '.join(map(str, skipped))}.", ""]
    return out + table + [""]


def benchmarks_page(root: Path, doc_pages: frozenset[str] = frozenset()) -> str:
    """The markdown of the Benchmarks page; `doc_pages` are the site's pages that may be linked."""
    results = read_results(root / "benchmarks" / "results")
    out = ["# Benchmarks", "",
           ("Generated at build time from `benchmarks/results/*.json`. Each benchmark is a script under "
            "`benchmarks/` that prints a table, names the card and date, runs its baseline in the same "
            "process and writes its raw numbers here. The tables below are those files, unedited."), ""]
    claimed = set()
    for prefix, title, what, script in SECTIONS:
        files = [(p, d) for p, d in results if p.name.startswith(prefix)]
        claimed.update(p for p, _ in files)
        by = f" Script: `{script}`." if (root / script).is_file() else ""
        out += [f"## {title}", "", what + by, ""]
        if prefix == "quant-quality-" and "quantization-quality.md" in doc_pages:
            out += ["The write-up: [Quantization quality](quantization-quality.md).", ""]
        if not files:
            out += ["*Not yet measured.*", ""]
        for path, data in files:
            out += file_block(path, data, prefix, root)
    others = [(p, d) for p, d in results if p not in claimed]
    if others:
        out += ["## Other results", ""]
        for path, data in others:
            out += file_block(path, data, "", root)
    return "\n".join(out)
