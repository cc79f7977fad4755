"""`qerl demo` (placeholder until the RL-core quickstart lands): list the registries and parse every recipe.

The RL-core issue replaces this file with the real quickstart run.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from qerl.commands.list_components import main as list_components

    status = list_components([])
    recipes = sorted(Path("recipes").rglob("*.yaml")) + sorted(Path("recipes").rglob("*.yml"))
    print(f"\nrecipes ({len(recipes)} under {Path('recipes').resolve()})")
    if not recipes:
        return status
    try:
        import qerl.module  # noqa: F401  (recipes configure QeRLModule)
    except ModuleNotFoundError as exc:
        if exc.name != "qerl.module":
            raise
        print("  (not parsed: qerl.module.QeRLModule is not in this build yet)")
        return status
    from qerl.lightning_cli import parse_recipe

    for path in recipes:
        try:
            parse_recipe(path)
        except SystemExit:  # parse_recipe printed the reason
            print(f"  FAIL  {path}")
            status = 1
            continue
        print(f"  ok    {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
