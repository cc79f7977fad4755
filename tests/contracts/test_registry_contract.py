"""What every registered component promises, whatever its kind and wherever it comes from.

Generated from the registries: a new entry (built-in or plugin) is tested the day it is registered.
"""
from __future__ import annotations

import importlib
import inspect

import pytest

from qerl.registry import REGISTRIES
from qerl.registry.registry import is_builtin_module


def test_every_registry_is_declared():
    assert set(REGISTRIES) >= {
        "quantizers", "noise_schedulers", "algorithms", "rollout_backends", "rewards", "datasets", "models",
    }


def test_subclasses_the_registry_base_and_is_concrete(registry_entry):
    registry, entry = registry_entry
    assert issubclass(entry.cls, registry.base)
    abstract = sorted(getattr(entry.cls, "__abstractmethods__", ()))
    assert not abstract, f"{entry.name} is registered but abstract: implement {', '.join(abstract)}"


def test_has_its_own_one_line_docstring(registry_entry):
    _, entry = registry_entry
    assert entry.summary, (
        f"{entry.class_path} needs a docstring of its own: its first line is its line in `qerl list` and the docs"
    )
    assert len(entry.summary) <= 160, f"{entry.name}: keep the first docstring line short ({len(entry.summary)} chars)"


def test_resolves_by_name_any_case_and_alias(registry_entry):
    registry, entry = registry_entry
    for label in (entry.name, entry.name.lower(), entry.name.upper(), *entry.aliases):
        assert registry.get(label) is entry.cls, f"{registry.kind}.get({label!r})"
        assert label in registry
    assert registry.info(entry.name) == entry


def test_registered_under_its_class_name(registry_entry):
    """The name `qerl list` shows is the one a recipe types (`class_path: NVFP4`)."""
    _, entry = registry_entry
    assert entry.name == entry.cls.__name__, (
        f"{entry.class_path} is registered as {entry.name!r}; register it under its class name "
        f"(a recipe names classes, not registry keys) and keep {entry.name!r} as an alias"
    )


def test_class_path_imports_the_same_class(registry_entry):
    _, entry = registry_entry
    module = importlib.import_module(entry.module)
    assert getattr(module, entry.cls.__qualname__, None) is entry.cls, (
        f"{entry.class_path} cannot be imported back (define registered classes at module level)"
    )


def test_recipes_can_name_it_by_its_short_name(registry_entry):
    """jsonargparse (LightningCLI) resolves `class_path: <ClassName>` among the imported subclasses of the base."""
    typehints = pytest.importorskip("jsonargparse._typehints")
    registry, entry = registry_entry
    resolve = getattr(typehints, "resolve_class_path_by_name", None)
    if resolve is None:
        pytest.skip("this jsonargparse has no resolve_class_path_by_name")
    path = resolve(registry.base, entry.cls.__name__)  # raises when two subclasses share the short name
    module, _, name = path.rpartition(".")
    assert getattr(importlib.import_module(module), name) is entry.cls, f"{entry.cls.__name__!r} resolves to {path}"


def test_plugin_attribution(registry_entry):
    _, entry = registry_entry
    if is_builtin_module(entry.module):
        assert entry.plugin is None, f"built-in {entry.name} is credited to plugin {entry.plugin}"
    else:
        assert entry.plugin, f"{entry.class_path} lives outside qerl but no plugin distribution is recorded"


def test_init_signature_is_introspectable(registry_entry):
    """LightningCLI builds the recipe schema from `__init__`; it must have a signature (no C-only inits)."""
    _, entry = registry_entry
    inspect.signature(entry.cls.__init__)
