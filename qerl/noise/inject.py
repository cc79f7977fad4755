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

    def measure(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> RealizedNoise:
        """`RealizedNoise` of (norm weight perturbed here, tensor an engine multiplies by instead) pairs."""
        return measure_noise((used, *self.clean[id(weight)]) for weight, used in pairs if id(weight) in self.clean)


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
                for (name, weights), z in zip(groups.items(), flat.split(sizes), strict=True):
                    if relative:
                        z.mul_(weights[0].detach().to(target).abs())
                    applied[name] = z
            with record_function("aqn/apply"):
                for name, weights in groups.items():
                    z = applied[name]
                    for weight in weights:
                        if weight.numel() != z.numel():
                            raise ValueError(f"noisy_norms: copies of {name!r} differ in size "
                                             f"({weight.numel()} vs {z.numel()}).")
                        saved.append((weight, weight.detach().clone()))
                        applied.clean[id(weight)] = (saved[-1][1], z)
                        wide = torch.promote_types(weight.dtype, torch.float32)
                        noisy = weight.detach().to(wide) + z.to(device=weight.device, dtype=wide)
                        weight.copy_(noisy.to(weight.dtype))
            with record_function("aqn/measure"):
                applied.realized = applied.measure([(w, w) for w, _ in saved])
        warn_if_not_held(applied.realized, value, type(model).__name__,
                         "Keep the targeted norms in float32: qerl.noise.precision.keep_norms_float32(model).", model,
                         relative)
        yield applied
    finally:
        with torch.no_grad(), record_function("aqn/restore"):
            for weight, clean in reversed(saved):
                weight.copy_(clean)
