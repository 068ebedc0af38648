"""Code generation: optimised IR -> Python source for Numba, through jinja2 templates.

Each op becomes a local `v<N>`; stateful ops keep their scalars in locals `f<slot>_<k>`
(but for the few that only a warm-up changes, `_Emitter.in_place`) and their windows in
their instrument's row of the feature-state array, at offsets given by the layout (kernel
arguments), so param values never change the source. Risk steps absent from the policy
emit no code.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from policyc.dsl import risk_keys

from . import layout as L
from .builtins import BOOL, MARKET_FIELDS
from .check import CheckedPolicy
from .ir import Program
from .semantics import NS_PER_DAY, NS_PER_HOUR, NS_PER_MINUTE
from .sessions import CLOCK_WIDTH, K_CLOSE, K_DAY, K_IN, K_OFFSET, K_OPEN

def _state_expr(name: str, P, A, gross: str, value) -> str:
    """A state value (spec section 3) as kernel source; `value(x)` is the money of one unit
    at the price (difference) x: x itself, or x times the instrument's multiplier."""
    return {
        "position": P.POS,
        "entry_price": P.ENTRY,
        "unrealized_pnl": f"({P.POS} * {value(f'({P.LAST} - {P.ENTRY})')} if {P.POS} != 0.0 else 0.0)",
        "equity": A.EQUITY,
        "cash": A.CASH,
        "drawdown": f"(({A.PEAK} - {A.EQUITY}) / {A.PEAK} if {A.PEAK} > 0.0 else 0.0)",
        "margin_usage": f"({gross} * cfg[{L.C['margin_rate']}] / {A.EQUITY} if {A.EQUITY} > 0.0 else NAN)",
        "orders_today": A.ORDERS_TODAY,
    }[name]


#: Per-instrument columns that stay in `pstate` rather than in locals: the terms of the
#: running totals, which an exact re-sum reads for every instrument, and the latest quote,
#: which only a leg decided on another instrument's event reads.
_IN_PLACE = ("MARK", "GROSS", "BID", "ASK")
#: The statistics that only a fill changes, of the account and of an instrument (its round
#: trip's P&L): cells of the arrays in `run` and in the functions a decision calls, so that
#: a decision that fills nothing at once neither loads nor stores them (2-3% of `make
#: bench`'s reference job, whose orders wait for the next event); locals in `fill_waiting`,
#: which adds to them on every fill (there cells ran slower).
_FILL_STATISTICS = ("FEES", "FILLS", "EXPOSED", "HELD", "TRADES", "WINS", "WIN_PNL", "LOSS_PNL")
_FILL_STATISTICS_P = ("TRADE_PNL",)
#: The contract's columns: read only in a kernel that reads them (a policy that gives a
#: multiplier or a tick size), so other kernels load nothing more per event.
_CONTRACT = ("MULT", "TICK")
#: The exponential averages: their state is a count, a sum (both change only in the warm-up)
#: and the average; the hot loop runs them warmed up (`op_code`).
AVERAGES = ("ema", "rma")
#: The state the kernel's event loop (`run`) keeps in locals: what every event reads
#: (the equity curve and the mark, the fast decision's tests, the exit levels). The rest
#: stays in the arrays there; the out-of-line functions hold all of it in locals but
#: `_IN_PLACE`'s columns and, but for `fill_waiting`, the fill statistics.
_HOT_ACCOUNT = ("CASH", "EQUITY", "PEAK", "HALTED", "CURVE_PEAK", "CURVE_TROUGH")
_HOT_TOTALS = ("MARK_HI", "MARK_LO", "MARK_ERR", "MARK_BAD", "GROSS_HI", "GROSS_LO", "GROSS_ERR", "GROSS_BAD")
_HOT_INSTRUMENT = ("POS", "OPEN", "ENTRY", "BEST", "LAST", "PREV", "LAST_TS", "DESIRED", "LOCK", "PENDING")


