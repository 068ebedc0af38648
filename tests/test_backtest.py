"""The backtester checked from the outside: an independent re-implementation, accounting
invariants, no lookahead, risk invariants under random intents, output formats, the JSON
summary, the HTML report and the sweep.

The independent check (`reference_ema_stop`) is written from the spec (sections 4-7)
only: it does not share code or reading with the kernel or the reference interpreter.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.cli import main
from policyc.dsl.document import parse_policy_text
from policyc.runtime.backtest import load_events, run_backtest, summary

from test_differential import StreamSpec, assert_trace_changes_nothing, make_events

DATA = Path(__file__).resolve().parent.parent / "data"
ORCL = DATA / "orcl-1995-2014.csv"
NS_S = 1_000_000_000
NS_DAY = 86_400 * NS_S
T0 = 1_704_153_600_000_000_000  # 2024-01-02 00:00 UTC


def cli(capsys, *argv):
    """Run `policyc ...` in-process: (exit code, stdout, stderr); never a traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


def rel_close(a, b, rtol=1e-9, atol=0.0):
    return abs(a - b) <= max(rtol * max(abs(a), abs(b)), atol)


def market_events(cp, ts, inst, price, intent=None) -> Events:
    """Events for `cp.columns` from one price column (price = close) and an optional
    intent column."""
    cols = []
    for c in cp.columns:
        if c in ("price", "close"):
            cols.append(price)
        elif c == "intent":
            cols.append(intent if intent is not None else np.full(len(ts), np.nan))
        else:
            raise AssertionError(f"unexpected column {c}")
    return Events(np.asarray(ts, np.int64), np.zeros(len(ts), np.int8), np.asarray(inst, np.int32),
                  np.ascontiguousarray(np.column_stack(cols), dtype=np.float64))


# =====================================================================================
# 1. Independent check: EMA crossover + 3% stop loss + 1 bp fees, --fill next, ORCL
# =====================================================================================
#: `down` and `lo` make the same kernel the long/short crossover of the second
#: independent check (`-p down=-1 -p lo=false`): a param change never recompiles.
EMA_STOP = """\
policy: ema_stop
version: 1
description: long-only EMA crossover with a 3% stop, for the independent check
instruments: [ORCL]
params:
  fast: 12
  slow: 26
  size: 100
  down: 0
  lo: true
features:
  fast_ma: ema(close, fast)
  slow_ma: ema(close, slow)
signals:
  - when: crosses_above(fast_ma, slow_ma)
    target: size
  - when: crosses_below(fast_ma, slow_ma)
    target: size * down
risk:
  long_only: lo
  stop_loss: 3%
account:
  initial_equity: 100000
  fees_bps: 1
"""


def _ema(x: list[float], n: int) -> list[float]:
    """Spec 4: seeded with the SMA of the first n values, then alpha = 2/(n+1)."""
    out = [math.nan] * len(x)
    alpha = 2.0 / (n + 1)
    for i in range(n - 1, len(x)):
        out[i] = sum(x[:n]) / n if i == n - 1 else alpha * x[i] + (1 - alpha) * out[i - 1]
    return out


