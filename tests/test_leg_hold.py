"""A leg holds while an order of it is open (docs/language.md, section 6, step 2): an IOC
may still be cancelled, so no order is netted against it. Netting an unwind against an
open IOC that the venue then cancels left the other side unhedged, and repeated, it
ratcheted a leg's position past the rule's size. Over the kernel and over the reference
interpreter, with the live engine and a venue that fills, partly fills or cancels."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_rig import interpreter_engine, kernel_engine
from test_legs_engine import chain
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
BN, CB = "binance:BTCUSDT", "coinbase:BTC-USD"
UNITS = 0.5

#: The example's arbitrage (policies/arbitrage.yaml): its rules, params and keys, so that this
#: file runs on the kernel tests/test_arbitrage_example.py compiles (a limit's value is a
#: kernel argument, not code). Its own values: a slip of 0.01%, a leg imbalance of at most
#: `imbalance` (30 unless a test says otherwise), no fees, and the example's limits that are
#: not about legs where they never bind here (a collar of 50%, a drawdown of 100%, a
#: million orders a day).
ARB = """\
policy: arbitrage
version: 1
instruments: {{bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}}
params: {{edge: 0.1%, units: 0.5, slip: 0.01%}}
signals:
  - when: cb.bid > bn.ask * (1 + edge)
    legs:
      bn: {{target: units, limit: bn.ask * (1 + slip)}}
      cb: {{target: -units, limit: cb.bid * (1 - slip)}}
  - when: bn.bid > cb.ask * (1 + edge)
    legs:
      bn: {{target: -units, limit: bn.bid * (1 - slip)}}
      cb: {{target: units, limit: cb.ask * (1 + slip)}}
  - when: abs(cb.price / bn.price - 1) < edge / 4
    legs: {{bn: 0, cb: 0}}
risk:
  max_position: 2
  max_leg_imbalance: {imbalance}
  price_collar: 50%
  max_drawdown: 100%
  max_orders_per_day: 1000000
account:
  initial_equity: 100000
  fees_bps: 0