class _StateNames:
    """Names of per-instrument state in the kernel: locals, except _IN_PLACE's columns, the
    fill statistics unless `fill` (_FILL_STATISTICS_P), and with `hot` given the columns
    not in it, which are cells of the event's instrument's row of `pstate`. In `run` a policy of one instrument
    loads its locals once per batch, a policy of several from the event's row at the
    start of each event, storing each one back where it is assigned (so they can stay in
    registers through the event); an out-of-line function loads them all on entry and
    stores them on exit. `contract`: the contract columns the kernel reads (the others
    are never loaded)."""

    def __init__(self, n_custom: int, hot: tuple[str, ...] | None = None, contract: tuple[str, ...] = (),
                 fill: bool = False):
        self.columns = {k[2:]: getattr(L, k) for k in dir(L)
                        if k.startswith("P_") and k not in ("P_NAMES", "P_CUSTOM")}
        self.n_custom = n_custom
        self.hot = hot
        self.in_place = _IN_PLACE if fill else _IN_PLACE + _FILL_STATISTICS_P
        self.unread = set(_CONTRACT) - set(contract)  # contract columns this kernel never reads

    def _local(self, key: str) -> bool:
        return key not in self.in_place and (self.hot is None or key in self.hot)

    def __getattr__(self, key):
        if key.isupper() and key in self.columns:
            return f"p_{key.lower()}" if self._local(key) else f"pstate[i, {self.columns[key]}]"
        raise AttributeError(key)

    def custom(self, j: int) -> str:
        return f"p_custom{j}" if self.hot is None else f"pstate[i, {L.P_CUSTOM + j}]"

    def locals(self) -> list[tuple[str, int, bool]]:
        """(local, column, is an integer) for every per-instrument state column held in a local."""
        out = [(f"p_{k.lower()}", v, k in ("PENDING", "PENDING_LAST"))
               for k, v in sorted(self.columns.items(), key=lambda kv: kv[1]) if self._local(k) and k not in self.unread]
        if self.hot is None:
            out += [(f"p_custom{j}", L.P_CUSTOM + j, False) for j in range(self.n_custom)]
        return out


def _account_names(hot: tuple[str, ...] | None, fill: bool = False) -> SimpleNamespace:
    """Names of the account columns: locals `a_<name>`, or `acct[k]` cells for the fill
    statistics unless `fill` (`_FILL_STATISTICS`) and, with `hot` given, for the columns
    not in it."""
    def local(name: str) -> bool:
        return (fill or name not in _FILL_STATISTICS) and (hot is None or name in hot)

    return SimpleNamespace(**{k[2:]: f"a_{k[2:].lower()}" if local(k[2:]) else f"acct[{getattr(L, k)}]"
                              for k in dir(L) if k.startswith("A_") and k not in ("A_NAMES", "A_REASON_COUNTS")})


_UNARY_NUMPY = {"log": "np.log", "exp": "np.exp", "sqrt": "np.sqrt", "sign": "np.sign", "floor": "np.floor",
                "ceil": "np.ceil"}
_TIME = {"hour": f"float(({{}} // {NS_PER_HOUR}) % 24)", "minute_of_day": f"float(({{}} // {NS_PER_MINUTE}) % 1440)",
         "day_of_week": f"float(({{}} // {NS_PER_DAY} + 3) % 7)"}
# the session functions, from the event's clock row (compiler/sessions.py)
_SESSION = {"in_session": f"clock[e - start, {K_IN}] != 0",
            "minutes_since_open": f"float((t - clock[e - start, {K_OPEN}]) // {NS_PER_MINUTE})",
            "minutes_to_close": f"float((clock[e - start, {K_CLOSE}] - t) // {NS_PER_MINUTE})"}


@lru_cache(maxsize=1)
def _environment():
    import jinja2  # only when a source is rendered: cached compiles never need it

    return jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=False,
    )


