"""The backtest through the live order path makes the backtest's orders.

`backtest.run_through_order_core` runs a stream through `OrderCore` over an `Engine` in
live mode, with a venue that fills by the backtest's fill model (`runtime/fills.py`).
Against `CompiledPolicy.run` (the kernel's own fill models), in both fill modes, every
order must be the same to the bit: the event it was decided on, instrument, quantity,
decision price, targets, reasons, exit flag, the event it filled on, fill price and fee;
and so must the equity after every event.

Where the two differ by design (the docstring of `run_through_order_core`), the
comparison is bounded, and the tests at the end pin each difference down:

- the kill switch: from the first decision that trips it, the live path liquidates
  every instrument at once and cancels the orders still waiting; the comparison ends
  there, after checking that both trip it on the same event. An operator halt event
  decides every instrument at once, as the kernel does on the same stream with a
  `decide` of every instrument after the halt (`with_halts_decided`): under `same` that
  is compared in full; under `next`, where orders wait for their next event and the
  halt cancels them, the comparison ends at the first halt;
- `next`: a fill reaches the engine before the event it filled at, so the engine marks
  it at the price before (`max_drawdown`, `drawdown` and `trailing_stop` see that
  price): policies with those are compared under `same` only;
- `same`: an exit fills after its re-entry is decided, so the re-entry's daily-loss and
  margin checks see the equity before the exit's fees and slippage: policies with both
  (and a protective exit) are compared under `next` only;
- a market event dated before its instrument's latest is refused by the live path, so
  the streams move forward; an intent before the first market event is reduce-only
  there (the feed is not live yet), so the streams start with a market event.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st

import test_differential as td
from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy, Events, compile_policy
from policyc.dsl.diagnostics import PolicyError
from policyc.dsl.document import parse_policy_text
from policyc.runtime.backtest import run_through_order_core

MODES = {"next": L.FILL_NEXT, "same": L.FILL_SAME}
#: Round trips of prices near float64's limit (the streams have some) overflow, as in any backtest of them.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")
PROTECTIVE = ("stop_loss", "take_profit", "trailing_stop")


# ---- the comparison ----------------------------------------------------------------------------------------------

def forward(ev: Events) -> Events:
    """The stream from its first market event on: before it, the live path's feed is not
    live and intents are reduce-only."""
    market = np.flatnonzero(ev.kind == L.MARKET)
    start = int(market[0]) if len(market) else len(ev)
    return Events(ev.ts[start:], ev.kind[start:], ev.inst[start:], ev.vals[start:])


def with_halts_decided(ev: Events, n_inst: int) -> tuple[Events, np.ndarray]:
    """Each halt event followed by a `decide` of every instrument at its time, as the
    live path's halt does; and, for each event of the result, the index of the event of
    `ev` it stands for."""
    origin = []
    for e in range(len(ev)):
        origin += [e] * (1 + n_inst * (ev.kind[e] == L.HALT))
    origin = np.array(origin, dtype=np.int64)
    decide = np.zeros(len(origin), bool)
    decide[1:] = origin[1:] == origin[:-1]
    inst = ev.inst[origin].copy()
    kind = ev.kind[origin].copy()
    kind[decide] = L.DECIDE
    for e in np.flatnonzero(ev.kind == L.HALT):  # the decides after halt e: instruments 0, 1, ...
        rows = np.flatnonzero(origin == e)[1:]
        inst[rows] = np.arange(n_inst)
    return Events(ev.ts[origin], kind, inst.astype(np.int32), ev.vals[origin]), origin


def reads_state(cp: CompiledPolicy, name: str) -> bool:
    return any(op.kind == "state" and op.attr[0] == name for op in cp.program.ops)


def comparable(cp: CompiledPolicy, mode: int) -> bool:
    """Whether the policy has none of the differences that mode has by design (above)."""
    risk, account = cp.checked.risk, cp.checked.account
    if mode == L.FILL_NEXT:
        return not ("max_drawdown" in risk or "trailing_stop" in risk or reads_state(cp, "drawdown"))
    costs = account["fees_bps"] > 0 or account["slippage_bps"] > 0
    checks_equity = "max_daily_loss" in risk or "max_margin_usage" in risk
    return not (costs and checks_equity and any(k in risk for k in PROTECTIVE))


def same(a, b) -> bool:
    return a == b or (a != a and b != b)


@dataclass
class Outcome:
    horizon: int                     # events before it are compared
    compared: list                   # the kernel's order rows compared
    problems: list[str] = field(default_factory=list)
    trip: int | None = None          # the event both tripped the kill switch on, if the horizon is one
    halts: int = 0                   # operator halts compared in full


def compare(cp: CompiledPolicy, ev: Events, mode: int) -> Outcome:
    n_inst = len(cp.instruments)
    kernel_ev, origin = with_halts_decided(ev, n_inst) if mode == L.FILL_SAME else (ev, np.arange(len(ev)))
    kernel = cp.run(kernel_ev, mode, trace=True)
    trips = []
    core = run_through_order_core(cp, ev, mode,
                                  record=lambda e, kind, ts, **f: trips.append(e) if kind == "halt" else None)
    trip_bits = sum(1 << k for k, name in enumerate(cp.reason_names) if name.endswith(":halt")
                    and name != "kill_switch:halt")
    reasons = kernel.trace[:, L.T_REASONS]
    kernel_trip = min((int(origin[k]) for k in range(len(kernel_ev)) if reasons[k] == reasons[k]
                       and int(reasons[k]) & trip_bits), default=len(ev))
    core_trip = min((e for e in trips if ev.kind[e] != L.HALT), default=len(ev))
    halts = np.flatnonzero(ev.kind == L.HALT)
    first_halt = int(halts[0]) if len(halts) and mode == L.FILL_NEXT else len(ev)
    horizon = min(kernel_trip, core_trip, first_halt)
    out = Outcome(horizon, [])
    if horizon < len(ev) and horizon != first_halt and kernel_trip != core_trip:
        out.problems.append(f"the kernel trips the kill switch on event {kernel_trip}, the order core on {core_trip}")
    if horizon == kernel_trip == core_trip < len(ev):
        out.trip = horizon
    mine = [o.copy() for o in kernel.orders]
    for o in mine:  # events of the stream given, not of the one with the halts decided
        o[L.O_EVENT] = origin[int(o[L.O_EVENT])]
        if o[L.O_FILL_EVENT] >= 0:
            o[L.O_FILL_EVENT] = origin[int(o[L.O_FILL_EVENT])]
    out.compared = [o for o in mine if o[L.O_EVENT] < horizon]
    theirs = [o for o in core.orders if o[L.O_EVENT] < horizon]
    names = ("event", "instrument", "qty", "price", "target", "desired", "reasons", "exit", "fill_event",
             "fill_price", "fee")
    if len(out.compared) != len(theirs):
        out.problems.append(f"{len(out.compared)} orders before event {horizon} in the kernel, {len(theirs)} "
                            "through the order core")
    for n, (k, c) in enumerate(zip(out.compared, theirs)):
        k, c = k.copy(), c.copy()
        if not 0 <= k[L.O_FILL_EVENT] < horizon and not 0 <= c[L.O_FILL_EVENT] < horizon:
            k[L.O_FILL_EVENT:], c[L.O_FILL_EVENT:] = -1.0, -1.0  # filled (or not) after the horizon, in both
        bad = [f"{name} {float(k[j])!r} vs {float(c[j])!r}" for j, name in enumerate(names) if not same(k[j], c[j])]
        if bad:
            out.problems.append(f"order {n}: " + "; ".join(bad))
            break
    last = np.searchsorted(origin, np.arange(len(ev)), side="right") - 1  # the last kernel event of each
    for e in range(horizon):
        if not same(kernel.equity[last[e]], core.equity[e]):
            out.problems.append(f"equity after event {e}: kernel {kernel.equity[last[e]]!r}, "
                                f"order core {core.equity[e]!r}")
            break
    out.halts = int(np.sum(halts < horizon)) if mode == L.FILL_SAME else 0
    return out


def assert_same(cp: CompiledPolicy, ev: Events, mode: int, context: str = "") -> Outcome:
    out = compare(cp, ev, mode)
    assert not out.problems, (f"the order core and the kernel disagree (fill {mode}) {context}\n"
                              + "\n".join(out.problems) + "\n--- policy ---\n" + cp.checked.parsed.source.text)
    return out


# ---- one policy with every step both modes share, many streams ---------------------------------------------------

#: Every risk key but the four whose difference is by design (above): protective exits
#: that meet opposite targets, custom block, reduce-only, liquidate and halt rules
#: (switched on by volume codes), fees and slippage, rate limits, intents.
ORDER_PATH = """
policy: order_path
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
  code: volume
