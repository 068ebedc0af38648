"""Differential tests: the Numba kernel against the reference interpreter.

Hypothesis generates random but valid policies (typed expression trees over market
fields, params, features, state values, lookbacks, every built-in and references to
the other instrument's values (`BBB.close`, `AAA.f1[2]`, `age(BBB)`); random signal
rules; a random subset of the risk keys and custom rules; fees and slippage) and random
event streams (random-walk prices with jumps, equal / sub-second / day-crossing
timestamps, intents, halts and resumes, bad prices). For every stream, in both backtest
fill modes, the kernel (`CompiledPolicy.run`) and `compiler.interpret.Interpreter` must
agree on every order, every decision's desired target and reason codes, the equity
curve and every traced feature value.

Each generated policy costs one Numba compile, so every example runs several event
streams, some of them under re-bound param values (`with_params` reuses the kernel).
The number of examples is fixed (EXAMPLES) and they are the same on every run
(derandomized); the test fails unless every one of them compiled and was compared.
Shrinking is off (each shrink step would be another compile): a failure prints the
policy text, the stream spec (seed and knobs) and the bound params, which is enough to
replay it with `make_events`.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.interpret import Interpreter, total
from policyc.dsl.diagnostics import PolicyError
from policyc.dsl.document import parse_policy_text
from policyc.dsl.risk_keys import ACCOUNT_KEYS, CONTRACT_KEYS, RISK_KEYS

RTOL = 1e-9
T0 = 1_700_000_000_000_000_000          # 2023-11-14T22:13:20Z
NS_S = 1_000_000_000
NS_H = 3600 * NS_S
#: Every backtest fill mode, with its latency (ns; FILL_LATENCY's is between the streams'
#: sub-second and minute steps, so an order waits for some events and not for others).
MODES = {"next": (L.FILL_NEXT, 0), "same": (L.FILL_SAME, 0), "next-open": (L.FILL_NEXT_OPEN, 0),
         "latency=30s": (L.FILL_LATENCY, 30 * 1_000_000_000)}


@contextmanager
def kernel_cache(root: str | None):
    """`POLICYC_CACHE` set to `root` (unset for None) for the block, then as it was."""
    with pytest.MonkeyPatch.context() as env:
        if root is None:
            env.delenv("POLICYC_CACHE", raising=False)
        else:
            env.setenv("POLICYC_CACHE", root)
        yield


@pytest.fixture(scope="module", autouse=True)
def _private_kernel_cache(tmp_path_factory):
    """Random kernels go to a throw-away cache, not the user's. Its value is the suite's
    cache (`POLICYC_CACHE` as it was, None for the default), for a fixed policy that other
    files compile too (`kernel_cache(_private_kernel_cache)`), so that it compiles once."""
    suite = os.environ.get("POLICYC_CACHE")
    with kernel_cache(str(tmp_path_factory.mktemp("kernels"))):
        yield suite


# =====================================================================================
# Comparison
# =====================================================================================
def close(a, b, rtol=RTOL) -> bool:
    """Equal, both NaN, or within rtol of each other."""
    a, b = float(a), float(b)
    if a != a or b != b:
        return a != a and b != b
    if a == b:
        return True
    if math.isinf(a) or math.isinf(b):
        return False
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def run_both(cp, ev: Events, mode: int, latency_ns: int = 0):
    res = cp.run(ev, mode, trace=True, latency_ns=latency_ns)
    it = Interpreter(cp.program, cp.params, cp.checked.risk, cp.checked.account, len(cp.instruments), mode,
                     latency_ns, cp.checked.contract_table)
    it.run(ev.ts, ev.kind, ev.inst, ev.vals, ev.bars)
    return res, it


def differences(cp, ev: Events, mode: int, latency_ns: int = 0, limit: int = 12) -> list[str]:
    """Every way the kernel and the interpreter disagree on one stream (first `limit`)."""
    res, it = run_both(cp, ev, mode, latency_ns)
    out: list[str] = []
    names = cp.reason_names

    def reasons(mask) -> str:
        return "|".join(L.decode_reasons(int(mask), names)) or "-"

    # orders
    ko, io = res.orders, it.orders
    if len(ko) != len(io):
        out.append(f"order count: kernel {len(ko)} interpreter {len(io)}")
    for n, (k, o) in enumerate(zip(ko, io)):
        exact = [("event", L.O_EVENT, o.event), ("instrument", L.O_INST, o.instrument),
                 ("fill_event", L.O_FILL_EVENT, o.fill_event), ("exit", L.O_EXIT, float(o.exit))]
        approx = [("qty", L.O_QTY, o.qty), ("price", L.O_PRICE, o.price), ("target", L.O_TARGET, o.target),
                  ("desired", L.O_DESIRED, o.desired), ("fill_price", L.O_FILL_PRICE, o.fill_price),
                  ("fee", L.O_FEE, o.fee), ("limit", L.O_LIMIT, o.limit)]
        bad = [f"{what} {float(k[col])!r} vs {float(want)!r}" for what, col, want in exact if float(k[col]) != float(want)]
        bad += [f"{what} {float(k[col])!r} vs {float(want)!r}" for what, col, want in approx if not close(k[col], want)]
        if int(k[L.O_REASONS]) != o.reasons:
            bad.append(f"reasons {reasons(k[L.O_REASONS])} vs {reasons(o.reasons)}")
        if bad:
            out.append(f"order {n} (event {o.event}, kernel event {int(k[L.O_EVENT])}): " + "; ".join(bad))
    # decisions
    decided = set()
    for d in it.trace:
        e = d["event"]
        decided.add(e)
        row = res.trace[e]
        bad = []
        if not close(row[L.T_DESIRED], d["desired"]):
            bad.append(f"desired {float(row[L.T_DESIRED])!r} vs {float(d['desired'])!r}")
        if row[L.T_REASONS] != d["reasons"]:
            bad.append(f"reasons {reasons(row[L.T_REASONS]) if row[L.T_REASONS] == row[L.T_REASONS] else 'NaN'}"
                       f" vs {reasons(d['reasons'])}")
        for what, col in (("position", L.T_POSITION), ("target", L.T_TARGET), ("order", L.T_ORDER),
                          ("equity", L.T_EQUITY), ("cash", L.T_CASH)):
            if not close(row[col], d[what]):
                bad.append(f"{what} {float(row[col])!r} vs {float(d[what])!r}")
        if d["features"] is not None:
            for name, j, want in zip(cp.feature_names, range(L.TRACE_FIXED, res.trace.shape[1]), d["features"]):
                if not close(row[j], float(want)):
                    bad.append(f"feature {name} {float(row[j])!r} vs {float(want)!r}")
        if bad:
            out.append(f"decision at event {e} (kind {int(ev.kind[e])}, inst {int(ev.inst[e])}): " + "; ".join(bad))
    for e in range(len(ev)):
        if e not in decided and not np.isnan(res.trace[e, L.T_DESIRED]):
            out.append(f"kernel decided at event {e} (kind {int(ev.kind[e])}), the interpreter did not")
    # equity
    if len(it.equity_curve) != len(ev):
        out.append(f"interpreter equity curve has {len(it.equity_curve)} points for {len(ev)} events")
    for e, (k, want) in enumerate(zip(res.equity, it.equity_curve)):
        if not close(k, want):
            out.append(f"equity after event {e}: kernel {float(k)!r} interpreter {float(want)!r}")
            break
    return out[:limit]


def assert_same(cp, ev: Events, context: str = ""):
    for label, (mode, latency_ns) in MODES.items():
        problems = differences(cp, ev, mode, latency_ns)
        assert not problems, (f"kernel and interpreter disagree (fill {label}) {context}\n"
                              + "\n".join(problems) + "\n--- policy ---\n" + cp.checked.parsed.source.text)


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64)


def assert_trace_changes_nothing(cp, ev: Events, context: str = ""):
    """What the kernel leaves without a decision trace (where it takes the common market
    event in a loop of its own) is what it leaves with one, bit for bit: the orders, the
    features' state, the instruments' and the account's, and the equity curve; fed
    whole, or in pieces (the live runtime feeds a batch a call)."""
    n = len(ev)
    cuts = sorted({n // 3, n // 2, n - 1} - {0}) if n > 3 else []
    for label, (mode, latency_ns) in MODES.items():
        runs = {}
        for traced in (True, False):
            for pieces in ([], cuts):
                session = cp.session(mode, latency_ns=latency_ns)
                equity = np.full(n, np.nan)
                trace = np.full((n, L.TRACE_FIXED + len(cp.program.features)), np.nan) if traced else None
                for start, stop in zip([0, *pieces], [*pieces, n]):
                    session.feed(ev, equity, trace, start, stop)
                runs[traced, bool(pieces)] = [session.orders[:session.n_orders], session.fs, session.pstate,
                                              session.acct, equity]
        want = [_bits(a) for a in runs[True, False]]
        for key, got in runs.items():
            for name, a, b in zip(("orders", "features", "pstate", "account", "equity"), want, got):
                assert a.shape == _bits(b).shape and np.array_equal(a, _bits(b)), (
                    f"{name} differ (fill {label}, traced {key[0]}, in pieces {key[1]}) {context}\n"
                    + cp.checked.parsed.source.text)


# =====================================================================================
# Random policies
# =====================================================================================
FIELDS = ("close", "price", "high", "low", "volume")
STATES = ("position", "equity", "drawdown", "orders_today", "entry_price", "unrealized_pnl", "cash", "margin_usage")
MOVING = ("sma", "ema", "rma", "wma", "stdev", "variance", "sum", "highest", "lowest", "rsi", "zscore")
UNARY = ("abs", "log", "exp", "sqrt", "sign", "floor", "ceil", "round")
TIME_FNS = ("hour", "minute_of_day", "day_of_week")
CMP = ("<", "<=", ">", ">=", "==", "!=")
LITERALS = ("0", "1", "2", "3", "0.5", "1.5", "10", "50", "100", "2%", "0.1%", "1e-3", "0.25", "7")


@dataclass
class Ctx:
    """Names an expression may read, by type."""

    num_params: list = field(default_factory=list)
    win_params: list = field(default_factory=list)    # integer params 1..12: windows and lookbacks
    bool_params: list = field(default_factory=list)
    num_feats: list = field(default_factory=list)     # readable now (defined earlier)
    bool_feats: list = field(default_factory=list)
    lag_num: list = field(default_factory=list)       # readable only through a lookback >= 1
    lag_bool: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    instruments: list = field(default_factory=list)   # names a reference `X.name` may use

    def no_forward(self) -> "Ctx":
        """Inside `(expr)[k]` a feature not yet computed may not appear (E208)."""
        return Ctx(self.num_params, self.win_params, self.bool_params, self.num_feats, self.bool_feats,
                   [], [], self.inputs, self.instruments)


def pick(draw, options):
    return draw(st.sampled_from(options))


def window(draw, ctx: Ctx) -> str:
    if ctx.win_params and draw(st.integers(0, 2)) == 0:
        return pick(draw, ctx.win_params)
    return str(draw(st.integers(1, 12)))


def lag_k(draw, ctx: Ctx, zero_ok: bool) -> str:
    options = ["1", "1", "3", "2"] + (["0"] if zero_ok else []) + ctx.win_params
    return pick(draw, options)


def reference(draw, ctx: Ctx, names: list, forward: list) -> str:
    """`X.name`, or `X.name[k]` (k of X's events back; a feature not computed yet only
    so), of a random instrument X: the event's own one or the other."""
    x = pick(draw, ctx.instruments)
    if forward and draw(st.booleans()):
        return f"{x}.{pick(draw, forward)}[{lag_k(draw, ctx, False)}]"
    name = pick(draw, names)
    return f"{x}.{name}" if draw(st.integers(0, 2)) else f"{x}.{name}[{lag_k(draw, ctx, True)}]"


