"""The sans-I/O engine: one event at a time gives what one batch gives."""
import dataclasses
import inspect
import math

import numpy as np
import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.engine import Decision, Engine, EngineError
from test_live_faults import limits

POLICY = """
policy: engine_check
version: 1
instruments: [A, B]
inputs: [intent, score]
params:
  fast: 3
  slow: 8
features:
  f: ema(close, fast)
  s: sma(close, slow)
signals:
  - when: crosses_above(f, s) and score > 0
    target: 20
  - when: crosses_below(f, s)
    target: 0
risk:
  max_position: 50
  max_order_qty: 15
  stop_loss: 4%
  max_drawdown: 20%
account:
  fees_bps: 2
"""
T0 = 1_704_153_600_000_000_000
MIN = 60_000_000_000


@pytest.fixture(scope="module")
def policy():
    return compile_policy(parse_policy_text(POLICY, "engine_check.yaml"))


def stream(n=400, seed=3):
    rng = np.random.default_rng(seed)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    inst = rng.integers(0, 2, n)
    intent = np.where(rng.random(n) < 0.05, rng.integers(-30, 60, n).astype(float), np.nan)
    score = rng.normal(0.2, 1.0, n)
    return T0 + np.arange(n) * MIN, inst, price, intent, score


def test_event_by_event_equals_one_batch(policy):
    ts, inst, price, intent, score = stream()
    cols = policy.columns
    vals = np.column_stack([{"price": price, "close": price, "intent": intent, "score": score}[c] for c in cols])
    batch = policy.run(Events.market(ts, vals, inst), L.FILL_NEXT, trace=True)

    engine = Engine(policy, L.FILL_NEXT)
    decisions = []
    for k in range(len(ts)):
        name = policy.instruments[inst[k]]
        engine.set_input(name, "score", score[k])
        fields = {"price": price[k]}
        if not math.isnan(intent[k]):
            fields["intent"] = intent[k]
        decisions.append(engine.market(name, int(ts[k]), fields))
    orders = engine.session.orders[: engine.session.n_orders]
    same = [c for c in range(L.ORDER_WIDTH) if c not in (L.O_EVENT, L.O_FILL_EVENT)]  # event numbers are per call
    np.testing.assert_array_equal(orders[:, same], batch.orders[:, same])
    sent = [[d] + ([d.then] if d.then else []) for d in decisions]  # an exit and its re-entry: two orders
    assert [k for k, ds in enumerate(sent) for d in ds if d.order_qty] == list(batch.orders[:, L.O_EVENT].astype(int))
    assert [sum(d.order_qty for d in ds) for ds in sent] == list(batch.trace[:, L.T_ORDER])
    assert any(d.then for d in decisions)  # the stream has exits that meet an opposite intent
    assert engine.equity == pytest.approx(batch.equity[-1], rel=1e-12)


def test_snapshot_restore_replays_identically(policy):
    ts, inst, price, _, score = stream(200, seed=5)
    engine = Engine(policy, L.FILL_SAME)

    def play(lo, hi):
        out = []
        for k in range(lo, hi):
            name = policy.instruments[inst[k]]
            engine.set_input(name, "score", score[k])
            out.append(engine.market(name, int(ts[k]), {"price": price[k]}))
        return out

    play(0, 100)
    snap = engine.snapshot()
    first = play(100, 200)
    engine.restore(snap)
    assert play(100, 200) == first


def test_live_mode_orders_wait_for_venue_fills(policy):
    engine = Engine(policy, L.LIVE)
    engine.market("A", T0, {"price": 100.0})
    d = engine.intent("A", T0 + 1, 40)
    assert d.order_qty == 15 and "max_order_qty:clipped" in d.reasons
    assert engine.positions()["A"] == 0 and engine.open_orders()["A"] == 15
    d2 = engine.intent("A", T0 + 2, 40)  # open orders count against the limits at once
    assert d2.order_qty == 15 and engine.open_orders()["A"] == 30
    engine.fill("A", T0 + 3, 15, 100.5, 0.3)
    assert engine.positions()["A"] == 15 and engine.open_orders()["A"] == 15
    engine.reject("A", T0 + 4, 15)
    assert engine.open_orders()["A"] == 0
    assert engine.cash == pytest.approx(100000 - 15 * 100.5 - 0.3)


def test_halt_liquidates_and_resume_reopens(policy):
    engine = Engine(policy, L.FILL_SAME)
    engine.market("A", T0, {"price": 100.0})
    engine.intent("A", T0 + 1, 10)
    decisions = engine.halt(T0 + 2)
    assert engine.halted
    assert [(d.instrument, d.order_qty, d.reasons) for d in decisions if d.order_qty] == \
        [("A", -10, ("kill_switch:halt",))]
    assert engine.intent("A", T0 + 3, 10).order_qty == 0
    engine.resume(T0 + 4)
    assert engine.intent("A", T0 + 5, 10).order_qty == 10


