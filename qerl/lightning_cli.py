"""`qerl fit|validate|test --config recipe.yaml`: LightningCLI with qerl's components and plugins loaded first.

Every built-in component and every `qerl.plugins` entry point is imported before parsing, so a
recipe names classes by their short names (`quantizer: NVFP4`, or `{class_path: NVFP4,
init_args: {...}}`): jsonargparse resolves a short name among the imported subclasses of the
argument's type. A bad recipe (typo'd key, unknown class, wrong type) ends with a short message
naming the key and the choices, and exit status 2 - no traceback. `QERL_DEBUG=1` shows tracebacks.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from qerl.callbacks.save_config import RunFolderSaveConfig
from qerl.commands import TOOLS
from qerl.commands.logger_errors import logger_error
from qerl.commands.quiet import quiet_library_output
from qerl.commands.recipe_errors import explain_parse_error, union_build_error
from qerl.commands.trainer_errors import precision_error, trainer_error
from qerl.models.base import PolicyLoader
from qerl.registry import RegistryError, load_all

SUBCOMMANDS = ("fit", "validate", "test")
#: exceptions from building the run (a component's __init__ rejecting a value) shown without a traceback
BUILD_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError)


def debug_mode() -> bool:
    """`QERL_DEBUG=1`: let tracebacks through instead of one-line errors."""
    return os.environ.get("QERL_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def is_user_error(exc: BaseException) -> bool:
    """qerl's own error classes (DatasetError, LoadError, RecipeError, ...) carry messages meant for users."""
    cls = type(exc)
    return cls.__module__.startswith("qerl.") and not cls.__name__.startswith("_")


