"""The backtest fill models on hand-worked cases: `next-open` with protective exits inside
each bar (a gap through the stop, both levels inside one bar, a stop on the entry bar, a
take profit; a stop that the price collar blocked, or that a lock of the other side would
hide, still checked inside the next bars), and `latency` (the first event at or after the
decision plus the latency).
Each case runs on the kernel and on the reference interpreter, which must both give the
numbers worked out by hand in the comments."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.interpret import Interpreter
from policyc.dsl.document import parse_policy_text

DAY = 86_400 * 10**9
MS = 10**6
T0 = 1_700_000_000 * 10**9

# The cases of the fill models alone (a stop loss of 2% and a take profit of 5%) run on
# the kernel of the collar cases below (`COLLARED`), its other keys inert: a trailing
# stop of 100% (its level 0 for a long, never reached), a collar of 100,000%, orders of
# up to 1,000 (these are of 10) and a kill switch at 100% drawdown. One kernel for the
# file: a param change never recompiles.
@pytest.fixture(scope="module")
def policy(collared):
    return collared(stop=0.02, goal=0.05, collar=1000)


def events(bars: list[tuple[float, float, float, float]], ts=None, intents: dict[int, float] | None = None) -> Events:
    """Daily bars (open, high, low, close); `intents` maps a bar to the target (units) its
    intent proposes: by default 10 units on bar 0."""
    n = len(bars)
    vals = np.full((n, 2), np.nan)
    vals[:, 0] = [b[3] for b in bars]
    for bar, target in ({0: 10.0} if intents is None else intents).items():
        vals[bar, 1] = target
    ts = np.arange(n, dtype=np.int64) * DAY + T0 if ts is None else np.array(ts, dtype=np.int64)
    ev = Events.market(ts, vals)
    ev.bars = np.array([b[:3] for b in bars], dtype=float)
    return ev


def fills(policy, ev: Events, mode: int, latency_ns: int = 0) -> list[tuple[int, int, float, float, list[str]]]:
    """(decided on, filled on, qty, fill price, reasons) of every order, checked to be the
    same on the kernel and on the interpreter; and the final equity of both."""
    res = policy.run(ev, mode, trace=True, latency_ns=latency_ns)
    it = Interpreter(policy.program, policy.params, policy.checked.risk, policy.checked.account, 1, mode, latency_ns)
    it.run(ev.ts, ev.kind, ev.inst, ev.vals, ev.bars)
    kernel = [(int(o[L.O_EVENT]), int(o[L.O_FILL_EVENT]), float(o[L.O_QTY]), float(o[L.O_FILL_PRICE]),
               L.decode_reasons(o[L.O_REASONS], res.reason_names)) for o in res.orders]
    reference = [(o.event, o.fill_event, o.qty, o.fill_price, L.decode_reasons(o.reasons, res.reason_names))
                 for o in it.orders]
    assert kernel == reference
    assert res.equity[-1] == it.equity_curve[-1]
    return kernel, float(res.equity[-1])


#               open   high   low    close
ENTRY = [(100.0, 101.0, 99.0, 100.0),   # bar 0: the intent; the order fills at bar 1's open, 100
         (100.0, 102.0, 99.5, 101.0)]   # bar 1: entry 100, stop level 98, target 105: neither reached


def test_a_gap_through_the_stop_fills_at_the_open(policy):
    # bar 2 opens at 97, below the stop level of 98: the exit fills at the open, not at 98;
    # 10 x (97 - 100) = -30
    orders, equity = fills(policy, events(ENTRY + [(97.0, 97.5, 96.0, 97.0), (97.0, 98.0, 96.0, 97.0)]),
                           L.FILL_NEXT_OPEN)
    assert orders == [(0, 1, 10.0, 100.0, []), (2, 2, -10.0, 97.0, ["stop_loss:exit"])]
    assert equity == 100_000.0 - 30.0


def test_a_bar_through_both_levels_takes_the_stop(policy):
    # bar 2 reaches both 98 (low 97) and 105 (high 106): the stop is taken first, at its
    # level; 10 x (98 - 100) = -20
    orders, equity = fills(policy, events(ENTRY + [(100.0, 106.0, 97.0, 101.0), (101.0, 102.0, 100.0, 101.0)]),
                           L.FILL_NEXT_OPEN)
    assert orders[1] == (2, 2, -10.0, 98.0, ["stop_loss:exit"])
    assert equity == 100_000.0 - 20.0


def test_a_stop_triggers_on_the_bar_its_entry_filled_in(policy):
    # bar 1: the entry fills at its open, 100, and its low of 97.5 then reaches the stop
    # level of 98 on the same bar: -20
    orders, equity = fills(policy, events([ENTRY[0], (100.0, 100.5, 97.5, 99.0), (97.0, 98.0, 96.0, 97.0)]),
                           L.FILL_NEXT_OPEN)
    assert orders == [(0, 1, 10.0, 100.0, []), (1, 1, -10.0, 98.0, ["stop_loss:exit"])]
    assert equity == 100_000.0 - 20.0


def test_the_take_profit_fills_at_its_level_inside_the_bar_and_at_the_open_past_it(policy):
    # bar 2's high of 105.5 reaches the target of 105: +50
    orders, equity = fills(policy, events(ENTRY + [(101.0, 105.5, 100.0, 104.0)]), L.FILL_NEXT_OPEN)
    assert orders[1] == (2, 2, -10.0, 105.0, ["take_profit:exit"])
    assert equity == 100_000.0 + 50.0
    # bar 2 opens at 107, past the target: the exit fills at the open, +70
    orders, equity = fills(policy, events(ENTRY + [(107.0, 108.0, 106.0, 107.0)]), L.FILL_NEXT_OPEN)
    assert orders[1] == (2, 2, -10.0, 107.0, ["take_profit:exit"])
    assert equity == 100_000.0 + 70.0


def test_after_an_exit_inside_the_bar_the_lock_holds_the_target(policy):
    # the desired target stays 10 after the stop: the bar's decision holds it at 0
    ev = events(ENTRY + [(97.0, 97.5, 96.0, 97.0), (97.0, 98.0, 96.0, 97.0)])
    res = policy.run(ev, L.FILL_NEXT_OPEN, trace=True)
    assert L.decode_reasons(res.trace[2, L.T_REASONS], res.reason_names) == ["stop_loss:blocked"]
    assert res.trace[2, L.T_POSITION] == 0.0 and res.trace[2, L.T_ORDER] == 0.0
    assert res.trace[2, L.T_CASH] == 100_000.0 - 30.0  # cash as the decision began: after the exit


def test_next_keeps_filling_at_the_next_close(policy):
    # the same bars with --fill next: the entry fills at bar 1's close (101), the stop is
    # seen on bar 2's close (97 <= 98.98) and fills at bar 3's close (97): -40
    orders, equity = fills(policy, events(ENTRY + [(97.0, 97.5, 96.0, 97.0), (97.0, 98.0, 96.0, 97.0)]), L.FILL_NEXT)
    assert orders == [(0, 1, 10.0, 101.0, []), (2, 3, -10.0, 97.0, ["stop_loss:exit"])]
    assert equity == 100_000.0 - 40.0


def test_latency_fills_at_the_first_event_at_or_after_the_decision_plus_the_latency(policy):
    # ticks at 0, 20, 50, 70 ms (bars whose open is their price, so the open is the tick's
    # price): the order decided at 0 ms with 50 ms of latency fills at the 50 ms tick, 102
    ticks = [(100.0, 100.0, 100.0, 100.0), (101.0, 101.0, 101.0, 101.0), (102.0, 102.0, 102.0, 102.0),
             (103.0, 103.0, 103.0, 103.0)]
    ts = [T0, T0 + 20 * MS, T0 + 50 * MS, T0 + 70 * MS]
    orders, _ = fills(policy, events(ticks, ts), L.FILL_LATENCY, 50 * MS)
    assert orders == [(0, 2, 10.0, 102.0, [])]
    # one nanosecond more and it waits for the 70 ms tick
    orders, _ = fills(policy, events(ticks, ts), L.FILL_LATENCY, 50 * MS + 1)
    assert orders == [(0, 3, 10.0, 103.0, [])]
    # with a latency of 0 it fills at the next event, never at the one it was decided on
    orders, _ = fills(policy, events(ticks, ts), L.FILL_LATENCY, 0)
    assert orders == [(0, 1, 10.0, 101.0, [])]


def test_latency_on_bars_fills_at_the_open(policy):
    # daily bars, 1 hour of latency: the order decided on bar 0 fills at bar 1's open
    orders, _ = fills(policy, events([ENTRY[0], (99.0, 102.0, 98.5, 101.0)]), L.FILL_LATENCY, 3600 * 10**9)
    assert orders == [(0, 1, 10.0, 99.0, [])]


# A position whose exit the collar blocked keeps its stops inside the next bars. The risk
# values are params, so each case re-binds one kernel: `collared(**values)`.
COLLARED = """
policy: collared
version: 1
instruments: [A]
inputs: [intent]
params:
  stop: 2%
  goal: 500%
  trail: 100%
  collar: 5%
  cap: 1000
  halt_at: 100%
