"""One MATH-style verdict with math-verify: extract the answer as written, compare it with the gold.

Runs inside the verify worker process (`qerl.rewards.verify_worker`), never in the trainer:
it imports math-verify, sympy and the ANTLR LaTeX parser. math-verify's own timeouts
(signal.alarm, main thread only) are switched off; the worker's time limit covers the call.

qerl-side guards, each where math-verify itself errs (see docs/rewards-and-datasets.md):
- multiple-choice golds (`(E)`, `\\text{(E)}`) compare letters: math-verify reads `E` as Euler's e;
- numbers too big to evaluate (`10^{10^{10}}`, `(9^{9999})^{9999}`, `100000!`) are refused before
  comparison, which would otherwise compute them for minutes in C code no signal reaches;
- numbers in a base (`52_8`) compare as written: math-verify drops the subscript and reads 52;
- `1\\,000` (a thin space between digit groups) is read as 1000: math-verify reads it as 1 times 000;
- a gold math-verify cannot parse (no sympy value) matches only a boxed answer written like it;
- a boxed answer longer than `MAX_ANSWER_CHARS` is refused unparsed (the ANTLR parser is slow on it).
"""
from __future__ import annotations

import logging
import math
import re

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

EQUAL, DIFFERENT, NO_ANSWER, GOLD_ERROR = "equal", "different", "no_answer", "gold_error"
MAX_ANSWER_CHARS = 1_000
"""Longer boxed answers are refused without parsing."""
MAX_DIGITS = 10_000
"""A number whose size (decimal digits) would exceed this is refused before it is evaluated."""
MAX_NODES = 5_000
"""Expressions with more sympy nodes than this are refused."""

FLOAT_ROUNDING = 6
"""Decimals a float answer is rounded to before comparing (math-verify's default): 0.0833333 equals 1/12."""
NUMERIC_PRECISION = 15
"""Significant digits of the numeric check (math-verify's default): exact integers such as 2^64+1 stay apart.

Relations and sets compare both ways (`allow_set_relation_comp`): `x > 3` equals `(3, \\infty)` whichever is the gold.
"""

logging.getLogger("math_verify").setLevel(logging.ERROR)  # the "timeout disabled" notice: the worker times out
_PRED_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_GOLD_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_CHOICE_RE = re.compile(r"^\s*(?:\\text(?:bf)?\s*\{\s*)?\(?\s*([A-E])\s*\)?\s*\}?\s*$")
_LETTER = r"(?:\\text(?:bf)?\s*\{\s*)?\(?([A-E])\)?(?![A-Za-z])"
_CHOICE_STATEMENTS = (  # tried in this order; the last match of the first that matches counts
    re.compile(r"\\boxed\s*\{\s*" + _LETTER),
    re.compile(r"[Aa]nswer\s*(?:is|:)\s*:?\s*\$?" + _LETTER),
    re.compile(r"\(([A-E])\)"),
)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_THIN_SPACE_GROUP_RE = re.compile(r"(?<=\d)\\[,;: ](?=\d{3}(?!\d))")
_BASE_NUMBER_RE = re.compile(r"^\s*[0-9A-F]+_\{?\s*\d+\s*\}?\s*$")


