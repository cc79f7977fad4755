"""A logger that cannot start its run (W&B without a login) ends in one line naming `trainer.logger` and what to
do, instead of the logging library's traceback from inside Lightning's setup."""
from __future__ import annotations


def logger_error(exc: BaseException) -> str | None:
    """The message for `exc` when a logger library raised it because it cannot start a run, else None."""
    module, text = type(exc).__module__, str(exc).strip()
    if module.startswith("wandb") and ("api key" in text.lower() or "login" in text.lower()):
        return (f"trainer.logger: WandbLogger could not start a W&B run (W&B said: {text[:200]}). Log in once with "
                "`wandb login` (or set WANDB_API_KEY), or log offline with `--trainer.logger.init_args.offline=true` "
                "(or WANDB_MODE=offline) and `wandb sync` the run later (docs/loggers.md).")
    return None
