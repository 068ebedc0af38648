"""`policyc paper-venue`: a venue to trade against without an exchange account.

It subscribes to a market-data feed, acknowledges market orders and immediate-or-cancel
(IOC) limit orders and fills them by one of the backtest's fill models
(`runtime/fills.py`, `fill_mode`): by default `same`, at the price of the market event
each was decided on (or the feed's last price); `next`, `next-open` and `latency` at a
later market event of the feed, as `backtest --fill` does. An IOC limit order fills up
to the size the quote shows (`fills.FillBook`, `partial`) and its remainder is cancelled
(`{"type": "cancel", ..., "reason": "ioc_unfilled"}`). An optional wall-clock latency
comes first, during which a `cancel` still stops an order. It charges fees in basis
points of the notional (quantity x price x the instrument's contract multiplier,
`multipliers`), and answers a `client_order_id` it has seen before, in an order or a
cancel, with exactly what it answered so far, executing nothing twice. It keeps each
instrument's position (the sum of its fills, over every connection) and answers a
`state_request` with the positions and the orders it holds open. It records
tick-to-order latency from `event_sent_ns`.

`PaperVenue` is the venue without I/O (feed frames and order frames in, replies out);
`serve` puts it on sockets and runs its timers.
"""
from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from policyc.compiler import layout as L

from ..fills import Fill, FillBook, FillModel
from . import transport
from .protocol import ANY_INSTRUMENT, MAX_FRAME_BYTES, FeedDecoder, Input, Market, ProtocolError, decode, encode

#: Seconds an order decided on an event the venue's feed has not brought yet waits for
#: it under `same`; then it fills at the last price there is (two feeds should never be
#: this far apart). Under the other fill models an order waits for a later event anyway.
FEED_WAIT_S = 1.0


