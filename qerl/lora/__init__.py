"""LoRA on a quantized base through peft."""
