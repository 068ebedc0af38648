"""Expression parsing: Lark LALR parser straight to frozen AST dataclasses with spans.

The transformer runs inside the LALR parser (no parse tree is built), so deep input
cannot exhaust the Python stack while parsing; depth is then bounded explicitly.
"""
from __future__ import annotations

import hashlib
import importlib.util
import marshal
import math
import re
import sys
import threading
import types
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .cache import cache_root, write_atomic
from .diagnostics import Diagnostic, PolicyError, Span, error

#: The grammar's LALR parser, as Lark writes it for use without Lark ("stand-alone"):
#: the parser's code and tables in one module. Its compiled code is kept in the cache
#: folder under a name of everything it is made from, so a later process loads it with
#: neither Lark nor its grammar compiler, nor Python's compiler (Lark and compiling the
#: module took about a third of a `policyc validate`). A changed grammar, Lark or Python
#: makes a new one.
GRAMMAR = Path(__file__).with_name("grammar.lark")
PARSER_OPTIONS = {"parser": "lalr", "lexer": "basic", "start": "start", "maybe_placeholders": True}


def _parser_code(grammar: str) -> types.CodeType:
    """The stand-alone parser module's code for `grammar`. Imports Lark."""
    import io

    import lark
    from lark.tools.standalone import gen_standalone

    out = io.StringIO()
    gen_standalone(lark.Lark(grammar, **PARSER_OPTIONS), out=out)
    return compile(out.getvalue(), f"<policyc expression parser, Lark {lark.__version__}>", "exec")


def _lalr_module() -> types.ModuleType:
    """The stand-alone parser module: its code from the cache folder, else made (and
    kept there when the folder can be written). The file is Python's bytecode magic, the
    SHA-256 of the marshalled code, then that code: one cut short, altered, or from
    another Python (whose code could crash this one) is made again, as is one that does
    not make the parser."""
    grammar = GRAMMAR.read_text()
    spec = importlib.util.find_spec("lark")  # finds Lark without importing it
    lark_init = Path(spec.origin).read_text() if spec is not None and spec.origin else ""  # its version is there
    magic = importlib.util.MAGIC_NUMBER
    key = hashlib.sha256(repr((grammar, PARSER_OPTIONS, lark_init, magic)).encode()).hexdigest()[:32]
    path = cache_root() / "parsers" / f"expressions-{key}.code"
    start = len(magic) + 32
    try:
        data = path.read_bytes()
        if data[:len(magic)] == magic and hashlib.sha256(data[start:]).digest() == data[len(magic):start]:
            module = _parser_module(marshal.loads(data[start:]))
            if module is not None:
                return module
    except (OSError, EOFError, ValueError, TypeError):
        pass
    code = _parser_code(grammar)
    data = marshal.dumps(code)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, magic + hashlib.sha256(data).digest() + data)
    except OSError:  # a cache folder that cannot be written: made again by the next process
        pass
    return _parser_module(code, made=True)


#: What expressions.py takes from the parser module.
_PARSER_NAMES = ("Lark_StandAlone", "Token", "Transformer", "VisitError", "UnexpectedInput", "UnexpectedCharacters",
                 "UnexpectedEOF", "UnexpectedToken")


def _parser_module(code, made: bool = False) -> types.ModuleType | None:
    """The parser module that `code` makes, or None when it makes none (a cached file of
    other code: any error it raises is its own, but from code just `made`)."""
    name = "policyc.dsl.lalr_parser"
    module = types.ModuleType(name, "Lark's stand-alone LALR parser of grammar.lark")
    sys.modules[name] = module  # where its dataclasses look themselves up as they are made
    try:
        if not isinstance(code, types.CodeType):
            raise TypeError("not code")
        exec(code, module.__dict__)
        if not all(hasattr(module, attr) for attr in _PARSER_NAMES):
            raise TypeError("no parser")
    except Exception:
        del sys.modules[name]
        if made:
            raise
        return None
    return module


