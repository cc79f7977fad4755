"""Loading policies: from a Hugging Face folder or hub id, a GGUF file, or random weights in a public shape.

Importing this package registers `HFModel`, `GGUFModel` and `RandomInit` in `qerl.registry.MODELS`.
"""
from qerl.models.base import PolicyLoader, load_policy
from qerl.models.gguf import GGUFModel
from qerl.models.hf import HFModel
from qerl.models.random_init import PRESETS, RandomInit
from qerl.models.report import LoadReport
from qerl.models.smollm2 import ModelNotFoundError, smollm2_gguf_path
from qerl.models.streaming import LoadError

__all__ = [
           "PRESETS",
           "GGUFModel",
           "HFModel",
           "LoadError",
           "LoadReport",
           "ModelNotFoundError",
           "PolicyLoader",
           "RandomInit",
           "load_policy",
           "smollm2_gguf_path",
]
