"""Name resolution, type checking, param binding and feature ordering.

`check(parsed, overrides)` turns a parsed policy into a `CheckedPolicy` whose every name
is resolved, every expression typed, every window and lookback bound to an integer in
range, and whose features are in dependency order. It imports no Numba: `validate`
runs exactly this.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from functools import cached_property

from policyc.dsl import expressions as ex
from policyc.dsl.diagnostics import Diagnostic, PolicyError, Span, did_you_mean, error, warning
from policyc.dsl.document import ParsedPolicy, ValueDecl
from policyc.dsl.risk_keys import ACCOUNT_KEYS, BOOLEAN, CONTRACT_KEYS, DURATION, FRACTION, RISK_KEYS, Key

from .builtins import (BOOL, FUNCTIONS, INSTRUMENT_STATE, MARKET_FIELDS, MAX_LOOKBACK, MAX_WINDOW, NUM, RESERVED,
                       SESSION_FUNCTIONS, STATE_VALUES, TIME, TIMESTAMP)

COMMAND_LINE = "<command line>"

#: Functions whose result is one of their arguments (or rounds it): a percentage passed to
#: them is still the value (`target: min(size, 100)`).
_PASS_THROUGH = {"min", "max", "clip", "nz", "round", "floor", "ceil", "abs"}


@dataclass
class CheckedPolicy:
    parsed: ParsedPolicy
    params: dict[str, float | bool]
    param_types: dict[str, str]
    feature_types: dict[str, str]
    feature_order: list[str]
    fields: list[str]                  # market fields read, in MARKET_FIELDS order
    inputs: list[str]
    risk: dict[str, float]             # bound limits; durations in seconds, bools 1.0/0.0
    account: dict[str, float]
    warnings: list[Diagnostic] = field(default_factory=list)
    #: per instrument, the contract settings the policy gives (CONTRACT_KEYS), bound
    contracts: list[dict[str, float]] = field(default_factory=list)
    #: per rule of `signals`, the instrument index of each of its legs in the order
    #: written (empty for a rule with `target`)
    rule_legs: list[tuple[int, ...]] = field(default_factory=list)

    @cached_property
    def leg_set(self) -> tuple[int, ...]:
        """The instruments that are a leg of some multi-leg rule, in index order: the ones
        `max_leg_imbalance` nets."""
        return tuple(sorted({x for legs in self.rule_legs for x in legs}))

    @property
    def name(self) -> str:
        return self.parsed.name

    @cached_property
    def instruments(self) -> list[str]:
        """Computed once: the live runtime reads it per decision, with up to thousands of names."""
        return [i.name for i in self.parsed.instruments]

    @cached_property
    def contract_table(self) -> list[tuple[float, float]]:
        """Per instrument, (multiplier, tick size): money per point of price per unit held
        (1 when not given) and the price step (NaN when not given: no rounding)."""
        given = self.contracts or [{} for _ in self.instruments]
        return [(c.get("multiplier", CONTRACT_KEYS["multiplier"].default), c.get("tick_size", math.nan))
                for c in given]

    @cached_property
    def aliases(self) -> dict[str, int]:
        """The name expressions call each instrument by (`cb` in `cb.bid`) -> its index."""
        return {i.alias: k for k, i in enumerate(self.parsed.instruments) if i.alias is not None}


def parse_param_value(text: str) -> float | bool | None:
    """A param value from the command line: a number, a percentage, or true/false, written as
    in a policy file (`-p size=1_000` is refused as `size: 1_000` is)."""
    t = text.strip()
    if ex.is_boolean_spelling(t):
        return t.lower() == "true"
    number = t[:-1] if t.endswith("%") else t
    if ex.NUMBER_LITERAL.match(number):
        return float(number) / 100.0 if t.endswith("%") else float(number)
    try:
        value = float(t)
    except ValueError:
        return None
    return value if not math.isfinite(value) else None  # `inf`, `nan`: reported as not finite


def _override_help(raw, boolean: bool) -> str:
    """How to write a param value on the command line, from the expression parser's help."""
    text = str(raw)
    if boolean:
        return ex.boolean_word_help(text.strip()) or "write `true` or `false`"
    try:
        ex.parse_expression(text, lambda lo, hi: Span(COMMAND_LINE, 1, lo + 1, 1, hi + 1))
    except PolicyError as exc:
        if exc.diagnostics[0].help and exc.diagnostics[0].code == "E101":
            return exc.diagnostics[0].help
    return "write a number such as `10`, `2.5` or `2%`"


def percent_params(parsed: ParsedPolicy, overrides: dict | None) -> set[str]:
    """The params whose bound value was written as a percentage (default or override)."""
    out = {name for name, decl in parsed.params.items() if decl.percent}
    for name, raw in (overrides or {}).items():
        if name in parsed.params:
            out.discard(name)
            if isinstance(raw, str) and raw.strip().endswith("%"):
                out.add(name)
    return out


