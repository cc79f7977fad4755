"""Our GRPO / DAPO / Dr.GRPO numbers against TRL's own GRPOTrainer on identical tensors.

A tiny random Llama and a 2-prompt dataset build a real `trl.GRPOTrainer`
(trl is a dev dependency); its `_compute_loss` (loss types "grpo", "bnpo",
"dr_grpo", "dapo") and `_generate_and_score_completions` (advantages) run
unchanged on crafted inputs. Our loss gets the per-token log-probs from TRL's
own `_get_per_token_logps_and_entropies` on the same model, so loss values
AND gradients on every model parameter must agree.
"""
from __future__ import annotations

import math
import sys

import pytest
import torch

from qerl.algorithms import DAPO, GRPO, DrGRPO
from qerl.algorithms.dapo import overlong_penalty

MAX_LEN = 8  # TRL max_completion_length, also our Dr.GRPO normaliser
T = 6  # completion width of the crafted batch
GROUP = 4
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.2, 0.9, 0.4, 0.4]


def _import_trl():
    """Import trl without letting it import vLLM (its optional engine costs ~15 s and is not used here)."""
    hide = "vllm" not in sys.modules
    if hide:
        sys.modules["vllm"] = None  # find_spec("vllm") -> None: trl sees vLLM as absent
    try:
        import trl
        from trl import GRPOConfig, GRPOTrainer
        from trl.rewards import get_soft_overlong_punishment
    finally:
        if hide:
            del sys.modules["vllm"]
    return trl, GRPOConfig, GRPOTrainer, get_soft_overlong_punishment


@pytest.fixture(scope="module")
def trl_parts():
    return _import_trl()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(30)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _trainer(trl_parts, model_dir, tmp_path, loss_type, **kwargs):
    from datasets import Dataset

    _, GRPOConfig, GRPOTrainer, _ = trl_parts
    rewards = iter(REWARDS)

    def scripted_reward(completions, **_):
        return [next(rewards) for _ in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path), loss_type=loss_type, num_generations=GROUP, per_device_train_batch_size=2 * GROUP,
        max_completion_length=MAX_LEN, report_to="none", use_cpu=True, bf16=False, seed=0,
        use_bias_correction_kl=False,  # trl >= 1.x default multiplies the KL by the ratio; classic k3 has no ratio
        **kwargs,
    )
    dataset = Dataset.from_dict({"prompt": ["w1 w2 w3", "w4 w5 w6"]})
    return GRPOTrainer(model=str(model_dir), reward_funcs=scripted_reward, args=args, train_dataset=dataset)


def _crafted_inputs(trainer):
    """4 completions of varied length; old/ref log-probs offset from the model's so ratios hit both clip sides."""
    g = torch.Generator().manual_seed(7)
    prompt_ids = torch.randint(2, 32, (4, 3), generator=g)
    completion_ids = torch.randint(2, 32, (4, T), generator=g)
    lengths = torch.tensor([6, 4, 2, 5])
    completion_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    prompt_mask = torch.ones_like(prompt_ids)
    model = trainer.model.eval()
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), T
        )[0]
    ratios = torch.tensor([0.5, 0.85, 1.0, 1.15, 1.4, 0.7]).roll(1).repeat(4, 1)
    for row in range(4):
        ratios[row] = ratios[row].roll(row)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.tensor([1.3, -0.7, 0.4, -1.1]),
        "old_per_token_logps": logps - torch.log(ratios),  # exp(logp - old) == ratios
        "ref_per_token_logps": logps + 0.3 * torch.randn(4, T, generator=g),
        "num_items_in_batch": completion_mask.sum(),
    }


def _rows(inputs, rows):
    return {k: (v if k == "num_items_in_batch" else v[rows]) for k, v in inputs.items()}


def _ours(trainer, algo, inputs, **totals):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, T)[0]
    return algo.loss(
        logps, inputs["old_per_token_logps"], inputs["advantages"], inputs["completion_mask"],
        ref_logprobs=inputs["ref_per_token_logps"], **totals,
    )