def reference_ema_stop(path: Path, fast=12, slow=26, size=100.0, stop=0.03, fees_bps=1.0, equity0=100000.0):
    """A plain loop over the CSV, from the spec: (orders, final equity, reason counts).

    Per event: fill the pending order at this event's price (spec 7, --fill next), then
    the rules (spec 5: first rule that fires sets the desired target, else it is kept),
    then the stop (spec 6.2: exit when the price is 3% below the average entry price;
    long exposure stays locked until the desired target is 0 or short), long_only,
    order = target - (position + open order)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    dates = [r["Date"] for r in rows]
    close = [float(r["Close"]) for r in rows]
    f_ma, s_ma = _ema(close, fast), _ema(close, slow)
    cash, pos, entry = equity0, 0.0, math.nan
    desired, locked, pending = 0.0, False, None
    orders, counts = [], {}
    for e, p in enumerate(close):
        if pending is not None:
            q = pending["qty"]
            fee = abs(q) * p * fees_bps / 1e4
            new = pos + q
            if new == 0:
                entry = math.nan
            elif pos == 0:
                entry = p
            elif pos * q > 0:
                entry = (entry * pos + p * q) / new
            cash -= q * p + fee
            pos = new
            pending.update(fill=dates[e], price=p, fee=fee)
            pending = None
        if e >= 1 and f_ma[e] > s_ma[e] and f_ma[e - 1] <= s_ma[e - 1]:
            desired = size
        elif e >= 1 and f_ma[e] < s_ma[e] and f_ma[e - 1] >= s_ma[e - 1]:
            desired = 0.0
        if locked and desired <= 0:
            locked = False
        target, reasons = desired, []
        if pos > 0 and p <= entry * (1 - stop):
            target, locked = 0.0, True
            reasons.append("stop_loss:exit")
        elif locked:
            target = 0.0
            reasons.append("stop_loss:blocked")
        target = max(target, 0.0)
        for r in reasons:
            counts[r] = counts.get(r, 0) + 1
        q = target - (pos + (pending["qty"] if pending else 0.0))
        if q != 0:
            pending = {"decision": dates[e], "fill": "", "qty": q, "price": None, "fee": None,
                       "reasons": ";".join(reasons)}
            orders.append(pending)
    return orders, cash + pos * close[-1], counts


@pytest.fixture(scope="module")
def ema_stop_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ema") / "ema_stop.yaml"
    path.write_text(EMA_STOP)
    return path


@pytest.fixture(scope="module")
def ema_stop(ema_stop_file):
    return compile_policy(str(ema_stop_file))


def test_independent_ema_crossover_with_stop_loss(capsys, tmp_path, ema_stop_file, ema_stop):
    ref_orders, ref_equity, ref_counts = reference_ema_stop(ORCL)
    assert len(ref_orders) > 100 and any(o["reasons"] == "stop_loss:exit" for o in ref_orders)

    # --- via the command line
    orders_csv = tmp_path / "orders.csv"
    code, out, err = cli(capsys, "backtest", ema_stop_file, "--data", ORCL, "--orders", orders_csv,
                         "--fill", "next", "--format", "json")  # the reference fills at the next close
    assert code == 0, err
    s = json.loads(out)
    with open(orders_csv, newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(ref_orders) == s["orders"]
    for k, (mine, theirs) in enumerate(zip(ref_orders, got)):
        assert theirs["decision_ts"] == mine["decision"] + "T00:00:00.000000000Z", k
        assert theirs["fill_ts"][:10] == mine["fill"], k
        assert float(theirs["qty"]) == mine["qty"], k
        assert rel_close(float(theirs["fill_price"]), mine["price"]), k
        assert rel_close(float(theirs["fee"]), mine["fee"]), k
        assert theirs["reasons"] == mine["reasons"], k
    assert rel_close(s["final_equity"], ref_equity)
    assert rel_close(s["fees"], sum(o["fee"] for o in ref_orders))
    assert s["reasons"] == ref_counts

    # --- via the Python API
    events, _ = load_events(ema_stop, [(None, str(ORCL))])
    bt = run_backtest(ema_stop, events, L.FILL_NEXT, progress=False)
    dates = np.datetime_as_string(events.ts.astype("datetime64[ns]"), unit="D")
    assert len(bt.orders) == len(ref_orders)
    for k, (o, mine) in enumerate(zip(bt.orders, ref_orders)):
        assert dates[int(o[L.O_EVENT])] == mine["decision"], k
        assert dates[int(o[L.O_FILL_EVENT])] == mine["fill"], k
        assert o[L.O_QTY] == mine["qty"], k
        assert rel_close(o[L.O_FILL_PRICE], mine["price"]), k
        if o[L.O_EXIT] == 1:
            assert mine["reasons"] == "stop_loss:exit", k
    assert rel_close(bt.equity[-1], ref_equity)
    assert bt.reasons == ref_counts


#: The long/short crossover of the second independent check is `EMA_STOP` with the cross
#: below going short (`down` -1: target -size) and no long-only clip (`lo` false): EMA
#: 12/26, size 100, a 3% stop, 1 bp fees, initial equity 100,000, on its kernel.
EMA_FLIP_PARAMS = ("-p", "down=-1", "-p", "lo=false")


def reference_ema_flip(path: Path, size=100.0, stop=0.03, fees_bps=1.0, equity0=100000.0):
    """A plain loop over the CSV, from the spec: (orders, final equity, reason counts).

    As `reference_ema_stop`, but the crossover goes short as well as long, and the stop
    (spec 6.2) protects both sides: a long exits at 3% below its average entry price, a
    short at 3% above, and that side stays locked until the desired target is 0 or on
    the other side. When the stop fires on the bar where the strategy reverses, the exit
    is its own order and the reversal a second one (spec 6, exits always leave); both
    fill at the next bar."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    dates = [r["Date"] for r in rows]
    close = [float(r["Close"]) for r in rows]
    f_ma, s_ma = _ema(close, 12), _ema(close, 26)
    cash, pos, entry = equity0, 0.0, math.nan
    desired, locked, pending = 0.0, 0.0, []
    orders, counts = [], {}
    for e, p in enumerate(close):
        for o in pending:
            q = o["qty"]
            fee = abs(q) * p * fees_bps / 1e4
            new = pos + q
            if new == 0:
                entry = math.nan
            elif pos == 0 or pos * new < 0:    # opened, or reversed through zero: a new entry
                entry = p
            elif pos * q > 0:                  # added to
                entry = (entry * abs(pos) + p * abs(q)) / abs(new)
            cash -= q * p + fee
            pos = new
            o.update(fill=dates[e], price=p, fee=fee)
        pending = []
        if e >= 1 and f_ma[e] > s_ma[e] and f_ma[e - 1] <= s_ma[e - 1]:
            desired = size
        elif e >= 1 and f_ma[e] < s_ma[e] and f_ma[e - 1] >= s_ma[e - 1]:
            desired = -size
        if locked and (desired == 0 or desired * locked < 0):
            locked = 0.0
        fired = False
        if not locked and (pos > 0 and p <= entry * (1 - stop) or pos < 0 and p >= entry * (1 + stop)):
            locked, fired = math.copysign(1.0, pos), True
        reasons = ["stop_loss:exit"] if fired else []
        target = desired
        legs = []
        if locked and target * locked > 0:
            target = 0.0
            if not fired:
                reasons = ["stop_loss:exit" if pos * locked > 0 else "stop_loss:blocked"]
        if fired and target * locked < 0 and pos * locked > 0:
            legs.append((-pos, "stop_loss:exit"))   # the exit, on its own
            legs.append((target, ""))               # then the reversal, from flat
        elif target != pos:
            legs.append((target - pos, ";".join(reasons)))
        for r in reasons:
            counts[r] = counts.get(r, 0) + 1
        for qty, why in legs:
            pending.append({"decision": dates[e], "fill": "", "qty": qty, "price": None, "fee": None, "reasons": why})
        orders += pending
    return orders, cash + pos * close[-1], counts


