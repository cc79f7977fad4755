"""Start-up GPU memory plan of an RL run: weights, LoRA + optimizer, KV cache, activations, log-prob buffers.

Every term is a closed formula over the model's shape (hidden size, layers, heads, vocab) and the run's shape
(rows, prompt and response lengths, micro-batch, gradient checkpointing). The peak is

    static (weights + LoRA params, grads, AdamW m/v) + max(rollout: KV cache + decode buffers,
                                                           training: activations + log-prob chunk buffers)

since the rollout backend releases its KV cache before the update (`RolloutBackend.release_memory`). With a
colocated vLLM engine (`qerl.memory.engine`) the engine generates instead of the policy, and

    peak = max(rollout: static + engine awake, training: static + training + engine asleep (sleep mode) or awake)
`auto_micro_batch` picks the largest micro-batch whose training peak fits a byte budget; `check_fits`
warns (before anything is allocated) when the whole run will not fit the device's free memory.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

GB = 1e9
#: share of the device's memory (free + already held by this process) a plan may use
HEADROOM = 0.92
#: LoRA target -> (input, output) feature kind: "h" hidden, "kv" kv heads x head_dim, "i" intermediate
_TARGET_SHAPES = {"q_proj": ("h", "h"), "k_proj": ("h", "kv"), "v_proj": ("h", "kv"), "o_proj": ("h", "h"),
                  "gate_proj": ("h", "i"), "up_proj": ("h", "i"), "down_proj": ("i", "h")}
#: targets that read the same input tensor (one saved copy when no dtype cast happens)
_SHARED_INPUT = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
                 "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "mlp_mid"}


class MemoryPlanWarning(UserWarning):
    """The estimated peak exceeds the memory available on the device."""


@dataclass(frozen=True)
class ModelShape:
    """The shape numbers of a decoder-only transformer that memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    head_dim: int = 0

    @classmethod
    def from_config(cls, cfg) -> ModelShape:
        """From a transformers config (Qwen2/Llama style attribute names)."""
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        return cls(hidden=int(cfg.hidden_size), intermediate=int(cfg.intermediate_size),
                   layers=int(cfg.num_hidden_layers), heads=heads,
                   kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads), vocab=int(cfg.vocab_size),
                   tied=bool(getattr(cfg, "tie_word_embeddings", False)), head_dim=head_dim)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    def features(self, kind: str) -> int:
        return {"h": self.hidden, "kv": self.kv_dim, "i": self.intermediate}[kind]

    def layer_linear_params(self) -> int:
        """Weights of the 7 projections of one decoder layer."""
        return sum(self.features(a) * self.features(b) for a, b in _TARGET_SHAPES.values())

    def layer_small_params(self) -> int:
        """Biases of q/k/v (Qwen2) and the two RMSNorm scales of one layer (kept dense)."""
        return self.hidden + 2 * self.kv_dim + 2 * self.hidden

    def embedding_params(self) -> int:
        """Input embedding, plus the LM head when untied (both kept in the dense dtype), plus the final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def lora_params(self, rank: int, targets) -> int:
        per_layer = sum(rank * (self.features(_TARGET_SHAPES[t][0]) + self.features(_TARGET_SHAPES[t][1]))
                        for t in targets if t in _TARGET_SHAPES)
        return per_layer * self.layers


@dataclass(frozen=True)
class RunShape:
    """The sizes of one RL step that memory depends on.

    Attributes:
        rows: completions per step (prompts x group size).
        prompt_len, response_len: tokens per prompt and per completion.
        micro_batch: completions per forward/backward pass.
        rollout_rows: completions decoded together (the KV cache holds this many rows).
        gradient_checkpointing: decoder layers recompute their activations in backward.
        logits_budget: logits elements materialised at once by the chunked log-prob head.
        lora_rank, lora_targets: adapters (rank 0: none).
        packed: the update packs a micro-batch's rows (one group's) behind one copy of their prompt, without padding
            (`QeRLModule(pack_groups=True)`): one sequence of prompt_len + micro_batch x response_len positions and
            its block mask where that sequence is short (segment-by-segment attention, no mask, where it is long)
            instead of micro_batch padded rows.
        gradient_buffers: float32 copies of the trainable parameters held through the update
            (`train_during_rollout_unit: completion` holds up to `completion_trainer.MAX_BUFFERS`).
    """

    rows: int
    prompt_len: int
    response_len: int
    micro_batch: int
    rollout_rows: int = 0
    gradient_checkpointing: bool = True
    logits_budget: int = 1 << 26
    lora_rank: int = 32
    lora_targets: tuple[str, ...] = tuple(_TARGET_SHAPES)
    packed: bool = False
    gradient_buffers: int = 0

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len

    def update_tokens(self, micro_batch: int) -> int:
        """Decoder positions of one micro-batch of `micro_batch` rows at the full response length."""
        if self.packed:
            return self.prompt_len + micro_batch * self.response_len
        return micro_batch * self.seq_len

    def mask_bytes(self, micro_batch: int, dtype_bytes: int) -> float:
        """The update's attention mask: HF's (rows, 1, S, S) padding mask, or the packed layout's (L, L) block mask
        (rows padded to `MASK_ALIGN` columns) where the packed sequence is short enough to take it (`SEGMENTS_FROM`;
        longer ones attend segment by segment, with no mask)."""
        if self.packed:
            from qerl.models.packed import MASK_ALIGN, SEGMENTS_FROM

            length = self.update_tokens(micro_batch)
            if length > SEGMENTS_FROM:
                return 0.0
            return float(length * (-(-length // MASK_ALIGN) * MASK_ALIGN) * dtype_bytes)
        return float(micro_batch * self.seq_len * self.seq_len * dtype_bytes)


@dataclass
class MemoryEstimate:
    """Bytes per part; `peak` = the larger of the rollout and training phases.

    `engine`: a colocated rollout engine's rows while awake (generating), counted in the rollout phase;
    `engine_training`: what that engine holds through the training phase (~0 asleep, all of it awake)."""

    static: dict[str, float] = field(default_factory=dict)
    rollout: dict[str, float] = field(default_factory=dict)
    training: dict[str, float] = field(default_factory=dict)
    engine: dict[str, float] = field(default_factory=dict)
    engine_training: float = 0.0

    @property
    def rollout_peak(self) -> float:
        return sum(self.static.values()) + sum(self.rollout.values()) + sum(self.engine.values())

    @property
    def training_peak(self) -> float:
        return sum(self.static.values()) + sum(self.training.values()) + self.engine_training

    @property
    def peak(self) -> float:
        return max(self.rollout_peak, self.training_peak)

    def table(self) -> str:
        lines = ["memory plan (GB)"]
        for title, part in (("static", self.static), ("rollout", {**self.rollout, **self.engine}),
                            ("training", self.training)):
            for key, value in part.items():
                lines.append(f"  {title:<9}{key:<28}{value / GB:9.2f}")
        if self.engine:
            lines.append(f"  {'rollout':<9}{'vLLM engine total':<28}{sum(self.engine.values()) / GB:9.2f}")
            state = "asleep" if self.engine_training < sum(self.engine.values()) else "awake"
            lines.append(f"  {'training':<9}{'vLLM engine ' + state:<28}{self.engine_training / GB:9.2f}")
            lines.append(f"  {'phases':<9}{'rollout | training':<28}{self.rollout_peak / GB:9.2f} | "
                         f"{self.training_peak / GB:.2f}")
        lines.append(f"  {'peak':<37}{self.peak / GB:9.2f}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, float]:
        parts = (("static", self.static), ("rollout", self.rollout), ("training", self.training),
                 ("engine", self.engine))
        out = {f"{t}/{k}": round(v / GB, 3) for t, p in parts for k, v in p.items()}
        if self.engine:
            out["engine/during training"] = round(self.engine_training / GB, 3)
        out["peak"] = round(self.peak / GB, 3)
        return out


def weight_bits(quantizer) -> float:
    """Stored bits per weight of a format (codes + block scales), measured by quantizing a 64 x 256 tensor
    with the quantizer (an instance or a registered name); None (dense bf16): 16."""
    if quantizer is None:
        return 16.0
    if isinstance(quantizer, str):
        return _registered_bits(quantizer)
    import torch

    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    return float(quantizer.quantize(weight).bits_per_weight)


@functools.cache
def _registered_bits(name: str) -> float:
    from qerl.registry import QUANTIZERS

    return weight_bits(QUANTIZERS.get(name)())


def layer_activation_bytes(shape: ModelShape, run: RunShape, dtype_bytes: int = 2, lora_bytes: int = 4) -> float:
    """Bytes one decoder layer keeps for backward per token (HF Qwen2/Llama layer, frozen base, peft LoRA).

    RMSNorm keeps its float32 input (x2 norms); attention keeps q, k, v (repeated to all heads under a
    padding mask) and its output; the MLP keeps gate, silu(gate) and up; peft casts each LoRA input to the
    adapter dtype, so every target keeps its own copy of its input (one shared copy when no cast happens),
    plus the rank-r adapter activations. Frozen base layers (dense or 4-bit) keep nothing.
    """
    h, i = shape.hidden, shape.intermediate
    total = 2 * 4 * h + dtype_bytes * 4 * h + dtype_bytes * 3 * i
    if run.lora_rank:
        targets = [t for t in run.lora_targets if t in _TARGET_SHAPES]
        if lora_bytes != dtype_bytes:
            total += sum(lora_bytes * shape.features(_TARGET_SHAPES[t][0]) for t in targets)
        else:
            groups = {_SHARED_INPUT[t]: shape.features(_TARGET_SHAPES[t][0]) for t in targets}
            total += dtype_bytes * sum(groups.values())
        total += 2 * lora_bytes * run.lora_rank * len(targets)
    return float(total)


def estimate_memory(shape: ModelShape, run: RunShape, quant_bits: float = 16.0, dtype_bytes: int = 2,
                    lora_bytes: int = 4, engine=None) -> MemoryEstimate:
    """The memory plan of one RL step (see the module docstring); LoRA params and AdamW states in `lora_bytes`.

    `engine`: a colocated engine's estimate (`qerl.memory.engine.EngineEstimate`: `rows` awake,
    `during_training`); it generates, so the policy's own decode rows are left out."""
    est = MemoryEstimate()
    linear = shape.layer_linear_params() * shape.layers
    est.static["weights (quantized part)"] = linear * quant_bits / 8
    est.static["weights (dense part)"] = (shape.embedding_params() + shape.layer_small_params() * shape.layers) * dtype_bytes
    trainable = shape.lora_params(run.lora_rank, run.lora_targets) if run.lora_rank else linear
    param_bytes = lora_bytes if run.lora_rank else dtype_bytes  # AdamW keeps m and v in the parameter dtype
    est.static["trainable params"] = trainable * param_bytes
    est.static["grads + AdamW m, v"] = 3 * trainable * param_bytes
    if run.gradient_buffers:
        est.training["gradient buffers (by completion)"] = run.gradient_buffers * trainable * 4

    decode_rows = min(run.rollout_rows or run.rows, run.rows)
    capacity = -(-run.seq_len // 256) * 256  # the fast engine rounds its cache up to the length bucket
    est.rollout["KV cache"] = shape.layers * 2 * shape.kv_dim * capacity * decode_rows * dtype_bytes
    est.rollout["prefill + sampling buffers"] = decode_rows * (
        run.prompt_len * (2 * shape.intermediate + 4 * shape.hidden) * dtype_bytes + 6 * shape.vocab * 4)

    mb = max(1, min(run.micro_batch, run.rows))
    tokens = run.update_tokens(mb)
    per_layer = layer_activation_bytes(shape, run, dtype_bytes, lora_bytes)
    if run.gradient_checkpointing:
        est.training["layer inputs (checkpointed)"] = shape.layers * shape.hidden * dtype_bytes * tokens
        est.training["one layer recomputed + grads"] = 1.25 * per_layer * tokens
    else:
        est.training["activations"] = shape.layers * per_layer * tokens
    est.training["final hidden + its grad"] = 4 * shape.hidden * dtype_bytes * tokens
    est.training["attention mask"] = run.mask_bytes(mb, dtype_bytes)
    chunk = min(run.logits_budget, mb * run.response_len * shape.vocab)
    est.training["log-prob chunk (logits)"] = 20 * chunk  # fp32 logits, exp, softmax, grad; bf16 head output
    if engine is not None:
        est.rollout = {}
        est.engine, est.engine_training = dict(engine.rows), float(engine.during_training)
    return est


def auto_micro_batch(shape: ModelShape, run: RunShape, budget_bytes: float, quant_bits: float = 16.0,
                     dtype_bytes: int = 2, lora_bytes: int = 4, engine=None) -> int:
    """The largest micro-batch (a power of two up to `run.rows`, or `run.rows`) whose peak (the colocated
    `engine` counted, see `estimate_memory`) fits `budget_bytes`; 1 when none does (`check_fits` then warns)."""
    from dataclasses import replace

    sizes = sorted({run.rows} | {1 << k for k in range(run.rows.bit_length()) if (1 << k) <= run.rows}, reverse=True)
    for size in sizes:
        if estimate_memory(shape, replace(run, micro_batch=size), quant_bits, dtype_bytes, lora_bytes,
                           engine).peak <= budget_bytes:
            return size
    return 1


def free_device_memory(device=None) -> float | None:
    """Free bytes on a CUDA device (None elsewhere: host memory is not planned)."""
    import torch

    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return float(free)


def check_fits(estimate: MemoryEstimate, budget_bytes: float | None, where: str = "this run") -> bool:
    """Warn (`MemoryPlanWarning`) when the estimated peak exceeds `budget_bytes`; True when it fits."""
    if budget_bytes is None or estimate.peak <= budget_bytes:
        return True
    worst = max({**estimate.rollout, **estimate.engine, **estimate.training}.items(), key=lambda kv: kv[1])
    if estimate.engine:
        phase = "rollout (vLLM engine awake)" if estimate.rollout_peak >= estimate.training_peak else "training"
        sleeps = estimate.engine_training < sum(estimate.engine.values())
        advice = (f"The {phase} phase is the peak. "
                  + ("" if sleeps else "Turn on `rollout.init_args.enable_sleep_mode` (the engine frees its weights "
                     "and KV cache while training), ")
                  + "set `rollout.init_args.gpu_memory_utilization` to \"auto\" (what the engine needs), lower "
                  "`rollout.init_args.max_num_seqs` or `max_model_len` (its KV cache), or lower "
                  "`model.init_args.micro_batch_size` (or \"auto\").")
    else:
        advice = ("Lower `model.init_args.micro_batch_size` (or set it to \"auto\"), turn on `gradient_checkpointing`, "
                  "lower `sampling.max_new_tokens` or `rollout.init_args.max_batch_rows`, or use a 4-bit quantizer.")
    warnings.warn(
        f"{where}: the estimated peak GPU memory {estimate.peak / GB:.1f} GB exceeds the {budget_bytes / GB:.1f} GB "
        f"free on the device (largest term: {worst[0]} {worst[1] / GB:.1f} GB). {advice}",
        MemoryPlanWarning, stacklevel=2)
    return False