signals:
  - when: code == 1111 and fast_ma > slow_ma
    target: size
  - when: code == 2222
    target: -size
risk:
  max_position: 2000
  max_position_notional: 95000
  max_gross_exposure: 150000
  stop_loss: 4%
  take_profit: 6%
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


@pytest.fixture(scope="module")
def order_path():
    return compile_policy(parse_policy_text(ORDER_PATH, "order_path.yaml"))


def coded_stream(cp: CompiledPolicy, seed: int, panic: bool) -> Events:
    """A random walk of both instruments with intents (as events and in market events),
    halts, resumes, decides and bad prices; volume codes switch the signals and the
    custom rules on (`panic`, the custom halt, only when asked: it ends the comparison)."""
    spec = td.StreamSpec(seed=seed, n=400, vol=0.02, jump_p=0.05, intent_p=0.12, control_p=0.015, bad_p=0.02,
                         market_intent_p=0.25, tick=seed % 2 == 0)
    ev = forward(td.make_events(spec, cp.columns, 2))
    rng = np.random.default_rng(seed)
    market = np.flatnonzero(ev.kind == L.MARKET)
    codes = [1111, 2222, 7000, 8000, 9000] + [9999] * panic
    ev.vals[rng.choice(market, 60), cp.columns.index("volume")] = rng.choice(codes, 60)
    return ev


