"""Deciding whether two normalised answers are the same: tuples, intervals, lists, `\\pm`, equations, expressions.

Runs inside the sympy worker process (see `qerl.rewards.equivalence`); imports sympy.
"""
from __future__ import annotations

import random
import re

import sympy

from qerl.rewards.latex_sympy import LatexParseError, parse_latex

EQUAL, DIFFERENT, GOLD_ERROR = "equal", "different", "gold_error"
_RELATIONS = ("<", ">", "\\le", "\\ge", "\\ne", "\\lt", "\\gt")
_OPEN, _CLOSE = "([{", ")]}"


class GoldParseError(ValueError):
    """The gold answer is not something the checker can parse."""


def split_top_level(s: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside any brackets: `(1,2),3` -> [`(1,2)`, `3`]."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
    parts.append(s[start:])
    return parts


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += c in _OPEN
        depth -= c in _CLOSE
        if depth < 0:
            return False
    return depth == 0


def answer_parts(s: str) -> tuple[str, str, list[str]]:
    """(kind, brackets, items): kind is "matrix", "ordered" (tuple/interval), "unordered" or "single"."""
    for env in ("pmatrix", "bmatrix", "matrix"):
        head, tail = f"\\begin{{{env}}}", f"\\end{{{env}}}"
        if s.startswith(head) and s.endswith(tail):
            rows = s[len(head):-len(tail)].split("\\\\")
            return "matrix", str(len(rows)), [cell for row in rows for cell in row.split("&")]
    if "\\cup" in s:
        return "union", "", s.split("\\cup")
    if s.startswith("\\{") and s.endswith("\\}"):
        return "unordered", "", _expand_pm(split_top_level(s[2:-2]))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1]):
        inner = split_top_level(s[1:-1])
        if len(inner) > 1:
            return "ordered", s[0] + s[-1], inner
    items = _expand_pm(split_top_level(s))
    return ("unordered" if len(items) > 1 else "single"), "", items


def _expand_pm(items: list[str]) -> list[str]:
    """`1 \\pm \\sqrt{5}` is the two items `1+\\sqrt{5}` and `1-\\sqrt{5}`."""
    out = []
    for item in items:
        out += [item.replace("\\pm", "+"), item.replace("\\pm", "-")] if item.count("\\pm") == 1 else [item]
    return out


def compare_answers(pred: str, gold: str) -> str:
    """EQUAL, DIFFERENT, or GOLD_ERROR when the gold answer cannot be parsed (and is not equal as text)."""
    if pred == gold:
        return EQUAL
    gk, gb, gitems = answer_parts(gold)
    pk, pb, pitems = answer_parts(pred)
    try:
        if gk != pk or gb != pb or len(gitems) != len(pitems):
            _check_gold(gitems)
            return DIFFERENT
        if gk == "unordered":
            return EQUAL if _match_unordered(pitems, gitems) else DIFFERENT
        if gk == "union":  # intervals in order, each compared as a whole answer
            verdicts = [compare_answers(p, g) for p, g in zip(pitems, gitems)]
            if GOLD_ERROR in verdicts:
                return GOLD_ERROR
            return EQUAL if all(v == EQUAL for v in verdicts) else DIFFERENT
        return EQUAL if all(items_equal(p, g) for p, g in zip(pitems, gitems)) else DIFFERENT
    except GoldParseError:
        return GOLD_ERROR


def _check_gold(items: list[str]) -> None:
    """Raise GoldParseError unless every gold item (and every element of a gold tuple) parses."""
    for item in items:
        kind, _, parts = answer_parts(item)
        if kind == "single":
            _parse_gold(item)
        else:
            _check_gold(parts)


def _match_unordered(pitems: list[str], gitems: list[str]) -> bool:
    left = list(gitems)
    for p in pitems:
        hit = next((g for g in left if items_equal(p, g)), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


_BASE_NUMBER_RE = re.compile(r"\d+_\{?\d+\}?")


def _parse_gold(text: str) -> sympy.Expr | None:
    """The gold as sympy; None for answers compared as text only (relations, numbers in a base like 52_8)."""
    if any(r in text for r in _RELATIONS) or "=" in text or _BASE_NUMBER_RE.fullmatch(text):
        return None
    try:
        return parse_latex(text)
    except (LatexParseError, TypeError, ValueError, ZeroDivisionError, RecursionError) as exc:
        raise GoldParseError(str(exc)) from exc


def items_equal(pred: str, gold: str) -> bool:
    """One item (no top-level commas) of each answer."""
    if pred == gold:
        return True
    if any(r in gold for r in _RELATIONS) or any(r in pred for r in _RELATIONS):
        return False  # inequalities compare as text only
    if gold.count("=") == 1 and pred.count("=") == 1:
        (pl, pr), (gl, gr) = pred.split("="), gold.split("=")
        return items_equal(pl, gl) and items_equal(pr, gr)
    g = _parse_gold(gold)
    if g is None:
        return False
    try:
        p = parse_latex(pred)
    except (LatexParseError, TypeError, ValueError, ZeroDivisionError, RecursionError):
        return False
    return expr_equal(p, g)


def expr_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Exact or numeric equality; with free symbols, `expand(a - b) == 0` or equal at random points."""
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) or b.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
        return False
    try:
        diff = a - b
        symbols = sorted(diff.free_symbols, key=str)
        if not symbols:
            return _numerically_zero(diff, b)
        if sympy.expand(diff) == 0:
            return True
        rng = random.Random(1234)
        for _ in range(3):
            point = {s: sympy.Float(rng.uniform(0.3, 2.7), 30) for s in symbols}
            if not _numerically_zero(diff.subs(point), b.subs(point)):
                return False
        return True
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError, AttributeError):
        return False


def _numerically_zero(diff: sympy.Expr, reference: sympy.Expr) -> bool:
    value = complex(sympy.N(diff, 30))
    scale = max(1.0, abs(complex(sympy.N(reference, 30))))
    return abs(value) <= 1e-9 * scale