def _literal(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INF" if value > 0 else "-INF"
    return repr(float(value))


def _nan_guard(args: list[str]) -> str:
    return " or ".join(f"{a} != {a}" for a in args)


class _Emitter:
    def __init__(self, program: Program, single: bool, multiplier: bool = False, tick_size: bool = False):
        self.p = program
        self.single = single
        self.multiplier, self.tick_size = multiplier, tick_size
        contract = ("MULT",) * multiplier + ("TICK",) * tick_size
        # P and A name the state in `run`, where the ops are (the hot state in locals, the
        # rest array cells); P_all and A_all in the out-of-line functions (all in locals)
        self.P_all = _StateNames(len(program.custom), contract=contract)
        self.P = _StateNames(len(program.custom), _HOT_INSTRUMENT, contract)
        self.hot_account = _HOT_ACCOUNT if single else _HOT_ACCOUNT + _HOT_TOTALS
        self.A_all = _account_names(None)
        # fill_waiting's: the fill statistics in locals too
        self.P_fill = _StateNames(len(program.custom), contract=contract, fill=True)
        self.A_fill = _account_names(None, fill=True)
        self.A = _account_names(self.hot_account)
        if single:  # one term besides cash: the one IEEE addition rounds the sum once
            q = f"({self.P.POS} + {self.P.OPEN})"
            self.gross = f"(abs({q} * {self.value(self.P.LAST)}) if {q} != 0.0 else 0.0)"
        else:  # the running total, read into a local by the template's read_gross
            self.gross = "gross_now"
        self.slots = L.slots(program)
        self.slot_of = {(s.op, s.kind): n for n, s in enumerate(self.slots)}
        self.limits = program.uses_limits() or program.intent_column is not None
        # `run`'s hot loop, an inner loop of the common market event: for a policy without
        # legs, limit prices (limit orders, intents) or a clock, each of which gives a
        # market event work the loop body does (with several instruments it loads the
        # event's instrument's state as the loop body does, and writes it through)
        self.hot_loop = not program.leg_set() and not self.limits and program.clock is None
        self.env = _environment()
        self.ops_macros = self.env.get_template("ops.j2").module
        self.lag_ks: dict[tuple, str] = {}

    def value(self, x: str, mult: str | None = None) -> str:
        """The money of one unit at the price (or price difference) x: x times the
        multiplier (`mult`, else the event's instrument's) when the policy gives one, else
        x itself (a multiplier of 1 changes no value, so no code is spent on it)."""
        return f"({x} * {mult or self.P.MULT})" if self.multiplier else x

    def name(self, j: int) -> str:
        op = self.p.ops[j]
        return "t" if op.kind == "ts" and self.p.clock is None else f"v{j}"

    def k_expr(self, spec: tuple) -> str:
        if spec[0] == "const":
            return str(spec[1])
        name = f"lag_k{spec[1]}"
        self.lag_ks[spec] = name
        return name

    def in_place(self, n: int, k: int) -> bool:
        """Whether slot n's scalar k stays in `fs` rather than in a local: the sum of an
        ema or rma, which only its warm-up changes, and the ring position of a one-step
        history, which has no ring; without the hot loop also their counts (an ema's
        changes only in its warm-up, a one-step history's is always 1 once it has a
        value). Fewer locals carried from event to event leave the registers to the state
        that changes on every one; but the hot loop reads the counts on every event, and
        there they cost less in registers than as cells of `fs` (the reference job of
        `make bench` runs 0.4 ns an event faster)."""
        slot = self.slots[n]
        kept = (1,) if self.hot_loop else (0, 1)
        if slot.kind == "history":
            return self.unit(slot) and k in kept
        return slot.kind == "moving" and self.p.ops[slot.op].attr[0] in AVERAGES and k in kept

    def state(self, n: int):
        """Accessor of slot n's scalar state k: a cell of the event's instrument's row of
        `fs` (in_place), else a local, loaded from that row once per batch (one instrument)
        or once per market event (several)."""
        return lambda k: f"fs[i, o{n} + {k}]" if self.in_place(n, k) else f"f{n}_{k}"

    def scalars(self, n: int) -> list[tuple[str, str, int, bool]]:
        """Slot n's scalar state held in locals as (local, offset name, index, is an
        integer position)."""
        slot = self.slots[n]
        if slot.kind == "publish":  # written to and read from the array only
            return []
        if slot.kind == "history":
            count, positions = (3 if self.unit(slot) else 2), (1,)
        elif slot.kind == "bars_since":
            count, positions = 1, ()
        else:
            fn = self.p.ops[slot.op].attr[0]
            count = L.MOVING_SCALARS[fn]
            positions = {"sma": (2,), "sum": (2,)}.get(fn, (1,) if fn in L.MOVING_BUFFERED else ())
        return [(f"f{n}_{k}", f"o{n}", k, k in positions) for k in range(count) if not self.in_place(n, k)]

    @staticmethod
    def unit(slot) -> bool:
        return all(spec == ("const", 1) for spec in slot.size_spec)

    def history(self, source: int) -> SimpleNamespace:
        n = self.slot_of[(source, "history")]
        value = self.name(source)
        if self.p.ops[source].type == BOOL:
            value = f"(1.0 if {value} else 0.0)"
        return SimpleNamespace(o=f"o{n}", n=f"n{n}", unit=self.unit(self.slots[n]), value=value, st=self.state(n))

    def averages(self) -> list[int]:
        """The slots of the emas and rmas, which the hot loop runs warmed up (`op_code`)."""
        return [n for n, s in enumerate(self.slots)
                if s.kind == "moving" and self.p.ops[s.op].attr[0] in AVERAGES]

    def unit_histories(self) -> list[int]:
        """The slots of the one-step histories (`x[1]`) whose count the hot loop of several
        instruments takes as 1: there a lag is its history's value (`op_code`) and a push
        stores no count, a store an event less for each (`make bench`'s instruments job,
        about 9% faster). With one instrument the count is a register, and testing it in
        the loop's condition cost more than the lag's select (0.3 ns an event)."""
        if self.single:
            return []
        return [n for n, s in enumerate(self.slots) if s.kind == "history" and self.unit(s)]

    def market_field(self, j: int) -> bool:
        """Whether op j reads a market field (`close`, `high`, ...), which clean data always
        has, not a model's input, which may be NaN on most events."""
        op = self.p.ops[j]
        return op.kind == "field" and self.p.columns[op.attr[0]] in MARKET_FIELDS

    def checked_fields(self) -> list[int]:
        """The columns of the market fields an ema or rma takes directly, but the price
        (column 0, which the hot loop checks anyway): the hot loop takes an event only when
        each is a number, so these averages need no NaN test there."""
        taken = {self.p.ops[self.slots[n].op].args[0] for n in self.averages()}
        return sorted({self.p.ops[j].attr[0] for j in taken if self.market_field(j)} - {0})

    def op_code(self, j: int, hot: bool = False) -> str:
        """Op j's code in `run`; `hot`: in the hot loop, which takes an event only once every
        ema and rma has warmed up, every one-step history of `unit_histories` has a value,
        and the fields the averages take are numbers (`checked_fields`)."""
        op = self.p.ops[j]
        v = self.name(j)
        a = [self.name(x) for x in op.args]
        k = op.kind
        if k == "ts":  # with a clock, the time functions read wall-clock time in the policy's zone
            return "" if self.p.clock is None else f"{v} = t + clock[e - start, {K_OFFSET}]"
        if k == "session":
            return f"{v} = {_SESSION[op.attr[0]]}"
        if k == "const":
            return f"{v} = {_literal(op.attr[0])}"
        if k == "param":
            return f"{v} = p{op.attr[0]}"
        if k == "field":
            return f"{v} = vals[u, {op.attr[0]}]"  # u: the event's index, unsigned (kernel.py.j2)
        if k == "state":
            return f"{v} = {_state_expr(op.attr[0], self.P, self.A, self.gross, self.value)}"
        if k == "neg":
            return f"{v} = -{a[0]}"
        if k == "not":
            return f"{v} = not {a[0]}"
        if k in ("and", "or"):
            return f"{v} = {a[0]} {k} {a[1]}"
        if k == "arith":
            return f"{v} = {a[0]} {op.attr[0]} {a[1]}"
        if k == "cmp":
            if op.attr[0] == "!=" and self.p.ops[op.args[0]].type != BOOL:
                return f"{v} = {a[0]} < {a[1]} or {a[0]} > {a[1]}"
            return f"{v} = {a[0]} {op.attr[0]} {a[1]}"
        if k == "select":
            return f"{v} = {a[1]} if {a[0]} else {a[2]}"
        if k == "call":
            return f"{v} = {self.call(op.attr[0], a)}"
        if k == "moving":
            n = self.slot_of[(j, "moving")]
            warm = hot and op.attr[0] in AVERAGES
            checked = warm and self.market_field(op.args[0])
            ctx = SimpleNamespace(v=v, a=a, fn=op.attr[0], o=f"o{n}", n=f"n{n}", k=f"k{n}", st=self.state(n),
                                  warm=warm, checked=checked)
            return str(self.ops_macros.moving(ctx)).strip()
        if k == "bars_since":
            n = self.slot_of[(j, "bars_since")]
            return str(self.ops_macros.bars_since(SimpleNamespace(v=v, a=a, o=f"o{n}", st=self.state(n)))).strip()
        if k == "age" and self.single:  # the one instrument's latest market event is this one
            return f"{v} = (t - {self.P.LAST_TS}) / 1e9"
        if k in ("ref", "xlag", "xstate", "age"):
            return self.cross_code(j)
        if k == "lag":
            source = op.args[0]
            spec = op.attr[0]
            ctx = SimpleNamespace(
                v=v, type=op.type, history=self.history(source), k=self.k_expr(spec), src=self.name(source),
                k_zero_possible=spec[0] == "param" and source < j,
                warm=hot and self.slot_of[(source, "history")] in self.unit_histories(),
            )
            return str(self.ops_macros.lag(ctx)).strip()
        raise AssertionError(k)

    @staticmethod
    def call(fn: str, a: list[str]) -> str:
        if fn == "abs":
            return f"abs({a[0]})"
        if fn in _UNARY_NUMPY:
            return f"{_UNARY_NUMPY[fn]}({a[0]})"
        if fn == "round":
            x = a[0]
            return (f"math.copysign(np.floor(abs({x})) + (1.0 if abs({x}) - np.floor(abs({x})) >= 0.5 else 0.0), {x})"
                    f" if abs({x}) <= MAX_FLOAT else {x}")
        if fn in ("min", "max"):  # as Python's min/max: the first extreme argument wins ties (+0.0 vs -0.0)
            better = "<" if fn == "min" else ">"
            chosen = a[0]
            for b in a[1:]:
                chosen = f"({b} if {b} {better} {chosen} else {chosen})"
            return f"NAN if {_nan_guard(a)} else {chosen}"
        if fn == "clip":
            x, lo, hi = a
            return f"NAN if {_nan_guard(a)} else ({lo} if {x} < {lo} else ({hi} if {x} > {hi} else {x}))"
        if fn == "nz":
            return f"{a[1]} if {a[0]} != {a[0]} else {a[0]}"
        if fn == "is_nan":
            return f"{a[0]} != {a[0]}"
        if fn in _TIME:
            return _TIME[fn].format(a[0])
        raise AssertionError(fn)

    def slot_extent(self, n: int) -> SimpleNamespace:
        """How far slot n reaches into a feature-state row: `fixed` columns plus its
        window when `windowed` (the kernel checks fs is that wide before it runs)."""
        slot = self.slots[n]
        if slot.kind == "history":
            return SimpleNamespace(fixed=2, windowed=True)
        if slot.kind in ("bars_since", "publish"):
            return SimpleNamespace(fixed=1, windowed=False)
        fn = self.p.ops[slot.op].attr[0]
        return SimpleNamespace(fixed=L.MOVING_SCALARS[fn], windowed=fn in L.MOVING_BUFFERED)

    def published(self, source: int) -> SimpleNamespace:
        """Slot of the value `source` had at its instrument's latest market event."""
        n = self.slot_of[(source, "publish")]
        value = self.name(source)
        if self.p.ops[source].type == BOOL:
            value = f"(1.0 if {value} else 0.0)"
        return SimpleNamespace(o=f"o{n}", value=value)

    def cross_code(self, j: int) -> str:
        """Source of an op that reads instrument x, in a kernel of several instruments (a
        policy of one lowers only `age`). x's rows of `pstate` and `fs` are current (each
        assignment writes through), so each read is one array access."""
        op, v = self.p.ops[j], self.name(j)
        if op.kind == "age":
            x = op.attr[0]
            return f"{v} = (t - ({self.P.LAST_TS} if i == {x} else pstate[{x}, {L.P_LAST_TS}])) / 1e9"
        if op.kind == "xstate":
            name, x = op.attr
            other = SimpleNamespace(POS=f"pstate[{x}, {L.P_POS}]", ENTRY=f"pstate[{x}, {L.P_ENTRY}]",
                                    LAST=f"pstate[{x}, {L.P_LAST}]")
            value_x = lambda price: self.value(price, f"pstate[{x}, {L.P_MULT}]")
            return (f"{v} = ({_state_expr(name, self.P, self.A, self.gross, self.value)}) if i == {x} "
                    f"else ({_state_expr(name, other, self.A, self.gross, value_x)})")
        source = op.args[0]
        ctx = SimpleNamespace(v=v, x=op.attr[0], type=op.type, src=self.name(source), LAST=L.P_LAST)
        if op.kind == "ref":
            ctx.publish = self.published(source)
            return str(self.ops_macros.ref(ctx)).strip()
        spec = op.attr[1]
        ctx.history = self.history(source)
        ctx.k = self.k_expr(spec)
        ctx.own = str(self.ops_macros.lag(SimpleNamespace(
            v=v, type=op.type, history=ctx.history, k=ctx.k, src=ctx.src,
            k_zero_possible=spec[0] == "param" and source < j, warm=False))).strip()
        return str(self.ops_macros.xlag(ctx)).strip()

    def rule(self, index: int, rule: tuple) -> SimpleNamespace:
        """A rule of `signals` for the template: its ops' names, and for a multi-leg rule
        each leg's instrument index (`x`), target and limit."""
        when, target, limit, legs = rule
        name = lambda j: None if j is None else self.name(j)
        return SimpleNamespace(index=index, when=self.name(when), target=name(target), limit=name(limit),
                               legs=[SimpleNamespace(x=x, target=self.name(t), limit=name(lim)) for x, t, lim in legs],
                               leg_xs=[x for x, _, _ in legs])

    @staticmethod
    def limit_value(limit: str | None) -> str:
        """The P_LIMIT a rule's target carries: NaN for market orders, else its limit price,
        kept as -inf when it is not a number (as invalid, and told apart from a market order)."""
        return "NAN" if limit is None else f"({limit} if {limit} == {limit} else -INF)"

    def render(self, gen: "GenerationInput") -> str:
        p = self.p
        op_codes, hot_op_codes = ([SimpleNamespace(code=code) for code in (self.op_code(j, hot) for j in range(len(p.ops)))
                                   if code] for hot in (False, True))
        pushes = [self.history(s.op) for s in self.slots if s.kind == "history"]
        publishes = [self.published(s.op) for s in self.slots if s.kind == "publish"]
        slots = []
        for n, s in enumerate(self.slots):
            ema = s.kind == "moving" and p.ops[s.op].attr[0] == "ema"
            slots.append(SimpleNamespace(o=f"o{n}", n=f"n{n}", k=f"k{n}" if ema else None, extent=self.slot_extent(n)))
        names = L.reason_names(p)
        custom = [SimpleNamespace(action=action, value=self.name(when), mask=1 << (L.CUSTOM_BASE + j), index=j)
                  for j, (name, action, when) in enumerate(p.custom)]
        as_float = lambda j: f"(1.0 if {self.name(j)} else 0.0)" if p.ops[j].type == BOOL else self.name(j)
        acct_columns = [(name, index) for index, name in enumerate(
            k[2:].lower() for k in sorted((k for k in dir(L) if k.startswith("A_") and
                                           k not in ("A_NAMES", "A_REASON_COUNTS")), key=lambda k: getattr(L, k)))]
        template = self.env.get_template("kernel.py.j2")
        return template.render(
            name=gen.name, version=gen.version,
            A_all=self.A_all, A_hot=self.A, P_all=self.P_all, P_hot=self.P, single=self.single,
            A_fill=self.A_fill, P_fill=self.P_fill, fill_p_columns=self.P_fill.locals(),
            hot_loop=self.hot_loop,
            n_instruments=gen.instruments,
            n_columns=len(p.columns), n_config=len(L.CONFIG_KEYS), pstate_width=L.P_CUSTOM + len(p.custom),
            ACCT_WIDTH=L.ACCT_WIDTH, ORDER_WIDTH=L.ORDER_WIDTH,
            P_INDEX=SimpleNamespace(**self.P.columns),
            acct_columns=acct_columns,
            hot_acct_columns=[(name, index) for name, index in acct_columns if name.upper() in self.hot_account],
            p_columns=self.P_all.locals(), hot_p_columns=self.P.locals(),
            f_scalars=[x for n in range(len(self.slots)) for x in self.scalars(n)],
            gross_expr=self.gross, REASON_COUNTS=L.A_REASON_COUNTS,
            gross_state=any(op.kind == "state" and op.attr[0] == "margin_usage" for op in p.ops),
            O=SimpleNamespace(**{k[2:]: getattr(L, k) for k in dir(L) if k.startswith("O_")}),
            T=SimpleNamespace(**{k[2:]: getattr(L, k) for k in dir(L) if k.startswith("T_")}),
            C=_ConfigIndex(), reasons={code: i for i, code in enumerate(names)},
            bit=lambda code: 1 << names.index(code),
            risk=set(gen.risk),
            exits=[SimpleNamespace(key=key, exit=bits.exit, blocked=bits.blocked, blocked_mask=1 << bits.blocked)
                   for key, bits in L.EXITS.items() if key in gen.risk],
            custom=custom,
            params=[SimpleNamespace(v=f"p{i}", type=kind) for i, kind in enumerate(gen.param_types)],
            slots=slots, op_lines=op_codes, hot_op_lines=hot_op_codes, pushes=pushes, publishes=publishes,
            warmed=[f"{self.state(n)(0)} >= n{n}" for n in self.averages()]
            + [f"{self.state(n)(0)} >= 1.0" for n in self.unit_histories()],
            checked_fields=self.checked_fields(),
            reads_age=any(op.kind == "age" for op in p.ops),
            lag_ks=[SimpleNamespace(name=name, expr=f"int(p{spec[1]})") for spec, name in sorted(self.lag_ks.items())],
            volatility=None if p.volatility is None else self.name(p.volatility),
            rules=[self.rule(n, rule) for n, rule in enumerate(p.rules)],
            limit_value=self.limit_value, limits=self.limits,
            legs_on=bool(p.leg_set()), leg_set=list(p.leg_set()), leg_partners=sorted(p.leg_partners().items()),
            **{f"quote_{side}": p.columns.index(side) if side in p.columns else None for side in L.QUOTE_SIDES},
            intent_column=p.intent_column,
            features=[as_float(j) for j in p.features.values()],
            HELD_EPSILON=repr(L.HELD_EPSILON), TRACE_FIXED=L.TRACE_FIXED, MARKET=L.MARKET, INTENT=L.INTENT, DECIDE=L.DECIDE, FILL=L.FILL,
            REJECT=L.REJECT, HALT=L.HALT, RESUME=L.RESUME, FILL_SAME=L.FILL_SAME, FILL_NEXT=L.FILL_NEXT,
            FILL_NEXT_OPEN=L.FILL_NEXT_OPEN, FILL_LATENCY=L.FILL_LATENCY, BAR_WIDTH=L.BAR_WIDTH,
            BAR=SimpleNamespace(OPEN=L.BAR_OPEN, HIGH=L.BAR_HIGH, LOW=L.BAR_LOW),
            clock=p.clock is not None, K_DAY=K_DAY, CLOCK_WIDTH=CLOCK_WIDTH,
            value=self.value, tick=self.tick_size,
        )


class _ConfigIndex:
    """`C.max_position` or `C["max_position"]` in templates: the config slot of a key."""

    def __getattr__(self, key):
        return L.C[key]

    __getitem__ = __getattr__


@dataclass(frozen=True)
class GenerationInput:
    """Everything code generation reads, and nothing else: the source is a function of
    this value (and of the generator's own files), so it is also the source cache's key."""

    program: Program
    name: str
    version: int
    param_types: tuple[str, ...]   # of program.params, in order
    risk: tuple[str, ...]          # the risk keys present, sorted (their values are kernel arguments)
    instruments: int
    #: whether some instrument is given a multiplier, a tick size (their values are pstate's)
    multiplier: bool = False
    tick_size: bool = False

    @staticmethod
    def of(program: Program, checked: CheckedPolicy) -> "GenerationInput":
        given = {key for contract in checked.contracts for key in contract}
        return GenerationInput(program, checked.name, checked.parsed.version,
                               tuple(checked.param_types[name] for name in program.params),
                               tuple(sorted(checked.risk)), len(checked.instruments),
                               "multiplier" in given, "tick_size" in given)

    def key(self) -> str:
        """SHA-256 of every field, the program's included field by field (each op
        without its source span), in order: feature order is trace column order."""
        program = {f.name: getattr(self.program, f.name) for f in fields(self.program)}
        program["ops"] = [op.key() for op in self.program.ops]
        described = repr(({f.name: getattr(self, f.name) for f in fields(self) if f.name != "program"}, program))
        return hashlib.sha256(described.encode()).hexdigest()


_ASSIGNMENT = re.compile(r"^(?P<indent>\s*)(?P<local>[pf]\w+) [-+]?= (?P<value>.*)$")


_RUN = "\ndef run("
#: The kernel's out-of-line functions (kernel.py.j2): each loads the state into locals on
#: entry and stores it on exit, and `run` flushes its own locals around each call.
_OUT_OF_LINE = ("fill_waiting", "exit_in_bar", "decide", "other_event", "decide_legs")
#: Out-of-line functions that call others: around them `run` moves the state their callees use.
_CALLS = {"decide_legs": ("decide",)}
_STATE_LOAD = re.compile(r"^    (?P<local>[ap]_\w+) = (int\()?(acct\[\d+\]|pstate\[i, \d+\])\)?$")
_STATE_STORE = re.compile(r"^    (acct\[\d+\]|pstate\[i, \d+\]) = (?P<local>[ap]_\w+)$")
_TARGETS = re.compile(r"^\s*(?P<lhs>[\w, ]+?)\s*[-+*/|&]?=(?!=)")
_STATE_NAME = re.compile(r"\b[ap]_\w+\b")
_CALL_TAG = re.compile(r"^(?P<line>.*)  # (?P<way>to|from) (?P<fn>\w+)$")
_CELL_STORE = re.compile(r"^\s*pstate\[[^,\]]+, (?P<column>\d+)\] = ")


def _prune_state(source: str) -> str:
    """Keep only the state moves that matter: an out-of-line function loads the locals it
    uses and stores those it assigns, and around a call `run` flushes what the function
    reads and reloads what it assigns (the lines tagged `# to fn` and `# from fn`)."""
    reads: dict[str, set[str]] = {}
    writes: dict[str, set[str]] = {}
    lines = source.split("\n")
    starts = [k for k, line in enumerate(lines) if line.startswith("def ")] + [len(lines)]
    keep = [True] * len(lines)
    # the local each per-instrument column is loaded into: a function that stores a column
    # of any instrument's row in the array itself (decide_legs) assigns that local too
    column_local = {m[3].split(", ")[1].rstrip("]"): m["local"] for line in lines
                    if (m := _STATE_LOAD.match(line)) and m[3].startswith("pstate")}
    for a, b in zip(starts, starts[1:]):
        fn = lines[a][4:lines[a].index("(")]
        if fn not in _OUT_OF_LINE:
            continue
        body = [line for line in lines[a:b] if not (_STATE_LOAD.match(line) or _STATE_STORE.match(line))]
        used = {name for line in body for name in _STATE_NAME.findall(line)}
        assigned = {name for line in body if (m := _TARGETS.match(line)) for name in _STATE_NAME.findall(m["lhs"])}
        assigned |= {column_local[m["column"]] for line in body
                     if (m := _CELL_STORE.match(line)) and m["column"] in column_local}
        reads[fn], writes[fn] = used, assigned
        for k in range(a, b):
            if (m := _STATE_LOAD.match(lines[k])) and m["local"] not in used:
                keep[k] = False
            elif (m := _STATE_STORE.match(lines[k])) and m["local"] not in assigned:
                keep[k] = False
    for fn, callees in _CALLS.items():
        for callee in callees:
            if fn in reads and callee in reads:
                reads[fn] |= reads[callee]
                writes[fn] |= writes[callee]
    out = []
    for line, kept in zip(lines, keep):
        m = _CALL_TAG.match(line)
        if m:
            wanted = reads if m["way"] == "to" else writes
            if _STATE_NAME.search(m["line"])[0] in wanted[m["fn"]]:
                out.append(m["line"])
        elif kept:
            out.append(line)
    return "\n".join(out)


def _write_through(source: str, cells: dict[str, str]) -> str:
    """A kernel of several instruments loads the event's instrument's state into locals
    in `run` (`cells`: local -> the array cell it comes from) and writes each one back
    right where it is assigned, so the arrays are current at every point and an event
    stores only what it changes (the out-of-line functions before `run` store their
    locals on exit). Every assignment in the generated source is one line."""
    head, run = source.split(_RUN)
    out = []
    for line in run.split("\n"):
        out.append(line)
        m = _ASSIGNMENT.match(line)
        if m and m["local"] in cells and m["value"] not in (cells[m["local"]], f"int({cells[m['local']]})"):
            out.append(f"{m['indent']}{cells[m['local']]} = {m['local']}")
    return head + _RUN + "\n".join(out)


def _render(gen: GenerationInput) -> str:
    emitter = _Emitter(gen.program, single=gen.instruments == 1, multiplier=gen.multiplier, tick_size=gen.tick_size)
    source = _prune_state(emitter.render(gen))
    if emitter.single:  # its state stays in locals for the whole batch
        return source
    cells = {local: f"pstate[i, {index}]" for local, index, _ in emitter.P.locals()}
    cells.update({local: f"fs[i, {offset} + {k}]" for n in range(len(emitter.slots))
                  for local, offset, k, _ in emitter.scalars(n)})
    return _write_through(source, cells)


def emit(program: Program, checked: CheckedPolicy) -> str:
    """The kernel source of a lowered, optimised program."""
    return _render(GenerationInput.of(program, checked))


@lru_cache(maxsize=1)
def _generator_digest() -> str:
    """Everything that shapes generated source besides the policy: the templates, this
    module, the state layout and the clock's columns (their numbers are written into the
    kernel) and the table of risk keys it is built from (config slots and reason bits)."""
    here = Path(__file__).parent
    files = [*sorted((here / "templates").glob("*.j2")), here / "emit.py", here / "layout.py",
             here / "sessions.py", Path(risk_keys.__file__)]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _sealed(key: str, source: str) -> str:
    """The first line of a rendered source's cache file: the SHA-256 of its key and text,
    so that a file altered, or another policy's put in its place, is rendered again."""
    return "# " + hashlib.sha256(f"{key}\n{source}".encode()).hexdigest()


def emit_cached(program: Program, checked: CheckedPolicy) -> str:
    """`emit`, remembered on disk by the whole input of code generation (never param
    values, which are kernel arguments): a cached compile in a fresh process skips
    template rendering. The file's first line seals its key and text (`_sealed`), so a
    file cut short, altered or another's is rendered again, never compiled."""
    from policyc.dsl.cache import cache_root, write_atomic

    from .hashing import COMPILER_VERSION

    gen = GenerationInput.of(program, checked)
    key = hashlib.sha256(f"{COMPILER_VERSION}\n{_generator_digest()}\n{gen.key()}".encode()).hexdigest()
    path = cache_root() / "sources" / f"{key}.py"
    try:
        digest, _, source = path.read_text().partition("\n")
        if digest == _sealed(key, source):
            return source
    except (OSError, UnicodeDecodeError):
        pass
    source = _render(gen)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, f"{_sealed(key, source)}\n{source}")
    except OSError:
        pass  # a read-only cache only costs the rendering time
    return source
