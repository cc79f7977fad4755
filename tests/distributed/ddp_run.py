"""One tiny GRPO run under Lightning (1 process, or `--devices 2` with `strategy="ddp"` on gloo), for the DDP tests.

Lightning's DDP launcher starts the other ranks by running this same command line again. After every step,
rank 0 rewrites `<out>/run.pt` (logged metrics, the gradients the optimizer saw, the LoRA weights) and every
rank `<out>/grads-rank<r>.pt`. `--kill-after N` SIGKILLs every rank at the end of step N + 1, before that
step's checkpoint is written (the step-N checkpoint is on disk): a job killed mid-run.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: rl_helpers

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from rl_helpers import MetricsRecorder, lora_state, tiny_data, tiny_module, tiny_trainer


class Recorder(MetricsRecorder):
    """Logged metrics and the gradients right before each optimizer step, written out after every step."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out, self.grads = out, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
                           if p.requires_grad and p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        torch.save(self.grads, os.path.join(self.out, f"grads-rank{trainer.global_rank}.pt"))
        if trainer.is_global_zero:
            torch.save({"metrics": self.steps, "grads": self.grads, "lora": lora_state(pl_module),
                        "validation": dict(pl_module.last_validation),
                        "world_size": trainer.world_size, "global_step": trainer.global_step},
                       os.path.join(self.out, "run.pt"))


class KillAfter(L.Callback):
    """SIGKILL at the end of step `step` + 1 (checkpoint callbacks run after this one: that step is not saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def rollout_args(args) -> dict:
    """`--rollout vllm`: a vLLM engine per rank (or per `--tp` ranks) on a tiny Qwen2 vLLM serves (head_dim 64)."""
    if args.rollout == "hf":
        return {}
    from qerl.models import RandomInit
    from qerl.rollout.vllm import VLLM

    config = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 2}
    return {"policy": RandomInit(config=config, seed=0),
            "rollout": VLLM(max_model_len=256, dtype="float32", kv_cache_memory_gb=0.25, max_num_seqs=16,
                            tensor_parallel_size=args.tp, gpu_memory_utilization=0.2, measure_mismatch=False,
                            quantized_base=False)}  # the DDP layout is under test, not the FP4 engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches-per-step", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--micro-batch-size", default="auto")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--val-size", type=int, default=0, help="held-out prompts, validated every 2 steps")
    parser.add_argument("--rollout", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--tp", type=int, default=1, help="VLLM tensor_parallel_size")
    parser.add_argument("--ckpt-dir")
    parser.add_argument("--ckpt-path")
    parser.add_argument("--kill-after", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)  # as `qerl fit` does
    micro = int(args.micro_batch_size) if args.micro_batch_size.isdigit() else args.micro_batch_size
    module = tiny_module(batches_per_step=args.batches_per_step, micro_batch_size=micro, **rollout_args(args))
    os.makedirs(args.out, exist_ok=True)
    callbacks = [Recorder(args.out)]
    if args.kill_after is not None:
        callbacks.append(KillAfter(args.kill_after))
    if args.ckpt_dir:
        callbacks.append(ModelCheckpoint(dirpath=args.ckpt_dir, every_n_train_steps=1, save_last=True, save_top_k=-1))
    extra = {"accelerator": args.accelerator, "devices": args.devices}
    if args.devices > 1:
        extra["strategy"] = "ddp"
    if args.val_size:
        extra["val_check_interval"] = 2
    trainer = tiny_trainer(args.out, args.max_steps, callbacks=callbacks, enable_checkpointing=bool(args.ckpt_dir),
                           **extra)
    trainer.fit(module, tiny_data(batch_size=args.batch_size, val_size=args.val_size), ckpt_path=args.ckpt_path)


if __name__ == "__main__":
    main()
