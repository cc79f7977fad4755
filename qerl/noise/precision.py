"""Norm weights that can hold AQN noise, and the noise a generating model really carries (measured, not planned).

bfloat16 has 8 significant bits: next to a norm weight of ~1 it cannot store a change below ~2^-9, so
N(0, sigma^2) noise with sigma <= 3e-4 rounds away entirely and 1e-3 survives on 2.5% of the channels.
`keep_norms_float32` stores the targeted norm weights in float32 (a few MB even at 32B) while the rest of the
model stays in its dtype; `measure_noise` reports what a set of weights really moved by, and `warn_if_not_held`
says so, once per place, when a dtype rounded the noise away.
"""
from __future__ import annotations

import types
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: share of sigma the rounding may change (RMS of change - Z) before the noise counts as not held
HELD_TOLERANCE = 0.1
_warned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner -> {(where, dtype)} already warned


@dataclass(frozen=True)
class RealizedNoise:
    """What a noise draw did to the weights an engine multiplies by.

    Attributes:
        sigma: standard deviation over the targeted channels of (noisy weight - clean weight).
        moved: share of the channels whose weight changed at all.
        rounding: RMS of (change - Z): the part of the drawn noise Z that the weight's dtype could not hold.
        channels: how many channels were measured.
        dtype: the dtype(s) of the measured weights.
        row_sigma: standard deviation of change / clean weight over the channels whose clean weight is not 0: the
            spread of the factor (1 + Z/w) the following rows really get (sigma itself for relative noise).
        drawn_rms: RMS of the drawn Z over the channels (sigma for absolute noise, sigma * rms|w| for relative).
    """

    sigma: float
    moved: float
    rounding: float
    channels: int
    dtype: str
    row_sigma: float = 0.0
    drawn_rms: float = 0.0

    #: the TensorBoard tags `metrics` returns (a step at sigma 0 logs 0 for each)
    TAGS = ("noise/realized_sigma", "noise/moved_fraction", "noise/row_sigma")

    def metrics(self) -> dict[str, float]:
        """The TensorBoard scalars: `noise/realized_sigma`, `noise/moved_fraction` and `noise/row_sigma`."""
        return dict(zip(self.TAGS, (self.sigma, self.moved, self.row_sigma), strict=True))


def measure_changes(changes: torch.Tensor, drawn: torch.Tensor, dtype: str,
                    clean: torch.Tensor | None = None) -> RealizedNoise:
    """`RealizedNoise` of per-channel weight changes (noisy - clean) against the drawn noise of the same channels;
    `row_sigma` needs the `clean` weights of those channels (0 without them)."""
    changes, drawn = changes.detach().double().flatten().cpu(), drawn.detach().double().flatten().cpu()
    if changes.numel() == 0:
        return RealizedNoise(0.0, 0.0, 0.0, 0, dtype)
    sigma = float(changes.std(correction=0))
    rounding = float((changes - drawn).pow(2).mean().sqrt())
    row_sigma = 0.0
    if clean is not None:
        clean = clean.detach().double().flatten().cpu()
        live = clean != 0
        row_sigma = float((changes[live] / clean[live]).std(correction=0)) if bool(live.any()) else 0.0
    return RealizedNoise(sigma, float((changes != 0).double().mean()), rounding, changes.numel(), dtype, row_sigma,
                         float(drawn.pow(2).mean().sqrt()))