"""
QUIET = {"price": 100.0, "bid": 99.9, "ask": 100.1}
HIGH = {"price": 101.0, "bid": 100.9, "ask": 101.1}   # this venue's bid is above the other's ask by > edge
QUOTES = {"quiet": QUIET, "high": HIGH}


def arbitrage(imbalance: float = 30):
    return compile_policy(parse_policy_text(ARB.format(imbalance=imbalance), "arbitrage.yaml"))


@pytest.fixture(scope="module")
def arb():
    return arbitrage()


def bn_filled_cb_cancelled(engine):
    """Both legs sent on coinbase's dislocation; bn's IOC filled, cb's cancelled: bn long
    0.5 (about 50) unhedged, beyond the limit of 30."""
    engine.market(BN, T0, QUIET)
    engine.market(CB, T0 + NS, QUIET)
    engine.market(CB, T0 + 2 * NS, HIGH)
    engine.fill(BN, T0 + 3 * NS, UNITS, 100.11)
    engine.reject(CB, T0 + 4 * NS, -UNITS)


@pytest.mark.parametrize("make", [kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
@pytest.mark.parametrize("cb_ioc", ["fills", "is cancelled"])
def test_a_leg_is_not_unwound_alone_while_the_other_legs_ioc_is_open(arb, make, cb_ioc):
    """The prices meet again while cb's IOC is open: the closing rule holds both legs, for
    bn unwound alone would leave cb's IOC, if it fills, unhedged (and an unwind netted
    against that IOC, a long of 0.5 if it is cancelled). Once the IOC ends the legs move
    together: closed by the rule when it filled, bn flattened by the breach when not."""
    engine = make(arb)
    engine.market(BN, T0, QUIET)
    engine.market(CB, T0 + NS, QUIET)
    assert chain(engine.market(CB, T0 + 2 * NS, HIGH)) == [(BN, UNITS), (CB, -UNITS)]
    # an intent on a leg whose IOC is open is held, and says so
    held = engine.intent(CB, T0 + 2 * NS + 1, 0.25)
    assert (held.order_qty, held.approved_target, held.reasons) == (0.0, -UNITS, ("order_open:blocked",))
    engine.fill(BN, T0 + 3 * NS, UNITS, 100.11)
    d = engine.market(CB, T0 + 4 * NS, QUIET)
    assert chain(d) == [(CB, 0.0)] and d.reasons == ("order_open:blocked",)
    assert engine.open_orders() == {BN: 0.0, CB: -UNITS}
    assert engine.positions() == {BN: UNITS, CB: 0.0}
    if cb_ioc == "fills":
        engine.fill(CB, T0 + 5 * NS, -UNITS, 100.0)
        d = engine.market(CB, T0 + 6 * NS, QUIET)   # the closing rule, both legs at once
        assert chain(d) == [(BN, -UNITS), (CB, UNITS)]
        assert (d.reasons, d.then.reasons) == ((), ())
        engine.fill(BN, T0 + 7 * NS, -UNITS, 99.9)
        engine.fill(CB, T0 + 7 * NS, UNITS, 100.1)
    else:
        engine.reject(CB, T0 + 5 * NS, -UNITS)       # the venue cancels cb's IOC: bn unhedged
        d = engine.market(CB, T0 + 6 * NS, QUIET)
        assert chain(d) == [(CB, 0.0), (BN, -UNITS)]
        assert (d.reasons, d.then.reasons) == (("max_leg_imbalance:exit",), ("max_leg_imbalance:exit",))
        engine.fill(BN, T0 + 7 * NS, -UNITS, 99.9)
    assert engine.positions() == {BN: 0.0, CB: 0.0}
    assert engine.open_orders() == {BN: 0.0, CB: 0.0}


@pytest.mark.parametrize("make", [kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
def test_a_missed_leg_is_not_sent_alone_while_the_other_is_flattened(arb, make):
    """bn filled, cb's IOC cancelled: the breach flattens bn. The entry rule keeps firing
    while bn's unwind is open: it sets no target, so cb is not sent alone (it would be
    short 0.5 unhedged once bn is flat), and cb's decision says why. Once bn is flat the
    rule sends both legs together."""
    engine = make(arb)
    bn_filled_cb_cancelled(engine)
    assert chain(engine.market(CB, T0 + 5 * NS, HIGH)) == [(CB, 0.0), (BN, -UNITS)]   # the breach
    d = engine.market(CB, T0 + 6 * NS, HIGH)        # the rule fires; bn's unwind is open
    assert chain(d) == [(CB, 0.0)] and d.reasons == ("order_open:blocked",)
    assert engine.open_orders() == {BN: -UNITS, CB: 0.0}
    engine.fill(BN, T0 + 7 * NS, -UNITS, 99.9)
    d = engine.market(CB, T0 + 8 * NS, HIGH)
    assert chain(d) == [(BN, UNITS), (CB, -UNITS)]
    assert (d.is_exit, d.then.is_exit) == (False, False)


@pytest.mark.parametrize("make", [kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
def test_a_breach_records_its_code_on_a_flat_leg_whose_target_it_set_to_zero(arb, make):
    engine = make(arb)
    bn_filled_cb_cancelled(engine)
    d = engine.market(CB, T0 + 5 * NS, HIGH)
    # the rule fires again, but the breach sets every leg's target to 0: cb, flat, sends
    # nothing and says why; bn closes at market
    assert chain(d) == [(CB, 0.0), (BN, -UNITS)]
    assert d.reasons == ("max_leg_imbalance:exit",)
    assert d.then.reasons == ("max_leg_imbalance:exit",)
    assert math.isnan(d.then.limit_price)


@pytest.mark.parametrize("make", [kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
def test_a_new_entry_after_a_breach_is_not_an_exit(arb, make):
    """A breach while both IOCs are open (the imbalance counts them as if they fill: 0.5 x
    100 - 0.5 x 101 = -0.5, beyond 0.3) flags both legs, which hold; the venue cancels
    both; when the rule fires again its orders are entries, with no exit code."""
    engine = make(arbitrage(imbalance=0.3))
    engine.market(BN, T0, QUIET)
    engine.market(CB, T0 + NS, QUIET)
    engine.market(CB, T0 + 2 * NS, HIGH)
    d = engine.market(CB, T0 + 3 * NS, HIGH)
    assert chain(d) == [(CB, 0.0)] and d.reasons == ("max_leg_imbalance:exit",)
    engine.reject(BN, T0 + 4 * NS, UNITS)
    engine.reject(CB, T0 + 4 * NS, -UNITS)
    d = engine.market(CB, T0 + 5 * NS, HIGH)
    assert chain(d) == [(BN, UNITS), (CB, -UNITS)]
    assert (d.reasons, d.then.reasons) == ((), ())
    assert (d.is_exit, d.then.is_exit) == (False, False)


@pytest.mark.parametrize("make", [kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
def test_the_kill_switchs_liquidation_of_a_flagged_leg_carries_the_breachs_code(arb, make):
    """bn long 0.5 (about 50) unhedged, beyond 30, when the kill switch trips: its
    liquidation is recorded with `max_leg_imbalance:exit`, never as an order with no reason."""
    engine = make(arb)
    bn_filled_cb_cancelled(engine)
    out = [(d.instrument, d.order_qty, d.reasons) for d in engine.halt(T0 + 5 * NS)]
    assert out[0] == (BN, -UNITS, ("max_leg_imbalance:exit",)), out
    assert all(reasons for _, qty, reasons in out if qty)


@pytest.mark.parametrize("make", [kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
def test_the_kill_switch_does_not_net_a_legs_liquidation_against_its_open_order(arb, make):
    """Both legs sent, bn's IOC cancelled, cb's still open. The kill switch trips: cb's
    liquidation waits for its IOC, and says so; the venue's cancel leaves cb flat, never
    reversed."""
    engine = make(arb)
    engine.market(BN, T0, QUIET)
    engine.market(CB, T0 + NS, QUIET)
    engine.market(CB, T0 + 2 * NS, HIGH)
    engine.reject(BN, T0 + 3 * NS, UNITS)          # bn's IOC is cancelled; cb's is still open
    # cb's open -0.5 alone is about 50 of imbalance, beyond 30: flagged, and held
    out = {d.instrument: (d.order_qty, d.reasons) for d in engine.halt(T0 + 6 * NS)}
    assert out[CB] == (0.0, ("max_leg_imbalance:exit",))
    assert engine.open_orders() == {BN: 0.0, CB: -UNITS}
    engine.reject(CB, T0 + 7 * NS, -UNITS)          # the venue cancels cb's IOC: flat, nothing to liquidate
    d = engine.market(CB, T0 + 8 * NS, QUIET)
    assert d is None or d.order_qty == 0.0
    assert engine.positions() == {BN: 0.0, CB: 0.0} and engine.open_orders() == {BN: 0.0, CB: 0.0}


@pytest.mark.parametrize("make", [kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
def test_an_intent_for_a_leg_waits_for_the_other_legs_unwind_as_a_rule_does(arb, make):
    """bn's unwind is open after the breach: a model's intent to sell cb is held, says so,
    and leaves cb's target as it was, so cb is not sent alone; once bn is flat an intent
    goes as usual."""
    engine = make(arb)
    bn_filled_cb_cancelled(engine)
    engine.market(CB, T0 + 5 * NS, HIGH)                    # the breach: bn's unwind leaves
    d = engine.intent(CB, T0 + 6 * NS, -UNITS)
    assert (d.order_qty, d.reasons, d.desired_target) == (0.0, ("order_open:blocked",), 0.0)
    assert engine.open_orders() == {BN: -UNITS, CB: 0.0}
    engine.fill(BN, T0 + 7 * NS, -UNITS, 99.9)
    d = engine.intent(CB, T0 + 8 * NS, -UNITS)
    assert (d.order_qty, d.reasons) == (-UNITS, ())


@pytest.mark.parametrize("make", [kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
def test_a_legs_old_target_is_not_sent_while_the_other_leg_unwinds(arb, make):
    """Within the imbalance limit, cb keeps the target of its cancelled IOC (-0.5) to
    complete the hedge. Once the model unwinds bn, cb must not go on alone: not on its own
    quote (no rule fires), not when the closing rule's 0 (cb's q already) leaves its old
    target in place, and not on the model's intent of 0, which it takes."""
    engine = make(arbitrage(imbalance=1000))
    bn_filled_cb_cancelled(engine)
    assert chain(engine.intent(BN, T0 + 5 * NS, 0.0)) == [(BN, -UNITS)]
    d = engine.market(CB, T0 + 6 * NS, {"price": 100.05, "bid": 99.95, "ask": 100.15})  # no rule fires
    assert chain(d) == [(CB, 0.0)] and d.reasons == ("order_open:blocked",) and d.desired_target == -UNITS
    d = engine.market(CB, T0 + 7 * NS, QUIET)           # the closing rule: cb's 0 is its q, taken
    assert chain(d) == [(CB, 0.0)] and d.desired_target == 0.0
    d = engine.intent(CB, T0 + 8 * NS, 0.0)
    assert (d.order_qty, d.desired_target) == (0.0, 0.0)
    assert engine.open_orders() == {BN: -UNITS, CB: 0.0}
    engine.fill(BN, T0 + 9 * NS, -UNITS, 99.9)
    assert engine.market(CB, T0 + 10 * NS, QUIET) is None or engine.open_orders() == {BN: 0.0, CB: 0.0}
    assert engine.positions() == {BN: 0.0, CB: 0.0}