def num_leaf(draw, ctx: Ctx) -> str:
    kinds = ["field"] * 5 + ["literal"] * 2 + ["state"] + ["lagged"] * 2
    kinds += ["param"] * 2 * bool(ctx.num_params) + ["feature"] * 3 * bool(ctx.num_feats)
    kinds += ["forward"] * bool(ctx.lag_num) + ["input"] * bool(ctx.inputs)
    kinds += ["ref"] * 2 * bool(ctx.instruments) + ["age"] * bool(ctx.instruments)
    kind = pick(draw, kinds)
    if kind == "ref":
        return reference(draw, ctx, list(FIELDS) + ctx.num_feats + ctx.inputs + ["position", "entry_price"],
                         ctx.lag_num)
    if kind == "age":
        return f"age({pick(draw, ctx.instruments)})"
    if kind == "field":
        return pick(draw, FIELDS)
    if kind == "literal":
        return pick(draw, LITERALS)
    if kind == "state":
        return pick(draw, STATES)
    if kind == "param":
        return pick(draw, ctx.num_params)
    if kind == "feature":
        return pick(draw, ctx.num_feats)
    if kind == "input":
        return pick(draw, ctx.inputs)
    if kind == "forward":
        return f"{pick(draw, ctx.lag_num)}[{lag_k(draw, ctx, False)}]"
    source = pick(draw, list(FIELDS) + list(STATES[:3]) + ctx.num_feats + ctx.num_params)
    return f"{source}[{lag_k(draw, ctx, True)}]"


def num_expr(draw, ctx: Ctx, depth: int) -> str:
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        return num_leaf(draw, ctx)
    d = depth - 1
    kind = pick(draw, ["arith"] * 4 + ["moving"] * 3 + ["diff"] * 2 + ["unary"] * 2 + ["neg", "pow", "atr", "bars",
                      "minmax", "clip", "nz", "time", "if", "lookback"])
    if kind == "arith":
        return f"({num_expr(draw, ctx, d)} {pick(draw, '+-*/')} {num_expr(draw, ctx, d)})"
    if kind == "neg":
        return f"(-{num_expr(draw, ctx, d)})"
    if kind == "pow":
        exponent = pick(draw, ["2", "0.5", "3", "-1", "(-2)", num_leaf(draw, ctx)])
        return f"({num_expr(draw, ctx, d)} ** {exponent})"
    if kind == "moving":
        return f"{pick(draw, MOVING)}({num_expr(draw, ctx, d)}, {window(draw, ctx)})"
    if kind == "atr":
        return f"atr({window(draw, ctx)})"
    if kind == "diff":
        fn = pick(draw, ["change", "returns", "log_return"])
        x = num_expr(draw, ctx, d)
        if fn != "log_return" and draw(st.booleans()):
            return f"{fn}({x}, {lag_k(draw, ctx, False)})"
        return f"{fn}({x})"
    if kind == "bars":
        return f"bars_since({bool_expr(draw, ctx, d)})"
    if kind == "unary":
        return f"{pick(draw, UNARY)}({num_expr(draw, ctx, d)})"
    if kind == "minmax":
        args = [num_expr(draw, ctx, d) for _ in range(draw(st.integers(2, 3)))]
        return f"{pick(draw, ['min', 'max'])}({', '.join(args)})"
    if kind == "clip":
        return f"clip({num_expr(draw, ctx, d)}, {num_expr(draw, ctx, d)}, {num_expr(draw, ctx, d)})"
    if kind == "nz":
        return f"nz({num_expr(draw, ctx, d)}, {num_expr(draw, ctx, d)})"
    if kind == "time":
        return f"{pick(draw, TIME_FNS)}(ts)"
    if kind == "if":
        return f"(if {bool_expr(draw, ctx, d)} then {num_expr(draw, ctx, d)} else {num_expr(draw, ctx, d)})"
    return f"({num_expr(draw, ctx.no_forward(), d)})[{lag_k(draw, ctx, True)}]"


