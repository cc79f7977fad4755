"""`qerl list [KIND]`: every registry, one line per entry (name, aliases, summary, plugin)."""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qerl list",
        description="List the registered components (built-in and from plugins), one line each.",
    )
    parser.add_argument("kind", nargs="?", help="one registry, e.g. quantizers (default: all)")
    return parser


def format_registry(registry) -> list[str]:
    """The lines `qerl list` prints for one registry."""
    entries = registry.list()
    lines = [f"{registry.kind} ({len(entries)})"]
    labels = [e.name + (f" ({', '.join(e.aliases)})" if e.aliases else "") for e in entries]
    width = max((len(label) for label in labels), default=0)
    for label, entry in zip(labels, entries):
        plugin = f"  [plugin: {entry.plugin}]" if entry.plugin else ""
        lines.append(f"  {label:<{width}}  {entry.summary or '(no docstring)'}{plugin}".rstrip())
    if not entries:
        lines.append("  (none registered)")
    return lines


def main(argv: list[str] | None = None) -> int:
    from qerl.registry import REGISTRIES, RegistryError, find_registry, load_plugins
    from qerl.registry.plugins import plugins_disabled

    args = _parser().parse_args(argv)
    if args.kind is None:
        registries = list(REGISTRIES.values())
    else:
        found = find_registry(args.kind)
        if found is None:
            print(f"qerl list: unknown kind {args.kind!r}. Kinds: {', '.join(REGISTRIES)}.", file=sys.stderr)
            return 2
        registries = [found]

    reports = load_plugins()  # before listing, so plugin components are in the registries
    status = 0
    blocks = []
    for registry in registries:
        try:
            blocks.append("\n".join(format_registry(registry)))
        except RegistryError as exc:  # one broken component package must not hide the others
            blocks.append(f"{registry.kind}\n  ! {exc}")
            status = 1
    print("\n\n".join(blocks))

    broken = [r for r in reports if not r.loaded]
    if plugins_disabled():
        print("\nplugins: disabled (QERL_DISABLE_PLUGINS is set)")
    elif broken:
        print("\nplugins that failed to load (their components are missing above):")
        for report in broken:
            print(f"  {report.distribution} ({report.name} = {report.value}): {report.error}")
    return status


if __name__ == "__main__":
    sys.exit(main())
