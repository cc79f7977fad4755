"""Parametrization shared by the contract tests: one test case per registered entry.

A test in tests/contracts/ that asks for a fixture named `<kind>_entry` runs once per entry of
that registry (`quantizers_entry`, `noise_schedulers_entry`, `algorithms_entry`,
`rollout_backends_entry`, `rewards_entry`, `datasets_entry`, `models_entry`), receiving its
`qerl.registry.EntryInfo` (`.name`, `.cls`, `.module`, `.summary`, `.plugin`, `.aliases`).
`registry_entry` runs over every entry of every registry and receives `(registry, entry)`.
Plugins installed in the environment are loaded first, so their components are tested too.
A registry with no entries yet shows up as a skipped test, not a failure.

    def test_quantizes_a_tiny_layer(quantizers_entry):
        quantizer = quantizers_entry.cls()
        ...
"""
from __future__ import annotations

import pytest

from qerl.registry import REGISTRIES, load_plugins


def _entries(kind: str) -> list:
    registry = REGISTRIES[kind]
    return [pytest.param(info, id=info.name) for info in registry.list()]


def pytest_generate_tests(metafunc):
    load_plugins()
    for kind in REGISTRIES:
        fixture = f"{kind}_entry"
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, _entries(kind))
    if "registry_entry" in metafunc.fixturenames:
        metafunc.parametrize(
            "registry_entry",
            [pytest.param((registry, info), id=f"{kind}-{info.name}")
             for kind, registry in REGISTRIES.items() for info in registry.list()],
        )
