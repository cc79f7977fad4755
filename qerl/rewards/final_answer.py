"""Where a completion states its final answer, and whether that answer is one number (GSM8K's strict rule).

Pure, linear-time text work: bounded regexes and a brace counter, no `eval`, no sympy.
Numbers become exact `Fraction`s, so `0.75`, `3/4` and `\\frac{3}{4}` are equal without rounding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_TEXT_CHARS = 20_000
"""Only the last this-many characters of a completion are read (answers sit at the end)."""
MAX_NUMBER_DIGITS = 40
"""Longer numerals are refused (no GSM8K answer is that long; huge digit strings are slow to convert)."""
MAX_CONTENT_CHARS = 200
"""A stated answer longer than this is not one number."""
MAX_MARKERS = 64
"""Only the last this-many markers of each kind are read, so a megabyte of markers stays linear."""


def answer_region(text: object) -> str | None:
    """The part of a completion that may hold its final answer, or None.

    Text after the last `</think>` when there is one; None while a `<think>` block is
    still open (the model never left its reasoning); else the whole (tail of the) text.
    """
    if not isinstance(text, str):
        return None
    tail = text[-MAX_TEXT_CHARS:]
    close = tail.rfind("</think>")
    if close != -1:
        return tail[close + len("</think>"):]
    return None if "<think>" in tail else tail


@dataclass(frozen=True)
class Marker:
    """A stated final answer: its kind, where it starts, what it says, and whether it ended before the text did."""

    kind: str  # "boxed", "answer_tag", "hashes", "answer_is"
    start: int
    end: int
    content: str
    closed: bool


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TAG_RE = re.compile(r"<answer>(.{0,800}?)</answer>", re.DOTALL | re.IGNORECASE)
# the line after a marker is read in a lookahead, so a second marker on the same line is still found
_LINE_AHEAD = rf"(?=([^\n]{{0,{MAX_CONTENT_CHARS}}})(\n?))"
_HASHES_RE = re.compile(r"####[ \t]*" + _LINE_AHEAD)
_ANSWER_IS_RE = re.compile(r"\banswer\s*(?:is|:)\s*:?[ \t]*" + _LINE_AHEAD, re.IGNORECASE)
_BARE_START_RE = re.compile(r"[-\u2212$\\.\d]")
_SENTENCE_END_RE = re.compile(r"[.!?;](?=\s)|,\s|\s-{1,2}\s|<")


def boxed_contents(text: str) -> list[tuple[int, int, str]]:
    """(start, end, contents) of every closed `\\boxed{...}` / `\\fbox{...}` (nested braces kept), in order."""
    out = []
    for m in list(_BOX_RE.finditer(text))[-MAX_MARKERS:]:
        depth, i, end = 1, m.end(), min(len(text), m.end() + 4 * MAX_CONTENT_CHARS)
        while i < end and depth:
            depth += (text[i] == "{") - (text[i] == "}")
            i += 1
        if depth == 0:
            out.append((m.start(), i, text[m.end():i - 1]))
    return out


def final_answer_markers(region: str) -> list[Marker]:
    """Every stated final answer in `region` (`\\boxed{}`, `<answer>`, `#### N`, "the answer is N"), by position."""
    found = [Marker("boxed", s, e, c, True) for s, e, c in boxed_contents(region)]
    found += [Marker("answer_tag", m.start(), m.end(), m.group(1), True)
              for m in list(_TAG_RE.finditer(region))[-MAX_MARKERS:]]
    for kind, pattern in (("hashes", _HASHES_RE), ("answer_is", _ANSWER_IS_RE)):
        for m in list(pattern.finditer(region))[-MAX_MARKERS:]:
            line = m.group(1)
            cut = _SENTENCE_END_RE.search(line)
            content = line[:cut.start()] if cut else line
            closed = bool(cut) or bool(m.group(2)) or m.end() + len(line) < len(region)
            found.append(Marker(kind, m.start(), m.end() + len(content), content, closed))
    return sorted(found, key=lambda marker: marker.start)


def stated_number(region: str | None, truncated: bool = False) -> Fraction | None:
    """The value of the final answer a completion states, under GSM8K's strict rule; None if it states none.

    The last marker counts; with no marker, a reply that is nothing but one number (`57`, `$12.`)
    states it. No credit (None) when: it is not exactly one number (a hedge,
    an expression, a ratio, a range); a box or `<answer>` block says something else; or the
    completion was `truncated` and the text ran out before the answer's sentence ended.
    """
    if region is None:
        return None
    markers = final_answer_markers(region)
    if not markers:
        bare = region.strip()  # "Reply with only the final number.": the whole reply is the statement
        if truncated or not _BARE_START_RE.match(bare):
            return None
        return single_number(bare)
    last = markers[-1]
    if truncated and not last.closed:
        return None
    value = single_number(last.content)
    for m in markers:
        encloses_last = m.start <= last.start < m.end and m is not last
        if m.kind in ("boxed", "answer_tag") and not encloses_last and single_number(m.content) != value:
            return None  # a box or <answer> block that says something else: a hedge
    return value


_SPACING_RE = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_FRAC_RE = re.compile(r"^(-?)\\[dt]?frac\s*\{\s*(\d{1,12})\s*\}\s*\{\s*(\d{1,12})\s*\}")
_NUMBER_RE = re.compile(
    r"^(?P<sign>-)?\s*(?:\\?\$\s*)?(?P<sign2>-)?(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?"
    r"(?:(?:[eE](?P<e>[+-]?\d{1,3}))|\s*(?:\\times|\\cdot|×|\*)\s*10\s*\^\s*\{?\s*(?P<p>[+-]?\d{1,3})\s*\}?)?"
    r"(?:\s*/\s*(?P<den>\d{1,12})(?![\d.]))?"
)
_PREFIX_RE = re.compile(r"^(?:[A-Za-z][A-Za-z']*\s+){0,8}(?:[A-Za-z]\s*=|=|:)?\s*")
_UNIT_RE = re.compile(r"^\s*(?:\\?%|percent)?(?:\s*[A-Za-z][A-Za-z'/.\-]*){0,4}\s*$")
HEDGE_WORDS = frozenset((
    "or", "and", "to", "not", "no", "but", "maybe", "perhaps", "probably", "about", "around", "approximately",
    "roughly", "nearly", "almost", "between", "plus", "minus", "times", "either", "if", "else", "otherwise",
    "than", "over", "under", "least", "most"))
"""Words that make a stated number a hedge or an expression when they follow it."""


def single_number(content: str) -> Fraction | None:
    """The value of `content` if it is exactly one number, else None.

    Accepts `1,234`, `$12`, `\\$12`, `-5` and `\u22125`, `3.50`, `.5`, `3/4` and `\\frac{3}{4}` (in lowest
    terms), `4.2e3` and `4.2 \\times 10^{3}`, `50%`, a few leading words and `x =` (`she has x = 12`),
    and up to four trailing unit words (`12 apples`, `5 km/h`). Refuses everything else: `41 or 42`,
    `6 \\times 7`, `3:4`, `\\pm 2`, `32, 349`, `84/2`, `between 40 and 50`, `not 42`, `about 40`.
    """
    s = _normalize(content)
    if s is None:
        return None
    prefix = _PREFIX_RE.match(s).group(0)
    s = s[len(prefix):]
    frac = _FRAC_RE.match(s)
    if frac:
        value, rest = _fraction(frac.group(2), frac.group(3)), s[frac.end():]
        value = -value if (value is not None and frac.group(1)) else value
    else:
        m = _NUMBER_RE.match(s)
        if not m or not (m.group("int") or m.group("frac")):
            return None
        value, rest = _number_value(m), s[m.end():]
    if value is None or not _UNIT_RE.match(rest):
        return None
    if any(word.lower() in HEDGE_WORDS for word in re.findall(r"[A-Za-z]+", prefix + " " + rest)):
        return None
    return value


def _normalize(content: str) -> str | None:
    if not isinstance(content, str) or len(content) > 4 * MAX_CONTENT_CHARS:
        return None
    s = content.replace("\u2212", "-").replace("{,}", ",").replace("\\!", "")
    s = _TEXT_RE.sub(r" \1 ", _SPACING_RE.sub(" ", s))
    s = s.replace("\\left", "").replace("\\right", "").replace("**", "").strip().rstrip(".!").strip()
    while len(s) >= 2 and s[0] == s[-1] == "$" or (s.startswith("\\(") and s.endswith("\\)")):
        s = s[2:-2].strip() if s.startswith("\\(") else s[1:-1].strip()
    s = s.rstrip(".!").strip()
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[len("\\boxed{"):-1].strip()
    return s if 0 < len(s) <= MAX_CONTENT_CHARS else None


def _fraction(num: str, den: str) -> Fraction | None:
    """num/den if written in lowest terms with den > 1 (a fraction, not a division to do), else None."""
    n, d = int(num), int(den)
    if d <= 1 or Fraction(n, d).denominator != d:
        return None
    return Fraction(n, d)


def _number_value(m: re.Match) -> Fraction | None:
    digits = (m.group("int") or "0").replace(",", "")
    if len(digits) + len(m.group("frac") or "") > MAX_NUMBER_DIGITS:
        return None
    exponent = m.group("e") or m.group("p")
    if m.group("den"):
        if m.group("frac") or exponent:
            return None
        value = _fraction(digits, m.group("den"))
    else:
        value = Fraction(digits + (m.group("frac") or ""))
        if exponent is not None:
            value *= Fraction(10) ** int(exponent)
    if value is None or (m.group("sign") and m.group("sign2")):
        return None
    return -value if (m.group("sign") or m.group("sign2")) else value


_ANY_NUMBER_RE = re.compile(r"-?[$0-9.,]{2,}|-?[0-9]+")


def last_number(text: object) -> Fraction | None:
    """lm-eval's GSM8K "flexible-extract": the last number anywhere (`-?[$0-9.,]{2,}|-?[0-9]+`), commas and `$` dropped."""
    if not isinstance(text, str):
        return None
    for token in reversed(_ANY_NUMBER_RE.findall(text[-MAX_TEXT_CHARS:].replace("\u2212", "-"))[-MAX_MARKERS:]):
        s = token.replace(",", "").replace("$", "").rstrip(".")
        if len(s) > MAX_NUMBER_DIGITS:
            return None
        try:
            return Fraction(s)
        except (ValueError, ZeroDivisionError):
            continue
    return None
