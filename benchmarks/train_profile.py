"""`--profile-train` of benchmarks/step.py: where the update's seconds go, by operator family (issue #36).

    python benchmarks/step.py --rows 7b:nvfp4:128:4096:1 --rollout vllm --lengths gsm8k ... --profile-train

After the row's timed steps, one more step runs with torch's profiler around its training half only (the
micro-batches' forward and backward, clipping and the optimizer step; not the rollout). The row gets `train_profile`:
the profiled update's wall seconds, the device time of every operator (self time: a kernel counts once, under the op
that launched it), summed into families, the share of the wall the device was busy, and the 20 largest operators.
On the CPU (no device events) the same table is built from the operators' own CPU time, which is how the test checks
it. Why: the GSM8K-shape step reaches 1.5x only with an update of ~13 s (`step_ceiling.py`, `train_for_1_5x_s`);
the measured update ran at ~4.6k positions/s, and no profile has said which of GEMMs, attention, the chunked
LM head, the 4-bit layers' dequantize, casts or gaps holds the rest.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

#: op family -> substrings of operator names (lower case), first match wins: what launched the time
OP_FAMILIES = (
    ("attention", ("attention", "flash", "fmha", "sdpa", "attn")),
    ("qerl 4-bit layers", ("quantlinear", "quant_linear", "dequant", "dgrad", "_fused")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("log-probs (LM head chunks)", ("logsumexp", "softmax", "aten::gather")),
    ("norms", ("rms_norm", "aten::rsqrt", "aten::pow", "aten::mean")),
    ("activation", ("silu", "gelu")),
    ("optimizer + clipping", ("adam", "_foreach", "clip_grad", "aten::norm", "linalg_vector_norm")),
    ("copies + casts", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::contiguous", "aten::clone",
                        "aten::cat")),
    ("elementwise", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::neg", "aten::where", "aten::fill_",
                     "aten::zero_", "aten::masked", "aten::sum", "aten::cumsum", "aten::clamp", "aten::exp")),
)
#: kernel family -> substrings of CUDA kernel names (lower case): what the device ran
KERNEL_FAMILIES = (
    ("attention", ("fmha", "flash", "attention", "attn")),
    ("qerl Triton", ("_dequant_kernel", "_dgrad_kernel", "_fused_kernel", "_gemv_kernel", "_rms_norm_kernel")),
    ("gemm", ("gemm", "cutlass", "nvjet", "xmma", "sm90_", "cublas", "splitk")),
    ("softmax / reductions", ("softmax", "reduce_kernel", "logsumexp")),
    ("copies", ("memcpy", "memset", "copy")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "foreach")),
)


def family(name: str, table=OP_FAMILIES) -> str:
    low = name.lower()
    for fam, keys in table:
        if any(k in low for k in keys):
            return fam
    return "other"


class TrainProfile:
    """Profiles the blocks run inside `around()`; `summary()` afterwards."""

    def __init__(self, device: str):
        self.device = device
        self.prof = None
        self.wall_s = 0.0

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        sync()
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            yield
            sync()
            self.wall_s = time.perf_counter() - start
        self.prof = prof

    def kernels(self) -> list[tuple[str, float]]:
        """(kernel name, seconds) of every device event; on a CPU, (op name, own CPU seconds) of every op."""
        from torch.autograd import DeviceType

        if self.device != "cuda":
            return [(e.key, e.self_cpu_time_total / 1e6) for e in self.prof.key_averages() if e.self_cpu_time_total > 0]
        return [(e.name, e.device_time / 1e6) for e in self.prof.events() if e.device_type == DeviceType.CUDA]

    def ops(self) -> list[tuple[str, float, int]]:
        """(operator, own seconds, calls): device time its kernels took on CUDA (CPU time on a CPU)."""
        from torch.autograd import DeviceType

        attr = "self_device_time_total" if self.device == "cuda" else "self_cpu_time_total"
        return [(e.key, getattr(e, attr) / 1e6, e.count) for e in self.prof.key_averages()
                if e.device_type == DeviceType.CPU and getattr(e, attr) > 0]

    def summary(self, top: int = 20) -> dict:
        """Seconds by kernel family and by launching-operator family, the busy share, the largest operators."""
        if self.prof is None:
            raise RuntimeError("TrainProfile.summary: nothing was profiled (run a step inside `around()` first)")
        on_cuda = self.device == "cuda"
        kernels, ops = self.kernels(), self.ops()
        by_kernel: dict[str, float] = {}
        for name, seconds in kernels:
            fam = family(name, KERNEL_FAMILIES if on_cuda else OP_FAMILIES)
            by_kernel[fam] = by_kernel.get(fam, 0.0) + seconds
        by_op: dict[str, float] = {}
        for name, seconds, _ in ops:
            by_op[family(name)] = by_op.get(family(name), 0.0) + seconds
        busy = sum(s for _, s in kernels)

        def ranked(d: dict) -> dict:
            return {k: round(v, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

        return {"wall_s": round(self.wall_s, 3), "time": "device" if on_cuda else "cpu", "busy_s": round(busy, 3),
                "busy_share": round(busy / self.wall_s, 3) if self.wall_s else None,
                "kernel_families_s": ranked(by_kernel), "op_families_s": ranked(by_op),
                "top_ops": [{"op": n, "s": round(s, 4), "calls": c, "family": family(n)}
                            for n, s, c in sorted(ops, key=lambda o: -o[1])[:top]]}


def table(summary: dict) -> str:
    """The families as printed lines."""
    head = (f"  update profiled: {summary['wall_s']} s wall, {summary['busy_s']} s {summary['time']} busy "
            f"({summary['busy_share']})")
    lines = [head]
    lines += [f"    {fam:<28}{sec:>9.3f} s" for fam, sec in summary["kernel_families_s"].items()]
    return "\n".join(lines)
