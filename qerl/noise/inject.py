"""Adaptive Quantization Noise: fold N(0, sigma^2) channel noise into RMSNorm scales, then restore them exactly.

`RMSNorm_noisy(x) = (w + Z) * x / rms(x)`: a noise vector Z of length d on the
scale of the norm that feeds q/k/v (`input_layernorm`) or gate/up
(`post_attention_layernorm`) multiplies each input channel of those
projections by `(w + Z) / w`. o_proj and down_proj see the noise only through
what flows into them. No parameter is added and no kernel changes.

Absolute noise (the paper's) draws Z ~ N(0, sigma^2); relative noise draws Z = sigma * |w| * N(0, 1), so the
rows' factor `1 + Z/w` has spread sigma in every model, whatever its norm magnitudes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.profiler import record_function

from qerl.noise.base import check_relative, check_sigma
from qerl.noise.precision import RealizedNoise, measure_noise, warn_if_not_held
from qerl.noise.targets import DEFAULT_TARGETS, targeted_norms


class AppliedNoise(dict):
    """{norm name: Z} of one `noisy_norms` block, plus what the weights really moved by (`realized`)."""

    def __init__(self) -> None:
        super().__init__()
        self.clean: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (clean copy, Z)
        self.realized = RealizedNoise(0.0, 0.0, 0.0, 0, "")
        self.measured: tuple[int, ...] = ()  # ids of the weights `realized` was measured on, in its order

    def measure(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> RealizedNoise:
        """`RealizedNoise` of (norm weight perturbed here, tensor an engine multiplies by instead) pairs.

        An engine that multiplies by the perturbed weights themselves (the HF fast engine) gets `realized` back:
        the same triples in the same order, so the same numbers, without copying every norm to the host again."""
        pairs = [(weight, used) for weight, used in pairs if id(weight) in self.clean]
        if tuple(id(w) for w, _ in pairs) == self.measured and all(used is w for w, used in pairs):
            return self.realized
        return measure_noise((used, *self.clean[id(weight)]) for weight, used in pairs)


@contextlib.contextmanager
def noisy_norms(
    model: nn.Module,
    sigma: float,
    seed: int | None = None,
    targets: Sequence[str] | str = DEFAULT_TARGETS,
    generator: torch.Generator | None = None,
    relative: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Add Z ~ N(0, sigma^2) (`relative`: sigma * |w| * N(0, 1)) per channel to the targeted norm weights in the block.

    One independent vector Z of length d is drawn for each targeted norm (so each decoder
    layer gets its own), in model order, and added to that norm's weight in place. On exit -
    normal or by exception - every weight is restored bit-exactly from a copy saved on entry
    (copied back, never subtracted). With sigma == 0 nothing is drawn or touched.

    Numerics: Z is drawn in float32, added to the weight in float32 (or wider, for float64
    weights) and rounded once to the weight's dtype. bfloat16 rounds most small noise away:
    a weight of exactly 1.0 moves up only where Z > 2^-8 and down only where Z < -2^-9, so
    (measured, 10^6 channels) sigma = 1e-2 moves 77% of them, 1e-3 only 2.5% (all downward,
    a mean shift of -1e-4) and sigma <= 3e-4 none. Keep the targeted norms in float32
    (`qerl.noise.precision.keep_norms_float32`; `QeRLModule` does it whenever `noise` is set):
    then every sigma in [1e-6, 1] is held. What the weights really moved by is measured after
    the add (`applied.realized`), and a RuntimeWarning names the realized sigma and the fix
    when the dtype lost more than 10% of the noise.

    Args:
        model: any module holding the norms (an HF model, a peft model, a LightningModule).
        sigma: standard deviation of the noise, >= 0.
        seed: seeds a private generator, so the same seed gives the same Z (e.g. the same noise
            for a rollout and the training forward of one step). None uses torch's global RNG.
        targets: module-name suffixes of the norms to perturb; see `targeted_norms`.
        generator: a torch.Generator to draw from instead of `seed` (N(0, 1) is drawn on its device, then moved to
            the weights' device in one copy).
        relative: scale each channel's noise by its clean weight's magnitude: Z = sigma * |w| * N(0, 1), drawn
            from the same N(0, 1) as the absolute noise of the same seed. Every copy of a norm (peft) gets the
            Z of its first copy, so all engines apply one Z.

    Yields:
        An `AppliedNoise`: {norm name: Z (float32, on the norm weights' device)} (empty at sigma 0), with
        `.realized` (a `RealizedNoise` measured on the model's weights, `row_sigma` included) and `.measure(pairs)`
        for the weights another engine multiplies by.

    Notes:
        Autograd: if a forward that needs gradients runs inside the block, run its backward
        inside too; restoring the weights in place invalidates tensors saved for backward.
        Nested blocks on the same weights stack their noise; each restores what it found.
    """
    value = check_sigma("noisy_norms", "sigma", sigma)
    check_relative("noisy_norms", relative)
    if seed is not None and generator is not None:
        raise ValueError("noisy_norms: give seed or generator, not both.")
    with record_function("aqn/find"):
        groups = targeted_norms(model, targets)
    if value == 0.0:
        yield AppliedNoise()
        return
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    device = generator.device if generator is not None else torch.device("cpu")

    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    applied = AppliedNoise()
    try:
        with torch.no_grad():
            with record_function("aqn/draw"):  # all of Z in one host-to-device copy, scaled where the weights live
                target = next(iter(groups.values()))[0].device
                sizes = [weights[0].numel() for weights in groups.values()]
                flat = torch.cat([torch.randn(n, generator=generator, dtype=torch.float32, device=device)
                                  for n in sizes]).to(target).mul_(value)
                if relative:  # |w| of every norm's first copy, all norms in one multiply (the same products)
                    firsts = [weights[0].detach() for weights in groups.values()]
                    if len({(w.dtype, w.device) for w in firsts}) == 1:
                        flat.mul_(torch.cat([w.flatten() for w in firsts]).to(target).abs())
                    else:
                        for z, w in zip(flat.split(sizes), firsts, strict=True):
                            z.mul_(w.to(target).abs())
                for (name, weights), z in zip(groups.items(), flat.split(sizes), strict=True):
                    applied[name] = z
            with record_function("aqn/apply"):
                for name, weights in groups.items():
                    for weight in weights:
                        if weight.numel() != applied[name].numel():
                            raise ValueError(f"noisy_norms: copies of {name!r} differ in size "
                                             f"({weight.numel()} vs {applied[name].numel()}).")
                _save_and_add(groups, applied, saved)
            with record_function("aqn/measure"):
                order = [w for weights in groups.values() for w in weights]  # model order, as `saved` was
                applied.realized = applied.measure([(w, w) for w in order])
                applied.measured = tuple(id(w) for w in order)
        warn_if_not_held(applied.realized, value, type(model).__name__,
                         "Keep the targeted norms in float32: qerl.noise.precision.keep_norms_float32(model).", model,
                         relative)
        yield applied
    finally:
        with torch.no_grad(), record_function("aqn/restore"):
            _restore(saved)


