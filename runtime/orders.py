"""The order-management core of live trading: between the market's clock, the venue's
answers and the `Engine`, without sockets, asyncio or a clock of its own.

It keeps the open-order table and what the kernel must know of it: every order counts
as open quantity in the engine from the decision that makes it until the venue fills or
rejects it. It removes duplicate fills (a venue answers a resent order with every answer
so far), clamps a fill for more than is open (and logs an `overfill`), withdraws an
order's quantity from the engine while the kill switch cancels it and restores it on a
`resume` or when a fill beats the cancel, runs the kill-switch sequence (cancel, then
liquidate), keeps each instrument's event clock forward-only, and makes intents
reduce-only while the feed is down or silent. An order whose decision carries a limit
price goes out as an immediate-or-cancel (IOC) limit order; the venue's `cancel` of its
unfilled remainder releases that remainder as a reject does.

Several venues: `venues` maps each instrument to the name of the venue that trades it.
Each venue connection resends only its own open orders and reconciles only its own
instruments; the kill switch cancels and flattens on all of them. Without `venues`
there is one venue, named "".

Everything it sends goes through `send(message, event_sent_ns)` (or, with several
venues, `route(venue, message, event_sent_ns)`) and everything it logs through
`record(kind, ts=None, **fields)`, both given by its owner; time comes from two
injected clocks, `wall_ns` (the Unix time, ns) and `monotonic_ns` (for durations, ns),
read once per input. With `journal`, each input is logged before it is handled, so a
log replays to the same records (`runtime/journal.py`); `restart` and `venue_state`
let a new run go on from a replayed state once the venue's positions agree.
`runtime/live/runner.py` wires it to sockets, timers and the decision log;
`tests/test_orders.py` drives it directly.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import msgspec
import numpy as np
import orjson

from policyc.compiler.layout import FILL, REJECT

from .engine import Decision, Engine, EngineError, check_timestamp

MAX_NS = 2**63 - 1  # event times are int64 nanoseconds
MAX_CLOCK_SKEW_S = 5.0  # default of `run --max-clock-skew`: how far a market event may be ahead of the wall clock
MAX_FEED_SILENCE_S = 5.0  # default of `run --max-feed-silence`: no market event for this long and intents reduce only
DONE = 1e-12  # an order is done once what is left is within this share of its size (partial fills round)
REDUCE_ONLY = "stale_after:blocked"  # the reason an intent's answer gets when reduce-only clipped it
RECONCILE_PENDING = "reconcile_pending"  # the reason of an order held until the venue's state matches
RECONCILE_MISMATCH = "reconcile_mismatch"  # the halt reason when the venue's positions differ
MATCH_RTOL = 1e-9  # positions match within this share of the larger (fills add up in different orders)
_NO_FIELDS: dict = {}  # no extra fields for a record (never written to)


def _plain(value):
    """msgspec's hook for what it cannot encode: a NumPy scalar as its Python value."""
    if isinstance(value, np.generic):
        return value.item()
    raise NotImplementedError(f"{type(value).__name__} is not JSON")


#: JSON of a batch of market events as the log stores them (NaN and infinity as null, as orjson).
_encode_json = msgspec.json.Encoder(enc_hook=_plain).encode


#: A read journaled as its frames holds at most this many bytes a message; one padded
#: beyond it (JSON allows any whitespace) is journaled as its messages, so a peer cannot
#: grow the log past what it said.
VERBATIM_BYTES = 1024


def as_read(frames: list, messages: int) -> bytes | None:
    """The frames of one read, each a JSON text the protocol accepted, carrying `messages`
    messages in all, as one JSON array of them as they came: what the journal holds of a
    read whose every frame was well-formed (no copy of its messages to encode). None when
    a frame is not bytes, holds a line break (which a line of the log cannot) or the read
    is over VERBATIM_BYTES a message."""
    try:
        joined = b",".join(frames)
    except TypeError:  # a frame of text: no bytes to keep as they came
        return None
    if len(joined) > VERBATIM_BYTES * messages or b"\n" in joined or b"\r" in joined:
        return None
    return b"[" + joined + b"]"


@dataclass
class Counters:
    """What a live run has counted, as its status shows it. The core counts all of it
    but `reconnects`, which whoever keeps the connections counts."""

    events: int = 0          # market events applied
    orders: int = 0          # orders sent (the sequence number of the latest client_order_id)
    fills: int = 0           # fills applied
    rejects: int = 0         # rejects applied
    cancels: int = 0         # IOC remainders the venue cancelled (`cancel` answers applied)
    bad_messages: int = 0    # refused messages of every source
    reconnects: int = 0      # connection retries to the feed and the venue


@dataclass(slots=True)
class OpenOrder:
    """An order sent and not yet done."""

    instrument: str
    qty: float                  # signed quantity ordered
    left: float                 # signed quantity not filled yet
    message: dict               # the order message, sent again on a venue reconnection
    is_exit: bool
    fills_applied: int = 0      # fills of it applied so far
    fills_seen: int = 0         # fills of it answered on the current venue connection
    cancelling: bool = False    # the kill switch sent a cancel for it
    withdrawn: bool = False     # its `left` is out of the engine's open quantity while the cancel is pending
    venue: str = ""             # the venue it was sent to


