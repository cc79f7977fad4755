"""The generic `Registry`: plain, listable name -> class maps with helpful errors."""
from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator


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


def _resolve(path: str) -> type:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def first_doc_line(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """A case-insensitive name -> class map for one kind of component.

    Args:
        kind: plural name shown to users ("quantizers").
        base: import path of the base class every entry must subclass
            ("qerl.quantizers.base:Quantizer"); resolved lazily so the registry
            package imports no component package.
        builtins: modules whose import registers the built-in entries.
    """

    def __init__(self, kind: str, base: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.base_path = base
        self.builtins = builtins
        self._entries: dict[str, EntryInfo] = {}
        self._aliases: dict[str, str] = {}
        self._builtins_loaded = False

    # ------------------------------------------------------------------ register
    @property
    def base(self) -> type:
        return _resolve(self.base_path)

    def register(self, name: str | None = None, aliases: tuple[str, ...] | list[str] = ()) -> Callable[[type], type]:
        """Class decorator: `@QUANTIZERS.register()` or `@QUANTIZERS.register("nf4", aliases=("qlora",))`."""

        def wrap(cls: type) -> type:
            self.add(cls, name=name, aliases=tuple(aliases))
            return cls

        return wrap

    def add(self, cls: type, name: str | None = None, aliases: tuple[str, ...] = ()) -> None:
        from qerl.registry.plugins import current_plugin

        base = self.base
        if not (inspect.isclass(cls) and issubclass(cls, base)):
            raise RegistryError(
                f"Cannot register {cls!r} in {self.kind}: it must subclass "
                f"{base.__module__}.{base.__qualname__}."
            )
        key = (name or cls.__name__)
        info = EntryInfo(key, cls, cls.__module__, first_doc_line(cls), current_plugin(), tuple(aliases))
        for label in (key, *aliases):
            low = label.lower()
            owner = self._entries.get(low) or self._entries.get(self._aliases.get(low, ""))
            if owner is not None:
                if owner.cls is cls:
                    continue
                raise RegistryError(
                    f"Duplicate {self.kind} name {label!r}: already registered by "
                    f"{owner.module}.{owner.cls.__qualname__}, now again by "
                    f"{cls.__module__}.{cls.__qualname__}. Pick another name."
                )
        self._entries[key.lower()] = info
        for alias in aliases:
            self._aliases[alias.lower()] = key.lower()

    # ------------------------------------------------------------------- lookup
    def _load(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self.builtins:
                importlib.import_module(module)
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
        key = self._key(name)
        if key is None:
            known = self.names()
            close = difflib.get_close_matches(name.lower(), [n.lower() for n in known] + list(self._aliases), n=3, cutoff=0.5)
            hint = ""
            if close:
                pretty = [self._entries[self._aliases.get(c, c)].name for c in close]
                hint = f" Did you mean {', '.join(dict.fromkeys(pretty))}?"
            raise RegistryError(
                f"Unknown {self.kind} name {name!r}.{hint} Known {self.kind}: {', '.join(known) or '(none)'}."
            )
        return self._entries[key].cls

    def info(self, name: str) -> EntryInfo:
        """Class, module, one-line summary and source plugin of an entry."""
        self.get(name)
        return self._entries[self._key(name)]  # type: ignore[index]

    def names(self) -> list[str]:
        self._load()
        return sorted(e.name for e in self._entries.values())

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

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugin reloads)."""
        key = self._key(name)
        if key is None:
            raise RegistryError(f"Unknown {self.kind} name {name!r}.")
        self._entries.pop(key)
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
