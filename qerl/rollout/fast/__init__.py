"""The fast decode engine behind `HF(fast=True)`: static KV cache, CUDA-graph decode steps, bucketed batching.

Used by the `HF` rollout backend on CUDA by default; runs eagerly (same code, no graphs) elsewhere.
"""
from qerl.rollout.fast.engine import FastEngine, batch_buckets
from qerl.rollout.fast.layout import DecoderLayout, FastPathError, decoder_layout

__all__ = ["DecoderLayout", "FastEngine", "FastPathError", "batch_buckets", "decoder_layout"]
