"""Small typed settings groups of `QeRLModule` (each field becomes a recipe key and `--help` text)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRASettings:
    """LoRA adapters trained on top of the frozen (quantized) base.

    Attributes:
        rank: adapter rank r.
        alpha: scaling numerator (the update is scaled by alpha / rank).
        dropout: dropout on the adapter input.
        targets: module-name suffixes that get an adapter; each must match at least one module.
        train_norms: also train the RMSNorm scales (the norms AQN perturbs).
        init_from: a saved adapter folder (e.g. `runs/<recipe>/version_0/adapter/final`) to start from instead of
            a fresh adapter; its rank, alpha, targets and shapes must match these settings. Its trained norms, if
            saved, are loaded too.
    """

    rank: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    train_norms: bool = False
    init_from: str | None = None


@dataclass
class OptimizerSettings:
    """AdamW over the trainable (LoRA) parameters, linear warm-up then constant.

    Attributes:
        lr: peak learning rate (the paper: 1e-5 on NVFP4, 5e-6 for bf16 LoRA).
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW (beta1, beta2).
        eps: AdamW epsilon.
        warmup_steps: optimizer steps of linear warm-up from 0 to `lr`.
        grad_clip: clip the global gradient norm to this (0 disables clipping).
    """

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float = 1.0


def global_seed() -> int:
    """The seed `seed_everything` set for this run (Lightning's PL_GLOBAL_SEED), else 0."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))
    except ValueError:
        return 0
