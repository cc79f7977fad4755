"""Adaptive Quantization Noise: sigma schedules (NOISE_SCHEDULERS) and the norm-noise context manager.

Importing this package registers the built-in schedules. `noisy_norms` is imported
lazily (it needs torch) so `import qerl.noise` stays light.
"""
from qerl.noise.base import NoiseSchedule
from qerl.noise.constant import Constant
from qerl.noise.cosine import Cosine
from qerl.noise.exponential import Exponential
from qerl.noise.linear import Linear
from qerl.noise.none import NoNoise


def __getattr__(name: str):
    if name in ("noisy_norms", "targeted_norms", "DEFAULT_TARGETS"):
        from qerl.noise import inject

        return getattr(inject, name)
    if name == "keep_norms_float32":
        from qerl.noise import precision

        return precision.keep_norms_float32
    raise AttributeError(f"module 'qerl.noise' has no attribute {name!r}")


__all__ = [
    "DEFAULT_TARGETS",
    "Constant",
    "Cosine",
    "Exponential",
    "Linear",
    "NoNoise",
    "NoiseSchedule",
    "keep_norms_float32",
    "noisy_norms",
    "targeted_norms",
]