def bind_params(parsed: ParsedPolicy, overrides: dict[str, str | float | bool] | None) -> dict[str, float | bool]:
    """Defaults with overrides applied; unknown names and wrong types are E301."""
    values = {name: decl.value for name, decl in parsed.params.items()}
    errors = []
    for name, raw in (overrides or {}).items():
        where = Span(COMMAND_LINE, 1, 1, 1, len(f"{name}={raw}") + 1)
        if name not in values:
            hint = did_you_mean(name, values) or (f"params of this policy: {', '.join(values)}" if values
                                                 else "this policy declares no params")
            errors.append(error("E301", where, f"unknown param `{name}`", hint))
            continue
        value = raw if isinstance(raw, (bool, int, float)) else parse_param_value(str(raw))
        if value is None or isinstance(value, bool) != isinstance(values[name], bool):
            boolean = isinstance(values[name], bool)
            want = "true or false" if boolean else "a number"
            errors.append(error("E301", where, f"param `{name}` must be {want}, not `{raw}`",
                                _override_help(raw, boolean)))
            continue
        if not isinstance(value, bool):
            value = ex.literal_float(value, str(raw))
            if value is None:
                errors.append(ex.too_large("E301", where, str(raw), f"param `{name}`: "))
                continue
            if not math.isfinite(value):  # a param is a finite number, as in the file
                errors.append(error("E301", where, f"param `{name}` must be a finite number, not `{raw}`"))
                continue
        values[name] = value
    if errors:
        raise PolicyError(errors)
    return values