def bool_leaf(draw, ctx: Ctx) -> str:
    kinds = ["cmp"] * 4 + ["literal"] + ["param"] * bool(ctx.bool_params) + ["feature"] * 2 * bool(ctx.bool_feats)
    kinds += ["forward"] * bool(ctx.lag_bool) + ["is_nan"] + ["ref"] * bool(ctx.instruments and ctx.bool_feats)
    kind = pick(draw, kinds)
    if kind == "ref":
        return reference(draw, ctx, ctx.bool_feats, ctx.lag_bool)
    if kind == "literal":
        return pick(draw, ["true", "false"])
    if kind == "param":
        return pick(draw, ctx.bool_params)
    if kind == "feature":
        name = pick(draw, ctx.bool_feats)
        return name if draw(st.booleans()) else f"{name}[{lag_k(draw, ctx, True)}]"
    if kind == "forward":
        return f"{pick(draw, ctx.lag_bool)}[{lag_k(draw, ctx, False)}]"
    if kind == "is_nan":
        return f"is_nan({num_leaf(draw, ctx)})"
    return f"({num_leaf(draw, ctx)} {pick(draw, CMP)} {num_leaf(draw, ctx)})"


def bool_expr(draw, ctx: Ctx, depth: int) -> str:
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        return bool_leaf(draw, ctx)
    d = depth - 1
    kind = pick(draw, ["cmp"] * 5 + ["logic"] * 2 + ["cross"] * 2 + ["not", "is_nan", "if", "eq", "lookback"])
    if kind == "cmp":
        return f"({num_expr(draw, ctx, d)} {pick(draw, CMP)} {num_expr(draw, ctx, d)})"
    if kind == "logic":
        return f"({bool_expr(draw, ctx, d)} {pick(draw, ['and', 'or'])} {bool_expr(draw, ctx, d)})"
    if kind == "not":
        return f"(not {bool_expr(draw, ctx, d)})"
    if kind == "cross":
        return f"{pick(draw, ['crosses_above', 'crosses_below'])}({num_expr(draw, ctx, d)}, {num_expr(draw, ctx, d)})"
    if kind == "is_nan":
        return f"is_nan({num_expr(draw, ctx, d)})"
    if kind == "if":
        return f"(if {bool_expr(draw, ctx, d)} then {bool_expr(draw, ctx, d)} else {bool_expr(draw, ctx, d)})"
    if kind == "eq":
        return f"({bool_expr(draw, ctx, d)} {pick(draw, ['==', '!='])} {bool_expr(draw, ctx, d)})"
    return f"({bool_expr(draw, ctx.no_forward(), d)})[{lag_k(draw, ctx, True)}]"


def price_like(draw, ctx: Ctx) -> str:
    """Something comparable with `close`: a field, a smoothed field, or a num feature."""
    options = ["field", "smooth", "smooth"] + ["feature"] * bool(ctx.num_feats)
    kind = pick(draw, options)
    if kind == "field":
        f = pick(draw, ("close", "price", "high", "low"))
        return f if draw(st.booleans()) else f"{f}[{lag_k(draw, ctx, False)}]"
    if kind == "feature":
        return pick(draw, ctx.num_feats)
    return f"{pick(draw, ('sma', 'ema', 'wma', 'rma', 'highest', 'lowest'))}({pick(draw, ('close', 'price'))}, {window(draw, ctx)})"


def rule_when(draw, ctx: Ctx) -> str:
    kind = pick(draw, ["random", "random", "trend", "trend", "feature", "always"])
    if kind == "always":
        return "true"
    if kind == "trend":
        return f"{price_like(draw, ctx)} {pick(draw, ['>', '<', '>=', '<='])} {price_like(draw, ctx)}"
    if kind == "feature" and (ctx.num_feats or ctx.bool_feats):
        if ctx.bool_feats and (not ctx.num_feats or draw(st.booleans())):
            name = pick(draw, ctx.bool_feats)
            return name if draw(st.booleans()) else f"not {name}"
        return f"{pick(draw, ctx.num_feats)} {pick(draw, ['>', '<'])} {num_leaf(draw, ctx)}"
    return bool_expr(draw, ctx, draw(st.integers(1, 3)))


def rule_target(draw, ctx: Ctx, sizes: list) -> str:
    kinds = ["int"] * 3 + ["size"] * 3 * bool(sizes) + ["expr", "signed", "zero"]
    kind = pick(draw, kinds)
    if kind == "int":
        return str(draw(st.sampled_from([-300, -50, -5, -1, 1, 2, 5, 10, 25, 100, 250, 1000])))
    if kind == "size":
        s = pick(draw, sizes)
        return s if draw(st.integers(0, 3)) else f"-{s}"
    if kind == "zero":
        return "0"
    if kind == "signed":
        scale = pick(draw, sizes) if sizes and draw(st.booleans()) else str(draw(st.integers(1, 200)))
        return f"{scale} * sign({num_expr(draw, ctx, 1)})"
    return num_expr(draw, ctx, draw(st.integers(0, 2)))


def limit_price(draw, ctx: Ctx) -> str:
    """An IOC limit price: near the price (above or below, so some orders fill and some
    are cancelled), at the quote, another instrument's, or one that is no price (NaN,
    at most 0: the order is blocked)."""
    options = ["price * 1.01", "price * 0.99", "close * 1.002", "ask * 1.0002", "bid * 0.9998", "price",
               "nz(price[1], price)", "0 / 0", "-1"]
    options += [f"{x}.close * 1.005" for x in ctx.instruments]
    return pick(draw, options)


def with_limits_and_legs(draw, ctx: Ctx, sizes: list, rules: list, names: list) -> list[dict]:
    """The rules (when, target) as rules of `signals`, now and then with a `limit`, and in
    about one policy in two some of them with `legs` on the instruments `names`: one or
    two in a random order, the first with the rule's target, each a target alone or a
    target and a limit. (Drawn after the rest of the policy, so the policies drawn before
    legs existed are drawn still.)"""
    legs_ok = draw(st.booleans())
    out = []
    for when, target in rules:
        if legs_ok and draw(st.booleans()):
            order = draw(st.permutations(names))[:draw(st.integers(1, len(names)))]
            targets = [target] + [rule_target(draw, ctx, sizes) for _ in order[1:]]
            out.append({"when": when, "legs": [(x, t, limit_price(draw, ctx) if draw(st.booleans()) else None)
                                               for x, t in zip(order, targets)]})
        else:
            out.append({"when": when, "target": target,
                        "limit": limit_price(draw, ctx) if draw(st.integers(0, 4)) == 0 else None})
    return out


#: Values each risk key may take in a random policy, as written (dsl/risk_keys.py): every
#: key but those that only tune another key's check, drawn along with that key, and
#: `max_leg_imbalance`, drawn only for a policy with legs (E216 otherwise).
RISK_VALUES = {name: key.samples for name, key in RISK_KEYS.items()
               if key.setting_of is None and name != "max_leg_imbalance"}
ACTIONS = ("block", "reduce_only", "liquidate", "halt")


@dataclass
class GenPolicy:
    text: str
    n_instruments: int
    has_intent: bool
    params: dict            # name -> (kind, value text)


def yaml_expr(expr: str) -> str:
    return '"' + expr + '"'