def judge(source: str, gold: str) -> str:
    """EQUAL, DIFFERENT, NO_ANSWER (nothing to read in `source`) or GOLD_ERROR (the gold does not parse).

    `source` is what the parent chose to read: the answer region (with its `\\boxed{}` answers, read
    first), the last `<answer>` block, or the plain text (math-verify finds the final answer as written).
    """
    letter = _CHOICE_RE.match(gold)
    if letter:
        return _judge_choice(source, letter.group(1))
    if _last_box_too_long(source):
        return DIFFERENT
    source = _THIN_SPACE_GROUP_RE.sub("", source)
    if _BASE_NUMBER_RE.match(gold):
        return _text_fallback(source, gold, DIFFERENT)
    gold_parsed = parse(_as_boxed(gold), extraction_config=_GOLD_CONFIG, parsing_timeout=None)
    if not any(isinstance(x, (sympy.Basic, sympy.MatrixBase)) for x in gold_parsed):
        return _text_fallback(source, gold, GOLD_ERROR)
    pred = parse(source, extraction_config=_PRED_CONFIG, parsing_timeout=None)
    if not pred:
        return NO_ANSWER
    if any(too_big(x) for x in pred + gold_parsed if isinstance(x, (sympy.Basic, sympy.MatrixBase))):
        return DIFFERENT
    same = verify(gold_parsed, pred, float_rounding=FLOAT_ROUNDING, numeric_precision=NUMERIC_PRECISION,
                  allow_set_relation_comp=True, timeout_seconds=None)
    return EQUAL if same else DIFFERENT


def _as_boxed(gold: str) -> str:
    return gold if _BOX_RE.search(gold) else "\\boxed{" + gold + "}"


def _last_box_too_long(source: str) -> bool:
    starts = list(_BOX_RE.finditer(source))
    if not starts:
        return False
    depth, i = 1, starts[-1].end()
    end = min(len(source), i + MAX_ANSWER_CHARS + 1)
    while i < end and depth:
        depth += (source[i] == "{") - (source[i] == "}")
        i += 1
    return depth != 0 and end - starts[-1].end() > MAX_ANSWER_CHARS


def _judge_choice(source: str, gold_letter: str) -> str:
    """Multiple choice: the last stated letter (`\\boxed{(E)}`, `\\text{(E)}`, "the answer is E") against the gold."""
    tail = source[-4 * MAX_ANSWER_CHARS:]
    for pattern in _CHOICE_STATEMENTS:
        stated = [m.group(1) for m in pattern.finditer(tail)]
        if stated:
            return EQUAL if stated[-1] == gold_letter else DIFFERENT
    return NO_ANSWER


def _text_fallback(source: str, gold: str, otherwise: str) -> str:
    """EQUAL if a boxed answer is written exactly like the gold (spaces and braces aside), else `otherwise`."""
    boxed = parse(source, extraction_config=(LatexExtractionConfig(boxed_match_priority=0),),
                  parsing_timeout=None)
    written = [x for x in boxed if isinstance(x, str)]
    return EQUAL if any(_squash(w) == _squash(gold) for w in written) else otherwise


def _squash(text: str) -> str:
    return "".join(text.split()).replace("{", "").replace("}", "").replace("\\text", "")


def too_big(expr: sympy.Basic | sympy.MatrixBase) -> bool:
    """True if evaluating `expr` could need a number with more than `MAX_DIGITS` digits (or it is huge itself).

    Nodes are checked children first, so an exponent is only evaluated once its own parts passed.
    """
    for count, node in enumerate(sympy.postorder_traversal(expr)):
        if count >= MAX_NODES:
            return True
        if isinstance(node, (sympy.factorial, sympy.binomial, sympy.gamma)) and _numeric_over(node.args, 1_000):
            return True
        if isinstance(node, sympy.Pow) and node.exp.is_number and _digits(node) > MAX_DIGITS:
            return True
    return False


def _numeric_over(args, bound: float) -> bool:
    for arg in args:
        if arg.is_number:
            try:
                if abs(complex(arg.evalf(15))) > bound:
                    return True
            except (TypeError, ValueError, OverflowError):
                return True
    return False


def _digits(power: sympy.Pow) -> float:
    """About how many decimal digits `base ** exp` has (inf when it cannot be told cheaply)."""
    try:
        exponent = abs(complex(power.exp.evalf(15)))
        if power.base.is_number:
            base = abs(complex(power.base.evalf(15)))
            scale = abs(math.log10(base)) if base not in (0.0, 1.0) else 0.0
        else:
            scale = 1.0  # a symbol: expanding x^n costs like an n-digit number
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return math.inf
    if math.isnan(exponent) or math.isinf(exponent):
        return math.inf
    return exponent * scale