def _grads(loss, params):
    return torch.autograd.grad(loss, params)


CASES = {
    # trl loss_type: (trl GRPOConfig overrides, our algorithm)
    "grpo": ({"epsilon": 0.2, "epsilon_high": 0.3, "beta": 0.04}, lambda: GRPO(eps_low=0.2, eps_high=0.3, beta=0.04)),
    "bnpo": ({"epsilon": 0.2, "beta": 0.0}, lambda: GRPO(loss_aggregation="token_mean")),
    "dr_grpo": (
        {"epsilon": 0.2, "beta": 0.04, "scale_rewards": "none"},
        lambda: DrGRPO(beta=0.04, max_completion_length=MAX_LEN),
    ),
    "dapo": ({"epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.0}, lambda: DAPO()),
}


@pytest.mark.parametrize("loss_type", list(CASES))
def test_loss_and_gradients_match_trl(trl_parts, model_dir, tmp_path, loss_type):
    overrides, build = CASES[loss_type]
    trainer = _trainer(trl_parts, model_dir, tmp_path, loss_type, **overrides)
    inputs = _crafted_inputs(trainer)
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    theirs = trainer._compute_loss(trainer.model, inputs)
    ours = _ours(trainer, build(), inputs)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    for a, b in zip(_grads(ours.loss, params), _grads(theirs, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # the crafted ratios clip on both sides, so the comparison covers both clip branches
    assert ours.metrics["clip_fraction_low"] > 0 and ours.metrics["clip_fraction_high"] > 0
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert ours.metrics["clip_fraction_low"] == pytest.approx(logged["clip_ratio/low_mean"], rel=1e-6)
    assert ours.metrics["clip_fraction_high"] == pytest.approx(logged["clip_ratio/high_mean"], rel=1e-6)
    if overrides["beta"]:
        assert ours.metrics["kl"] == pytest.approx(logged["kl"], rel=1e-5)


def test_dapo_micro_batches_match_trl_num_items_normaliser(trl_parts, model_dir, tmp_path):
    overrides, build = CASES["dapo"]
    trainer = _trainer(trl_parts, model_dir, tmp_path, "dapo", **overrides)
    inputs = _crafted_inputs(trainer)
    totals = {"num_sequences": 4, "num_tokens": float(inputs["num_items_in_batch"])}
    for rows in (slice(0, 1), slice(1, 4)):  # TRL divides each micro-batch by the whole batch's token count
        theirs = trainer._compute_loss(trainer.model, _rows(inputs, rows)).item()
        assert _ours(trainer, build(), _rows(inputs, rows), **totals).loss.item() == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize("scale_rewards, algo", [("group", GRPO()), ("none", DrGRPO())])
def test_advantages_match_trl_generate_and_score(trl_parts, model_dir, tmp_path, scale_rewards, algo):
    trainer = _trainer(trl_parts, model_dir, tmp_path, "grpo", scale_rewards=scale_rewards)
    trainer.model.train()
    batch = [{"prompt": "w1 w2 w3"}] * GROUP + [{"prompt": "w4 w5 w6"}] * GROUP
    theirs = trainer._generate_and_score_completions(batch)["advantages"]
    ours = algo.advantages(torch.tensor(REWARDS), GROUP)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-6)


def test_overlong_penalty_matches_trl_soft_overlong_punishment(trl_parts):
    reference = trl_parts[3](max_completion_len=100, soft_punish_cache=20)
    lengths = [0, 50, 80, 81, 90, 99, 100, 101, 150]
    expected = reference([[1] * n for n in lengths])
    ours = overlong_penalty(torch.tensor(lengths), 100, 20).tolist()
    assert ours == pytest.approx(expected, abs=1e-6)
    assert not any(math.isnan(v) for v in ours)