@dataclass
class PaperVenue:
    """The venue's state and answers, sans-I/O. `fees_bps`: fee per fill in basis points
    of its notional; `latency_ms`: wall-clock wait between an order's `ack` and its
    reaching the book; `fill_mode`: a layout fill mode of the backtest (FILL_SAME,
    FILL_NEXT, FILL_NEXT_OPEN, FILL_LATENCY); `fill_latency_ns`: FILL_LATENCY's delay in
    event time (int ns); `multipliers`: instrument (as orders name it) -> its contract
    multiplier (money per point of price per unit; 1 for any other), which the fee's
    notional is measured with. Raises ValueError for a mode or latency `FillBook`
    refuses, or a multiplier that is not a positive finite number."""

    fees_bps: float = 0.0
    latency_ms: float = 0.0
    feed_format: str = "native"
    fill_mode: int = L.FILL_SAME
    fill_latency_ns: int = 0
    multipliers: dict = field(default_factory=dict)
    replies: dict = field(default_factory=dict)       # client_order_id -> replies sent so far
    pending: dict = field(default_factory=dict)       # client_order_id -> order waiting out the latency
    fills: list = field(default_factory=list)
    latencies_ns: deque = field(default_factory=lambda: deque(maxlen=100_000))  # the latest orders
    rejected: int = 0
    bad_feed: int = 0                                 # feed frames it could not read (the wrong --feed-format?)
    bad_feed_reason: str | None = None                # why the first of them could not be read
    next_id: int = 0
    behind: dict = field(default_factory=dict)        # client_order_id -> order waiting for the feed, on the book
    positions: dict = field(default_factory=dict)     # instrument (as orders name it) -> signed sum of its fills
    received: list = field(default_factory=list)      # every order message taken in, the first time, in order
    book: FillBook = field(init=False, repr=False)    # the feed's prices and the orders waiting for them
    _decoder: FeedDecoder = field(init=False, repr=False)  # of the feed's reads: any instrument it carries

    def __post_init__(self):
        contracts = {}
        for name, multiplier in self.multipliers.items():
            if not (isinstance(multiplier, (int, float)) and 0 < multiplier < math.inf):
                raise ValueError(f"the multiplier of {name} must be a positive number, not {multiplier!r}")
            # the book names an instrument as the feed does: `binance:BTCUSDT` is priced as `BTCUSDT`
            for as_named in {name, name.partition(":")[2] or name}:
                contracts[as_named] = (float(multiplier), math.nan)  # no tick rounding
        # no slippage: a fill at the feed's price (an IOC limit order's capped at its limit)
        self._decoder = FeedDecoder(ANY_INSTRUMENT, self.feed_format)
        self.book = FillBook(FillModel(fees_bps=self.fees_bps, contracts=contracts), self.fill_mode,
                             self.fill_latency_ns, partial=True)

    @property
    def feed_wait_s(self) -> float | None:
        """How long an order executed but still waiting in the book may wait before it
        fills at the last price (`execute(wait=False)`): FEED_WAIT_S under `same`, whose
        orders wait only for a lagging feed; None (until its event) under the others."""
        return FEED_WAIT_S if self.fill_mode == L.FILL_SAME else None

    @property
    def last_price(self) -> dict:
        """Instrument (as the feed names it) -> its last price."""
        return self.book.last_price

    @property
    def last_ts(self) -> dict:
        """Instrument (as the feed names it) -> the time (ns) of its last feed event."""
        return self.book.last_ts

    def on_feed(self, frames: list) -> list[dict]:
        """Show every market event to the book, in order (a bar with its open); a frame
        it cannot read is skipped and counted in `bad_feed` (the runtime, not the venue,
        answers for bad market data). Returns the fill replies of the orders waiting for
        these events."""
        fills = []
        market = self.book.market
        for item in self._decoder.messages(frames):
            if item.__class__ is Market:
                fields = item.fields
                for fill in market(item.instrument, item.ts, fields["price"], fields.get("open"), fields):
                    fills += self._filled(self.behind.pop(fill.client_order_id), fill)
            elif item.__class__ is not Input:  # a frame's ProtocolError, in place of its messages
                self.bad_feed += 1
                if self.bad_feed_reason is None:
                    self.bad_feed_reason = str(item)
        return fills

    def on_order(self, frame) -> list[dict]:
        """Replies due now to one order or cancel message."""
        try:
            msg = decode(frame)
            if isinstance(msg, dict) and msg.get("type") == "state_request":
                return [self.state()]
            if not isinstance(msg, dict) or msg.get("type") not in ("order", "cancel"):
                raise ProtocolError("expected an order, a cancel or a state_request")
            oid = msg.get("client_order_id")
            if not isinstance(oid, str) or not oid:
                raise ProtocolError("`client_order_id` must be a non-empty string")
        except ProtocolError as exc:
            self.rejected += 1
            return [{"type": "reject", "client_order_id": None, "reason": str(exc)}]
        if msg["type"] == "cancel":
            return self._cancel(oid)
        if oid in self.replies:
            return list(self.replies[oid])
        self.received.append(msg)
        sent_ns = msg.get("event_sent_ns")
        if isinstance(sent_ns, int):
            self.latencies_ns.append(time.time_ns() - sent_ns)
        reason = self._refusal(msg)
        if reason:
            self.replies[oid] = [{"type": "reject", "client_order_id": oid, "reason": reason}]
            return list(self.replies[oid])
        self.next_id += 1
        self.replies[oid] = [{"type": "ack", "client_order_id": oid, "venue_order_id": f"P{self.next_id}"}]
        self.pending[oid] = msg
        if not self.latency_ms:
            return [*self.replies[oid], *self.execute(oid)]
        return list(self.replies[oid])

    def state(self) -> dict:
        """The answer to a `state_request`: every instrument's position (units) and the
        ids of the orders not done yet (waiting out the latency or for the feed)."""
        return {"type": "state", "positions": dict(self.positions), "open_orders": [*self.pending, *self.behind]}

    def _refusal(self, msg: dict) -> str:
        side, qty = msg.get("side"), msg.get("qty")
        if side not in ("buy", "sell") or isinstance(qty, bool) or not isinstance(qty, (int, float)) or not qty > 0:
            return "bad side or qty"
        kind = msg.get("order_type", "market")
        if kind == "limit":
            limit = msg.get("limit_price")
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit < math.inf:
                return "`limit_price` must be a positive number"
            if msg.get("time_in_force") != "IOC":
                return "only IOC limit orders"
        elif kind != "market":
            return "only market orders and IOC limit orders"
        if self.price_of(msg.get("instrument")) is None and _event_ts(msg) is None:
            return f"no price for {msg.get('instrument')}"
        return ""

    def _priced_as(self, instrument) -> str | None:
        """The feed's name for an order's instrument: `binance:BTCUSDT` is the feed's
        `BTCUSDT`, as the runtime names venue symbols."""
        if not isinstance(instrument, str):
            return None
        return instrument if instrument in self.last_price else (instrument.partition(":")[2] or instrument)

    def price_of(self, instrument) -> float | None:
        """The last price of an order's instrument, None before the feed brought one."""
        return self.last_price.get(self._priced_as(instrument))

    def execute(self, oid: str, msg: dict | None = None, wait: bool = True) -> list[dict]:
        """Hand an order done waiting out its latency to the book (nothing if it was
        cancelled): under `same` it fills at the price of the event it was decided on, at
        once when the venue's feed has brought that event, else when `on_feed` brings it;
        under the other fill models when `on_feed` brings its event. `wait=False` ends
        the wait (`feed_wait_s`): the last price, or a reject without one."""
        if not wait:
            fill = self.book.fill_now(oid)
            if fill is not None:
                return self._filled(msg, fill)
            reply = {"type": "reject", "client_order_id": oid, "reason": f"no price for {msg['instrument']}"}
            self.replies[oid].append(reply)
            return [reply]
        msg = msg or self.pending.pop(oid, None)
        if msg is None:
            return []
        qty = msg["qty"] if msg["side"] == "buy" else -msg["qty"]
        limit = msg.get("limit_price") if msg.get("order_type") == "limit" else None
        fill = self.book.order(oid, self._priced_as(msg["instrument"]), qty, _event_ts(msg), _ts(msg, "ts"), limit)
        if fill is None:
            self.behind[oid] = msg
            return []
        return self._filled(msg, fill)

    def _filled(self, msg: dict, fill: Fill) -> list[dict]:
        """The replies of an order (`msg`) the book executed, remembered and returned: its
        `fill` (of the whole order, for a market order), and for an IOC limit order
        whatever it left unfilled, a `cancel` of that remainder."""
        oid = fill.client_order_id
        out = []
        if fill.qty:
            qty = msg["qty"] if not fill.unfilled else abs(fill.qty)
            reply = {"type": "fill", "client_order_id": oid, "qty": qty, "price": fill.price, "fee": fill.fee,
                     "ts": time.time_ns()}
            out.append(reply)
            self.fills.append({**reply, "instrument": msg["instrument"], "side": msg["side"]})
            signed = qty if msg["side"] == "buy" else -qty
            self.positions[msg["instrument"]] = self.positions.get(msg["instrument"], 0.0) + signed
        if fill.unfilled:
            out.append({"type": "cancel", "client_order_id": oid, "qty": abs(fill.unfilled), "reason": "ioc_unfilled"})
        self.replies[oid] += out
        return out

    def _cancel(self, oid: str) -> list[dict]:
        """A pending order is cancelled and answered with a `reject`. For an order that is
        already done the answer is what it was answered so far (so a fill lost with a
        connection is learnt from a cancel too), and an unknown order is rejected: after
        a cancel, the runtime knows how every order ended."""
        if self.pending.pop(oid, None) is not None or self.book.cancel(oid):
            self.behind.pop(oid, None)
            reply = {"type": "reject", "client_order_id": oid, "reason": "cancelled"}
            self.replies[oid].append(reply)
            return [reply]
        if oid in self.replies:
            return list(self.replies[oid])
        return [{"type": "reject", "client_order_id": oid, "reason": "unknown order: nothing to cancel"}]

    def percentiles(self) -> dict:
        if not self.latencies_ns:
            return {}
        xs = sorted(self.latencies_ns)
        pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))] / 1e3
        return {"p50_us": pick(0.5), "p99_us": pick(0.99), "n": len(xs)}


