"""The policy document: the shape of the YAML structure, then expressions parsed.

`load_policy` is the front end's single entry point: text in, a `ParsedPolicy` (every
expression an AST with file spans) or a `PolicyError` carrying positioned diagnostics.

The shape is described once, in SHAPES. A document is checked against it directly,
which is quick; only a document that does not fit is handed to pydantic models built
from the same description, whose errors name every misfit (pydantic takes longer to
import than the rest of a `policyc validate`).
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from . import expressions as ex
from .diagnostics import Diagnostic, PolicyError, Span, did_you_mean, error, warning
from .risk_keys import ACCOUNT_KEYS, CONTRACT_KEYS, RISK_KEYS, Key
from .source import Positioned, SourceFile, compose, read_source, scalar_text_offsets, source_from_bytes

POLICY_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]*\Z")

CUSTOM_ACTIONS = ("block", "reduce_only", "liquidate", "halt")

# ---- the document's shape ------------------------------------------------------------
# A value's shape: "text", "integer", "scalar" (true/false, a number or text: every
# expression, as YAML reads it), ("optional", SHAPE) (also null), ("list", SHAPE),
# ("mapping", SHAPE) (text keys), ("either", (SHAPE, ...)) (the first of them that fits),
# ("one of", CHOICES), or the name of a record in SHAPES.
# A record maps its keys to (shape, default); REQUIRED marks a key without one.
REQUIRED = object()
OPTIONAL_SCALAR = ("optional", "scalar")
SHAPES = {
    "PolicyModel": {
        "policy": ("text", REQUIRED), "version": ("integer", REQUIRED), "description": (("optional", "text"), None),
        "instruments": (("either", (("list", "text"), ("mapping", ("either", ("text", "InstrumentModel"))))),
                        REQUIRED),
        "inputs": (("list", "text"), []),
        "params": (("mapping", "scalar"), {}), "features": (("mapping", "scalar"), {}),
        "signals": (("list", "SignalModel"), REQUIRED), "risk": (("optional", "RiskModel"), None),
        "account": (("optional", "AccountModel"), None),
        "calendar": (("optional", "text"), None), "timezone": (("optional", "text"), None),
    },
    # an instrument of the map form given as a table: its symbol and its contract's settings
    "InstrumentModel": {"symbol": ("text", REQUIRED), **{key: (OPTIONAL_SCALAR, None) for key in CONTRACT_KEYS}},
    # a rule sets one target (`target`, with an optional IOC `limit`) or several (`legs`:
    # instrument -> a target, or a table of its target and limit); the checker requires
    # exactly one of `target` and `legs` (E214)
    "SignalModel": {"when": ("scalar", REQUIRED), "target": (OPTIONAL_SCALAR, None), "limit": (OPTIONAL_SCALAR, None),
                    "legs": (("optional", ("mapping", ("either", ("scalar", "LegModel")))), None)},
    "LegModel": {"target": ("scalar", REQUIRED), "limit": (OPTIONAL_SCALAR, None)},
    "CustomRuleModel": {"name": ("text", REQUIRED), "when": ("scalar", REQUIRED),
                        "action": (("one of", CUSTOM_ACTIONS), REQUIRED)},
    # Every key takes any scalar here: its value is an expression (a limit may be `2 * size`),
    # and its kind and bounds are the checker's, once params are bound.
    "RiskModel": {"custom": (("list", "CustomRuleModel"), []), **{key: (OPTIONAL_SCALAR, None) for key in RISK_KEYS}},
    "AccountModel": {key: (OPTIONAL_SCALAR, None) for key in ACCOUNT_KEYS},
}
TOP_KEYS = list(SHAPES["PolicyModel"])


def _fits(shape, value) -> bool:
    """Whether `value` (as YAML reads it) has `shape`, by the rules of the pydantic
    models `_model` builds: strict, no conversion, no unknown keys."""
    if isinstance(shape, str):
        if shape == "text":
            return isinstance(value, str)
        if shape == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if shape == "scalar":
            return isinstance(value, (bool, int, float, str))
        fields = SHAPES[shape]
        return (isinstance(value, dict) and all(k in fields for k in value)
                and all(k in value for k, (_, default) in fields.items() if default is REQUIRED)
                and all(_fits(fields[k][0], v) for k, v in value.items()))
    kind, inner = shape
    if kind == "optional":
        return value is None or _fits(inner, value)
    if kind == "list":
        return isinstance(value, list) and all(_fits(inner, v) for v in value)
    if kind == "mapping":
        return isinstance(value, dict) and all(isinstance(k, str) and _fits(inner, v) for k, v in value.items())
    if kind == "either":
        return any(_fits(s, value) for s in inner)
    return isinstance(value, str) and value in inner  # "one of"


def _filled(shape, value):
    """A value that fits `shape`, with each record a namespace of all its keys (defaults
    for those left out): what the pydantic model would have made of it."""
    if isinstance(shape, str):
        if shape not in SHAPES:
            return value
        return SimpleNamespace(**{k: _filled(s, value[k]) if k in value else copy.copy(default)
                                  for k, (s, default) in SHAPES[shape].items()})
    kind, inner = shape
    if value is None or kind == "one of":
        return value
    if kind == "either":
        return _filled(next(s for s in inner if _fits(s, value)), value)
    if kind == "mapping":
        return {k: _filled(inner, v) for k, v in value.items()}
    if kind == "list":
        return [_filled(inner, v) for v in value]
    return _filled(inner, value)


@lru_cache(maxsize=None)
def _model(name: str):
    """The pydantic model of the record `name` of SHAPES (strict, unknown keys refused)."""
    from typing import Literal, Optional, Union

    from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

    class _Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

    def annotation(shape):
        if isinstance(shape, str):
            return {"text": StrictStr, "integer": StrictInt,
                    "scalar": Union[StrictBool, StrictInt, StrictFloat, StrictStr]}.get(shape) or _model(shape)
        kind, inner = shape
        if kind == "one of":
            return Literal[inner]
        if kind == "mapping":
            return dict[str, annotation(inner)]
        if kind == "either":
            return Union[tuple(annotation(s) for s in inner)]
        return Optional[annotation(inner)] if kind == "optional" else list[annotation(inner)]

    return create_model(name, __base__=_Strict, **{key: (annotation(shape), ... if default is REQUIRED else default)
                                                   for key, (shape, default) in SHAPES[name].items()})


def __getattr__(name: str):
    """The pydantic models by name (`RiskModel`, ...), built on first use."""
    if name in SHAPES:
        return _model(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Named:
    """A declared name with the span of its key."""

    name: str
    span: Span


@dataclass
class InstrumentDecl(Named):
    """An instrument: `name` is its symbol (data, the wire and the logs use it), `alias` the
    name expressions call it by (`cb` in `cb.bid`): the key of the map form of
    `instruments`, else the symbol itself when it is a name (`ORCL`), else None."""

    alias: str | None = None
    #: the contract's settings the policy gives (dsl/risk_keys.py CONTRACT_KEYS), by key
    contract: dict[str, "ValueDecl"] = field(default_factory=dict)


@dataclass
class ParamDecl(Named):
    value: float | bool
    percent: bool = False  # written as a percentage (`size: 50%`)


@dataclass
class FeatureDecl(Named):
    expr: ex.Node


@dataclass
class LegDecl:
    """One leg of a multi-leg rule: the instrument as written (a name or a symbol), the
    span of its key, its target and its IOC limit price (None: a market order)."""

    instrument: str
    span: Span
    target: ex.Node
    limit: ex.Node | None = None


@dataclass
class RuleDecl:
    """A rule of `signals`: `target` (and `limit`) for the event's instrument, or `legs`
    (then `target` is None)."""

    when: ex.Node
    target: ex.Node | None
    span: Span
    limit: ex.Node | None = None
    legs: list[LegDecl] | None = None


@dataclass
class CustomDecl:
    name: str
    when: ex.Node
    action: str
    span: Span


@dataclass
class ValueDecl:
    """A risk or account value: a constant expression over literals and params."""

    key: str
    expr: ex.Node
    span: Span


@dataclass
class ParsedPolicy:
    source: SourceFile
    name: str
    version: int
    description: str | None
    instruments: list[InstrumentDecl]
    inputs: list[Named]
    params: dict[str, ParamDecl]
    features: dict[str, FeatureDecl]
    signals: list[RuleDecl]
    risk: dict[str, ValueDecl] | None
    custom: list[CustomDecl]
    account: dict[str, ValueDecl]
    warnings: list[Diagnostic] = field(default_factory=list)
    name_span: Span | None = None
    calendar: Named | None = None    # an exchange calendar's name (`XNYS`), checked by the checker
    timezone: Named | None = None    # an IANA time zone (`Europe/Berlin`), checked by the checker


def load_policy(path: str | Path, display_name: str | None = None) -> ParsedPolicy:
    return parse_policy(read_source(path, display_name))


def parse_policy_text(text: str | bytes, name: str = "<policy>") -> ParsedPolicy:
    raw = text.encode() if isinstance(text, str) else text
    return parse_policy(source_from_bytes(raw, name))


def parse_policy(source: SourceFile) -> ParsedPolicy:
    doc = compose(source)
    if not isinstance(doc.value, dict):
        kind = "a list" if isinstance(doc.value, list) else "a single value"
        raise PolicyError([error("E003", doc.span(()), f"a policy must be a YAML mapping, not {kind}",
                                 "start with `policy: NAME`, `version: 1`, `instruments: [...]`, `signals: [...]`")])
    _symbols_as_text(doc)
    if not _fits("PolicyModel", doc.value):
        from pydantic import ValidationError

        try:
            _model("PolicyModel").model_validate(doc.value)
        except ValidationError as exc:
            raise PolicyError(_structure_errors(exc, doc)) from None
    return _Builder(doc, _filled("PolicyModel", doc.value)).build()


def _symbols_as_text(doc: Positioned) -> None:
    """Instrument symbols and input names are text: `ON` (a ticker that YAML 1.1 reads as true)
    and `7203` (a number) are taken as written."""
    for key in ("instruments", "inputs"):
        items = doc.value.get(key)
        if not isinstance(items, (list, dict)):
            continue
        for i, item in (enumerate(items) if isinstance(items, list) else list(items.items())):
            path, holder = (key, i), items
            if isinstance(item, dict) and "symbol" in item:  # an instrument written as a table
                path, holder, i, item = (key, i, "symbol"), item, "symbol", item["symbol"]
            node = doc.nodes.get(path)
            if isinstance(item, (bool, int, float)) and isinstance(node, yaml.ScalarNode) and node.style is None:
                holder[i] = node.value


def _record_at(path: tuple) -> str | None:
    """The record of SHAPES that describes the mapping at `path` (for 'did you mean')."""
    if not path:
        return "PolicyModel"
    if path == ("risk",):
        return "RiskModel"
    if path == ("account",):
        return "AccountModel"
    if len(path) == 2 and path[0] == "instruments":
        return "InstrumentModel"
    if len(path) == 2 and path[0] == "signals":
        return "SignalModel"
    if len(path) == 4 and path[0] == "signals" and path[2] == "legs":
        return "LegModel"
    if len(path) == 3 and path[:2] == ("risk", "custom"):
        return "CustomRuleModel"
    return None


_UNION_TAGS = ("bool", "int", "float", "str")
_TYPE_WORDS = {
    "int_type": "an integer", "string_type": "text", "list_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping", "bool_type": "true or false", "literal_error": None,
}


def _describe_value(value: Any, text: str | None = None) -> str:
    """`text` is the value as written, for the scalars YAML converts (`yes` is read as true)."""
    if isinstance(value, (bool, int, float)) and text is not None and text != str(value):
        return f"`{text}`"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return f"the text `{value}`"


def _structure_errors(exc, doc: Positioned) -> list[Diagnostic]:
    """The diagnostics of a pydantic ValidationError `exc` of the document `doc`."""
    diags: dict[tuple, Diagnostic] = {}
    errors = [(_document_loc(doc.value, tuple(err["loc"]), err["type"]), err) for err in exc.errors()]
    for loc, err in errors:
        kind = err["type"]
        if kind not in ("missing", "extra_forbidden") and \
                any(len(other) > len(loc) and other[:len(loc)] == loc for other, _ in errors):
            continue  # a union member this value is not: the errors inside the member it is say more
        if kind == "extra_forbidden":
            parent, key = loc[:-1], loc[-1]
            record = _record_at(parent)
            where = "the policy" if not parent else f"`{'.'.join(str(p) for p in parent)}`"
            options = list(SHAPES[record]) if record else []
            help_ = did_you_mean(str(key), options) or (f"valid keys: {', '.join(options)}" if options else None)
            diags.setdefault(loc, error("E004", doc.span(loc, key=True), f"unknown key `{key}` in {where}", help_))
        elif kind == "missing":
            parent, key = loc[:-1], loc[-1]
            where = "the policy" if not parent else f"`{'.'.join(str(p) for p in parent)}`"
            span = doc.span(parent)
            if not parent:
                first_key = next(iter(doc.keys.values()), None)
                span = doc.source.node_span(first_key) if first_key is not None else span
            in_leg = len(parent) >= 2 and parent[-2] == "legs"
            diags.setdefault(loc, error("E006", span, f"missing required key `{key}` in {where}",
                                        _missing_help(str(key), leg=parent[-1] if in_leg else None)))
        else:
            value = _value_at(doc.value, loc)
            if isinstance(value, (dict, list)) or kind in ("dict_type", "list_type", "model_type", "model_attributes_type"):
                code = "E003"
            else:
                code = "E007"
            field = ".".join(str(p) for p in loc) or "the policy"
            if kind == "literal_error":
                expected = err.get("ctx", {}).get("expected", "")
                msg = f"`{field}` must be one of {expected}, not {_describe_value(value)}"
                help_ = did_you_mean(str(value), CUSTOM_ACTIONS)
            else:
                want = _expected_for(loc, kind)
                node = doc.nodes.get(loc)
                text = node.value if isinstance(node, yaml.ScalarNode) and node.style is None else None
                msg = f"`{field}` must be {want}, not {_describe_value(value, text)}"
                help_ = None
                if want == "text" and isinstance(value, (bool, int, float)) and text is not None:
                    reads = "true/false" if isinstance(value, bool) else "a number"
                    help_ = f"YAML reads `{text}` as {reads}: put it in quotes, `\"{text}\"`"
            if loc not in diags:
                diags[loc] = error(code, doc.span(loc), msg, help_)
    # `target` and `legs` are each optional, and a rule needs one of them: its absence is a
    # missing key like any other
    for i, rule in enumerate(_value_at(doc.value, ("signals",)) or []):
        if isinstance(rule, dict) and "target" not in rule and "legs" not in rule:
            diags.setdefault(("signals", i, "target"), _no_target(doc, ("signals", i)))
    # a misspelled required key is one mistake: keep the "did you mean" and drop the "missing"
    for loc, d in list(diags.items()):
        if d.code == "E004" and d.help and d.help.startswith("did you mean"):
            suggested = d.help.split("`")[1]
            diags.pop(loc[:-1] + (suggested,), None)
    return sorted(diags.values(), key=lambda d: (d.span.line, d.span.column))


def _no_target(doc: Positioned, path: tuple) -> Diagnostic:
    """E006 for a rule with neither `target` nor `legs`."""
    return error("E006", doc.span(path), f"missing required key `target` in `{'.'.join(str(p) for p in path)}`",
                 "each rule needs `target: UNITS`, or `legs: {NAME: UNITS, ...}` for several instruments")


def _document_loc(value: Any, loc: tuple, kind: str) -> tuple:
    """A pydantic error's location as a path in the document: pydantic tags each member
    of a union with its type's name (`list[str]`, `InstrumentModel`, `int`), which no key
    of the document is. The last part of a missing or unknown key's location is the key."""
    out = []
    for n, part in enumerate(loc):
        if isinstance(value, dict) and part in value or isinstance(value, list) and isinstance(part, int):
            value = _value_at(value, (part,))
            out.append(part)
        elif kind in ("missing", "extra_forbidden") and n == len(loc) - 1:
            out.append(part)
        elif not (isinstance(part, str) and (part in _UNION_TAGS or "[" in part or part in SHAPES)):
            out.append(part)
            value = None
    return tuple(out)


