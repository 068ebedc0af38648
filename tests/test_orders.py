"""The order-management core (`runtime/orders.py`) driven directly: no sockets, no event
loop, both clocks moved by the test. What it sends and records is collected and checked
with its right values; random sequences of venue answers check its invariants."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyc.compiler import layout as L
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.engine import Engine
from policyc.runtime.live.audit import KINDS
from policyc.runtime.live.protocol import Market, VenueReply
from policyc.runtime.orders import MAX_NS, OrderCore

#: One kernel for every test on ORCL. Its defaults are the plain guard most tests use
#: (intents, max_position 100, max_order_qty 100); the tests of the kill switch on a
#: drawdown, of one order a day and of a stop that meets a reversal re-bind params
#: (`guarded(...)`), which reuses the kernel. The drawdown limit, the daily order count
#: and the stop loss are inert by default (100%, 1e9, 100%: no price here falls to 0
#: or doubles against a short), and the two signals only fire when `flip` is on.
GUARD = """
policy: guard
version: 1
instruments: [ORCL]
inputs: [intent]
params:
  mp: 100
  moq: 100
  dd: 100%
  mopd: 1e9
  sl: 100%
  flip: false
  eq: 100000
signals:
  - when: flip and close >= 100
    target: 10
  - when: flip and close < 92
    target: -10
risk:
  max_position: mp
  max_order_qty: moq
  max_drawdown: dd
  max_orders_per_day: mopd
  stop_loss: sl
account:
  initial_equity: eq
  fees_bps: 0
"""
WALL = 1_800_000_000_000_000_000        # the test's wall clock (2027-01-15T08:00:00Z)
S = 1_000_000_000                      # one second, ns
T = 1_699_963_200 * S                  # 2023-11-14T12:00:00Z: a second on is the same UTC day
DAY = 86_400 * S


def compiled(text, name):
    return compile_policy(parse_policy_text(text, name))


@pytest.fixture(scope="module")
def guard():
    return compiled(GUARD, "guard.yaml")


@pytest.fixture(scope="module")
def guarded(guard):
    """`guard` under other param values, on the same kernel."""
    def rebind(**values):
        cp = guard.with_params(**values)
        assert cp.kernel is guard.kernel
        return cp
    return rebind


class Rig:
    """A core over a fresh engine, with the test's clocks and what it sent and recorded."""

    def __init__(self, policy, **limits):
        self.engine = Engine(policy, L.LIVE)
        self.wall, self.mono = WALL, 0
        self.sent, self.records = [], []
        self.core = OrderCore(self.engine, "p-1", lambda message, sent_ns: self.sent.append(message), self.record,
                              wall_ns=lambda: self.wall, monotonic_ns=lambda: self.mono, **limits)
        self.core.feed_connected()

    def record(self, kind, ts=None, **fields):
        assert kind in KINDS, kind  # a kind the decision log knows
        self.records.append({"kind": kind, "ts": ts, **fields})

    def kinds(self, kind):
        return [r for r in self.records if r["kind"] == kind]

    def tick(self, ts, price=50.0, instrument="ORCL"):
        self.core.market([Market(instrument, ts, {"price": price}, None)])

    def intent(self, target, instrument="ORCL"):
        return self.core.intent(instrument, target)

    def orders(self, kind="order"):
        return [m for m in self.sent if m["type"] == kind]

    def answer(self, kind, oid, qty=0.0, price=50.0):
        self.core.venue_reply(VenueReply(kind, oid, qty=qty, price=price))

    def open_qty(self, instrument="ORCL"):
        return self.engine.open_quantity(instrument)


# ---- the open-order table, fills, rejects ------------------------------------------------------------------------

