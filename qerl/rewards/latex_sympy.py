"""A small LaTeX -> sympy parser for final answers; builds sympy objects directly, never `eval`s text.

Covers what math answers use: numbers, single-letter variables, `+ - * / ^`,
implicit multiplication, `\\frac`, `\\sqrt[n]{}`, `\\pi`, `e`, `i`, `\\infty`,
trig/log functions, `|x|`, `!`, `\\binom`. Anything else raises `LatexParseError`.
Sizes are bounded (tokens, nesting depth, numeral length, power magnitude), so
`10^10^10^10` is refused instead of computed. Imported only by the worker process.
"""
from __future__ import annotations

import math
import re

import sympy

MAX_TOKENS = 400
MAX_DEPTH = 40
MAX_DIGITS = 60
MAX_POWER_DIGITS = 2_000  # a numeric power may have at most this many digits
MAX_FACTORIAL = 200


class LatexParseError(ValueError):
    """The text is not an expression this parser understands, or is too large to evaluate safely."""


_TOKEN_RE = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\[a-zA-Z]+|\\\{|\\\}|[a-zA-Z]|[-+*/^()\[\]{},|!_=<>])")
_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh,
    "tanh": sympy.tanh, "ln": sympy.log, "log": sympy.log, "exp": sympy.exp,
}
_CONSTS = {"pi": sympy.pi, "infty": sympy.oo, "infinity": sympy.oo}
_MUL_CMDS = {"cdot", "times", "ast"}
_SKIP_CMDS = {"left", "right", "displaystyle", "mathrm", "mathbf", "text"}


def tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise LatexParseError(f"unexpected character {text[pos]!r}")
        tok = m.group(1)
        if tok.startswith("\\") and tok[1:] in _SKIP_CMDS:
            pos = m.end()
            continue
        tokens.append(tok)
        pos = m.end()
        if len(tokens) > MAX_TOKENS:
            raise LatexParseError("answer too long")
    return tokens