@st.composite
def policies(draw, legs: bool = True) -> GenPolicy:
    """A random valid policy; with `legs` False none of its rules has a limit or legs (the
    live order path's comparison, which sends market orders only)."""
    n_inst = draw(st.integers(1, 2))
    has_intent = draw(st.integers(0, 3)) == 0
    # params: windows, sizes, thresholds, at most one bool
    params: dict[str, tuple[str, str]] = {}
    kinds = draw(st.lists(st.sampled_from(["win", "win", "size", "size", "thr", "flag"]), min_size=1, max_size=4))
    if kinds.count("flag") > 1:
        kinds = [k for k in kinds if k != "flag"] + ["flag"]
    for j, kind in enumerate(kinds):
        if kind == "win":
            params[f"n{j}"] = (kind, str(draw(st.integers(1, 12))))
        elif kind == "size":
            params[f"size{j}"] = (kind, pick(draw, ["1", "3", "10", "25", "100", "250", "12.5", "400"]))
        elif kind == "thr":
            params[f"k{j}"] = (kind, pick(draw, ["0.5", "1", "2.5", "0.02", "100", "0"]))
        else:
            params["flag"] = (kind, pick(draw, ["true", "false"]))
    num_params = [n for n, (k, _) in params.items() if k != "flag"]
    # references: by the symbols themselves (`[AAA, BBB]`) or by names of the map form
    aliases = ["AAA", "BBB"][:n_inst] if draw(st.booleans()) else ["a", "b"][:n_inst]
    ctx = Ctx(num_params=num_params, win_params=[n for n, (k, _) in params.items() if k == "win"],
              bool_params=[n for n, (k, _) in params.items() if k == "flag"],
              inputs=["intent"] if has_intent and draw(st.booleans()) else [],
              instruments=aliases if draw(st.integers(0, 3)) else [])
    sizes = [n for n, (k, _) in params.items() if k == "size"]

    # features: types fixed up front so later features can be read through lookbacks
    n_feat = draw(st.integers(1, 5))
    types = [draw(st.sampled_from(["num", "num", "num", "bool"])) for _ in range(n_feat)]
    self_ref = draw(st.integers(0, 2)) == 0
    features: dict[str, str] = {}
    for j in range(n_feat):
        name = f"f{j}"
        later = [f"f{m}" for m in range(j + 1, n_feat)]
        forward = types[j] == "num" and draw(st.integers(0, 3)) == 0
        c = Ctx(ctx.num_params, ctx.win_params, ctx.bool_params,
                [f"f{m}" for m in range(j) if types[m] == "num"], [f"f{m}" for m in range(j) if types[m] == "bool"],
                [m for m in later if types[int(m[1:])] == "num"] if forward else [],
                [m for m in later if types[int(m[1:])] == "bool"] if forward else [], ctx.inputs, ctx.instruments)
        if types[j] == "num" and self_ref and j == n_feat - 1:
            seed = num_expr(draw, c, 1)
            step = num_expr(draw, c, 2)
            expr = pick(draw, [f"max(nz({name}[1], {seed}), {step})", f"min(nz({name}[1], {seed}), {step})",
                               f"nz({name}[1], 0) + {step}", f"0.9 * nz({name}[1], {seed}) + 0.1 * {step}"])
        elif types[j] == "num":
            expr = num_expr(draw, c, draw(st.integers(1, 4)))
        else:
            expr = bool_expr(draw, c, draw(st.integers(1, 4)))
        features[name] = expr
    full = Ctx(ctx.num_params, ctx.win_params, ctx.bool_params,
               [f for f, t in zip(features, types) if t == "num"], [f for f, t in zip(features, types) if t == "bool"],
               [], [], ctx.inputs, ctx.instruments)
    rules = [(rule_when(draw, full), rule_target(draw, full, sizes)) for _ in range(draw(st.integers(1, 3)))]

    # risk
    risk: dict[str, str] = {}
    for key in draw(st.lists(st.sampled_from(sorted(RISK_VALUES)), max_size=9, unique=True)):
        value = pick(draw, RISK_VALUES[key])
        if key in ("max_position", "max_order_qty") and sizes and draw(st.integers(0, 3)) == 0:
            value = pick(draw, sizes)            # a limit bound to a param
        risk[key] = value
    for name, key in RISK_KEYS.items():
        if key.setting_of in risk and draw(st.booleans()):
            risk[name] = pick(draw, key.samples)
    custom = [(f"c{j}", bool_expr(draw, full, draw(st.integers(0, 2))), pick(draw, ACTIONS))
              for j in range(draw(st.integers(0, 2)))]
    account = {name: pick(draw, key.samples) for name, key in ACCOUNT_KEYS.items() if draw(st.booleans())}
    # a clock moves the day counters' roll off UTC midnight, and gives the session functions
    clock = pick(draw, [None, None, None, "calendar: XASX", "calendar: XNYS", "timezone: Europe/Berlin"])
    if clock:
        features[f"f{n_feat}"] = pick(draw, ["minutes_since_open() + hour(ts)", "minutes_to_close() - day_of_week(ts)",
                                             "if in_session() then minute_of_day(ts) else -1"])

    symbols = ["AAA", "BBB"][:n_inst]
    # sometimes a contract: a multiplier, a tick size or both, given as a param now and then
    contracts = [{name: pick(draw, key.samples) for name, key in CONTRACT_KEYS.items() if draw(st.booleans())}
                 if draw(st.integers(0, 3)) == 0 else {} for _ in symbols]
    for c in contracts:
        if "multiplier" in c and num_params and draw(st.integers(0, 3)) == 0:
            c["multiplier"] = f"{pick(draw, num_params)} + 1"
    if aliases == symbols and not any(contracts):
        lines = ["policy: gen", "version: 1", f"instruments: [{', '.join(symbols)}]"]
    else:
        def entry(k: int, s: str, c: dict) -> str:
            symbol = s if aliases == symbols else f"venue{k}:{s}"
            return f'"{symbol}"' if not c else \
                "{" + ", ".join([f'symbol: "{symbol}"'] + [f"{n}: {v}" for n, v in c.items()]) + "}"
        pairs = ", ".join(f"{a}: {entry(k, s, c)}" for k, (a, s, c) in enumerate(zip(aliases, symbols, contracts)))
        lines = ["policy: gen", "version: 1", f"instruments: {{{pairs}}}"]
    rules = with_limits_and_legs(draw, full, sizes, rules, aliases) if legs else \
        [{"when": when, "target": target, "limit": None} for when, target in rules]
    if any("legs" in r for r in rules) and draw(st.booleans()):
        risk["max_leg_imbalance"] = pick(draw, RISK_KEYS["max_leg_imbalance"].samples)
    if clock:
        lines.append(clock)
    if has_intent:
        lines.append("inputs: [intent]")
    lines.append("params:")
    lines += [f"  {n}: {v}" for n, (_, v) in params.items()]
    lines.append("features:")
    lines += [f"  {n}: {yaml_expr(e)}" for n, e in features.items()]
    lines.append("signals:")
    for r in rules:
        lines.append(f"  - when: {yaml_expr(r['when'])}")
        if "legs" in r:
            lines.append("    legs:")
            for x, target, limit in r["legs"]:
                lines.append(f"      {x}: {yaml_expr(target)}" if limit is None else
                             f"      {x}: {{target: {yaml_expr(target)}, limit: {yaml_expr(limit)}}}")
        else:
            lines.append(f"    target: {yaml_expr(r['target'])}")
            if r["limit"] is not None:
                lines.append(f"    limit: {yaml_expr(r['limit'])}")
    if risk or custom:
        lines.append("risk:")
        lines += [f"  {k}: {v}" for k, v in risk.items()]
        if custom:
            lines.append("  custom:")
            for name, when, action in custom:
                lines += [f"    - name: {name}", f"      when: {yaml_expr(when)}", f"      action: {action}"]
    if account:
        lines.append("account:")
        lines += [f"  {k}: {v}" for k, v in account.items()]
    return GenPolicy("\n".join(lines) + "\n", n_inst, has_intent, params)