def _by_kind(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]]:
    """`pairs` grouped by the first tensor's (device, dtype), each group in the given order."""
    kinds: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for pair in pairs:
        kinds.setdefault((pair[0].device, pair[0].dtype), []).append(pair)
    return kinds


def _save_and_add(groups: dict[str, list[torch.Tensor]], applied: AppliedNoise,
                  saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Save a clean copy of every targeted weight, then add its Z (rounded once to the weight's dtype).

    A few operations for all norms instead of three per norm: per (device, dtype), one `cat` holds the clean copies
    (each norm's copy is a view of it) and float32 weights take their Z in one `_foreach_add_` - the same float32
    sums as one add per norm; other dtypes add in float32 (or wider) and round once, norm by norm, as always."""
    pairs = [(weight, applied[name]) for name, weights in groups.items() for weight in weights]
    for (_, dtype), kind in _by_kind(pairs).items():
        weights = [w for w, _ in kind]
        clean = torch.cat([w.detach().flatten() for w in weights]).split([w.numel() for w in weights])
        for (weight, z), copy in zip(kind, clean, strict=True):
            saved.append((weight, copy.view_as(weight)))
            applied.clean[id(weight)] = (saved[-1][1], z)
        if dtype == torch.float32 and all(z.device == w.device for w, z in kind):
            torch._foreach_add_(weights, [z.view_as(w) for w, z in kind])
            continue
        for weight, z in kind:
            wide = torch.promote_types(weight.dtype, torch.float32)
            noisy = weight.detach().to(wide) + z.to(device=weight.device, dtype=wide)
            weight.copy_(noisy.to(weight.dtype))


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy every saved clean copy back into its weight (bit-exact): one `_foreach_copy_` per (device, dtype)."""
    for kind in _by_kind(saved).values():
        torch._foreach_copy_([w for w, _ in kind], [c for _, c in kind])