def test_an_order_is_open_in_the_engine_and_the_core_until_its_fills_cover_it(guard):
    rig = Rig(guard)
    rig.tick(T)
    decision, added = rig.intent(40)
    (order,) = rig.orders()
    oid = order["client_order_id"]
    assert (order["side"], order["qty"], added) == ("buy", 40.0, ())
    assert rig.open_qty() == rig.core.open_quantity("ORCL") == 40.0 and oid in rig.core.unacked
    rig.answer("ack", oid)
    rig.answer("fill", oid, 15.0)
    assert rig.engine.position("ORCL") == 15.0 and rig.open_qty() == rig.core.open_quantity("ORCL") == 25.0
    rig.answer("fill", oid, 25.0)
    assert rig.engine.position("ORCL") == 40.0 and rig.open_qty() == 0.0 and not rig.core.open
    assert [r["qty"] for r in rig.kinds("fill")] == [15.0, 25.0]


def test_a_reject_releases_what_was_open(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(40)
    oid = rig.orders()[0]["client_order_id"]
    rig.answer("fill", oid, 10.0)
    rig.answer("reject", oid)
    assert rig.engine.position("ORCL") == 10.0 and rig.open_qty() == 0.0 and not rig.core.open
    assert rig.kinds("reject")[0]["qty"] == 30.0


def test_fills_answered_again_after_a_reconnect_are_applied_once(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(40)
    order = rig.orders()[0]
    oid = order["client_order_id"]
    rig.answer("fill", oid, 10.0)
    rig.core.venue_connected()                      # the open order goes out again ...
    assert rig.sent[-1] == order
    rig.answer("fill", oid, 10.0)                   # ... and the venue says all it said about it
    assert rig.engine.position("ORCL") == 10.0 and rig.open_qty() == 30.0
    rig.answer("fill", oid, 30.0)                   # then what is new
    assert rig.engine.position("ORCL") == 40.0 and not rig.core.open and rig.core.counters.fills == 2


def test_an_overfill_applies_what_was_open_is_logged_with_the_venues_quantity_and_trips_the_kill_switch(guard):
    """The venue now holds 45 more than this runtime applied: a break that only an
    operator comparing the two can resolve, so nothing new goes out until a resume."""
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(-40)
    oid = rig.orders()[0]["client_order_id"]
    rig.answer("fill", oid, 25.0)
    rig.answer("fill", oid, 60.0)                   # 15 were open
    assert rig.engine.position("ORCL") == -40.0 and oid not in rig.core.open
    (over,) = rig.kinds("overfill")
    assert (over["client_order_id"], over["venue_qty"], over["qty"]) == (oid, -60.0, -15.0)
    assert [r["qty"] for r in rig.kinds("fill")] == [-25.0, -15.0]
    (halt,) = rig.kinds("halt")
    assert halt["reason"] == f"venue_break: the venue filled 60 of {oid}, 15 of which was open"
    assert rig.engine.halted and rig.core.counters.bad_messages == 1
    (liquidation,) = rig.orders()[1:]
    assert (liquidation["side"], liquidation["qty"]) == ("buy", 40.0) and rig.open_qty() == 40.0
    rig.intent(-10)
    assert len(rig.orders()) == 2                   # halted: no new exposure


def test_a_fill_after_its_orders_reject_trips_the_kill_switch(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(50)
    oid = rig.orders()[0]["client_order_id"]
    rig.answer("reject", oid)
    rig.answer("fill", oid, 50.0)                   # the venue contradicts itself: its position may be 50
    assert rig.engine.position("ORCL") == 0.0 and rig.engine.halted
    (bad,) = rig.kinds("bad_message")
    assert bad["reason"] == f"fill of 50 for {oid} after the venue rejected it"
    assert rig.kinds("halt")[0]["reason"] == f"venue_break: fill of 50 for {oid} after the venue rejected it"
    rig.intent(60)
    assert len(rig.orders()) == 1


def test_an_order_id_with_other_digits_is_not_ours(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(10)
    oid = rig.orders()[0]["client_order_id"]
    prefix = oid.rpartition("-")[0]
    rig.answer("fill", f"{prefix}-\u00b2", 1.0)     # `²`: isdigit() says yes, int() raises
    rig.answer("fill", oid, 10.0)
    assert rig.engine.position("ORCL") == 10.0 and rig.core.counters.bad_messages == 1


def test_a_fill_for_an_order_never_sent_is_a_bad_message_and_an_answer_about_a_done_one_is_ignored(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(10)
    oid = rig.orders()[0]["client_order_id"]
    rig.answer("fill", oid, 10.0)
    rig.answer("fill", oid, 10.0)                   # done already: ignored
    rig.answer("fill", "someone-else-000001", 5.0)
    rig.answer("fill", "p-1-000002", 5.0)           # our prefix, a number not sent yet
    assert rig.engine.position("ORCL") == 10.0
    assert [r["reason"] for r in rig.kinds("bad_message")] == [
        "fill for an order this runtime did not send: someone-else-000001",
        "fill for an order this runtime did not send: p-1-000002"]


def test_partial_fills_that_round_leave_nothing_open_in_the_engine(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(0.3)
    oid = rig.orders()[0]["client_order_id"]
    rig.answer("fill", oid, 0.1)
    rig.answer("fill", oid, 0.1)
    rig.answer("fill", oid, 0.1 - 1e-15)            # within DONE of the order's size: done
    assert not rig.core.open and rig.open_qty() == 0.0


# ---- the kill switch: cancel, then liquidate ------------------------------------------------------------------

def test_halt_cancels_what_is_pending_then_liquidates_what_is_held(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(40)
    oid = rig.orders()[0]["client_order_id"]
    rig.answer("fill", oid, 10.0)
    rig.core.halt("operator halt")
    assert [(m["type"], m.get("side"), m.get("qty")) for m in rig.sent[1:]] == [("cancel", None, None),
                                                                              ("order", "sell", 10.0)]
    assert [r["kind"] for r in rig.records[-2:]] == ["halt", "order"]
    assert rig.kinds("halt")[0]["open_orders"] == [oid]
    assert rig.open_qty() == rig.core.open_quantity("ORCL") == -10.0  # the cancelled 30 are withdrawn
    rig.answer("reject", oid)                       # cancelled: nothing more to release
    assert rig.open_qty() == -10.0 and len(rig.core.open) == 1


def test_a_fill_that_beats_its_cancel_is_restored_applied_and_flattened(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(40)
    oid = rig.orders()[0]["client_order_id"]
    rig.answer("fill", oid, 10.0)
    rig.core.halt("operator halt")
    liquidation = rig.orders()[-1]["client_order_id"]
    rig.answer("fill", oid, 30.0)                   # the rest filled before the cancel arrived
    assert rig.engine.position("ORCL") == 40.0
    more = rig.orders()[-1]
    assert more["client_order_id"] != liquidation and (more["side"], more["qty"]) == ("sell", 30.0)
    assert rig.open_qty() == rig.core.open_quantity("ORCL") == -40.0


def test_resume_counts_the_orders_being_cancelled_again(guard):
    rig = Rig(guard)
    rig.tick(T)
    rig.intent(40)
    rig.core.halt("operator halt")
    assert rig.open_qty() == 0.0 and len(rig.orders()) == 1  # flat: nothing to liquidate
    rig.core.resume()
    assert rig.open_qty() == rig.core.open_quantity("ORCL") == 40.0 and not rig.engine.halted
    assert [r["kind"] for r in rig.records if r["kind"] in ("halt", "resume")] == ["halt", "resume"]


#: Was its own policy: max_position 1000, max_drawdown 10%, initial equity 10,000, no
#: fees, and no max_order_qty (so `moq` is lifted out of the way here).
DRAWDOWN = dict(mp=1000, moq=1e9, dd=0.1, eq=10000)


def test_a_decision_that_trips_the_kill_switch_sends_nothing_and_the_liquidation_follows(guarded):
    rig = Rig(guarded(**DRAWDOWN))
    rig.tick(T, 50.0)
    rig.intent(100)
    buy = rig.orders()[0]["client_order_id"]
    rig.answer("fill", buy, 100.0)
    rig.intent(150)                                 # 50 more, pending
    pending = rig.orders()[1]["client_order_id"]
    rig.tick(T + S, 40.0)                           # equity 9,000: drawdown 10%
    assert rig.engine.halted
    assert [(m["type"], m.get("side"), m.get("qty")) for m in rig.sent[2:]] == [("cancel", None, None),
                                                                              ("order", "sell", 100.0)]
    assert rig.sent[2]["client_order_id"] == pending
    assert rig.kinds("halt")[0]["reason"] == "kill_switch:halt,max_drawdown:halt"


# ---- a protective exit and its re-entry: two orders, the exit first ----------------------------------------------

#: Was its own policy of two signals on the close (long 10 from 100, short 10 below 92),
#: max_position 10, a 5% stop, initial equity 10,000, no fees; the guard's max_order_qty
#: of 100 never binds on orders of 10 or 20.
FLIP = dict(flip=True, mp=10, sl=0.05, eq=10000)


def test_a_stop_that_meets_an_opposite_target_leaves_as_the_exit_then_the_re_entry(guarded):
    """Long 10 at 100; at 90 the stop triggers on the bar whose signal asks for -10: the
    exit is an order of its own, sent first, and the re-entry a second one."""
    rig = Rig(guarded(**FLIP))
    rig.tick(T, 100.0)
    rig.answer("fill", rig.orders()[0]["client_order_id"], 10.0, 100.0)
    rig.tick(T + S, 90.0)
    assert [(m["side"], m["qty"], m["event_ts"]) for m in rig.orders()[1:]] == [("sell", 10.0, T + S),
                                                                              ("sell", 10.0, T + S)]
    assert [(r["qty"], r["exit"], r["reasons"]) for r in rig.kinds("order")[1:]] == [
        (-10.0, True, ("stop_loss:exit",)), (-10.0, False, ())]
    assert [o.is_exit for o in rig.core.open.values()] == [True, False]
    assert rig.open_qty() == rig.core.open_quantity("ORCL") == -20.0


def test_each_orders_record_is_written_before_its_message_is_sent(guarded):
    """Write ahead: an order's log record is written before its message is handed to
    `send`, for the exit and the re-entry of one event and for the flattening after a
    fill that beat its cancel alike."""
    rig = Rig(guarded(**FLIP))
    trail = []
    record, send = rig.core.record, rig.core.send
    rig.core.record = lambda kind, ts=None, **fields: (trail.append(("logged", kind, fields.get("client_order_id"))),
                                                      record(kind, ts, **fields))
    rig.core.send = lambda message, sent_ns: (trail.append(("sent", message["type"], message["client_order_id"])),
                                             send(message, sent_ns))
    rig.tick(T, 100.0)
    rig.answer("fill", rig.orders()[0]["client_order_id"], 10.0, 100.0)
    rig.tick(T + S, 90.0)                           # the stop's exit, then the re-entry
    rig.core.halt("operator halt")                  # cancels the re-entry; the exit stays
    rig.answer("fill", rig.orders()[2]["client_order_id"], 10.0, 90.0)  # the re-entry beat its cancel: flattened
    orders = [step for step in trail if step[1] == "order"]
    assert [oid for _, _, oid in orders] == [f"p-1-{n:06d}" for n in (1, 1, 2, 2, 3, 3, 4, 4)]
    assert [done for done, _, _ in orders] == ["logged", "sent"] * 4
    assert ("sent", "cancel", "p-1-000003") in trail


# ---- event time: forward only, never from the future -------------------------------------------------------------

#: Was its own policy: max_position 100 and max_orders_per_day 1 (the guard's
#: max_order_qty of 100 never binds on orders of 10 to 30).
ORDERS_PER_DAY = dict(mopd=1)


def test_a_tick_from_the_day_before_is_refused_and_does_not_reset_the_day(guarded):
    """Issue 9, case 2: one order a day; a tick dated a day back, then one a second on,
    used to reset the day counters twice, and 3 orders left within a second."""
    rig = Rig(guarded(**ORDERS_PER_DAY))
    rig.tick(T)
    assert rig.intent(10)[0].order_qty == 10
    assert "max_orders_per_day:blocked" in rig.intent(20)[0].reasons
    rig.tick(T - DAY, 51.0)
    rig.tick(T + S, 52.0)
    third = rig.intent(30)[0]
    assert third.order_qty == 0 and "max_orders_per_day:blocked" in third.reasons
    assert len(rig.orders()) == 1 and rig.core.counters.events == 2
    (refused,) = rig.kinds("bad_message")
    assert (refused["source"], refused["event_ts"], refused["last_ts"]) == ("feed", T - DAY, T)
    assert f"event time {T - DAY} is before the instrument's latest event at {T}" in refused["reason"]


def test_equal_times_pass_and_one_read_is_checked_event_by_event(guard):
    rig = Rig(guard)
    rig.core.market([Market("ORCL", T, {"price": 50.0}, None), Market("ORCL", T, {"price": 51.0}, None),
                     Market("ORCL", T - 1, {"price": 52.0}, None), Market("ORCL", T + 1, {"price": 53.0}, None)])
    assert rig.core.counters.events == 3 and rig.engine.last_prices()["ORCL"] == 53.0
    assert [r["event_ts"] for r in rig.kinds("bad_message")] == [T - 1]


@pytest.mark.parametrize("ahead, refused", [(4 * S, False), (5 * S, False), (5 * S + 1, True), (MAX_NS - WALL, True)])
def test_an_event_further_ahead_of_the_wall_clock_than_the_skew_is_refused(guard, ahead, refused):
    rig = Rig(guard, max_clock_skew_s=5.0)
    rig.tick(T)
    rig.tick(WALL + ahead, 51.0)
    assert bool(rig.kinds("bad_message")) is refused
    if refused:
        (bad,) = rig.kinds("bad_message")
        assert (bad["event_ts"], bad["wall_ts"]) == (WALL + ahead, WALL) and "--max-clock-skew 5 s" in bad["reason"]
        assert rig.core.last_ts["ORCL"] == T
    rig.mono += 3 * S
    decision, _ = rig.intent(10)                    # timestamp arithmetic near int64's end does not raise
    assert decision.ts == min((T if refused else WALL + ahead) + 3 * S, MAX_NS)


def test_a_decision_without_a_market_event_is_on_the_feeds_clock_never_the_wall_clock(random_walk):
    """Before any market event, 0; for an instrument before its first event, the latest
    instrument's clock: a wall-clock time would move the kernel's day decades ahead of
    a replay of old data."""
    rig = Rig(random_walk)
    assert rig.intent(0, "A")[0].ts == 0
    rig.tick(T, 50.0, "A")
    rig.mono += 2 * S
    assert rig.intent(0, "B")[0].ts == T + 2 * S and rig.core.latest_time() == T + 2 * S


def test_a_replay_of_old_data_is_not_ahead_of_anything(guard):
    """A recording from 1995 served 2,000 events a second: each day's bar arrives half a
    millisecond after the one before, and none is refused."""
    rig = Rig(guard)
    start = 788_918_400 * S                         # 1995-01-01
    for k in range(50):
        rig.mono += 500_000
        rig.tick(start + k * DAY, 50.0 + k)
    assert rig.core.counters.events == 50 and not rig.kinds("bad_message")


def test_event_time_estimates_stay_within_int64(guard):
    rig = Rig(guard, max_clock_skew_s=1e12)         # a skew that lets the last nanosecond through
    rig.tick(MAX_NS)
    rig.mono += 10 * S
    assert rig.core.now_for("ORCL") == MAX_NS and rig.intent(10)[0].ts == MAX_NS
    rig.core.halt("operator halt")
    assert rig.engine.halted


# ---- feed silence: reduce-only, logged when it starts and ends ----------------------------------------------------

def test_a_silent_feed_makes_intents_reduce_only_and_is_logged_when_it_starts_and_ends(guard):
    """Issue 9, case 6: a feed that stops sending but keeps its connection, and a policy
    without `stale_after`."""
    rig = Rig(guard, max_feed_silence_s=5.0)
    rig.tick(T)
    assert rig.intent(40)[0].order_qty == 40
    rig.answer("fill", rig.orders()[0]["client_order_id"], 40.0)
    rig.mono += 5 * S - 1
    assert rig.core.feed_live() and not rig.kinds("feed_silent")
    rig.mono += 1
    grow, added = rig.intent(90)
    assert (grow.order_qty, added) == (0.0, ("stale_after:blocked",))
    assert rig.intent(-20)[0].order_qty == -40      # to the other side: flat
    (silent,) = rig.kinds("feed_silent")
    assert (silent["silent_s"], silent["last_event_ts"], silent["ts"]) == (5.0, T, T + 5 * S)
    rig.core.feed_live()                            # asked again: logged once
    assert len(rig.kinds("feed_silent")) == 1
    rig.mono += 2 * S
    rig.tick(T + 7 * S)
    (live,) = rig.kinds("feed_live")
    assert (live["silent_s"], live["ts"]) == (7.0, T + 7 * S)
    assert rig.intent(90)[0].order_qty == 90        # held 40, selling 40: from 0 to 90


def test_a_stuck_relay_repeating_its_last_event_is_a_silent_feed(guard):
    """Events at the time already seen are acted on, but only event time that moves on
    makes the feed live and restarts the instrument's clock."""
    rig = Rig(guard, max_feed_silence_s=5.0)
    rig.tick(T)
    for _ in range(20):                             # the same tick every 0.3 s for 6 s
        rig.mono += 3 * S // 10
        rig.tick(T)
    grow, added = rig.intent(40)
    assert (grow.order_qty, added) == (0.0, ("stale_after:blocked",)) and rig.kinds("feed_silent")
    assert grow.ts == T + 6 * S                     # the intent's time went on with the wall clock
    rig.tick(T + 1)
    assert rig.intent(40)[0].order_qty == 40 and rig.kinds("feed_live")


def test_the_feed_is_not_live_before_its_first_event_nor_while_its_connection_is_down(guard):
    rig = Rig(guard, max_feed_silence_s=5.0)
    assert rig.intent(10)[1] == ("stale_after:blocked",)
    rig.tick(T)
    assert rig.intent(10)[1] == ()
    rig.core.feed_lost()
    assert rig.intent(20)[1] == ("stale_after:blocked",) and rig.core.reduce_only
    rig.mono += 60 * S                              # no silence is logged while the connection is down
    rig.core.feed_live()
    assert not rig.kinds("feed_silent")
    rig.core.feed_connected()
    rig.mono += 5 * S                               # connected, and nothing on it for that long
    rig.core.feed_live()
    assert rig.kinds("feed_silent")[0]["silent_s"] == 5.0


def test_a_feed_that_sends_only_refused_events_is_silent(guard):
    rig = Rig(guard, max_feed_silence_s=5.0)
    rig.tick(T)
    for k in range(1, 6):
        rig.mono += S
        rig.tick(T - k * S)                         # each one older than the last accepted
    assert not rig.core.feed_live() and len(rig.kinds("bad_message")) == 5 and rig.kinds("feed_silent")


# ---- random sequences of venue answers: the invariants ------------------------------------------------------------

#: Intents on A and B: tests/test_replay.py's `WALK` (its name and keys, with values of its
#: own: they are kernel arguments, not code), so the two files compile one kernel. Its day's
#: order limit is set where it never binds (a million: a sequence here has 60 steps at most).
RANDOM = """
policy: walk
version: 1
instruments: [A, B]
inputs: [intent]
signals: []
risk:
  max_position: 100
  max_order_qty: 60
  max_orders_per_day: 1000000
  max_drawdown: 15%
account:
  initial_equity: 10000
  fees_bps: 0
"""

STEP = st.one_of(
    st.tuples(st.just("intent"), st.sampled_from("AB"), st.integers(-150, 150)),
    st.tuples(st.just("tick"), st.sampled_from("AB"), st.floats(20.0, 80.0)),
    st.tuples(st.just("fill"), st.integers(0, 30), st.sampled_from([0.1, 0.25, 0.5, 1.0, 1.5, 3.0])),
    st.tuples(st.just("fill_float"), st.integers(0, 30), st.floats(0.001, 2.0)),
    st.tuples(st.just("reject"), st.integers(0, 30)),
    st.tuples(st.just("ack"), st.integers(0, 30)),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("halt")),
    st.tuples(st.just("resume")),
)


@pytest.fixture(scope="module")
def random_walk():
    return compiled(RANDOM, "random_walk.yaml")


@settings(max_examples=1000, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEP, max_size=60))
def test_open_quantities_stay_within_what_was_sent_and_the_engine_agrees(random_walk, sequence):
    """Fills, partial fills, overfills, rejects (the answers to cancels among them),
    reconnects after which the venue answers every order again with all it said, halts
    and resumes: after every step, no order has more open than it was sent for or less
    than nothing, what is applied of it is what the venue filled up to its size, and the
    engine's open quantity and position are the core's."""
    rig = Rig(random_walk)
    history: dict[str, list[VenueReply]] = {}      # the venue's answers so far, per order id
    filled: dict[str, float] = {}                  # what the venue filled of each order
    rig.tick(T, 50.0, "A")
    rig.tick(T, 50.0, "B")
    ts = T
    for step in sequence:
        kind = step[0]
        sizes = {m["client_order_id"]: m["qty"] for m in rig.orders()}
        if kind == "intent":
            rig.intent(step[2], step[1])
        elif kind == "tick":
            ts += S
            rig.tick(ts, step[2], step[1])
        elif kind in ("fill", "fill_float", "reject", "ack") and sizes:
            oid = list(sizes)[step[1] % len(sizes)]
            over = any(r.type == "reject" for r in history.get(oid, ())) or filled.get(oid, 0.0) >= sizes[oid]
            if not over:  # a venue says nothing new about an order it has ended
                reply = (VenueReply("fill", oid, qty=sizes[oid] * step[2], price=50.0) if kind.startswith("fill")
                         else VenueReply(kind, oid))
                if reply.type == "fill":
                    filled[oid] = filled.get(oid, 0.0) + reply.qty
                history.setdefault(oid, []).append(reply)
                rig.core.venue_reply(reply)
        elif kind == "reconnect":
            resent = len(rig.sent)
            rig.core.venue_connected()
            for message in rig.sent[resent:]:
                for reply in history.get(message["client_order_id"], []):
                    rig.core.venue_reply(reply)
        elif kind == "halt":
            rig.core.halt("random")
        elif kind == "resume" and rig.engine.halted:
            rig.core.resume()
        for order in rig.core.open.values():
            assert 0 < order.left / order.qty <= 1 + 1e-12, order
        for name in "AB":
            assert rig.engine.open_quantity(name) == pytest.approx(rig.core.open_quantity(name), abs=1e-9)
            bought = sum(r["qty"] for r in rig.kinds("fill") if r["instrument"] == name)
            assert rig.engine.position(name) == pytest.approx(bought, abs=1e-9)
        applied: dict[str, float] = {}
        for r in rig.kinds("fill"):
            applied[r["client_order_id"]] = applied.get(r["client_order_id"], 0.0) + abs(r["qty"])
        sizes = {m["client_order_id"]: m["qty"] for m in rig.orders()}
        for oid, qty in applied.items():  # each fill once, and never more than the order
            assert qty == pytest.approx(min(filled[oid], sizes[oid]), rel=1e-12), oid