def measure_noise(weights: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> RealizedNoise:
    """`RealizedNoise` over (noisy weight as the engine uses it, clean weight, drawn Z) triples."""
    triples = [(noisy.detach(), clean.detach(), z.detach()) for noisy, clean, z in weights]
    if not triples:
        return RealizedNoise(0.0, 0.0, 0.0, 0, "")
    dtypes = "/".join(sorted({str(noisy.dtype).removeprefix("torch.") for noisy, _, _ in triples}))
    device, where_z = triples[0][0].device, triples[0][2].device
    with torch.no_grad():  # one device-to-host copy for all norms, and one cast per kind, not three per norm
        clean = _flat64([c for _, c, _ in triples], device)
        noisy = _flat64([n for n, _, _ in triples], device)
        drawn = _flat64([z for _, _, z in triples], where_z)
        if where_z == device:
            changes, clean, drawn = torch.stack([noisy - clean, clean, drawn]).cpu()
        else:
            changes, clean = torch.stack([noisy - clean, clean]).cpu()
            drawn = drawn.cpu()
    return measure_changes(changes, drawn, dtypes, clean)


def _flat64(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The tensors flattened end to end on `device`, in float64: concatenated first (exact: `cat` only widens a
    mixed set to a common floating dtype), then cast once, instead of one cast per tensor."""
    flat = torch.cat([t.flatten() if t.device == device else t.to(device).flatten() for t in tensors])
    return flat.to(torch.float64)


def warn_if_not_held(realized: RealizedNoise, sigma: float, where: str, fix: str, owner: object,
                     relative: bool = False) -> bool:
    """Warn (once per `owner` - the model or engine - and dtype) when the weights lost more than 10% of the noise to
    rounding (of sigma; of the drawn noise's RMS for `relative` noise); True if the noise was held."""
    scale = realized.drawn_rms if relative else sigma
    if sigma <= 0 or realized.channels == 0 or realized.rounding <= HELD_TOLERANCE * scale:
        return True
    seen = _warned.setdefault(owner, set())
    key = (where, realized.dtype)
    if key not in seen:
        seen.add(key)
        kind = "relative noise of sigma" if relative else "noise of sigma"
        warnings.warn(
            f"AQN: {where} holds its norm weights in {realized.dtype}, which cannot hold {kind}={sigma:.3g}: "
            f"the realized sigma is {realized.sigma:.3g} ({100 * realized.moved:.1f}% of {realized.channels} channels "
            f"moved). {fix}", RuntimeWarning, stacklevel=3)
    return False


def _float32_rms_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """HF's RMSNorm with a float32 weight: normalize and scale in float32, round once to the input dtype.

    HF's own forward rounds the normalized x to bf16 before the scale, and a bf16 value times (1 + 1e-4) rounds
    straight back to itself; scaling the float32 x first lets the noise through (as vLLM's native RMSNorm does).
    """
    x = hidden_states.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return (x * self.weight).to(hidden_states.dtype)


def _output_in_input_dtype(module: nn.Module, args: tuple, kwargs: dict, output):
    x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    if isinstance(output, torch.Tensor) and isinstance(x, torch.Tensor) and output.dtype != x.dtype:
        return output.to(x.dtype)
    return output


def keep_norms_float32(model: nn.Module, targets: Sequence[str] | str | None = None) -> int:
    """Store the targeted norm weights in float32 so AQN noise down to ~1e-6 survives; return how many changed.

    Norms already in float32 (or wider) are left as they are. Each converted norm keeps its Parameter object (optimizer and peft references stay valid). An RMSNorm
    with HF's `variance_epsilon` then normalizes and scales in float32 and rounds once to the input dtype (the
    clean outputs move by at most that one rounding); any other norm keeps its forward, and a hook casts its
    output back to the input dtype. Raises the `targeted_norms` error when a target matches no norm.
    """
    from qerl.noise.targets import DEFAULT_TARGETS, targeted_norms

    targets = DEFAULT_TARGETS if targets is None else targets
    wanted = {id(w) for weights in targeted_norms(model, targets).values() for w in weights}
    changed = 0
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is None or id(weight) not in wanted:
            continue
        if weight.dtype in (torch.float32, torch.float64):  # a float32 model: nothing to widen
            continue
        if weight.grad is not None:
            weight.grad = None  # a gradient of the old dtype cannot be kept
        weight.data = weight.data.to(torch.float32)
        changed += 1
        if getattr(module, "_qerl_float32_norm", False):
            continue
        module._qerl_float32_norm = True
        if isinstance(getattr(module, "variance_epsilon", None), float):
            module.forward = types.MethodType(_float32_rms_forward, module)
        else:
            module.register_forward_hook(_output_in_input_dtype, with_kwargs=True)
    return changed
