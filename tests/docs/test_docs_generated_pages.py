"""The generated pages follow the code: every registered component is on its registry's page, every recipe
is in the recipes table, every results file is on the benchmarks page (and missing ones say so)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks_page import SECTIONS, benchmarks_page
from recipes_table import read_recipe, read_recipes, recipes_page
from registry_pages import anchor, escape_html, page_path, reference_index, registry_pages

ROOT = Path(__file__).resolve().parents[2]  # the repository root


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    from qerl.registry import load_all

    load_all()
    return registry_pages()


def test_one_page_per_registry_listing_every_entry(pages):
    from qerl.registry import REGISTRIES

    assert set(pages) == {page_path(kind) for kind in REGISTRIES}
    total = 0
    for kind, registry in REGISTRIES.items():
        page = pages[page_path(kind)]
        for entry in registry.list():
            total += 1
            row = f"| [`{entry.name}`](#{anchor(entry.name)}) |"
            assert row in page, f"{entry.name} has no row on {page_path(kind)}"
            assert f"\n### {entry.name}\n" in page, f"{entry.name} has no section on {page_path(kind)}"
            assert f"`{entry.class_path}`" in page
            for alias in entry.aliases:
                assert f"`{alias}`" in page
        assert f"({len(registry.list())} entries)" in page
    assert total >= 20  # the built-ins alone are more than that


def test_plugin_entries_name_their_plugin(pages):
    from qerl.registry import QUANTIZERS

    plugin_entries = [e for e in QUANTIZERS.list() if e.plugin]
    if not plugin_entries:
        pytest.skip("no quantizer plugin installed (make install adds qerl-example-plugin)")
    page = pages[page_path("quantizers")]
    for entry in plugin_entries:
        assert f"plugin `{entry.plugin}`" in page
        assert f"| {entry.plugin} |" in page


def test_a_new_registration_shows_up_at_once():
    from qerl.noise.base import NoiseSchedule
    from qerl.registry import NOISE_SCHEDULERS

    @NOISE_SCHEDULERS.register(aliases=("docs-probe",))
    class DocsProbeSchedule(NoiseSchedule):
        """A schedule that exists only in this test.

        Args:
            level: the sigma <returned> at every step.
        """

        def __init__(self, level: float = 0.5) -> None:
            self.level = level

        def sigma_at(self, step: int, total_steps: int) -> float:
            return self.level

    try:
        page = registry_pages()[page_path("noise_schedulers")]
    finally:
        NOISE_SCHEDULERS.unregister("DocsProbeSchedule")
    assert "### DocsProbeSchedule" in page
    assert "| `level` | `0.5` | the sigma &lt;returned&gt; at every step. |" in page
    assert "`docs-probe`" in page


def test_reference_index_links_every_registry():
    from qerl.registry import REGISTRIES

    index = reference_index()
    for kind, registry in REGISTRIES.items():
        assert f"]({page_path(kind).split('/', 1)[1]})" in index
        for name in registry.names():
            assert f"`{name}`" in index


def test_escape_html_keeps_code_spans():
    assert escape_html("a <b> `<c>` d") == "a &lt;b&gt; `<c>` d"


def test_every_recipe_is_in_the_table():
    recipes = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.y*ml"))
    page = recipes_page(ROOT)
    assert recipes, "no recipes under recipes/"
    for path in recipes:
        assert f"| `{path}` |" in page
    rows = read_recipes(ROOT)
    assert [r.path for r in rows] == recipes
    for row in rows:
        assert row.command.startswith("qerl "), f"{row.path} does not open with its command"
        assert row.algorithm != "-", f"{row.path}: no algorithm found"


def test_recipe_columns_come_from_the_yaml(tmp_path):
    folder = tmp_path / "recipes" / "tiny-model"
    folder.mkdir(parents=True)
    (folder / "dapo.yaml").write_text(
        "# qerl fit --config recipes/tiny-model/dapo.yaml\n"
        "# DAPO on math with a <think> format.\n"
        "# hardware: 1x H200\n"
        "trainer: {accelerator: gpu}\n"
        "model:\n"
        "  policy: {class_path: RandomInit, init_args: {config: tiny}}\n"
        "  quantizer: {class_path: qerl.quantizers.MXFP4, init_args: {rounding: ceil}}\n"
        "  algorithm: DAPO\n"
        "  rewards: [{class_path: MathAccuracy}, OverlongPenalty]\n"
        "data: {class_path: MATH500}\n", encoding="utf-8")
    row = read_recipe(folder / "dapo.yaml", tmp_path)
    assert (row.model, row.quantizer, row.noise, row.algorithm, row.rollout, row.data, row.hardware) == (
        "tiny-model (RandomInit)", "MXFP4", "none", "DAPO", "HF", "MATH500", "1x H200")
    assert row.summary == "DAPO on math with a <think> format."
    page = recipes_page(tmp_path)
    assert "a &lt;think&gt; format" in page
    assert "`qerl fit --config recipes/tiny-model/dapo.yaml`" in page


def test_a_broken_recipe_is_named(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bad.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.yaml"):
        recipes_page(tmp_path)


def test_benchmarks_without_results_say_not_yet_measured(tmp_path):
    page = benchmarks_page(tmp_path)
    for _, title, _, _ in SECTIONS:
        assert f"## {title}" in page
    assert page.count("*Not yet measured.*") == len(SECTIONS)


def test_benchmarks_render_every_results_file(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    kernel = {"meta": {"card": "NVIDIA H100 80GB HBM3", "date": "2026-11-25"}, "skipped": ["nf4:8192"], "records": [
        dict(format="nvfp4", shape="8192", K=8192, N=8192, M=m, **{"pass": "fwd"}, us=10.0 * m, bf16_us=20.0 * m,
             speedup=2.0) for m in (1, 16)]}
    (results / "kernels-h100-2026-11-25.json").write_text(json.dumps(kernel))
    (results / "rollout-h100-2026-11-26.json").write_text(json.dumps(
        {"date": "2026-11-26", "rows": [{"backend": "HF", "batch": 8, "tokens_per_s": 831.25, "mem": {"gb": 5.9}}]}))
    (results / "something-new.json").write_text(json.dumps([{"x": 1, "y": True}]))
    page = benchmarks_page(tmp_path)
    assert "| pass | format | shape (K x N) | M=1 | M=16 |" in page
    assert "| fwd | nvfp4 | 8192 (8192 x 8192) | 2x (10) | 2x (160) |" in page
    assert "card NVIDIA H100 80GB HBM3" in page and "Not measured (time budget): nf4:8192." in page
    assert "| backend | batch | tokens_per_s | mem.gb |" in page and "| HF | 8 | 831.2 | 5.9 |" in page
    assert "## Other results" in page and "| 1 | yes |" in page
    assert page.count("*Not yet measured.*") == len(SECTIONS) - 2


def test_benchmarks_page_names_an_unreadable_file(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "step-x.json").write_text("{not json")
    with pytest.raises(ValueError, match="step-x.json"):
        benchmarks_page(tmp_path)


def test_benchmarks_page_shows_the_real_results():
    page = benchmarks_page(ROOT)
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        assert f"### `benchmarks/results/{path.name}`" in page
