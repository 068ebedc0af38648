"""A venue read's fills and rejects go through the kernel in one call (`Engine.book`,
`OrderCore._book`): the same state, records and messages, to the bit, as one call each.

Engine level: random fills and rejects (partial, opposite, closing, over, at extreme
prices and fees) booked in chunks against the same events one `fill` or `reject` at a
time, on the kernel and on the reference interpreter. Order-core level: the random
steps of tests/test_core_differential.py, with the venue's answers of consecutive steps
gathered into reads; the reference, the core as it was with one kernel call per
fill (`OneCallPerAnswer`), gets a read's answers one at a time, the order core all in
one `venue_replies`. Both must send and record the same, and hold the same positions,
open quantities, equity and kill switch, after every read."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_core_differential as cd
from core_rig import CoreRig, interpreter_engine, kernel_engine
from policyc.compiler import layout as L
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.engine import EngineError
from policyc.runtime.live.protocol import Market, VenueReply
from policyc.runtime.orders import DONE, OrderCore

S = cd.S
T = cd.T


class OneCallPerAnswer(OrderCore):
    """The reference: the order core as it handled each venue answer before reads were
    booked together, one kernel call (`Engine.fill`, `Engine.reject`) per fill and the
    fill's record right after it, from the engine's state. Kept here as the oracle the
    batched core must match, its order of operations included."""

    def _venue_reply(self, reply) -> None:
        oid = reply.client_order_id
        self.unacked.discard(oid)
        if reply.type == "ack":
            return
        order = self.open.get(oid)
        if order is None:
            if reply.type == "fill" and not self._sent_by_us(oid):
                self._bad("venue", f"fill for an order this runtime did not send: {oid}")
            elif reply.type == "fill" and oid in self.rejected:
                self._venue_break(f"fill of {reply.qty:g} for {oid} after the venue rejected it")
            return
        instrument, left = order.instrument, order.left
        ts = self.now_for(instrument)
        said = reply.ts if reply.ts is not None else ts
        if reply.type == "reject" or reply.type == "cancel":
            if reply.type == "reject":
                self.counters.rejects += 1
            else:
                self.counters.cancels += 1
            if not order.withdrawn:
                self._withdraw(instrument, ts, left)
            del self.open[oid]
            self.rejected.add(oid)
            self.record(reply.type, ts=said, client_order_id=oid, instrument=instrument, qty=left,
                        reason=reply.reason)
            return
        order.fills_seen += 1
        if order.fills_seen <= order.fills_applied:
            return
        notional = reply.qty * (reply.price * self.multiplier[instrument])
        if reply.fee > notional:
            order.fills_seen -= 1
            self._venue_break(f"fill of {oid}: `fee` is {reply.fee!r}, above the fill's notional {notional:g} "
                              f"(qty x price x multiplier {self.multiplier[instrument]:g}): refused")
            return
        sign = 1.0 if left > 0 else -1.0
        qty = min(reply.qty, abs(left)) * sign
        overfilled = reply.qty > abs(left)
        if overfilled:
            self.record("overfill", ts=said, client_order_id=oid, instrument=instrument, venue_qty=reply.qty * sign,
                        qty=qty)
        if order.withdrawn:
            self._restore(instrument, ts, qty)
        self.engine.fill(instrument, ts, qty, reply.price, reply.fee)
        self.counters.fills += 1
        order.fills_applied += 1
        order.left = left - qty
        if abs(order.left) <= DONE * abs(order.qty):
            if order.left and not order.withdrawn:
                self._withdraw(instrument, ts, order.left)
            del self.open[oid]
        self.record("fill", ts=said, client_order_id=oid, instrument=instrument, qty=qty, price=reply.price,
                    fee=reply.fee, position=self.engine.position(instrument), equity=self.engine.equity)
        if order.withdrawn and self.engine.halted:
            self._decide(instrument)
        if overfilled:
            self._venue_break(f"the venue filled {reply.qty:g} of {oid}, {abs(left):g} of which was open")


@pytest.fixture(scope="module")
def every_key():
    return compile_policy(parse_policy_text(cd.POLICIES["every_key"], "every_key.yaml"))


@pytest.fixture(scope="module")
def intents():
    return compile_policy(parse_policy_text(cd.POLICIES["intents"], "intents.yaml"))


def bits(x: float) -> tuple:
    return (type(x), x.hex() if x == x else "nan")


quantity = st.sampled_from([1.0, -1.0, 10.0, -10.0, 0.25, -3.5, 1e-9, 7e15, -7e15, 1e300, 0.0])
price = st.sampled_from([100.0, 99.5, 1e-300, 5e-324, 1.7e308, 42.125])
fee = st.sampled_from([0.0, 0.01, 3.0, 1e6])
event = st.one_of(
    st.tuples(st.just(L.FILL), st.integers(0, 1), quantity, price, fee),
    st.tuples(st.just(L.REJECT), st.integers(0, 1), quantity, st.just(0.0), st.just(0.0)),
)


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event, min_size=1, max_size=30), cuts=st.lists(st.integers(1, 8), min_size=1, max_size=8),
       back_end=st.sampled_from(["kernel", "interpreter"]))
def test_booking_a_chunk_equals_one_call_per_event(intents, events, cuts, back_end):
    make = kernel_engine if back_end == "kernel" else interpreter_engine
    one, chunked = make(intents), make(intents)
    for engine in (one, chunked):
        engine.market("A", T, {"price": 100.0, "close": 100.0})
        engine.market("B", T, {"price": 50.0, "close": 50.0})
    rows = [(kind, "AB"[inst], T + S * (k + 1), (qty, px, f) if kind == L.FILL else (qty,))
            for k, (kind, inst, qty, px, f) in enumerate(events)]
    singly = []
    for kind, name, ts, values in rows:
        (one.fill if kind == L.FILL else one.reject)(name, ts, *values)
        singly.append((one.position(name), one.equity))
    booked, at, k = [], 0, 0
    while at < len(rows):
        size = cuts[k % len(cuts)]
        booked += chunked.book(rows[at:at + size])
        at, k = at + size, k + 1
    assert [tuple(map(bits, pair)) for pair in booked] == [tuple(map(bits, pair)) for pair in singly]
    for name in "AB":
        for value in ("position", "open_quantity"):
            assert bits(getattr(one, value)(name)) == bits(getattr(chunked, value)(name))
    assert bits(one.equity) == bits(chunked.equity) and one.halted == chunked.halted
    if back_end == "kernel":  # every state array, the account's statistics and the order rows included
        a, b = one.session, chunked.session
        for array in ("pstate", "acct", "fs"):
            assert getattr(a, array).tobytes() == getattr(b, array).tobytes(), array


def test_book_checks_every_event_before_applying_any(intents):
    engine = kernel_engine(intents)
    engine.market("A", T, {"price": 100.0, "close": 100.0})
    before = engine.session.pstate.copy(), engine.session.acct.copy()
    for bad in ([(L.FILL, "A", T, (1.0, 100.0, 0.0)), (L.FILL, "A", -1, (1.0, 100.0, 0.0))],
                [(L.FILL, "A", T, (1.0, 100.0, 0.0)), (L.REJECT, "Z", T, (1.0,))],
                [(L.FILL, "A", T, (1.0, 100.0, 0.0)), (L.FILL, "A", 2**63, (1.0, 100.0, 0.0))]):
        with pytest.raises(EngineError):
            engine.book(bad)
        assert engine.session.pstate.tobytes() == before[0].tobytes()
        assert engine.session.acct.tobytes() == before[1].tobytes()
    assert engine.book([]) == []


class Reads(cd.Pair):
    """Two cores over the kernel, moved by the differential test's steps; the venue's
    answers wait in `read` until a step of another kind, and then reach the reference
    (`OneCallPerAnswer`) one at a time and the order core in one `venue_replies`."""

    labels = ("reference", "order core")

    def __init__(self, policy):
        super().__init__(policy)
        self.rigs = (CoreRig(kernel_engine(policy), OneCallPerAnswer), CoreRig(kernel_engine(policy)))
        self.read: list = []
        self.fills_together = 0  # reads that held two fills or more
        self.after_a_fill = 0    # reads with a reject, cancel or ack after a fill

    def reply(self, reply: VenueReply) -> None:
        self.venue.setdefault(reply.client_order_id, []).append(reply)
        self.read.append(reply)

    def deliver(self) -> None:
        read, self.read = self.read, []
        if not read:
            return
        singly, together = self.rigs
        for reply in read:
            singly.core.venue_reply(reply)
        together.core.venue_replies(read)
        kinds = [r.type for r in read]
        self.fills_together += kinds.count("fill") >= 2
        # an answer of another kind after a fill: it must come after the fill's booking
        self.after_a_fill += "fill" in kinds and any(kind != "fill" for kind in kinds[kinds.index("fill"):])

    def step(self, step) -> None:
        kind = step[0]
        if kind == "again":
            ids = list(self.rigs[0].core.open) or [m["client_order_id"] for m in self.rigs[0].orders()]
            oid = ids[step[1] % len(ids)] if ids else None
            if oid and self.venue.get(oid):
                self.read.append(self.venue[oid][-1])  # a duplicate, in the read
            return
        if kind in ("fill", "reject", "ack", "cancelled"):
            super().step(step)  # its answers go to `reply`
            return
        self.deliver()
        if kind == "reconnect":  # the venue answers every order sent again, in one read
            resent = len(self.rigs[0].sent)
            self.both(lambda rig: rig.core.venue_connected())
            for message in self.rigs[0].sent[resent:]:
                self.read += self.venue.get(message["client_order_id"], [])
            return
        super().step(step)


#: The differential test's steps, with the venue's answers weighted up: reads hold
#: several fills, and rejects, cancels and duplicates between them
STEP = cd.weighted(
    (4, cd.tick), (4, cd.intent), (8, cd.fill),
    (2, cd.about_an_order("again")), (3, cd.about_an_order("reject")), (1, cd.about_an_order("ack")),
    (1, cd.plain("cancelled")), (1, cd.plain("reconnect")), (1, cd.plain("halt")), (1, cd.plain("resume")),
    (1, cd.wait),
)


@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=cd.STEPS // 2, max_size=cd.STEPS))
def _reads_agree(policy, steps, seen_reads):
    pair = Reads(policy)
    for k in range(12):
        pair.step(("tick", k % 2, ("on", S), ("walk", 0.01 * (-1) ** (k // 2)), 1000.0))
    seen = (0, 0)
    for step in [*steps, ("wait", S // 10)]:  # the last read is delivered too
        pair.step(step)
        if not pair.read:
            seen = pair.check(step, seen)
    seen_reads[0] += pair.fills_together
    seen_reads[2] += pair.after_a_fill
    for record in pair.rigs[1].records:
        if record["kind"] in ("fill", "overfill", "reject", "bad_message"):
            seen_reads[1].add(record["kind"])


@pytest.mark.parametrize("name", ["every_key", "intents"])
def test_a_read_booked_together_equals_its_answers_one_at_a_time(name, request):
    """The module docstring's order-core check; the sequences gathered many reads of
    several fills, and reached overfills, rejects and bad messages among them."""
    policy = request.getfixturevalue(name)
    seen_reads = [0, set(), 0]
    _reads_agree(policy, seen_reads=seen_reads)
    # Hypothesis draws other sequences on other machines even when derandomized (208 and
    # 104 reads on one, 161 and 90 on another), so the bar sits near half the lower.
    assert seen_reads[0] >= 50 and seen_reads[2] >= 50, seen_reads
    assert seen_reads[1] == {"fill", "overfill", "reject", "bad_message"}, seen_reads


def test_a_fill_record_carries_the_state_after_its_own_fill(intents):
    """Three fills of three orders in one read: each record's position and equity are
    those after its fill, not after the read."""
    rig = CoreRig(kernel_engine(intents))
    rig.core.market([Market("A", T, {"price": 100.0, "close": 100.0}, None)])
    for k, target in enumerate((10.0, 30.0, 60.0)):
        rig.mono += S
        rig.core.intent("A", target)
    ids = [m["client_order_id"] for m in rig.orders()]
    assert [m["qty"] for m in rig.orders()] == [10.0, 20.0, 30.0]
    rig.core.venue_replies([VenueReply("fill", oid, qty=qty, price=price, fee=0.5)
                            for oid, qty, price in zip(ids, (10.0, 20.0, 30.0), (100.0, 101.0, 99.0))])
    fills = rig.kinds("fill")
    assert [f["position"] for f in fills] == [10.0, 30.0, 60.0]
    cash, expected = 10_000.0, []
    for qty, price, position in ((10.0, 100.0, 10.0), (20.0, 101.0, 30.0), (30.0, 99.0, 60.0)):
        cash -= qty * price + 0.5
        expected.append(cash + position * 100.0)  # marked at the last market price
    assert [f["equity"] for f in fills] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx([9_999.5, 9_979.0, 10_008.5])
    assert math.isclose(rig.engine.equity, expected[-1], rel_tol=1e-12)


def _two_cores(policy, orders: list[float], halt: bool = False, filled_first: int = 0,
               earlier=None) -> tuple[CoreRig, CoreRig]:
    """The reference (`OneCallPerAnswer`) and the order core, each having sent the orders
    of intents to `orders` (targets, on A), given `earlier(ids)`'s answers one read at a
    time (the orders' ids in order), and optionally halted (the kill switch withdraws
    the open orders, and liquidates what the first `filled_first` orders, filled in full
    before it, hold)."""
    rigs = (CoreRig(kernel_engine(policy), OneCallPerAnswer), CoreRig(kernel_engine(policy)))
    for rig in rigs:
        rig.core.market([Market("A", T, {"price": 100.0, "close": 100.0}, None)])
        for target in orders:
            rig.mono += S
            rig.core.intent("A", target)
        ids = [m["client_order_id"] for m in rig.orders()]
        for order in rig.orders()[:filled_first]:
            rig.core.venue_replies([VenueReply("fill", order["client_order_id"], qty=order["qty"], price=100.0,
                                               fee=0.0)])
        for reply in earlier(ids) if earlier else ():
            rig.core.venue_replies([reply])
        if halt:
            rig.core.halt("operator halt")
    return rigs


def _deliver(rigs: tuple[CoreRig, CoreRig], answers: list) -> CoreRig:
    """One venue read: the reference gets its answers one at a time, the order core all
    together. Asserts that both sent and recorded the same and hold the same state, and
    returns the order core's rig."""
    singly, together = rigs
    for reply in answers:
        singly.core.venue_reply(reply)
    together.core.venue_replies(answers)
    assert cd.agree(singly.sent, together.sent) and cd.agree(singly.records, together.records), \
        (singly.records[-6:], together.records[-6:])
    for value in ("position", "open_quantity"):
        assert bits(getattr(singly.engine, value)("A")) == bits(getattr(together.engine, value)("A"))
    assert bits(singly.engine.equity) == bits(together.engine.equity)
    assert singly.engine.halted == together.engine.halted
    return together


