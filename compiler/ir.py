"""The IR: a flat list of SSA operations, each keeping the span of the source it came from.

Operations are evaluated in list order on every market event of an instrument. The one
exception to "arguments come first" is `lag`, which reads the *history* of its argument
(values from earlier events), so a `lag` may name an operation later in the list: that
is how a feature refers to its own past (`peak: max(nz(peak[1], close), close)`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from policyc.dsl.diagnostics import Span

from .builtins import BOOL, NUM, TIME

#: Operation kinds and their attributes:
#:   const   (value,)                 a number or bool
#:   param   (index,)                 a kernel argument: new values never recompile
#:   field   (column,)                a column of the event (market field or input)
#:   state   (name,)                  account state value, as of just before the decision
#:   ts      ()                       the event's timestamp (integer ns)
#:   neg, not                         unary
#:   arith   (op,)                    + - * / **
#:   cmp     (op,)                    < <= > >= == != (false on NaN)
#:   and, or                          bool
#:   select                           (test, then, else)
#:   call    (name,)                  pure functions: abs, log, min, max, clip, nz, hour, ...
#:   moving  (name, window)           sma ema rma wma stdev variance sum highest lowest rsi
#:   bars_since                       events since the argument was last true
#:   lag     (k,)                     the argument k events ago (k >= 1)
#:   ref     (x,)                     instrument x's value of the argument as of x's latest
#:                                    market event: the argument itself on x's own events
#:   xlag    (x, k)                   instrument x's value of the argument k of x's market
#:                                    events before its latest (k >= 1; a lag on x's events)
#:   xstate  (name, x)                instrument x's state value `name` now (position, ...)
#:   age     (x,)                     seconds from x's latest market event to the event
#: A window or k is ("const", n) or ("param", index); a history length may also be
#: ("param", index, extra): the param's value plus `extra`.
PURE_CALLS = ("abs", "log", "exp", "sqrt", "sign", "floor", "ceil", "round", "min", "max", "clip", "nz",
              "is_nan", "hour", "minute_of_day", "day_of_week")
MOVING = ("sma", "ema", "rma", "wma", "stdev", "variance", "sum", "highest", "lowest", "rsi")


@dataclass(frozen=True)
class Op:
    kind: str
    args: tuple = ()
    attr: tuple = ()
    type: str = NUM
    span: Span | None = field(default=None, compare=False)

    def key(self) -> tuple:
        """Identity for sharing: `0.0 == -0.0` in Python, but they are different constants."""
        attr = tuple((a, math.copysign(1.0, a)) if isinstance(a, float) else a for a in self.attr)
        return (self.kind, self.args, attr, self.type)


@dataclass
class Program:
    """Operations plus the named outputs the kernel must produce."""

    ops: list[Op]
    features: dict[str, int]                 # feature name -> op
    #: in rule order, (when, target, limit, legs): a rule for the event's instrument has
    #: its target op, its limit op (None: market orders) and no legs; a multi-leg rule has
    #: target and limit None and legs ((instrument, target, limit), ...) in the order written
    rules: list[tuple]
    custom: list[tuple[str, str, int]]       # (name, action, when)
    volatility: int | None                   # op of the max_volatility brake, if any
    params: list[str]                        # kernel param vector order
    columns: list[str]                       # event value columns: market fields, then inputs
    intent_column: int | None = None
    clock: tuple[str | None, str | None] | None = None  # (calendar, timezone) when the policy names either
    #: columns of `columns` the policy does not read, which data may lack (NaN then): the
    #: quote (`bid`, `ask`) an IOC order fills against, in a policy with a rule's or a leg's `limit`
    optional_columns: tuple[str, ...] = ()

    def outputs(self) -> list[int]:
        out = list(self.features.values())
        for when, target, limit, legs in self.rules:
            out += [x for x in (when, target, limit) if x is not None]
            out += [x for _, t, lim in legs for x in (t, lim) if x is not None]
        out += [when for _, _, when in self.custom]
        if self.volatility is not None:
            out.append(self.volatility)
        return out

    def with_ops(self, ops: list[Op], mapping: dict[int, int]) -> "Program":
        return Program(
            ops=ops,
            features={k: mapping[v] for k, v in self.features.items()},
            rules=[(mapping[w], _mapped(mapping, t), _mapped(mapping, lim),
                    tuple((x, mapping[lt], _mapped(mapping, ll)) for x, lt, ll in legs))
                   for w, t, lim, legs in self.rules],
            custom=[(n, a, mapping[w]) for n, a, w in self.custom],
            volatility=None if self.volatility is None else mapping[self.volatility],
            params=self.params, columns=self.columns, intent_column=self.intent_column, clock=self.clock,
            optional_columns=self.optional_columns,
        )

    def uses_limits(self) -> bool:
        """Whether a rule has a limit price or legs: the kernel then keeps each desired
        target's limit, and fills IOC orders."""
        return any(limit is not None or legs for _, _, limit, legs in self.rules)

    def leg_partners(self) -> dict[int, tuple[int, ...]]:
        """Each leg -> the legs (itself among them) of the multi-leg rules it is a leg of,
        in index order: the legs that move together with it."""
        return {x: tuple(sorted({y for *_, legs in self.rules if any(x == z for z, _, _ in legs)
                                 for y, _, _ in legs})) for x in self.leg_set()}

    def leg_set(self) -> tuple[int, ...]:
        """The instruments that are a leg of some multi-leg rule, in index order."""
        return tuple(sorted({x for *_, legs in self.rules for x, _, _ in legs}))

    def history_sources(self) -> dict[int, list[tuple]]:
        """Ops whose past values are read, with every k they are read at."""
        out: dict[int, list[tuple]] = {}
        for op in self.ops:
            if op.kind == "lag":
                out.setdefault(op.args[0], []).append(op.attr[0])
            elif op.kind == "xlag":  # read after the other instrument's own push: one more
                kind, value = op.attr[1]
                out.setdefault(op.args[0], []).append(("const", value + 1) if kind == "const" else (kind, value, 1))
        return out

    def published_sources(self) -> list[int]:
        """Ops whose value each instrument keeps as of its latest market event, for `ref`."""
        return sorted({op.args[0] for op in self.ops if op.kind == "ref"})

    def dump(self) -> str:
        """A readable listing, one op a line (used by `explain` and golden tests)."""
        lines = []
        names = {v: k for k, v in self.features.items()}
        for i, op in enumerate(self.ops):
            args = ", ".join(f"%{a}" for a in op.args)
            attr = ", ".join(_attr_text(a, self.params) for a in op.attr)
            body = f"{op.kind}({', '.join(x for x in (attr, args) if x)})"
            label = f"  # {names[i]}" if i in names else ""
            lines.append(f"%{i}: {op.type} = {body}{label}")
        return "\n".join(lines)


def _mapped(mapping: dict[int, int], op: int | None) -> int | None:
    return None if op is None else mapping[op]


def _attr_text(a, params) -> str:
    if isinstance(a, tuple) and len(a) == 2 and a[0] in ("const", "param"):
        return str(a[1]) if a[0] == "const" else params[a[1]]
    if isinstance(a, tuple) and len(a) == 3 and a[0] == "param":
        return f"{params[a[1]]}+{a[2]}"
    if isinstance(a, float):
        return repr(a)
    return str(a)


def resolve_int(spec: tuple, params: list) -> int:
    """A window, lookback or history length under bound param values."""
    kind, value, *extra = spec
    return int(value) if kind == "const" else int(params[value]) + sum(extra)


__all__ = ["Op", "Program", "PURE_CALLS", "MOVING", "NUM", "BOOL", "TIME", "resolve_int"]
