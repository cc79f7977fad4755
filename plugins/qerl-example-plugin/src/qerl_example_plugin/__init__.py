"""qerl example plugin: importing it registers the `INT4` quantizer in qerl's QUANTIZERS registry."""
from qerl_example_plugin.int4 import INT4

__all__ = ["INT4"]
