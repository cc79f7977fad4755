"""Plugin loading through real entry points: a temporary dist-info folder on sys.path, one good and one broken plugin."""
from __future__ import annotations

import importlib.metadata
import logging
import sys
import textwrap

import pytest

from qerl.registry import REWARDS, plugins

GOOD_MODULE = """
from qerl.registry import REWARDS
from qerl.rewards.base import Reward

CALLS = []


@REWARDS.register(aliases=("plugged",))
class PluginLengthReward(Reward):
    '''Scores 1 for a non-empty completion (registered by a test plugin).'''

    def __call__(self, completions, answers, **meta):
        return [float(bool(c)) for c in completions]


def setup():
    CALLS.append(1)
"""

BROKEN_MODULE = "raise RuntimeError('boom: this plugin needs a CUDA toolkit')\n"


def write_dist(root, dist: str, module: str, source: str, entry_points: str) -> None:
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    (root / f"{module}.py").write_text(source)


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Installs two plugin distributions for one test: qerl-good-plugin and qerl-broken-plugin."""
    REWARDS.names()  # built-ins first, with the real plugin state
    write_dist(tmp_path, "qerl-good-plugin", "qerl_good_plugin_mod", GOOD_MODULE, """
        [qerl.plugins]
        good = qerl_good_plugin_mod
        good_setup = qerl_good_plugin_mod:setup
    """)
    write_dist(tmp_path, "qerl-broken-plugin", "qerl_broken_plugin_mod", BROKEN_MODULE, """
        [qerl.plugins]
        broken = qerl_broken_plugin_mod
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_state", {})
    monkeypatch.setattr(plugins, "_scanned", False)
    monkeypatch.delenv("QERL_DISABLE_PLUGINS", raising=False)
    yield tmp_path
    if "PluginLengthReward" in REWARDS:
        REWARDS.unregister("PluginLengthReward")
    for name in ("qerl_good_plugin_mod", "qerl_broken_plugin_mod"):
        sys.modules.pop(name, None)


def test_entry_points_are_visible(fake_plugins):
    names = {ep.name for ep in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)}
    assert {"good", "good_setup", "broken"} <= names


def test_good_plugin_loads_and_broken_one_is_reported(fake_plugins, caplog):
    with caplog.at_level(logging.WARNING, logger="qerl.plugins"):
        reports = {r.name: r for r in plugins.load_plugins()}
    good, broken = reports["good"], reports["broken"]
    assert (good.distribution, good.loaded, good.error) == ("qerl-good-plugin", True, None)
    assert (broken.distribution, broken.loaded) == ("qerl-broken-plugin", False)
    assert broken.error == "RuntimeError: boom: this plugin needs a CUDA toolkit"
    assert reports["good_setup"].loaded
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "qerl-broken-plugin" in warning and "boom" in warning and "QERL_DISABLE_PLUGINS" in warning
    info = REWARDS.info("plugged")
    assert (info.name, info.plugin, info.module) == ("PluginLengthReward", "qerl-good-plugin", "qerl_good_plugin_mod")
    assert info.summary == "Scores 1 for a non-empty completion (registered by a test plugin)."
    assert REWARDS.get("PluginLengthReward")()(["x", ""], ["", ""]) == [1.0, 0.0]


def test_each_entry_point_runs_once(fake_plugins):
    plugins.load_plugins()
    plugins.load_plugins()
    plugins.load_plugins(force=True)  # rescans and retries the broken one, but never re-runs a loaded one
    assert sys.modules["qerl_good_plugin_mod"].CALLS == [1]
    assert sum(1 for r in plugins.plugin_reports() if not r.loaded) == 1


def test_unknown_name_mentions_broken_plugins(fake_plugins):
    plugins.load_plugins()
    with pytest.raises(KeyError, match=r"failed to load: qerl-broken-plugin"):
        REWARDS.get("SomethingFromTheBrokenPlugin")


def test_disable_switch_skips_every_plugin(fake_plugins, monkeypatch):
    monkeypatch.setenv("QERL_DISABLE_PLUGINS", "1")
    assert plugins.load_plugins() == []
    assert "qerl_good_plugin_mod" not in sys.modules and "PluginLengthReward" not in REWARDS


def test_qerl_list_shows_plugin_component_and_failure(fake_plugins, capsys):
    from qerl.commands.list_components import main

    assert main(["rewards"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "PluginLengthReward" in line)
    assert "(plugged)" in line and "Scores 1 for a non-empty completion" in line
    assert line.endswith("[plugin: qerl-good-plugin]")
    assert "qerl-broken-plugin (broken = qerl_broken_plugin_mod): RuntimeError: boom" in out


def test_installed_example_plugin_registers_a_quantizer():
    """`make install` installs plugins/qerl-example-plugin; its component must show up credited to it."""
    eps = [ep for ep in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)
           if ep.dist is not None and ep.dist.name == "qerl-example-plugin"]
    if not eps:
        pytest.skip("qerl-example-plugin is not installed (run `make install`)")
    from qerl.registry import REGISTRIES

    credited = [(kind, e.name) for kind, reg in REGISTRIES.items() for e in reg.list() if e.plugin == "qerl-example-plugin"]
    assert credited, "the example plugin loaded but registered nothing"
