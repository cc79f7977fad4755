"""The policy-loader extension point: where the model and tokenizer come from."""
from __future__ import annotations

from abc import ABC, abstractmethod


class PolicyLoader(ABC):
    """Loads (model, tokenizer); quantizes on load when given a quantizer."""

    @abstractmethod
    def load(self, quantizer=None, dtype=None, device=None):
        """Return (model, tokenizer)."""
