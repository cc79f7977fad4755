"""merge_to_dense: a LoRA model over each 4-bit format (and a dense base) becomes one plain model, same outputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qerl.lora.apply import apply_lora
from qerl.lora.merge import merge_to_dense
from qerl.quantizers import MXFP4, NF4, NVFP4, QuantLinear


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("quantizer", [NVFP4(), MXFP4(), NF4(double_quant=True), None],
                         ids=["NVFP4", "MXFP4", "NF4", "dense"])
def test_merged_model_has_no_lora_and_the_same_logits(quantizer):
    base = tiny_llama() if quantizer is None else quantizer.quantize_model(tiny_llama())
    model = apply_lora(base, rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
        merged = merge_to_dense(model, torch.float32)
        got = merged(input_ids=ids).logits
    assert not any(isinstance(m, QuantLinear) or hasattr(m, "lora_A") for m in merged.modules())
    assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith(("q_proj", "down_proj")))
    assert float((want - plain).abs().max()) > 1e-2  # the adapter matters
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