# =====================================================================================
# Random event streams
# =====================================================================================
@dataclass
class StreamSpec:
    seed: int
    n: int
    vol: float          # per-event log-return stdev
    jump_p: float       # chance of a 2-20% jump
    intent_p: float     # INTENT events
    control_p: float    # HALT / RESUME / DECIDE events
    bad_p: float        # NaN / non-positive / inf / huge / subnormal price on a market event, NaN in another column
    market_intent_p: float  # a number in the `intent` column of a market event
    tick: bool          # prices rounded to cents (ties, equal prices)
    back_p: float = 0.0     # an event dated up to two days before the one it follows (time going backwards)
    leap: bool = False      # one event at the last int64 nanosecond, and the stream going on from before it
    intent_limits: bool = False  # intents carry a limit price (market, near the price, or none that is a price)


stream_specs = st.builds(
    StreamSpec, seed=st.integers(0, 2**32 - 1), n=st.integers(30, 300),
    vol=st.sampled_from([0.0, 0.002, 0.01, 0.03]), jump_p=st.sampled_from([0.0, 0.02, 0.08]),
    intent_p=st.sampled_from([0.0, 0.03, 0.1]), control_p=st.sampled_from([0.0, 0.01, 0.04]),
    bad_p=st.sampled_from([0.0, 0.02, 0.06]), market_intent_p=st.sampled_from([0.0, 0.05, 0.3]),
    tick=st.booleans(), back_p=st.sampled_from([0.0, 0.0, 0.03, 0.1]), leap=st.booleans(),
    intent_limits=st.booleans(),
)


def make_events(spec: StreamSpec, columns: list[str], n_inst: int) -> Events:
    rng = np.random.default_rng(spec.seed)
    n = spec.n
    # timestamps: equal, sub-second, seconds to minutes, hours (crossing UTC midnight)
    step_kind = rng.choice(4, size=n, p=[0.1, 0.3, 0.4, 0.2])
    steps = np.select([step_kind == 0, step_kind == 1, step_kind == 2],
                      [np.zeros(n, dtype=np.int64), rng.integers(1_000_000, NS_S, n),
                       rng.integers(NS_S, 600 * NS_S, n)], rng.integers(NS_H, 10 * NS_H, n))
    steps[0] = 0
    ts = (T0 + int(rng.integers(0, 24 * NS_H)) + np.cumsum(steps)).astype(np.int64)
    back = rng.random(n) < spec.back_p
    ts[back] -= rng.integers(1, 2 * 24 * NS_H, n)[back]
    if spec.leap:
        ts[rng.integers(0, n)] = np.iinfo(np.int64).max

    control = spec.control_p
    p_intent = spec.intent_p
    kind = rng.choice([L.MARKET, L.INTENT, L.HALT, L.RESUME, L.DECIDE], size=n,
                      p=[1 - p_intent - 3 * control, p_intent, control, 1.5 * control, 0.5 * control]).astype(np.int8)
    inst = rng.integers(0, n_inst, n).astype(np.int32)
    vals = np.full((n, len(columns)), np.nan)
    bars = np.full((n, L.BAR_WIDTH), np.nan)  # open, high and low of every market event
    col = {c: j for j, c in enumerate(columns)}
    last = rng.uniform(20, 200, n_inst)
    for e in range(n):
        i = inst[e]
        if kind[e] == L.INTENT:
            vals[e, 0] = rng.choice([0.0, 1.0, -1.0, 5.0, -20.0, 100.0, -100.0, 333.3, 1e4, np.nan, np.inf])
            if spec.intent_limits and len(columns) > 1:  # its limit price (read by kernels that keep limits)
                vals[e, 1] = rng.choice([np.nan, np.nan, last[i] * 1.01, last[i] * 0.99, -1.0, np.inf])
            continue
        if kind[e] != L.MARKET:
            continue
        prev = last[i]
        price = prev * math.exp(rng.normal(0.0, spec.vol)) if spec.vol else prev
        if rng.random() < spec.jump_p:
            price *= 1.0 + rng.choice([-1, 1]) * rng.uniform(0.02, 0.2)
        price = max(price, 0.05)
        if spec.tick:
            price = max(round(price, 2), 0.01)
        last[i] = price
        row = {
            "price": price, "close": price, "open": prev,
            "high": max(prev, price) * (1 + abs(rng.normal(0, 0.004))),
            "low": min(prev, price) * (1 - abs(rng.normal(0, 0.004))),
            "volume": float(rng.integers(1, 5000)), "qty": float(rng.integers(1, 100)),
            "bid": price * 0.9995, "ask": price * 1.0005, "intent": np.nan,
        }
        if spec.tick:
            row["high"], row["low"] = round(row["high"], 2), round(row["low"], 2)
        if rng.random() < spec.market_intent_p:
            row["intent"] = rng.choice([0.0, -0.0, 3.0, -7.0, 50.0, -250.0, 1000.0, -np.inf, rng.uniform(-100, 100)])
        for c, j in col.items():
            vals[e, j] = row.get(c, rng.uniform(-1, 1))
        bars[e] = row["open"], row["high"], row["low"]
        if spec.bad_p and e % 17 == 5:  # a bar value that is no price: the bar goes without it
            bars[e, e % L.BAR_WIDTH] = (0.0, np.nan, np.inf)[e % 3]
        if rng.random() < spec.bad_p:
            vals[e, 0] = rng.choice([np.nan, 0.0, -1.0, np.inf, 1e308, 1.7e308, 5e-324, 1e-300])
        if rng.random() < spec.bad_p and len(columns) > 1:
            vals[e, rng.integers(1, len(columns))] = np.nan
    return Events(ts, kind, inst, vals, bars)


def rebound_params(draw, gp: GenPolicy) -> dict:
    """New values for some params; the kernel is reused (params are kernel arguments)."""
    out = {}
    for name, (kind, _) in gp.params.items():
        if not draw(st.booleans()):
            continue
        if kind == "win":
            out[name] = float(draw(st.integers(0, 12)))   # 0: valid as a lookback, not as a window
        elif kind == "size":
            out[name] = float(draw(st.sampled_from([1, 5, 40, 120, 600, 7.5])))
        elif kind == "thr":
            out[name] = float(draw(st.sampled_from([0.1, 1, 3, 0.05])))
        else:
            out[name] = draw(st.booleans())
    return out


STREAMS_PER_POLICY = 5
#: Each example is one Numba compile (2-9 s), so there are few, and the same ones on every
#: run (derandomized: a failure is a failure of the code, never of the draw). For a bug
#: hunt, more and random ones: POLICYC_DIFF_EXAMPLES=300 POLICYC_DIFF_RANDOM=1 pytest tests/test_differential.py
EXAMPLES = int(os.environ.get("POLICYC_DIFF_EXAMPLES", "4"))
RANDOM = bool(os.environ.get("POLICYC_DIFF_RANDOM"))
_compared: list[str] = []  # the policies compared in full by the current run, in order


