"""4-bit weight formats (NVFP4, MXFP4, NF4), the QuantLinear layer, LoRA on top, checkpoints.

Importing this package registers the built-in quantizers in `qerl.registry.QUANTIZERS`.
"""
from qerl.quantizers.base import Quantizer
from qerl.quantizers.layers import QuantLinear
from qerl.quantizers.mxfp4 import MXFP4
from qerl.quantizers.nf4 import NF4
from qerl.quantizers.nvfp4 import NVFP4
from qerl.quantizers.weight import QuantizationError, QuantizedWeight, format_codec

__all__ = ["MXFP4", "NF4", "NVFP4", "QuantLinear", "QuantizationError", "QuantizedWeight", "Quantizer", "format_codec"]
