"""Start-up checks of a QeRLModule recipe (messages name the keys) and building its policy."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qerl.module import QeRLModule

_KEY = "model.init_args"


class RecipeError(ValueError):
    """Recipe parts that cannot work together; the message names the keys to change."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise RecipeError(message)


def _positive_int(value, key: str, minimum: int = 1) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
             f"`{_KEY}.{key}` must be an int >= {minimum}, got {value!r}.")


def check_module_args(module: QeRLModule, accuracy_reward: str | None) -> int:
    """Validate what can be checked without loading the model; return the index of the accuracy reward."""
    from qerl.scoring import reward_names

    s = module.sampling
    _positive_int(s.n, "sampling.n")
    _positive_int(s.max_new_tokens, "sampling.max_new_tokens")
    _require(s.temperature >= 0, f"`{_KEY}.sampling.temperature` must be >= 0 (0 is greedy), got {s.temperature!r}.")
    _require(0 < s.top_p <= 1, f"`{_KEY}.sampling.top_p` must be in (0, 1], got {s.top_p!r}.")
    try:
        module.algorithm.configure(s)
    except ValueError as exc:
        raise RecipeError(f"{type(module.algorithm).__name__} cannot run with `{_KEY}.sampling` "
                          f"(n={s.n}, max_new_tokens={s.max_new_tokens}): {exc}") from None
    if module.micro_batch_size != "auto":  # "auto" is resolved from free memory in setup (qerl.memory)
        _positive_int(module.micro_batch_size, "micro_batch_size")
    _positive_int(module.batches_per_step, "batches_per_step")
    _positive_int(module.num_samples_logged, "num_samples_logged", 0)
    _positive_int(module.log_samples_every, "log_samples_every", 0)
    _positive_int(module.export_adapter_every, "export_adapter_every", 0)
    _positive_int(module.max_nan_skips, "max_nan_skips", 0)
    _require(module.optim.lr > 0, f"`{_KEY}.optimizer.lr` must be > 0, got {module.optim.lr!r}.")
    _require(len(module.optim.betas) == 2, f"`{_KEY}.optimizer.betas` must be two numbers, got {module.optim.betas!r}.")
    _positive_int(module.optim.warmup_steps, "optimizer.warmup_steps", 0)
    _require(bool(module.rewards), f"`{_KEY}.rewards` is empty: give at least one reward (e.g. GSM8KAccuracy).")
    if module.lora is None:
        _require(module.quantizer is None,
                 f"`{_KEY}.lora` is null but `{_KEY}.quantizer` is {type(module.quantizer).__name__}: a 4-bit base "
                 "is frozen, so only LoRA adapters can train. Give LoRA settings or set `quantizer: null`.")
        _require(module.algorithm.beta == 0,
                 f"`{_KEY}.algorithm.init_args.beta` > 0 needs the reference policy, which is the base with the "
                 f"LoRA adapters disabled; with `{_KEY}.lora: null` there is none. Set beta: 0 or add LoRA.")
    else:
        _positive_int(module.lora.rank, "lora.rank")
        _require(0 <= module.lora.dropout < 1, f"`{_KEY}.lora.dropout` must be in [0, 1), got {module.lora.dropout!r}.")
        _require(bool(module.lora.targets), f"`{_KEY}.lora.targets` is empty: name the layers that get adapters.")
    names = reward_names(module.rewards)
    if accuracy_reward is None:
        return 0
    lowered = [n.lower() for n in names]
    _require(accuracy_reward.lower() in lowered,
             f"`{_KEY}.accuracy_reward` is {accuracy_reward!r}, which is none of the recipe's rewards: {', '.join(names)}.")
    return lowered.index(accuracy_reward.lower())


def build_policy(module: QeRLModule):
    """Load the policy (quantized on load), add LoRA, freeze the rest; return (model, tokenizer)."""
    model, tokenizer = module.policy.load(quantizer=module.quantizer, dtype=module.dtype_name, device=module.device)
    if module.lora is not None:
        from qerl.quantizers.lora import LoraTargetError, apply_lora

        lora = module.lora
        try:
            model = apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                               targets=tuple(lora.targets), train_norms=lora.train_norms)
        except LoraTargetError as exc:
            raise RecipeError(f"`{_KEY}.lora.targets`: {exc}") from None
    else:
        for param in model.parameters():
            param.requires_grad_(param.is_floating_point())
    if module.noise is not None:  # AQN noise down to 1e-4 needs norm weights wider than bf16 (qerl.noise.precision)
        from qerl.noise.precision import keep_norms_float32

        try:
            keep_norms_float32(model)
        except ValueError as exc:
            raise RecipeError(f"`{_KEY}.noise` is set but the policy cannot carry AQN noise: {exc}") from None
    if module.gradient_checkpointing:
        from qerl.logprobs import causal_lm

        causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not any(p.requires_grad for p in model.parameters()):
        raise RecipeError(f"Nothing to train: no parameter of the policy requires a gradient (check `{_KEY}.lora`).")
    return model, tokenizer
