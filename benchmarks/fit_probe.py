"""`FitProbe`: a Lightning callback that `benchmarks/fit_recipe.py` adds to a `qerl fit` run (by class path).

It appends one JSON line per event to `out`: `start` (card, versions, the step training starts at, the optimizer's
and LR scheduler's positions, the adapter's norm and, when the run resumed, the checkpoint's step and positions and
how far the adapter in memory is from the checkpoint's), then `step` after every optimizer step (wall seconds since
the last step ended, the adapter's norm, every logged metric - `perf/*`, `rollout/*`, `reward/*`, `train/*`,
`data/*` - torch's peak allocation and the card's used memory). After `steps` optimizer steps in this process it
stops the run the way a kill would leave it: at a step's end, with the checkpoint of that step (ModelCheckpoint
runs after it), so the recipe's `max_steps` and schedules stay as the recipe says.
"""
from __future__ import annotations

import json
import time

import lightning as L
import torch


def adapter_against_checkpoint(module: torch.nn.Module, ckpt_path: str) -> dict:
    """How the trainable tensors of `module` compare with those saved in `ckpt_path` (its `state_dict`)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    saved = ckpt.get("state_dict", {})
    params = dict(module.named_parameters())
    missing = sorted(k for k in saved if k not in params)
    diff = 0.0
    for name, value in saved.items():
        if name in params:
            mine = params[name].detach().to("cpu", torch.float32)
            diff = max(diff, float((mine - value.float()).abs().max()) if value.numel() else 0.0)
    return {"ckpt_global_step": int(ckpt.get("global_step", -1)), **checkpoint_progress(ckpt),
            "ckpt_batches_drawn": ckpt.get("qerl", {}).get("batches_drawn"),
            "adapter_tensors": len(saved), "adapter_params": int(sum(v.numel() for v in saved.values())),
            "adapter_missing": missing[:5], "adapter_max_abs_diff": diff,
            "adapter_equal": not missing and bool(saved) and diff == 0.0}


def adapter_norm(module: torch.nn.Module) -> float:
    """The L2 norm of every trainable tensor together, in float64: it moves when an update changes the adapter (a
    first step at lr 1e-6 moves LoRA's B, which starts at 0, too little for a float32 sum to see)."""
    squares = [p.detach().double().pow(2).sum() for p in module.parameters() if p.requires_grad]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def optimizer_progress(trainer: L.Trainer) -> dict:
    """The optimizer's step count (AdamW's per-tensor `step`, largest) and the LR scheduler's position."""
    steps = [float(s["step"]) for opt in trainer.optimizers for s in opt.state.values() if "step" in s]
    schedulers = [c.scheduler.last_epoch for c in trainer.lr_scheduler_configs]
    return {"optimizer_step": max(steps) if steps else 0.0, "scheduler_step": schedulers[0] if schedulers else None}


def checkpoint_progress(ckpt: dict) -> dict:
    """`optimizer_progress` as the checkpoint saved it."""
    steps = [float(s["step"]) for opt in ckpt.get("optimizer_states", []) for s in opt.get("state", {}).values()
             if "step" in s]
    schedulers = [s.get("last_epoch") for s in ckpt.get("lr_schedulers", [])]
    return {"ckpt_optimizer_step": max(steps) if steps else 0.0,
            "ckpt_scheduler_step": schedulers[0] if schedulers else None}


def memory_now() -> dict:
    """torch's peak allocation (GB) and what the whole card holds (GiB, vLLM's pool included); empty off CUDA."""
    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"torch_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
            "device_used_gib": round((total - free) / 2**30, 3)}


def as_number(value) -> float | None:
    """A logged metric as a float (tensors included), None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class FitProbe(L.Callback):
    """Writes each step's metrics (and a resume's evidence) to a JSON-lines file; stops after `steps` steps.

    Args:
        out: the JSON-lines file (appended to).
        steps: optimizer steps to run in this process before stopping (None: run to the recipe's `max_steps`).
    """

    def __init__(self, out: str, steps: int | None = None) -> None:
        self.out, self.steps = out, steps
        self._start_step = 0
        self._last = time.time()

    def write(self, record: dict) -> None:
        with open(self.out, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        record = {"event": "start", "time": time.time(), "global_step": trainer.global_step,
                  "max_steps": trainer.max_steps, "ckpt_path": trainer.ckpt_path, "log_dir": trainer.log_dir,
                  "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "torch": torch.__version__, "rollout": type(getattr(pl_module, "rollout", None)).__name__}
        try:
            import vllm

            record["vllm"] = vllm.__version__
        except ImportError:
            pass
        record.update(optimizer_progress(trainer), adapter_norm=adapter_norm(pl_module))
        if trainer.ckpt_path:
            record.update(adapter_against_checkpoint(pl_module, trainer.ckpt_path))
        self.write(record)
        self._last = time.time()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        now = time.time()
        metrics = {k: as_number(v) for k, v in trainer.callback_metrics.items()}
        self.write({"event": "step", "time": now, "global_step": trainer.global_step, "wall_s": round(now - self._last, 3),
                    "adapter_norm": adapter_norm(pl_module), **memory_now(), "metrics": metrics})
        self._last = now
        if self.steps is not None and trainer.global_step - self._start_step >= self.steps:
            trainer.should_stop = True