class _Checker:
    def __init__(self, parsed: ParsedPolicy, params: dict[str, float | bool], percent: set[str] = frozenset()):
        self.p = parsed
        self.params = params
        self.percent = percent  # params written as a percentage
        self.warnings: list[Diagnostic] = []
        self.param_types = {k: BOOL if isinstance(v, bool) else NUM for k, v in params.items()}
        self.inputs = [i.name for i in parsed.inputs]
        self.aliases = {i.alias: k for k, i in enumerate(parsed.instruments) if i.alias is not None}
        self.errors: list[Diagnostic] = []
        self.feature_types: dict[str, str] = {}
        self._typing: set[str] = set()
        self.fields: set[str] = {"price"}
        self.uses: dict[str, set[str]] = {}      # feature -> features it reads (any lookback)
        self.edges: dict[str, set[str]] = {}     # feature -> features it reads at lookback 0

    # ---- names -------------------------------------------------------------------
    def check_definitions(self):
        kinds: dict[str, tuple[str, Span]] = {}
        decls = [("param", d.name, d.span) for d in self.p.params.values()]
        decls += [("input", d.name, d.span) for d in self.p.inputs]
        decls += [("feature", d.name, d.span) for d in self.p.features.values()]
        for kind, name, span in decls:
            if ex.is_boolean_spelling(name) and name not in RESERVED:
                self.errors.append(error("E205", span, f"{kind} `{name}` clashes with the boolean `{name.lower()}`",
                                         f"rename the {kind}: expressions read `{name}` as `{name.lower()}`"))
            elif name in RESERVED:
                what = "function" if name in FUNCTIONS else "built-in name"
                self.errors.append(error("E205", span, f"{kind} `{name}` clashes with the {what} `{name}`",
                                         f"rename the {kind}, e.g. `my_{name}`"))
            elif name in kinds:
                other, other_span = kinds[name]
                self.errors.append(error("E205", span, f"`{name}` is defined twice: as a {other} and as a {kind}",
                                         f"the {other} is defined at line {other_span.line}"))
            else:
                kinds[name] = (kind, span)

    def all_names(self) -> list[str]:
        return [*self.params, *self.inputs, *self.p.features, *MARKET_FIELDS, *STATE_VALUES, TIMESTAMP]

    # ---- integer arguments ---------------------------------------------------------
    def integer_arg(self, node: ex.Node, what: str, lo: int, hi: int) -> int | None:
        if isinstance(node, ex.Number):
            value, source = node.value, "literal"
        elif isinstance(node, ex.Name) and node.id in self.params and self.param_types[node.id] == NUM:
            value, source = self.params[node.id], f"param `{node.id}`"
        elif isinstance(node, ex.Name) and node.id in self.params:
            self.errors.append(error("E206", node.span, f"{what} must be a whole number, but param `{node.id}` is true/false"))
            return None
        elif isinstance(node, ex.Unary) and node.op == "-" and isinstance(node.operand, ex.Number):
            self.errors.append(error("E207", node.span, f"{what} cannot be negative",
                                     "a lookback counts events back from now: `x[1]` is the previous value"))
            return None
        elif isinstance(node, ex.Duration):
            self.errors.append(ex.misplaced_duration(node))
            return None
        elif isinstance(node, ex.Name) and node.id not in self.all_names():
            self.errors.append(error("E201", node.span, f"unknown name `{node.id}` in {what}",
                                     did_you_mean(node.id, self.params) or "windows and lookbacks are literals or params"))
            return None
        else:
            self.errors.append(error("E206", node.span, f"{what} must be an integer literal or a param",
                                     "computed windows and lookbacks are not allowed; declare a param"))
            return None
        if isinstance(value, bool) or not math.isfinite(value) or value != int(value) or not lo <= value <= hi:
            shown = int(value) if math.isfinite(value) and value == int(value) else value
            self.errors.append(error("E207", node.span, f"{what} is {shown} ({source}); it must be an integer from {lo} to {hi:,}",
                                     self.percent_help(node, value)))
            return None
        return int(value)

    # ---- types -----------------------------------------------------------------------
    def type_of(self, node: ex.Node, owner: str | None, lookback: int = 0) -> str | None:
        """Type of an expression; records names read by feature `owner`."""
        if isinstance(node, ex.Number):
            return NUM
        if isinstance(node, ex.Boolean):
            return BOOL
        if isinstance(node, ex.Duration):
            self.errors.append(ex.misplaced_duration(node))
            return None
        if isinstance(node, ex.Name):
            return self.name_type(node, owner, lookback)
        if isinstance(node, ex.Ref):
            return self.ref_type(node, owner, lookback)
        if isinstance(node, ex.Lookback):
            k = self.integer_arg(node.k, "a lookback", 0, MAX_LOOKBACK)
            t = self.type_of(node.target, owner, lookback + (k or 0) if k is not None else lookback + 1)
            if t == TIME:
                self.errors.append(error("E204", node.span, "`ts` has no lookback"))
                return None
            return t
        if isinstance(node, ex.Unary):
            t = self.type_of(node.operand, owner, lookback)
            want = BOOL if node.op == "not" else NUM
            self.expect(node.operand, t, want, f"`{node.op}`")
            return want
        if isinstance(node, ex.Binary):
            return self.binary_type(node, owner, lookback)
        if isinstance(node, ex.Cond):
            self.expect(node.test, self.type_of(node.test, owner, lookback), BOOL, "`if`")
            a, b = self.type_of(node.then, owner, lookback), self.type_of(node.orelse, owner, lookback)
            if a and b and a != b:
                self.errors.append(error("E204", node.span, f"the branches of `if` have different types: {a} and {b}",
                                         "both `then` and `else` must be numbers, or both true/false"))
            if TIME in (a, b):
                self.errors.append(error("E204", node.span, "`ts` can only be passed to hour, minute_of_day or day_of_week"))
            return a or b
        if isinstance(node, ex.Call):
            return self.call_type(node, owner, lookback)
        raise TypeError(node)

    def expect(self, node: ex.Node, got: str | None, want: str, context: str):
        if got is None or got == want:
            return
        if got == TIME:
            self.errors.append(error("E204", node.span, "`ts` can only be passed to hour, minute_of_day or day_of_week"))
            return
        words = {NUM: "a number", BOOL: "true/false", TIME: "the timestamp `ts`"}
        help_ = None
        if want == BOOL and got == NUM:
            help_ = "compare it, e.g. `x > 0`"
        elif want == NUM and got == BOOL:
            help_ = "use `if c then 1 else 0` to turn a condition into a number"
        self.errors.append(error("E204", node.span, f"{context} needs {words[want]}, but this is {words[got]}", help_))

    def binary_type(self, node: ex.Binary, owner, lookback) -> str | None:
        lt, rt = self.type_of(node.left, owner, lookback), self.type_of(node.right, owner, lookback)
        if node.op in ex.LOGICAL:
            self.expect(node.left, lt, BOOL, f"`{node.op}`")
            self.expect(node.right, rt, BOOL, f"`{node.op}`")
            return BOOL
        if node.op in ex.COMPARISONS:
            if node.op in ("==", "!=") and lt == rt == BOOL:
                return BOOL
            self.expect(node.left, lt, NUM, f"`{node.op}`")
            self.expect(node.right, rt, NUM, f"`{node.op}`")
            return BOOL
        self.expect(node.left, lt, NUM, f"`{node.op}`")
        self.expect(node.right, rt, NUM, f"`{node.op}`")
        return NUM

    def name_type(self, node: ex.Name, owner, lookback) -> str | None:
        name = node.id
        if name in self.params:
            return self.param_types[name]
        if name in self.inputs:
            return NUM
        if name in self.p.features:
            return self.read_feature(name, owner, lookback)
        if name in MARKET_FIELDS:
            self.fields.add(name)
            return NUM
        if name in STATE_VALUES:
            return NUM
        if name == TIMESTAMP:
            return TIME
        if name in FUNCTIONS:
            self.errors.append(error("E201", node.span, f"`{name}` is a function, not a value",
                                     f"call it: `{name}({', '.join(FUNCTIONS[name].params)})`"))
            return None
        self.errors.append(error("E201", node.span, f"unknown name `{name}`",
                                 ex.boolean_word_help(name) or _time_help(name) or did_you_mean(name, self.all_names())
                                 or _name_help(name)))
        return None

    def read_feature(self, name: str, owner, lookback) -> str | None:
        """The type of feature `name`, read by feature `owner` (None: a rule) at `lookback`."""
        if owner is not None:
            self.uses.setdefault(owner, set()).add(name)
            if lookback == 0:
                self.edges.setdefault(owner, set()).add(name)
        return self.feature_type(name)

    def leg_instrument(self, key: str, span: Span) -> int | None:
        """The index of the instrument a leg's key names (its name, or its symbol), or
        None after an E215."""
        if key in self.aliases:
            return self.aliases[key]
        symbols = {i.name: k for k, i in enumerate(self.p.instruments)}
        if key in symbols:
            return symbols[key]
        names = list(self.aliases) + [i.name for i in self.p.instruments]
        self.errors.append(error("E215", span, f"leg `{key}` is not an instrument of the policy",
                                 did_you_mean(key, names) or
                                 f"the policy's instruments are {', '.join(f'`{n}`' for n in dict.fromkeys(names))}"))
        return None

    def instrument(self, alias: str, span: Span) -> int | None:
        """The index of the instrument expressions call `alias`, or None after an E212."""
        if alias in self.aliases:
            return self.aliases[alias]
        listed = ", ".join(f"`{a}`" for a in self.aliases) or "none"
        unnamed = [i.name for i in self.p.instruments if i.alias is None]
        help_ = did_you_mean(alias, self.aliases)
        if help_ is None and unnamed:
            help_ = (f"`{unnamed[0]}` is not a name: write `instruments` as a map of names to symbols, "
                     f"e.g. `instruments: {{x: \"{unnamed[0]}\"}}`, and read it as `x.close`")
        elif help_ is None and alias in self.all_names():
            help_ = f"`{alias}` is a value, not an instrument; the policy's instruments are {listed}"
        elif help_ is None:
            help_ = f"the policy's instruments are {listed}"
        self.errors.append(error("E212", span, f"unknown instrument `{alias}`", help_))
        return None

    def ref_type(self, node: ex.Ref, owner, lookback) -> str | None:
        """`X.name`: the type of `name` as instrument X has it."""
        if self.instrument(node.instrument, node.instrument_span) is None:
            return None
        name, x = node.id, node.instrument
        if name in self.p.features:
            return self.read_feature(name, owner, lookback)
        if name in self.inputs or name in INSTRUMENT_STATE:
            return NUM
        if name in MARKET_FIELDS:
            self.fields.add(name)
            return NUM
        if name == TIMESTAMP:
            self.errors.append(error("E204", node.span, f"`{x}.ts`: `ts` can only be passed to hour, minute_of_day or "
                                                        "day_of_week, and only as this event's time",
                                     f"the seconds since `{x}`'s latest market event are `age({x})`"))
            return None
        if name in STATE_VALUES:
            self.errors.append(error("E213", node.name_span, f"`{name}` is the account's, not an instrument's",
                                     f"write `{name}`: one account serves every instrument; an instrument's own "
                                     f"are {', '.join(f'`{x}.{s}`' for s in INSTRUMENT_STATE)}"))
            return None
        if name in self.params:
            self.errors.append(error("E213", node.name_span, f"param `{name}` is the policy's, not an instrument's",
                                     f"write `{name}`"))
            return None
        names = [*self.p.features, *self.inputs, *MARKET_FIELDS, *INSTRUMENT_STATE]
        help_ = did_you_mean(name, names)
        if help_ is None and name in FUNCTIONS:
            help_ = f"`{name}` is a function: call it on the value, as in `{name}({x}.close, 10)`" \
                if FUNCTIONS[name].params[:1] == ("num",) else f"`{name}` is a function, not a value"
        self.errors.append(error("E201", node.name_span, f"unknown name `{name}` of instrument `{x}`",
                                 help_ or "after `INSTRUMENT.` comes a market field, a feature, an input, or "
                                          "position, entry_price or unrealized_pnl"))
        return None

    def feature_type(self, name: str) -> str | None:
        if name in self.feature_types:
            return self.feature_types[name]
        if name in self._typing:      # reached again through a lookback: not known yet, not an error
            return None
        self._typing.add(name)
        t = self.type_of(self.p.features[name].expr, name)
        self._typing.discard(name)
        if t == TIME:
            self.errors.append(error("E204", self.p.features[name].expr.span, "a feature cannot be `ts` itself",
                                     "use hour(ts), minute_of_day(ts) or day_of_week(ts)"))
        self.feature_types[name] = t
        return t

    def call_type(self, node: ex.Call, owner, lookback) -> str | None:
        sig = FUNCTIONS.get(node.func)
        if sig is None:
            help_ = did_you_mean(node.func, FUNCTIONS)
            if node.func in self.all_names():
                help_ = f"`{node.func}` is a value, not a function"
            self.errors.append(error("E202", node.func_span, f"unknown function `{node.func}`", help_))
            for arg in node.args:
                self.type_of(arg, owner, lookback)
            return None
        n, most = len(node.args), len(sig.params)
        least = most - sig.optional
        if (n < least) or (n > most and not sig.variadic):
            want = f"{least}" if least == most else f"{least} or {most}"
            if sig.variadic:
                want = f"{least} or more"
            self.errors.append(error("E203", node.span, f"`{node.func}` takes {want} argument{'s' if most != 1 else ''}, got {n}",
                                     f"usage: {node.func}({', '.join(sig.params)}{', ...' if sig.variadic else ''})"))
            return sig.result
        kinds = list(sig.params) + list(sig.params[-1:]) * (n - most)
        for arg, kind in zip(node.args, kinds):
            if kind == "window":
                self.integer_arg(arg, f"the window of `{node.func}`", 1, MAX_WINDOW)
            elif kind == "lag":
                self.integer_arg(arg, f"the lookback of `{node.func}`", 1, MAX_LOOKBACK)
            elif kind == "instrument":
                if isinstance(arg, ex.Name):
                    self.instrument(arg.id, arg.span)
                else:
                    self.errors.append(error("E212", arg.span, f"`{node.func}` takes the name of an instrument",
                                             f"write `{node.func}(X)` with X one of the policy's instruments: "
                                             + (", ".join(f"`{a}`" for a in self.aliases) or "none has a name")))
            else:
                t = self.type_of(arg, owner, lookback)
                self.expect(arg, t, kind, f"`{node.func}`")
        if node.func == "atr":
            self.fields.update(("high", "low", "close"))
        if node.func in SESSION_FUNCTIONS and self.p.calendar is None and self.p.timezone is None:
            self.errors.append(error("E211", node.span, f"`{node.func}()` needs the policy's trading session, and "
                                     "this policy has no `calendar` or `timezone`",
                                     "add `calendar: XNYS` (an exchange calendar) or `timezone: Europe/Berlin` "
                                     "at the top level"))
        return sig.result

    # ---- the clock -------------------------------------------------------------------
    def check_clock(self):
        """The calendar must be one `exchange_calendars` knows (`sessions.calendar_names`,
        kept in the cache folder) and the zone an IANA zone."""
        zone = self.p.timezone
        if zone is not None:
            import zoneinfo  # here: most policies name no zone, and `validate` starts faster without it

            try:
                zoneinfo.ZoneInfo(zone.name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                self.errors.append(error("E007", zone.span, f"unknown time zone `{zone.name}`",
                                         did_you_mean(zone.name, zoneinfo.available_timezones())
                                         or "use an IANA zone name such as `America/New_York`"))
        calendar = self.p.calendar
        if calendar is not None:
            from .sessions import calendar_names  # with NumPy: only for a policy that names a calendar

            names = calendar_names()
            if calendar.name not in names:
                self.errors.append(error("E007", calendar.span, f"unknown exchange calendar `{calendar.name}`",
                                         did_you_mean(calendar.name, names)
                                         or "use a code of exchange_calendars, such as `XNYS` or `XTKS`"))

    # ---- ordering --------------------------------------------------------------------
    def order_features(self) -> list[str]:
        order, state = [], {}
        names = list(self.p.features)

        def visit(name: str, trail: list[str]):
            if state.get(name) == "done":
                return
            if state.get(name) == "active":
                cycle = trail[trail.index(name):] + [name]
                decl = self.p.features[name]
                self.errors.append(error("E208", decl.span,
                                         f"features depend on each other with no lookback: {' -> '.join(cycle)}",
                                         f"break the cycle with a lookback of 1 or more, e.g. `{cycle[1] if len(cycle) > 1 else name}[1]`"))
                raise _Cycle()
            state[name] = "active"
            for dep in sorted(self.edges.get(name, ()), key=names.index):
                visit(dep, trail + [name])
            state[name] = "done"
            order.append(name)

        for name in names:
            try:
                visit(name, [])
            except _Cycle:
                return names
        return order

    # ---- constants -------------------------------------------------------------------
    def constant(self, node: ex.Node, key: Key):
        """Evaluate a risk or account value: literals and params, and arithmetic on numbers.

        Returns a float, a bool, ("duration", seconds), or None after recording an error."""
        name = key.name
        if isinstance(node, (ex.Number, ex.Boolean)):
            return node.value
        if isinstance(node, ex.Duration):
            return ("duration", node.seconds)
        if isinstance(node, ex.Name):
            if node.id in self.params:
                return self.params[node.id]
            if key.kind is BOOLEAN and ex.boolean_word_help(node.id):
                self.errors.append(error("E007", node.span, f"`{name}` must be true or false, not `{node.id}`",
                                         ex.boolean_word_help(node.id)))
                return None
            self.errors.append(error("E209", node.span, f"`{name}` must be a constant; `{node.id}` is not a param",
                                     did_you_mean(node.id, self.params) or "limits may use literals and params only"))
            return None
        if isinstance(node, ex.Unary) and node.op == "-":
            v = self.constant(node.operand, key)
            if isinstance(v, tuple):
                return ("duration", -v[1])
            if isinstance(v, bool):
                self.errors.append(error("E209", node.span, f"`{name}`: `-` needs a number, not true/false"))
                return None
            return None if v is None else -v
        if isinstance(node, ex.Binary) and node.op in ex.ARITHMETIC:
            a, b = self.constant(node.left, key), self.constant(node.right, key)
            if a is None or b is None:
                return None
            if isinstance(a, (bool, tuple)) or isinstance(b, (bool, tuple)):
                self.errors.append(error("E209", node.span, f"`{name}`: arithmetic works on numbers only, "
                                                            "not on true/false or durations",
                                         "write the value directly, e.g. `3s`"))
                return None
            return _arith_constant(node.op, float(a), float(b))
        self.errors.append(error("E209", node.span, f"`{name}` must be a constant: a number, a param or arithmetic on them"))
        return None

    def bound_value(self, key: Key, decl: ValueDecl, label: str) -> float | None:
        """A risk or account value, evaluated and checked against its key's kind and bounds:
        a float (seconds for a duration, 1.0 or 0.0 for true/false), or None after recording
        an error. `label` names the key in messages (`stop_loss`, `account.fees_bps`)."""
        v = self.constant(decl.expr, key)
        if v is None:
            return None
        if key.kind is BOOLEAN:
            if not isinstance(v, bool):
                shown = "a duration" if isinstance(v, tuple) else f"{v:g}"
                self.errors.append(error("E007", decl.span, f"`{label}` must be true or false, not {shown}",
                                         "write `true` or `false`"))
                return None
            return 1.0 if v else 0.0
        if key.kind is DURATION:
            if not isinstance(v, tuple):
                self.errors.append(error("E103", decl.span, f"`{label}` needs a duration such as `2s` or `500ms`",
                                         f"write `{v:g}s` for {v:g} seconds" if isinstance(v, float) else None))
                return None
            v = v[1]
        elif isinstance(v, tuple):
            self.errors.append(error("E103", decl.span, f"`{label}` is not a duration; give a number"))
            return None
        elif isinstance(v, bool):
            self.errors.append(error("E007", decl.span, f"`{label}` must be a number, not true/false"))
            return None
        if not key.bounds.admit(v):
            self.errors.append(error("E007", decl.span, f"`{label}` must be {key.rule}, not {v:g}",
                                     self.percent_help(decl.expr, v, key)))
            return None
        self.fraction_without_percent(key, decl.expr, v)
        return float(v)

    def risk_values(self) -> dict[str, float]:
        out = {}
        for name, decl in (self.p.risk or {}).items():
            v = self.bound_value(RISK_KEYS[name], decl, name)
            if v is not None:
                out[name] = v
        return out

    def contract_values(self) -> list[dict[str, float]]:
        """Per instrument, the contract settings it is given, bound and checked."""
        out = []
        for inst in self.p.instruments:
            values = {}
            for name, decl in inst.contract.items():
                v = self.bound_value(CONTRACT_KEYS[name], decl, f"instruments.{inst.alias}.{name}")
                if v is not None:
                    values[name] = v
            out.append(values)
        return out

    def account_values(self) -> dict[str, float]:
        """Every account setting: the policy's, or the key's default."""
        out = {name: key.default for name, key in ACCOUNT_KEYS.items()}
        for name, decl in self.p.account.items():
            v = self.bound_value(ACCOUNT_KEYS[name], decl, f"account.{name}")
            if v is not None:
                out[name] = v
        return out

    # ---- percentages -----------------------------------------------------------------
    def origin(self, node: ex.Node) -> tuple[str, str, bool] | None:
        """("literal", text, written with %) or ("param", name, written with %) for a value
        that is one literal or one param; None for arithmetic."""
        if isinstance(node, ex.Number):
            text = node.text or f"{node.value:g}"
            return "literal", text, text.endswith("%")
        if isinstance(node, ex.Name) and node.id in self.params and not isinstance(self.params[node.id], bool):
            return "param", node.id, node.id in self.percent
        return None

    def percent_help(self, node: ex.Node, v: float, key: Key | None = None) -> str | None:
        """The help of an out-of-range value that a `%` probably explains: a fraction key given
        a number of percent (`stop_loss: 5`), or a count given a percentage (`sma(x, 20%)`)."""
        where = self.origin(node)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        if key is not None and key.kind is FRACTION:
            if not 1 < v <= 100 or (where and where[2]):
                return None
            if where and where[0] == "param":
                return f"`{key.name}` is a fraction, so param `{where[1]}` = {v:g} is {v * 100:g}%: set it to `{v:g}%`"
            written = where[1] if where else f"{v:g}"
            return f"write `{written}%`: `{key.name}` is a fraction, so `{written}` is {v * 100:g}%"
        if where is None or not where[2]:
            return None
        if where[0] == "param":
            return f"param `{where[1]}` is `{v * 100:g}%`; `%` divides by 100: set it to `{v * 100:g}`"
        return f"`%` divides by 100: write `{v * 100:g}`"

    def fraction_without_percent(self, key: Key, node: ex.Node, v: float):
        """W005: `take_profit: 5` is 500%, most likely a slip for `5%`."""
        where = self.origin(node)
        if key.kind is not FRACTION or where is None or where[2] or not v > 1:
            return
        kind, name, _ = where
        shown = name if kind == "literal" else f"{v:g}"
        message = (f"`{key.name}: {name}` is {v * 100:g}%" + (f" (param `{name}` is {v:g})" if kind == "param" else "")
                   + f": `{key.name}` is a fraction, not a number of percent")
        help_ = (f"write `{shown}%` for {shown} percent, or `{v * 100:g}%` if you mean it" if kind == "literal" else
                 f"set `{name}` to `{shown}%` for {shown} percent, or to `{v * 100:g}%` if you mean it")
        self.warnings.append(warning("W005", node.span, message, help_))


class _Cycle(Exception):
    pass


def _arith_constant(op: str, a: float, b: float) -> float:
    try:
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else float("nan"), "**": a ** b}[op]
    except (OverflowError, ZeroDivisionError, TypeError):
        return float("nan")