def _expected_for(loc: tuple, kind: str) -> str:
    name = loc[-1] if loc else ""
    if name == "instruments":
        return "a list of symbols, or a mapping of names to symbols (or to tables with `symbol`)"
    if name in ("inputs", "signals") or kind == "list_type":
        return "a list"
    if name in ("params", "features", "risk", "account") or kind in ("dict_type", "model_type"):
        return "a mapping"
    if name == "version":
        return "an integer"
    if name in ("policy", "description", "name"):
        return "text"
    if len(loc) >= 3 and loc[-2] == "legs":
        return "an expression (the leg's target) or a mapping with `target` (and `limit`)"
    if len(loc) >= 3 and loc[-3] in ("signals", "legs") or (len(loc) == 2 and loc[0] == "features"):
        return "an expression"
    if len(loc) == 2 and loc[0] == "params":
        return "a number or true/false"
    if len(loc) == 3 and loc[0] == "instruments" and loc[2] in CONTRACT_KEYS:
        return "a number or a param"
    if len(loc) == 2 and loc[0] in ("risk", "account"):
        return "a number, a percentage, a duration, true/false or a param"
    if kind in _TYPE_WORDS and _TYPE_WORDS[kind]:
        return _TYPE_WORDS[kind]
    return "a number, true/false or an expression"