STEP = st.one_of(
    st.tuples(st.just("market"), st.sampled_from([BN, CB]), st.sampled_from(sorted(QUOTES))),
    # a model's intent for one leg, as `run` takes it (a market order)
    st.tuples(st.just("intent"), st.sampled_from([BN, CB]), st.sampled_from([-UNITS, 0.0, UNITS])),
    # the venue answers the k-th open order of the instrument (k modulo how many are
    # open): fills this fraction of it and cancels the rest
    st.tuples(st.just("answer"), st.sampled_from([BN, CB]), st.integers(0, 3), st.sampled_from([0.0, 0.5, 1.0])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEP, min_size=1, max_size=40))
def test_no_leg_ever_holds_more_than_the_rules_size_however_the_venues_answer(arb, steps):
    """Random quotes on both venues, and venues that answer each order on its own, in
    any order: fill it, fill half and cancel the rest, or cancel it. A rule's legs are
    +-0.5 and an order is never netted against an open one, so no leg's position, nor
    its position with its open orders, ever leaves [-0.5, 0.5] (netting let a target that
    turned twice stack orders whose cancels left 1.5), whatever a model's intents for a
    leg say; the kernel and the interpreter agree after every step. The legs move together: no leg sends an entry (an order that
    is not an exit) while the other leg's flattening is under way (an exit of it open
    from before the event), which once sent a missed leg alone as its partner unwound."""
    engines = [kernel_engine(arb), interpreter_engine(arb)]
    books = [{BN: [], CB: []}, {BN: [], CB: []}]  # per engine: each instrument's open orders, oldest first
    ts = T0
    for engine in engines:
        engine.market(BN, ts, QUIET)
        engine.market(CB, ts, QUIET)
    for step in steps:
        ts += NS
        for engine, book in zip(engines, books):
            if step[0] in ("market", "intent"):
                _, instrument, value = step
                unwinding = {name for name, orders in book.items() if any(is_exit for _, is_exit in orders)}
                d = engine.market(instrument, ts, QUOTES[value]) if step[0] == "market" else \
                    engine.intent(instrument, ts, value)
                while d is not None:
                    if d.order_qty != 0.0:
                        book[d.instrument].append((d.order_qty, d.is_exit))
                        other = CB if d.instrument == BN else BN
                        assert d.is_exit or other not in unwinding, (d.instrument, d.order_qty, book)
                    d = d.then
                continue
            _, instrument, k, fraction = step
            if not book[instrument]:
                continue
            qty, _ = book[instrument].pop(k % len(book[instrument]))
            filled = qty * fraction
            if filled != 0.0:
                engine.fill(instrument, ts, filled, engine.last_prices()[instrument])
            if filled != qty:
                engine.reject(instrument, ts, qty - filled)
        kernel, interpreter = engines
        assert books[0] == books[1]
        assert kernel.positions() == interpreter.positions()
        assert kernel.open_orders() == interpreter.open_orders()
        for name in (BN, CB):
            assert abs(kernel.position(name)) <= UNITS, (name, kernel.positions())
            assert abs(kernel.position(name) + kernel.open_quantity(name)) <= UNITS
