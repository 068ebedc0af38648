"""Expression parsing: Lark LALR parser straight to frozen AST dataclasses with spans.

The transformer runs inside the LALR parser (no parse tree is built), so deep input
cannot exhaust the Python stack while parsing; depth is then bounded explicitly.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from .diagnostics import Diagnostic, PolicyError, Span, error

MAX_EXPRESSION_CHARS = 4000
MAX_DEPTH = 100

DURATION_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Node:
    span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class Number(Node):
    value: float
    text: str = field(compare=False, default="")
    is_int: bool = field(compare=False, default=False)


@dataclass(frozen=True)
class Boolean(Node):
    value: bool


@dataclass(frozen=True)
class Duration(Node):
    seconds: float
    text: str = field(compare=False, default="")


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple
    func_span: Span = field(compare=False, repr=False, default=None)


@dataclass(frozen=True)
class Lookback(Node):
    target: Node
    k: Node


@dataclass(frozen=True)
class Unary(Node):
    op: str  # "-" or "not"
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str  # + - * / ** < <= > >= == != and or
    left: Node
    right: Node


@dataclass(frozen=True)
class Cond(Node):
    test: Node
    then: Node
    orelse: Node


ARITHMETIC = ("+", "-", "*", "/", "**")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
LOGICAL = ("and", "or")

#: Terminal names in words, for "expected ..." messages.
TERMINAL_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "PERCENT": "a percentage", "DURATION": "a duration",
    "TRUE": "`true`", "FALSE": "`false`", "IF": "`if`", "THEN": "`then`", "ELSE": "`else`",
    "OR": "`or`", "AND": "`and`", "NOT": "`not`", "COMP_OP": "a comparison", "POW": "`**`",
    "MUL_OP": "`*` or `/`", "ADD_OP": "`+`", "MINUS": "`-`", "LPAR": "`(`", "RPAR": "`)`",
    "LSQB": "`[`", "RSQB": "`]`", "COMMA": "`,`", "$END": "the end of the expression",
}
_OPERAND_START = {"NAME", "NUMBER", "PERCENT", "DURATION", "TRUE", "FALSE", "IF", "NOT", "MINUS", "LPAR"}


def children(node: Node) -> tuple:
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Lookback):
        return (node.target, node.k)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Cond):
        return (node.test, node.then, node.orelse)
    return ()


def walk(node: Node):
    """Every node of the tree, parents first (iterative: trees may be deep)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


def depth(node: Node) -> int:
    best, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        stack.extend((c, d + 1) for c in children(n))
    return best


def canonical(node: Node) -> str:
    """A fully parenthesised text with normalised numbers: the form that is hashed."""
    if isinstance(node, Number):
        return repr(float(node.value))
    if isinstance(node, Boolean):
        return "true" if node.value else "false"
    if isinstance(node, Duration):
        return f"{node.seconds!r}s"
    if isinstance(node, Name):
        return node.id
    if isinstance(node, Call):
        return f"{node.func}({', '.join(canonical(a) for a in node.args)})"
    if isinstance(node, Lookback):
        return f"{canonical(node.target)}[{canonical(node.k)}]"
    if isinstance(node, Unary):
        return f"({node.op} {canonical(node.operand)})"
    if isinstance(node, Binary):
        return f"({canonical(node.left)} {node.op} {canonical(node.right)})"
    if isinstance(node, Cond):
        return f"(if {canonical(node.test)} then {canonical(node.then)} else {canonical(node.orelse)})"
    raise TypeError(node)


def pretty(node: Node) -> str:
    """Readable text with parentheses only where needed (for explain and messages)."""
    prec = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
            "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7, "**": 8}

    def go(n: Node, outer: int) -> str:
        if isinstance(n, Number):
            return n.text or repr(n.value)
        if isinstance(n, Duration):
            return n.text or f"{n.seconds}s"
        if isinstance(n, (Boolean, Name, Call, Lookback)):
            if isinstance(n, Call):
                return f"{n.func}({', '.join(go(a, 0) for a in n.args)})"
            if isinstance(n, Lookback):
                return f"{go(n.target, 9)}[{go(n.k, 0)}]"
            return canonical(n)
        if isinstance(n, Cond):
            text, p = f"if {go(n.test, 0)} then {go(n.then, 0)} else {go(n.orelse, 0)}", 0
        elif isinstance(n, Unary):
            p = prec["not"] if n.op == "not" else prec["neg"]
            text = f"not {go(n.operand, p)}" if n.op == "not" else f"-{go(n.operand, p)}"
        else:
            p = prec[n.op]
            right_p = p if n.op == "**" else p + 1
            left_p = p + 1 if n.op == "**" else p
            text = f"{go(n.left, left_p)} {n.op} {go(n.right, right_p)}"
        return f"({text})" if p < outer else text

    return go(node, 0)




