"""The card a benchmark ran on and the dated JSON file it leaves in benchmarks/results/."""
from __future__ import annotations

import datetime
import json
import os

import torch


def card_name() -> str:
    """The GPU's name, or the CPU and its torch threads."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"


def write_result(out: str, stem: str, row: dict) -> dict:
    """Add card and date to `row`, write it to `out`/<stem>-<card>-<date>.json, return it."""
    row = {"card": card_name(), "date": datetime.date.today().isoformat(), **row}
    card = "cpu" if not torch.cuda.is_available() else row["card"].replace(" ", "-")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}-{card}-{row['date']}.json"), "w") as f:
        json.dump(row, f, indent=1)
    return row
