"""Start-up checks of a QeRLModule recipe: messages name the keys to change."""
from __future__ import annotations

from typing import Any

from qerl.algorithms.base import Algorithm
from qerl.lora.adapter_folder import AdapterFolderError
from qerl.lora.init_from import check_init_from
from qerl.quantizers.base import Quantizer
from qerl.rewards.base import Reward
from qerl.training.scoring import reward_names
from qerl.training.settings import LoRASettings, OptimizerSettings
from qerl.types import SamplingConfig

_KEY = "model.init_args"


class RecipeError(ValueError):
    """Recipe parts that cannot work together; the message names the keys to change."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise RecipeError(message)


def _positive_int(value, key: str, minimum: int = 1) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
             f"`{_KEY}.{key}` must be an int >= {minimum}, got {value!r}.")


def check_module_args(sampling: SamplingConfig, algorithm: Algorithm, rewards: list[Reward], lora: LoRASettings | None,
                      quantizer: Quantizer | None, optimizer: OptimizerSettings, counts: dict[str, Any],
                      accuracy_reward: str | None) -> int:
    """Validate what can be checked without loading the model; return the index of the accuracy reward.

    `counts` holds the module's integer settings by recipe key (micro_batch_size, batches_per_step, ...).
    """
    s = sampling
    _positive_int(s.n, "sampling.n")
    _positive_int(s.max_new_tokens, "sampling.max_new_tokens")
    _require(s.temperature >= 0, f"`{_KEY}.sampling.temperature` must be >= 0 (0 is greedy), got {s.temperature!r}.")
    _require(0 < s.top_p <= 1, f"`{_KEY}.sampling.top_p` must be in (0, 1], got {s.top_p!r}.")
    try:
        algorithm.configure(s)
    except ValueError as exc:
        raise RecipeError(f"{type(algorithm).__name__} cannot run with `{_KEY}.sampling` "
                          f"(n={s.n}, max_new_tokens={s.max_new_tokens}): {exc}") from None
    if counts["micro_batch_size"] != "auto":  # "auto" is resolved from free memory in setup (qerl.memory)
        _positive_int(counts["micro_batch_size"], "micro_batch_size")
    _positive_int(counts["batches_per_step"], "batches_per_step")
    _positive_int(counts["num_samples_logged"], "num_samples_logged", 0)
    _positive_int(counts["log_samples_every"], "log_samples_every", 0)
    _positive_int(counts["export_adapter_every"], "export_adapter_every", 0)
    _positive_int(counts["max_nan_skips"], "max_nan_skips", 0)
    _require(optimizer.lr > 0, f"`{_KEY}.optimizer.lr` must be > 0, got {optimizer.lr!r}.")
    _require(len(optimizer.betas) == 2, f"`{_KEY}.optimizer.betas` must be two numbers, got {optimizer.betas!r}.")
    _positive_int(optimizer.warmup_steps, "optimizer.warmup_steps", 0)
    _require(bool(rewards), f"`{_KEY}.rewards` is empty: give at least one reward (e.g. GSM8KAccuracy).")
    if lora is None:
        _require(quantizer is None,
                 f"`{_KEY}.lora` is null but `{_KEY}.quantizer` is {type(quantizer).__name__}: a 4-bit base "
                 "is frozen, so only LoRA adapters can train. Give LoRA settings or set `quantizer: null`.")
        _require(algorithm.beta == 0,
                 f"`{_KEY}.algorithm.init_args.beta` > 0 needs the reference policy, which is the base with the "
                 f"LoRA adapters disabled; with `{_KEY}.lora: null` there is none. Set beta: 0 or add LoRA.")
    else:
        _positive_int(lora.rank, "lora.rank")
        _require(0 <= lora.dropout < 1, f"`{_KEY}.lora.dropout` must be in [0, 1), got {lora.dropout!r}.")
        _require(bool(lora.targets), f"`{_KEY}.lora.targets` is empty: name the layers that get adapters.")
        if lora.init_from:
            try:
                check_init_from(lora.init_from, lora.rank, lora.alpha, lora.targets)
            except AdapterFolderError as exc:
                raise RecipeError(f"`{_KEY}.lora.init_from`: {exc}") from None
    names = reward_names(rewards)
    if accuracy_reward is None:
        return 0
    lowered = [n.lower() for n in names]
    _require(accuracy_reward.lower() in lowered,
             f"`{_KEY}.accuracy_reward` is {accuracy_reward!r}, which is none of the recipe's rewards: {', '.join(names)}.")
    return lowered.index(accuracy_reward.lower())
