"""Contract for every entry of MODELS: a plain-argument PolicyLoader that YAML can build and pickle can carry."""
from __future__ import annotations

import inspect
import pickle

import pytest

from qerl.models.base import PolicyLoader
from qerl.registry import MODELS

# arguments for entries whose __init__ has required parameters
EXAMPLE_ARGS = {"HFModel": {"path": "some/folder"}}


def build(name: str) -> PolicyLoader:
    return MODELS.get(name)(**EXAMPLE_ARGS.get(name, {}))


@pytest.mark.parametrize("name", MODELS.names())
def test_entry_is_a_documented_plain_argument_loader(name):
    cls = MODELS.get(name)
    assert issubclass(cls, PolicyLoader) and MODELS.info(name).summary
    for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        assert param.annotation is not inspect.Parameter.empty, f"{name}.__init__({param.name}) needs a type"
    load = inspect.signature(cls.load).parameters
    assert {"quantizer", "dtype", "device"} <= set(load)
    required = {n for n, p in inspect.signature(cls.__init__).parameters.items()
                if n != "self" and p.default is inspect.Parameter.empty}
    assert required <= set(EXAMPLE_ARGS.get(name, {})), f"add example args for {name} to EXAMPLE_ARGS"


@pytest.mark.parametrize("name", MODELS.names())
def test_entry_pickles_and_reprs(name):
    loader = build(name)
    clone = pickle.loads(pickle.dumps(loader))
    assert type(clone) is type(loader) and repr(clone) == repr(loader) and name in repr(loader)


def test_yaml_builds_loaders_by_short_class_name():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--policy", type=PolicyLoader)
    cfg = parser.parse_string("policy:\n  class_path: RandomInit\n  init_args:\n    config: qwen2.5-7b\n    seed: 3\n")
    loader = parser.instantiate_classes(cfg).policy
    assert type(loader).__name__ == "RandomInit" and (loader.config, loader.seed) == ("qwen2.5-7b", 3)
    cfg = parser.parse_string("policy:\n  class_path: GGUFModel\n")
    assert type(parser.instantiate_classes(cfg).policy).__name__ == "GGUFModel"