#: Names authors reach for when they mean the event's timestamp.
_TIME_WORDS = ("time", "timestamp", "now", "date", "datetime", "t")


def _time_help(name: str) -> str | None:
    if name.lower() in _TIME_WORDS:
        return f"the event's time is `{TIMESTAMP}` (ns since the epoch, UTC), as in `hour({TIMESTAMP})`"
    return None


def _name_help(name: str) -> str | None:
    if name.lower() in ("if", "then", "else", "and", "or", "not"):
        return f"keywords are lower case: `{name.lower()}`"
    return "names are params, features, inputs, market fields (price, close, ...) or state values (position, equity, ...)"


MAX_FEATURES = 500
MAX_CUSTOM_RULES = 22  # reason masks travel as float64: 31 fixed codes (layout.REASONS) + 22 rules = 53 exact bits


def check(parsed: ParsedPolicy, overrides: dict | None = None) -> CheckedPolicy:
    """Resolve, type and bind a parsed policy, or raise PolicyError with every problem found."""
    if len(parsed.features) > MAX_FEATURES:
        name = list(parsed.features)[MAX_FEATURES]
        raise PolicyError([error("E102", parsed.features[name].span,
                                 f"a policy may define at most {MAX_FEATURES} features")])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20 * MAX_FEATURES + 2000))  # features may chain MAX_FEATURES deep
    try:
        return _check(parsed, overrides)
    finally:
        sys.setrecursionlimit(limit)


