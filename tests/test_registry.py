"""Registry behaviour: names, aliases, duplicates, errors, plugin attribution, the declared registries."""
from __future__ import annotations

import pytest

from qerl.registry import QUANTIZERS, REGISTRIES, Registry, RegistryError, find_registry
from qerl.registry.plugins import _loading


class Widget:
    """Base class of the throwaway registries below (not a qerl base, so no recipe can see these)."""


def make_registry(**kwargs) -> Registry:
    return Registry("widgets", Widget, **kwargs)


def widget(name: str, module: str = "somewhere.widgets", doc: str | None = "A widget.") -> type:
    return type(name, (Widget,), {"__module__": module, "__doc__": doc})


def test_register_get_info_list():
    reg = make_registry()
    Blue = reg.register()(widget("Blue", doc="Blue widget.\n\nMore text."))
    Red = reg.register(aliases=("crimson", "scarlet"))(widget("Red"))
    assert reg.get("Blue") is Blue and reg.get("blue") is Blue and reg.get("BLUE") is Blue
    assert reg.get("crimson") is Red and reg.get("Scarlet") is Red
    assert reg.names() == ["Blue", "Red"] and list(reg) == ["Blue", "Red"] and len(reg) == 2
    assert "red" in reg and "crimson" in reg and "green" not in reg and 3 not in reg
    info = reg.info("blue")
    assert (info.name, info.cls, info.module, info.summary, info.plugin) == (
        "Blue", Blue, "somewhere.widgets", "Blue widget.", None)
    assert info.class_path == "somewhere.widgets.Blue"
    assert [e.name for e in reg.list()] == ["Blue", "Red"] and reg.info("Red").aliases == ("crimson", "scarlet")


def test_explicit_name_and_base_given_by_import_path():
    reg = Registry("rewards", "qerl.rewards.base:Reward")
    from qerl.rewards.base import Reward

    cls = type("Scored", (Reward,), {"__doc__": "Always one.", "__call__": lambda self, c, a, **m: [1.0] * len(c)})
    reg.register("always_one")(cls)
    assert reg.base is Reward and reg.get("ALWAYS_ONE") is cls and reg.names() == ["always_one"]


def test_registering_a_non_subclass_names_the_base():
    reg = make_registry()
    with pytest.raises(RegistryError, match=r"must subclass .*test_registry.Widget"):
        reg.register()(type("Loose", (), {}))
    with pytest.raises(TypeError, match=r"register\(\)"):
        reg.register(widget("Bare"))  # forgot the parentheses


def test_duplicate_name_names_both_modules():
    reg = make_registry()
    reg.register()(widget("Thing", module="pkg_one.things"))
    with pytest.raises(RegistryError) as err:
        reg.register()(widget("thing", module="pkg_two.stuff"))
    assert "pkg_one.things.Thing" in str(err.value) and "pkg_two.stuff.thing" in str(err.value)


def test_alias_clashing_with_a_name_or_alias_raises():
    reg = make_registry()
    reg.register(aliases=("fast",))(widget("Quick", module="mod_a"))
    with pytest.raises(RegistryError, match=r"'quick'.*mod_a\.Quick.*mod_b\.Slow"):
        reg.register(aliases=("quick",))(widget("Slow", module="mod_b"))
    with pytest.raises(RegistryError, match=r"'FAST'.*mod_a\.Quick"):
        reg.register(aliases=("FAST",))(widget("Rapid", module="mod_c"))
    assert reg.names() == ["Quick"]  # failed registrations leave nothing behind


def test_same_class_twice_is_fine_and_a_reimport_replaces():
    reg = make_registry()
    first = widget("Same", module="mod_reload")
    reg.register()(first)
    reg.register()(first)
    again = widget("Same", module="mod_reload")  # importlib.reload makes a new class object
    reg.register()(again)
    assert reg.get("same") is again and len(reg) == 1


def test_unknown_name_lists_known_and_suggests_close_matches():
    reg = make_registry()
    for name in ("NVFP4", "MXFP4", "NF4"):
        reg.register()(widget(name))
    reg.register(aliases=("qlora",))(widget("Paged"))
    with pytest.raises(RegistryError) as err:
        reg.get("nvfp5")
    message = str(err.value)
    assert message == "Unknown widget 'nvfp5'. Known widgets: MXFP4, NF4, NVFP4, Paged. Did you mean NVFP4 or NF4?"
    assert isinstance(err.value, KeyError) and not message.startswith("'")  # not KeyError's quoting
    with pytest.raises(RegistryError, match="Did you mean Paged"):
        reg.get("qlor")  # close to an alias: suggests the entry it belongs to
    with pytest.raises(RegistryError, match=r"Known widgets: MXFP4") as err:
        reg.info("zzzz")
    assert "Did you mean" not in str(err.value)


def test_messages_name_one_entry_in_the_singular():
    reg = Registry("noise_schedulers", Widget)
    assert (reg.singular, reg.plural) == ("noise scheduler", "noise schedulers")
    with pytest.raises(RegistryError, match=r"^Unknown noise scheduler 'x'\. Known noise schedulers: \(none\)\.$"):
        reg.get("x")
    assert Registry("data", Widget, singular="datum").singular == "datum"
    reg = make_registry()
    reg.register()(widget("Blue"))
    message = reg.unknown_message("blu", also=("jsonl",))
    assert message == "Unknown widget 'blu'. Known widgets: Blue, jsonl. Did you mean Blue?"


def test_empty_registry_error():
    with pytest.raises(RegistryError, match=r"Known widgets: \(none\)"):
        make_registry().get("anything")


def test_real_quantizers_suggest_nvfp4():
    with pytest.raises(RegistryError, match="Did you mean NVFP4"):
        QUANTIZERS.get("nvfp5")


def test_broken_builtin_package_is_named_and_retried():
    reg = make_registry(builtins=("qerl_no_such_package_xyz",))
    for _ in range(2):  # the second call tries again and says the same
        with pytest.raises(RegistryError, match=r"built-in widgets from 'qerl_no_such_package_xyz'.*ModuleNotFound"):
            reg.names()


def test_plugin_attribution_only_for_code_outside_qerl():
    reg = make_registry()
    with _loading("qerl-fancy-plugin"):
        reg.register()(widget("Fancy", module="qerl_fancy_plugin.fancy"))
        reg.register()(widget("Builtin", module="qerl.widgets.builtin"))  # a plugin importing qerl's own code
    assert reg.info("Fancy").plugin == "qerl-fancy-plugin"
    assert reg.info("Builtin").plugin is None


def test_summary_is_the_class_own_docstring():
    reg = make_registry()
    child = type("Child", (Widget,), {"__module__": "m"})  # no docstring: the base's must not show
    reg.register()(child)
    assert reg.info("Child").summary == ""


def test_declared_registries_and_lookup_by_kind():
    assert list(REGISTRIES) == [
        "quantizers", "noise_schedulers", "algorithms", "rollout_backends", "rewards", "datasets", "models",
    ]
    assert find_registry("quantizer") is QUANTIZERS and find_registry("Quantizers") is QUANTIZERS
    assert find_registry("noise-schedulers") is REGISTRIES["noise_schedulers"]
    assert find_registry("gizmos") is None