def _both_ways(policy, orders: list[float], read, **setup) -> CoreRig:
    """`_deliver` of `read(ids)`'s answers (the orders' ids in order) to `_two_cores`."""
    rigs = _two_cores(policy, orders, **setup)
    return _deliver(rigs, read([m["client_order_id"] for m in rigs[0].orders()]))


def test_partial_fills_that_leave_a_rounding_remainder_release_it_in_the_same_booking(intents):
    """0.3 filled as 0.1, 0.1 and 0.09999999999999997 leaves 1.4e-17 open: released (a
    reject of it in the kernel) in the read's booking, so the engine's open quantity is
    the core's, 0."""
    last = 0.09999999999999997
    rig = _both_ways(intents, [0.3], lambda ids: [VenueReply("fill", ids[0], qty=q, price=100.0, fee=0.0)
                                                  for q in (0.1, 0.1, last)])
    assert 0 < 0.3 - 0.1 - 0.1 - last <= 1e-12 * 0.3
    assert [f["qty"] for f in rig.kinds("fill")] == [0.1, 0.1, last] and not rig.kinds("overfill")
    assert rig.engine.open_quantity("A") == rig.core.open_quantity("A") == 0.0 and not rig.core.open
    # with another order open, the release after the last fill, as one call each makes
    # it, and the same two the other way round leave open quantities a bit apart
    rig = _both_ways(intents, [0.3, 0.35], lambda ids: [VenueReply("fill", ids[0], qty=q, price=100.0, fee=0.0)
                                                        for q in (0.1, 0.1, last)])
    left = (0.3 - 0.1 - 0.1) - last
    assert ((0.35 - 0.1 - 0.1) - last) - left != ((0.35 - 0.1 - 0.1) - left) - last
    assert len(rig.core.open) == 1


