"""Every registry of swappable components, declared in one place.

Each names its base class by import path, so this package imports no component
package: all arrows point down into it.
"""
from qerl.registry.plugins import ENTRY_POINT_GROUP, PluginReport, load_plugins, plugin_reports
from qerl.registry.registry import EntryInfo, Registry, RegistryError

QUANTIZERS = Registry("quantizers", "qerl.quantizers.base:Quantizer", ("qerl.quantizers",))
NOISE_SCHEDULERS = Registry("noise_schedulers", "qerl.noise.base:NoiseSchedule", ("qerl.noise",))
ALGORITHMS = Registry("algorithms", "qerl.algorithms.base:Algorithm", ("qerl.algorithms",))
ROLLOUT_BACKENDS = Registry("rollout_backends", "qerl.rollout.base:RolloutBackend", ("qerl.rollout",))
REWARDS = Registry("rewards", "qerl.rewards.base:Reward", ("qerl.rewards",))
DATASETS = Registry("datasets", "qerl.data.base:PromptDataModule", ("qerl.data",))
MODELS = Registry("models", "qerl.models.base:PolicyLoader", ("qerl.models",))

REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (QUANTIZERS, NOISE_SCHEDULERS, ALGORITHMS, ROLLOUT_BACKENDS, REWARDS, DATASETS, MODELS)
}


def load_all() -> None:
    """Import every built-in component and every plugin (the CLI calls this before parsing).

    Raises one `RegistryError` naming every component package that failed to import.
    """
    problems = []
    for registry in REGISTRIES.values():
        try:
            registry.names()
        except RegistryError as exc:
            problems.append(str(exc))
    load_plugins()
    if problems:
        raise RegistryError("\n".join(problems))


def find_registry(kind: str) -> Registry | None:
    """The registry for `kind`, forgiving case, singular/plural and '-' for '_' ("quantizer", "noise-schedulers")."""
    want = kind.strip().lower().replace("-", "_")
    for name, registry in REGISTRIES.items():
        if want in (name, name.rstrip("s")):
            return registry
    return None


__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "ENTRY_POINT_GROUP",
    "MODELS",
    "NOISE_SCHEDULERS",
    "QUANTIZERS",
    "REGISTRIES",
    "REWARDS",
    "ROLLOUT_BACKENDS",
    "EntryInfo",
    "PluginReport",
    "Registry",
    "RegistryError",
    "find_registry",
    "load_all",
    "load_plugins",
    "plugin_reports",
]
