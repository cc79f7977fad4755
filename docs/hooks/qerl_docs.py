"""mkdocs hooks: generate the pages that must follow the code (registries, recipes, benchmarks, plots, API).

Wired in mkdocs.yml (`hooks: [docs/hooks/qerl_docs.py]`). At build time:

- `on_config` loads every registry (built-ins and installed plugins) and appends the generated
  reference pages to the "Reference" section of the nav;
- `on_files` adds those pages, the Recipes and Benchmarks pages, the two plots, and a stand-in for
  any optional page another part of the project has not written yet (so links to it still resolve);
- `on_page_markdown` expands `<!-- qerl:include PATH -->` (a repository file as a code block) and
  `<!-- qerl:list KIND -->` (what `qerl list KIND` prints) inside hand-written pages.
"""
from __future__ import annotations

import importlib.util
import logging
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from benchmarks_page import benchmarks_page
from recipes_table import recipes_page
from registry_pages import page_path, reference_index, registry_pages

log = logging.getLogger("mkdocs.hooks.qerl")

#: modules documented on API pages by mkdocstrings (those missing from a checkout are left out)
API_MODULES = (
    "qerl.registry", "qerl.types", "qerl.module", "qerl.training.settings", "qerl.lightning_cli",
    "qerl.quantizers.base", "qerl.quantizers.weight", "qerl.quantizers.layers", "qerl.noise.base", "qerl.algorithms.base",
    "qerl.rollout.base", "qerl.rewards.base", "qerl.data.base", "qerl.models.base",
)
#: pages other parts of the project write; a stand-in is built while one is missing
OPTIONAL_PAGES = {
    "vllm.md": ("vLLM rollouts", "the vLLM backend", "reference/rollout-backends.md#vllm"),
    "quantization-quality.md": ("Quantization quality", "`benchmarks/quant_quality.py`", "benchmarks.md"),
    "rewards-and-datasets.md": ("Rewards and datasets", "the rewards and datasets work",
                                "reference/rewards.md"),
}
PLOTS = {"img/formats-error.png": "plot_formats", "img/aqn-schedules.png": "plot_aqn",
         "img/learning-smollm2.png": "plot_learning", "img/aqn-study.png": "plot_aqn_study",
         "img/aqn-study-addsub.png": "plot_aqn_study:addsub"}
INCLUDE = re.compile(r"^<!-- qerl:include (\S+?)(?: lines=(\d+)-(\d+))? -->$", re.MULTILINE)
LIST = re.compile(r"^<!-- qerl:list (\S+) -->$", re.MULTILINE)
LANGS = {".py": "python", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json", ".sh": "bash"}


def api_modules() -> list[str]:
    """The API modules that exist in this checkout."""
    found = []
    for name in API_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except ModuleNotFoundError:
            continue
    return found


def api_path(module: str) -> str:
    return f"reference/api/{module}.md"


def api_page(module: str) -> str:
    return f"# `{module}`\n\n::: {module}\n"


def generated_pages(docs_dir: Path) -> dict[str, str]:
    """{site path: markdown} of every generated page."""
    pages = {"reference/index.md": reference_index(), **registry_pages()}
    pages.update({api_path(m): api_page(m) for m in api_modules()})
    pages["recipes.md"] = recipes_page(ROOT)
    existing = frozenset(p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md")) | frozenset(OPTIONAL_PAGES)
    pages["benchmarks.md"] = benchmarks_page(ROOT, existing)
    for name, (title, owner, see) in OPTIONAL_PAGES.items():
        if not (docs_dir / name).is_file():
            pages[name] = (f"# {title}\n\n!!! note \"Not written yet\"\n    This page comes with {owner}; "
                           f"until then see [the reference]({see}).\n")
    return pages


def plot_png(target: str) -> bytes | None:
    """A plot rendered by `docs/scripts/<module>.py` (`module:arg`: its `render_png(arg)`), or None without
    matplotlib."""
    module, _, arg = target.partition(":")
    path = HERE.parent / "scripts" / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"qerl_docs_{module}", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        return script.render_png(arg) if arg else script.render_png()
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        log.info("matplotlib is not installed: the %s plot is left out", module)
        return None


# ------------------------------------------------------------------ mkdocs events
def on_config(config, **kwargs):
    from qerl.registry import REGISTRIES, load_all

    load_all()
    reference = [{"Overview": "reference/index.md"}]
    reference += [{kind.replace("_", " ").capitalize(): page_path(kind)} for kind in REGISTRIES]
    reference.append({"API": [{module: api_path(module)} for module in api_modules()]})
    for item in config.nav or []:
        if isinstance(item, dict) and "Reference" in item:
            item["Reference"] = reference
    return config


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    docs_dir = Path(config.docs_dir)
    for path, markdown in generated_pages(docs_dir).items():
        if files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, content=markdown))
    for path, module in PLOTS.items():
        png = plot_png(module)
        if png is not None and files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, content=png))
    return files


def include_block(match: re.Match, page_src: str) -> str:
    rel = match.group(1)
    path = ROOT / rel
    if not path.is_file():
        log.warning("%s includes %s, which does not exist in this checkout", page_src, rel)
        return f'!!! warning "Missing file"\n    `{rel}` is not in this checkout yet.'
    lines = path.read_text(encoding="utf-8").rstrip("\n").splitlines()
    if match.group(2):
        lines = lines[int(match.group(2)) - 1:int(match.group(3))]
    lang = LANGS.get(path.suffix, "text")
    return f'```{lang} title="{rel}"\n' + "\n".join(lines) + "\n```"


def list_block(match: re.Match) -> str:
    from qerl.commands.list_components import format_registry
    from qerl.registry import find_registry

    registry = find_registry(match.group(1))
    if registry is None:
        raise ValueError(f"<!-- qerl:list {match.group(1)} -->: no such registry")
    return "```text\n$ qerl list " + registry.kind + "\n" + "\n".join(format_registry(registry)) + "\n```"


def on_page_markdown(markdown, page, config, files, **kwargs):
    markdown = INCLUDE.sub(lambda m: include_block(m, page.file.src_uri), markdown)
    return LIST.sub(list_block, markdown)