def test_a_withdrawn_orders_rounding_remainder_is_not_released_again(intents):
    """Halted: 0.3 is withdrawn whole; its fills 0.1 and 0.1 beat the cancel and are
    liquidated, those liquidations fill, and its last fill leaves 1.4e-17: nothing to
    release, as the withdrawal took it already (the engine's open quantity is near 0
    here, so a release would show)."""
    rigs = _two_cores(intents, [0.3], halt=True)
    oid = rigs[0].orders()[0]["client_order_id"]
    _deliver(rigs, [VenueReply("fill", oid, qty=q, price=100.0, fee=0.0) for q in (0.1, 0.1)])
    liquidations = [m for m in rigs[0].orders() if m["client_order_id"] != oid]
    assert liquidations
    _deliver(rigs, [VenueReply("fill", m["client_order_id"], qty=m["qty"], price=100.0, fee=0.0)
                    for m in liquidations])
    rig = _deliver(rigs, [VenueReply("fill", oid, qty=0.09999999999999997, price=100.0, fee=0.0)])
    assert rig.orders()[-1]["side"] == "sell" and rig.orders()[-1]["qty"] == 0.09999999999999997


def test_a_fill_the_venue_should_not_have_sent_breaks_after_the_fills_before_it(intents):
    """A fill of an order the venue rejected, or of one this runtime never sent, after a
    plain fill in the same read: the plain fill is booked and recorded first, and the
    liquidation of the venue break counts it."""
    rig = _both_ways(intents, [10.0, 30.0], lambda ids: [
        VenueReply("fill", ids[0], qty=10.0, price=100.0, fee=0.0),
        VenueReply("fill", ids[1], qty=20.0, price=100.0, fee=0.0)],
        earlier=lambda ids: [VenueReply("reject", ids[1], reason="no")])
    kinds = [r["kind"] for r in rig.records]
    assert kinds.index("fill") < kinds.index("bad_message") and rig.engine.halted
    assert sum(m["qty"] for m in rig.orders() if m["side"] == "sell") == 10.0
    rig = _both_ways(intents, [10.0], lambda ids: [
        VenueReply("fill", ids[0], qty=10.0, price=100.0, fee=0.0),
        VenueReply("fill", "zz-000001", qty=1.0, price=100.0, fee=0.0)])
    kinds = [r["kind"] for r in rig.records]
    assert kinds.index("fill") < kinds.index("bad_message")


