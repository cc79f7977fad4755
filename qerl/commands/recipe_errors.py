"""Turn jsonargparse's parse errors into one line that names the recipe key and the valid choices."""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import typing

from qerl.registry.registry import close_matches

_UNKNOWN_KEY = (
    re.compile(r"does not accept option '([^']+)'"),
    re.compile(r"[Uu]nrecognized arguments:\s*(\S+)"),
)
_UNKNOWN_CLASS = (
    re.compile(r"Expected a dot import path string: (\S+)"),
    re.compile(r"Import path (\S+) (?:does not|not found)"),
    re.compile(r"Expected a path but (\S+) either not accessible"),
)
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_CLASS_PATH = re.compile(r"class_path '([^']+)'")
_KEY = re.compile(r'Parser key "([^"]+)"')
_UNIMPORTABLE = re.compile(r"Problem with given class_path '([^']+)':\s*\n\s*"
                           r"((?:No module named|module '[^']+' has no attribute|cannot import name)[^\n]*)")
_WRONG_TYPE = re.compile(r"Expected a <class '([\w.]+)'>\. Got value: (.*)")
_REQUIRED = re.compile(r"the following arguments are required: (.*)")
_SKIP_KEYS = {"help", "config", "print_config", "print_shtab"}


def explain_parse_error(message: str, parser: argparse.ArgumentParser, recipe_files: tuple[str, ...] = ()) -> str:
    """A short explanation of a jsonargparse error `message` raised while parsing with `parser`."""
    if "<unicode string>" in message:
        syntax = yaml_syntax_error(recipe_files)
        if syntax:
            return syntax
    for pattern in _UNKNOWN_KEY:
        match = pattern.search(message)
        if match:
            return unknown_key(match.group(1).lstrip("-").split("=")[0], parser)
    required = _REQUIRED.search(message)
    if required:
        keys = [re.sub(r"^(fit|validate|test|predict)\.", "", k.strip()) for k in required.group(1).split(",")]
        return f"missing required key(s): {', '.join(keys)}. Add them to the recipe or the command line."
    key_match = _KEY.search(message)
    if key_match:
        key = key_match.group(1)
        option, class_path = _NOT_ACCEPTED.search(message), _CLASS_PATH.search(message)
        if option and class_path:
            return unknown_init_arg(key, class_path.group(1), option.group(1))
        unimportable = _UNIMPORTABLE.search(message)
        if unimportable:
            return unimportable_class(key, *unimportable.groups())
        for pattern in _UNKNOWN_CLASS:
            match = pattern.search(message)
            if match:
                return unknown_class(key, match.group(1).strip("'\""), parser)
        nested = wrong_nested_type(message)
        if nested:
            return nested
    return _tidy(message)


_LINE = re.compile(r"^(\s*)(?:- )?(.*)$")
_TYPE_NAME = re.compile(r"<class '([\w.]+)'>")
_PROBLEM = re.compile(r"Problem with given class_path '([^']+)'")


def _type_names(text: str) -> str:
    names = [("null" if n == "NoneType" else n.rsplit(".", 1)[-1]) for n in _TYPE_NAME.findall(text)]
    return " or ".join(dict.fromkeys(names))


def wrong_nested_type(message: str) -> str | None:
    """One line for a value of the wrong type at any depth: `'model.lora.rank' must be int, got 'abc'.`

    jsonargparse reports it as an indented tree (`Parser key`, `Problem with given class_path`, the Union's
    subtypes and errors); the key path is the chain of parents above the deepest `Expected ... Got value` line,
    or, for a Union of plain types, above its `Given value`.
    """
    stack: list[tuple[int, str, str]] = []  # (indent, key part, class name)
    found = subtypes = None
    listed = ""
    for raw in message.splitlines():
        indent, text = _LINE.match(raw).groups()
        depth = len(indent)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        key, problem = _KEY.search(text), _PROBLEM.search(text)
        if key:
            stack.append((depth, key.group(1), ""))
        elif problem:
            typed = f"'{problem.group(1)}'" in listed  # the declared type itself (a dataclass): no init_args level
            stack.append((depth, "" if typed else "init_args", problem.group(1)))
        elif text.startswith("Subtypes:") and found is None:
            listed, subtypes = text, (list(stack), _type_names(text))
        elif text.startswith("Given value:") and found is None and subtypes is not None:
            found = (subtypes[0], subtypes[1], text.removeprefix("Given value:"))
        else:
            wrong = _WRONG_TYPE.search(text)
            if wrong and wrong.group(1) != "NoneType" and (found is None or len(stack) > len(found[0])):
                found = (list(stack), wrong.group(1).rsplit(".", 1)[-1], wrong.group(2))
    if found is None or not found[0]:
        return None
    path, types, value = found
    owner = next((cls.rsplit(".", 1)[-1] for _, _, cls in reversed(path) if cls), "")
    key = ".".join(part for _, part, _ in path if part)
    return f"'{key}'{f' ({owner})' if owner and '.init_args.' in key else ''} must be {types}, got {value.strip()!r}."



