"""The shape of the house: few loose modules in `qerl/`, no import cycle between files, and every import running
down the layering that docs/contributing.md's table writes down (lazy imports counted everywhere)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qerl"
CONTRIBUTING = PACKAGE.parent / "docs" / "contributing.md"
MAX_TOP_LEVEL_MODULES = 6


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """File-level graph of qerl's own imports, those inside functions and `TYPE_CHECKING` blocks included.

    `from qerl.x import y` points at `qerl.x.y` when that is a module, else at `qerl.x`; a package's
    `__init__` is not counted as imported by its submodules (Python runs it, but no code of it is needed).
    """
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target.startswith("qerl") and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room(module: str) -> str:
    """The room (row of the layering table) a module lives in: its package or loose module under `qerl/`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layering(text: str | None = None) -> dict[str, set[str]]:
    """{room: rooms it may import} from the table under "## The packages" in docs/contributing.md, the one place
    the layering is written down. Rows run bottom floor first; a row names only rooms of rows above it ("nothing",
    or "every row above"). Rooms sharing a row (the command line) may import each other."""
    text = CONTRIBUTING.read_text(encoding="utf-8") if text is None else text
    section = text.split("## The packages", 1)[1].split("\n## ", 1)[0]
    allowed: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = {n.rstrip("/").removesuffix(".py") for n in re.findall(r"`([^`]+)`", cells[0])}
        named = {n.rstrip("/") for n in re.findall(r"`([^`]+)`", cells[2])}
        row = min(names)
        assert named or cells[2] in ("nothing", "every row above"), \
            f"docs/contributing.md, row {row}: name the rooms it may import, `nothing` or `every row above`"
        unknown = sorted(named - set(allowed))
        assert not unknown, f"docs/contributing.md, row {row}: {unknown} are not rows above it (rows run bottom up)"
        targets = set(allowed) if cells[2] == "every row above" else named
        allowed.update({n: targets | names for n in names})
    return allowed


def upward_imports(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    """Every import from one room into another that the room's row does not name."""
    found = []
    for name in sorted(graph):
        for target in sorted(graph[name]):
            here, there = room(name), room(target)
            if here != there and there not in allowed.get(here, ()):
                may = sorted(allowed.get(here, set()) - {here}) or "nothing"
                found.append(f"{name} imports {target} ({here} may import: {may})")
    return found


def test_every_room_has_a_row_in_the_layering():
    rooms = {room(name) for name in import_graph()}
    table = layering()
    assert sorted(rooms - set(table)) == [], "rooms of qerl/ without a row in docs/contributing.md's table"
    assert sorted(set(table) - rooms) == [], "rows of docs/contributing.md's table naming no room of qerl/"


def test_every_import_runs_down_the_layering():
    found = upward_imports(import_graph(), layering())
    assert found == [], "imports the layering in docs/contributing.md does not allow (move the shared code down, " \
        "or change the table if the arrow is right):\n" + "\n".join(found)


def test_the_layering_check_catches_an_upward_import():
    table = layering()
    assert "training" not in table["memory"] and "rollout" not in table["models"]
    graph = {"qerl.memory.startup": {"qerl.training.distributed"},  # up a floor: caught
             "qerl.training.update": {"qerl.rollout.vllm.outputs"}, "qerl.rollout.vllm.ranks": {"qerl.parallel.group"},
             "qerl.lightning_cli": {"qerl.commands.quiet"}}  # down, down, and within the command line's floor
    may = sorted(table["memory"] - {"memory"})
    assert upward_imports(graph, table) == [
        f"qerl.memory.startup imports qerl.training.distributed (memory may import: {may})"]
    try:
        layering("## The packages\n| `a/` | x | nothing |\n| `b/` | y | `c` |\n| `c/` | z | `a` |\n")
    except AssertionError as exc:
        assert "['c'] are not rows above it" in str(exc)
    else:
        raise AssertionError("a row naming a room below it was accepted")


def test_no_import_cycles_between_files():
    found = cycles(import_graph())
    assert found == [], "import cycles (break them by moving shared code down): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_few_loose_modules_in_the_package_root():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= MAX_TOP_LEVEL_MODULES, f"{len(loose)} modules directly in qerl/: {loose}"


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "qerl.lightning_cli" in graph["qerl.cli"]  # imported inside main()
    assert "qerl.registry.registry" in graph["qerl.registry"]


if __name__ == "__main__":
    for component in cycles(import_graph()):
        print(" <-> ".join(component))
