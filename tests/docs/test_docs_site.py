"""The whole site: `mkdocs build --strict` passes, no internal link is broken, the generated pages are there,
the plots are drawn from the real registries. The screenshot check (headless Chromium) runs only where
Chromium is installed."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository root

SCRIPTS = ROOT / "docs" / "scripts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once with `mkdocs build --strict` into a scratch folder."""
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(out)], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-4000:]}"
    return out


@pytest.mark.slow
def test_strict_build_has_no_broken_links(site):
    broken = script("check_links").broken_links(site)
    assert not broken, "broken internal links:\n" + "\n".join(broken)


@pytest.mark.slow
def test_built_reference_lists_every_component(site):
    from qerl.registry import REGISTRIES

    for kind, registry in REGISTRIES.items():
        html = (site / "reference" / kind.replace("_", "-") / "index.html").read_text(encoding="utf-8")
        for entry in registry.list():
            assert f'id="{entry.name.lower()}"' in html, f"{entry.name} missing from the built {kind} page"


@pytest.mark.slow
def test_built_site_has_the_generated_pages_and_plots(site):
    for page in ("recipes/index.html", "benchmarks/index.html", "reference/index.html",
                 "reference/api/qerl.registry/index.html", "tutorials/first-grpo-run/index.html"):
        assert (site / page).is_file(), page
    for png in ("img/formats-error.png", "img/aqn-schedules.png"):
        assert (site / png).read_bytes()[:8] == PNG_MAGIC, png
    recipes = (site / "recipes" / "index.html").read_text(encoding="utf-8")
    for path in (ROOT / "recipes").rglob("*.yaml"):
        assert path.relative_to(ROOT).as_posix() in recipes
    tutorial = (site / "tutorials" / "first-grpo-run" / "index.html").read_text(encoding="utf-8")
    assert "Missing file" not in tutorial and "seed_everything" in tutorial  # the recipe was included


def test_plots_draw_every_registered_format_and_schedule():
    pytest.importorskip("matplotlib")
    from qerl.registry import NOISE_SCHEDULERS, QUANTIZERS

    formats, aqn = script("plot_formats"), script("plot_aqn")
    assert [n for n, _ in formats.quantizers()] == QUANTIZERS.names()
    assert [n for n, _ in aqn.schedules()] == NOISE_SCHEDULERS.names()
    exp = NOISE_SCHEDULERS.get("Exponential")()
    sigmas = aqn.sigmas(exp, 100)
    assert sigmas[0] == 0.0 and sigmas[10] == pytest.approx(1e-2) and sigmas[-1] == pytest.approx(1e-4)
    assert aqn.render_png()[:8] == PNG_MAGIC  # the formats plot is drawn by the site build (slow test above)


def test_level_curve_is_the_e2m1_grid_for_nvfp4():
    import torch

    from qerl.quantizers import NVFP4

    xs = torch.tensor([0.0, 0.1, 0.26, 0.49, 0.76, 1.0, -0.6])
    got = script("plot_formats").level_curve(NVFP4(), xs)
    # block amax 1 -> scale 1/6: the representable values are {0, .5, 1, 1.5, 2, 3, 4, 6} / 6
    grid = torch.tensor([0.0, 0.5, 1, 1.5, 2, 3, 4, 6]) / 6
    for x, y in zip(xs.abs(), got.abs()):
        assert torch.isclose(grid, y, atol=2e-3).any(), (float(x), float(y))
    assert got[-1] < 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="headless Chromium is not installed (apt-get install chromium)")
@pytest.mark.skipif(bool(os.environ.get("CI")), reason="screenshots are a local check, kept out of CI")
def test_screenshots_render(site, tmp_path):
    shots = script("screenshots").take(site, tmp_path, pages=("", "reference/quantizers/"))
    for path in shots:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000, f"{path} looks blank"


def test_aqn_study_plot_averages_seeds_over_the_steps_every_seed_reached():
    study = script("plot_aqn_study")
    steps, values = study.seed_mean([([0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0]), ([0, 1, 2], [2.0, 3.0, 4.0])])
    assert steps == [0, 1, 2] and values == [1.0, 2.0, 3.0]  # step 3: one seed only (cut by the time cap)
    runs = study.by_variant([{"curves": {"nvfp4-aqn-rel1-s3": {"a": 1}, "bf16-s0": {"b": 2}}},
                             {"curves": {"nvfp4-aqn-rel1-s0": {"c": 3}}}])
    assert runs == {"nvfp4-aqn-rel1": {3: {"a": 1}, 0: {"c": 3}}, "bf16": {0: {"b": 2}}}
    pytest.importorskip("matplotlib")
    for task in study.TASKS:  # the committed studies: 4 variants x 4 seeds on each task
        records = study.latest(study.TASKS[task][0])
        assert sum(len(r["curves"]) for r in records) >= 16, task
        assert {run.rpartition("-s")[0] for r in records for run in r["curves"]} >= {"bf16", "nvfp4", "nvfp4-aqn"}
        assert study.render_png(task)[:8] == PNG_MAGIC