def union_build_error(message: str) -> str | None:
    """The component's own message out of jsonargparse's report of an optional component (`RolloutBackend | None`)
    whose __init__ rejected a value: the one `Errors:` entry that is not a type mismatch (`Expected a <class ...>`),
    or None when there is not exactly one."""
    if not message.startswith("Does not validate against any of the Union subtypes"):
        return None
    lines, inside, found = message.splitlines(), False, []
    for line in lines:
        if line.startswith("Errors:"):
            inside = True
        elif inside and line.startswith("  - "):
            found.append(line[4:].strip())
        elif inside and line.startswith("    ") and found:
            found[-1] += " " + line.strip()
        elif inside:
            break
    own = [text for text in found if not text.startswith("Expected a <class")]
    return own[0] if len(own) == 1 else None


def yaml_syntax_error(files: tuple[str, ...]) -> str | None:
    """`recipe.yaml:4:16: not valid YAML: ...` for the first of `files` that does not parse (None if all do)."""
    import yaml

    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            context = f" ({exc.context} at line {exc.context_mark.line + 1})" if exc.context and exc.context_mark else ""
            return f"{where}: not valid YAML: {exc.problem}{context}. Fix the recipe there."
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            return f"{path}: cannot read the recipe: {exc}"
    return None


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = close_matches(name, choices)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def child_keys(parser: argparse.ArgumentParser, parent: str) -> list[str]:
    """The keys directly under `parent` ("" for the top level) that `parser` accepts."""
    keys = set()
    prefix = f"{parent}." if parent else ""
    for action in parser._actions:
        dest = action.dest
        if dest == argparse.SUPPRESS or not dest.startswith(prefix):
            continue
        head = dest[len(prefix):].split(".")[0]
        if head and head not in _SKIP_KEYS:
            keys.add(head)
    return sorted(keys)


def unknown_key(key: str, parser: argparse.ArgumentParser) -> str:
    parent, _, leaf = key.rpartition(".")
    keys = child_keys(parser, parent)
    if parent and not keys:  # the parent itself is unknown: report the top-most unknown part
        return unknown_key(parent, parser)
    where = f"Keys under '{parent}'" if parent else "Top-level keys"
    return f"unknown key '{key}'. {where}: {', '.join(keys) or '(none)'}.{_did_you_mean(leaf, keys)}"


def init_parameters(cls: type) -> list[str]:
    """Names a recipe may give under `init_args` for `cls`: its `__init__` parameters, and through `**kwargs`
    those of the parent classes it hands them to (as jsonargparse resolves them)."""
    names: list[str] = []
    for owner in cls.__mro__:
        if "__init__" not in owner.__dict__ or owner is object:
            continue
        try:
            params = list(inspect.signature(owner.__init__).parameters.values())[1:]  # without self
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def unknown_init_arg(key: str, class_path: str, option: str) -> str:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return f"'{key}': {name} does not accept '{option}'."
    params = init_parameters(cls)
    return (
        f"unknown key '{option}' under '{key}' ({name} arguments: {', '.join(params) or '(none)'})."
        f"{_did_you_mean(option, params)}"
    )


def _classes_in(typehint) -> list[type]:
    if typehint is None:
        return []
    if inspect.isclass(typehint) and typehint.__module__ != "builtins":
        return [typehint]
    found = []
    for arg in typing.get_args(typehint):
        found += _classes_in(arg)
    return found


def class_choices(bases: list[type]) -> list[str]:
    """Short class names a recipe may use for an argument typed with `bases` (registry names when registered)."""
    from qerl.registry import REGISTRIES

    names: list[str] = []
    for base in bases:
        registry = next((r for r in REGISTRIES.values() if issubclass(r.base, base) or issubclass(base, r.base)), None)
        if registry is not None:
            names += [info.cls.__name__ for info in registry.list() if issubclass(info.cls, base)]
            continue
        try:
            from jsonargparse._typehints import get_all_subclass_paths

            names += [path.rsplit(".", 1)[-1] for path in get_all_subclass_paths(base)]
        except Exception:  # noqa: BLE001, S110 - a private jsonargparse helper: without it, no list
            pass
    return sorted(dict.fromkeys(names), key=str.lower)


def unknown_class(key: str, name: str, parser: argparse.ArgumentParser) -> str:
    action = next((a for a in parser._actions if a.dest == key), None)
    bases = _classes_in(getattr(action, "_typehint", None))
    choices = class_choices(bases)
    kind = " or ".join(dict.fromkeys(b.__name__ for b in bases)) or "class"
    listed = f" Choices ({kind}): {', '.join(choices)}." if choices else ""
    hint = " (`qerl list` shows every component.)" if any(b.__module__.startswith("qerl.") for b in bases) else ""
    return f"unknown class '{name}' for '{key}'.{listed}{_did_you_mean(name, choices)}{hint}"


def unimportable_class(key: str, class_path: str, reason: str) -> str:
    """A user's own component (`class_path: mypkg.rewards.MyReward`) whose module or class could not be imported."""
    return (f"'{key}': class_path '{class_path}' could not be imported ({reason.strip()}). Check the spelling, "
            "install the package that holds it or add its folder to PYTHONPATH; `qerl list` shows every component "
            "installed (plugins register theirs through the 'qerl.plugins' entry point).")


def _tidy(message: str) -> str:
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    return "\n  ".join(lines)
