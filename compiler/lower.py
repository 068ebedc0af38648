"""Lowering: a checked policy's ASTs -> IR operations.

Sugar becomes primitives here: `crosses_above(a, b)` is `a > b and a[1] <= b[1]`,
`zscore`, `change`, `returns`, `log_return` and `atr` are built from smaller ops, so
the optimiser and both back ends see a small, regular instruction set.

The event columns are the market fields the policy reads, then its inputs; a policy with
a rule's or a leg's `limit` also has the quote (`bid`, `ask`) its IOC orders fill
against, read or not (`Program.optional_columns` those it does not read).
"""
from __future__ import annotations

from policyc.dsl import expressions as ex
from policyc.dsl.diagnostics import PolicyError, error
from policyc.dsl.risk_keys import RISK_KEYS

from . import layout as L
from .builtins import (BOOL, FUNCTIONS, INSTRUMENT_STATE, MARKET_FIELDS, NUM, SESSION_FUNCTIONS, STATE_VALUES, TIME,
                       TIMESTAMP)
from .check import CheckedPolicy
from .ir import Op, Program


class _Lowerer:
    def __init__(self, checked: CheckedPolicy):
        self.c = checked
        self.ops: list[Op] = []
        self.params = list(checked.params)
        # a rule's or a leg's `limit` makes IOC orders, which a backtest fills against the
        # data's quote whenever the data has one: the sides the policy does not read are
        # optional columns (an intent's limit price comes with an intent event, never from
        # a data file, so intents add none)
        limited = any(r.limit is not None or any(leg.limit is not None for leg in r.legs or ())
                      for r in checked.parsed.signals)
        self.optional = tuple(side for side in L.QUOTE_SIDES if side not in checked.fields) if limited else ()
        fields = [f for f in MARKET_FIELDS if f in checked.fields or f in self.optional]
        self.columns = fields + list(checked.inputs)
        self.feature_ops: dict[str, int] = {}
        self.pending_lags: list[tuple[int, str]] = []  # lag ops whose source is a later feature
        # a policy of one instrument reads its own values through references: no cross ops
        self.single = len(checked.instruments) == 1

    def emit(self, kind, args=(), attr=(), type_=NUM, span=None) -> int:
        self.ops.append(Op(kind, tuple(args), tuple(attr), type_, span))
        return len(self.ops) - 1

    def int_spec(self, node: ex.Node) -> tuple:
        if isinstance(node, ex.Number):
            return ("const", int(node.value))
        return ("param", self.params.index(node.id))

    def bound(self, spec: tuple) -> int:
        return spec[1] if spec[0] == "const" else int(self.c.params[self.params[spec[1]]])

    def const(self, value, span=None) -> int:
        return self.emit("const", (), (value,), BOOL if isinstance(value, bool) else NUM, span)

    def lag(self, source: int, spec: tuple, span) -> int:
        if spec == ("const", 0):
            return source
        return self.emit("lag", (source,), (spec,), self.ops[source].type, span)

    def lower(self, node: ex.Node) -> int:
        s = node.span
        if isinstance(node, ex.Number):
            return self.const(float(node.value), s)
        if isinstance(node, ex.Boolean):
            return self.const(bool(node.value), s)
        if isinstance(node, ex.Name):
            return self.name(node)
        if isinstance(node, ex.Ref):
            return self.ref(node)
        if isinstance(node, ex.Lookback):
            spec = self.int_spec(node.k)
            target = node.target
            if isinstance(target, ex.Ref) and not self.single:
                return self.cross_lag(target, spec, s)
            if isinstance(target, (ex.Name, ex.Ref)) and target.id in self.c.parsed.features \
                    and target.id not in self.feature_ops:
                op = self.emit("lag", (-1,), (spec,), self.c.feature_types[target.id], s)
                self.pending_lags.append((op, target.id))
                return op
            pending = [n.id for n in ex.walk(target) if isinstance(n, (ex.Name, ex.Ref))
                       and n.id in self.c.parsed.features and n.id not in self.feature_ops]
            if pending:
                raise PolicyError([error("E208", s, f"this lookback reads feature `{pending[0]}`, which depends on it",
                                         f"write the lookback on the feature itself, e.g. `{pending[0]}[{ex.pretty(node.k)}]`")])
            return self.lag(self.lower(target), spec, s)
        if isinstance(node, ex.Unary):
            a = self.lower(node.operand)
            return self.emit("not" if node.op == "not" else "neg", (a,), (), BOOL if node.op == "not" else NUM, s)
        if isinstance(node, ex.Binary):
            a, b = self.lower(node.left), self.lower(node.right)
            if node.op in ex.LOGICAL:
                return self.emit(node.op, (a, b), (), BOOL, s)
            if node.op in ex.COMPARISONS:
                return self.emit("cmp", (a, b), (node.op,), BOOL, s)
            return self.emit("arith", (a, b), (node.op,), NUM, s)
        if isinstance(node, ex.Cond):
            c, a, b = self.lower(node.test), self.lower(node.then), self.lower(node.orelse)
            return self.emit("select", (c, a, b), (), self.ops[a].type, s)
        if isinstance(node, ex.Call):
            return self.call(node)
        raise TypeError(node)

    def name(self, node: ex.Name) -> int:
        n, s = node.id, node.span
        if n in self.c.params:
            return self.emit("param", (), (self.params.index(n),), self.c.param_types[n], s)
        if n in self.c.parsed.features:
            return self.feature_ops[n]
        if n in self.columns:
            return self.emit("field", (), (self.columns.index(n),), NUM, s)
        if n in STATE_VALUES:
            return self.emit("state", (), (n,), NUM, s)
        if n == TIMESTAMP:
            return self.emit("ts", (), (), TIME, s)
        raise AssertionError(f"unresolved name {n}")  # the checker resolves every name

    def ref_source(self, node: ex.Ref) -> int:
        """The op of `node.id` as the event's own instrument computes it."""
        return self.name(ex.Name(node.span, node.id))

    def ref(self, node: ex.Ref) -> int:
        """`X.name`: the event's own value when X is its instrument, else X's as of its
        latest market event (`ref`), or X's state now (`xstate`)."""
        if self.single:
            return self.ref_source(node)
        x, s = self.c.aliases[node.instrument], node.span
        if node.id in INSTRUMENT_STATE:
            return self.emit("xstate", (), (node.id, x), NUM, s)
        source = self.ref_source(node)
        return self.emit("ref", (source,), (x,), self.ops[source].type, s)

    def cross_lag(self, node: ex.Ref, spec: tuple, span) -> int:
        """`X.name[k]`: X's value k of X's market events before its latest (`xlag`)."""
        x = self.c.aliases[node.instrument]
        if spec == ("const", 0):
            return self.ref(node)
        if node.id in self.c.parsed.features and node.id not in self.feature_ops:
            op = self.emit("xlag", (-1,), (x, spec), self.c.feature_types[node.id], span)
            self.pending_lags.append((op, node.id))
            return op
        source = self.ref_source(node)
        return self.emit("xlag", (source,), (x, spec), self.ops[source].type, span)

    def field(self, name: str, span) -> int:
        return self.emit("field", (), (self.columns.index(name),), NUM, span)

    def call(self, node: ex.Call) -> int:
        f, s = node.func, node.span
        if f in ("sma", "ema", "rma", "wma", "stdev", "variance", "sum", "highest", "lowest", "rsi"):
            x = self.lower(node.args[0])
            return self.emit("moving", (x,), (f, self.int_spec(node.args[1])), NUM, s)
        if f == "zscore":
            x = self.lower(node.args[0])
            spec = self.int_spec(node.args[1])
            mean = self.emit("moving", (x,), ("sma", spec), NUM, s)
            dev = self.emit("moving", (x,), ("stdev", spec), NUM, s)
            diff = self.emit("arith", (x, mean), ("-",), NUM, s)
            return self.emit("arith", (diff, dev), ("/",), NUM, s)
        if f == "atr":
            high, low, close = self.field("high", s), self.field("low", s), self.field("close", s)
            prev_close = self.lag(close, ("const", 1), s)
            ranges = (
                self.emit("arith", (high, low), ("-",), NUM, s),
                self.emit("call", (self.emit("arith", (high, prev_close), ("-",), NUM, s),), ("abs",), NUM, s),
                self.emit("call", (self.emit("arith", (low, prev_close), ("-",), NUM, s),), ("abs",), NUM, s),
            )
            true_range = self.emit("call", ranges, ("max",), NUM, s)
            return self.emit("moving", (true_range,), ("rma", self.int_spec(node.args[0])), NUM, s)
        if f in ("change", "returns", "log_return"):
            x = self.lower(node.args[0])
            spec = self.int_spec(node.args[1]) if len(node.args) > 1 else ("const", 1)
            past = self.lag(x, spec, s)
            if f == "change":
                return self.emit("arith", (x, past), ("-",), NUM, s)
            ratio = self.emit("arith", (x, past), ("/",), NUM, s)
            if f == "returns":
                return self.emit("arith", (ratio, self.const(1.0, s)), ("-",), NUM, s)
            return self.emit("call", (ratio,), ("log",), NUM, s)
        if f in ("crosses_above", "crosses_below"):
            a, b = self.lower(node.args[0]), self.lower(node.args[1])
            a1, b1 = self.lag(a, ("const", 1), s), self.lag(b, ("const", 1), s)
            now_op, then_op = (">", "<=") if f == "crosses_above" else ("<", ">=")
            now = self.emit("cmp", (a, b), (now_op,), BOOL, s)
            then = self.emit("cmp", (a1, b1), (then_op,), BOOL, s)
            return self.emit("and", (now, then), (), BOOL, s)
        if f == "bars_since":
            return self.emit("bars_since", (self.lower(node.args[0]),), (), NUM, s)
        if f in SESSION_FUNCTIONS:  # read from the event's clock row, not computed from arguments
            return self.emit("session", (), (f,), FUNCTIONS[f].result, s)
        if f == "age":
            return self.emit("age", (), (self.c.aliases[node.args[0].id],), NUM, s)
        args = [self.lower(a) for a in node.args]
        return self.emit("call", args, (f,), BOOL if f == "is_nan" else NUM, s)