_LALR = _lalr_module()
Token, Transformer, VisitError = _LALR.Token, _LALR.Transformer, _LALR.VisitError
UnexpectedInput, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken = (
    _LALR.UnexpectedInput, _LALR.UnexpectedCharacters, _LALR.UnexpectedEOF, _LALR.UnexpectedToken)

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
class Ref(Node):
    """`X.name`: instrument X's value of `name` (a market field, feature, input or the
    instrument's own state) as of X's latest market event."""

    instrument: str
    id: str
    instrument_span: Span = field(compare=False, repr=False, default=None)
    name_span: Span = field(compare=False, repr=False, default=None)


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
    "NAME": "a name", "REF": "a reference such as `ORCL.close`",
    "NUMBER": "a number", "PERCENT": "a percentage", "DURATION": "a duration",
    "TRUE": "`true`", "FALSE": "`false`", "IF": "`if`", "THEN": "`then`", "ELSE": "`else`",
    "OR": "`or`", "AND": "`and`", "NOT": "`not`", "COMP_OP": "a comparison", "POW": "`**`",
    "MUL_OP": "`*` or `/`", "ADD_OP": "`+`", "MINUS": "`-`", "LPAR": "`(`", "RPAR": "`)`",
    "LSQB": "`[`", "RSQB": "`]`", "COMMA": "`,`", "$END": "the end of the expression",
}
_OPERAND_START = {"NAME", "REF", "NUMBER", "PERCENT", "DURATION", "TRUE", "FALSE", "IF", "NOT", "MINUS", "LPAR"}


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
    if isinstance(node, Ref):
        return f"{node.instrument}.{node.id}"
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
        if isinstance(n, (Boolean, Name, Ref, Call, Lookback)):
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
        if is_boolean_spelling(str(t)):  # `True`, `FALSE`: the YAML spellings of a boolean
            return self._make(Boolean, lo, hi, str(t).lower() == "true")
        return self._make(Name, lo, hi, str(t))

    def ref(self, items):
        (t,) = items
        lo, hi = self._tok(t)
        instrument, name = str(t).split(".")
        dot = lo + len(instrument)
        return self._make(Ref, lo, hi, instrument, name, self.span_of(lo, dot), self.span_of(dot + 1, hi))

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
def _parser() -> tuple:
    """One LALR parser whose transformer runs during the parse: no tree, no recursion."""
    builder = _ToAst()
    return _LALR.Lark_StandAlone(transformer=builder), builder


def parse_expression(text: str, span_of: Callable[[int, int], Span]) -> Node:
    """Parse one expression; `span_of(lo, hi)` turns text offsets into file spans."""
    stripped = text.strip()
    if not stripped:
        raise PolicyError([error("E101", span_of(0, max(1, len(text))), "empty expression",
                                 "write a value or a formula here, e.g. `close > sma(close, 20)` or `100`")])
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
    """E101 for a syntax error, always with a help line that names the fix."""
    if isinstance(exc, UnexpectedCharacters):
        p = exc.pos_in_stream
        ch = text[p]
        return error("E101", span_of(p, p + 1), f"unexpected character `{ch}`", _character_help(text, p))
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        expected = getattr(exc, "expected", None) or getattr(exc, "accepts", None) or set()
        end = len(text.rstrip())
        return error("E101", span_of(max(0, end - 1), max(1, end)), "expression ends too early",
                     _expected_words(expected) or "the expression is incomplete")
    assert isinstance(exc, UnexpectedToken)
    tok = exc.token
    lo, hi = tok.start_pos, tok.end_pos
    expected = set(exc.accepts or exc.expected or ())
    help_ = _token_help(tok, expected, text) or _expected_words(expected) or "check the expression around here"
    return error("E101", span_of(lo, hi), f"unexpected {_describe(tok)}", help_)


#: Words YAML 1.1 reads as booleans that a policy does not: `yes` is a name in an
#: expression. Booleans are `true` and `false` in any case (docs/language.md, section 1).
YAML_BOOLEAN_WORDS = {"yes": True, "on": True, "no": False, "off": False}
DURATION_UNIT_WORDS = {"sec": "s", "secs": "s", "second": "s", "seconds": "s", "min": "m", "mins": "m",
                       "minute": "m", "minutes": "m", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
                       "day": "d", "days": "d"}
_KEYWORDS = ("if", "then", "else", "and", "or", "not")
#: A number literal as the grammar's NUMBER writes it, with an optional `-`: the form a
#: param default or a command-line value must have to be read as a number directly.
NUMBER_LITERAL = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\Z")
_NUMBER_END = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*\Z")


def is_boolean_spelling(word: str) -> bool:
    """`true` and `false` in any case: the YAML booleans a policy accepts everywhere."""
    return word.lower() in ("true", "false")


