"""Pulling the final `\\boxed{...}` out of a completion and normalising LaTeX answers.

Everything here is linear-time string work: brace matching is a counter, never
a recursive regex, so 1,000 nested braces or a megabyte of text cost microseconds
to milliseconds and never recurse.
"""
from __future__ import annotations

import re

MAX_ANSWER_CHARS = 400
"""Normalised answers longer than this are treated as unparsable (no real answer is that long)."""

MAX_BOXES_TRIED = 4
"""Only the last few boxes are tried, so a megabyte of unclosed boxes stays linear."""

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def matching_brace(text: str, open_index: int, limit: int = 20_000) -> int:
    """Index of the `}` closing the `{` at `open_index`, or -1 if it does not close within `limit` chars."""
    depth = 0
    for i in range(open_index, min(len(text), open_index + limit)):
        c = text[i]
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return i
    return -1


def last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{...}` / `\\fbox{...}` (nested braces kept), or None.

    `\\boxed 5` (no braces) gives "5"; an unclosed last box gives None.
    """
    if not isinstance(text, str):
        return None
    starts = [m for m in _BOX_RE.finditer(text)][-MAX_BOXES_TRIED:]
    for m in reversed(starts):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            end = matching_brace(text, i)
            if end != -1:
                return text[i + 1:end]
            continue
        bare = re.match(r"[^\s$]+", text[i:i + MAX_ANSWER_CHARS])
        if bare:
            return bare.group(0)
    return None


_UNIT_WORDS = (
    "degrees?|cm|m|km|mm|meters?|metres?|centimeters?|inches|inch|feet|foot|ft|yards?|miles?|units?|"
    "square|sq|cubic|seconds?|minutes?|hours?|days?|weeks?|years?|dollars?|cents?|pounds?|lbs?|kg|g|grams?|"
    "liters?|litres?|ml|mph|points?|people|students?|ways|cups?"
)
_TEXT_UNIT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{\s*(?:" + _UNIT_WORDS + r")(?:\^?\d)?\s*\}\s*(?:\^\s*\{?\d\}?)?")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°")
_SPACING_RE = re.compile(r"(?<!\\)\\(?:!|,|;|:|quad|qquad|displaystyle|textstyle| )")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_VAR_PREFIX_RE = re.compile(r"^[a-zA-Z](?:_\{?\w\}?)?\s*=(?!=)\s*")
_IN_PREFIX_RE = re.compile(r"^[a-zA-Z]\s*\\in\s*")
_SHORT_FRAC_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
_SHORT_FRAC2_RE = re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)")
_SHORT_SQRT_RE = re.compile(r"\\sqrt\s*(\d+|[a-zA-Z])")
_WHITESPACE_RE = re.compile(r"(\\[a-zA-Z]+ )(?=[a-zA-Z])\s*|\s+")
_TRAILING_UNIT_RE = re.compile(r"(?<=[\d}])\s*(?:" + _UNIT_WORDS + r")\s*$")


def normalize_answer(answer: str) -> str | None:
    """A canonical string for a LaTeX answer, or None if it is empty or too long.

    Drops `$`, spacing commands, `\\left`/`\\right`, degrees, unit words, `\\text{}`
    wrappers, a leading `x =`, trailing periods; maps `\\dfrac`/`\\tfrac` to `\\frac`,
    `\\frac43` to `\\frac{4}{3}`, `\\sqrt2` to `\\sqrt{2}`; removes spaces; lower-cases
    text answers only (`\\text{Evelyn}` -> `evelyn`).
    """
    if not isinstance(answer, str):
        return None
    s = answer.strip()
    if not s or len(s) > 4 * MAX_ANSWER_CHARS:
        return None
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = s.replace("\u2212", "-").replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = _DEGREE_RE.sub("", s)
    s = _TEXT_UNIT_RE.sub("", s)
    s = _SPACING_RE.sub(" ", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    text_only = _TEXT_RE.fullmatch(s.strip())
    if text_only:
        s = text_only.group(1).strip().lower()
    s = _TEXT_RE.sub(r"\1", s)
    s = _TRAILING_UNIT_RE.sub("", s.strip())
    s = s.strip().rstrip(".").strip()
    s = _VAR_PREFIX_RE.sub("", s) if s.count("=") == 1 else s
    s = _IN_PREFIX_RE.sub("", s)
    s = _SHORT_FRAC_RE.sub(r"\\frac{\1}{\2}", s)
    s = _SHORT_FRAC2_RE.sub(r"\\frac{\1}{\2}", s)
    s = _SHORT_SQRT_RE.sub(r"\\sqrt{\1}", s)
    s = _WHITESPACE_RE.sub(lambda m: m.group(1) or "", s)  # keep one space after a command: `\\cot x`
    if re.fullmatch(r"[A-Za-z]{2,}", s):
        s = s.lower()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s) if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s
    s = re.sub(r"^0+(?=\d)", "", s)
    if s.endswith(".0") and re.fullmatch(r"-?\d+\.0", s):
        s = s[:-2]
    if not s or len(s) > MAX_ANSWER_CHARS:
        return None
    return s
