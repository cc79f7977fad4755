"""The memory plan (qerl.memory) against what real tiny models allocate: exact byte counts where they are
countable (quantized weights, LoRA, AdamW states, KV cache), saved-for-backward bytes measured with autograd
hooks, the fit warning, the automatic micro-batch and the start-up plan of a QeRLModule."""
from __future__ import annotations

import warnings

import pytest
import torch

from qerl.memory import MemoryPlanWarning, ModelShape, RunShape, plan_for_module
from qerl.memory.estimate import auto_micro_batch, check_fits, estimate_memory, layer_activation_bytes, weight_bits

SMALL = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 4,
         "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def quantized_lora():
    from qerl.lora.apply import apply_lora
    from qerl.models.random_init import RandomInit

    loader = RandomInit("tiny", overrides=SMALL, tokenizer="bytes")
    model, _ = loader.load(quantizer="NVFP4", dtype="bfloat16", device="cpu")
    model = apply_lora(model, rank=8)
    model.train()
    return model, ModelShape.from_config(loader.hf_config())


def _run(**kw) -> RunShape:
    args = {"rows": 4, "prompt_len": 32, "response_len": 32, "micro_batch": 4, "gradient_checkpointing": False,
            "lora_rank": 8}
    args.update(kw)
    return RunShape(**args)


def test_weight_and_lora_bytes_match_the_model(quantized_lora):
    from qerl.quantizers.layers import QuantLinear

    model, shape = quantized_lora
    est = estimate_memory(shape, _run(), quant_bits=weight_bits("NVFP4"))
    quant = sum(m.nbytes for m in model.modules() if isinstance(m, QuantLinear))
    assert est.static["weights (quantized part)"] == pytest.approx(quant, rel=1e-3)  # per-tensor fp32 scale only
    dense = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)
    dense += sum(m.bias.numel() * 2 for m in model.modules() if isinstance(m, QuantLinear) and m.bias is not None)
    assert est.static["weights (dense part)"] == dense
    lora = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in lora) == shape.lora_params(8, _run().lora_targets)
    assert est.static["trainable params"] == sum(p.numel() * p.element_size() for p in lora)


def test_adamw_state_and_grad_bytes_are_exact(quantized_lora):
    model, shape = quantized_lora
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params)
    est = estimate_memory(shape, _run(), quant_bits=weight_bits("NVFP4"))
    assert est.static["grads + AdamW m, v"] == state + grads
    opt.zero_grad(set_to_none=True)


def test_activation_estimate_matches_saved_tensors(quantized_lora):
    """Bytes autograd keeps for backward (counted per storage) vs layers x layer_activation_bytes x tokens."""
    from qerl.models.logprobs import completion_logprobs

    model, shape = quantized_lora
    gen = torch.Generator().manual_seed(0)
    prompt, completion = torch.randint(3, 259, (4, 32), generator=gen), torch.randint(3, 259, (4, 32), generator=gen)
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[0, :5] = 0  # left padding: attention runs with a mask, as in RL batches
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        completion_logprobs(model, prompt, prompt_mask, completion, torch.ones_like(completion))
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    measured = sum(v for k, v in storages.items() if k not in owned)
    predicted = shape.layers * layer_activation_bytes(shape, _run()) * 4 * 64
    assert measured == pytest.approx(predicted, rel=0.05)


def test_kv_cache_estimate_equals_the_fast_engine_cache(quantized_lora):
    from qerl.rollout.fast import decoder_layout
    from qerl.rollout.fast.state import DecodeState

    model, shape = quantized_lora
    run = _run(rows=3, prompt_len=40, response_len=100)
    state = DecodeState(decoder_layout(model), 3, 256, 100)  # the engine rounds 140 columns up to 256
    cache = sum(t.numel() * t.element_size() for t in [*state.k_cache, *state.v_cache])
    assert estimate_memory(shape, run).rollout["KV cache"] == cache


def test_qwen32b_plan_numbers():
    """Closed-form numbers for the 32B shape the benchmark measured (benchmarks/results/step-notes.md)."""
    shape = ModelShape(hidden=5120, intermediate=27648, layers=64, heads=40, kv_heads=8, vocab=152064)
    assert shape.lora_params(32, RunShape(1, 1, 1, 1).lora_targets) == 268_435_456
    run = RunShape(rows=16, prompt_len=256, response_len=2048, micro_batch=16, rollout_rows=16)
    est = estimate_memory(shape, run, quant_bits=4.5)
    assert est.rollout["KV cache"] == 64 * 2 * 1024 * 2304 * 16 * 2
    assert est.static["grads + AdamW m, v"] == 3 * 268_435_456 * 4
    assert 60e9 < est.peak < 76e9  # measured 69.9 GB on an H100 (estimate 74.4 GB)


def test_a_packed_update_counts_one_prompt_and_a_mask_only_where_it_is_short():
    """`RunShape.packed` (QeRLModule(pack_groups=True)): a micro-batch is one sequence of the prompt and its rows'
    completions; a long one attends segment by segment (no (L, L) mask), a short one holds the block mask that
    `block_mask` allocates, byte for byte."""
    from qerl.memory.startup import run_shape
    from qerl.models.packed import block_mask
    from tests.rl_helpers import tiny_module

    shape = ModelShape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064)
    padded = estimate_memory(shape, RunShape(128, 256, 4096, 8), 4.5)
    packed = estimate_memory(shape, RunShape(128, 256, 4096, 8, packed=True), 4.5)
    length = 256 + 8 * 4096
    assert packed.training["layer inputs (checkpointed)"] == 28 * 3584 * 2 * length
    assert padded.training["layer inputs (checkpointed)"] == 28 * 3584 * 2 * 8 * (256 + 4096)
    assert packed.training["attention mask"] == 0 and padded.training["attention mask"] == 8 * 4352 ** 2 * 2
    mask = block_mask(3, [4, 4], "cpu", torch.bfloat16)  # 11 positions, rows padded to 16 columns
    assert mask.untyped_storage().nbytes() == RunShape(2, 3, 4, 2, packed=True).mask_bytes(2, 2) == 11 * 16 * 2
    assert packed.training_peak < padded.training_peak
    module = tiny_module(pack_groups=True)
    module.setup("fit")
    assert run_shape(module).packed and not run_shape(tiny_module()).packed


