"""Fused shards share one NVFP4 tensor scale (vLLM serves q/k/v and gate/up as one layer with one scale)."""
from __future__ import annotations

import pytest
import torch

from qerl.quantizers import MXFP4, NVFP4
from qerl.quantizers.e2m1 import E2M1_MAX
from qerl.quantizers.fused import fused_groups, unshared_tensor_scales
from qerl.quantizers.nvfp4 import E4M3_MAX


def test_fused_groups_are_qkv_and_gate_up_of_one_parent():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
             "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
             "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    assert fused_groups(names) == {
        "model.layers.0.self_attn.qkv_proj": names[:3],
        "model.layers.0.mlp.gate_up_proj": names[4:6]}  # a lone q_proj (layer 1 here) has nothing to share with


def test_nvfp4_gives_fused_shards_the_tensor_scale_of_their_largest_weight(make_tiny_llama):
    model = make_tiny_llama(seed=5)
    with torch.no_grad():  # make the shards' ranges differ, as k/v and q do in a real model
        model.model.layers[0].self_attn.k_proj.weight.mul_(3.0)
        model.model.layers[0].mlp.up_proj.weight.mul_(0.25)
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    NVFP4().quantize_model(model)
    layers = dict(model.named_modules())
    for i in range(2):
        for shards in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")):
            names = [f"model.layers.{i}.{s}" for s in shards]
            amax = max(float(dense[n].abs().amax()) for n in names)
            for n in names:  # one tensor scale per fused layer: amax of the group / (6 x 448)
                assert float(layers[n].global_scale) == pytest.approx(amax / (E2M1_MAX * E4M3_MAX), rel=1e-6)
                err = (layers[n].dequantize(torch.float32) - dense[n]).norm() / dense[n].norm()
                assert err < 0.15, (n, float(err))  # the shared scale costs a shard no real accuracy
        own = f"model.layers.{i}.self_attn.o_proj"  # not fused: its own amax
        assert float(layers[own].global_scale) == pytest.approx(
            float(dense[own].abs().amax()) / (E2M1_MAX * E4M3_MAX), rel=1e-6)
    assert unshared_tensor_scales(model) is None


def test_a_base_quantized_shard_by_shard_is_named_and_served_dense_by_vllm():
    from qerl.lora.apply import apply_lora
    from qerl.models import RandomInit
    from qerl.rollout.vllm import VLLM

    config = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 2, "num_key_value_heads": 2}
    model, _ = RandomInit(config=config, seed=0).load(quantizer=NVFP4(), dtype="bfloat16")
    backend = VLLM()
    assert backend._packed_format(model, on_cuda=True) == ("nvfp4", None)  # fused at quantization: served packed
    k_proj = model.model.layers[1].self_attn.k_proj
    k_proj.global_scale.mul_(1.5)  # as an older qerl (one tensor scale per layer) left it
    packed, why = VLLM()._packed_format(apply_lora(model, rank=4, alpha=8.0), on_cuda=True)
    assert packed is None
    assert "model.layers.1.self_attn.qkv_proj (q_proj, k_proj, v_proj)" in why and "Re-quantize" in why


def test_formats_without_a_tensor_scale_are_untouched(make_tiny_llama):
    model = MXFP4().quantize_model(make_tiny_llama(seed=6))
    assert not MXFP4.shares_tensor_scale and unshared_tensor_scales(model) is None
