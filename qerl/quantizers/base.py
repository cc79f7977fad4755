"""The quantizer extension point (filled in by the Quantizers issue)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Quantizer(ABC):
    """Turns bf16/fp32 weights into a 4-bit format and swaps Linear layers."""

    @abstractmethod
    def quantize(self, weight: torch.Tensor):
        """Quantize a 2-D (out_features, in_features) weight."""

    @abstractmethod
    def quantize_model(self, model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
        """Swap every targeted nn.Linear for a QuantLinear in place; return the model."""