def boolean_word_help(word: str) -> str | None:
    """The help for `yes`, `no`, `on`, `off` (any case) where a value is expected."""
    value = YAML_BOOLEAN_WORDS.get(word.lower())
    if value is None:
        return None
    return f"write `{'true' if value else 'false'}`: booleans are `true` and `false`, not yes/no or on/off"


def _token_help(tok: Token, expected: set, text: str) -> str | None:
    lo = tok.start_pos
    before = text[:lo]
    word = str(tok)
    value_expected = bool(expected & {"NAME", "NUMBER"})
    if tok.type == "COMP_OP" and "COMP_OP" not in expected:
        return "comparisons cannot be chained; write `a < b and b < c`"
    if tok.type == "IF":
        return "an `if` inside an operation needs parentheses: " + _wrap_rest(text, lo, "(if c then a else b)")
    if tok.type == "NOT":
        return "a `not` after an operator needs parentheses: " + _wrap_rest(text, lo, "(not c)")
    if tok.type in ("THEN", "ELSE") and not re.search(r"\bif\b", before):
        return f"`{word}` belongs to `if CONDITION then A else B`, and there is no `if` before it"
    if tok.type == "ADD_OP" and value_expected:
        return "there is no unary `+`: remove it"
    if tok.type == "COMMA" and value_expected:
        return "a value is missing before this `,`"
    if tok.type == "COMMA":
        return _comma_help(text, lo)
    if tok.type in ("RPAR", "RSQB"):
        opener = "(" if tok.type == "RPAR" else "["
        if before.count(opener) <= before.count(word):
            return f"`{word}` closes no `{opener}`: remove it"
        return None
    if tok.type == "LPAR" and re.search(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\s*\Z", before):
        return ("values have no methods: call a function, `f(x)`, or look back with `x[1]`; "
                "`INSTRUMENT.name` reads another instrument's value, as in `ORCL.close`")
    if tok.type == "LSQB":
        return "a lookback `[k]` follows a name, a call or `( )`, as in `close[1]`; there are no lists"
    if tok.type == "NAME":
        number = _NUMBER_END.search(before)
        adjacent = number is not None and not before[-1:].isspace()
        if word.startswith("_") and adjacent:
            return f"write `{_join_number(text, lo, '_')}`: numbers have no `_` separators"
        if adjacent and number.group(0) == "0" and len(before) == number.start() + 1 \
                and re.fullmatch(r"[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+", word):
            base = {"x": 16, "o": 8, "b": 2}[word[0].lower()]
            return f"numbers are decimal: write `{int(word[1:], base)}`"
        if number is not None and word in DURATION_SECONDS and not adjacent:
            return f"write `{number.group(0).strip()}{word}`, with no space before the unit"
        if number is not None and word.lower() in DURATION_UNIT_WORDS:
            unit = DURATION_UNIT_WORDS[word.lower()]
            return f"write `{number.group(0).strip()}{unit}`: the duration units are ms, s, m, h and d"
        if number is not None and word.lower() in ("percent", "pct"):
            return f"write `{number.group(0).strip()}%`"
        if word.lower() in _KEYWORDS and word != word.lower():
            return f"keywords are lower case: `{word.lower()}`"
        if word.lower() in YAML_BOOLEAN_WORDS and not value_expected:
            return boolean_word_help(word)
    if tok.type == "NUMBER" and not value_expected:
        previous = _NUMBER_END.search(before)
        if previous and re.fullmatch(r"[0-9]{1,3}", previous.group(1)) and re.fullmatch(r"[0-9]{3}", word) \
                and before.endswith(" "):
            return (f"if this is one number, write `{previous.group(1)}{word}`: numbers have no thousands "
                    "separators; otherwise an operator is missing")
    if tok.type in ("NAME", "REF", "NUMBER", "PERCENT", "DURATION", "TRUE", "FALSE", "LPAR") and not value_expected:
        return "an operator is missing between two values"
    return None


def _one_line(text: str) -> str:
    """An expression as one line with single spaces, to quote in a help line."""
    return " ".join(text.split())


def _wrap_rest(text: str, lo: int, generic: str) -> str:
    """`1 + if c then a else b` -> write `1 + (if c then a else b)` (when short and complete enough)."""
    body = _one_line(text)
    start = len(_one_line(text[:lo] + "x")) - 1  # where the token starts in the one-line form
    complete = not body[start:].startswith("if") or re.search(r"\bthen\b.*\belse\b", body[start:])
    if len(body) > 80 or not complete or not body[start:].split(None, 1)[1:]:
        return f"write `{generic}`"
    return f"write `{body[:start]}({body[start:]})`"


def _join_number(text: str, lo: int, separator: str) -> str:
    """The digits around `lo` with `separator` removed: `100_000` -> `100000`."""
    start = lo
    while start > 0 and text[start - 1] in "0123456789." + separator:
        start -= 1
    end = lo
    while end < len(text) and (text[end] in "0123456789." + separator):
        end += 1
    return text[start:end].replace(separator, "")


def _comma_help(text: str, lo: int) -> str:
    before, after = text[:lo], text[lo + 1:]
    if re.search(r"[0-9]\Z", before) and re.match(r"[0-9]", after):
        groups = re.search(r"[0-9]+\Z", before).group(0)
        following = re.match(r"[0-9,]*[0-9](\.[0-9]+)?", after).group(0)
        number = groups + "," + following
        if re.fullmatch(r"[0-9]{1,3}(,[0-9]{3})+(\.[0-9]+)?", number):
            return f"write `{number.replace(',', '')}`: numbers have no thousands separators"
        if number.count(",") == 1 and "." not in number:
            return f"write `{number.replace(',', '.')}`: the decimal point is `.`"
    return "a `,` only separates the arguments of a call, as in `max(a, b)`"


#: Characters that look like an ASCII one the language uses (NFKC covers the full-width
#: forms, `２` `％` `（`); these it does not.
_LOOKALIKES = {
    "\u2212": "-", "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
    "\ufe63": "-", "\u00d7": "*", "\u22c5": "*", "\u2217": "*", "\u2219": "*", "\u00f7": "/", "\u2215": "/",
    "\u2044": "/", "\u2264": "<=", "\u2265": ">=", "\u2260": "!=", "\u2a7d": "<=", "\u2a7e": ">=",
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u066a": "%", "\u066b": ".", "\u066c": ",", "\u2030": "%", "\u00b7": "*",
    # Cyrillic and Greek letters that look like Latin ones
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0443": "y", "\u0445": "x",
    "\u0456": "i", "\u0455": "s", "\u0458": "j", "\u0410": "A", "\u0412": "B", "\u0415": "E", "\u041a": "K",
    "\u041c": "M", "\u041d": "H", "\u041e": "O", "\u0420": "P", "\u0421": "C", "\u0422": "T", "\u0425": "X",
    "\u03bf": "o", "\u0391": "A", "\u0392": "B", "\u0395": "E", "\u0396": "Z", "\u0397": "H", "\u0399": "I",
    "\u039a": "K", "\u039c": "M", "\u039d": "N", "\u039f": "O", "\u03a1": "P", "\u03a4": "T", "\u03a5": "Y",
    "\u03a7": "X",
}
_GENERIC_CHARACTER_HELP = ("an expression is made of numbers, names, `( ) [ ] ,`, the operators "
                           "`+ - * / ** < <= > >= == !=` and the words `and or not if then else`")


def _character_help(text: str, p: int) -> str:
    ch = text[p]
    before, after = text[:p], text[p + 1:]
    if ord(ch) >= 128:
        return _non_ascii_help(ch, text, p)
    if ch in "&|":
        return "use `and` / `or`"
    if ch == "!":
        return "use `not x` or `a != b`"
    if ch == "=":
        keyword = re.search(r"(?:[A-Za-z_][A-Za-z0-9_]*\s*\(|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s*\Z", before)
        if keyword and not after.startswith("="):
            positional = re.sub(r"([(,]\s*)[A-Za-z_][A-Za-z0-9_]*\s*=(?!=)\s*", r"\1", _one_line(text))
            fix = f"write `{positional}`" if len(positional) <= 80 else f"remove `{keyword.group(1)}=`"
            return f"functions take arguments by position only: {fix}"
        return "use `==` to compare"
    if ch in "'\"":
        return "expressions have no strings; instrument symbols go in `instruments`"
    if ch == "%":
        number = _NUMBER_END.search(before)
        if number is not None and before[-1:].isspace():
            return f"write `{number.group(0).strip()}%`, with no space before `%`"
        return "`%` only ends a percentage, as in `3%`: there is no remainder operator"
    if ch == "$":
        return _currency_help(ch, text, p)
    if ch == "^":
        return "use `**` for a power"
    if ch == "~":
        return "use `not`"
    if ch == "?":
        return "write a choice as `if c then a else b`"
    if ch in "{}":
        return "use `(` and `)` to group"
    if ch == "." and re.search(r"[A-Za-z_0-9]\s*\Z", before):
        return ("`INSTRUMENT.name` reads another instrument's value, with no spaces, as in `ORCL.close`; "
                "values have no methods: call a function, `f(x)`, or look back with `x[1]`")
    if ch == ":" and re.search(r"[0-9]\Z", before) and re.match(r"[0-9]", after):
        digits = re.search(r"[0-9]+(:[0-9]+)+", text[re.search(r"[0-9:]*\Z", before).start():]).group(0)
        value = 0
        for part in digits.split(":"):
            value = value * 60 + int(part)
        return f"numbers have no `:` (YAML 1.1 reads `{digits}` as {value}, in base 60): write the number you mean"
    if ch == "_" and _NUMBER_END.search(before):
        return f"write `{_join_number(text, p, '_')}`: numbers have no `_` separators"
    return _GENERIC_CHARACTER_HELP


def _currency_help(ch: str, text: str, p: int) -> str:
    number = re.match(r"\s*([0-9][0-9.,_]*)", text[p + 1:]) or re.search(r"([0-9][0-9.,_]*)\s*\Z", text[:p])
    written = f"write `{number.group(1).replace(',', '').replace('_', '')}`: " if number else ""
    return f"{written}numbers have no currency symbol (`{ch}`)"


def _ascii_for(ch: str) -> str | None:
    """The ASCII text a lookalike character stands for (`−` -> `-`, `２` -> `2`), if any."""
    if ch in _LOOKALIKES:
        return _LOOKALIKES[ch]
    if unicodedata.decimal(ch, None) is not None and "SUPERSCRIPT" not in unicodedata.name(ch, ""):
        return str(unicodedata.decimal(ch))
    folded = unicodedata.normalize("NFKC", ch)  # the full-width forms: `２` `％` `（`
    if len(folded) == 1 and folded.isascii() and folded.strip() and "SUPERSCRIPT" not in unicodedata.name(ch, ""):
        return folded
    return None


def _non_ascii_help(ch: str, text: str, p: int) -> str:
    name = unicodedata.name(ch, "")
    label = f"`{ch}` (U+{ord(ch):04X}{' ' + name if name else ''})"
    category = unicodedata.category(ch)
    if category == "Sc":
        return _currency_help(ch, text, p)
    if "SUPERSCRIPT" in name and unicodedata.digit(ch, None) is not None:
        return f"write `** {unicodedata.digit(ch)}` for a power: {label} is not ASCII"
    ascii_ = _ascii_for(ch)
    if ascii_ is not None:
        end = p
        while end < len(text) and ord(text[end]) >= 128 and _ascii_for(text[end]) is not None:
            end += 1
        if end - p > 1:  # `２％`: name the whole run, not only its first character
            run = text[p:end]
            return f"write the ASCII `{''.join(_ascii_for(c) for c in run)}` instead of `{run}`"
        return f"write the ASCII `{ascii_}` instead of {label}"
    if category == "Zs":
        return f"write an ordinary space instead of {label}"
    if category in ("Cf", "Cc", "Co", "Cn"):
        return f"remove the invisible character {label}"
    if category.startswith("L"):
        return f"names use ASCII letters, digits and `_` only; {label} is not one"
    return f"expressions use ASCII characters only; {label} is not one"


def _describe(tok: Token) -> str:
    if tok.type in ("NAME", "NUMBER", "PERCENT", "DURATION"):
        return f"{TERMINAL_WORDS[tok.type][2:] if tok.type != 'NAME' else 'name'} `{tok}`"
    if tok.type == "REF":
        return f"reference `{tok}`"
    return f"`{tok}`"


def _expected_words(expected) -> str | None:
    words = sorted({TERMINAL_WORDS.get(t, t) for t in expected})
    if not words:
        return None
    if set(expected) >= _OPERAND_START - {"IF", "NOT"}:
        return "expected a value: a number, a name, a call or `(`"
    return "expected " + ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]