def _ts(msg: dict, key: str) -> int | None:
    """A time field of an order (ns), None when it has none or it is not an integer."""
    ts = msg.get(key)
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def _event_ts(msg: dict) -> int | None:
    """The `event_ts` of an order: the market event it was decided on (ns), or None."""
    return _ts(msg, "event_ts")


async def serve(venue: PaperVenue, host: str, port: int, feed_url: str, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, ca_file: str | None = None,
                tls: ssl.SSLContext | None = None, warn: Callable[[str], None] | None = None) -> None:
    """`ca_file`: a wss:// feed is verified against these certificate authorities only.
    `tls`: a server context (`security.server_context`) puts the venue itself on wss.
    `warn(message)`: told when the feed's frames cannot be read, at the first read that
    brings one and at each read that takes their count past a power of ten (10, 100,
    ...): a venue that reads no price fills nothing."""
    from websockets.asyncio.server import broadcast as ws_broadcast
    from websockets.asyncio.server import serve as ws_serve

    async def follow_feed():
        delay = 0.05
        while True:
            try:
                stream = await transport.connect(feed_url, on_feed, lambda why: None, max_size=MAX_FRAME_BYTES,
                                                 ca_file=ca_file)
                delay = 0.05
                await asyncio.shield(stream.lost)
            except Exception:  # no feed yet, or it dropped: try again
                pass
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    loop = asyncio.get_running_loop()
    route: dict = {}  # pending client_order_id -> the connection that sent it last (a resend moves it)

    def send(websocket, replies) -> None:
        for reply in replies:
            ws_broadcast([websocket], encode(reply).decode())

    def on_feed(frames) -> None:
        by_order: dict = {}  # an IOC's fill and the cancel of its remainder go out together
        bad = venue.bad_feed
        replies = venue.on_feed(frames)
        if warn is not None and venue.bad_feed != bad:
            if bad == 0 or len(str(bad)) < len(str(venue.bad_feed)):  # the first, or past a power of 10
                warn(f"paper venue: {venue.bad_feed:,} feed message{'s' if venue.bad_feed > 1 else ''} not readable "
                     f"as --feed-format {venue.feed_format} (the first: {venue.bad_feed_reason}); orders fill only "
                     "at prices it can read")
        for reply in replies:
            by_order.setdefault(reply["client_order_id"], []).append(reply)
        for oid, replies in by_order.items():
            answer(oid, replies)

    def answer(oid: str, replies: list) -> None:
        """An order's fill goes to the connection that sent it last; if that one dropped,
        a resend of the order gets the fill in its answer."""
        if replies:
            websocket = route.pop(oid, None)
            if websocket is not None:
                send(websocket, replies)

    def end_wait(oid: str) -> None:
        msg = venue.behind.pop(oid, None)
        if msg is not None:
            answer(oid, venue.execute(oid, msg, wait=False))

    def wait_for_feed(oid: str) -> None:
        if venue.feed_wait_s is not None:
            loop.call_later(venue.feed_wait_s, end_wait, oid)

    def fill_due(oid: str) -> None:
        """The order executes when due even if its connection dropped meanwhile."""
        answer(oid, venue.execute(oid))
        if oid in venue.behind:
            wait_for_feed(oid)

    async def handler(websocket):
        try:
            async for frame in websocket:
                replies = venue.on_order(frame)
                send(websocket, replies)
                oid = replies[0].get("client_order_id") if replies else None
                if oid in venue.pending or oid in venue.behind:
                    if oid not in route:  # first sight
                        if oid in venue.pending:  # the fill is due after the latency
                            loop.call_later(venue.latency_ms / 1000, fill_due, oid)
                        else:  # executed at once, but waiting for the feed
                            wait_for_feed(oid)
                    route[oid] = websocket
        except Exception:
            return

    feed_task = asyncio.create_task(follow_feed())
    try:
        async with ws_serve(handler, host, port, max_size=MAX_FRAME_BYTES, compression=None, ssl=tls) as server:
            if ready is not None:
                ready.set()
            await (stop.wait() if stop is not None else asyncio.Future())
            server.close()
    finally:
        feed_task.cancel()