class _ToAst(Transformer):
    """Builds AST nodes during the LALR parse; `spans` maps text offsets to file spans."""

    span_of: Callable[[int, int], Span]

    # Each node is carried as (node, lo, hi) so parents can compute their own span.
    def _tok(self, t: Token):
        return t.start_pos, t.end_pos

    def _make(self, cls, lo, hi, *args, **kw):
        return (cls(self.span_of(lo, hi), *args, **kw), lo, hi)

    def _finite(self, value: float, t: Token) -> float:
        """float() turns a literal beyond float64 (`1e400`, 400 digits) into inf, silently."""
        if math.isinf(value):
            raise PolicyError([too_large("E007", self.span_of(t.start_pos, t.end_pos), str(t))])
        return value

    def number(self, items):
        (t,) = items
        lo, hi = self._tok(t)
        text = str(t)
        value = self._finite(float(text), t)
        return self._make(Number, lo, hi, value, text, value.is_integer() and not any(c in text for c in ".eE"))

    def percent(self, items):
        (t,) = items
        lo, hi = self._tok(t)
        return self._make(Number, lo, hi, self._finite(float(str(t)[:-1]) / 100.0, t), str(t), False)

    def duration(self, items):
        (t,) = items
        lo, hi = self._tok(t)
        text = str(t)
        unit = "ms" if text.endswith("ms") else text[-1]
        return self._make(Duration, lo, hi, self._finite(float(text[: -len(unit)]) * DURATION_SECONDS[unit], t), text)

    def true(self, items):
        lo, hi = self._tok(items[0])
        return self._make(Boolean, lo, hi, True)

    def false(self, items):
        lo, hi = self._tok(items[0])
        return self._make(Boolean, lo, hi, False)

    def name(self, items):
        (t,) = items
        lo, hi = self._tok(t)
        return self._make(Name, lo, hi, str(t))

    def paren(self, items):
        _, inner, rpar = items
        lo = items[0].start_pos
        node, _, _ = inner
        return node, lo, rpar.end_pos  # parentheses leave no trace in the AST

    def arguments(self, items):
        return [x for x in items if not isinstance(x, Token)]

    def call(self, items):
        name_tok, _, args, rpar = items
        lo, hi = name_tok.start_pos, rpar.end_pos
        nodes = tuple(a[0] for a in (args or []))
        return self._make(Call, lo, hi, str(name_tok), nodes, self.span_of(name_tok.start_pos, name_tok.end_pos))

    def lookback(self, items):
        target, _, k, rsqb = items
        return self._make(Lookback, target[1], rsqb.end_pos, target[0], k[0])

    def neg(self, items):
        minus, operand = items
        return self._make(Unary, minus.start_pos, operand[2], "-", operand[0])

    def not_op(self, items):
        tok, operand = items
        return self._make(Unary, tok.start_pos, operand[2], "not", operand[0])

    def _binary(self, items):
        left, op, right = items
        return self._make(Binary, left[1], right[2], str(op), left[0], right[0])

    binary = compare = bool_op = _binary

    def cond(self, items):
        if_tok, test, _, then, _, orelse = items
        return self._make(Cond, if_tok.start_pos, orelse[2], test[0], then[0], orelse[0])


