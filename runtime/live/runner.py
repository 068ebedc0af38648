"""`policyc run`: the engine core, live. Market data in over a WebSocket, risk-checked
orders out to a venue, model intents and operator control in, every decision logged
with the policy's hashes.

All trading logic is the sans-I/O `Engine`; this module only moves messages. Market
data and venue replies arrive on `transport.Stream`s, so whatever one socket read
completed goes through the kernel in one call. Open orders count against every limit
from the moment they are sent (the engine holds them as open quantity until the venue
fills or rejects them); every order still open when the venue connection drops is
resent on reconnect, and the venue's idempotency on `client_order_id` makes sure none
executes twice while a fill lost with the connection is answered again.
"""
from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy
from policyc.compiler.hashing import toolchain_versions

from ..engine import Decision, Engine, EngineError
from . import transport
from .audit import DecisionLog
from .protocol import (MAX_FRAME_BYTES, Input, Market, ProtocolError, encode, message_id, parse_control, parse_feed,
                       parse_intent, parse_venue)


MESSAGES_PER_SECOND = 2000.0  # per intents or control connection
MAX_CLIENT_FRAME_BYTES = 1 << 16  # an intent or a control message is small
LATENCY_SAMPLES = 100_000  # the latest tick-to-order latencies kept for the percentiles
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0  # reconnect backoff: the first wait, doubling up to the longest
VENUE_FIRST_S = 5.0  # at start, the feed waits this long at most for the venue connection


@dataclass
class RunConfig:
    feed_url: str
    venue_url: str
    feed_format: str = "native"
    intents: tuple[str, int] | None = None
    control: tuple[str, int] | None = None
    token: str | None = None
    log_path: str = "decisions.jsonl"
    duration: float | None = None
    flatten_on_exit: bool = False
    busy_poll: bool = False


@dataclass(slots=True)
class OpenOrder:
    """An order sent and not yet done, as the runtime tracks it against the venue."""

    instrument: str
    qty: float                  # signed quantity ordered
    left: float                 # signed quantity not filled yet
    frame: bytes                # the order message, for resending
    is_exit: bool
    fills_applied: int = 0      # fills of it applied so far
    fills_seen: int = 0         # fills of it answered on the current venue connection
    cancelling: bool = False    # a kill switch sent a cancel for it
    withdrawn: bool = False     # its quantity is out of the engine's open orders while it is cancelled


@dataclass
class Link:
    """The state of the feed or the venue connection, as the terminal view shows it and
    stderr reports its changes."""

    url: str
    state: str = "connecting"   # "connecting" (no attempt over yet), "connected", "down"; the feed
                                # is "waiting" for the venue first (`_feed_after_venue`)
    error: str | None = None     # while down: why the last attempt failed or the connection dropped
    since: float = field(default_factory=time.monotonic)  # when `state` last changed


def _why(exc: BaseException) -> str:
    """A connection failure in a few words: `Connection refused`, `no answer within 5 s`."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "no answer within 5 s"
    if isinstance(exc, OSError) and (exc.errno or 0) > 0:  # not the loop's wording: `Connect call failed (...)`
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:  # a name that does not resolve
        return exc.strerror
    return (str(exc) or type(exc).__name__)[:200]


def announce(line: str) -> None:
    """A connection's change of state, for the person running `run`: on stderr, which the
    terminal view shows above itself and which stays out of the JSON printed on stdout."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class Counters:
    events: int = 0
    orders: int = 0
    fills: int = 0
    rejects: int = 0
    bad_messages: int = 0
    reconnects: int = 0
    latencies_ns: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


