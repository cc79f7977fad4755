"""Third-party plugins: modules named in the `qerl.plugins` entry-point group."""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger("qerl.plugins")

ENTRY_POINT_GROUP = "qerl.plugins"
_current: list[str] = []
_state: dict[str, PluginReport] = {}
_scanned = False


@dataclass
class PluginReport:
    """What happened to one plugin entry point."""

    name: str
    distribution: str
    value: str
    loaded: bool
    error: str | None = None


def current_plugin() -> str | None:
    """The distribution whose plugin is being imported right now (None for built-ins)."""
    return _current[-1] if _current else None


@contextlib.contextmanager
def _loading(dist: str) -> Iterator[None]:
    _current.append(dist)
    try:
        yield
    finally:
        _current.pop()


def plugins_disabled() -> bool:
    """True when `QERL_DISABLE_PLUGINS` is set to 1/true/yes/on."""
    return os.environ.get("QERL_DISABLE_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def load_plugins(force: bool = False) -> list[PluginReport]:
    """Import every `qerl.plugins` entry point once; failures are reported, not raised.

    The entry points are scanned once per process; `force=True` scans again (a
    distribution installed meanwhile) and retries the ones that failed.
    `QERL_DISABLE_PLUGINS=1` skips them all. Returns one report per entry point.
    """
    global _scanned
    if plugins_disabled():
        return []
    if _scanned and not force:
        return list(_state.values())
    _scanned = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _state and (_state[key].loaded or not force):
            continue
        dist = ep.dist.name if ep.dist is not None and ep.dist.name else "<unknown distribution>"
        with _loading(dist):
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type):
                    obj()
                _state[key] = PluginReport(ep.name, dist, ep.value, True)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
                msg = f"{type(exc).__name__}: {exc}"
                _state[key] = PluginReport(ep.name, dist, ep.value, False, msg)
                log.warning(
                    "qerl plugin %r from distribution %r failed to load (%s); the other plugins still load. "
                    "Fix or uninstall it, or set QERL_DISABLE_PLUGINS=1 to skip all plugins.", ep.name, dist, msg
                )
    return list(_state.values())


def plugin_reports() -> list[PluginReport]:
    """Reports for the plugins seen so far."""
    return list(_state.values())