def _said(reply) -> dict:
    """A venue answer as a `venue` record's `replies` hold it."""
    fields = {"type": reply.type, "client_order_id": reply.client_order_id}
    if reply.type == "fill":
        fields.update(qty=reply.qty, price=reply.price, fee=reply.fee, venue_ts=reply.ts)
    elif reply.type == "reject":
        fields["reason"] = reply.reason
    elif reply.type == "cancel":
        fields.update(qty=reply.qty, reason=reply.reason)
    return fields


def steps(decision: Decision) -> tuple[Decision, ...]:
    """A decision and the orders it carries (`Decision.then`): when a protective exit
    meets an opposite target, the exit is one order and the re-entry, fully checked,
    another, sent after it; a multi-leg rule's legs, one order per instrument, in order."""
    return (decision,) if decision.then is None else (decision, *steps(decision.then))


class OrderCore:
    """Live order management over one `Engine` (see the module docstring).

    `send(message, event_sent_ns)` gets each order and cancel message (a dict) in the
    order they must reach the venue; `event_sent_ns` is the `sent_ns` of the market event
    behind an order, or None. `record(kind, ts=None, **fields)` gets each decision log
    record; `ts` None means the wall clock. `max_clock_skew_s` and `max_feed_silence_s`
    are in seconds; `wall_ns()` and `monotonic_ns()` return nanoseconds. `reconcile`:
    ask the venue for its state on the first venue connection and hold every order
    until it matches this state (flat, for a new one), as a resumed state does: a venue
    that still holds an earlier run's positions is found before they add up past a limit.
    `venues`: instrument -> the name of its venue, for a run on several venues (each
    instrument of the policy named; then `route(venue, message, event_sent_ns)` gets
    every message instead of `send`); None: one venue, named "". `announce(kind, fields)`
    also gets the records an operator must see as they happen: a feed going silent
    (`feed_silent`) or live again (`feed_live`), and a venue's answer to a reconcile
    (`reconcile`); `record` is called first."""

    def __init__(self, engine: Engine, order_prefix: str, send: Callable[[dict, int | None], None],
                 record: Callable[..., object], *, max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
                 max_feed_silence_s: float = MAX_FEED_SILENCE_S, wall_ns: Callable[[], int] = time.time_ns,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns, journal: bool = False,
                 reconcile: bool = False, venues: dict[str, str] | None = None,
                 route: Callable[[str, dict, int | None], None] | None = None,
                 announce: Callable[[str, dict], None] | None = None):
        self.engine = engine
        self.instruments = tuple(engine.policy.instruments)
        self.route = route
        self.open: dict[str, OpenOrder] = {}    # client_order_id -> order not done yet
        self.set_venues(venues)
        self._multipliers(engine)
        self.policy_hash = engine.policy.policy_hash
        self.order_prefix = order_prefix
        self.send, self.record, self.announce = send, record, announce
        self.wall_ns, self.monotonic_ns = wall_ns, monotonic_ns
        self.journal = journal                  # write an input record before handling each input
        self._wall = self._mono = 0             # the clocks as read at the entry of the input being handled
        self.max_clock_skew_ns = round(max_clock_skew_s * 1e9)
        self.max_feed_silence_ns = round(max_feed_silence_s * 1e9)
        self.counters = Counters()
        self.unacked: set[str] = set()          # open orders the venue has not answered yet
        self.kill_switch_handled = False        # the current halt is recorded and its cancels sent
        self.last_ts: dict[str, int] = {}       # instrument -> its latest accepted market event's ts
        self.arrived_ns: dict[str, int] = {}    # instrument -> monotonic time that event arrived
        self.feed_up = False                    # the feed connection is open
        self.connected_ns = 0                   # monotonic time it opened
        self.heard_ns: int | None = None        # monotonic time of its latest accepted market event, None before one
        self.silent_since_ns: int | None = None  # while a silence is logged: monotonic time it began
        self.rejected: set[str] = set()         # the orders the venue rejected: a later fill of one is a break
        self.past_prefixes: dict[str, int] = {}  # order_prefix of an earlier run of this state -> orders it sent
        self.reconcile_due: set[str] = set(self.venue_names) if reconcile else set()  # venues to compare with
        self.asked: set[str] = set()            # venues asked for their state that have not answered yet
        self.held: set[str] = set()             # instruments whose orders were held while reconciling
        self.mismatched = False                 # the venue's books differed: no order leaves until they agree
        # a venue read's fills and rejects waiting to go through the kernel in one call, and
        # their fill records, each with the index of its last event (`_book`)
        self._due: list[tuple[int, str, int, tuple]] = []
        self._due_records: list[tuple[int, dict]] = []

    def set_venues(self, venues: dict[str, str] | None) -> None:
        """Which venue trades each instrument (instrument -> venue name; None: one venue,
        named ""), for a new core or one restored from a log; the open orders follow.
        Raises ValueError unless it names one venue for every instrument."""
        if venues is not None and set(venues) != set(self.instruments):
            raise ValueError(f"venues must name the venue of each instrument: {sorted(self.instruments)}")
        self.venue_of = dict(venues) if venues is not None else dict.fromkeys(self.instruments, "")
        self.venue_names = tuple(dict.fromkeys(self.venue_of.values()))
        for order in self.open.values():
            order.venue = self.venue_of[order.instrument]

    def _multipliers(self, engine: Engine) -> None:
        """Each instrument's contract multiplier (money per point of price per unit), which a
        fill's notional, the bound of its fee, is measured with."""
        table = engine.policy.checked.contract_table
        self.multiplier = {name: float(table[k][0]) for k, name in enumerate(self.instruments)}

    @property
    def reconciling(self) -> bool:
        """A venue was asked for its state and has not answered yet: orders are held."""
        return bool(self.asked)

    def _out(self, venue: str, message: dict, event_sent_ns: int | None) -> None:
        if self.route is None:
            self.send(message, event_sent_ns)
        else:
            self.route(venue, message, event_sent_ns)

    # ---- inputs ------------------------------------------------------------------
    # Every public input reads both clocks once, here, and uses those readings throughout,
    # so the same input with the same readings does the same thing: with `journal`, the
    # input and the readings are recorded first (write-ahead), and `runtime/journal.py`
    # replays a log by feeding them back.
    def _begin(self, kind: str, **fields) -> None:
        self._wall, self._mono = self.wall_ns(), self.monotonic_ns()
        if self.journal:
            self.record(kind, ts=self._wall, mono_ns=self._mono, **fields)

    def _notable(self, kind: str, ts: int, **fields) -> None:
        """A record `announce` also gets. The others go to `record` alone: a wrapper that
        looked at every record's kind cost an order record a third of its write."""
        self.record(kind, ts=ts, **fields)
        if self.announce is not None:
            self.announce(kind, fields)

    # ---- time --------------------------------------------------------------------
    def now_for(self, instrument: str) -> int:
        """Event time (ns) for a decision no market event carries (an intent, a fill): the
        instrument's latest market event time plus the time elapsed since it arrived;
        before its first event, `latest_time`. On the feed's clock, never the wall clock:
        in a replay of old data a wall-clock time would move the kernel's day (which
        only goes forward) decades ahead of the events still to come."""
        if instrument in self.last_ts:
            return self._since(instrument)
        return self.latest_time()

    def latest_time(self) -> int:
        """The latest `now_for` over the instruments that have had a market event (ns), or
        0 before any: an account-wide step (a halt, a resume) happens on the feed's clock."""
        return max(map(self._since, self.last_ts), default=0)

    def _since(self, instrument: str) -> int:
        return min(self.last_ts[instrument] + (self._mono - self.arrived_ns[instrument]), MAX_NS)

    # ---- the feed ----------------------------------------------------------------
    def market(self, batch: list, frames: list | None = None) -> None:
        """The market events of one read of the feed, in arrival order, through one kernel
        call; each is `(instrument, ts, fields, sent_ns)`, as a protocol `Market` is.
        `frames`: the read's frames (bytes), when `batch` is all of their messages and
        every one was well-formed; the journal then holds them as they came (`as_read`).

        An event older than its instrument's latest accepted one, or more than
        `max_clock_skew_s` ahead of the wall clock, is refused as a bad message with both
        times; accepted events move the instrument's clock on. The wall clock, because a
        recording replayed at any speed stays behind it, while an event time from the
        future can only be a fault: so a replay of old data runs and a leap to the year
        2262 does not."""
        if self.journal:
            read = None if frames is None else as_read(frames, len(batch))
            if read is not None:
                self._begin("market", frames=orjson.Fragment(read))
            else:  # the batch's JSON as is, [instrument, ts, fields, sent_ns] each: no copy to encode
                self._begin("market", events=orjson.Fragment(_encode_json(batch)))
        else:
            self._begin("market")
        now = self._mono
        horizon = self._wall + self.max_clock_skew_ns
        last_ts, arrived = self.last_ts, self.arrived_ns
        fresh, advanced = [], False
        for item in batch:
            instrument, ts = item[0], item[1]
            before = last_ts.get(instrument, -1)
            if before < ts <= horizon:  # the usual case: time goes on and stays in the present
                last_ts[instrument] = ts
                arrived[instrument] = now
                fresh.append(item)
                advanced = True
            elif ts == before:  # another event at the same time: acted on, but it does not make the
                fresh.append(item)  # feed live or restart the instrument's clock (a stuck relay repeats one)
            elif ts < before:
                self._bad("feed", f"{instrument}: event time {ts} is before the instrument's latest event "
                                  f"at {before} ({(before - ts) / 1e9:g} s earlier): refused",
                          event_ts=ts, last_ts=before)
            else:
                wall = horizon - self.max_clock_skew_ns
                self._bad("feed", f"{instrument}: event time {ts} is {(ts - wall) / 1e9:g} s ahead of the "
                                  f"wall clock, over --max-clock-skew {self.max_clock_skew_ns / 1e9:g} s: "
                                  "refused", event_ts=ts, wall_ts=wall)
        if not fresh:
            return
        if advanced:
            self.heard_ns = now
            if self.silent_since_ns is not None:
                self._notable("feed_live", fresh[0][1], silent_s=(now - self.silent_since_ns) / 1e9)
                self.silent_since_ns = None
        results = self.engine.market_many(fresh, actionable_only=True)
        decisions, refused = [], 0
        for item, result in zip(fresh, results):
            if result is None:
                continue
            if isinstance(result, EngineError):  # the protocol checks all the engine does: a defect
                self._bad("feed", str(result))
                refused += 1
                continue
            decisions.append((result, item[3]))
        self.counters.events += len(fresh) - refused
        self.act(decisions, on_market=True)

    def set_input(self, instrument: str, name: str, value: float) -> None:
        """A model input such as a score, read by the instrument's next market event.
        Raises EngineError for an unknown instrument or input."""
        self._begin("input", instrument=instrument, name=name, value=value)
        self.engine.set_input(instrument, name, value)

    def feed_connected(self) -> None:
        """The feed connection is open: live once a market event arrives on it (which
        may come before this call, with the connection's first read)."""
        self._begin("link", link="feed", up=True)
        self.feed_up, self.connected_ns = True, self._mono

    def feed_lost(self) -> None:
        """The feed connection is closed: what arrived on it no longer makes the feed live."""
        self._begin("link", link="feed", up=False)
        self.feed_up, self.heard_ns = False, None

    def _live(self, now: int) -> bool:
        return self.feed_up and self.heard_ns is not None and now - self.heard_ns < self.max_feed_silence_ns

    def feed_live(self) -> bool:
        """Whether intents may add exposure: the feed connection is open and a market
        event arrived on it within `max_feed_silence_s`. Logs `feed_silent` when an open
        connection has delivered nothing that long (since its latest event, or since it
        opened); `market` logs `feed_live` when events come again. The owner calls this
        on a timer too, so a silence is logged without an intent to ask: an input (a
        `timer` record) only when it starts one."""
        now = self.monotonic_ns()
        if not self._silence_starts(now):
            return self._live(now)  # nothing changes: not an input
        self._begin("timer")
        return self._feed_live()

    def _silence_starts(self, now: int) -> bool:
        if self._live(now) or not self.feed_up or self.silent_since_ns is not None:
            return False
        quiet_since = self.heard_ns if self.heard_ns is not None else self.connected_ns
        return now - quiet_since >= self.max_feed_silence_ns

    def _feed_live(self) -> bool:
        now = self._mono
        if self._live(now):
            return True
        if self._silence_starts(now):
            self.silent_since_ns = quiet_since = self.heard_ns if self.heard_ns is not None else self.connected_ns
            self._notable("feed_silent", self.latest_time(), silent_s=(now - quiet_since) / 1e9,
                          last_event_ts=max(self.last_ts.values(), default=None))
        return False

    @property
    def reduce_only(self) -> bool:
        """Whether intents are reduce-only now (no logging: for the status)."""
        return not self._live(self.monotonic_ns())

    # ---- intents -----------------------------------------------------------------
    def intent(self, instrument: str, target: float, ident: str | None = None,
               limit_price: float = math.nan) -> tuple[Decision, tuple[str, ...]]:
        """A model's target through the risk steps; returns the decision and the reasons
        the core added. `limit_price` (money per unit): the IOC limit price of the orders
        toward this target; NaN for market orders. While the feed is not live the instrument is reduce-only: a
        target that would increase |position + open orders|, or cross zero, becomes the
        current exposure (same side) or 0, with `stale_after:blocked`; while the state is
        being reconciled with the venue, its order is held (`reconcile_pending`).
        `ident` is the intent's id, for the log. Raises EngineError for an unknown
        instrument, a target that is not finite, or a limit price for a policy that sends
        market orders only (`Engine.intent`)."""
        if limit_price == limit_price:
            self._begin("intent", id=ident, instrument=instrument, target=target, limit_price=limit_price)
        else:
            self._begin("intent", id=ident, instrument=instrument, target=target)
        added = (RECONCILE_PENDING,) if self.reconciling else ()
        if not self._feed_live():
            held = self.engine.position(instrument) + self.engine.open_quantity(instrument)
            if abs(target) > abs(held) or target * held < 0:
                target = held if target * held > 0 else 0.0
                added = (REDUCE_ONLY, *added)
        decision = self.engine.intent(instrument, self.now_for(instrument), target, limit_price)
        self.act([(decision, None)])
        return decision, added

    # ---- decisions and orders ----------------------------------------------------
    def act(self, decisions: list[tuple[Decision, int | None]], on_market: bool = False) -> None:
        """Send the orders of decisions taken together (one event, or one read of the
        feed), each with the `sent_ns` of the event behind it, and log them; if one of
        them turned the kill switch on, `_trip` takes them all instead. `on_market`:
        each was decided on the market event at its `ts` (its order says so: `event_ts`)."""
        if not self.kill_switch_handled:
            for decision, _ in decisions:
                for step in steps(decision):
                    if step.trips_kill_switch:
                        self._trip([d for d, _ in decisions], step.ts, ",".join(step.reasons))
                        return
        for decision, event_sent_ns in decisions:
            for step in steps(decision):
                if step.order_qty and self.mismatched:
                    # not even a liquidation: it would trade this state's positions, which are not the venue's
                    self._withdraw(step.instrument, step.ts, step.order_qty)
                    self.record("risk", ts=step.ts, instrument=step.instrument,
                                reasons=(*step.reasons, RECONCILE_MISMATCH), desired_target=step.desired_target,
                                approved_target=step.approved_target, withdrawn_qty=step.order_qty)
                elif step.order_qty and self.reconciling:  # held: decided again once the venue agrees
                    self._withdraw(step.instrument, step.ts, step.order_qty)
                    self.held.add(step.instrument)
                    self.record("risk", ts=step.ts, instrument=step.instrument,
                                reasons=(*step.reasons, RECONCILE_PENDING), desired_target=step.desired_target,
                                approved_target=step.approved_target, withdrawn_qty=step.order_qty)
                elif step.order_qty:
                    self._send_order(step, event_sent_ns, on_market)
                elif step.reasons:
                    self._log_risk(step)

    def decide(self, instrument: str) -> None:
        """Run the risk steps again on the instrument's desired target and act on it."""
        self._begin("decide", instrument=instrument)
        self._decide(instrument)

    def _decide(self, instrument: str) -> None:
        decision = self.engine.decide(instrument, self.now_for(instrument))
        if decision is not None:
            self.act([(decision, None)])

    def _log_risk(self, d: Decision, **extra) -> None:
        self.record("risk", ts=d.ts, instrument=d.instrument, reasons=d.reasons, desired_target=d.desired_target,
                    approved_target=d.approved_target, **extra)

    def _send_order(self, d: Decision, event_sent_ns: int | None, on_market: bool) -> None:
        """Write ahead: the order joins the open-order table and its log record is written
        before its message is sent, so every order that reaches the venue has a record (a
        stop between the two leaves a record of an order never sent, never the reverse)."""
        self.counters.orders += 1
        oid = f"{self.order_prefix}-{self.counters.orders:06d}"
        msg = {"type": "order", "client_order_id": oid, "instrument": d.instrument,
               "side": "buy" if d.order_qty > 0 else "sell", "qty": abs(d.order_qty), "order_type": "market",
               "policy_hash": self.policy_hash, "ts": d.ts}
        limit = d.limit_price
        venue = self.venue_of[d.instrument]
        extra = _NO_FIELDS  # the record's fields of a limit order or a named venue
        if limit == limit:  # not NaN: an immediate-or-cancel limit order
            msg.update(order_type="limit", limit_price=limit, time_in_force="IOC")
            extra = {"limit_price": limit}
        if venue:
            extra = {**extra, "venue": venue}
        if event_sent_ns is not None:
            msg["event_sent_ns"] = event_sent_ns
        if on_market and self.last_ts.get(d.instrument) == d.ts:
            # a paper venue fills it at this event's price, not at one its feed had before; a leg
            # decided on another instrument's event has no event of its own at that time to wait for
            msg["event_ts"] = d.ts
        self.unacked.add(oid)
        self.open[oid] = OpenOrder(d.instrument, d.order_qty, d.order_qty, msg, d.is_exit, venue=venue)
        self.record("order", ts=d.ts, client_order_id=oid, instrument=d.instrument, qty=d.order_qty, price=d.price,
                    desired_target=d.desired_target, approved_target=d.approved_target, reasons=d.reasons,
                    exit=d.is_exit, **extra)
        if self.route is None:  # `_out`, inline: once per order
            self.send(msg, event_sent_ns)
        else:
            self.route(venue, msg, event_sent_ns)

    # The engine counts open quantity from the decision to the venue's fill or reject (its
    # `reject` event releases it). While the kill switch cancels an order, its quantity is
    # taken out of that count at once (`_withdraw`, a reject the venue has not sent yet),
    # and put back (`_restore`, the same event with the opposite sign) when a fill beats
    # the cancel or a `resume` counts the order again.
    def _withdraw(self, instrument: str, ts: int, qty: float, due: list | None = None) -> None:
        """Take `qty` (signed units) out of the engine's open quantity, a reject event: at
        once, or with a venue read's fills when given their list (`due`, `_book`)."""
        if due is None:
            self.engine.reject(instrument, ts, qty)
        else:
            due.append((REJECT, instrument, ts, (qty,)))

    def _restore(self, instrument: str, ts: int, qty: float) -> None:
        self.engine.reject(instrument, ts, -qty)

    def open_quantity(self, instrument: str) -> float:
        """The signed quantity of the instrument's open orders that counts against the
        limits: what the engine's `open_quantity` must equal."""
        return sum(o.left for o in self.open.values() if o.instrument == instrument and not o.withdrawn)

    # ---- the kill switch -----------------------------------------------------------
    def _trip(self, decisions: list[Decision], ts: int, reason: str) -> None:
        """The kernel turned the kill switch on while deciding `decisions` (one, or a
        whole read). None of their orders has left, and none will: the kernel netted
        them against open orders that are now cancelled. They are withdrawn, every open
        order that is not an exit is cancelled, and every instrument is decided again,
        which liquidates what is actually held."""
        self.record("halt", ts=ts, reason=reason, open_orders=list(self.open))
        for decision in decisions:
            for step in steps(decision):
                if step.order_qty:
                    self._withdraw(step.instrument, step.ts, step.order_qty)
                if step.reasons or step.order_qty:
                    self._log_risk(step, withdrawn_qty=step.order_qty)
        self._cancel_open(ts)
        self.kill_switch_handled = True
        for name in self.instruments:
            self._decide(name)

    def _cancel_open(self, ts: int) -> None:
        """Cancel every open order that is not an exit and withdraw its quantity at once,
        so the liquidation covers the filled position only. Exits stay: they reduce
        exposure, and the liquidation is netted against them."""
        for oid, order in self.open.items():
            if order.is_exit or order.withdrawn:
                continue
            if not order.cancelling:
                self._out(order.venue, {"type": "cancel", "client_order_id": oid}, None)
            order.cancelling = order.withdrawn = True
            self._withdraw(order.instrument, ts, order.left)

    def halt(self, reason: str) -> None:
        """Kill switch from outside (an operator, a flatten on exit): record it, cancel
        what is pending, liquidate; nothing new until `resume`."""
        self._begin("control", action="halt", reason=reason)
        self._halt(reason)

    def _halt(self, reason: str) -> None:
        ts = self.latest_time()
        if not self.kill_switch_handled:
            self.record("halt", ts=self._wall, reason=reason, open_orders=list(self.open))
        self._cancel_open(ts)
        self.kill_switch_handled = True
        self.act([(decision, None) for decision in self.engine.halt(ts)])

    def resume(self) -> None:
        """Trading again: orders still being cancelled count against the limits again
        until the venue answers them, as every open order does. After a
        `reconcile_mismatch`, the venue's state is asked for again, and orders are held
        until it matches (a mismatch halts again)."""
        self._begin("control", action="resume", reason="")
        ts = self.latest_time()
        for order in self.open.values():
            if order.withdrawn:
                order.withdrawn = False
                self._restore(order.instrument, ts, order.left)
        self.engine.resume(ts)
        self.kill_switch_handled = False
        self.record("resume", ts=self._wall)
        if self.mismatched:
            self.mismatched = False
            self.reconcile_due, self.asked = set(self.venue_names), set(self.venue_names)
            for venue in self.venue_names:  # lost with a venue that is down: its reconnect asks
                self._out(venue, {"type": "state_request"}, None)

    # ---- the venue -----------------------------------------------------------------
    def venue_connected(self, venue: str = "") -> None:
        """A connection to `venue` is open: send each of its open orders again (the venue
        answers one it has seen with every answer so far, which recovers a fill lost with
        the old connection), or its cancel, for an order the kill switch is cancelling. A
        resumed state then asks for the venue's (`venue_state` takes the answer)."""
        self._begin("link", link="venue", up=True, **({"venue": venue} if venue else {}))
        for oid, order in list(self.open.items()):
            if order.venue == venue:
                order.fills_seen = 0
                self._out(venue, {"type": "cancel", "client_order_id": oid} if order.cancelling else order.message,
                          None)
        if venue in self.reconcile_due:
            self.asked.add(venue)
            self._out(venue, {"type": "state_request"}, None)

    def venue_lost(self, venue: str = "") -> None:
        """The connection to `venue` is closed: a state asked for on it will not come."""
        self._begin("link", link="venue", up=False, **({"venue": venue} if venue else {}))

    def venue_reply(self, reply, venue: str = "") -> None:
        """One answer (a protocol `VenueReply`): `venue_replies` of it alone."""
        self.venue_replies([reply], venue)

    def venue_replies(self, replies: list, venue: str = "", frames: list | None = None) -> None:
        """The `ack`, `fill`, `reject` and `cancel` answers (protocol `VenueReply`s) of one
        read of `venue`'s connection, in order, journaled as one record: as their `frames`
        came, when given (bytes, one a reply: `as_read`), else as the replies say. Kernel
        events take the instrument's event time (`now_for`), so the kernel stays on the
        feed's clock; the records take the venue's `ts` when it sent one. An answer the core
        fails to handle (a defect) is logged as a bad message, and the answers after it are
        still applied."""
        read = None if frames is None else as_read(frames, len(replies))
        named = {"venue": venue} if venue else {}
        if read is not None:
            self._begin("venue", frames=orjson.Fragment(read), **named)
        else:
            self._begin("venue", replies=[_said(reply) for reply in replies], **named)
        for reply in replies:
            try:
                self._venue_reply(reply)
            except Exception as exc:  # anything rather than the loss of the answers after it
                self._book()
                self._bad("venue", f"internal error handling a `{reply.type}` for "
                                   f"{reply.client_order_id[:80]!r}: {exc!r}")
        self._book()

    def _book(self) -> None:
        """Put the fills and rejects waiting since the last call through the kernel in one
        call (`Engine.book`), then write their fill records, each with the position and
        equity after its own events: what handling each at once would have written.
        `_venue_reply` calls it before anything that reads the engine or writes another
        record, so records and kernel events keep their order. When the call fails (a
        defect), each answer's events are booked on their own, and each that fails again
        trips the kill switch (`_venue_break`) in place of its record."""
        if not self._due:
            return
        due, records = self._due, self._due_records
        self._due, self._due_records = [], []
        try:
            after = self.engine.book(due)
        except Exception:  # noqa: BLE001 - a defect: each answer's events on their own, to find which
            after = None
        first = 0  # the first event of the answer of the record at hand
        for last, fields in records:
            if after is None:
                try:
                    fields["position"], fields["equity"] = self.engine.book(due[first:last + 1])[-1]
                except Exception as exc:  # noqa: BLE001
                    # counted here and not in the kernel: this state and the venue's may
                    # differ, so the kill switch trips, as for a venue's contradiction
                    self._venue_break(f"internal error booking the fill of {fields['client_order_id'][:80]!r}: "
                                      f"{exc!r}")
                    first = last + 1
                    continue
            else:
                fields["position"], fields["equity"] = after[last]
            self.record("fill", **fields)
            first = last + 1

    def _venue_reply(self, reply) -> None:
        oid = reply.client_order_id
        self.unacked.discard(oid)
        if reply.type == "ack":
            return
        order = self.open.get(oid)
        if order is None or reply.type != "fill":  # what follows reads the engine or records: after the fills before
            self._book()
        if order is None:
            if reply.type == "fill" and not self._sent_by_us(oid):
                self._bad("venue", f"fill for an order this runtime did not send: {oid}")
            elif reply.type == "fill" and oid in self.rejected:
                self._venue_break(f"fill of {reply.qty:g} for {oid} after the venue rejected it")
            return  # an answer about an order already done
        instrument, left = order.instrument, order.left
        ts = self.now_for(instrument)
        said = reply.ts if reply.ts is not None else ts
        if reply.type == "reject" or reply.type == "cancel":  # a cancel ends an IOC's remainder as a reject does
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
            return  # a fill answered again after a resend: applied already
        notional = reply.qty * (reply.price * self.multiplier[instrument])  # as a simulated fill's fee is computed
        if reply.fee > notional:  # a fee above the fill's notional would move equity, and every limit that reads it
            order.fills_seen -= 1  # not applied: a resend's answers must count it again
            # the venue says it executed a fill this runtime cannot book, so their positions differ
            self._book()
            self._venue_break(f"fill of {oid}: `fee` is {reply.fee!r}, above the fill's notional {notional:g} "
                              f"(qty x price x multiplier {self.multiplier[instrument]:g}): refused")
            return
        sign = 1.0 if left > 0 else -1.0
        qty = min(reply.qty, abs(left)) * sign
        overfilled = reply.qty > abs(left)
        # A plain fill waits for the read's others (`_book`); one that overfills, or fills an
        # order the kill switch withdrew, is booked with those before it, and at once
        if overfilled or order.withdrawn:
            self._book()
        if overfilled:  # the venue says it filled more than was open: apply what was open
            self.record("overfill", ts=said, client_order_id=oid, instrument=instrument, venue_qty=reply.qty * sign,
                        qty=qty)
        if order.withdrawn:  # it filled before its cancel: a real position again
            self._restore(instrument, ts, qty)
        check_timestamp(ts)  # raised here, before anything counts the fill, as by `engine.fill`
        due = self._due
        due.append((FILL, instrument, ts, (qty, reply.price, reply.fee)))
        self.counters.fills += 1
        order.fills_applied += 1
        order.left = left - qty
        if abs(order.left) <= DONE * abs(order.qty):
            if order.left and not order.withdrawn:  # the rounding of partial fills: release what is left
                self._withdraw(instrument, ts, order.left, due)
            del self.open[oid]
        self._due_records.append((len(due) - 1, {"ts": said, "client_order_id": oid, "instrument": instrument,
                                                 "qty": qty, "price": reply.price, "fee": reply.fee}))
        if order.withdrawn or overfilled:
            self._book()
            if order.withdrawn and self.engine.halted:  # flatten what that fill left
                self._decide(instrument)
            if overfilled:
                self._venue_break(f"the venue filled {reply.qty:g} of {oid}, {abs(left):g} of which was open")

    def venue_state(self, positions: dict, open_orders: list, venue: str = "") -> None:
        """`venue`'s answer to `state_request`: its signed position per instrument
        (units; an instrument it does not name is flat) and the ids of the orders it
        holds open, compared for the instruments it trades. Matched against this
        state's positions within `MATCH_RTOL`, and the
        venue may hold no open order this state does not know (one would fill into a
        position nobody limits): a match lets the orders held meanwhile be decided again;
        a mismatch trips the kill switch (`reconcile_mismatch`) and no order leaves, not
        even a liquidation (it would trade this state's positions, which are not the
        venue's), until an operator resumes and the venue's state, asked for again, matches.
        Either way a `reconcile` record shows both sides (with `unknown_orders` when the
        venue holds any). An answer nobody asked for is ignored."""
        self._begin("venue", type="state", positions=positions, open_orders=open_orders,
                    **({"venue": venue} if venue else {}))
        if venue not in self.asked:
            return
        self.asked.discard(venue)
        self.reconcile_due.discard(venue)
        mine = [name for name in self.instruments if self.venue_of[name] == venue]
        everything = self.engine.positions()
        ours = {name: everything[name] for name in mine}
        theirs = {name: float(positions.get(name, 0.0)) for name in mine}
        differ = [name for name in mine
                  if abs(ours[name] - theirs[name]) > MATCH_RTOL * max(abs(ours[name]), abs(theirs[name]))]
        open_here = [oid for oid, order in self.open.items() if order.venue == venue]
        unknown = sorted(set(open_orders) - set(open_here))
        self._notable("reconcile", self._wall, matched=not differ and not unknown, instruments=differ,
                      runtime={"positions": ours, "open_orders": open_here},
                      venue={**({"name": venue} if venue else {}), "positions": positions, "open_orders": open_orders},
                      **({"unknown_orders": unknown} if unknown else {}))
        if differ or unknown:
            self.mismatched = True
            self.held = set()
            if not self.engine.halted:
                self._halt(RECONCILE_MISMATCH)
            return
        if self.asked or self.mismatched:  # another venue has not answered, or differed: still held
            return
        held, self.held = sorted(self.held), set()
        for name in held:
            self._decide(name)

    def use_engine(self, engine: Engine) -> None:
        """Go on over another engine (another policy, `journal.carry_over`), with the
        open orders as they are."""
        self.engine, self.policy_hash = engine, engine.policy.policy_hash
        self._multipliers(engine)

    def restart(self, order_prefix: str, mono_ns: int, *, max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
                max_feed_silence_s: float = MAX_FEED_SILENCE_S) -> None:
        """Go on from this state in a new run (a new process, with its own limits in
        seconds): orders are numbered again under `order_prefix`, and the new process's
        monotonic clock reads `mono_ns` (ns) now.
        What the core keeps on the monotonic clock is moved onto the new one so that the
        time between the two processes does not count (each instrument's event time
        resumes where the last input of the old run left it); no connection is open; the
        venue's state is asked for on the next venue connection."""
        self.max_clock_skew_ns = round(max_clock_skew_s * 1e9)
        self.max_feed_silence_ns = round(max_feed_silence_s * 1e9)
        shift = mono_ns - self._mono
        self.arrived_ns = {name: t + shift for name, t in self.arrived_ns.items()}
        self.connected_ns += shift
        if self.silent_since_ns is not None:
            self.silent_since_ns += shift
        self.feed_up, self.heard_ns = False, None
        self._mono = mono_ns
        self.past_prefixes[self.order_prefix] = self.counters.orders
        self.order_prefix = order_prefix
        for name, value in vars(Counters()).items():  # counted per run, in place: the owner holds the object
            setattr(self.counters, name, value)
        self.unacked = set(self.open)
        self.asked, self.reconcile_due = set(), set(self.venue_names)

    def _venue_break(self, what: str) -> None:
        """The venue's answers contradict what it was sent, so its position and this
        runtime's may differ: the kill switch trips (`venue_break`), until an operator
        has compared the two and resumes."""
        self._bad("venue", what)
        if not self.engine.halted:
            self._halt(f"venue_break: {what}")

    def _sent_by_us(self, oid: str) -> bool:
        """Order ids are a run's prefix and a sequence number: no set of past ids to keep."""
        head, _, number = oid.rpartition("-")
        sent = self.counters.orders if head == self.order_prefix else self.past_prefixes.get(head, 0)
        return number.isascii() and number.isdigit() and 0 < int(number) <= sent  # `²` is a digit to isdigit

    # ---- refusals ------------------------------------------------------------------
    def bad_message(self, source: str, reason: str) -> None:
        """A message refused before it reached the core (it did not parse): counted and
        logged on the wall clock, never acted on. Not an input: a replay takes the record
        as it is."""
        self.counters.bad_messages += 1
        self.record("bad_message", source=source, reason=reason[:500])

    def _bad(self, source: str, reason: str, **fields) -> None:
        """A message the core refused while handling an input: counted and logged."""
        self.counters.bad_messages += 1
        self.record("bad_message", ts=self._wall, source=source, reason=reason[:500], **fields)