def test_the_order_core_makes_the_kernels_orders_on_random_walks(order_path):
    """Twenty streams in both modes, with the custom halt in every fourth: each order and
    the equity after each event are the kernel's, up to the first kill-switch trip, where
    both trip; operator halts and resumes under `same` are compared in full. The streams
    must exercise what the order path does differently from the kernel's loop: exits that
    leave before their re-entry, liquidations, halts and resumes, trips, waiting fills."""
    seen = Counter()
    flatten = order_path.reason_names.index("flatten:exit")  # the custom liquidate rule's bit
    for seed in range(20):
        for label, mode in MODES.items():
            ev = coded_stream(order_path, seed, panic=seed % 4 == 3)
            if mode == L.FILL_NEXT and seed % 5:  # a halt ends the comparison under `next`: most streams decide instead
                ev.kind[(ev.kind == L.HALT) | (ev.kind == L.RESUME)] = L.DECIDE
            out = assert_same(order_path, ev, mode, f"on seed {seed}")
            events = [int(o[L.O_EVENT]) for o in out.compared]
            seen[f"{label} orders"] += len(out.compared)
            seen[f"{label} exits that leave before their re-entry"] += sum(events.count(e) == 2 for e in set(events))
            seen[f"{label} liquidations"] += sum(int(o[L.O_REASONS]) >> flatten & 1 for o in out.compared)
            seen[f"{label} fills on a later event"] += sum(o[L.O_FILL_EVENT] > o[L.O_EVENT] for o in out.compared)
            seen[f"{label} orders never filled"] += sum(o[L.O_FILL_EVENT] < 0 for o in out.compared)
            seen[f"{label} trips"] += out.trip is not None
            seen[f"{label} halts"] += out.halts
            seen[f"{label} resumes"] += int(np.sum(np.flatnonzero(ev.kind == L.RESUME) < out.horizon)) * (out.halts > 0)
    assert seen["next orders"] > 1000 and seen["same orders"] > 800, seen
    for label in MODES:
        assert seen[f"{label} exits that leave before their re-entry"] >= 3, seen
        assert seen[f"{label} liquidations"] >= 20, seen
        assert seen[f"{label} trips"] >= 5, seen
    assert seen["same halts"] >= 20 and seen["same resumes"] >= 10, seen
    assert seen["next fills on a later event"] == seen["next orders"] - seen["next orders never filled"], seen


