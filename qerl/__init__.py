"""qerl: reinforcement learning of LLMs on a frozen 4-bit base with LoRA and adaptive quantization noise."""
__version__ = "0.1.0"