def test_check_fits_warns_only_over_budget():
    shape = ModelShape(hidden=5120, intermediate=27648, layers=64, heads=40, kv_heads=8, vocab=152064)
    est = estimate_memory(shape, RunShape(rows=8, prompt_len=256, response_len=512, micro_batch=8), quant_bits=16)
    with pytest.warns(MemoryPlanWarning, match="exceeds the 60.0 GB"):
        assert not check_fits(est, 60e9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_fits(est, est.peak + 1)
        assert check_fits(est, None)  # no device: nothing to compare with


def test_auto_micro_batch_picks_the_largest_that_fits():
    shape = ModelShape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064)
    run = RunShape(rows=16, prompt_len=256, response_len=2048, micro_batch=16)
    peaks = {m: estimate_memory(shape, RunShape(16, 256, 2048, m), 4.5).peak for m in (1, 2, 4, 8, 16)}
    assert all(peaks[a] < peaks[b] for a, b in [(1, 2), (2, 4), (4, 8), (8, 16)])
    assert auto_micro_batch(shape, run, peaks[4] + 1, 4.5) == 4
    assert auto_micro_batch(shape, run, peaks[16], 4.5) == 16
    assert auto_micro_batch(shape, run, peaks[1] - 1, 4.5) == 1  # nothing fits: 1, and check_fits warns


def test_module_start_up_plan_resolves_auto_and_warns():
    from tests.rl_helpers import tiny_data, tiny_module

    module = tiny_module(micro_batch_size="auto", gradient_checkpointing=True)
    module.setup("fit")  # builds the policy (prints the plan on CPU: no device budget, all rows at once)
    assert module.micro_batch_size == 4  # no datamodule: 1 prompt x n=4 rows, all in one micro-batch
    lines: list[str] = []
    data = tiny_data()
    est = plan_for_module(module, data, budget=1e12, echo=lines.append).estimate
    assert "memory plan (GB)" in lines[-1] and "rows 8" in lines[-1]  # 2 prompts x n=4
    assert est.peak > 0
    module.micro_batch_size = "auto"
    small = estimate_memory(ModelShape.from_config(module.model.get_base_model().config),
                            RunShape(8, 256, 6, 2, rollout_rows=64, lora_rank=4), weight_bits(module.quantizer), 4)
    assert plan_for_module(module, data, budget=small.peak + 1, echo=lines.append).micro_batch_size == 2
    assert module.micro_batch_size == "auto"  # the plan is returned, the module is only read
    with pytest.warns(MemoryPlanWarning):
        plan_for_module(module, data, budget=1.0, echo=lines.append)


def test_cpu_plan_sizes_real_prompts_and_counts_the_process():
    """On a CPU the plan measures the datamodule's prompts (not a 256-token default) and counts the process's
    resident memory, so its peak is never below what the process already holds."""
    from qerl.memory.startup import resident_bytes
    from tests.rl_helpers import tiny_data, tiny_module

    module = tiny_module(dequantize_once_per_step=True)
    module.setup("fit")
    data = tiny_data()
    data.set_tokenizer(module.tokenizer)
    longest = max(data.prompt_length(p) for p, _, _ in data.prepared("train"))
    lines: list[str] = []
    est = plan_for_module(module, data, echo=lines.append).estimate
    assert f"prompt {longest} + response" in lines[-1] and longest < 256
    assert est.static["dense copy of 4-bit layers"] > 0
    rss = resident_bytes()
    if rss is not None:
        assert est.peak >= 0.9 * rss and est.static["process (torch, libraries)"] > 0


def test_training_by_completion_plans_its_gradient_buffers():
    """`train_during_rollout_unit: completion` holds up to `MAX_BUFFERS` float32 copies of the trainable parameters
    through the update: the plan counts them (0.32 GB each for the 7B recipe's r32 adapter on all 7 projections)."""
    from qerl.memory.startup import run_shape
    from qerl.training.completion_trainer import MAX_BUFFERS
    from tests.rl_helpers import tiny_module

    shape = ModelShape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064)
    plain = estimate_memory(shape, RunShape(128, 256, 4096, 8, packed=True), 4.5)
    buffered = estimate_memory(shape, RunShape(128, 256, 4096, 8, packed=True, gradient_buffers=MAX_BUFFERS), 4.5)
    one = shape.lora_params(32, RunShape(1, 1, 1, 1).lora_targets) * 4
    assert one == pytest.approx(0.323e9, rel=0.01)
    assert buffered.training["gradient buffers (by completion)"] == MAX_BUFFERS * one
    assert buffered.training_peak == pytest.approx(plain.training_peak + MAX_BUFFERS * one)
    by_group = tiny_module(train_during_rollout=True)
    by_completion = tiny_module(train_during_rollout=True, train_during_rollout_unit="completion")
    assert run_shape(by_group).gradient_buffers == 0 and run_shape(by_completion).gradient_buffers == MAX_BUFFERS
