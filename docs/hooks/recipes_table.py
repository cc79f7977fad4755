"""The Recipes page, generated from `recipes/**/*.yaml`: what each recipe trains and the command that runs it.

A recipe opens with its command (`# qerl fit --config recipes/...yaml`) and a line saying what it does;
the columns come from its YAML (model, quantizer, noise, algorithm, rollout, data) and hardware from an
explicit `# hardware: ...` comment, else from `trainer.accelerator` and the opening comment.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from registry_pages import cell

COMMAND = re.compile(r"^#\s*(qerl\s+\S+.*)$")
HARDWARE = re.compile(r"^#\s*hardware:\s*(.+)$", re.IGNORECASE)
CARD = re.compile(r"\b(H100|H200|A100|L40S?|RTX \d+)(\s*\d+\s*GB)?")
GPU_WORDS = re.compile(r"\b(H100|H200|A100|GPU|CUDA)\b")


@dataclass
class RecipeRow:
    """One line of the recipes table."""

    path: str
    command: str
    summary: str
    model: str
    quantizer: str
    noise: str
    algorithm: str
    rollout: str
    data: str
    hardware: str


def component(value, default: str = "-") -> str:
    """`NVFP4`, `{class_path: Exponential, init_args: {...}}` or a list of them, as short names."""
    if value is None:
        return default
    if isinstance(value, list):
        return ", ".join(component(v) for v in value) or default
    if isinstance(value, dict):
        name = str(value.get("class_path", default)).rsplit(".", 1)[-1]
        return name
    return str(value).rsplit(".", 1)[-1]


def describe_model(policy, folder: str | None = None) -> str:
    """The model a recipe trains: its folder under recipes/ (named after the model), else what the loader loads."""
    name = component(policy)
    if folder:
        return f"{folder} ({name})"
    args = policy.get("init_args", {}) if isinstance(policy, dict) else {}
    for key in ("path", "config", "model", "model_id", "name", "gguf_file"):
        if args.get(key):
            return f"{name} ({args[key]})"
    if name == "GGUFModel":
        return "GGUFModel (SmolLM2-135M-Instruct)"
    return name


def opening_comment(text: str) -> list[str]:
    """The comment lines before the first YAML key."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        lines.append(line)
    return lines


def hardware(comments: list[str], config: dict) -> str:
    for line in comments:
        match = HARDWARE.match(line)
        if match:
            return match.group(1).strip()
    accelerator = str((config.get("trainer") or {}).get("accelerator", "auto")).lower()
    if accelerator == "cpu":
        return "CPU"
    card = CARD.search(" ".join(comments))
    if accelerator in ("gpu", "cuda") or (card and accelerator == "auto"):
        return f"GPU ({card.group(0)})" if card else "GPU"
    words = GPU_WORDS.findall(" ".join(comments))
    return "GPU or CPU" if not words else ("GPU (CPU possible)" if "CPU" in " ".join(comments) else "GPU")


def read_recipe(path: Path, root: Path) -> RecipeRow:
    """Parse one recipe file; a malformed one raises ValueError naming the file."""
    text = path.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(config, dict):
        raise TypeError(f"{path}: a recipe is a YAML mapping, got {type(config).__name__}")
    comments = opening_comment(text)
    command = next((m.group(1).strip() for m in map(COMMAND.match, comments[:1]) if m), "")
    summary = " ".join(c.lstrip("#").strip() for c in comments[1:] if not HARDWARE.match(c))
    model = config.get("model") or {}
    model_args = model.get("init_args", model) if isinstance(model, dict) else {}
    return RecipeRow(
        path=path.relative_to(root).as_posix(),
        command=command,
        summary=summary,
        model=describe_model(model_args.get("policy"), path.parent.name if path.parent != root / "recipes" else None),
        quantizer=component(model_args.get("quantizer"), "bf16 (none)"),
        noise=component(model_args.get("noise"), "none"),
        algorithm=component(model_args.get("algorithm")),
        rollout=component(model_args.get("rollout"), "HF"),
        data=component(config.get("data")),
        hardware=hardware(comments, config),
    )


def read_recipes(root: Path) -> list[RecipeRow]:
    """Every recipe under `root/recipes`, sorted by path."""
    folder = root / "recipes"
    paths = sorted(list(folder.rglob("*.yaml")) + list(folder.rglob("*.yml"))) if folder.is_dir() else []
    return [read_recipe(p, root) for p in paths]


def recipes_page(root: Path, repo_url: str | None = None) -> str:
    """The markdown of the Recipes page."""
    rows = read_recipes(root)
    out = ["# Recipes", "",
           ("Generated at build time from the YAML files under `recipes/` (each opens with the command that "
           "runs it). Run one with its command; override any key on the command line, e.g. "
           "`--trainer.max_steps 5`. `qerl fit --config FILE --print_config` shows every resolved setting."), ""]
    if not rows:
        return "\n".join(out + ["*No recipes yet.*", ""])
    out += ["| recipe | model | quantizer | noise | algorithm | rollout | data | hardware | command |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"[`{r.path}`]({repo_url}/{r.path})" if repo_url else f"`{r.path}`"
        out.append(f"| {name} | {cell(r.model)} | {cell(r.quantizer)} | {cell(r.noise)} | {cell(r.algorithm)} | "
                   f"{cell(r.rollout)} | {cell(r.data)} | {cell(r.hardware)} | {cell('`' + (r.command or 'qerl fit --config ' + r.path) + '`')} |")
    out += ["", "## What each recipe does", ""]
    for r in rows:
        out += [f"### `{r.path}`", "", cell(r.summary), "", "```bash", r.command or f"qerl fit --config {r.path}",
                "```", ""]
    return "\n".join(out)
