"""How the update shares the GPU with the engine while groups train during the rollout (`qerl.training.overlap`):
the update's CUDA stream (optionally confined to a share of the SMs by a CUDA green context), the engine's decode on
a stream of the highest priority, and short GIL turns for the two threads.

The update runs on a worker thread; the engine's loop on the main thread needs the GIL for about a millisecond
every decode step and the GPU's SMs for ~400 small kernels a step. Left alone, the update's Python and its GEMM
blocks can hold both (measured 2026-12-07 on an H200: the decode slowed by as much as the update it hid);
`benchmarks/probes/overlap_contention.py` measures which, and these are the knobs it turns.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator

import torch
from lightning.pytorch.utilities import rank_zero_warn

KEY = "model.init_args.train_during_rollout"


def side_stream(device: torch.device, sm_share: float = 1.0):
    """(the update's CUDA stream, the green context it belongs to or None), made once per device and share.
    `sm_share` < 1 confines the update's kernels to that share of the GPU's SMs (a CUDA green context, rounded down
    to 8 SMs), so the engine's decode always finds the rest free; without green-context support in this torch, a
    plain stream and a warning."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _side_stream(index, float(sm_share))


@functools.cache
def _side_stream(index: int, sm_share: float):
    device = torch.device("cuda", index)
    if sm_share >= 1.0:
        return torch.cuda.Stream(device), None
    from torch.cuda import green_contexts

    total = torch.cuda.get_device_properties(device).multi_processor_count
    sms = max(8, int(total * sm_share) // 8 * 8)
    try:
        if not green_contexts.SUPPORTED:
            raise RuntimeError("this torch was built without green contexts")
        green = green_contexts.GreenContext.create(num_sms=sms, device_id=index)
        return green.Stream(), green
    except (RuntimeError, TypeError, AttributeError) as exc:
        rank_zero_warn(f"`{KEY}_sm_share` {sm_share}: no green context of {sms} of {total} SMs ({exc}); the update "
                       "shares every SM with the engine.")
        return torch.cuda.Stream(device), None


#: seconds a thread may hold the GIL while another waits, during a stream (Python's default is 5 ms): the engine's
#: loop needs it for about a millisecond every decode step, and the update's Python would otherwise delay each
#: small-batch step (~5 ms of GPU time) by up to a whole turn
GIL_TURN_S = 0.0005


@contextlib.contextmanager
def short_gil_turns() -> Iterator[None]:
    """`sys.setswitchinterval(GIL_TURN_S)` for the block, the previous value restored after."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(GIL_TURN_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


#: whether the engine's decode runs on a stream of the highest priority while groups train (`engine_first`)
ENGINE_FIRST = True


@contextlib.contextmanager
def engine_first(device: torch.device) -> Iterator[None]:
    """On CUDA, the block's kernels (the engine's decode, launched by this thread) go to a stream of the highest
    priority, ordered after and before the thread's current stream: when a decode kernel and the update's kernels
    both wait for SMs, the decode's blocks are dispatched first. vLLM launches on whatever stream is current
    (`torch.cuda.current_stream()`), its CUDA graphs included. Elsewhere, or with `ENGINE_FIRST` off, nothing
    changes."""
    if device.type != "cuda" or not ENGINE_FIRST:
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    urgent, before = _urgent_stream(index), torch.cuda.current_stream(index)
    urgent.wait_stream(before)
    try:
        with torch.cuda.stream(urgent):
            yield
    finally:
        before.wait_stream(urgent)


@functools.cache
def _urgent_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(torch.device("cuda", index), priority=-100)  # mapped to the greatest priority
