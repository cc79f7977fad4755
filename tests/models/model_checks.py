"""Helpers shared by the policy-loader tests."""
from __future__ import annotations

import torch


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Bit-exact equality of two models' state dicts (fp8 buffers compared as raw bytes)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sorted(sa) != sorted(sb):
        return False
    for key in sa:
        x, y = sa[key], sb[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.element_size() == 1:
            x, y = x.view(torch.uint8), y.view(torch.uint8)
        if not torch.equal(x, y):
            return False
    return True
