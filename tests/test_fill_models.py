"""The backtest fill models on hand-worked cases: `next-open` with protective exits inside
each bar (a gap through the stop, both levels inside one bar, a stop on the entry bar, a
take profit), and `latency` (the first event at or after the decision plus the latency).
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

POLICY = """
policy: bars
version: 1
instruments: [A]
inputs: [intent]
signals: []
risk:
  stop_loss: 2%
  take_profit: 5%
"""


@pytest.fixture(scope="module")
def policy():
    return compile_policy(parse_policy_text(textwrap.dedent(POLICY), "bars.yaml"))


def events(bars: list[tuple[float, float, float, float]], ts=None, intent_at: int = 0) -> Events:
    """Daily bars (open, high, low, close); an intent of 10 units on bar `intent_at`."""
    n = len(bars)
    vals = np.full((n, 2), np.nan)
    vals[:, 0] = [b[3] for b in bars]
    vals[intent_at, 1] = 10.0
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
