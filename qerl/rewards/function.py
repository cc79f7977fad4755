"""Plain Python reward functions, called TRL's way: `fn(completions=..., prompts=..., <dataset columns>=..., step=...)`."""
from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qerl.registry import REWARDS
from qerl.rewards.base import Reward
from qerl.rewards.function_import import RewardFunctionError, import_object

log = logging.getLogger(__name__)

#: the keyword arguments qerl itself passes; a dataset column of the same name is shadowed by them
QERL_ARGUMENTS = ("completions", "prompts", "completion_ids", "answers", "step", "lengths", "truncated",
                  "max_new_tokens")
_PROMPT_KEY = "prompt"  # meta key of a chat-message prompt (HFPrompts)


def await_result(awaitable) -> Any:
    """The value of a coroutine (or other awaitable), run on a fresh event loop (in a thread if one is running)."""
    async def wait():
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


@REWARDS.register()
class RewardFunction(Reward):
    """A plain function as a reward, called TRL's way: completions, prompts, every dataset column and the step.

    The function returns one float per completion (None counts 0: "does not apply"). A call that raises is
    retried row by row, so only the rows that fail score 0; a wrong-length return scores the whole batch 0, and a
    NaN, infinite or non-number value scores its row 0. Each of these logs one line naming the function and the
    row; the step's other rewards count as usual.

    Args:
        function: "package.module:function" or "path/to/rewards.py:function"; async functions are awaited; a
            class there is built with `arguments` and its instances are called.
        weight: multiplier applied when rewards are summed.
        name: log name (`reward/<name>`); default the function's (or class's) name.
        arguments: keyword arguments for a class named by `function`.
        completions_as: "auto" (chat messages, `[{"role": "assistant", "content": ...}]`, when the prompt was a
            chat, else text), "text" or "messages"; prompts follow the same choice.
    """

    def __init__(self, function: str, weight: float = 1.0, name: str | None = None,
                 arguments: dict[str, Any] | None = None, completions_as: str = "auto") -> None:
        super().__init__(weight)
        if completions_as not in ("auto", "text", "messages"):
            raise RewardFunctionError(f"RewardFunction {function!r}: completions_as must be 'auto', 'text' or "
                                      f"'messages', got {completions_as!r}.")
        target = import_object(function)
        if inspect.isclass(target):
            if issubclass(target, Reward):
                raise RewardFunctionError(f"RewardFunction {function!r} is a qerl Reward: list it in `rewards` "
                                          f"directly ({{class_path: {function.replace(':', '.')}}}).")
            try:
                target = target(**(arguments or {}))
            except Exception as exc:  # noqa: BLE001 - the user's class rejects its arguments
                raise RewardFunctionError(f"RewardFunction {function!r}: building it with arguments "
                                          f"{arguments or {}} failed ({type(exc).__name__}: {exc}).") from None
        elif arguments:
            raise RewardFunctionError(f"RewardFunction {function!r}: `arguments` are for a class; a function gets "
                                      "its inputs from the batch.")
        if not callable(target):
            raise RewardFunctionError(f"RewardFunction {function!r} is a {type(target).__name__}, not callable.")
        self.function, self.spec, self.completions_as = target, str(function), completions_as
        self._name = name or getattr(target, "__name__", None) or type(target).__name__
        self._signature = self._signature_of(target)
        self.bad_rows = 0  #: rows scored 0 because the function failed on them (a running count)

    @property
    def name(self) -> str:
        return self._name

    @staticmethod
    def _signature_of(target) -> inspect.Signature | None:
        try:
            return inspect.signature(target)
        except (TypeError, ValueError):  # some builtins have none: pass everything
            return None

    # ----------------------------------------------------------------- arguments
    def arguments_for(self, completions: list[str], answers: list[str], meta: dict) -> dict[str, Any]:
        """The keyword arguments of one call: every dataset column (from each row's meta), then qerl's own."""
        rows = len(completions)
        metas = list(meta.get("meta") or [{}] * rows)
        chat = self.completions_as == "messages" or (
            self.completions_as == "auto" and rows > 0 and all(isinstance(m.get(_PROMPT_KEY), list) for m in metas))
        columns = list(dict.fromkeys(k for m in metas for k in m if k != _PROMPT_KEY))
        kwargs: dict[str, Any] = {c: [m.get(c) for m in metas] for c in columns}
        prompts = list(meta.get("prompts") or [""] * rows)
        if chat:
            prompts = [m.get(_PROMPT_KEY) or [{"role": "user", "content": p}] for m, p in zip(metas, prompts)]
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        kwargs.update(completions=list(completions), prompts=prompts, answers=list(answers), step=meta.get("step"))
        kwargs.update({k: meta[k] for k in ("completion_ids", "lengths", "truncated", "max_new_tokens") if k in meta})
        return self._accepted(kwargs, columns)

    def _accepted(self, kwargs: dict[str, Any], columns: list[str]) -> dict[str, Any]:
        """The arguments the function takes (all of them when it has `**kwargs`); a missing required one raises."""
        sig = self._signature
        if sig is None:
            return kwargs
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in sig.parameters}
        try:
            sig.bind(**kwargs)
        except TypeError as exc:
            raise RewardFunctionError(
                f"RewardFunction {self.name} ({self.spec}) cannot be called: {exc}. It gets qerl's "
                f"{', '.join(QERL_ARGUMENTS)} and the dataset columns {', '.join(columns) or '(none)'}; add the "
                "column to the dataset (HFPrompts extra_columns, JsonlPrompts meta_fields).") from None
        return kwargs

    # ---------------------------------------------------------------------- call
    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        kwargs = self.arguments_for(completions, answers, meta)
        rows = len(completions)
        sources = [m.get("source") for m in (meta.get("meta") or [{}] * rows)]
        problems: list[tuple[int, str]] = []
        try:
            result = self._invoke(kwargs)
        except Exception as exc:  # noqa: BLE001 - user code on model text; find the failing rows one by one
            scores = [self._one_row(kwargs, row, rows, problems) for row in range(rows)]
            if not problems:  # every row alone was fine: keep those scores, say so once
                log.warning("reward %s (%s)%s: raised %s: %s on the batch of %d but on no row alone; scored row by "
                            "row.", self.name, self.spec, _at(meta.get("step")), type(exc).__name__, exc, rows)
        else:
            scores = self._check(result, rows, problems)
        if problems:
            self.bad_rows += rows if problems[0][0] == -1 else len(problems)
            log.warning(self._problem_line(problems, sources, meta.get("step")))
        return scores

    def _invoke(self, kwargs: dict[str, Any]) -> Any:
        result = self.function(**kwargs)
        return await_result(result) if inspect.isawaitable(result) else result

    def _one_row(self, kwargs: dict[str, Any], row: int, rows: int, problems: list) -> float:
        alone = {k: [v[row]] if isinstance(v, list) and len(v) == rows else v for k, v in kwargs.items()}
        try:
            result = self._invoke(alone)
        except Exception as exc:  # noqa: BLE001 - this row's failure scores it 0
            problems.append((row, f"raised {type(exc).__name__}: {exc}"))
            return 0.0
        found: list = []
        score = self._check(result, 1, found)[0]
        problems.extend((row, text) for _, text in found)
        return score

    def _check(self, result: Any, rows: int, problems: list) -> list[float]:
        """The scores as floats; problems get (row, what was wrong) - row -1 for the whole batch."""
        if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
            result = result.tolist()  # numpy arrays, torch tensors
        if not isinstance(result, (list, tuple)) or len(result) != rows:
            size = len(result) if isinstance(result, (list, tuple)) else type(result).__name__
            problems.append((-1, f"returned {size} scores for {rows} completions"))
            return [0.0] * rows
        scores = []
        for row, value in enumerate(result):
            if value is None:
                scores.append(0.0)
            elif isinstance(value, numbers.Real) and math.isfinite(float(value)):
                scores.append(float(value))
            else:
                problems.append((row, f"returned {value!r:.60} (not a finite number)"))
                scores.append(0.0)
        return scores

    def _problem_line(self, problems: list[tuple[int, str]], sources: list, step) -> str:
        row, text = problems[0]
        where = "the batch" if row == -1 else f"row {row}" + (f" ({sources[row]})" if sources[row] else "")
        more = f"; {len(problems) - 1} more rows failed" if len(problems) > 1 else ""
        scored = "all rows scored 0" if row == -1 else "scored 0"
        return f"reward {self.name} ({self.spec}){_at(step)}: {where} {text}; {scored}{more}."


def _at(step) -> str:
    return "" if step is None else f" at step {step}"