def default_logger(recipe_files: tuple[str, ...]) -> dict:
    """TensorBoard under runs/, one folder per recipe: recipes/smollm2/grpo.yaml logs to runs/smollm2/grpo/version_N."""
    name = "qerl"
    if recipe_files:
        path = Path(recipe_files[-1]).with_suffix("")
        parts = path.parts
        name = "/".join(parts[len(parts) - parts[::-1].index("recipes"):]) if "recipes" in parts else path.name
    return {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": name}}


class QeRLArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one short, specific message instead of a usage dump."""

    #: the command that was run (`qerl fit --config recipe.yaml`) and its help command, set by QeRLCLI
    command: str = ""
    help_command: str = ""
    recipe_files: tuple[str, ...] = ()

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or debug_mode():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        explained = explain_parse_error(message, parser, self.recipe_files)
        sys.stderr.write(f"{self.command or prog}: error: {explained}\n")
        sys.stderr.write(f"(every option and its type: {self.help_command or prog} --help)\n")
        self.exit(2)


def _recipe_files(argv: list[str]) -> tuple[str, ...]:
    files = []
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return tuple(files)


def _subcommand(argv: list[str]) -> str | None:
    return next((a for a in argv if a in SUBCOMMANDS), None)


def _command(argv: list[str], with_config: bool = True) -> str:
    """`qerl fit --config recipe.yaml`: how errors name the run."""
    parts = ["qerl"] + [s for s in [_subcommand(argv)] if s]
    if with_config:
        parts += [f"--config {path}" for path in _recipe_files(argv)]
    return " ".join(parts)


class QeRLCLI(LightningCLI):
    """LightningCLI for `qerl.module.QeRLModule` and any `PromptDataModule`, with plugins loaded before parsing.

    Args:
        args: command-line arguments (default: `sys.argv[1:]`).
        model_class: the LightningModule (default `qerl.module.QeRLModule`, imported lazily).
        datamodule_class: base class of the datamodules a recipe may name (subclass mode).
        **kwargs: passed on to `LightningCLI`.
    """

    def __init__(self, args: list[str] | None = None, model_class=None, datamodule_class=None, **kwargs: Any) -> None:
        quiet_library_output()
        load_all()
        if model_class is None:
            from qerl.module import QeRLModule as model_class
        if datamodule_class is None:
            from qerl.data.base import PromptDataModule as datamodule_class
        self._argv = list(sys.argv[1:] if args is None else args)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", QeRLArgumentParser)
        kwargs.setdefault("save_config_callback", RunFolderSaveConfig)  # into the run's own folder (W&B too)
        kwargs.setdefault("trainer_defaults", {"logger": default_logger(_recipe_files(self._argv))})
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        parser_kwargs.setdefault("prog", "qerl")
        parser_kwargs.setdefault("description", _description())
        super().__init__(model_class, datamodule_class, args=self._argv, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (predict has no meaning for RL training)."""
        full = LightningCLI.subcommands()
        return {name: full[name] for name in SUBCOMMANDS}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        if isinstance(parser, QeRLArgumentParser):
            parser.command, parser.help_command = _command(self._argv), _command(self._argv, with_config=False)
            parser.recipe_files = _recipe_files(self._argv)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # LightningCLI warns when given args while sys.argv also has some; `qerl` always passes both on purpose
        self.config = parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """Resolve `--ckpt_path` (checked, within the run it belongs to) before Lightning reads it or builds anything."""
        from qerl.training.checkpoint_io import CheckpointError
        from qerl.training.run_folder import continue_run

        self._resume = None
        subcommand = self.config.get("subcommand")
        if subcommand:
            try:
                self._resume = continue_run(self.config[subcommand], subcommand == "fit")
            except CheckpointError as exc:
                if debug_mode():
                    raise
                self._fail_input(exc)
        if self._resume is not None and self._resume.version is not None:  # config.yaml of the run stays as it was
            from qerl.commands.quiet import hide_warning

            hide_warning(r"Checkpoint directory .* exists and is not empty")  # the run's own folder, resumed
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True,
                                       "config_filename": f"config-resume-step{self._resume.step}.yaml"}
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as exc:
            if debug_mode():
                raise
            subcommand = self.config.get("subcommand")
            said = trainer_error(exc, (self.config.get(subcommand) or {}).get("trainer") if subcommand else None)
            if said is not None:
                self._fail_input(said)
            if not (isinstance(exc, BUILD_ERRORS) or is_user_error(exc)):
                raise
            own = union_build_error(str(exc))  # an optional component's own message, without the Union's report
            if own is not None:
                self._fail_input(f"could not build the run: {own}")
            self._fail("could not build the run", exc, status=2)

    def instantiate_trainer(self, **kwargs: Any):
        from qerl.callbacks.progress import use_step_progress_bar
        from qerl.callbacks.stop_on_signal import StopOnSignal
        from qerl.training.checkpoint_io import use_atomic_checkpoints

        trainer = super().instantiate_trainer(**kwargs)
        subcommand = self.config.get("subcommand")
        asked = ((self.config.get(subcommand) or {}).get("trainer") or {}).get("precision") if subcommand else None
        said = precision_error(trainer.precision, asked)  # the recipe's own words (Lightning may have changed them)
        if said is not None:
            self._fail_input(said)
        use_atomic_checkpoints(trainer)
        use_step_progress_bar(trainer)
        if getattr(self, "_resume", None) is not None and self._resume.version is not None:
            from qerl.commands.quiet import hide_warning
            from qerl.training.run_loggers import keep_csv_history

            hide_warning(r"Experiment logs directory .* exists and is not empty")  # the resumed run's own folder
            keep_csv_history(trainer.loggers, self._resume.logged_step, self._resume.step)  # CSV's twin of purge_step
        trainer.callbacks.append(StopOnSignal())  # SIGTERM/SIGINT: checkpoint + adapter, exit 143/130
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        from qerl.callbacks.stop_on_signal import StoppedBySignal, stopped_message
        from qerl.training.run_folder import check_inputs, first_missing, remove_stub
        from qerl.training.write_probe import check_output_folders

        try:
            check_inputs(self.datamodule, subcommand)  # data files are read and named before the model loads
            policy = getattr(self.model, "policy", None)
            if isinstance(policy, PolicyLoader):
                policy.check_files()  # so are model files (headers only), before the run folder exists
            check_output_folders(self.trainer)  # and a read-only or full output folder
        except Exception as exc:
            if debug_mode() or not is_user_error(exc):
                raise
            self._fail_input(exc)
        log_dir = self.trainer.log_dir
        fresh = log_dir is not None and not os.path.exists(log_dir)
        created = first_missing(log_dir) if fresh else None  # e.g. runs/<recipe>/ on a first run: removed with it
        try:
            super()._run_subcommand(subcommand)
        except StoppedBySignal as stopped:  # SIGTERM / SIGINT: what was saved and how to resume, exit 143 / 130
            if fresh and stopped.checkpoint is None:
                remove_stub(log_dir, created)
            sys.stderr.write(stopped_message(stopped, _command(self._argv), self._argv,
                                             self.config[subcommand].get("trainer")))
            raise SystemExit(stopped.code) from None
        except Exception as exc:
            if fresh and self.trainer.global_step == 0:
                remove_stub(log_dir, created)  # a run that failed before its first checkpoint leaves no folder behind
            said = None if debug_mode() else logger_error(exc)
            if said:
                sys.stderr.write(f"{_command(self._argv)}: error: {said}\n")
                raise SystemExit(2) from None
            if debug_mode() or not is_user_error(exc):
                raise
            self._fail(f"{subcommand} stopped", exc, status=1)

    def _fail_input(self, exc: Exception) -> None:
        """One line for a missing or damaged input file, before anything is loaded; exit 2."""
        sys.stderr.write(f"{_command(self._argv)}: error: {exc}\n")
        raise SystemExit(2) from None

    def _fail(self, what: str, exc: Exception, status: int) -> None:
        sys.stderr.write(
            f"{_command(self._argv)}: error: {what}: {type(exc).__name__}: {exc}\n"
            "(QERL_DEBUG=1 shows the traceback)\n"
        )
        raise SystemExit(status) from None