def _check(parsed: ParsedPolicy, overrides: dict | None) -> CheckedPolicy:
    params = bind_params(parsed, overrides)
    c = _Checker(parsed, params, percent_params(parsed, overrides))
    c.check_definitions()
    c.check_clock()
    for name in parsed.features:
        c.feature_type(name)
    rule_legs = []
    for rule in parsed.signals:
        c.expect(rule.when, c.type_of(rule.when, None), BOOL, "a rule's `when`")
        if rule.legs is None:
            c.expect(rule.target, c.type_of(rule.target, None), NUM, "a rule's `target`")
            if rule.limit is not None:
                c.expect(rule.limit, c.type_of(rule.limit, None), NUM, "a rule's `limit`")
            rule_legs.append(())
            continue
        legs = []
        for leg in rule.legs:
            c.expect(leg.target, c.type_of(leg.target, None), NUM, f"leg `{leg.instrument}`'s `target`")
            if leg.limit is not None:
                c.expect(leg.limit, c.type_of(leg.limit, None), NUM, f"leg `{leg.instrument}`'s `limit`")
            x = c.leg_instrument(leg.instrument, leg.span)
            if x is not None and x in legs:
                c.errors.append(error("E215", leg.span, f"leg `{leg.instrument}` names instrument "
                                                        f"`{parsed.instruments[x].name}` a second time",
                                      "give each instrument one leg"))
            elif x is not None:
                legs.append(x)
        rule_legs.append(tuple(legs))
    if parsed.risk and "max_leg_imbalance" in parsed.risk and not any(rule_legs):
        c.errors.append(error("E216", parsed.risk["max_leg_imbalance"].span,
                              "`max_leg_imbalance` limits the legs of multi-leg rules, and this policy has none",
                              "add a rule with `legs:`, or remove `max_leg_imbalance`"))
    for rule in parsed.custom:
        c.expect(rule.when, c.type_of(rule.when, None), BOOL, f"custom rule `{rule.name}`'s `when`")
    if len(parsed.custom) > MAX_CUSTOM_RULES:
        rule = parsed.custom[MAX_CUSTOM_RULES]
        c.errors.append(error("E007", rule.span, f"a policy may have at most {MAX_CUSTOM_RULES} custom rules",
                              "combine conditions with `or`"))
    risk = c.risk_values()
    account = c.account_values()
    contracts = c.contract_values()
    order = c.order_features() if not c.errors else list(parsed.features)
    if c.errors:
        raise PolicyError(sorted(c.errors, key=lambda d: (d.span.file, d.span.line, d.span.column)))
    warnings = list(parsed.warnings) + c.warnings + _percent_as_quantity(parsed, c) + _unused_features(parsed, c) \
        + _blocking_limits(parsed, c)
    return CheckedPolicy(
        parsed=parsed, params=params, param_types=c.param_types, feature_types=c.feature_types,
        feature_order=order, fields=[f for f in MARKET_FIELDS if f in c.fields], inputs=c.inputs,
        risk=risk, account=account, warnings=warnings, contracts=contracts, rule_legs=rule_legs,
    )