def literal_float(value: int | float, text: str) -> float | None:
    """`value` as a float, or None when `text` writes a number beyond float64 (`1e400`, 400
    digits): float() makes those inf, or raises for an int. `inf` spelled out has no digit."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return None if math.isinf(number) and any(c.isdigit() for c in text) else number


def too_large(code: str, span: Span, text: str, where: str = "") -> Diagnostic:
    """A number literal beyond float64, where Python gives inf (or raises, for an int)."""
    shown = f"`{text}`" if len(text) <= 20 else f"`{text[:12]}...` ({len(text)} characters)"
    return error(code, span, f"{where}the number {shown} is too large",
                 "numbers are 64-bit floats: at most about 1.8e308")


def misplaced_duration(node: Duration) -> Diagnostic:
    """A duration where a number is expected; docs/language.md (section 3) quotes this text."""
    return error("E103", node.span, "a duration is only allowed as a risk value such as `stale_after`",
                 f"write the number of seconds, {node.seconds:g}, if you meant a number")


_PARSE_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _parser() -> tuple[Lark, _ToAst]:
    """One LALR parser whose transformer runs during the parse: no tree, no recursion."""
    builder = _ToAst()
    grammar = Path(__file__).with_name("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", start="start", maybe_placeholders=True, transformer=builder), builder


def parse_expression(text: str, span_of: Callable[[int, int], Span]) -> Node:
    """Parse one expression; `span_of(lo, hi)` turns text offsets into file spans."""
    stripped = text.strip()
    if not stripped:
        raise PolicyError([error("E101", span_of(0, max(1, len(text))), "empty expression")])
    if len(text) > MAX_EXPRESSION_CHARS:
        raise PolicyError([error("E102", span_of(0, 1),
                                 f"expression is {len(text)} characters long; the limit is {MAX_EXPRESSION_CHARS}",
                                 "split it into named features")])
    nesting = deepest = 0
    for i, ch in enumerate(text):
        nesting += ch in "([" and 1 or (-1 if ch in ")]" else 0)
        if nesting > deepest:
            deepest = nesting
            if deepest > 64:
                raise PolicyError([error("E102", span_of(i, i + 1), "expression is nested more than 64 deep",
                                         "split it into named features")])
    parser, builder = _parser()
    try:
        with _PARSE_LOCK:
            builder.span_of = span_of
            result = parser.parse(text)
    except UnexpectedInput as exc:
        raise PolicyError([_syntax_error(exc, text, span_of)]) from None
    except VisitError as exc:  # pragma: no cover - a transformer bug, reported plainly
        raise PolicyError([error("E101", span_of(0, len(text)), f"cannot parse expression: {exc.orig_exc}")]) from None
    except RecursionError:
        raise PolicyError([error("E102", span_of(0, 1), "expression is nested too deeply",
                                 "split it into named features")]) from None
    node = result[0]
    if depth(node) > MAX_DEPTH:
        raise PolicyError([error("E102", span_of(0, 1), f"expression is nested more than {MAX_DEPTH} deep",
                                 "split it into named features")])
    return node


def _syntax_error(exc: UnexpectedInput, text: str, span_of) -> "Diagnostic":
    pos = getattr(exc, "pos_in_stream", None)
    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream]
        help_ = None
        if ch in "&|":
            help_ = "use `and` / `or`"
        elif ch == "!":
            help_ = "use `not x` or `a != b`"
        elif ch == "=":
            help_ = "use `==` to compare"
        elif ch in "'\"":
            help_ = "expressions have no strings; instrument symbols go in `instruments`"
        return error("E101", span_of(exc.pos_in_stream, exc.pos_in_stream + 1), f"unexpected character `{ch}`", help_)
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        expected = getattr(exc, "expected", None) or getattr(exc, "accepts", None) or set()
        end = len(text.rstrip())
        return error("E101", span_of(max(0, end - 1), max(1, end)), "expression ends too early",
                     _expected_words(expected))
    assert isinstance(exc, UnexpectedToken)
    tok = exc.token
    lo, hi = tok.start_pos, tok.end_pos
    expected = exc.accepts or exc.expected
    help_ = _expected_words(expected)
    if tok.type == "COMP_OP" and "COMP_OP" not in expected:
        help_ = "comparisons cannot be chained; write `a < b and b < c`"
    elif tok.type == "LSQB":
        help_ = "a lookback applies to a name or a call, e.g. `close[1]`"
    elif tok.type == "NAME" and str(tok) in ("AND", "OR", "NOT", "If", "IF", "True", "False", "TRUE", "FALSE"):
        help_ = f"keywords are lower case: `{str(tok).lower()}`"
    elif tok.type in ("NAME", "NUMBER") and not ({"NAME", "NUMBER"} & set(expected)):
        help_ = "an operator is missing between two values"
    return error("E101", span_of(lo, hi), f"unexpected {_describe(tok)}", help_)


def _describe(tok: Token) -> str:
    if tok.type in ("NAME", "NUMBER", "PERCENT", "DURATION"):
        return f"{TERMINAL_WORDS[tok.type][2:] if tok.type != 'NAME' else 'name'} `{tok}`"
    return f"`{tok}`"


def _expected_words(expected) -> str | None:
    words = sorted({TERMINAL_WORDS.get(t, t) for t in expected})
    if not words:
        return None
    if set(expected) >= _OPERAND_START:
        return "expected a value: a number, a name, a call or `(`"
    return "expected " + ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]