def lower(checked: CheckedPolicy) -> Program:
    lw = _Lowerer(checked)
    for name in checked.feature_order:
        lw.feature_ops[name] = lw.lower(checked.parsed.features[name].expr)
    for op_index, feature in lw.pending_lags:
        old = lw.ops[op_index]
        lw.ops[op_index] = Op(old.kind, (lw.feature_ops[feature],), old.attr, old.type, old.span)
    rules = []
    for r, legs in zip(checked.parsed.signals, checked.rule_legs):
        when = lw.lower(r.when)
        if r.legs is None:
            rules.append((when, lw.lower(r.target), None if r.limit is None else lw.lower(r.limit), ()))
        else:
            rules.append((when, None, None, tuple((x, lw.lower(leg.target), None if leg.limit is None else
                                                   lw.lower(leg.limit)) for x, leg in zip(legs, r.legs))))
    custom = [(r.name, r.action, lw.lower(r.when)) for r in checked.parsed.custom]
    volatility = None
    if "max_volatility" in checked.risk:
        decl = (checked.parsed.risk or {}).get("volatility_window")
        if decl is not None and isinstance(decl.expr, ex.Name):
            window = ("param", lw.params.index(decl.expr.id))
        else:
            window = ("const", int(checked.risk.get("volatility_window", RISK_KEYS["volatility_window"].default)))
        price = lw.field("price", None)
        past = lw.lag(price, ("const", 1), None)
        ratio = lw.emit("arith", (price, past), ("/",))
        ret = lw.emit("arith", (ratio, lw.const(1.0)), ("-",))
        volatility = lw.emit("moving", (ret,), ("stdev", window))
    intent = lw.columns.index("intent") if "intent" in lw.columns else None
    parsed = checked.parsed
    clock = None
    if parsed.calendar is not None or parsed.timezone is not None:
        clock = (parsed.calendar and parsed.calendar.name, parsed.timezone and parsed.timezone.name)
    return Program(lw.ops, dict(lw.feature_ops), rules, custom, volatility, lw.params, lw.columns, intent, clock,
                   lw.optional)
