"""The tutorials and concept pages stay true: their Python runs, the files they include and the recipes they
name exist, and every recipe they name parses with qerl's own recipe parser."""
from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import pytest
from docs_blocks import blocks, included_files, recipes_named

ROOT = Path(__file__).resolve().parents[2]  # the repository root

DOCS = ROOT / "docs"
#: the hand-written pages of the docs site itself (other parts of the project own vllm.md and the like)
PAGES = sorted([DOCS / "index.md", DOCS / "getting-started.md", *DOCS.glob("tutorials/*.md"),
                *DOCS.glob("concepts/*.md")])
TUTORIALS = sorted(DOCS.glob("tutorials/*.md"))


def rel(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


@contextlib.contextmanager
def scratch_modules(folder: Path):
    """`folder` on sys.path; afterwards its modules are forgotten and every registry entry added meanwhile
    is unregistered, so a tutorial's example components do not leak into other tests."""
    from qerl.registry import REGISTRIES

    before = {kind: set(r.names()) for kind, r in REGISTRIES.items()}
    modules = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in set(sys.modules) - modules:
            module = sys.modules[name]
            if str(getattr(module, "__file__", "") or "").startswith(str(folder)):
                del sys.modules[name]
        for kind, registry in REGISTRIES.items():
            for name in set(registry.names()) - before[kind]:
                registry.unregister(name)


def test_docs_pages_are_found():
    assert len(TUTORIALS) >= 7, [rel(p) for p in TUTORIALS]
    assert {"formats.md", "aqn.md", "grpo-dapo.md", "registry-and-cli.md"} <= {p.name for p in DOCS.glob("concepts/*.md")}


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.lang == "python" for b in blocks(p))], ids=rel)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """Titled blocks (`title="my_components.py"`) are written as files and imported; the others are executed,
    all in page order, in a scratch folder - exactly what a reader following the page would do."""
    python = [b for b in blocks(page) if b.lang == "python"]
    for block in python:
        if block.title:
            (tmp_path / block.title).write_text(block.code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with scratch_modules(tmp_path):
        namespace: dict = {"__name__": "__docs__"}
        for block in python:
            try:
                if block.title and block.title.endswith(".py"):
                    importlib.import_module(Path(block.title).stem)
                else:
                    exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 - the docs' own code
            except Exception as exc:  # noqa: BLE001 - any failure of a docs block is reported with its place
                pytest.fail(f"the Python block at {block.where} fails: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_included_files_exist(page):
    missing = [p for p in included_files(page) if not (ROOT / p).is_file()]
    assert not missing, f"{rel(page)} includes files that do not exist: {missing}"


def test_every_tutorial_runs_a_recipe_or_its_code():
    for page in TUTORIALS:
        runs_code = any(b.lang == "python" for b in blocks(page))
        assert runs_code or recipes_named(page), f"{rel(page)}: nothing in it is exercised by a test"


NAMED_RECIPES = sorted({r for p in TUTORIALS + PAGES for r in recipes_named(p)})


@pytest.mark.parametrize("recipe", NAMED_RECIPES)
def test_recipes_named_in_the_docs_parse(recipe):
    from qerl.lightning_cli import parse_recipe

    path = ROOT / recipe
    assert path.is_file(), f"the docs name {recipe}, which does not exist"
    config = parse_recipe(path)
    assert config.model.algorithm is not None


def test_custom_components_recipe_parses(tmp_path, monkeypatch):
    """Tutorial 4's recipe names its own classes by class_path; qerl's parser imports and checks them."""
    from qerl.lightning_cli import parse_recipe

    page = DOCS / "tutorials" / "custom-reward-and-dataset.md"
    files = {b.title: b.code for b in blocks(page) if b.title}
    assert {"my_components.py", "times-tables.yaml"} <= files.keys()
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with scratch_modules(tmp_path):
        config = parse_recipe(tmp_path / "times-tables.yaml")
        assert config.data.class_path == "my_components.TimesTables"
        assert config.data.init_args.max_factor == 9
        assert [r.class_path for r in config.model.rewards] == ["my_components.LastInteger"]