def _description() -> str:
    return (
        "qerl: RL of LLMs on a frozen 4-bit base (LoRA + adaptive quantization noise).\n"
        "Run a recipe: qerl fit --config recipes/<model>/<recipe>.yaml\n"
        f"Other commands: {', '.join(f'qerl {name}' for name in TOOLS)} (each has --help)."
    )


def parse_recipe(path: str | Path, subcommand: str | None = None):
    """Parse and validate a recipe without building or running anything; returns the subcommand's config.

    The subcommand defaults to the one named on the recipe's first line (`# qerl fit --config ...`),
    else `fit`. Raises SystemExit(2) after printing the error, like `qerl` itself.
    """
    path = Path(path)
    if subcommand is None:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        subcommand = _subcommand(first[0].split()) if first else None
    cli = _ParseOnlyCLI(args=[subcommand or "fit", "--config", str(path)])
    return cli.config[cli.subcommand]


class _ParseOnlyCLI(QeRLCLI):
    """Parses and validates, then stops: builds no objects and runs nothing."""

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        super().__init__(args=args, seed_everything_default=False, save_config_callback=None, **kwargs)

    def _add_instantiators(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def run_lightning_cli(argv: list[str]) -> int:
    """Entry point used by `qerl.cli.main` for fit/validate/test; returns the exit status."""
    if not argv:
        argv = ["--help"]
    try:
        QeRLCLI(args=list(argv))
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        print(exc.code, file=sys.stderr)  # sys.exit("message")
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a run started (while parsing or building): nothing to save
        if debug_mode():
            raise
        print(f"{_command(argv)}: interrupted (SIGINT) before the run started; nothing was saved.", file=sys.stderr)
        return 130
    except RegistryError as exc:  # a component package or plugin is broken: say which, no traceback
        if debug_mode():
            raise
        print(f"qerl: error: {exc}", file=sys.stderr)
        return 2
    return 0
