"""Reference pages generated from the registries themselves: one page per registry, one section per entry.

Everything shown comes from `qerl.registry.REGISTRIES` at build time (name, aliases, summary, module,
plugin) plus the class's own signature and docstring, so a component registered today - built in or
from an installed plugin - is on the site at the next build.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re

SECTION = re.compile(r"^(Args|Arguments|Attributes|Returns|Raises|Example|Examples|Note|Notes):\s*$")
ARG_LINE = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def page_path(kind: str) -> str:
    """Site path of a registry's page ("reference/quantizers.md")."""
    return f"reference/{kind.replace('_', '-')}.md"


def anchor(name: str) -> str:
    """The heading id mkdocs gives `### Name` (lower case, non-word characters dropped)."""
    return re.sub(r"[^\w-]", "", name.lower())


def escape_html(text: str) -> str:
    """`<` and `>` outside code spans as entities, so `<answer>` shows instead of vanishing as a tag."""
    parts = str(text).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def escape_block(text: str) -> str:
    """`escape_html` for prose lines of a docstring; indented (code) lines stay as they are."""
    return "\n".join(line if line.startswith("    ") else escape_html(line) for line in text.splitlines())


def cell(text: str) -> str:
    """Text made safe for one markdown table cell (one line, pipes escaped, tags shown as text)."""
    return escape_html(" ".join(str(text).split()).replace("|", "\\|"))


def init_parameters(cls: type) -> list[inspect.Parameter]:
    """The parameters a recipe's `init_args` may set (self and *args left out; `**kwargs` forwarded to the
    base class's `__init__` is followed, as LightningCLI does)."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return []
    own = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        base = next((k for k in cls.__mro__[1:] if "__init__" in vars(k)), None)
        if base is not None and base is not object:
            names = {p.name for p in own}
            own += [p for p in init_parameters(base) if p.name not in names]
    return own


def inherited_arg_docs(cls: type) -> dict[str, str]:
    """{arg: text} from the `Args:` sections of `cls` and its bases (the nearest class wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(split_docstring(klass)[1])
    return docs


def split_docstring(cls: type) -> tuple[str, dict[str, str], str]:
    """(description after the first line, {arg: text} from an `Args:` section, the other sections' text)."""
    doc = inspect.cleandoc(vars(cls).get("__doc__") or "")
    if dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        doc = ""
    lines = doc.splitlines()[1:]
    body, args, rest = [], {}, []
    section, current = None, None
    for line in lines:
        match = SECTION.match(line.strip()) if not line.startswith(" ") else None
        if match:
            section = match.group(1)
            if section not in ("Args", "Arguments"):
                rest.append(f"**{section}**\n")
            continue
        if section in ("Args", "Arguments"):
            arg = ARG_LINE.match(line.strip()) if line.startswith("    ") and not line.startswith("     ") else None
            if arg:
                current = arg.group(1).lstrip("*")
                args[current] = arg.group(2)
            elif line.strip() and current:
                args[current] += " " + line.strip()
            elif not line.strip():
                current = None
            continue
        (rest if section else body).append(line[4:] if section and line.startswith("    ") else line)
    return "\n".join(body).strip(), args, "\n".join(rest).strip()


def default_text(param: inspect.Parameter) -> str:
    """The default as the table shows it; a path inside the installed package is shown from `qerl/` on."""
    value = param.default
    if value is inspect.Parameter.empty:
        return "required"
    if isinstance(value, str) and os.path.isabs(value):
        import qerl

        root = os.path.dirname(os.path.dirname(os.path.abspath(qerl.__file__)))
        if value.startswith(root + os.sep):
            return f"`{os.path.relpath(value, root)}` (installed with qerl)"
    return f"`{value!r}`"


def entry_section(kind: str, entry) -> list[str]:
    """Markdown for one registered class: summary, how to name it in a recipe, its arguments, its docstring."""
    out = [f"### {entry.name}", ""]
    out.append(escape_html(entry.summary) if entry.summary else "*(no docstring)*")
    out.append("")
    facts = [f"class `{entry.class_path}`"]
    if entry.aliases:
        facts.append("aliases " + ", ".join(f"`{a}`" for a in entry.aliases))
    facts.append(f"plugin `{entry.plugin}`" if entry.plugin else "built in")
    out += ["- " + "; ".join(facts), ""]
    description, _, rest = split_docstring(entry.cls)
    arg_docs = inherited_arg_docs(entry.cls)
    if description:
        out += [escape_block(description), ""]
    params = init_parameters(entry.cls)
    if params:
        out += ["| argument | default | meaning |", "|---|---|---|"]
        for p in params:
            out.append(f"| `{p.name}` | {cell(default_text(p))} | {cell(arg_docs.get(p.name, ''))} |")
        out.append("")
    if rest:
        out += [escape_block(rest), ""]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    out += ["```yaml", "class_path: " + entry.name]
    if required:
        out += ["init_args:"] + [f"  {name}: ...  # required" for name in required]
    out += ["```", ""]
    return out


def registry_page(registry) -> str:
    """The whole reference page of one registry."""
    entries = registry.list()
    base = registry.base_path.replace(":", ".")
    title = registry.kind.replace("_", " ").capitalize()
    out = [f"# {title}", "",
           (f"Generated at build time from `qerl.registry.REGISTRIES[{registry.kind!r}]` "
           f"({len(entries)} entries). Every entry subclasses `{base}`; built-ins are registered by importing "
           f"{', '.join(f'`{m}`' for m in registry.builtins)}, plugins by the `qerl.plugins` entry-point group. "
           f"`qerl list {registry.kind}` prints the same list."), "",
           "| name | aliases | summary | module | plugin |", "|---|---|---|---|---|"]
    for e in entries:
        aliases = ", ".join(f"`{a}`" for a in e.aliases)
        out.append(f"| [`{e.name}`](#{anchor(e.name)}) | {aliases} | {cell(e.summary)} | `{e.module}` | "
                   f"{cell(e.plugin or '-')} |")
    if not entries:
        out.append("| *(none registered)* | | | | |")
    out += ["", ("In a recipe, name an entry by its short name (`class_path: NAME`) or by its full `class_path`; "
            "set its arguments under `init_args`."), ""]
    for e in entries:
        out += entry_section(registry.kind, e)
    return "\n".join(out)


def registry_pages() -> dict[str, str]:
    """{site path: markdown} for every registry, after loading built-ins and plugins."""
    from qerl.registry import REGISTRIES, load_plugins

    load_plugins()
    return {page_path(kind): registry_page(registry) for kind, registry in REGISTRIES.items()}


def reference_index() -> str:
    """The Reference landing page: one line per registry with its entry names."""
    from qerl.registry import REGISTRIES

    out = ["# Reference", "", "Generated from the registries at build time. One page per registry:", "",
           "| registry | base class | entries |", "|---|---|---|"]
    for kind, registry in REGISTRIES.items():
        names = ", ".join(f"`{n}`" for n in registry.names())
        out.append(f"| [{kind}]({page_path(kind).split('/', 1)[1]}) | `{registry.base_path.replace(':', '.')}` | "
                   f"{names or '-'} |")
    out += ["", "The API pages below the registries document the main modules (via mkdocstrings).", ""]
    return "\n".join(out)