# ---- random policies ---------------------------------------------------------------------------------------------

#: Each example is a Numba compile (2-9 s): a few, the same on every run. For a bug hunt:
#: POLICYC_CORE_EXAMPLES=200 POLICYC_CORE_RANDOM=1 pytest tests/test_core_backtest.py
EXAMPLES = int(os.environ.get("POLICYC_CORE_EXAMPLES", "3"))
RANDOM = bool(os.environ.get("POLICYC_CORE_RANDOM"))
STREAMS_PER_POLICY = 8
_compared: list[str] = []
_orders = Counter()  # orders compared, per mode


@settings(max_examples=EXAMPLES, derandomize=not RANDOM, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(gp=td.policies(legs=False), data=st.data())
def _order_core_matches_the_kernel(gp, data):
    specs = [data.draw(td.stream_specs, label=f"stream {k}") for k in range(STREAMS_PER_POLICY)]
    note(gp.text)
    try:
        cp = compile_policy(parse_policy_text(gp.text, "gen.yaml"))
    except PolicyError as exc:  # not a valid policy: Hypothesis draws another
        note(str(exc))
        assume(False)
    for spec in specs:
        spec.back_p, spec.leap = 0.0, False  # forward time only: the live path refuses a market event from the past
        spec.intent_limits = False  # intents with a limit price: tests/test_core_ioc.py
        ev = forward(td.make_events(spec, cp.columns, gp.n_instruments))
        for label, mode in MODES.items():
            if comparable(cp, mode):
                _orders[label] += len(assert_same(cp, ev, mode, f"on {spec}").compared)
    _compared.append(gp.text)


def test_the_order_core_makes_the_kernels_orders_for_random_policies(monkeypatch, tmp_path):
    """EXAMPLES random valid policies (tests/test_differential.py's), each under
    STREAMS_PER_POLICY random streams (forward in time, from a market event on), in
    every mode whose differences by design the policy does not have."""
    monkeypatch.setenv("POLICYC_CACHE", str(tmp_path))  # random kernels go to a throw-away cache
    _compared.clear()
    _orders.clear()
    _order_core_matches_the_kernel()
    assert len(_compared) >= EXAMPLES, f"only {len(_compared)} of {EXAMPLES} random policies were compared"
    assert sum(_orders.values()) >= 50, f"too few orders to compare: {_orders}"  # each mode: the random walks above


# ---- the differences by design, one by one -----------------------------------------------------------------------

#: One policy of intents on A and B for every case below: each re-binds the params of the
#: step it is about (`small(...)`), which reuses the kernel. By default every step is
#: inert: a drawdown, trailing stop and stop loss of 100% (no price here falls to 0, nor
#: doubles against a short), a margin usage of 1,000 (100,000%), no fees.
SMALL = """
policy: small
version: 1
instruments: [A, B]
inputs: [intent]
params:
  dd: 100%
  trail: 100%
  sl: 100%
  mmu: 1000
  fee: 0
signals: []
risk:
  max_drawdown: dd
  trailing_stop: trail
  stop_loss: sl
  max_margin_usage: mmu
account:
  initial_equity: 10000
  margin_rate: 100%
  fees_bps: fee
"""


@pytest.fixture(scope="module")
def small_base():
    return compile_policy(parse_policy_text(SMALL, "small.yaml"))


@pytest.fixture(scope="module")
def small(small_base):
    """`SMALL` with these param values, on its one kernel."""
    def rebind(**values) -> CompiledPolicy:
        cp = small_base.with_params(**values)
        assert cp.kernel is small_base.kernel
        return cp
    return rebind


def orders(result, cp: CompiledPolicy) -> list[tuple]:
    """(event, instrument, qty, decision price, reasons, fill event, fill price) of each order."""
    return [(int(o[L.O_EVENT]), cp.instruments[int(o[L.O_INST])], o[L.O_QTY], o[L.O_PRICE],
             tuple(L.decode_reasons(o[L.O_REASONS], cp.reason_names)), int(o[L.O_FILL_EVENT]),
             None if o[L.O_FILL_EVENT] < 0 else o[L.O_FILL_PRICE]) for o in result.orders]


@pytest.fixture(scope="module")
def drawdown(small):
    return small(dd=0.1)  # a kill switch at 10% drawdown


def test_a_trip_liquidates_every_instrument_at_once_through_the_order_core(drawdown):
    """Under `same`, long 50 A at 100 and 40 B at 50, A falls to 75 (drawdown 12.5%). The
    kernel sells A on that event with the trip's reasons and B on B's next event; the
    order core withdraws the tripping order, then decides every instrument again: A's
    order is the same but for the trip's code (it is in the `halt` and `risk` records),
    and B is sold at once, at its last price."""
    s = td.Script(drawdown.columns).bar(0, 100.0).bar(1, 50.0).intent(0, 50).intent(1, 40)
    ev = s.bar(0, 75.0).bar(1, 52.0).events()
    records = []
    core = run_through_order_core(drawdown, ev, L.FILL_SAME,
                                  record=lambda e, kind, ts, **f: records.append((e, kind, f)))
    bought = [(2, "A", 50.0, 100.0, (), 2, 100.0), (3, "B", 40.0, 50.0, (), 3, 50.0)]
    assert orders(drawdown.run(ev, L.FILL_SAME), drawdown) == bought + [
        (4, "A", -50.0, 75.0, ("kill_switch:halt", "max_drawdown:halt"), 4, 75.0),
        (5, "B", -40.0, 52.0, ("kill_switch:halt",), 5, 52.0)]
    assert orders(core, drawdown) == bought + [
        (4, "A", -50.0, 75.0, ("kill_switch:halt",), 4, 75.0),
        (4, "B", -40.0, 50.0, ("kill_switch:halt",), 4, 50.0)]
    trip = [(e, kind, f.get("reason", f.get("withdrawn_qty"))) for e, kind, f in records if kind in ("halt", "risk")]
    assert trip[:2] == [(4, "halt", "kill_switch:halt,max_drawdown:halt"), (4, "risk", -50.0)]


def test_a_halt_cancels_the_orders_waiting_for_their_fill_under_next(drawdown):
    """Under `next`, 30 more A wait for A's next event when a halt comes: the kernel
    fills them there and sells all 80; the order core cancels them (they never fill) and
    sells the 50 held, decided on the halt itself."""
    s = td.Script(drawdown.columns).bar(0, 100.0).intent(0, 50).bar(0, 101.0).intent(0, 80)
    ev = s.halt().bar(0, 102.0).bar(0, 103.0).events()
    assert orders(drawdown.run(ev, L.FILL_NEXT), drawdown) == [
        (1, "A", 50.0, 100.0, (), 2, 101.0), (3, "A", 30.0, 101.0, (), 5, 102.0),
        (5, "A", -80.0, 102.0, ("kill_switch:halt",), 6, 103.0)]
    assert orders(run_through_order_core(drawdown, ev, L.FILL_NEXT), drawdown) == [
        (1, "A", 50.0, 100.0, (), 2, 101.0), (3, "A", 30.0, 101.0, (), -1, None),
        (4, "A", -50.0, 101.0, ("kill_switch:halt",), 5, 102.0)]


def test_under_next_a_fill_is_marked_at_the_price_before_it(small):
    """Under `next`, 50 A bought at 100 fill at 80, the next event. The kernel fills them
    and marks the account once, at 80: equity 10,000, its peak. Through the order core
    the fill reaches the engine first, which marks it at 100, the price it has: equity
    11,000 becomes the peak, and at 80 the drawdown of 9.1% trips a 5% limit (then the
    liquidation, decided again, carries only `kill_switch:halt`)."""
    cp = small(dd=0.05)
    ev = td.Script(cp.columns).bar(0, 100.0).intent(0, 50).bar(0, 80.0).bar(0, 80.0).events()
    assert orders(cp.run(ev, L.FILL_NEXT), cp) == [(1, "A", 50.0, 100.0, (), 2, 80.0)]
    assert orders(run_through_order_core(cp, ev, L.FILL_NEXT), cp) == [
        (1, "A", 50.0, 100.0, (), 2, 80.0), (2, "A", -50.0, 80.0, ("kill_switch:halt",), 3, 80.0)]


def test_under_next_a_trailing_stop_starts_at_the_price_before_the_fill(small):
    """Under `next`, 10 A bought at 100 fill at 95. The kernel starts the trailing stop's
    best price at 95, the fill's market price, and 95 is no 4% below it; through the
    order core the engine had 100 when the fill came, and 95 is 5% below that: it exits."""
    cp = small(trail=0.04)
    ev = td.Script(cp.columns).bar(0, 100.0).intent(0, 10).bar(0, 95.0).bar(0, 96.0).events()
    assert orders(cp.run(ev, L.FILL_NEXT), cp) == [(1, "A", 10.0, 100.0, (), 2, 95.0)]
    assert orders(run_through_order_core(cp, ev, L.FILL_NEXT), cp) == [
        (1, "A", 10.0, 100.0, (), 2, 95.0), (2, "A", -10.0, 95.0, ("trailing_stop:exit",), 3, 96.0)]


def test_under_same_a_re_entry_is_checked_before_its_exit_pays_fees(small):
    """Under `same`, long 50 A at 100 (fee 5), the stop fires at 94 as the target turns
    to -1000: the exit and the re-entry are two orders. The kernel fills the exit at once
    and its fee of 4.70 leaves less equity for the re-entry's margin room; through the
    order core both are decided before the exit fills."""
    cp = small(sl=0.05, mmu=1.0, fee=10)  # margin_rate 100%
    ev = td.Script(cp.columns).bar(0, 100.0).intent(0, 50).bar(0, 94.0, intent=-1000.0).events()
    equity = 10000.0 - 5.0 - 50 * 6.0  # after the first fee and the fall to 94
    kernel, core = orders(cp.run(ev, L.FILL_SAME), cp), orders(run_through_order_core(cp, ev, L.FILL_SAME), cp)
    assert kernel[:2] == core[:2] and kernel[1][:3] == (2, "A", -50.0)
    assert kernel[2][2] == pytest.approx(-(equity - 50 * 94.0 * 0.001) / 94.0, rel=1e-12)
    assert core[2][2] == pytest.approx(-equity / 94.0, rel=1e-12)


def test_the_live_path_refuses_time_going_back_and_reduces_intents_before_the_feed_is_live(drawdown):
    """An intent for 10 A before any market event: the kernel takes it and buys at the
    first price; the order core's feed is not live yet, so the intent is reduce-only (0).
    A bar of A dated before A's latest: the order core refuses it (a `bad_message` with
    both times) while the venue, which follows the market, fills the order waiting for it."""
    s = td.Script(drawdown.columns).intent(0, 10).bar(0, 100.0).intent(0, 20)
    ev = s.bar(0, 90.0, dt=-3600 * td.NS_S).bar(0, 101.0, dt=7200 * td.NS_S).events()
    records = []
    core = run_through_order_core(drawdown, ev, L.FILL_NEXT,
                                  record=lambda e, kind, ts, **f: records.append((e, kind, f)))
    assert orders(drawdown.run(ev, L.FILL_NEXT), drawdown) == [
        (1, "A", 10.0, 100.0, (), 3, 90.0), (2, "A", 10.0, 100.0, (), 3, 90.0)]
    assert orders(core, drawdown) == [(2, "A", 20.0, 100.0, (), 3, 90.0)]
    ((e, bad),) = [(e, f) for e, kind, f in records if kind == "bad_message"]
    assert e == 3 and (bad["event_ts"], bad["last_ts"]) == (int(ev.ts[3]), int(ev.ts[1]))


def test_a_stream_of_fills_is_refused_the_venue_makes_them(drawdown):
    ev = td.Script(drawdown.columns).bar(0, 100.0).events()
    ev.kind[0] = L.FILL
    with pytest.raises(ValueError, match="the simulated venue makes them"):
        run_through_order_core(drawdown, ev, L.FILL_SAME)