def _rule_targets(rule) -> list[ex.Node]:
    """A rule's targets: its `target`, or each leg's."""
    return [rule.target] if rule.legs is None else [leg.target for leg in rule.legs]


def _rule_values(rule) -> list[ex.Node]:
    """A rule's targets and limit prices."""
    if rule.legs is None:
        return [rule.target] + ([rule.limit] if rule.limit is not None else [])
    return [n for leg in rule.legs for n in (leg.target, leg.limit) if n is not None]


def _constant(node: ex.Node, params: dict) -> float | None:
    """The value of a literal, a param or a negated one; None for anything else."""
    if isinstance(node, ex.Number):
        return node.value
    if isinstance(node, ex.Name) and node.id in params:
        return params[node.id]
    if isinstance(node, ex.Unary) and node.op == "-":
        value = _constant(node.operand, params)
        return None if value is None else -value
    return None


def _blocking_limits(parsed: ParsedPolicy, c: _Checker) -> list[Diagnostic]:
    """W006 for a `limit` (a rule's or a leg's) that is a constant at or below 0: the
    kernel blocks every order such a limit prices, so the rule can never trade."""
    out = []
    for rule in parsed.signals:
        limits = [(rule.limit, "the rule")] if rule.legs is None else \
            [(leg.limit, f"leg `{leg.instrument}`") for leg in rule.legs]
        for node, whose in limits:
            value = None if node is None else _constant(node, c.params)
            if value is not None and not value > 0:
                out.append(warning("W006", node.span, f"this limit price is {value:g}: every order of {whose} "
                                                      "is blocked (`limit_invalid:blocked`)",
                                   "a limit price is money per unit above 0, such as `ask * (1 + 0.1%)`"))
    return out