@pytest.mark.parametrize("call", [
    lambda e: e.market("ZZZ", T0, {"price": 1.0}),
    lambda e: e.market("A", T0, {"price": float("nan")}),
    lambda e: e.market("A", T0, {"price": -1.0}),
    lambda e: e.market("A", T0, {"bogus": 1.0, "price": 1.0}),
    lambda e: e.intent("A", T0, float("inf")),
    lambda e: e.set_input("A", "nope", 1.0),
])
def test_bad_messages_are_refused_and_change_nothing(policy, call):
    engine = Engine(policy, L.LIVE)
    before = engine.snapshot()
    with pytest.raises(EngineError):
        call(engine)
    after = engine.snapshot()
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)


def test_market_many_equals_market_one_at_a_time(policy):
    """The live runtime hands every message of one socket read to `market_many`:
    same decisions, orders and state as one call per event, a bad event refused on its
    own, and inputs set between chunks seen by the events after them only."""
    ts, inst, price, _, score = stream(300, seed=11)
    names = policy.instruments
    events = [(names[i], int(t), {"price": float(p), "close": float(p)}) for t, i, p in zip(ts, inst, price)]
    events[17] = (names[0], int(ts[17]), {"price": float("nan")})
    events[40] = ("NOPE", int(ts[40]), {"price": 1.0})
    events[77] = (names[1], int(ts[77]), {"colour": 1.0, "price": 2.0})

    one, many = Engine(policy, L.FILL_SAME), Engine(policy, L.FILL_SAME)
    expected = []
    for k, event in enumerate(events):
        if k % 50 == 0:
            one.set_input(names[k % 2], "score", float(score[k]))
        try:
            expected.append(one.market(*event))
        except EngineError as exc:
            expected.append(type(exc))
    got = []
    for start in range(0, len(events), 50):  # chunks of 50, an input before each, as a feed would send them
        many.set_input(names[start % 2], "score", float(score[start]))
        got += [type(r) if isinstance(r, EngineError) else r for r in many.market_many(events[start:start + 50])]
    assert got == expected
    assert [got[k] for k in (17, 40, 77)] == [EngineError] * 3
    assert np.array_equal(one.session.pstate, many.session.pstate, equal_nan=True)
    cols = [L.O_INST, L.O_QTY, L.O_PRICE, L.O_TARGET, L.O_DESIRED, L.O_REASONS, L.O_EXIT, L.O_FILL_PRICE, L.O_FEE]
    assert np.array_equal(one.session.orders[: one.session.n_orders][:, cols],
                          many.session.orders[: many.session.n_orders][:, cols], equal_nan=True)
    assert one.equity == many.equity and one.session.n_orders > 5


def test_market_many_actionable_only_keeps_orders_and_reasons(policy):
    ts, inst, price, _, _ = stream(200, seed=5)
    events = [(policy.instruments[i], int(t), {"price": float(p), "score": 1.0}) for t, i, p in zip(ts, inst, price)]
    full = Engine(policy, L.FILL_SAME).market_many(events)
    lean = Engine(policy, L.FILL_SAME).market_many(events, actionable_only=True)
    for a, b in zip(full, lean):
        if a is not None and (a.order_qty or a.reasons):
            assert b == a
        else:
            assert b is None
    assert any(d is not None for d in lean)


def test_a_stop_that_meets_an_opposite_intent_is_two_decisions(policy):
    """Long 10 at 100, then 95 (through the 4% stop) with an intent of -10: the Decision
    is the exit on its own (exempt), and `then` the short re-entry, checked like any order."""
    engine = Engine(policy, L.FILL_SAME)
    engine.market("A", T0, {"price": 100.0})
    assert engine.intent("A", T0 + 1, 10).order_qty == 10
    d = engine.market("A", T0 + MIN, {"price": 95.0, "intent": -10.0})
    assert (d.order_qty, d.is_exit, d.reasons, d.approved_target) == (-10, True, ("stop_loss:exit",), 0)
    assert (d.then.order_qty, d.then.is_exit, d.then.reasons, d.then.approved_target) == (-10, False, (), -10)
    assert d.then.then is None and engine.position("A") == -10
    burst = Engine(policy, L.FILL_SAME)  # the same in a burst through market_many
    burst.market("A", T0, {"price": 100.0})
    burst.intent("A", T0 + 1, 10)
    got = burst.market_many([("B", T0 + MIN - 1, {"price": 50.0}), ("A", T0 + MIN, {"price": 95.0, "intent": -10.0}),
                             ("A", T0 + MIN + 1, {"price": 95.0})])
    assert got[1] == d and got[2].order_qty == 0