def test_an_overfill_is_booked_with_the_fills_before_it_and_then_breaks(intents):
    rig = _both_ways(intents, [10.0, 30.0], lambda ids: [
        VenueReply("fill", ids[0], qty=10.0, price=100.0, fee=0.0),
        VenueReply("fill", ids[1], qty=25.0, price=100.0, fee=0.0),
        VenueReply("fill", ids[0], qty=1.0, price=100.0, fee=0.0)])
    kinds = [r["kind"] for r in rig.records]
    assert kinds[kinds.index("overfill"):][:3] == ["overfill", "fill", "bad_message"], kinds
    assert [f["position"] for f in rig.kinds("fill")] == [10.0, 30.0]
    assert rig.engine.halted


def test_a_fill_of_a_withdrawn_order_flattens_with_the_fills_before_it_booked(intents):
    """Halted: the open orders are withdrawn and cancelled. Fills beat the cancels; the
    second one's position must count the first, and what it leaves is flattened."""
    rig = _both_ways(intents, [10.0, 30.0], lambda ids: [
        VenueReply("fill", ids[0], qty=10.0, price=100.0, fee=0.0),
        VenueReply("fill", ids[1], qty=20.0, price=100.0, fee=0.0)], halt=True)
    assert [f["position"] for f in rig.kinds("fill")] == [10.0, 30.0]
    liquidation = [m for m in rig.orders() if m["side"] == "sell"]
    assert [m["qty"] for m in liquidation] == [10.0, 20.0] or sum(m["qty"] for m in liquidation) == 30.0


