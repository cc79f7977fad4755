"""Prompt datasets (GSM8K, MATH500, AIME24, AMC23, any jsonl, any `datasets` source, synthetic arithmetic); importing
registers them."""
from qerl.data.aime24 import AIME24
from qerl.data.amc23 import AMC23
from qerl.data.arithmetic import Arithmetic
from qerl.data.base import DatasetError, PromptDataModule, PromptRow, collate_prompts
from qerl.data.catalog import dataset_names, load_dataset_rows
from qerl.data.gsm8k import GSM8K
from qerl.data.hf_prompts import HFPrompts
from qerl.data.jsonl import read_jsonl, rows_from_jsonl
from qerl.data.jsonl_prompts import JsonlPrompts
from qerl.data.math500 import MATH500
from qerl.data.prompts import SYSTEM_PROMPTS, format_messages, format_prompt

__all__ = [
    "AIME24",
    "AMC23",
    "GSM8K",
    "MATH500",
    "SYSTEM_PROMPTS",
    "Arithmetic",
    "DatasetError",
    "HFPrompts",
    "JsonlPrompts",
    "PromptDataModule",
    "PromptRow",
    "collate_prompts",
    "dataset_names",
    "format_messages",
    "format_prompt",
    "load_dataset_rows",
    "read_jsonl",
    "rows_from_jsonl",
]
