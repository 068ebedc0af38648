"""`policyc paper-venue`: a venue to trade against without an exchange account.

It subscribes to a market-data feed, acknowledges market orders and fills them at the
last price of that feed (after an optional latency), charges fees in basis points, and
answers a `client_order_id` it has seen before with exactly what it answered the first
time, executing nothing twice. It records tick-to-order latency from `event_sent_ns`.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from .protocol import ProtocolError, decode, parse_feed


@dataclass
class PaperVenue:
    fees_bps: float = 0.0
    latency_ms: float = 0.0
    last_price: dict = field(default_factory=dict)
    replies: dict = field(default_factory=dict)       # client_order_id -> replies sent
    fills: list = field(default_factory=list)
    latencies_ns: list = field(default_factory=list)
    rejected: int = 0
    next_id: int = 0

    def on_feed(self, frame: str) -> None:
        try:
            items = parse_feed(frame, _Anything())
        except ProtocolError:
            return
        for item in items:
            price = getattr(item, "fields", {}).get("price")
            if price is not None:
                self.last_price[item.instrument] = price

    def on_order(self, frame: str) -> list[dict]:
        """Replies to one order message (already sent ones again for a duplicate)."""
        try:
            msg = decode(frame)
            if not isinstance(msg, dict) or msg.get("type") not in ("order", "cancel"):
                raise ProtocolError("expected an order or a cancel")
            oid = msg.get("client_order_id")
            if not isinstance(oid, str) or not oid:
                raise ProtocolError("`client_order_id` must be a non-empty string")
        except ProtocolError as exc:
            self.rejected += 1
            return [{"type": "reject", "client_order_id": None, "reason": str(exc)}]
        if oid in self.replies:
            return self.replies[oid]
        if msg["type"] == "cancel":
            return [{"type": "reject", "client_order_id": oid, "reason": "nothing to cancel: orders fill at once"}]
        sent_ns = msg.get("event_sent_ns")
        if isinstance(sent_ns, int):
            self.latencies_ns.append(time.time_ns() - sent_ns)
        replies = self._execute(oid, msg)
        self.replies[oid] = replies
        return replies

    def _execute(self, oid: str, msg: dict) -> list[dict]:
        instrument, side, qty = msg.get("instrument"), msg.get("side"), msg.get("qty")
        if side not in ("buy", "sell") or isinstance(qty, bool) or not isinstance(qty, (int, float)) or not qty > 0:
            return [{"type": "reject", "client_order_id": oid, "reason": "bad side or qty"}]
        if msg.get("order_type", "market") != "market":
            return [{"type": "reject", "client_order_id": oid, "reason": "only market orders"}]
        price = self.last_price.get(instrument)
        if price is None:
            return [{"type": "reject", "client_order_id": oid, "reason": f"no price for {instrument}"}]
        self.next_id += 1
        fee = abs(qty) * price * self.fees_bps / 1e4
        fill = {"type": "fill", "client_order_id": oid, "qty": qty, "price": price, "fee": fee, "ts": time.time_ns()}
        self.fills.append({**fill, "instrument": instrument, "side": side})
        return [{"type": "ack", "client_order_id": oid, "venue_order_id": f"P{self.next_id}"}, fill]

    def percentiles(self) -> dict:
        if not self.latencies_ns:
            return {}
        xs = sorted(self.latencies_ns)
        pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))] / 1e3
        return {"p50_us": pick(0.5), "p99_us": pick(0.99), "n": len(xs)}


class _Anything:
    """Accept every instrument name: the venue trades whatever its feed carries."""

    def __contains__(self, item) -> bool:
        return True


async def serve(venue: PaperVenue, host: str, port: int, feed_url: str, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve as ws_serve

    async def follow_feed():
        delay = 0.05
        while True:
            try:
                async with connect(feed_url, max_size=1 << 20, compression=None) as ws:
                    delay = 0.05
                    async for frame in ws:
                        venue.on_feed(frame)
            except (OSError, Exception):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def handler(websocket):
        try:
            async for frame in websocket:
                replies = venue.on_order(frame)
                if venue.latency_ms:
                    await asyncio.sleep(venue.latency_ms / 1000)
                for reply in replies:
                    await websocket.send(json.dumps(reply))
        except Exception:
            return

    feed_task = asyncio.create_task(follow_feed())
    try:
        async with ws_serve(handler, host, port, max_size=1 << 20, compression=None) as server:
            if ready is not None:
                ready.set()
            await (stop.wait() if stop is not None else asyncio.Future())
            server.close()
    finally:
        feed_task.cancel()