signals: []
risk:
  max_drawdown: halt_at
  stop_loss: stop
  take_profit: goal
  trailing_stop: trail
  price_collar: collar
  max_order_qty: cap
"""


@pytest.fixture(scope="module")
def collared():
    base = compile_policy(parse_policy_text(textwrap.dedent(COLLARED), "collared.yaml"))

    def rebind(**values):
        cp = base.with_params(**values)
        assert cp.kernel is base.kernel  # the same kernel under other values
        return cp
    return rebind


def decision_reasons(policy, ev: Events, bar: int) -> list[str]:
    res = policy.run(ev, L.FILL_NEXT_OPEN, trace=True)
    return L.decode_reasons(res.trace[bar, L.T_REASONS], res.reason_names)


def test_a_stop_the_collar_blocked_exits_at_the_next_open_through_its_level(collared):
    # long 10 from 100, stop 2% (level 98), collar 5%. Bar 2 gaps to 90: the exit at the
    # open is 10% from the close before (100), and so is the close, 86: the collar blocks
    # both. Bar 3 opens at 84, still through 98 and 2.3% from 86: the exit fills at the
    # open, 10 x (84 - 100) = -160. (Were the stop not checked in bar 3, the decision on
    # its close would exit at bar 4's open, 70: -300.)
    policy = collared()
    ev = events(ENTRY + [(90.0, 90.0, 85.0, 86.0), (84.0, 86.0, 82.0, 85.0), (70.0, 72.0, 68.0, 71.0)])
    orders, equity = fills(policy, ev, L.FILL_NEXT_OPEN)
    assert orders == [(0, 1, 10.0, 100.0, []), (3, 3, -10.0, 84.0, ["stop_loss:exit"])]
    assert equity == 100_000.0 - 160.0
    assert decision_reasons(policy, ev, 2) == ["stop_loss:exit", "price_collar:blocked"]
    assert decision_reasons(policy, ev, 3) == ["stop_loss:blocked"]


def test_a_trailing_stop_the_collar_blocked_exits_at_its_level_inside_the_next_bar(collared):
    # trailing 6.25%, the stop loss far away (50%). Bar 1 fills the entry at 100 and its
    # high of 112 becomes the best price: level 105. Bar 2 opens at 104, through 105, but
    # 7% from the close before (112): blocked, and its close, 101, is blocked too. Bar 3
    # opens at 107 and its low of 104 reaches 105: the exit fills at the level, 4% from
    # 101: 10 x (105 - 100) = +50 (not bar 4's open, 95: -50)
    policy = collared(stop=0.5, trail=0.0625)
    ev = events([(100.0, 100.0, 100.0, 100.0), (100.0, 112.0, 100.0, 112.0), (104.0, 104.0, 100.0, 101.0),
                 (107.0, 108.0, 104.0, 106.0), (95.0, 96.0, 94.0, 95.0)])
    orders, equity = fills(policy, ev, L.FILL_NEXT_OPEN)
    assert orders == [(0, 1, 10.0, 100.0, []), (3, 3, -10.0, 105.0, ["trailing_stop:exit"])]
    assert equity == 100_000.0 + 50.0
    assert decision_reasons(policy, ev, 2) == ["trailing_stop:exit", "price_collar:blocked"]


def test_a_take_profit_the_collar_blocked_exits_at_the_next_open_past_its_target(collared):
    # take profit 5% (target 105). Bar 2 opens at 108, past the target, 8% from the close
    # before (100): blocked, and its close, 108, too. Bar 3 opens at 106, still past 105
    # and 1.9% from 108: the exit fills at the open, 10 x (106 - 100) = +60 (not bar 4's
    # open, 95: -50)
    policy = collared(goal=0.05)
    ev = events(ENTRY + [(108.0, 109.0, 107.0, 108.0), (106.0, 107.0, 103.0, 104.0), (95.0, 96.0, 94.0, 95.0)])
    orders, equity = fills(policy, ev, L.FILL_NEXT_OPEN)
    assert orders == [(0, 1, 10.0, 100.0, []), (3, 3, -10.0, 106.0, ["take_profit:exit"])]
    assert equity == 100_000.0 + 60.0
    assert decision_reasons(policy, ev, 2) == ["take_profit:exit", "price_collar:blocked"]


def test_the_re_entry_after_an_exit_has_its_stop_inside_its_first_bar(collared):
    # trailing 6.25%. Bar 1 fills the entry at 100, its high of 112 makes the level 105, and
    # its close of 104 triggers the trailing stop as an intent turns the strategy short:
    # the exit and the short re-entry both fill at bar 2's open, 100 (0 on the long). The
    # long's lock does not hide the short: its trailing level is 100 x 1.0625 = 106.25,
    # which bar 2's high of 107 reaches: 10 x (100 - 106.25) = -62.5 (not bar 3's open,
    # 110: -100)
    policy = collared(stop=0.5, trail=0.0625, collar=0.5)
    ev = events([(100.0, 100.0, 100.0, 100.0), (100.0, 112.0, 100.0, 104.0), (100.0, 107.0, 99.0, 106.0),
                 (110.0, 111.0, 109.0, 110.0)], intents={0: 10.0, 1: -10.0})
    orders, equity = fills(policy, ev, L.FILL_NEXT_OPEN)
    assert orders == [(0, 1, 10.0, 100.0, []), (1, 2, -10.0, 100.0, ["trailing_stop:exit"]), (1, 2, -10.0, 100.0, []),
                      (2, 2, 10.0, 106.25, ["trailing_stop:exit"])]
    assert equity == 100_000.0 - 62.5
    assert decision_reasons(policy, ev, 2) == ["trailing_stop:blocked"]


def test_a_liquidation_the_collar_blocked_leaves_the_stop_inside_the_next_bar(collared):
    # kill switch at 0.1% drawdown, stop 20% (level 80). Bar 2 gaps to 90 and closes at 83:
    # equity 99,830 is 0.17% below its peak, the account halts, and the liquidation is 17%
    # from the close before: blocked. Bar 3 opens at 82 and its low of 79 reaches the stop
    # level: the exit fills at 80, 3.6% from 83: 10 x (80 - 100) = -200 (the halt's own
    # exit, on bar 3's close, would fill at bar 4's open, 70: -300)
    policy = collared(stop=0.2, halt_at=0.001)
    ev = events(ENTRY + [(90.0, 90.0, 83.0, 83.0), (82.0, 83.0, 79.0, 81.0), (70.0, 72.0, 68.0, 71.0)])
    orders, equity = fills(policy, ev, L.FILL_NEXT_OPEN)
    assert orders == [(0, 1, 10.0, 100.0, []), (3, 3, -10.0, 80.0, ["stop_loss:exit"])]
    assert equity == 100_000.0 - 200.0
    assert decision_reasons(policy, ev, 2) == ["kill_switch:halt", "max_drawdown:halt", "price_collar:blocked"]


def test_with_latency_a_stop_the_collar_blocked_goes_out_on_the_next_tick(collared):
    # ticks 60 ms apart (then 20 and 40), 50 ms of latency: the entry fills at 100. The
    # tick at 120 ms, 90, triggers the stop, but 10% from 100 the collar blocks the exit;
    # the lock keeps it going on the next tick, 88 (2.2% from 90), and it fills at the
    # first tick 50 ms after that, 86: 10 x (86 - 100) = -140
    ticks = [(p, p, p, p) for p in (100.0, 100.0, 90.0, 88.0, 87.0, 86.0)]
    ts = [T0 + k * MS for k in (0, 60, 120, 180, 200, 240)]
    orders, equity = fills(collared(), events(ticks, ts), L.FILL_LATENCY, 50 * MS)
    assert orders == [(0, 1, 10.0, 100.0, []), (3, 5, -10.0, 86.0, ["stop_loss:exit"])]
    assert equity == 100_000.0 - 140.0


def test_an_exit_inside_a_bar_and_a_split_decision_fit_the_order_buffer(collared):
    # orders of 5 at most: the entry of 10 takes bars 0 and 1 and fills at 100. Bar 3's low
    # of 97 reaches the stop level of 98: 5 leave at 98 inside the bar; its close of 97.5 is
    # through the stop as an intent turns the strategy short, so the decision makes two more
    # orders, the exit of the other 5 and the short re-entry (5): three orders on one event.
    # They fill at bar 4's open, 96: 5 x (98 - 100) + 5 x (96 - 100) = -30 on the long;
    # bar 4's decision sells the other 5 of the short at bar 5's open, 95, where it is
    # marked: 5 x (96 - 95) = +5
    policy = collared(cap=5.0, collar=0.5)
    ev = events([(100.0, 100.0, 100.0, 100.0), (100.0, 101.0, 99.0, 100.0), (100.0, 101.0, 99.5, 100.0),
                 (100.0, 100.0, 97.0, 97.5), (96.0, 97.0, 95.0, 96.0), (95.0, 96.0, 94.0, 95.0)],
                intents={0: 10.0, 3: -10.0})
    orders, equity = fills(policy, ev, L.FILL_NEXT_OPEN)
    assert orders == [(0, 1, 5.0, 100.0, ["max_order_qty:clipped"]), (1, 2, 5.0, 100.0, []),
                      (3, 3, -5.0, 98.0, ["stop_loss:exit", "max_order_qty:clipped"]),
                      (3, 4, -5.0, 96.0, ["stop_loss:exit"]), (3, 4, -5.0, 96.0, ["max_order_qty:clipped"]),
                      (4, 5, -5.0, 95.0, [])]
    assert equity == 100_000.0 - 30.0 + 5.0
    # the kernel stops before an event while fewer than three order rows are free (the
    # session then grows the buffer): with four rows, event 3 must not write a fifth
    session = policy.session(L.FILL_NEXT_OPEN)
    rows = np.full((8, L.ORDER_WIDTH), -7.0)
    session.orders = rows[:4]
    session.feed(ev)
    assert (rows[4:] == -7.0).all()
    assert session.n_orders == len(orders)
    assert session.orders[: session.n_orders, L.O_QTY].tolist() == [o[2] for o in orders]