def _missing_help(key: str, leg: str | None = None) -> str | None:
    """The help line of a missing key; `leg`: the name of the leg it is missing from."""
    if leg is not None and key == "target":
        return f"each leg needs `target: UNITS`, or the target alone: `{leg}: UNITS`"
    return {
        "policy": "add `policy: my_policy` (lower case, digits and _)",
        "version": "add `version: 1`",
        "instruments": "add `instruments: [SYMBOL]`",
        "signals": "add `signals:` with rules `- when: ... target: ...` (or `signals: []` with `inputs: [intent]`)",
        "when": "each rule needs `when: CONDITION`",
        "target": "each rule needs `target: UNITS`",
    }.get(key)


def _value_at(value: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


class _Builder:
    """Second pass over a structurally valid document: names, literals and expressions."""

    def __init__(self, doc: Positioned, model: SimpleNamespace):
        self.doc = doc
        self.model = model
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def span(self, path, key=False) -> Span:
        return self.doc.span(tuple(path), key=key)

    def expr(self, path: tuple) -> ex.Node | None:
        node = self.doc.nodes[path]
        offsets = scalar_text_offsets(self.doc.source, node)
        src = self.doc.source

        def span_of(lo: int, hi: int) -> Span:
            lo = max(0, min(lo, len(offsets) - 1))
            hi = max(lo + 1, min(hi, len(offsets) - 1))
            return src.span(offsets[lo], offsets[hi - 1] + 1)

        try:
            return ex.parse_expression(node.value, span_of)
        except PolicyError as exc:
            self.errors.extend(exc.diagnostics)
            return None

    def literal(self, path: tuple, value: Any) -> tuple[float | bool, bool] | None:
        """A param default and whether it is written as a percentage: a number, a boolean, or a
        literal like `2%` or `1e-3`, read by the rules of expressions, not by YAML 1.1's (which
        reads `010` as 8, `1_000` and `1:30` as numbers, and `yes`, `no`, `on`, `off` as booleans)."""
        node = self.doc.nodes[path]
        text = node.value
        plain = node.style is None
        if isinstance(value, bool) and plain and not ex.is_boolean_spelling(text):
            self.errors.append(error("E007", self.span(path), f"param `{path[-1]}` must be a number or true/false, "
                                                              f"not `{text}`", ex.boolean_word_help(text)))
            return None
        if isinstance(value, bool):
            return value, False
        if isinstance(value, float) and plain and not math.isfinite(value) and not any(c.isdigit() for c in text):
            self.errors.append(error("E007", self.span(path), f"param `{path[-1]}` must be a finite number, not {value}"))
            return None
        # YAML 1.1 reads a number as the grammar does, except that `010` is octal: use float()
        if isinstance(value, (int, float)) and plain and ex.NUMBER_LITERAL.match(text):
            number = ex.literal_float(float(text), text)
            if number is None:
                self.errors.append(ex.too_large("E007", self.span(path), text))
                return None
            return number, False
        node = self.expr(path)  # everything else is read as an expression: `2%`, `-5`, `1e-3`, `True`
        if node is None:
            return None
        negate = isinstance(node, ex.Unary) and node.op == "-"
        inner = node.operand if negate else node
        if isinstance(inner, ex.Number) and math.isfinite(inner.value):
            return (-inner.value if negate else inner.value), inner.text.endswith("%")
        if isinstance(inner, ex.Boolean) and not negate:
            return inner.value, False
        if isinstance(inner, ex.Duration):
            self.errors.append(ex.misplaced_duration(inner))
            return None
        help_ = "params are constants; derived values belong in `features`"
        if isinstance(inner, ex.Name) and not negate and ex.boolean_word_help(inner.id):
            help_ = ex.boolean_word_help(inner.id)
        self.errors.append(error("E007", self.span(path), f"param `{path[-1]}` must be a number or true/false", help_))
        return None

    def percent_of_quantity(self, key: Key, node: ex.Node):
        """W004 for a `%` literal on a key measured in units, money, orders, events or basis
        points: `max_position: 50%` is half a unit. (A param written with `%` is the checker's
        to warn about, once params are bound.)"""
        unit = key.kind.measure
        if unit is not None and isinstance(node, ex.Number) and node.text.endswith("%"):
            name = key.name
            self.warnings.append(warning("W004", node.span, f"`{name}: {node.text}` is {node.value:g}: `{name}` is "
                                                            f"measured in {unit}, not as a fraction",
                                         f"`%` divides by 100; write the number of {unit}"))

    def name(self, path: tuple, text: str, what: str, pattern=IDENTIFIER, key=False) -> bool:
        if pattern.match(text):
            return True
        rule = "lower case letters, digits and _, starting with a letter" if pattern is POLICY_NAME else \
            "letters, digits and _, not starting with a digit"
        self.errors.append(error("E008", self.span(path, key=key), f"invalid {what} `{text}`", f"use {rule}"))
        return False

    def build(self) -> ParsedPolicy:
        m = self.model
        self.name(("policy",), m.policy, "policy name", POLICY_NAME)
        if m.version < 1:
            self.errors.append(error("E007", self.span(("version",)), f"`version` must be 1 or more, not {m.version}"))
        if not m.instruments:
            self.errors.append(error("E007", self.span(("instruments",)), "`instruments` must list at least one symbol"))
        instruments = self.instruments(m.instruments)
        inputs = self.unique_names("inputs", m.inputs, IDENTIFIER, "input name")
        params = {}
        for key, value in m.params.items():
            if self.name(("params", key), key, "param name", key=True):
                lit = self.literal(("params", key), value)
                if lit is not None:
                    params[key] = ParamDecl(key, self.span(("params", key), key=True), *lit)
        features = {}
        for key in m.features:
            if self.name(("features", key), key, "feature name", key=True):
                node = self.expr(("features", key))
                if node is not None:
                    features[key] = FeatureDecl(key, self.span(("features", key), key=True), node)
        signals = []
        for i, rule in enumerate(m.signals):
            rule_decl = self.rule(i, rule)
            if rule_decl is not None:
                signals.append(rule_decl)
        if not m.signals and "intent" not in m.inputs:
            self.errors.append(error("E210", self.span(("signals",)), "`signals` is empty and there is no `intent` input",
                                     "add a rule, or `inputs: [intent]` to let a model propose targets"))
        risk, custom = None, []
        if m.risk is not None:
            risk = {}
            for key in RISK_KEYS:
                if getattr(m.risk, key) is not None:
                    node = self.expr(("risk", key))
                    if node is not None:
                        risk[key] = ValueDecl(key, node, self.span(("risk", key)))
                        self.percent_of_quantity(RISK_KEYS[key], node)
            seen = set()
            for i, rule in enumerate(m.risk.custom):
                path = ("risk", "custom", i)
                if self.name(path + ("name",), rule.name, "custom rule name") and rule.name in seen:
                    self.errors.append(error("E205", self.span(path + ("name",)), f"custom rule `{rule.name}` is defined twice"))
                seen.add(rule.name)
                when = self.expr(path + ("when",))
                if when is not None:
                    custom.append(CustomDecl(rule.name, when, rule.action, self.span(path)))
        else:
            self.warnings.append(warning("W001", self.span(("policy",), key=True),
                                         "policy has no `risk` section: nothing limits its orders",
                                         "add at least `max_position` and `max_order_qty`"))
        account = {}
        if m.account is not None:
            for key in ACCOUNT_KEYS:
                if getattr(m.account, key) is not None:
                    node = self.expr(("account", key))
                    if node is not None:
                        account[key] = ValueDecl(key, node, self.span(("account", key)))
                        self.percent_of_quantity(ACCOUNT_KEYS[key], node)
        if self.errors:
            raise PolicyError(self.errors)
        return ParsedPolicy(
            source=self.doc.source, name=m.policy, version=m.version, description=m.description,
            instruments=instruments, inputs=inputs, params=params, features=features, signals=signals,
            risk=risk, custom=custom, account=account, warnings=self.warnings,
            name_span=self.span(("policy",)),
            calendar=None if m.calendar is None else Named(m.calendar, self.span(("calendar",))),
            timezone=None if m.timezone is None else Named(m.timezone, self.span(("timezone",))),
        )

    def rule(self, i: int, rule: SimpleNamespace) -> RuleDecl | None:
        """Rule i of `signals`, its expressions parsed; None when one does not parse. A rule
        with both `target` and `legs`, or neither, is E214, and a rule-level `limit`
        beside `legs` too: each leg has its own."""
        path = ("signals", i)
        when = self.expr(path + ("when",))
        written = [(path, _value_at(self.doc.value, path))]
        written += [(path + ("legs", k), v) for k, v in (written[0][1].get("legs") or {}).items() if isinstance(v, dict)]
        nulls = [(where + (key,), key) for where, table in written for key in ("target", "limit", "legs")
                 if key in table and table[key] is None]
        for where, key in nulls:  # an empty value is a mistake, not a key left out
            self.errors.append(error("E007", self.span(where), f"`{'.'.join(str(p) for p in where)}` must be "
                                     f"{'a mapping' if key == 'legs' else 'an expression'}, not nothing (null)",
                                     "write `legs: {NAME: UNITS, ...}`" if key == "legs" else
                                     f"write an expression after `{key}:`, or leave the key out"))
        if nulls:
            return None
        if rule.target is None and rule.legs is None:
            self.errors.append(_no_target(self.doc, path))
            return None
        if rule.target is not None and rule.legs is not None:
            self.errors.append(error("E214", self.span(path + ("legs",), key=True), "a rule has both `target` and `legs`",
                                     "keep `target` for this instrument's order, or `legs` for several instruments' "
                                     "orders"))
            return None
        if rule.legs is None:
            target = self.expr(path + ("target",))
            limit = None if rule.limit is None else self.expr(path + ("limit",))
            if when is None or target is None or (rule.limit is not None and limit is None):
                return None
            return RuleDecl(when, target, self.span(path), limit)
        if rule.limit is not None:
            self.errors.append(error("E214", self.span(path + ("limit",), key=True),
                                     "a rule with `legs` has no `limit` of its own",
                                     "give each leg its own: `legs: {NAME: {target: UNITS, limit: PRICE}}`"))
            return None
        if not rule.legs:
            self.errors.append(error("E214", self.span(path + ("legs",)), "`legs` names no instrument",
                                     "write `legs: {NAME: UNITS, ...}` with the policy's instrument names"))
            return None
        legs, ok = [], when is not None
        for name, leg in rule.legs.items():
            leg_path = path + ("legs", name)
            if isinstance(leg, SimpleNamespace):
                target = self.expr(leg_path + ("target",))
                limit = None if leg.limit is None else self.expr(leg_path + ("limit",))
                ok = ok and target is not None and (leg.limit is None or limit is not None)
            else:
                target, limit = self.expr(leg_path), None
                ok = ok and target is not None
            if ok:
                legs.append(LegDecl(str(name), self.span(leg_path, key=True), target, limit))
        return RuleDecl(when, None, self.span(path), None, legs) if ok else None

    def instruments(self, value: list[str] | dict[str, str | SimpleNamespace]) -> list[InstrumentDecl]:
        """The list form (`[ORCL, NVDA]`: a symbol that is a name is its own alias) or the
        map form (`{bn: "binance:BTCUSDT"}`: alias -> symbol, or alias -> a table of the
        symbol and the contract's settings, `{symbol: "CME:ES", multiplier: 50}`) of
        `instruments`."""
        if isinstance(value, list):
            return [InstrumentDecl(n.name, n.span, n.name if IDENTIFIER.match(n.name) else None)
                    for n in self.unique_names("instruments", value, SYMBOL, "instrument symbol")]
        out, seen = [], {}
        for alias, item in value.items():
            path = ("instruments", alias)
            symbol, contract = item, {}
            if isinstance(item, SimpleNamespace):
                symbol = item.symbol
                for key in CONTRACT_KEYS:
                    if getattr(item, key) is not None:
                        node = self.expr(path + (key,))
                        if node is not None:
                            contract[key] = ValueDecl(key, node, self.span(path + (key,)))
                            self.percent_of_quantity(CONTRACT_KEYS[key], node)
            named = self.name(path, alias, "instrument name", key=True)
            symbol_path = path + ("symbol",) if isinstance(item, SimpleNamespace) else path
            if not (self.name(symbol_path, symbol, "instrument symbol", SYMBOL) and named):
                continue
            if symbol in seen:
                self.errors.append(error("E205", self.span(path), f"`{symbol}` is listed twice in `instruments`",
                                         f"first listed at line {seen[symbol].line}"))
                continue
            seen[symbol] = self.span(path)
            out.append(InstrumentDecl(symbol, self.span(path), alias, contract))
        return out

    def unique_names(self, key: str, values: list[str], pattern, what: str) -> list[Named]:
        out, seen = [], {}
        for i, text in enumerate(values):
            path = (key, i)
            if not self.name(path, text, what, pattern):
                continue
            if text in seen:
                self.errors.append(error("E205", self.span(path), f"`{text}` is listed twice in `{key}`",
                                         f"first listed at line {seen[text].line}"))
                continue
            seen[text] = self.span(path)
            out.append(Named(text, self.span(path)))
        return out