def test_a_reject_after_a_fill_in_one_read_is_recorded_after_it(intents):
    rig = _both_ways(intents, [10.0, 30.0], lambda ids: [
        VenueReply("fill", ids[0], qty=10.0, price=100.0, fee=0.0), VenueReply("reject", ids[1], reason="no")])
    assert [r["kind"] for r in rig.records][-2:] == ["fill", "reject"]
    assert rig.engine.open_quantity("A") == 0.0 and rig.engine.position("A") == 10.0


def test_an_answer_the_core_fails_on_is_logged_after_the_fills_before_it(intents):
    """A defect while handling an answer (here an id that is not a string, which the
    protocol would have refused) is a bad message, written after the records of the
    fills before it, and the answers after it still count."""
    rig = _both_ways(intents, [10.0, 30.0], lambda ids: [
        VenueReply("fill", ids[0], qty=10.0, price=100.0, fee=0.0), VenueReply("fill", ["junk"], qty=1.0),
        VenueReply("fill", ids[1], qty=20.0, price=100.0, fee=0.0)])
    assert [r["kind"] for r in rig.records][-3:] == ["fill", "bad_message", "fill"]
    assert rig.engine.position("A") == 30.0


def test_a_read_the_kernel_fails_to_book_trips_the_kill_switch(intents, monkeypatch):
    """A defect in the booking leaves fills counted here that the kernel does not hold:
    this state and the venue's may differ, so it is a venue break (bad message, halt),
    and no fill record claims a position the kernel does not have."""
    rig = CoreRig(kernel_engine(intents))
    rig.core.market([Market("A", T, {"price": 100.0, "close": 100.0}, None)])
    rig.mono += S
    rig.core.intent("A", 10.0)
    oid = rig.orders()[0]["client_order_id"]

    def broken(events):
        raise RuntimeError("defect")

    monkeypatch.setattr(rig.engine, "book", broken)
    rig.core.venue_replies([VenueReply("fill", oid, qty=10.0, price=100.0, fee=0.0)])
    assert not rig.kinds("fill")
    assert rig.kinds("bad_message")[0]["reason"] == f"internal error booking the fill of {oid!r}: RuntimeError('defect')"
    assert rig.engine.halted and rig.kinds("halt")


