"""The generic `Registry`: plain, listable name -> class maps with helpful errors."""
from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class RegistryError(KeyError):
    """A name could not be registered or found; the message says what to do."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class EntryInfo:
    """What `qerl list` and the docs show for one registered class."""

    name: str
    cls: type
    module: str
    summary: str
    plugin: str | None
    aliases: tuple[str, ...] = ()

    @property
    def class_path(self) -> str:
        """Full import path, as a recipe's `class_path` may spell it."""
        return f"{self.module}.{self.cls.__qualname__}"


def _resolve(path: str) -> type:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def first_doc_line(cls: type) -> str:
    """The first line of the class's own docstring ("" when it has none; a parent's does not count)."""
    doc = inspect.cleandoc(vars(cls).get("__doc__") or "")
    if doc.startswith(f"{cls.__name__}(") and doc.endswith(")"):
        return ""  # the signature @dataclass writes when the class has no docstring
    return doc.splitlines()[0].strip() if doc else ""


def is_builtin_module(module: str) -> bool:
    """True for modules shipped inside the `qerl` package itself."""
    return module == "qerl" or module.startswith("qerl.")


def close_matches(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Up to `n` of `choices` that look like `name` (case-insensitive), best first."""
    by_lower = {c.lower(): c for c in choices}
    return [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)]


class Registry:
    """A case-insensitive name -> class map for one kind of component.

    Args:
        kind: plural key of the registry ("quantizers", "noise_schedulers"), as `qerl list` takes it.
        base: the base class every entry must subclass, or its import path
            ("qerl.quantizers.base:Quantizer"), resolved lazily so the registry
            package imports no component package.
        builtins: modules whose import registers the built-in entries.
        singular: what one entry is called in messages ("quantizer", "noise scheduler"); default:
            `kind` without its final "s", underscores as spaces.
    """

    def __init__(self, kind: str, base: str | type, builtins: tuple[str, ...] = (), singular: str | None = None) -> None:
        self.kind = kind
        #: one entry and several, as messages say them: "Unknown noise scheduler 'x'. Known noise schedulers: ..."
        self.singular = singular or kind.removesuffix("s").replace("_", " ")
        self.plural = kind.replace("_", " ")
        self.base_path = base if isinstance(base, str) else f"{base.__module__}:{base.__qualname__}"
        self._base = None if isinstance(base, str) else base
        self.builtins = tuple(builtins)
        self._entries: dict[str, EntryInfo] = {}
        self._aliases: dict[str, str] = {}
        self._builtins_loaded = False

    # ------------------------------------------------------------------ register
    @property
    def base(self) -> type:
        if self._base is None:
            self._base = _resolve(self.base_path)
        return self._base

    def register(self, name: str | None = None, aliases: tuple[str, ...] | list[str] = ()) -> Callable[[type], type]:
        """Class decorator: `@QUANTIZERS.register()` or `@QUANTIZERS.register("nf4", aliases=("qlora",))`."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{self.kind}.register() takes a name string; write `@register()` (with parentheses).")

        def wrap(cls: type) -> type:
            self.add(cls, name=name, aliases=tuple(aliases))
            return cls

        return wrap

    def add(self, cls: type, name: str | None = None, aliases: tuple[str, ...] = ()) -> None:
        """Register `cls` under `name` (default: its class name) and `aliases`."""
        from qerl.registry.plugins import current_plugin

        base = self.base
        if not (inspect.isclass(cls) and issubclass(cls, base)):
            raise RegistryError(
                f"Cannot register {cls!r} in the {self.plural} registry: it must subclass "
                f"{base.__module__}.{base.__qualname__}."
            )
        key = name or cls.__name__
        # a plugin that imports qerl's own component packages must not be credited with their classes
        plugin = None if is_builtin_module(cls.__module__) else current_plugin()
        info = EntryInfo(key, cls, cls.__module__, first_doc_line(cls), plugin, tuple(aliases))
        replaces: str | None = None
        for label in (key, *aliases):
            low = label.lower()
            owner = self._entries.get(low) or self._entries.get(self._aliases.get(low, ""))
            if owner is None or owner.cls is cls:
                continue
            if owner.module == cls.__module__ and owner.cls.__qualname__ == cls.__qualname__:
                replaces = owner.name.lower()  # the same module imported again (reload): keep the newest class
                continue
            raise RegistryError(
                f"Duplicate {self.singular} name {label!r}: already registered by "
                f"{owner.module}.{owner.cls.__qualname__}{_from(owner.plugin)}, now again by "
                f"{cls.__module__}.{cls.__qualname__}{_from(plugin)}. Pick another name."
            )
        if replaces is not None:
            self._drop(replaces)
        self._entries[key.lower()] = info
        for alias in aliases:
            self._aliases[alias.lower()] = key.lower()

    # ------------------------------------------------------------------- lookup
    def _load(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        for module in self.builtins:
            try:
                importlib.import_module(module)
            except Exception as exc:
                self._builtins_loaded = False  # try again next time, and say why now
                raise RegistryError(
                    f"Could not load the built-in {self.plural} from {module!r}: {type(exc).__name__}: {exc}"
                ) from exc
        from qerl.registry.plugins import load_plugins

        load_plugins()

    def _key(self, name: str) -> str | None:
        self._load()
        low = name.lower()
        if low in self._entries:
            return low
        return self._aliases.get(low)

    def get(self, name: str) -> type:
        """The class registered under `name` (case-insensitive, aliases too)."""
        return self.info(name).cls

    def info(self, name: str) -> EntryInfo:
        """Class, module, one-line summary and source plugin (distribution name) of an entry."""
        key = self._key(name) if isinstance(name, str) else None
        if key is None:
            raise RegistryError(self.unknown_message(name))
        return self._entries[key]

    def unknown_message(self, name: object, also: tuple[str, ...] | list[str] = ()) -> str:
        """ "Unknown quantizer 'nvfp5'. Known quantizers: MXFP4, NF4, NVFP4. Did you mean NVFP4?"

        `also`: further names the caller accepts besides the registered ones (a command's own aliases);
        they are listed and suggested too.
        """
        known = sorted([*self.names(), *also], key=str.lower)
        hint = ""
        if isinstance(name, str):
            shown = {e.name: e.name for e in self._entries.values()}
            shown.update({alias: self._entries[key].name for alias, key in self._aliases.items()})
            shown.update({extra: extra for extra in also})
            close = list(dict.fromkeys(shown[m] for m in close_matches(name, list(shown))))
            if close:
                hint = f" Did you mean {' or '.join(close)}?"
        msg = f"Unknown {self.singular} {name!r}. Known {self.plural}: {', '.join(known) or '(none)'}.{hint}"
        from qerl.registry.plugins import plugin_reports

        broken = [r.distribution for r in plugin_reports() if not r.loaded]
        if broken:
            msg += f" (Plugins that failed to load: {', '.join(broken)}; see `qerl list`.)"
        return msg

    def names(self) -> list[str]:
        """Registered names, sorted case-insensitively."""
        self._load()
        return sorted((e.name for e in self._entries.values()), key=str.lower)

    def list(self) -> list[EntryInfo]:
        """Every entry, sorted by name."""
        self._load()
        return sorted(self._entries.values(), key=lambda e: e.name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def _drop(self, key: str) -> None:
        self._entries.pop(key)
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugin reloads)."""
        key = self._key(name)
        if key is None:
            raise RegistryError(self.unknown_message(name))
        self._drop(key)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _from(plugin: str | None) -> str:
    return f" (plugin {plugin})" if plugin else ""