#: The live-mode limit tests below run tests/test_live_faults.py's intent-only policy
#: (`limits`): with a key's value a kernel argument, every policy written from it is one
#: kernel, shared with that file's tests; each sets the limit it is about, and every other
#: one where it never binds.
HUGE_TICK = limits("X", max_drawdown="10%", initial_equity=10000)


def test_a_tick_that_overflows_equity_trips_the_kill_switch_live():
    """Buy 100 at 50 (filled), then ticks at 1e308, 40, 25, 10 and 5: the kill switch
    trips on the 1e308 tick and stays tripped; the liquidation goes out at 40."""
    engine = Engine(compile_policy(parse_policy_text(HUGE_TICK, "huge_tick.yaml")), L.LIVE)
    engine.market("X", T0, {"price": 50.0})
    assert engine.intent("X", T0 + 1, 100).order_qty == 100
    engine.fill("X", T0 + 2, 100, 50.0)
    d = engine.market("X", T0 + MIN, {"price": 1e308})
    assert d.trips_kill_switch and d.order_qty == 0
    assert d.reasons == ("kill_switch:halt", "equity_invalid:halt", "notional_invalid:blocked")
    liquidation = engine.market("X", T0 + 2 * MIN, {"price": 40.0})
    assert (liquidation.order_qty, liquidation.is_exit) == (-100, True)
    for k, price in enumerate((25.0, 10.0, 5.0)):
        engine.market("X", T0 + (3 + k) * MIN, {"price": price})
        assert engine.halted


DAY_LIMIT = limits("X", max_orders_per_day=1)


def test_time_going_backwards_does_not_reset_the_day_live():
    """A tick at T, intent 10 (sent), intent 20 (blocked), a tick dated T minus a day, a
    tick at T + 1 s: one order that day, not three."""
    engine = Engine(compile_policy(parse_policy_text(DAY_LIMIT, "day_limit.yaml")), L.LIVE)
    day, sec = 86_400_000_000_000, 1_000_000_000
    decisions = [engine.market("X", T0, {"price": 100.0}), engine.intent("X", T0 + 1, 10),
                 engine.intent("X", T0 + 2, 20), engine.market("X", T0 - day, {"price": 100.0}),
                 engine.market("X", T0 + sec, {"price": 100.0})]
    assert [d.order_qty for d in decisions] == [0, 10, 0, 0, 0]
    assert [d.reasons for d in decisions[2:]] == [("max_orders_per_day:blocked",)] * 3
    assert engine.session.n_orders == 1


@pytest.mark.parametrize("ts", [2**63, -1, 1.5e18, True, "1"])
def test_a_timestamp_outside_int64_nanoseconds_is_refused_by_every_call(policy, ts):
    engine = Engine(policy, L.LIVE)
    engine.market("A", T0, {"price": 100.0})
    for call in (lambda: engine.market("A", ts, {"price": 1.0}), lambda: engine.intent("A", ts, 1),
                 lambda: engine.decide("A", ts), lambda: engine.fill("A", ts, 1, 1.0),
                 lambda: engine.reject("A", ts, 1), lambda: engine.halt(ts), lambda: engine.resume(ts)):
        with pytest.raises(EngineError, match="timestamp"):
            call()


def test_the_last_int64_nanosecond_raises_nothing(policy):
    last = 2**63 - 1
    engine = Engine(policy, L.LIVE)
    assert engine.market("A", last, {"price": 100.0}) is not None
    assert engine.intent("A", last, 10).order_qty == 10
    engine.fill("A", last, 10, 100.0)
    assert engine.market("A", T0, {"price": 100.0}).position == 10  # and back again
    assert engine.decide("A", last) is not None


def test_a_decision_is_made_from_its_fields_in_order_with_their_defaults():
    """Decision's own __init__ (faster than the dataclass's) takes the fields as declared,
    so `dataclasses.replace`, equality and the hash see what the dataclass would."""
    parameters = list(inspect.signature(Decision.__init__).parameters.values())[1:]
    fields = dataclasses.fields(Decision)
    assert [p.name for p in parameters] == [f.name for f in fields]
    for p, f in zip(parameters, fields):
        if f.default is dataclasses.MISSING:
            assert p.default is inspect.Parameter.empty, f.name
        else:
            assert p.default == f.default or (math.isnan(p.default) and math.isnan(f.default)), f.name
    d = Decision("X", 1, 100.0, 1.0, 1.0, 0.0, 1.0, ("r",), False)
    assert dataclasses.replace(d, price=101.0) == Decision("X", 1, 101.0, 1.0, 1.0, 0.0, 1.0, ("r",), False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.price = 5.0