def test_independent_long_short_crossover_with_exits_that_meet_a_reversal(capsys, tmp_path, ema_stop_file):
    ref_orders, ref_equity, ref_counts = reference_ema_flip(ORCL)
    decided = [o["decision"] for o in ref_orders]
    assert sum(decided.count(d) == 2 for d in set(decided)) > 10   # the data has stops on reversal bars
    orders_csv = tmp_path / "orders.csv"
    code, out, err = cli(capsys, "backtest", ema_stop_file, *EMA_FLIP_PARAMS, "--data", ORCL, "--orders", orders_csv,
                         "--fill", "next", "--format", "json")  # the reference fills at the next close
    assert code == 0, err
    s = json.loads(out)
    with open(orders_csv, newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(ref_orders) == s["orders"]
    for k, (mine, theirs) in enumerate(zip(ref_orders, got)):
        assert theirs["decision_ts"] == mine["decision"] + "T00:00:00.000000000Z", k
        assert theirs["fill_ts"][:10] == mine["fill"], k
        assert float(theirs["qty"]) == mine["qty"], k
        assert rel_close(float(theirs["fill_price"]), mine["price"]), k
        assert rel_close(float(theirs["fee"]), mine["fee"]), k
        assert theirs["reasons"] == mine["reasons"], k
    assert rel_close(s["final_equity"], ref_equity)
    assert s["reasons"] == ref_counts


# =====================================================================================
# 2. Accounting invariants on a random two-instrument run
# =====================================================================================
MULTI = """\
policy: multi_rules
version: 1
instruments: [A, B]
params:
  fast: 5
  slow: 20
  size: 40
features:
  f: ema(close, fast)
  s: sma(close, slow)
  r: rsi(close, 14)
  mom: close / close[3] - 1
signals:
  - when: r > 78
    target: -size / 2
  - when: r < 22
    target: size * 2
  - when: crosses_above(f, s)
    target: size
  - when: crosses_below(f, s) and mom < 0
    target: -size
  - when: bars_since(crosses_below(f, s)) == 7
    target: 0
risk:
  max_position: 100
  max_order_qty: 30
  stop_loss: 4%
  take_profit: 6%
account:
  initial_equity: 50000
  margin_rate: 100%
  fees_bps: 5
  slippage_bps: 7
"""


@pytest.fixture(scope="module")
def multi():
    return compile_policy(parse_policy_text(MULTI, "multi_rules.yaml"))


def random_two_instrument_stream(cp, seed, n=3000):
    rng = np.random.default_rng(seed)
    inst = rng.integers(0, 2, n)
    ts = T0 + np.cumsum(rng.integers(0, 900, n)) * NS_S   # equal timestamps happen
    price = np.empty(n)
    level = [50.0, 120.0]
    for e in range(n):
        i = inst[e]
        level[i] *= math.exp(rng.normal(0, 0.012) + (rng.normal(0, 0.06) if rng.random() < 0.01 else 0.0))
        price[e] = level[i]
    return market_events(cp, ts, inst, price), price


@pytest.mark.parametrize("mode", [L.FILL_NEXT, L.FILL_SAME], ids=["next", "same"])
def test_accounting_invariants_on_every_event(multi, mode):
    cp = multi
    events, price = random_two_instrument_stream(cp, seed=20240611)
    bt = run_backtest(cp, events, mode, trace=True, progress=False)
    orders, fills = bt.orders, bt.fills
    fees_bps, slip_bps = 5.0, 7.0
    assert len(fills) > 50 and len(bt.trades) > 10
    assert {t.side for t in bt.trades} == {1, -1}

    # every fill: at the next event of the same instrument (--fill next) or at the decision
    # event (--fill same), slipped against the order, charged fees_bps of its notional
    for o in orders:
        e, i = int(o[L.O_EVENT]), int(o[L.O_INST])
        later = np.flatnonzero((events.inst == i) & (np.arange(len(events)) > e))
        if mode == L.FILL_NEXT and len(later) == 0:
            assert o[L.O_FILL_EVENT] == -1
            continue
        f = int(o[L.O_FILL_EVENT])
        assert f == (later[0] if mode == L.FILL_NEXT else e)
        expected = price[f] * (1 + math.copysign(slip_bps / 1e4, o[L.O_QTY]))
        assert rel_close(o[L.O_FILL_PRICE], expected)
        assert rel_close(o[L.O_FEE], abs(o[L.O_QTY]) * o[L.O_FILL_PRICE] * fees_bps / 1e4)

    # replay the fills: cash and positions, equity at every event
    by_event: dict[int, list] = {}
    for o in fills:
        by_event.setdefault(int(o[L.O_FILL_EVENT]), []).append(o)
    cash, pos, last = bt.initial_equity, np.zeros(2), np.full(2, np.nan)
    for e in range(len(events)):
        i = events.inst[e]
        last[i] = price[e]
        for o in by_event.get(e, []):
            pos[int(o[L.O_INST])] += o[L.O_QTY]
            cash -= o[L.O_QTY] * o[L.O_FILL_PRICE] + o[L.O_FEE]
        held = sum(pos[j] * last[j] for j in range(2) if pos[j] != 0)
        assert rel_close(bt.equity[e], cash + held), e
        if mode == L.FILL_NEXT:  # the decision sees this event's fills; nothing else moves equity
            assert rel_close(bt.trace[e, L.T_EQUITY], bt.equity[e]), e
            assert abs(bt.trace[e, L.T_POSITION] - pos[i]) < 1e-9, e

    # fees: the account's running total, the summary and the round trips all equal the
    # sum of the fills' fees; the account's cash is the replayed cash
    session = cp.session(mode)
    session.feed(events)
    total_fees = float(np.sum(fills[:, L.O_FEE]))
    assert rel_close(session.acct[L.A_FEES], total_fees)
    assert rel_close(session.acct[L.A_CASH], cash)
    s = summary(bt)
    assert rel_close(s["fees"], total_fees)
    assert rel_close(sum(t.fees for t in bt.trades), s["fees"])

    # round trips explain the P&L
    closed = [t for t in bt.trades if t.exit_event >= 0]
    still_open = [t for t in bt.trades if t.exit_event < 0]
    unrealised = 0.0
    for t in still_open:
        i = bt.policy.instruments.index(t.instrument)
        assert math.copysign(1, pos[i]) == t.side
        unrealised += pos[i] * (last[i] - t.entry_price)
    assert {bt.policy.instruments.index(t.instrument) for t in still_open} == {j for j in range(2) if pos[j] != 0}
    explained = sum(t.pnl for t in closed) + sum(t.pnl for t in still_open) + unrealised
    assert abs(explained - (bt.equity[-1] - bt.initial_equity)) < 1e-6
    assert s["trades"] == len(closed) and s["open_trades"] == len(still_open)


# =====================================================================================
# 3. No lookahead
# =====================================================================================
def _decisions(bt, k):
    rows = [(int(o[L.O_EVENT]), int(o[L.O_INST]), o[L.O_QTY], o[L.O_TARGET], o[L.O_DESIRED],
             int(o[L.O_REASONS]), o[L.O_EXIT]) for o in bt.orders if o[L.O_EVENT] <= k]
    return rows, bt.trace[: k + 1]


@pytest.mark.parametrize("mode", [L.FILL_NEXT, L.FILL_SAME], ids=["next", "same"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_lookahead(multi, seed, mode):
    cp = multi
    events, price = random_two_instrument_stream(cp, seed=seed, n=1500)
    rng = np.random.default_rng(1000 + seed)
    base = run_backtest(cp, events, mode, trace=True, progress=False)
    for _ in range(3):
        k = int(rng.integers(30, len(events) - 2))
        scrambled = price.copy()
        tail = scrambled[k + 1:]
        scrambled[k + 1:] = rng.permutation(tail) * rng.uniform(0.5, 2.0, len(tail))
        other = market_events(cp, events.ts, events.inst, scrambled)
        alt = run_backtest(cp, other, mode, trace=True, progress=False)
        (o1, t1), (o2, t2) = _decisions(base, k), _decisions(alt, k)
        assert o1 and o1 == o2, k
        np.testing.assert_array_equal(t1, t2)   # features, desired, position, order, reasons, equity
        assert not np.array_equal(base.trace[k + 1:, L.TRACE_FIXED:], alt.trace[k + 1:, L.TRACE_FIXED:],
                                  equal_nan=True)  # the scramble did change the future


# =====================================================================================
# 4. Risk invariants under random intents (hypothesis; one kernel, params re-bound)
# =====================================================================================
GUARD = """\
policy: guard
version: 1
instruments: [X, Y]
inputs: [intent]
params:
  mp: 100
  moq: 50
  mopd: 10
  mmu: 0.5
  mv: 0.02
  sl: 1.0
signals: []
risk:
  max_position: mp
  max_order_qty: moq
  max_orders_per_day: mopd
  max_margin_usage: mmu
  max_volatility: mv
  volatility_window: 8
  stop_loss: sl
account:
  initial_equity: 100000
  margin_rate: 50%
  fees_bps: 3
"""
VOL_WINDOW = 8
MARGIN_RATE = 0.5


@pytest.fixture(scope="module")
def guard():
    return compile_policy(parse_policy_text(GUARD, "guard.yaml"))


def _intent_stream(cp, seed, n):
    rng = np.random.default_rng(seed)
    inst = rng.integers(0, 2, n)
    ts = T0 + np.cumsum(rng.integers(0, 4 * 3600, n)) * NS_S           # ~ n / 12 UTC days
    price = np.empty(n)
    level = rng.uniform(5, 500, 2)
    for e in range(n):
        i = inst[e]
        jump = rng.normal(0, 0.15) if rng.random() < 0.03 else 0.0
        level[i] = max(level[i] * math.exp(rng.normal(0, rng.choice([0.002, 0.02])) + jump), 1e-3)
        price[e] = level[i]
    intent = np.full(n, np.nan)
    some = rng.random(n) < 0.3
    sizes = rng.choice([1.0, 10.0, 100.0, 1e4, 1e9], n) * rng.uniform(-1, 1, n)
    intent[some] = np.round(sizes[some], 2)
    return market_events(cp, ts, inst, price, intent), price


def _rolling_vol(price_i: np.ndarray, w: int) -> np.ndarray:
    """Population stdev of the last w returns, at each event of one instrument."""
    out = np.full(len(price_i), np.nan)
    rets = price_i[1:] / price_i[:-1] - 1
    for k in range(w, len(price_i)):
        out[k] = np.std(rets[k - w:k])
    return out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1),
       mp=st.sampled_from([1.0, 7.5, 100.0, 1000.0, 1e6]),
       moq=st.sampled_from([1.0, 3.0, 40.0, 1e4]),
       mopd=st.integers(1, 12),
       mmu=st.sampled_from([0.05, 0.2, 0.5, 1.0, 3.0]),
       mv=st.sampled_from([0.003, 0.01, 0.03, 10.0]),
       sl=st.sampled_from([0.02, 0.1, 1.0]))
def test_risk_invariants_hold_on_every_event(guard, seed, mp, moq, mopd, mmu, mv, sl):
    cp = guard.with_params(mp=mp, moq=moq, mopd=mopd, mmu=mmu, mv=mv, sl=sl)
    assert cp.kernel is guard.kernel
    n = 400
    events, price = _intent_stream(cp, seed, n)
    bt = run_backtest(cp, events, L.FILL_NEXT, trace=True, progress=False)
    orders, tr = bt.orders, bt.trace
    tol = 1e-9

    vol = np.full(n, np.nan)
    for i in range(2):
        mine = np.flatnonzero(events.inst == i)
        vol[mine] = _rolling_vol(price[mine], VOL_WINDOW)

    # positions after each event (from fills) and open orders at each decision
    pos = np.zeros(2)
    last = np.full(2, np.nan)
    open_qty = np.zeros(2)
    orders_at: dict[int, list] = {}
    fills_at: dict[int, list] = {}
    for o in orders:
        orders_at.setdefault(int(o[L.O_EVENT]), []).append(o)
        if o[L.O_FILL_EVENT] >= 0:
            fills_at.setdefault(int(o[L.O_FILL_EVENT]), []).append(o)
    # at most two orders an event, and then the first is an exempt exit and the second its re-entry
    assert all(len(os) == 1 or [o[L.O_EXIT] for o in os] == [1.0, 0.0] for os in orders_at.values())
    per_day: dict[int, int] = {}
    for e in range(n):
        i = int(events.inst[e])
        last[i] = price[e]
        for f in fills_at.get(e, []):
            j = int(f[L.O_INST])
            pos[j] += f[L.O_QTY]
            open_qty[j] -= f[L.O_QTY]
        assert np.all(np.abs(pos) <= mp * (1 + 1e-12) + tol), (e, pos)
        assert abs(tr[e, L.T_POSITION] - pos[i]) < 1e-6
        for o in orders_at.get(e, []):
            q = o[L.O_QTY]
            assert int(o[L.O_INST]) == i
            assert abs(q) <= moq * (1 + 1e-12) + tol, (e, q)
            if o[L.O_EXIT] == 0:
                day = int(events.ts[e] // NS_DAY)
                per_day[day] = per_day.get(day, 0) + 1
                assert per_day[day] <= mopd, (e, day)
            before = pos[i] + open_qty[i]
            after = before + q
            increases = abs(after) > abs(before) + tol
            if increases:
                gross = sum(abs(pos[j] + open_qty[j] + (q if j == i else 0.0)) * last[j]
                            for j in range(2) if not math.isnan(last[j]))
                usage = gross * MARGIN_RATE / tr[e, L.T_EQUITY]
                assert usage <= mmu + 1e-9, (e, usage, mmu)
                if not vol[e] <= mv * (1 + 1e-9):  # an unknown volatility (warm-up) refuses increases too
                    pytest.fail(f"event {e}: order {q} increases exposure while volatility {vol[e]:.5f} > {mv}")
            assert abs(after) <= mp * (1 + 1e-12) + tol
            open_qty[i] += q


# =====================================================================================
# 5. Orders CSV and trace CSV
# =====================================================================================
def test_orders_and_trace_csv_formats(capsys, tmp_path, ema_stop_file):
    # 40 falling daily closes, then a jump: the fast EMA crosses above the slow one on the
    # last event, so the only order is decided there and never filled (--fill next)
    days = np.datetime64("2024-01-01") + np.arange(41)
    closes = [100 - 0.5 * k for k in range(40)] + [200.0]
    data = tmp_path / "bars.csv"
    data.write_text("Date,Close\n" + "".join(f"{d},{c}\n" for d, c in zip(days, closes)))
    orders, trace = tmp_path / "orders.csv", tmp_path / "trace.csv"
    code, out, err = cli(capsys, "backtest", ema_stop_file, "--data", data, "--orders", orders, "--trace", trace)
    assert code == 0, err
    assert f"wrote orders: {orders}" in out and f"wrote trace: {trace}" in out

    lines = orders.read_text().splitlines()
    assert lines[0] == "decision_ts,fill_ts,instrument,qty,fill_price,fee,reasons,limit_price,status"
    assert lines[1:] == ["2024-02-10T00:00:00.000000000Z,,ORCL,100,,,,,open"]

    rows = list(csv.reader(trace.open()))
    assert rows[0] == ["ts", "instrument", "fast_ma", "slow_ma", "desired_target", "position", "order_qty",
                       "equity", "cash", "reasons"]
    assert len(rows) == 1 + len(closes)
    assert rows[1] == ["2024-01-01T00:00:00.000000000Z", "ORCL", "nan", "nan", "0", "0", "0", "100000.0", "100000.0",
                       ""]
    assert rows[-1][:2] == ["2024-02-10T00:00:00.000000000Z", "ORCL"]
    assert rows[-1][4:] == ["100", "0", "100", "100000.0", "100000.0", ""]
    fast, slow = _ema(closes, 12), _ema(closes, 26)
    assert rel_close(float(rows[-1][2]), fast[-1], 1e-9) and rel_close(float(rows[-1][3]), slow[-1], 1e-9)
    assert rows[12][2] != "nan" and rows[11][2] == "nan"   # the fast EMA starts on its 12th value

    # one more bar: the order fills at its close, fee 1 bp
    data.write_text(data.read_text() + "2024-02-11,201\n")
    code, _, err = cli(capsys, "backtest", ema_stop_file, "--data", data, "--orders", orders)
    assert code == 0, err
    rows = list(csv.reader(orders.open()))
    assert rows[1][:5] == ["2024-02-10T00:00:00.000000000Z", "2024-02-11T00:00:00.000000000Z", "ORCL", "100",
                           "201.0"]
    assert rel_close(float(rows[1][5]), 100 * 201 * 1e-4) and rows[1][6] == ""


def test_orders_reasons_column_lists_codes(capsys, tmp_path, ema_stop_file):
    orders = tmp_path / "o.csv"
    code, _, err = cli(capsys, "backtest", ema_stop_file, "--data", ORCL, "--orders", orders, "--fill", "same")
    assert code == 0, err
    rows = list(csv.DictReader(orders.open()))
    assert any(r["reasons"] == "stop_loss:exit" for r in rows)
    assert all(r["decision_ts"] == r["fill_ts"] for r in rows)  # --fill same


# =====================================================================================
# 6. JSON summary and HTML report
# =====================================================================================
SUMMARY_KEYS = ("policy", "policy_hash", "build_hash", "events", "orders", "fills", "trades", "final_equity",
                "total_return", "max_drawdown", "sharpe", "sortino", "win_rate", "profit_factor", "exposure",
                "fees", "reasons", "elapsed_s", "events_per_s")


def test_json_summary_and_html_report(capsys, tmp_path, ema_stop_file, ema_stop):
    report = tmp_path / "report.html"
    code, out, err = cli(capsys, "backtest", ema_stop_file, "--data", ORCL, "--format", "json",
                         "--report", report, "--fees-bps", "2", "--slippage-bps", "1")
    assert code == 0, err
    s = json.loads(out)
    missing = [k for k in SUMMARY_KEYS if k not in s]
    assert not missing
    assert s["policy"] == "ema_stop" and s["policy_hash"] == ema_stop.policy_hash
    assert s["build_hash"] == ema_stop.build_hash
    assert s["events"] == 5036 and s["orders"] >= s["fills"] > 0
    assert math.isclose(s["total_return"], s["final_equity"] / 100000 - 1)
    assert 0 <= s["max_drawdown"] < 1 and 0 <= s["exposure"] <= 1 and 0 <= s["win_rate"] <= 1
    assert s["fees"] > 0 and s["elapsed_s"] > 0 and s["events_per_s"] > 0
    assert isinstance(s["reasons"], dict) and s["reasons"].get("stop_loss:exit", 0) > 0

    page = report.read_text()
    for text in ("ema_stop", s["policy_hash"], s["build_hash"], "orcl-1995-2014.csv", "id=\"fig-equity\""):
        assert text in page, text


# =====================================================================================
# 7. Sweep
# =====================================================================================
def test_sweep_writes_every_combination_sorted(capsys, tmp_path, ema_stop_file):
    out = tmp_path / "sweep.csv"
    code, _, err = cli(capsys, "sweep", ema_stop_file, "--data", ORCL, "-p", "fast=5:15:5", "-p", "slow=30,40",
                       "--jobs", "2", "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    assert sorted((float(r["p.fast"]), float(r["p.slow"])) for r in rows) == \
        [(f, s) for f in (5.0, 10.0, 15.0) for s in (30.0, 40.0)]
    assert len({r["policy_hash"] for r in rows}) == 6
    sharpe = [float(r["sharpe"]) for r in rows if r["sharpe"] != ""]
    assert sharpe == sorted(sharpe, reverse=True)
    assert all(r["sharpe"] != "" for r in rows[: len(sharpe)])  # undefined values last


# =====================================================================================
# Edge cases: protective exits and sweep ranking
# =====================================================================================
def _stop_scenario(guard, intent_at_stop):
    """X bought at 100 (the day's only allowed order) once its volatility is known, then
    the price falls 10% through a 5% stop; `intent_at_stop` is the model's proposal on that
    event. Returns (policy, backtest, event of the purchase)."""
    cp = guard.with_params(mp=1e6, moq=1e6, mopd=1, mmu=1000.0, mv=10.0, sl=0.05)
    warm = VOL_WINDOW  # flat bars first: the volatility of VOL_WINDOW returns needs one price more
    price = np.array([100.0] * warm + [100.0, 100.0, 90.0, 90.0, 90.0])
    intent = np.array([np.nan] * warm + [100.0, np.nan, intent_at_stop, np.nan, np.nan])
    ts = T0 + np.arange(len(price)) * 60 * NS_S   # one UTC day
    events = market_events(cp, ts, np.zeros(len(price)), price, intent)
    return cp, run_backtest(cp, events, L.FILL_NEXT, trace=True, progress=False), warm


def test_stop_loss_exit_is_not_blocked_by_max_orders_per_day(guard):
    cp, bt, e = _stop_scenario(guard, np.nan)
    assert [(int(o[L.O_EVENT]), o[L.O_QTY], o[L.O_EXIT]) for o in bt.orders] == [(e, 100, 0), (e + 2, -100, 1)]
    assert L.decode_reasons(bt.orders[1, L.O_REASONS], cp.reason_names) == ["stop_loss:exit"]


def test_stop_loss_exit_is_not_blocked_when_the_strategy_also_goes_flat(guard):
    cp, bt, e = _stop_scenario(guard, 0.0)
    assert [(int(o[L.O_EVENT]), o[L.O_QTY]) for o in bt.orders] == [(e, 100), (e + 2, -100)]
    assert bt.trace[e + 4, L.T_POSITION] == 0


def test_stop_loss_exit_leaves_on_its_own_when_the_strategy_reverses(guard):
    """The stop and a short target meet: the exit goes out exempt, and the short re-entry
    is a separate order that the day's spent order budget blocks."""
    cp, bt, e = _stop_scenario(guard, -100.0)
    assert [(int(o[L.O_EVENT]), o[L.O_QTY], o[L.O_EXIT]) for o in bt.orders] == [(e, 100, 0), (e + 2, -100, 1)]
    assert L.decode_reasons(bt.trace[e + 2, L.T_REASONS], cp.reason_names) == \
        ["stop_loss:exit", "max_orders_per_day:blocked"]
    assert bt.trace[e + 4, L.T_POSITION] == 0


def test_sweep_sorted_by_max_drawdown_puts_the_smallest_first(capsys, tmp_path, ema_stop_file):
    out = tmp_path / "sweep.csv"
    code, _, err = cli(capsys, "sweep", ema_stop_file, "--data", ORCL, "-p", "fast=5:15:5", "-p", "slow=30,40",
                       "--jobs", "1", "--sort", "max_drawdown", "--out", out)
    assert code == 0, err
    dd = [float(r["max_drawdown"]) for r in csv.DictReader(out.open())]
    assert len(dd) == 6 and dd == sorted(dd)


def _figures_from_the_curve(bt) -> dict:
    """The summary's figures as the definitions give them, from the per-event equity curve
    and the itemised round trips (two-pass NumPy, Python sums)."""
    day = bt.events.ts // 86_400_000_000_000
    last = np.append(np.flatnonzero(np.diff(day)), len(day) - 1)
    closes = np.concatenate([[bt.initial_equity], bt.equity[last]])
    rets = closes[1:] / closes[:-1] - 1.0
    curve = np.concatenate([[bt.initial_equity], bt.equity])
    peak = np.maximum.accumulate(curve)
    closed = [t for t in bt.trades if t.exit_event >= 0]
    wins = [t.pnl for t in closed if t.pnl > 0]
    losses = [t.pnl for t in closed if t.pnl <= 0]
    held = np.zeros(len(bt.events), bool)
    for i in range(len(bt.policy.instruments)):
        mine = bt.fills[bt.fills[:, L.O_INST] == i]
        delta = np.zeros(len(bt.events))
        np.add.at(delta, mine[:, L.O_FILL_EVENT].astype(np.int64), mine[:, L.O_QTY])
        held |= np.abs(np.cumsum(delta)) > L.HELD_EPSILON
    return {"max_drawdown": float(np.max((peak - curve) / peak)), "final_equity": float(bt.equity[-1]),
            "sharpe": float(np.mean(rets) / np.std(rets, ddof=1) * math.sqrt(252)),
            "sortino": float(np.mean(rets) / math.sqrt(float(np.mean(np.minimum(rets, 0.0) ** 2))) * math.sqrt(252)),
            "trades": len(closed), "open_trades": len(bt.trades) - len(closed), "win_rate": len(wins) / len(closed),
            "profit_factor": sum(wins) / -sum(losses), "exposure": float(held.mean())}


@pytest.mark.parametrize("mode", [L.FILL_NEXT, L.FILL_SAME], ids=["next", "same"])
def test_streamed_summary_figures_equal_those_of_the_equity_curve(multi, mode):
    """The kernel keeps the summary's figures as it runs (no equity array): they equal the
    figures computed afterwards from the recorded curve and trades, exactly but for Sharpe
    and Sortino (Welford's running moments against NumPy's two passes)."""
    events, _ = random_two_instrument_stream(multi, seed=7, n=20_000)
    bt = run_backtest(multi, events, mode, progress=False)
    s, want = summary(bt), _figures_from_the_curve(bt)
    assert want["trades"] > 20 and 0 < want["exposure"] < 1 and want["max_drawdown"] > 0
    for key, value in want.items():
        if key in ("sharpe", "sortino"):
            assert rel_close(s[key], value, 1e-12), key
        else:
            assert s[key] == value, key
    assert summary(run_backtest(multi, events, mode, progress=False, record_equity=False)) | {"elapsed_s": 0,
           "events_per_s": 0} == s | {"elapsed_s": 0, "events_per_s": 0}


@pytest.mark.parametrize("seed", range(4))
def test_the_trace_changes_nothing(ema_stop, multi, seed):
    """Without a decision trace (as a backtest and a sweep run) a one-instrument kernel
    takes the common market event in a loop of its own (`ema_stop`, on data without
    bars); with one, in its loop body. Both leave the same bits, on random streams with
    gaps, jumps, intents, controls, bad prices, ticks or bars, and time going back; as
    does a kernel without that loop (`multi`, two instruments), whose trace changes
    nothing either."""
    for cp in (ema_stop, multi):
        spec = StreamSpec(seed=seed, n=400, vol=0.01, jump_p=0.02, intent_p=0.03 * (seed % 2),
                          control_p=0.01 * (seed % 2), bad_p=0.02 * (seed % 3), market_intent_p=0.05,
                          tick=bool(seed % 2), back_p=0.03 if seed == 3 else 0.0, leap=seed == 2)
        ev = make_events(spec, cp.columns, len(cp.instruments))
        assert_trace_changes_nothing(cp, Events(ev.ts, ev.kind, ev.inst, ev.vals), f"{spec}, no bars")
        assert_trace_changes_nothing(cp, ev, f"{spec}, bars")