def _fail_bookings_with_a_fill_at(price: float, rig: CoreRig, monkeypatch) -> None:
    """The rig's engine refuses, as a defect would, to book any events among which a fill
    is at `price`."""
    book = rig.engine.book

    def failing(events):
        if any(values[1:2] == (price,) for _, _, _, values in events):
            raise RuntimeError("defect")
        return book(events)

    monkeypatch.setattr(rig.engine, "book", failing)


def test_when_a_read_fails_to_book_each_answer_is_booked_on_its_own(intents, monkeypatch):
    """One fill the kernel cannot take (a defect, here made to fail on its price) costs
    the read's other fills nothing: they are booked and recorded in order, and that one
    trips the kill switch in its place."""
    rig = CoreRig(kernel_engine(intents))
    rig.core.market([Market("A", T, {"price": 100.0, "close": 100.0}, None)])
    for target in (10.0, 30.0, 60.0):
        rig.mono += S
        rig.core.intent("A", target)
    ids = [m["client_order_id"] for m in rig.orders()]
    _fail_bookings_with_a_fill_at(13.0, rig, monkeypatch)
    rig.core.venue_replies([VenueReply("fill", oid, qty=qty, price=price, fee=0.0)
                            for oid, qty, price in zip(ids, (10.0, 20.0, 30.0), (100.0, 13.0, 100.0))])
    kinds = [r["kind"] for r in rig.records]
    assert kinds.index("fill") < kinds.index("bad_message") < kinds.index("halt") < len(kinds) - 1 - kinds[::-1].index("fill")
    assert [(f["client_order_id"], f["position"]) for f in rig.kinds("fill")] == [(ids[0], 10.0), (ids[2], 40.0)]
    assert rig.kinds("bad_message")[0]["reason"] == f"internal error booking the fill of {ids[1]!r}: RuntimeError('defect')"
    assert rig.engine.halted