def parse_latex(text: str) -> sympy.Expr:
    """Parse one LaTeX expression into sympy, or raise `LatexParseError`."""
    parser = _Parser(tokenize(text))
    expr = parser.expression()
    if parser.pos != len(parser.tokens):
        raise LatexParseError(f"unexpected {parser.tokens[parser.pos]!r}")
    return expr


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos, self.depth, self.in_abs = tokens, 0, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise LatexParseError(f"expected {expected or 'more input'}, got {tok!r}")
        self.pos += 1
        return tok

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise LatexParseError("nested too deeply")

    def expression(self) -> sympy.Expr:
        self.enter()
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        self.depth -= 1
        return value

    def term(self) -> sympy.Expr:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "/") or (tok and tok.startswith("\\") and tok[1:] in _MUL_CMDS | {"div"}):
                self.take()
                rhs = self.unary()
                value = value / rhs if tok in ("/", "\\div") else value * rhs
            elif tok is not None and self.starts_atom(tok):
                value = value * self.power()
            else:
                return value

    def unary(self) -> sympy.Expr:
        if self.peek() in ("-", "+"):
            op = self.take()
            self.enter()
            value = self.unary()
            self.depth -= 1
            return -value if op == "-" else value
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix(self.atom())
        if self.peek() == "^":
            self.take()
            self.enter()
            exponent = self.unary() if self.peek() in ("-", "+") else self.power()
            self.depth -= 1
            return safe_pow(base, exponent)
        return base

    def postfix(self, value: sympy.Expr) -> sympy.Expr:
        while self.peek() == "!":
            self.take()
            if not (value.is_Integer and 0 <= int(value) <= MAX_FACTORIAL):
                raise LatexParseError("factorial of a large or non-integer value")
            value = sympy.factorial(value)
        return value

    def starts_atom(self, tok: str) -> bool:
        if tok == "|":
            return not self.in_abs
        if tok in ("(", "{") or tok[0].isdigit() or tok[0] == "." or tok.isalpha():
            return True
        name = tok[1:]
        return tok.startswith("\\") and (name in _FUNCS or name in _CONSTS or name in ("frac", "sqrt", "binom", "lfloor", "lceil"))

    def group(self) -> sympy.Expr:
        tok = self.peek()
        if tok in ("{", "("):
            close = "}" if tok == "{" else ")"
            self.take()
            value = self.expression()
            self.take(close)
            return value
        if tok is not None and tok[0].isdigit():  # \frac12 style single digits
            self.take()
            if len(tok) > 1:
                self.tokens.insert(self.pos, tok[1:])
            return sympy.Integer(tok[0])
        return self.atom()

    def atom(self) -> sympy.Expr:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            if len(tok) > MAX_DIGITS:
                raise LatexParseError("numeral too long")
            return sympy.Rational(tok)
        if tok in ("(", "{"):
            value = self.expression()
            self.take(")" if tok == "(" else "}")
            return value
        if tok == "|":
            self.in_abs += 1
            value = self.expression()
            self.take("|")
            self.in_abs -= 1
            return sympy.Abs(value)
        if tok.isalpha():
            return self.letters(tok)
        name = tok[1:] if tok.startswith("\\") else ""
        if name == "frac":
            return self.group() / self.group()
        if name == "binom":
            n, k = self.group(), self.group()
            if not (n.is_Integer and k.is_Integer and 0 <= int(n) <= 10_000):
                raise LatexParseError("binomial of a large or symbolic value")
            return sympy.binomial(n, k)
        if name == "sqrt":
            if self.peek() == "[":
                self.take()
                index = self.expression()
                self.take("]")
                return safe_pow(self.group(), 1 / index)
            return sympy.sqrt(self.group())
        if name in ("lfloor", "lceil"):
            value = self.expression()
            self.take("\\rfloor" if name == "lfloor" else "\\rceil")
            return sympy.floor(value) if name == "lfloor" else sympy.ceiling(value)
        if name in _CONSTS:
            return _CONSTS[name]
        if name in _FUNCS:
            return self.function(name)
        raise LatexParseError(f"unsupported {tok!r}")

    def function(self, name: str) -> sympy.Expr:
        base = None
        if name == "log" and self.peek() == "_":
            self.take()
            base = self.group()
        exponent = None
        if self.peek() == "^":  # \sin^2 x
            self.take()
            exponent = self.group()
        arg = self.group() if self.peek() in ("{", "(") else self.power()
        value = _FUNCS[name](arg) if base is None else sympy.log(arg, base)
        return safe_pow(value, exponent) if exponent is not None else value

    def letters(self, tok: str) -> sympy.Expr:
        if tok == "e":
            return sympy.E
        if tok == "i":
            return sympy.I
        if self.peek() == "_":  # x_1, but never number bases such as 52_8
            self.take()
            sub = self.take()
            if sub == "{":
                sub = self.take()
                self.take("}")
            return sympy.Symbol(f"{tok}_{sub}")
        return sympy.Symbol(tok)


def safe_pow(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """`base ** exponent`, refusing numeric powers with more than MAX_POWER_DIGITS digits."""
    if exponent.is_number and not base.is_number:
        try:
            if abs(complex(sympy.N(exponent, 15))) > 1_000:
                raise LatexParseError("power too large")
        except (TypeError, ValueError, OverflowError) as exc:
            raise LatexParseError("power too large") from exc
    if exponent.is_number and base.is_number:
        try:
            e = abs(complex(sympy.N(exponent, 15)))
            b = abs(complex(sympy.N(base, 15)))
        except (TypeError, ValueError, OverflowError) as exc:
            raise LatexParseError("power too large") from exc
        if not math.isfinite(e) or not math.isfinite(b) or (b > 1 and e * math.log10(b) > MAX_POWER_DIGITS):
            raise LatexParseError("power too large")
        if b != 0 and b < 1 and e * -math.log10(b) > MAX_POWER_DIGITS:
            raise LatexParseError("power too small")
    return sympy.Pow(base, exponent)