@settings(max_examples=EXAMPLES, derandomize=not RANDOM, deadline=None, database=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(gp=policies(), data=st.data())
def _kernel_matches_interpreter(gp, data):
    streams = [(rebound_params(data.draw, gp) if k > 0 else {}, data.draw(stream_specs, label=f"stream {k}"))
               for k in range(STREAMS_PER_POLICY)]
    note(gp.text)
    try:
        base = compile_policy(parse_policy_text(gp.text, "gen.yaml"))
    except PolicyError as exc:   # not a valid policy: Hypothesis draws another, this one does not count
        note(str(exc))
        assume(False)
    for k, (overrides, spec) in enumerate(streams):
        cp = base
        if overrides:
            try:
                cp = base.with_params(**overrides)
            except PolicyError:      # e.g. a window param re-bound to 0
                cp = base
        ev = make_events(spec, cp.columns, gp.n_instruments)
        label = f"on {spec} with params {cp.params}"
        if k % 2:  # the hot loops run only on data without bars: every other stream has none
            ev, label = replace(ev, bars=None), f"{label}, without bars"
        assert_same(cp, ev, label)
        assert_trace_changes_nothing(cp, ev, label)
    _compared.append(gp.text)


def test_kernel_matches_interpreter_on_random_policies():
    """On EXAMPLES random valid policies, each under STREAMS_PER_POLICY random event
    streams and in both fill modes, the kernel and the interpreter agree on everything
    (`differences`); and all EXAMPLES of them did run: Hypothesis stops early, without
    failing, when too many of its draws are invalid policies, and that must not pass
    as a success."""
    _compared.clear()
    _kernel_matches_interpreter()
    assert len(_compared) >= EXAMPLES, (
        f"only {len(_compared)} of {EXAMPLES} random policies were compiled and compared "
        "(Hypothesis gave up on too many invalid ones)")


_drawn: list[str] = []


@settings(max_examples=200, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(gp=policies())
def _draw_texts(gp):
    _drawn.append(gp.text)


def test_the_random_policies_use_every_new_construct():
    """The generator of the test above draws contracts (a multiplier and a tick size),
    limit orders and multi-leg rules: over 200 draws (texts only, nothing compiled), each
    appears, so a run of the test above with enough examples compares them."""
    _drawn.clear()
    _draw_texts()
    for construct in ("multiplier", "tick_size", "    limit: ", "legs:", "max_leg_imbalance"):
        assert any(construct in text for text in _drawn), construct


# =====================================================================================
# Hand-written cases
# =====================================================================================
EVERY_KEY = """
policy: every_key
version: 1
instruments: [A, B]
inputs: [intent]
params:
  size: 100
  fast: 3
  slow: 8
features:
  fast_ma: ema(close, fast)
  slow_ma: sma(close, slow)
  peak: max(nz(peak[1], close), close)
  code: volume
signals:
  - when: code == 1111 and fast_ma > slow_ma
    target: size
  - when: code == 2222
    target: -size
risk:
  long_only: false
  max_position: 2000
  max_position_notional: 95000
  max_gross_exposure: 150000
  max_margin_usage: 200%
  stop_loss: 4%
  take_profit: 6%
  trailing_stop: 2.5%
  max_drawdown: 6%
  max_daily_loss: 20%
  max_volatility: 25%
  volatility_window: 4
  stale_after: 1h
  lot_size: 5
  min_order_qty: 10
  max_order_qty: 700
  max_order_notional: 60000
  price_collar: 12%
  max_orders_per_day: 60
  max_orders_per_second: 2
  custom:
    - name: quiet_block
      when: code == 7000
      action: block
    - name: cautious
      when: code == 8000
      action: reduce_only
    - name: flatten
      when: code == 9000
      action: liquidate
    - name: panic
      when: code == 9999
      action: halt
account:
  initial_equity: 100000
  margin_rate: 50%
  fees_bps: 1
  slippage_bps: 2
"""


class Script:
    """Build an event stream step by step: market bars, intents, halts, resumes."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.rows: list[tuple] = []
        self.t = T0 + 13 * NS_H        # 2023-11-15 11:13:20 UTC

    def _add(self, kind, inst, values, dt):
        self.t += dt
        row = np.full(len(self.columns), np.nan)
        for c, v in values.items():
            if c in self.columns:
                row[self.columns.index(c)] = v
        self.rows.append((self.t, kind, inst, row))

    def bar(self, inst, price, volume=1000.0, intent=np.nan, dt=60 * NS_S):
        self._add(L.MARKET, inst, {"price": price, "close": price, "high": price * 1.001, "low": price * 0.999,
                                   "volume": volume, "intent": intent}, dt)
        return self

    def intent(self, inst, target, dt=NS_S):
        self._add(L.INTENT, inst, {"price": target}, dt)
        return self

    def halt(self, dt=NS_S):
        self._add(L.HALT, 0, {}, dt)
        return self

    def resume(self, dt=NS_S):
        self._add(L.RESUME, 0, {}, dt)
        return self

    def events(self) -> Events:
        ts, kind, inst, vals = zip(*self.rows)
        return Events(np.array(ts, dtype=np.int64), np.array(kind, dtype=np.int8), np.array(inst, dtype=np.int32),
                      np.array(vals))


def every_key_script(columns) -> Events:
    """Targets come mostly through the `intent` column of market events; volume codes
    switch the signal rules and custom rules on."""
    s = Script(columns)
    s.intent(1, 50)                                      # B has no price yet: no_price:blocked
    for j in range(10):                                  # warm-up, both instruments; A's intent of 10 is
        a_intent = {1: 10.0, 2: 0.0}.get(j, np.nan)      # refused while its volatility is unknown
        s.bar(0, 100.0 + 0.1 * j, intent=a_intent).bar(1, 50.0 - 0.05 * j, intent=0.0 if j == 0 else np.nan)
    # stop loss: long 500 on A, then a 5% fall
    s.bar(0, 100.9, intent=500).bar(0, 101.0).bar(0, 101.2).bar(0, 96.0).bar(0, 96.1).bar(0, 96.2)
    s.intent(0, 400)                                     # still locked: stop_loss:blocked
    s.bar(0, 96.3).intent(0, 0).bar(0, 96.4)             # a desired 0 releases the lock
    # take profit: long 300 on A, +7%
    s.bar(0, 96.5, intent=300).bar(0, 96.6).bar(0, 97.0).bar(0, 103.5).bar(0, 103.6)
    s.bar(0, 103.7, intent=0).bar(0, 103.7)
    # trailing stop: short 200 on B, a run down then a 3% bounce from the low
    s.bar(1, 50.0, intent=-203).bar(1, 49.9).bar(1, 49.5).bar(1, 48.9).bar(1, 50.2).bar(1, 50.3)
    s.bar(1, 50.3, intent=0).bar(1, 50.3)
    # a stop that meets a short target: the exit leaves on its own, then the short re-entry
    s.bar(0, 103.0, intent=200).bar(0, 103.1).bar(0, 98.5, intent=-100).bar(0, 98.4).bar(0, 98.4, intent=0)
    s.bar(0, 98.4)
    # signal rules by volume code
    s.bar(0, 103.0, volume=1111).bar(0, 104.0, volume=1111).bar(0, 105.0, volume=1111).bar(0, 105.0)
    s.bar(1, 50.0, volume=2222).bar(1, 50.1).bar(1, 50.1, intent=0).bar(1, 50.1)
    # custom rules: block, reduce_only, liquidate
    s.bar(0, 105.2, intent=600, volume=7000).bar(0, 105.3, volume=8000).bar(0, 105.4, intent=800, volume=8000)
    s.bar(0, 105.5).bar(0, 105.5).bar(0, 105.6, volume=9000).bar(0, 105.6).bar(0, 105.6, intent=0).bar(0, 105.6)
    # explicit halt and resume
    s.bar(0, 105.0, intent=300).bar(0, 105.0).halt().bar(0, 105.1).intent(0, 400).bar(0, 105.2)
    s.resume().bar(0, 105.3, intent=0).bar(0, 105.3).bar(0, 105.4, intent=300).bar(0, 105.5)
    # custom halt, then resume
    s.bar(0, 105.6, volume=9999).bar(0, 105.7).resume().bar(0, 105.8, intent=0).bar(0, 105.8)
    # kill switch by drawdown: 950 long A (notional-capped; two orders), then a crash
    s.bar(0, 100.0, intent=1000, dt=2 * NS_S).bar(0, 100.1).bar(0, 100.1).bar(0, 92.0).bar(0, 92.5).bar(0, 91.0)
    s.intent(0, 100).bar(0, 91.6).resume().bar(0, 91.7, intent=0).bar(0, 91.7)
    # next UTC day, a price collar jump, sub-second orders, bad prices, a NaN intent
    s.bar(1, 50.0, intent=100, dt=20 * NS_H).bar(1, 50.0).bar(1, 58.0).bar(1, 58.1, intent=150, dt=1_000_000)
    s.bar(1, 58.1, intent=-150, dt=1_000_000).bar(1, 58.1, intent=0, dt=1_000_000)
    s.bar(1, 58.1, intent=-50, dt=1_000_000)            # a third order in 3 ms: max_orders_per_second
    s.bar(1, float("nan")).bar(1, -1.0).bar(1, 58.2)
    s.intent(1, float("nan")).bar(1, 58.3).bar(1, 58.3, intent=0).bar(1, 58.3)
    s.bar(1, 58.3, intent=7).bar(1, 58.3)               # 7 -> lot 5 -> below min_order_qty
    s.intent(0, 10)                                      # A's last event is a day old: stale_after
    # time going backwards a day and forward again, then a price that overflows the account
    s.bar(1, 58.4, intent=20, dt=-30 * NS_H).bar(1, 58.4, intent=30, dt=31 * NS_H).bar(1, 58.5)
    s.bar(1, 1e308).bar(1, 58.6).bar(1, 58.6)
    return s.events()


EXPECTED_EVERY_KEY = {
    "stop_loss:exit", "stop_loss:blocked", "take_profit:exit", "trailing_stop:exit", "max_drawdown:halt",
    "kill_switch:halt", "quiet_block:blocked", "cautious:blocked", "flatten:exit", "panic:halt",
    "lot_size:clipped", "price_collar:blocked", "max_position_notional:clipped", "no_price:blocked",
    "stale_after:blocked", "max_orders_per_second:blocked", "min_order_qty:blocked", "max_order_qty:clipped",
    "max_order_notional:clipped", "volatility_unknown:blocked", "equity_invalid:halt",
}


def reasons_seen(cp, ev) -> set[str]:
    res = cp.run(ev, L.FILL_NEXT, trace=True)
    seen = set()
    for mask in res.trace[:, L.T_REASONS]:
        if mask == mask:
            seen.update(L.decode_reasons(mask, cp.reason_names))
    return seen


@pytest.fixture(scope="module")
def every_key(_private_kernel_cache):
    """In the suite's cache, not this file's throw-away one: tests/test_core_differential.py
    runs this policy too, and a cold run compiles its kernel once, not once per cache."""
    with kernel_cache(_private_kernel_cache):
        return compile_policy(parse_policy_text(EVERY_KEY, "every_key.yaml"))


def test_every_risk_key_scripted(every_key):
    ev = every_key_script(every_key.columns)
    missing = EXPECTED_EVERY_KEY - reasons_seen(every_key, ev)
    assert not missing, f"the script no longer exercises {sorted(missing)}"
    events = every_key.run(ev, L.FILL_NEXT).orders[:, L.O_EVENT].tolist()
    assert any(events.count(e) == 2 for e in events), "the script no longer splits an exit from its re-entry"
    assert_same(every_key, ev)


@pytest.mark.parametrize("seed", range(6))
def test_every_risk_key_random_walk(every_key, seed):
    spec = StreamSpec(seed=seed, n=300, vol=0.02, jump_p=0.05, intent_p=0.15, control_p=0.02, bad_p=0.02,
                      market_intent_p=0.2, tick=seed % 2 == 0, back_p=0.05 if seed % 3 == 0 else 0.0,
                      leap=seed % 3 == 1)
    ev = make_events(spec, every_key.columns, 2)
    rng = np.random.default_rng(seed)
    codes = every_key.columns.index("volume")
    market = np.flatnonzero(ev.kind == L.MARKET)
    ev.vals[rng.choice(market, 40), codes] = rng.choice([1111, 2222, 7000, 8000, 9000, 9999], 40)
    assert_same(every_key, ev, f"on {spec}")


CHURN = """
policy: churn
version: 1
instruments: [AAA, BBB]
params:
  size: 10
features:
  flip: -nz(flip[1], -1)
signals:
  - when: true
    target: size * flip
risk:
  max_orders_per_second: 1000
account:
  fees_bps: 1
  slippage_bps: 1
"""


def test_long_stream_grows_the_order_buffer():
    """More orders than the session's first order buffer (1024): the kernel returns early
    and `Session.feed` resumes it mid-batch; nothing may be lost or repeated."""
    cp = compile_policy(parse_policy_text(CHURN, "churn.yaml"))
    spec = StreamSpec(seed=7, n=1500, vol=0.01, jump_p=0.01, intent_p=0.03, control_p=0.0, bad_p=0.0,
                      market_intent_p=0.0, tick=True)  # no bad prices: a huge one would halt the churn
    ev = make_events(spec, cp.columns, 2)
    assert len(cp.run(ev, L.FILL_NEXT).orders) > 1024
    assert_same(cp, ev)


SPECIAL = (0.0, -0.0, 1.0, -1.0, 0.5, -0.3, 2.5, -2.5, -8.0, 1e308, math.inf, -math.inf, math.nan)
UNARY_CASES = ("abs", "log", "exp", "sqrt", "sign", "floor", "ceil", "round")
BINARY_CASES = {
    "add": "a + b", "sub": "a - b", "mul": "a * b", "div": "a / b", "pow": "a ** b", "half": "a ** 0.5",
    "square": "a ** 2", "recip": "a ** -1", "neg": "-a", "lo": "min(a, b)", "hi": "max(a, b, 0)",
    "clipped": "clip(a, b, 1)", "filled": "nz(a, b)", "pick": "if a > b then a else b",
    "high3": "highest(a, 3)", "low3": "lowest(a, 3)",
}


def scalar_policy() -> str:
    lines = ["policy: scalars", "version: 1", "instruments: [AAA]", "inputs: [a, b]", "features:"]
    for fn in UNARY_CASES:
        lines += [f"  {fn}_a: {fn}(a)", f"  inv_{fn}_a: 1 / {fn}(a)"]
    for name, expr in BINARY_CASES.items():
        lines += [f'  {name}: "{expr}"', f"  inv_{name}: 1 / {name}"]
    for j, op in enumerate(CMP):
        lines.append(f'  cmp{j}: "a {op} b"')
    lines += ["  missing: is_nan(a)", "signals:", "  - when: inv_half < 0 or inv_ceil_a < 0", "    target: 1"]
    return "\n".join(lines) + "\n"


def test_scalar_functions_on_special_values():
    """Every pure function and operator on signed zeros, infinities, NaN and negative
    bases, read from input columns so nothing is constant-folded. `1 / f(x)` makes the
    sign of a zero result visible. `a` runs through each special value for 13 events, so
    highest/lowest over 3 see windows holding both +0.0 and -0.0: equal values, and which
    one they return is a tie-break that the division shows."""
    cp = compile_policy(parse_policy_text(scalar_policy(), "scalars.yaml"))
    pairs = [(a, b) for a in SPECIAL for b in SPECIAL]
    ev = Events((T0 + np.arange(len(pairs)) * 60 * NS_S).astype(np.int64), np.zeros(len(pairs), dtype=np.int8),
                np.zeros(len(pairs), dtype=np.int32), np.full((len(pairs), len(cp.columns)), 100.0))
    ev.vals[:, cp.columns.index("a")] = [a for a, _ in pairs]
    ev.vals[:, cp.columns.index("b")] = [b for _, b in pairs]
    res, it = run_both(cp, ev, L.FILL_SAME)
    wrong: dict[str, list[str]] = {}
    for d in it.trace:
        a, b = pairs[d["event"]]
        for name, got, want in zip(cp.feature_names, res.trace[d["event"], L.TRACE_FIXED:], d["features"]):
            if not close(got, float(want)):
                uses_b = "b" in BINARY_CASES.get(name.removeprefix("inv_"), "") or name.startswith("cmp")
                case = f"a={a!r}" + (f" b={b!r}" if uses_b else "")
                wrong.setdefault(name, [])
                if not any(w.startswith(case + ":") for w in wrong[name]):
                    wrong[name].append(f"{case}: kernel {float(got)!r}, interpreter {float(want)!r}")
    assert not wrong, "\n".join(f"{name}: {'; '.join(cases)}" for name, cases in sorted(wrong.items()))
    assert_same(cp, ev)


# =====================================================================================
# Account totals: equity and gross exposure of several instruments
# =====================================================================================
TOTALS = """
policy: totals
version: 1
instruments: [A, B, C, D, E, F]
inputs: [intent]
features:
  usage: margin_usage
  eq: equity
signals:
  - when: eq < 0
    target: 0
risk:
  max_gross_exposure: 1e300
account:
  initial_equity: 100000
  margin_rate: 50%
  fees_bps: 3
  slippage_bps: 2
"""


def totals_events(seed: int, n: int = 3000) -> Events:
    """Prices and quantities of every scale (so running sums drop low bits and cancel),
    targets that flip sign, venue fills of odd sizes, and a few infinite or overflowing
    marks (a huge price on a huge position)."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.integers(-9, 10, 6)
    kind = rng.choice([L.MARKET, L.INTENT, L.FILL], n, p=[0.6, 0.3, 0.1]).astype(np.int8)
    inst = rng.integers(0, 6, n).astype(np.int32)
    vals = np.full((n, 3), np.nan)
    price = scale[inst] * np.exp(rng.normal(0, 0.3, n))
    price[rng.random(n) < 0.002] = 1e300
    target = np.round(rng.normal(0, 1, n) * 10.0 ** rng.integers(-3, 7, n), 3)
    market, intent, fill = kind == L.MARKET, kind == L.INTENT, kind == L.FILL
    vals[market, 0] = price[market]
    vals[market, 1] = rng.normal(0, 5, n)[market]     # the intent input column: mostly NaN
    vals[market & (rng.random(n) < 0.8), 1] = np.nan
    vals[intent, 0] = target[intent]
    vals[fill, 0] = rng.normal(0, 3, n)[fill] * 10.0 ** rng.integers(-2, 4, n)[fill]
    vals[fill, 1] = price[fill]
    vals[fill, 2] = np.abs(rng.normal(0, 0.01, n))[fill]
    ts = T0 + np.cumsum(rng.integers(0, 3 * NS_H, n)).astype(np.int64)
    return Events(ts, kind, inst, vals)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_account_totals_are_exact_sums(seed):
    """The running totals of a kernel of several instruments give the exact sum rounded
    once, as the interpreter's `total` does from every instrument: equity after every
    event, the margin usage and equity features, and every order, bit for bit. Run one
    event at a time, the running total must also have lost bits at some point (err > 0),
    so its certified path is what is being compared."""
    cp = compile_policy(parse_policy_text(TOTALS))
    ev = totals_events(seed)
    for mode, latency_ns in MODES.values():
        res, it = run_both(cp, ev, mode, latency_ns)
        assert np.array_equal(res.equity, np.array(it.equity_curve), equal_nan=True)
        for d in it.trace:
            if d["features"] is not None:   # a market event's decision
                assert np.array_equal(res.trace[d["event"], L.TRACE_FIXED:], np.array(d["features"], float),
                                      equal_nan=True), d["event"]
        assert len(res.orders) == len(it.orders)
        for row, o in zip(res.orders, it.orders):
            assert (row[L.O_QTY], row[L.O_FILL_PRICE] if o.fill_event >= 0 else 0.0) == \
                   (o.qty, o.fill_price if o.fill_event >= 0 else 0.0)
    session = cp.session(L.FILL_SAME)
    dropped = 0
    for e in range(len(ev)):
        session.feed(Events(ev.ts[e:e + 1], ev.kind[e:e + 1], ev.inst[e:e + 1], ev.vals[e:e + 1]))
        dropped += session.acct[L.A_MARK_ERR] > 0 or session.acct[L.A_GROSS_ERR] > 0
    assert dropped > 0


def _exact(terms) -> "Fraction":
    from fractions import Fraction

    return sum((Fraction(x) for x in terms), Fraction(0))


ULP_1 = 2.0 ** -52
SUMS = [
    [1.0, ULP_1 / 2],                          # a tie: half to even, down
    [1.0 + ULP_1, ULP_1 / 2],                  # a tie: up
    [1.0, ULP_1 / 2, 2.0 ** -200],             # not a tie: a far smaller term decides
    [1.0, ULP_1 / 2, -(2.0 ** -200)],
    [1e16, 1.0, 1e-16],
    [1e308, 1e308, -1e308],                    # a partial sum overflows, the sum does not
    [1.7e308, 1.7e308],                        # the sum overflows
    [-1.7e308, -1.7e308, 5e-324],
    [5e-324, 5e-324, -1e-320],                 # subnormal
    [1e100, 1.0, -1e100],                      # cancellation
    [1.0, math.inf, 2.0],
    [-math.inf, 1.0],
    [math.inf, -math.inf],
    [math.nan, 1.0],
    [0.0, -0.0],
    [],
]


@pytest.mark.parametrize("terms", SUMS + [list(np.random.default_rng(k).normal(0, 1, 40)
                                               * 10.0 ** np.random.default_rng(k + 50).integers(-30, 30, 40))
                                          for k in range(20)])
def test_exact_total_rounds_once(terms):
    """The kernel's exact re-sum is the interpreter's `total`, and the running total it
    restarts from (hi + lo, err) is within err of the exact finite sum."""
    cp = compile_policy(parse_policy_text(TOTALS))
    k = cp.kernel
    extra, rest = (terms[0], terms[1:]) if terms else (0.0, [])
    pstate = np.zeros((len(rest), L.P_CUSTOM))
    pstate[:, L.P_MARK] = rest
    value, hi, lo, err, bad = k.exact_total(pstate, L.P_MARK, extra, np.full(k.MAX_PARTIALS, np.nan))
    want = total(terms if terms else [0.0])
    assert value == want or (value != value and want != want), (value, want)
    finite = [x for x in terms if math.isfinite(x)]
    assert bad == len(terms) - len(finite)
    if err < math.inf:
        from fractions import Fraction
        assert abs(Fraction(hi) + Fraction(lo) - _exact(finite)) <= Fraction(err)


def test_settle_never_trusts_an_uncertain_rounding():
    """A running total whose hi + lo sits on a rounding midpoint, or within its error
    bound of one, is re-summed exactly; one far from any midpoint is rounded as it is.
    Either way the value is the exact sum of the terms rounded once."""
    k = compile_policy(parse_policy_text(TOTALS)).kernel
    scratch = np.full(k.MAX_PARTIALS, np.nan)
    pstate = np.zeros((2, L.P_CUSTOM))
    pstate[:, L.P_MARK] = [ULP_1 / 2, 2.0 ** -300]            # the true sum is just above 1 + ulp/2
    truth = total([1.0, ULP_1 / 2, 2.0 ** -300])
    assert truth == 1.0 + ULP_1
    # hi + lo is the midpoint itself and err admits the lost 2**-300: IEEE alone would round
    # down to 1.0 (half to even), below the truth
    value, hi, lo, err, _ = k.settle(1.0, ULP_1 / 2, 2.0 ** -300, 0.0, pstate, L.P_MARK, 1.0, scratch)
    assert value == truth and hi == truth
    # far from a midpoint: certified as it is, the state unchanged
    pstate[:, L.P_MARK] = [ULP_1 / 8, 2.0 ** -300]
    value, hi, lo, err, _ = k.settle(1.0, ULP_1 / 8, 2.0 ** -300, 0.0, pstate, L.P_MARK, 1.0, scratch)
    assert value == 1.0 and (hi, lo, err) == (1.0, ULP_1 / 8, 2.0 ** -300)
    # a total near 0 cannot be certified against a non-zero error: re-summed
    pstate[:, L.P_MARK] = [-1.0, 2.0 ** -400]
    value, *_ = k.settle(0.0, 0.0, 2.0 ** -300, 0.0, pstate, L.P_MARK, 1.0, scratch)
    assert value == 2.0 ** -400