def test_a_fee_above_notional_after_a_fill_in_one_read_is_refused_after_its_booking(intents):
    rig = _both_ways(intents, [10.0, 30.0], lambda ids: [
        VenueReply("fill", ids[0], qty=10.0, price=100.0, fee=0.0),
        VenueReply("fill", ids[1], qty=5.0, price=100.0, fee=1e6)])
    kinds = [r["kind"] for r in rig.records]
    assert kinds[kinds.index("fill"):][:3] == ["fill", "bad_message", "halt"], kinds


def test_book_takes_fills_and_rejects_only(intents):
    engine = kernel_engine(intents)
    for bad in ([(L.MARKET, "A", T, (100.0, 100.0, 0.0))], [(L.HALT, "A", T, ())], [(L.FILL, "A", T, (1.0, 100.0))],
                [(L.REJECT, "A", T, (1.0, 2.0))]):
        with pytest.raises(EngineError, match="book takes fills"):
            engine.book(bad)


def test_a_withdrawn_orders_fill_after_a_plain_one_is_booked_after_it(intents):
    """Halted with an order withdrawn and a liquidation out: a read that fills part of
    the liquidation, then part of the withdrawn order. The withdrawn order's quantity goes
    back into the open quantity after the liquidation's fill, as one call each would do
    it: in another order, the open quantity's sums round differently."""
    def read(ids):
        assert len(ids) == 3  # the two orders, then the liquidation of the first's 10
        return [VenueReply("fill", ids[2], qty=2.2, price=100.0, fee=0.0),
                VenueReply("fill", ids[1], qty=0.7, price=100.0, fee=0.0)]

    rig = _both_ways(intents, [10.0, 30.0], read, halt=True, filled_first=1)
    assert len(rig.kinds("fill")) == 3 and rig.engine.halted
    # the open quantity's sums in the other order end a bit apart: the check has teeth
    assert ((-10.0 + 2.2) + 0.7) - 0.7 != ((-10.0 + 0.7) + 2.2) - 0.7


def test_a_retried_read_books_each_fills_rounding_release(intents, monkeypatch):
    """A read that fails to book as a whole is booked answer by answer: a fill that
    leaves a rounding remainder books its release with it. Here A's fills close a
    position (no liquidation of A follows the break), so the engine's open quantity on A
    must be the core's, to the bit."""
    rig = CoreRig(kernel_engine(intents))
    rig.core.market([Market("A", T, {"price": 100.0, "close": 100.0}, None),
                     Market("B", T, {"price": 50.0, "close": 50.0}, None)])
    rig.mono += S
    rig.core.intent("A", 0.3)
    rig.core.venue_replies([VenueReply("fill", rig.orders()[0]["client_order_id"], qty=0.3, price=100.0, fee=0.0)])
    for name, target in (("A", 0.0), ("B", 10.0)):
        rig.mono += S
        rig.core.intent(name, target)
    close_a, open_b = (m["client_order_id"] for m in rig.orders()[1:])
    _fail_bookings_with_a_fill_at(13.0, rig, monkeypatch)
    rig.core.venue_replies([VenueReply("fill", close_a, qty=q, price=100.0, fee=0.0)
                            for q in (0.1, 0.1, 0.09999999999999997)]
                           + [VenueReply("fill", open_b, qty=1.0, price=13.0, fee=0.0)])
    assert rig.engine.halted
    assert bits(rig.engine.open_quantity("A")) == bits(rig.core.open_quantity("A"))
