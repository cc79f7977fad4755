"""Every recipe under recipes/ parses with the real CLI (classes resolve, keys and types check) and opens with its command."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*") if p.suffix in (".yaml", ".yml"))
PARAMS = [pytest.param(p, id=str(p.relative_to(ROOT / "recipes"))) for p in RECIPES]
FIRST_LINE = re.compile(r"^# qerl (fit|validate|test) --config (\S+)(\s.*)?$")


@pytest.mark.parametrize("path", PARAMS)
def test_recipe_opens_with_its_own_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = FIRST_LINE.match(first)
    expected = f"# qerl fit --config {path.relative_to(ROOT)}"
    assert match, f"{path.relative_to(ROOT)} line 1 should be the command that runs it, e.g. {expected!r}"
    assert match.group(2) == str(path.relative_to(ROOT)), f"line 1 names {match.group(2)}, not its own path"


@pytest.mark.parametrize("path", PARAMS)
def test_recipe_parses(path, capsys, monkeypatch):
    from qerl.lightning_cli import parse_recipe

    monkeypatch.chdir(ROOT)  # recipes name data files relative to the repository root
    try:
        config = parse_recipe(path.relative_to(ROOT))
    except SystemExit:
        pytest.fail(f"{path.relative_to(ROOT)} does not parse:\n{capsys.readouterr().err}", pytrace=False)
    assert config.model is not None and config.trainer is not None


def test_smollm2_recipes_use_the_studys_relative_noise_and_qwen_recipes_the_papers():
    """The issue #33 study's default (docs/concepts/aqn.md, "Which setting to start from"): SmolLM2's 4-bit recipes
    scale the noise by |w| (its norm weights are small); the Qwen2.5 recipes keep the paper's absolute schedule."""
    import yaml

    seen = {"smollm2": 0, "qwen": 0}
    for path in RECIPES:
        noise = (yaml.safe_load(path.read_text(encoding="utf-8")).get("model") or {}).get("noise")
        if not isinstance(noise, dict):
            continue
        relative = bool((noise.get("init_args") or {}).get("relative", False))
        family = "smollm2" if "smollm2" in path.parts else "qwen" if path.parts[-2].startswith("qwen") else None
        if family:
            assert relative is (family == "smollm2"), f"{path.relative_to(ROOT)}: relative={relative}"
            seen[family] += 1
    assert seen["smollm2"] >= 5 and seen["qwen"] >= 2, seen