def _value_leaves(node: ex.Node):
    """The nodes whose value is the value of `node`: through `if` branches, unary `-` and
    functions such as `min` or `round`, but not through arithmetic (`equity * 2% / close`)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ex.Cond):
            stack.extend((n.orelse, n.then))
        elif isinstance(n, ex.Unary) and n.op == "-":
            stack.append(n.operand)
        elif isinstance(n, ex.Call) and n.func in _PASS_THROUGH:
            stack.extend(reversed(n.args))
        else:
            yield n


def _percent_as_quantity(parsed: ParsedPolicy, c: _Checker) -> list[Diagnostic]:
    """W004 for a percentage used as a quantity: a `%` literal or a param written with `%` that
    is a rule's target (directly, through `if`, `min`, ... or a feature), or a param written
    with `%` that is a risk or account key measured in units (a `%` literal there is reported
    by the parser)."""
    out: dict[tuple, Diagnostic] = {}
    units_help = "`%` divides by 100; write the number of units"

    def param(node: ex.Name, what: str, unit: str):
        value = c.params[node.id]
        message = f"param `{node.id}` is `{value * 100:g}%`, which is {value:g}: {what} is measured in {unit}, " \
                  "not as a fraction"
        out.setdefault((node.span, message), warning("W004", node.span, message,
                                                     f"`%` divides by 100; set `{node.id}` to the number of {unit}"))

    def target(node: ex.Node, what: str, whole: bool, seen: frozenset):
        for leaf in _value_leaves(node):
            if isinstance(leaf, ex.Number) and leaf.text.endswith("%"):
                shown = f"target: {leaf.text}" if whole and leaf is node else leaf.text
                message = f"`{shown}` is {leaf.value:g}: {what} is measured in units, not as a fraction"
                out.setdefault((leaf.span, message), warning("W004", leaf.span, message, units_help))
            elif isinstance(leaf, ex.Name) and leaf.id in c.percent:
                param(leaf, what, "units")
            elif isinstance(leaf, ex.Name) and leaf.id in parsed.features and leaf.id not in seen:
                target(parsed.features[leaf.id].expr, f"a rule's `target` (through feature `{leaf.id}`)", False,
                       seen | {leaf.id})

    for rule in parsed.signals:
        for node in _rule_targets(rule):
            target(node, "a rule's `target`", True, frozenset())
    sections = [((parsed.risk or {}), RISK_KEYS), (parsed.account, ACCOUNT_KEYS)]
    sections += [(inst.contract, CONTRACT_KEYS) for inst in parsed.instruments]
    for section, keys in sections:
        for name, decl in section.items():
            unit = keys[name].kind.measure
            if unit is not None:
                for leaf in _value_leaves(decl.expr):
                    if isinstance(leaf, ex.Name) and leaf.id in c.percent:
                        param(leaf, f"`{name}`", unit)
    return list(out.values())


def _unused_features(parsed: ParsedPolicy, c: _Checker) -> list[Diagnostic]:
    roots: set[str] = set()
    nodes = [r.when for r in parsed.signals] + [n for r in parsed.signals for n in _rule_values(r)]
    for node in nodes + [r.when for r in parsed.custom]:
        roots.update(n.id for n in ex.walk(node) if isinstance(n, (ex.Name, ex.Ref)) and n.id in parsed.features)
    seen, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(c.uses.get(name, ()))
    return [warning("W002", d.span, f"feature `{name}` is never used by a rule",
                    "it is still computed and traced; remove it if it is not needed")
            for name, d in parsed.features.items() if name not in seen]
