"""Finding a reward function a recipe names: `package.module:function`, or `path/to/file.py:function`."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys


class RewardFunctionError(ValueError):
    """A reward function that cannot be imported or called as the recipe says; the message names it."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _from_file(path: str, spec: str):
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise RewardFunctionError(f"RewardFunction {spec!r}: file {path} not found (relative paths start at "
                                  f"{os.getcwd()}).")
    name = "qerl_reward_" + os.path.splitext(os.path.basename(full))[0]
    loader = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module  # so the functions in it pickle and find each other like any module's
    loader.loader.exec_module(module)
    return module


def _from_name(module_name: str, spec: str):
    top = module_name.split(".")[0]
    for _ in range(2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != top:  # the module was found but imports something missing: the generic message
                raise
        if os.getcwd() in sys.path:
            break
        sys.path.append(os.getcwd())  # `python -m` would search here; the `qerl` command does not
    raise RewardFunctionError(
        f"RewardFunction {spec!r}: no module {module_name!r} (searched sys.path and {os.getcwd()}). Install the "
        "package, add its folder to PYTHONPATH, or give the file: 'path/to/rewards.py:function'.")


def import_object(spec: str):
    """The object `spec` names: "package.module:name", "package.module.name" or "path/to/file.py:name".

    A module that is not importable is also looked for in the current directory, as `python -m` would.
    Raises `RewardFunctionError` naming the spec for a bad spec, a missing module or file, an error while
    importing, or a missing name.
    """
    spec = str(spec).strip()
    module_name, _, attr = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attr.isidentifier():
        raise RewardFunctionError(f"RewardFunction: function={spec!r} should be 'package.module:function' "
                                  "(or 'path/to/rewards.py:function').")
    try:
        module = _from_file(module_name, spec) if module_name.endswith(".py") else _from_name(module_name, spec)
    except RewardFunctionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the module itself fails to import: say which and why
        raise RewardFunctionError(f"RewardFunction {spec!r}: importing {module_name} failed ({_first_line(exc)}).") \
            from None
    if not hasattr(module, attr):
        names = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise RewardFunctionError(f"RewardFunction {spec!r}: {module_name} has no {attr!r} "
                                  f"(it has {', '.join(names) or 'no callables'}).")
    return getattr(module, attr)
