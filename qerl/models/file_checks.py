"""Checks of model files that read headers only, so a damaged or wrong file is named before anything loads.

A safetensors file is an 8-byte header length, a JSON header, then the tensor bytes; its header says where every
tensor lies, so a truncated or overwritten file shows without reading a tensor. A GGUF file starts with `GGUF`.
"""
from __future__ import annotations

import json
import os
import struct

from qerl.models.streaming import LoadError

GGUF_MAGIC = b"GGUF"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors refuses larger headers too


def _damaged(path: str, what: str) -> LoadError:
    return LoadError(f"{path} is damaged ({os.path.getsize(path):,} bytes; {what}): copy or write the model folder "
                     "again (a download or copy that stopped early leaves a short file).")


def check_safetensors(path: str) -> None:
    """Raise `LoadError` naming `path` unless its header parses and its tensors exactly cover the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(path, "shorter than a safetensors header")
        length = struct.unpack("<Q", head)[0]
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise _damaged(path, f"its header claims {length:,} bytes")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _damaged(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise _damaged(path, f"tensor {name!r} has no valid data_offsets in the header")
        end = max(end, offsets[1])
    if 8 + length + end != size:
        raise _damaged(path, f"the header places tensor data up to byte {8 + length + end:,}")


def check_gguf(path: str) -> None:
    """Raise `LoadError` naming `path` unless it starts with the GGUF magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise LoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): point the policy at a "
                        ".gguf file, or use HFModel for a Hugging Face folder.")