class LiveRuntime:
    def __init__(self, policy: CompiledPolicy, config: RunConfig):
        self.policy, self.config = policy, config
        self.engine = Engine(policy, L.LIVE)
        self.log = DecisionLog(config.log_path, policy.policy_hash, policy.build_hash, flush_every=64)
        self.counters = Counters()
        self.instruments = set(policy.instruments)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.order_prefix = f"{policy.name}-{stamp}-{secrets.token_hex(3)}"
        self.open: dict[str, OpenOrder] = {}        # client_order_id -> order not done yet
        self.unacked: set[str] = set()              # open orders the venue has not answered yet
        self.kill_switch_handled = False            # cancels sent and the halt recorded for the current halt
        self.venue: transport.Stream | None = None
        self.feed: transport.Stream | None = None
        self.links = {"feed": Link(config.feed_url), "venue": Link(config.venue_url)}
        self.stop = asyncio.Event()
        self.venue_up = asyncio.Event()
        self.intent_budget: dict[int, list] = {}   # connection -> [tokens, last refill time]
        self.clock: dict[str, tuple[int, int]] = {}  # instrument -> (last event ts, wall ns when seen)
        self.log.write("session", policy=policy.name, version=policy.checked.parsed.version, params=policy.params,
                       account=policy.checked.account, instruments=policy.instruments,
                       toolchain=toolchain_versions(), feed=config.feed_url, venue=config.venue_url,
                       order_prefix=self.order_prefix)

    # ---- time --------------------------------------------------------------------
    def now_for(self, instrument: str) -> int:
        """Event time for a decision that no market event carries (an intent, a halt):
        the instrument's last event time plus the wall time elapsed since it arrived."""
        last = self.clock.get(instrument)
        if last is None:
            return time.time_ns()
        return last[0] + (time.time_ns() - last[1])

    # ---- decisions and orders ---------------------------------------------------
    def act(self, decision: Decision | None, event_sent_ns: int | None = None) -> None:
        if decision is not None:
            self.act_all([(decision, event_sent_ns)])

    def act_all(self, decisions: list[tuple[Decision, int | None]], on_market: bool = False) -> None:
        """Send the orders of decisions taken together (one event, or one read of the
        feed) and log them, with the `sent_ns` of the event behind each; if one of them
        tripped the kill switch, `_trip` takes all of them instead. `on_market`: each was
        decided on the market event at its `ts` (its order says so: `event_ts`)."""
        tripping = [d for d, _ in decisions if d.trips_kill_switch]
        if tripping and not self.kill_switch_handled:
            self._trip([d for d, _ in decisions], tripping[0].ts, ",".join(tripping[0].reasons))
            return
        for decision, event_sent_ns in decisions:
            if decision.order_qty:
                self.send_order(decision, event_sent_ns, on_market)
            elif decision.reasons:
                self._log_risk(decision)

    def _log_risk(self, decision: Decision, **extra) -> None:
        self.log.write("risk", ts=decision.ts, instrument=decision.instrument, reasons=decision.reasons,
                       desired_target=decision.desired_target, approved_target=decision.approved_target, **extra)

    def _trip(self, decisions: list[Decision], ts: int, reason: str) -> None:
        """The kernel turned the kill switch on while deciding `decisions` (one, or a
        whole read). None of their orders has left, and none will: the kernel netted
        them against open orders that are now cancelled. They are withdrawn, every
        open order that is not an exit is cancelled, and every instrument is decided
        again, which liquidates what is actually held."""
        self.log.write("halt", ts=ts, reason=reason, open_orders=list(self.open))
        for decision in decisions:
            if decision.order_qty:
                self.engine.reject(decision.instrument, decision.ts, decision.order_qty)
            if decision.reasons or decision.order_qty:
                self._log_risk(decision, withdrawn_qty=decision.order_qty)
        self._cancel_for_kill_switch(ts)
        self.kill_switch_handled = True
        for name in self.policy.instruments:
            self.act(self.engine.decide(name, self.now_for(name)))

    def _cancel_for_kill_switch(self, ts: int) -> None:
        """Cancel every open order that is not an exit, and take its quantity out of the
        engine's open orders at once, so the liquidation covers the filled position only.
        A fill that beats its cancel is put back and applied, and the position it leaves
        is flattened in turn (`on_venue_frame`). Exits stay: they reduce exposure."""
        for oid, order in self.open.items():
            if order.is_exit or order.withdrawn:
                continue
            if not order.cancelling:
                self._send_to_venue(encode({"type": "cancel", "client_order_id": oid}))
            order.cancelling = order.withdrawn = True
            self.engine.reject(order.instrument, ts, order.left)

    def send_order(self, d: Decision, event_sent_ns: int | None, on_market: bool = False) -> None:
        """The frame goes out first, then the log record: the log is buffered either way."""
        self.counters.orders += 1
        oid = f"{self.order_prefix}-{self.counters.orders:06d}"
        msg = {"type": "order", "client_order_id": oid, "instrument": d.instrument,
               "side": "buy" if d.order_qty > 0 else "sell", "qty": abs(d.order_qty), "order_type": "market",
               "policy_hash": self.policy.policy_hash, "ts": d.ts}
        if event_sent_ns is not None:
            msg["event_sent_ns"] = event_sent_ns
        if on_market:  # a paper venue fills it at this event's price, not at one its feed had before
            msg["event_ts"] = d.ts
        frame = encode(msg)
        self.unacked.add(oid)
        self.open[oid] = OpenOrder(d.instrument, d.order_qty, d.order_qty, frame, d.is_exit)
        self._send_to_venue(frame)
        if event_sent_ns is not None:
            self.counters.latencies_ns.append(time.time_ns() - event_sent_ns)
        self.log.write("order", ts=d.ts, client_order_id=oid, instrument=d.instrument, qty=d.order_qty,
                       price=d.price, desired_target=d.desired_target, approved_target=d.approved_target,
                       reasons=d.reasons, exit=d.is_exit)

    def _send_to_venue(self, frame: bytes) -> None:
        """Write the frame now; if the venue is down, the reconnect resends every open order."""
        if self.venue is not None:
            self.venue.send(frame)

    def bad_message(self, source: str, reason: str) -> None:
        self.counters.bad_messages += 1
        self.log.write("bad_message", source=source, reason=reason[:500])

    # ---- feed ---------------------------------------------------------------------
    def on_feed_messages(self, frames: list[bytes]) -> None:
        """Every message one socket read completed: one kernel call for all of them
        (inputs split the batch, so each market event sees the inputs sent before it)."""
        batch = []
        for frame in frames:
            try:
                items = parse_feed(frame, self.instruments, self.config.feed_format)
            except ProtocolError as exc:
                self.bad_message("feed", str(exc))
                continue
            for item in items:
                if isinstance(item, Input):
                    self._market(batch)
                    batch = []
                    try:
                        self.engine.set_input(item.instrument, item.name, item.value)
                    except EngineError as exc:
                        self.bad_message("feed", str(exc))
                else:
                    batch.append(item)
        self._market(batch)

    def _market(self, batch: list[Market]) -> None:
        if not batch:
            return
        now = time.time_ns()
        results = self.engine.market_many(batch, actionable_only=True)
        decisions = []
        for item, result in zip(batch, results):
            if isinstance(result, EngineError):
                self.bad_message("feed", str(result))
                continue
            self.counters.events += 1
            self.clock[item.instrument] = (item.ts, now)
            if result is not None:
                decisions.append((result, item.sent_ns))
        with self._venue_corked(len(batch) > 1):
            self.act_all(decisions, on_market=True)

    def _venue_corked(self, enabled: bool):
        """Orders decided on one batch leave in one write."""
        return self.venue.corked(enabled) if self.venue is not None else nullcontext()

    # ---- venue --------------------------------------------------------------------
    def on_venue_messages(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.on_venue_frame(frame)

    def on_venue_frame(self, frame) -> None:
        try:
            reply = parse_venue(frame)
        except ProtocolError as exc:
            self.bad_message("venue", str(exc))
            return
        oid = reply.client_order_id
        self.unacked.discard(oid)
        if reply.type == "ack":
            return
        order = self.open.get(oid)
        if order is None:
            if reply.type == "fill" and not self._sent_by_us(oid):
                self.bad_message("venue", f"fill for an order this runtime did not send: {oid}")
            return  # an answer to a resent order that is already done
        instrument, left = order.instrument, order.left
        ts = reply.ts if reply.ts is not None else self.now_for(instrument)
        if reply.type == "reject":
            self.counters.rejects += 1
            if not order.withdrawn:
                self.engine.reject(instrument, ts, left)
            del self.open[oid]
            self.log.write("reject", ts=ts, client_order_id=oid, instrument=instrument, qty=left, reason=reply.reason)
            return
        order.fills_seen += 1
        if order.fills_seen <= order.fills_applied:
            return  # a fill answered again after a resend: applied already
        qty = min(reply.qty, abs(left)) * (1 if left > 0 else -1)
        if order.withdrawn:  # it filled before its cancel: it is a real position again
            self.engine.reject(instrument, ts, -qty)
        self.engine.fill(instrument, ts, qty, reply.price, reply.fee)
        self.counters.fills += 1
        order.fills_applied += 1
        order.left = left - qty
        if abs(order.left) <= 1e-12 * abs(order.qty):  # done, up to the rounding of partial fills
            del self.open[oid]
        self.log.write("fill", ts=ts, client_order_id=oid, instrument=instrument, qty=qty, price=reply.price,
                       fee=reply.fee, position=self.engine.position(instrument), equity=self.engine.equity)
        if order.withdrawn and self.engine.halted:  # flatten what that fill left
            self.act(self.engine.decide(instrument, ts))

    def _sent_by_us(self, oid: str) -> bool:
        """Order ids are this run's prefix and a sequence number: no set of past ids to keep."""
        head, _, number = oid.rpartition("-")
        return head == self.order_prefix and number.isdigit() and 0 < int(number) <= self.counters.orders

    # ---- control ------------------------------------------------------------------
    def halt(self, reason: str) -> None:
        """Kill switch: cancel what is pending, flatten, send nothing new until resume."""
        ts = max((self.now_for(i) for i in self.instruments), default=time.time_ns())
        if not self.kill_switch_handled:
            self.log.write("halt", reason=reason, open_orders=list(self.open))
        self._cancel_for_kill_switch(ts)
        self.kill_switch_handled = True
        for decision in self.engine.halt(ts):
            self.act(decision)

    def resume(self) -> None:
        """Trading again: orders still being cancelled count against the limits again
        until the venue answers, as every open order does."""
        ts = max((self.now_for(i) for i in self.instruments), default=time.time_ns())
        for order in self.open.values():
            if order.withdrawn:
                order.withdrawn = False
                self.engine.reject(order.instrument, ts, -order.left)
        self.engine.resume(ts)
        self.kill_switch_handled = False
        self.log.write("resume")

    def status(self) -> dict:
        lat = sorted(self.counters.latencies_ns)  # the latest LATENCY_SAMPLES
        pct = {f"p{int(q * 100)}_us": lat[min(len(lat) - 1, int(q * len(lat)))] / 1e3 for q in (0.5, 0.99)} if lat else {}
        equity, peak = self.engine.equity, float(self.engine.session.acct[L.A_PEAK])
        return {"type": "status", "policy": self.policy.name, "policy_hash": self.policy.policy_hash,
                "positions": self.engine.positions(), "open_orders": self.engine.open_orders(),
                "last_prices": self.engine.last_prices(), "equity": equity, "cash": self.engine.cash,
                "drawdown": (peak - equity) / peak if peak > 0 else 0.0, "halted": self.engine.halted,
                "risk": self.engine.session.reason_counts,
                "events": self.counters.events, "orders": self.counters.orders, "fills": self.counters.fills,
                "rejects": self.counters.rejects, "bad_messages": self.counters.bad_messages,
                "unacknowledged": len(self.unacked),
                "reconnects": self.counters.reconnects, "latency": pct, "recent": list(self.log.recent)}

    def on_control_frame(self, frame) -> dict:
        try:
            msg = parse_control(frame)
        except ProtocolError as exc:
            self.bad_message("control", str(exc))
            return {"type": "error", "code": exc.code, "message": str(exc)}
        if msg.type == "halt":
            self.halt(msg.reason or "operator halt")
        elif msg.type == "resume":
            self.resume()
        return self.status()

    def on_intent_frame(self, frame) -> dict:
        ident = message_id(frame)
        try:
            msg = parse_intent(frame, self.instruments)
            if isinstance(msg, Input):
                self.engine.set_input(msg.instrument, msg.name, msg.value)
                return {"type": "ack", "id": msg.id}
            target, extra = msg.target, []
            if not self.feed_connected:  # no market data: the instrument is reduce-only
                held = self.engine.position(msg.instrument) + self.engine.open_quantity(msg.instrument)
                if abs(target) > abs(held) or target * held < 0:
                    target = held if target * held > 0 else 0.0
                    extra = ["stale_after:blocked"]
            d = self.engine.intent(msg.instrument, self.now_for(msg.instrument), target)
        except (ProtocolError, EngineError) as exc:
            self.bad_message("intents", str(exc))
            return {"type": "error", "id": ident, "code": "bad_message", "message": str(exc)}
        self.act(d)
        return {"type": "decision", "id": msg.id, "instrument": msg.instrument,
                "policy_hash": self.policy.policy_hash, "desired_target": msg.target,
                "approved_target": d.approved_target, "order_qty": d.order_qty,
                "reasons": extra + list(d.reasons)}

    def allow(self, connection: int, rate: float = MESSAGES_PER_SECOND) -> bool:
        """A token bucket per connection: a flood is refused message by message."""
        now = time.monotonic()
        tokens, last = self.intent_budget.get(connection, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate)
        ok = tokens >= 1.0
        self.intent_budget[connection] = (tokens - 1.0 if ok else tokens, now)
        return ok

    # ---- connections ----------------------------------------------------------------
    async def _keep_connected(self, url: str, source: str, on_messages, on_connect, on_lost) -> None:
        """Keep a client connection up: reconnect with exponential backoff and jitter.
        Each change of its state is reported once (`_link_down`, `_link_up`), not each retry."""
        delay = RETRY_FIRST_S
        while not self.stop.is_set():
            try:
                stream = await transport.connect(url, on_messages, lambda why: self.bad_message(source, why),
                                                 max_size=MAX_FRAME_BYTES)
            except Exception as exc:  # refused, timed out, a failed handshake: all mean "try again later"
                stream = None
                if not self.stop.is_set():
                    self._link_down(source, f"cannot connect ({_why(exc)})", f"retrying about every {RETRY_MAX_S:g} s")
            if stream is not None:
                delay = RETRY_FIRST_S
                self._link_up(source)
                on_connect(stream)
                try:
                    code = await asyncio.shield(stream.lost)
                finally:
                    on_lost()
                    stream.close()
                if not self.stop.is_set():
                    self._link_down(source, "connection lost" if code in (None, 1006) else
                                    f"connection closed (code {code})", "reconnecting")
            if self.stop.is_set():
                return
            self.counters.reconnects += 1
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, RETRY_MAX_S)

    def _link_down(self, source: str, error: str, plan: str) -> None:
        """The feed or the venue is down: said on stderr when it goes down (its first failed
        attempt, or a drop), not again while retries keep failing."""
        link = self.links[source]
        link.error = error
        if link.state != "down":
            link.state, link.since = "down", time.monotonic()
            announce(f"{source} {link.url}: {error}; {plan}")

    def _link_up(self, source: str) -> None:
        """The feed or the venue is connected: said on stderr when it comes back, not when
        the first attempt succeeds."""
        link = self.links[source]
        if link.state == "down":
            announce(f"{source} {link.url}: connected")
        link.state, link.error, link.since = "connected", None, time.monotonic()

    def _venue_connected(self, stream: transport.Stream) -> None:
        """Resend every open order: the venue answers one it has seen with what it
        answered before, which also recovers a fill lost with the old connection. An
        order the kill switch is cancelling gets its cancel again instead."""
        self.venue = stream
        self.venue_up.set()
        for oid, order in list(self.open.items()):
            order.fills_seen = 0
            stream.send(encode({"type": "cancel", "client_order_id": oid}) if order.cancelling else order.frame)

    def _venue_lost(self) -> None:
        self.venue = None

    def _feed_connected(self, stream: transport.Stream) -> None:
        self.feed = stream

    def _feed_lost(self) -> None:
        self.feed = None

    @property
    def feed_connected(self) -> bool:
        return self.feed is not None

    async def _feed_after_venue(self, wait_s: float = VENUE_FIRST_S) -> None:
        """Market data is consumed once the order path is up (or after `wait_s`, with
        orders queued until the venue answers)."""
        feed = self.links["feed"]
        if not self.venue_up.is_set():
            feed.state = "waiting"
        try:
            await asyncio.wait_for(self.venue_up.wait(), wait_s)
        except asyncio.TimeoutError:
            pass
        feed.state = "connecting"
        await self._keep_connected(self.config.feed_url, "feed", self.on_feed_messages, self._feed_connected,
                                   self._feed_lost)

    async def _listen(self, address, on_frame, source: str):
        """A token-guarded listener: a wrong or missing token closes with code 1008."""
        from websockets.asyncio.server import serve
        from websockets.exceptions import ConnectionClosed

        expected = None if self.config.token is None else f"Bearer {self.config.token}"

        async def handler(ws):
            if expected is None or ws.request.headers.get("Authorization") != expected:
                self.bad_message("auth", "wrong or missing token")
                await ws.close(1008, "wrong or missing token")
                return
            try:
                async for frame in ws:
                    if self.stop.is_set():
                        reply = {"type": "error", "id": message_id(frame), "code": "stopping",
                                 "message": "the runtime is stopping; nothing was done"}
                    elif self.allow(id(ws)):
                        reply = on_frame(frame)
                    else:
                        self.bad_message("flood", "over the message rate limit")
                        reply = {"type": "error", "id": message_id(frame), "code": "bad_message",
                                 "message": f"over {MESSAGES_PER_SECOND:g} messages per second"}
                    await ws.send(encode(reply).decode())
            except ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == 1009:
                    self.bad_message(source, f"frame over the {MAX_CLIENT_FRAME_BYTES:,}-byte limit: "
                                             "connection closed with code 1009")
            finally:
                self.intent_budget.pop(id(ws), None)

        host, port = address
        return await serve(handler, host, port, max_size=MAX_CLIENT_FRAME_BYTES, compression=None)

    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        servers = []
        if self.config.intents:
            servers.append(await self._listen(self.config.intents, self.on_intent_frame, "intents"))
        if self.config.control:
            servers.append(await self._listen(self.config.control, self.on_control_frame, "control"))
        tasks = [asyncio.create_task(self._busy_poll())] if self.config.busy_poll else []
        tasks += [asyncio.create_task(self._keep_connected(self.config.venue_url, "venue", self.on_venue_messages,
                                                          self._venue_connected, self._venue_lost)),
                 asyncio.create_task(self._feed_after_venue())]
        try:
            if self.config.duration is not None:
                await asyncio.wait_for(self.stop.wait(), self.config.duration)
            else:
                await self.stop.wait()
        except asyncio.TimeoutError:
            pass
        if self.config.flatten_on_exit:
            await self.flatten()
        self.stop.set()
        for stream in (self.feed, self.venue):
            if stream is not None:
                stream.close()
        for task in tasks:
            task.cancel()
        for server in servers:  # every message taken in is answered and logged before the log closes
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except asyncio.TimeoutError:
                pass
        summary = self.status()
        self.log.close()
        return summary

    async def _busy_poll(self) -> None:
        """Keep the event loop polling the sockets instead of sleeping in the kernel: a
        message is read as soon as it lands, without the wake-up of a sleeping process,
        at the price of one CPU core kept busy."""
        while not self.stop.is_set():
            await asyncio.sleep(0)

    async def flatten(self, wait_s: float = 2.0) -> None:
        """Stop with nothing held: the kill switch cancels what is pending and liquidates
        (market data can no longer open anything), then wait for the venue's answers."""
        self.halt("flatten on exit")
        deadline = time.monotonic() + wait_s
        while self.open and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
