"""`policyc run`: the engine core, live. Market data in over a WebSocket, risk-checked
orders out to a venue, model intents and operator control in, every decision logged
with the policy's hashes.

All trading logic is the sans-I/O `Engine` and the sans-I/O order core
(`runtime/orders.py`: open orders, fills, the kill-switch sequence, event time, feed
silence); this module keeps the sockets, the timers and the decision log. Market data
and venue replies arrive on `transport.Stream`s, so whatever one socket read completed
goes through the kernel in one call; the intents and control listeners answer one
message at a time.

Several feeds and venues: each instrument is served by the feed and the venue named by
the text before its `:` (`binance:BTCUSDT`: `binance`), or else by the unnamed one
(`serving`). Each connection reconnects on its own; the order core resends and
reconciles per venue.
"""
from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timezone

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy
from policyc.compiler.hashing import toolchain_of

from ..engine import Engine, EngineError
from ..journal import resume_state
from ..orders import MAX_CLOCK_SKEW_S, MAX_FEED_SILENCE_S, OrderCore, steps
from . import security, transport
from .audit import DEFAULT_FSYNC, DecisionLog, read_log_key, read_signing_key
from .protocol import (FEED_FORMATS, MAX_FRAME_BYTES, FeedDecoder, Input, Market, ProtocolError, encode, message_id,
                       parse_control, parse_intent, parse_venue, well_formed_venues)


#: Messages a credential may send per second, over all its connections (each opened
#: connection does not bring a budget of its own): a model's intents, and an operator's or
#: viewer's control messages, which a person sends a few of and each of which is logged.
MESSAGES_PER_SECOND = {"intents": 2000.0, "control": 20.0}
MAX_CLIENT_FRAME_BYTES = 1 << 16  # an intent or a control message is small
LATENCY_SAMPLES = 100_000  # the latest tick-to-order latencies kept for the percentiles
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0  # reconnect backoff: the first wait, doubling up to the longest
VENUE_FIRST_S = 5.0  # at start, the feed waits this long at most for the venue connection


class ConfigError(ValueError):
    """A run that cannot start as configured: an instrument no feed or venue serves."""


def serving(instruments, names, what: str) -> dict[str, str]:
    """Instrument -> the name of the connection (of `names`, "" the unnamed one) that
    serves it: the one named by the text before its `:`, else the unnamed one. `what`
    (`feed` or `venue`) names the option in the error. Raises ConfigError naming every
    instrument none serves, or a named connection that serves none of them (a typo in
    its name would otherwise leave a connection nothing reads)."""
    out, missing = {}, []
    for name in instruments:
        prefix, colon, _ = name.partition(":")
        if colon and prefix in names:
            out[name] = prefix
        elif "" in names:
            out[name] = ""
        else:
            missing.append(name)
    if missing:
        wanted = sorted({name.partition(":")[0] for name in missing if ":" in name})
        raise ConfigError(f"no --{what} serves {', '.join(missing)}: give --{what} URL, or --{what} NAME=URL"
                          + (f" for {', '.join(wanted)}" if wanted else "")
                          + " (an instrument `NAME:SYMBOL` is served by the connection named NAME)")
    idle = sorted(name for name in names if name and name not in out.values())
    if idle:
        raise ConfigError(f"--{what} {', '.join(f'{name}=' for name in idle)} serves no instrument of the policy "
                          f"({', '.join(instruments)}): an instrument `NAME:SYMBOL` is served by the connection "
                          "named NAME")
    return out


@dataclass
class RunConfig:
    feed_url: str                                  # the unnamed feed ("" for none: named ones in `feeds`)
    venue_url: str                                 # the unnamed venue ("" for none: named ones in `venues`)
    feed_format: str = "native"                    # the unnamed feed's format, and a named one's by default
    feeds: dict = field(default_factory=dict)      # NAME -> URL: feeds serving the instruments `NAME:...`
    venues: dict = field(default_factory=dict)     # NAME -> URL: venues trading the instruments `NAME:...`
    feed_formats: dict = field(default_factory=dict)  # NAME -> format of a named feed; default: NAME when it is
                                                   # a format (`binance`), else `feed_format`
    intents: tuple[str, int] | None = None
    control: tuple[str, int] | None = None
    guard: security.Guard | None = None           # the listeners' credentials, roles and second factor
    tls_cert: str | None = None                    # the listeners on wss: their certificate chain (PEM)
    tls_key: str | None = None                     # and its private key
    ca_file: str | None = None                     # a wss feed or venue is verified against these authorities
    feed_headers: tuple = ()                       # added to the feed's opening handshake: (name, value) pairs
    venue_headers: tuple = ()                      # and the venue's
    log_path: str = "decisions.jsonl"
    duration: float | None = None
    flatten_on_exit: bool = False
    busy_poll: bool = False
    max_clock_skew: float = MAX_CLOCK_SKEW_S      # s a market event may be ahead of the wall clock
    max_feed_silence: float = MAX_FEED_SILENCE_S  # s without a market event before intents are reduce-only
    fsync: str = DEFAULT_FSYNC                     # the decision log's: "always", "batch" or "never"
    log_max_bytes: int | None = None               # rotate the decision log to a new file before this size
    log_key_file: str | None = None                # encrypt the decision log with this key
    sign_key_file: str | None = None               # sign the decision log with this Ed25519 key
    resume: bool = False                           # the log must exist: go on from the state it left
    allow_policy_change: bool = False              # resume a log written by another policy (`journal.carry_over`)


@dataclass
class Link:
    """The state of the feed or the venue connection, as the terminal view shows it and
    stderr reports its changes."""

    url: str
    name: str = ""              # the feed's or venue's name ("" for the unnamed one)
    state: str = "connecting"   # "connecting" (no attempt over yet), "connected", "down"; the feed
                                # is "waiting" for the venue first (`_feed_after_venue`)
    error: str | None = None     # while down: why the last attempt failed or the connection dropped
    since: float = field(default_factory=time.monotonic)  # when `state` last changed


def _key(source: str, name: str) -> str:
    """A connection's key in `LiveRuntime.links`: `feed` or `venue`, and its name if it has one."""
    return f"{source} {name}" if name else source


def _why(exc: BaseException) -> str:
    """A connection failure in a few words: `Connection refused`, `no answer within 5 s`."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "no answer within 5 s"
    if isinstance(exc, OSError) and (exc.errno or 0) > 0:  # not the loop's wording: `Connect call failed (...)`
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:  # a name that does not resolve
        return exc.strerror
    return (str(exc) or type(exc).__name__)[:200]


def _why_lost(code: int | None, dropped: str | None) -> str:
    """An open connection's end in a few words: this side dropped it (`Stream.dropped`),
    the peer closed it with a code, or it was lost (no close, or 1006)."""
    if dropped:
        return f"connection dropped: {dropped}"
    return "connection lost" if code in (None, 1006) else f"connection closed (code {code})"


class LogFailed(OSError):
    """The decision log could not be written or synced, so the run stopped: no order may
    leave without its record. `status` is the run's status as it stopped (`status()`),
    None when the log could not take the run's first records (`LiveRuntime` raises it
    then, with no run); the message is the log's error."""

    def __init__(self, error: OSError, status: dict | None):
        super().__init__(error.errno, error.strerror or str(error))
        self.status = status


def announce(line: str) -> None:
    """A connection's change of state, for the person running `run`: on stderr, which the
    terminal view shows above itself and which stays out of the JSON printed on stdout."""
    print(line, file=sys.stderr, flush=True)


class LiveRuntime:
    """`policyc run`: `await run()` connects to the feed and the venue, listens for intents
    and control, and returns the final status once stopped. Its callbacks (`on_feed_messages`,
    `on_venue_messages`, `on_intent_frame`, `on_control_frame`, `halt`, `resume`, `status`)
    are what the sockets call, and can be called without them."""

    def __init__(self, policy: CompiledPolicy, config: RunConfig):
        self.policy, self.config = policy, config
        # which connection serves each instrument, checked before anything is opened or connected
        self.feed_urls = {**({"": config.feed_url} if config.feed_url else {}), **config.feeds}
        self.venue_urls = {**({"": config.venue_url} if config.venue_url else {}), **config.venues}
        feed_of = serving(policy.instruments, self.feed_urls, "feed")
        venue_of = serving(policy.instruments, self.venue_urls, "venue")
        self.several = len(self.venue_urls) > 1 or "" not in self.venue_urls  # orders are routed by venue
        for name in config.feed_formats:
            if name not in config.feeds:
                raise ConfigError(f"--feed-format {name}=...: no --feed named {name}")
        log_key = read_log_key(config.log_key_file) if config.log_key_file else None
        # Before the log is opened for writing: a log that does not verify or replay is refused untouched.
        self.restored = resume_state(config.log_path, config.log_key_file, policy, config.allow_policy_change,
                                     required=config.resume)
        self.log = DecisionLog(config.log_path, policy.policy_hash, policy.build_hash, fsync=config.fsync,
                               max_bytes=config.log_max_bytes, log_key=log_key,
                               sign_key=read_signing_key(config.sign_key_file) if config.sign_key_file else None)
        self.instruments = set(policy.instruments)
        self.feed_formats = {name: config.feed_formats.get(name, name if name in FEED_FORMATS else config.feed_format)
                             for name in self.feed_urls}
        self.feed_formats[""] = config.feed_format
        # each feed reads the instruments it serves
        self.decoders = {name: FeedDecoder({i for i, f in feed_of.items() if f == name}, self.feed_formats[name])
                         for name in self.feed_urls}
        self.feed_decoder = self.decoders[next(iter(self.decoders))]  # the only feed's, or the first's
        self._one_feed = len(self.decoders) == 1
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.order_prefix = f"{policy.name}-{stamp}-{secrets.token_hex(3)}"
        self._loop: asyncio.AbstractEventLoop | None = None  # set by `run`: durations are on its clock
        self._loop_thread: int | None = None                 # and the thread it runs in
        if self.restored is None:
            self.engine = Engine(policy, L.LIVE)
            self.core = OrderCore(self.engine, self.order_prefix, self._send, self.log.write,
                                  max_clock_skew_s=config.max_clock_skew, max_feed_silence_s=config.max_feed_silence,
                                  monotonic_ns=self._monotonic_ns, journal=True, reconcile=True,
                                  venues=venue_of if self.several else None, announce=self._announce)
        else:
            self.engine, self.core = self.restored.engine, self.restored.core
            self.core.send, self.core.record, self.core.announce = self._send, self.log.write, self._announce
            self.core.wall_ns, self.core.monotonic_ns, self.core.journal = time.time_ns, self._monotonic_ns, True
            self.core.set_venues(venue_of if self.several else None)
        if self.several:
            self.core.route = self._route
        self.counters = self.core.counters
        self.latencies_ns: deque = deque(maxlen=LATENCY_SAMPLES)
        self._outbox: list | None = None  # while the core handles a market batch: the messages it sends, in order
        self.venue: transport.Stream | None = None  # the unnamed venue's connection
        self.feed: transport.Stream | None = None   # the unnamed feed's
        self.venue_streams: dict[str, transport.Stream | None] = dict.fromkeys(self.venue_urls)
        self.feed_streams: dict[str, transport.Stream | None] = dict.fromkeys(self.feed_urls)
        self.feed_heard: dict[str, int] = {}   # feed -> monotonic ns of its latest accepted market event (or connection)
        self.feeds_silent: set[str] = set()    # with several feeds: those connected but silent too long
        self.links = {**{_key("feed", name): Link(url, name) for name, url in self.feed_urls.items()},
                      **{_key("venue", name): Link(url, name) for name, url in self.venue_urls.items()}}
        self.stop = asyncio.Event()
        self.log_error: OSError | None = None  # the log's first failure: the run stops on it
        self._loop_lock = threading.Lock()     # `run` takes its loop, or `_log_failed` stops it: one at a time
        self.log.on_failure = self._log_failed
        self.venue_up = asyncio.Event()
        self.intent_budget: dict[tuple, tuple] = {}  # (port, credential) -> (tokens, last refill time)
        self.floods: dict[tuple, list] = {}  # (port, credential) -> [refused since logged, when last logged]
        started_ns = self._monotonic_ns()
        try:
            self._open_session(policy, config, venue_of, started_ns)
        except OSError as exc:  # the log cannot take the run's first records: no run
            try:
                self.log.close()
            except OSError:
                pass
            raise LogFailed(exc, None) from None

    def _open_session(self, policy: CompiledPolicy, config: RunConfig, venue_of: dict, started_ns: int) -> None:
        """The run's session record, then what the run it resumes did not finish writing."""
        self.log.write("session", policy=policy.name, version=policy.checked.parsed.version, params=policy.params,
                       account=policy.checked.account, risk=policy.checked.risk, instruments=policy.instruments,
                       toolchain=toolchain_of(policy.checked), feed=config.feed_url, venue=config.venue_url,
                       **({"feeds": config.feeds, "venues": config.venues, "venue_of": venue_of}
                          if self.several or config.feeds else {}),
                       order_prefix=self.order_prefix, max_clock_skew_s=config.max_clock_skew,
                       max_feed_silence_s=config.max_feed_silence, mono_ns=started_ns,
                       resumed_runs=self.restored.runs if self.restored else 0, reconcile_at_start=True,
                       policy_source=policy.checked.parsed.source.text,
                       **(config.guard.session_fields() if config.guard is not None else {}),
                       **({"tls_cert": security.cert_fingerprint(config.tls_cert)} if config.tls_cert else {}))
        if self.restored is not None:
            for record in self.restored.pending:  # what the run before did not finish writing (`runtime/journal.py`)
                self.log.write(**record)
            self.core.restart(self.order_prefix, started_ns, max_clock_skew_s=config.max_clock_skew,
                              max_feed_silence_s=config.max_feed_silence)

    @property
    def open(self) -> dict:
        """client_order_id -> `OpenOrder`, for every order sent and not done yet."""
        return self.core.open

    @property
    def unacked(self) -> set:
        """The open orders the venue has not answered yet."""
        return self.core.unacked

    def _monotonic_ns(self) -> int:
        """The event loop's clock (ns), which its timers run on and a test can move; the
        monotonic clock, which it is by default, before `run`."""
        return int(self._loop.time() * 1e9) if self._loop is not None else time.monotonic_ns()

    def _send(self, message: dict, event_sent_ns: int | None) -> None:
        """An order or cancel of the core, written to the venue at once, or with the
        others of its market batch at the batch's end (`_market`); while the venue is
        down it waits in the open orders, which a reconnection sends again."""
        if self._outbox is not None:
            self._outbox.append((message, event_sent_ns))
            return
        if self.venue is not None:
            self.log.flush()  # write-ahead: the records of this read so far, this order's among them
            self.venue.send(encode(message))
        if event_sent_ns is not None:
            self.latencies_ns.append(time.time_ns() - event_sent_ns)

    def _route(self, venue: str, message: dict, event_sent_ns: int | None) -> None:
        """`_send` with several venues: to `venue`'s connection."""
        if self._outbox is not None:
            self._outbox.append((message, event_sent_ns, venue))
            return
        stream = self.venue_streams[venue]
        if stream is not None:
            self.log.flush()
            stream.send(encode(message))
        if event_sent_ns is not None:
            self.latencies_ns.append(time.time_ns() - event_sent_ns)

    def _log_failed(self, error: OSError) -> None:
        """The log refused a write or a sync: stop the run (fail closed). Orders already
        cannot leave (their records come first); without a log nothing else can be shown
        to have happened either. `run` raises LogFailed once it has stopped. A failed sync
        of --fsync batch comes from the log's sync thread, and is handed to the loop."""
        with self._loop_lock:  # before `run`, `stop` is set here, and `run` finds it set
            loop = self._loop
            if loop is not None and threading.get_ident() != self._loop_thread:
                loop.call_soon_threadsafe(self._log_failed, error)
                return
            if self.log_error is None:
                self.log_error = error
                announce(f"decision log {self.config.log_path}: {error.strerror or error}; stopping: no order "
                         "leaves without its record")
                self.stop.set()

    def _announce(self, kind: str, fields: dict) -> None:
        """A feed silence and a venue whose books differ are said on stderr, as a
        connection that drops is (the core's `announce`: its record is already logged)."""
        if kind == "reconcile" and not fields["matched"]:
            differ = ", ".join(fields["instruments"] + fields.get("unknown_orders", []))
            venue = fields["venue"].get("name", "")
            announce(f"{_key('venue', venue)} {self.venue_urls[venue]}: its positions or open orders differ from "
                     f"this run's ({differ}); "
                     "halted (reconcile_mismatch), no order leaves until an operator resumes and they match")
        if kind == "feed_silent":
            announce(f"feed {' '.join(self.feed_urls.values())}: no market data for {fields['silent_s']:.1f} s; "
                     "intents are reduce-only")
        elif kind == "feed_live":
            announce(f"feed {' '.join(self.feed_urls.values())}: market data again after {fields['silent_s']:.1f} s")

    def bad_message(self, source: str, reason: str) -> None:
        if self.log_error is not None:  # the log's own failure met on a connection's way: nothing to record
            return
        self.core.bad_message(source, reason)

    # ---- feed ---------------------------------------------------------------------
    def on_feed_messages(self, frames: list[bytes], feed: str = "") -> None:
        """Every message one socket read of `feed` completed: one kernel call for all of
        them (inputs split the batch, so each market event sees the inputs sent before it),
        and one write of the log for all the records they make."""
        with self.log.batch():
            if self._one_feed:
                self._feed_messages(frames, self.feed_decoder)
                return
            before = self.counters.events
            self._feed_messages(frames, self.decoders[feed])
            self._feed_heard(feed, before)

    def _feed_messages(self, frames: list[bytes], decoder: FeedDecoder) -> None:
        items = decoder.messages(frames)
        if decoder.clean:  # market events only, every frame well-formed: journaled as the frames came
            self._market(items, frames)
            return
        batch = []
        for item in items:
            kind = item.__class__
            if kind is Market:
                batch.append(item)
            elif kind is Input:
                self._market(batch)
                batch = []
                try:
                    self.core.set_input(item.instrument, item.name, item.value)
                except EngineError as exc:
                    self.bad_message("feed", str(exc))
            else:
                self.bad_message("feed", str(item))
        self._market(batch)

    def _market(self, batch: list[Market], frames: list[bytes] | None = None) -> None:
        """One kernel call for the batch; the orders it decides leave together after it,
        their records first (write-ahead: one write of the log, then one of the socket).
        `frames`: the read's, when the batch is all of their messages (`OrderCore.market`)."""
        if not batch:
            return
        self._outbox = outbox = []
        try:
            self.core.market(batch, frames)
        finally:
            self._outbox = None
            if outbox:
                self._send_all(outbox)

    def _send_all(self, outbox: list[tuple]) -> None:
        if self.several:
            self._route_all(outbox)
            return
        venue = self.venue
        if venue is not None:
            self.log.flush()
            if len(outbox) == 1:
                venue.send(encode(outbox[0][0]))
            else:
                with venue.corked():
                    for message, _ in outbox:
                        venue.send(encode(message))
        now = time.time_ns()
        self.latencies_ns.extend(now - sent for _, sent in outbox if sent is not None)

    def _route_all(self, outbox: list[tuple[dict, int | None, str]]) -> None:
        """`_send_all` with several venues: each venue's orders in one write of its socket."""
        self.log.flush()
        by_venue: dict[str, list] = {}
        for message, _, venue in outbox:
            by_venue.setdefault(venue, []).append(message)
        for venue, messages in by_venue.items():
            stream = self.venue_streams[venue]
            if stream is None:
                continue  # sent again when it reconnects
            with stream.corked():
                for message in messages:
                    stream.send(encode(message))
        now = time.time_ns()
        self.latencies_ns.extend(now - item[1] for item in outbox if item[1] is not None)

    # ---- venue --------------------------------------------------------------------
    def on_venue_messages(self, frames: list[bytes], venue: str = "") -> None:
        """The answers of one read of `venue`, in order: each run of acks, fills, rejects
        and cancels goes to the core together (one journal record); one the core cannot
        handle (a defect) is logged as a bad message, and the fills after it are still
        applied. One write of the log for the read, before anything it shows in the status."""
        with self.log.batch():
            self._venue_messages(frames, venue)

    def _venue_messages(self, frames: list[bytes], venue: str) -> None:
        answers: list = []  # the run of acks, fills and rejects not yet handed over
        said: list | None = []  # and their frames, while each is well-formed (`well_formed_venues`)
        for frame, reply in zip(frames, well_formed_venues(frames)):
            if reply is not None:
                answers.append(reply)
                if said is not None:
                    said.append(frame)
                continue
            try:
                reply = parse_venue(frame)
            except ProtocolError as exc:
                said = self._venue_answers(answers, venue, said)
                self.bad_message("venue", str(exc))
                continue
            if reply.type != "state":
                answers.append(reply)
                said = None  # a valid answer the fast path did not take: the run is journaled as answers
                continue
            said = self._venue_answers(answers, venue, said)
            try:
                self.core.venue_state(reply.positions, reply.open_orders, venue)
                self._trading()
            except Exception as exc:  # a defect: logged, and the answers after it still count
                self.bad_message("venue", f"internal error handling a `state`: {exc!r}")
        self._venue_answers(answers, venue, said)

    def _venue_answers(self, answers: list, venue: str, frames: list | None) -> list:
        """Hand a run of answers to the core, with their frames when each was well-formed,
        and empty it; returns the list for the next run's frames."""
        if answers:
            self.core.venue_replies(answers, venue, frames)
            answers.clear()
            return []
        return [] if frames is None else frames

    # ---- control ------------------------------------------------------------------
    def halt(self, reason: str) -> None:
        """Kill switch: cancel what is pending, flatten, send nothing new until resume."""
        self.core.halt(reason)

    def resume(self) -> None:
        """Trading again; orders still being cancelled count against the limits again."""
        self.core.resume()

    def status(self) -> dict:
        lat = sorted(self.latencies_ns)  # the latest LATENCY_SAMPLES
        pct = {f"p{int(q * 100)}_us": lat[min(len(lat) - 1, int(q * len(lat)))] / 1e3 for q in (0.5, 0.99)} if lat else {}
        equity, peak = self.engine.equity, float(self.engine.session.acct[L.A_PEAK])
        return {"type": "status", "policy": self.policy.name, "policy_hash": self.policy.policy_hash,
                "positions": self.engine.positions(), "open_orders": self.engine.open_orders(),
                "last_prices": self.engine.last_prices(), "equity": equity, "cash": self.engine.cash,
                "drawdown": (peak - equity) / peak if peak > 0 else 0.0, "halted": self.engine.halted,
                "reduce_only": self.core.reduce_only, "risk": self.engine.session.reason_counts,
                "events": self.counters.events, "orders": self.counters.orders, "fills": self.counters.fills,
                "rejects": self.counters.rejects, "cancels": self.counters.cancels,
                "bad_messages": self.counters.bad_messages,
                "unacknowledged": len(self.unacked),
                "reconnects": self.counters.reconnects, "latency": pct, "recent": list(self.log.recent)}

    def on_control_frame(self, frame) -> dict:
        """One control message, answered with the status; its records are one write of
        the log (before the orders it sends, as for a socket read of the feed)."""
        with self.log.batch():
            return self._control(frame)

    def _control(self, frame) -> dict:
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
        """One intent (or model input), answered with its decision; its records are one
        write of the log, before the order it sends and its answer."""
        with self.log.batch():
            return self._intent(frame)

    def _intent(self, frame) -> dict:
        ident = message_id(frame)
        try:
            msg = parse_intent(frame, self.instruments)
            if isinstance(msg, Input):
                self.core.set_input(msg.instrument, msg.name, msg.value)
                return {"type": "ack", "id": msg.id}
            decision, added = self.core.intent(msg.instrument, msg.target, msg.id, msg.limit_price)
        except (ProtocolError, EngineError) as exc:
            self.bad_message("intents", str(exc))
            return {"type": "error", "id": ident, "code": "bad_message", "message": str(exc)}
        chain = steps(decision)  # an exit and its re-entry are two orders: the answer sums them
        return {"type": "decision", "id": msg.id, "instrument": msg.instrument,
                "policy_hash": self.policy.policy_hash, "desired_target": msg.target,
                "approved_target": chain[-1].approved_target, "order_qty": sum(d.order_qty for d in chain),
                "reasons": list(dict.fromkeys([*added, *(r for d in chain for r in d.reasons)]))}

    def allow(self, connection, rate: float) -> bool:
        """A token bucket per `connection` key (a port and a credential): a flood is
        refused message by message."""
        now = time.monotonic()
        tokens, last = self.intent_budget.get(connection, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate)
        ok = tokens >= 1.0
        self.intent_budget[connection] = (tokens - 1.0 if ok else tokens, now)
        return ok

    def _flooded(self, key: tuple, rate: float, closing: bool = False) -> None:
        """Count a message refused for the rate limit; log at most one `flood` bad message
        per credential and second, with how many were refused since the last one (and
        the rest when its connection closes), so a flood cannot grow the log at its pace."""
        counts = self.floods.setdefault(key, [0, 0.0])
        now = time.monotonic()
        if not closing:
            counts[0] += 1
            self.counters.bad_messages += 1  # each refused message counts; the record below counts itself too
        if counts[0] and (closing or now - counts[1] >= 1.0):
            self.counters.bad_messages -= 1
            self.bad_message("flood", f"{counts[0]:,} message(s) over the {key[0]} limit of {rate:g} per second "
                                      f"(credential {key[1]}) refused")
            counts[0], counts[1] = 0, now

    # ---- connections ----------------------------------------------------------------
    async def _keep_connected(self, url: str, source: str, on_messages, on_connect, on_lost, name: str = "") -> None:
        """Keep a client connection to the feed or venue (`source`) `name` up: reconnect
        with exponential backoff and jitter. Each change of its state is reported once
        (`_link_down`, `_link_up`), not each retry."""
        key = _key(source, name)
        delay = RETRY_FIRST_S
        while not self.stop.is_set():
            try:
                stream = await transport.connect(url, on_messages, lambda why: self.bad_message(source, why),
                                                 max_size=MAX_FRAME_BYTES, ca_file=self.config.ca_file,
                                                 headers=self.config.feed_headers if source == "feed"
                                                 else self.config.venue_headers)
            except Exception as exc:  # refused, timed out, a failed handshake: all mean "try again later"
                stream = None
                if not self.stop.is_set():
                    self._link_down(key, f"cannot connect ({_why(exc)})", f"retrying about every {RETRY_MAX_S:g} s")
            if stream is not None:
                delay = RETRY_FIRST_S
                self._link_up(key)
                on_connect(stream)
                try:
                    code = await asyncio.shield(stream.lost)
                finally:
                    on_lost()
                    stream.close()
                if not self.stop.is_set():
                    self._link_down(key, _why_lost(code, stream.dropped), "reconnecting")
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

    def _venue_connected(self, stream: transport.Stream, venue: str = "") -> None:
        """Every open order of `venue` goes to its new connection again
        (`OrderCore.venue_connected`), and a resumed run asks for the venue's state."""
        self.venue_streams[venue] = stream
        if not venue:
            self.venue = stream
        self.core.venue_connected(venue)
        self._trading()

    def _trading(self) -> None:
        """The order path is up (every venue connected), and a resumed state agrees with
        the venues': market data may come in."""
        if not self.core.reconciling and None not in self.venue_streams.values():
            self.venue_up.set()

    def _venue_lost(self, venue: str = "") -> None:
        self.venue_streams[venue] = None
        if not venue:
            self.venue = None
        if not self.stop.is_set():  # stopping: the log may be closed, and a new run starts without connections
            self.core.venue_lost(venue)

    def _feed_connected(self, stream: transport.Stream, feed: str = "") -> None:
        """The feed is up for the order core once every feed is connected (and, with
        several, none is silent)."""
        self.feed_streams[feed] = stream
        if not feed:
            self.feed = stream
        self.feed_heard[feed] = self._monotonic_ns()
        self.feeds_silent.discard(feed)
        if self.feeds_up:
            self.core.feed_connected()

    def _feed_lost(self, feed: str = "") -> None:
        """One feed down is the feed down: its instruments' prices are no longer fresh."""
        was_up = self.feeds_up
        self.feed_streams[feed] = None
        if not feed:
            self.feed = None
        if was_up and not self.stop.is_set():  # as for the venue
            self.core.feed_lost()

    @property
    def feeds_up(self) -> bool:
        """Every feed is connected, and with several, none has fallen silent."""
        return None not in self.feed_streams.values() and not self.feeds_silent

    @property
    def feed_connected(self) -> bool:
        return None not in self.feed_streams.values()

    def _feed_heard(self, feed: str, events_before: int) -> None:
        """With several feeds: after a read of `feed`, note whether it brought a market
        event the core accepted. A feed that was silent is up again only then: messages
        the core refuses (a crossed quote, a stale time) leave it silent, as with one feed;
        the core, which took the read's events while it was down, is then live on them."""
        if self.counters.events > events_before:
            self.feed_heard[feed] = self._monotonic_ns()
            if feed in self.feeds_silent:
                self.feeds_silent.discard(feed)
                announce(f"{_key('feed', feed)} {self.feed_urls[feed]}: market data again")
                if self.feeds_up:
                    self.core.feed_connected()

    def _check_silent_feeds(self) -> None:
        """With several feeds, one can fall silent while the others flow, and the core
        (which hears them together) would stay live on its stale prices: a connected
        feed without an accepted market event for `max_feed_silence` counts as down for
        the core (intents reduce-only) until it brings one, and is said on stderr."""
        now = self._monotonic_ns()
        limit = round(self.config.max_feed_silence * 1e9)
        for name, stream in self.feed_streams.items():
            if stream is None or name in self.feeds_silent or now - self.feed_heard[name] < limit:
                continue
            was_up = self.feeds_up
            self.feeds_silent.add(name)
            announce(f"{_key('feed', name)} {self.feed_urls[name]}: no market data for "
                     f"{(now - self.feed_heard[name]) / 1e9:.1f} s; intents are reduce-only")
            if was_up:
                self.core.feed_lost()

    async def _watch_feed(self) -> None:
        """Ask the core, a few times per `max_feed_silence`, whether the feed is live, so
        a silence is logged when it starts even when no intent asks; with several feeds,
        check each for a silence of its own."""
        every = min(1.0, self.config.max_feed_silence / 4)
        while not self.stop.is_set():
            await asyncio.sleep(every)
            if not self._one_feed:
                self._check_silent_feeds()
            self.core.feed_live()

    async def _feed_after_venue(self, wait_s: float = VENUE_FIRST_S, name: str = "") -> None:
        """Market data of feed `name` is consumed once the order path is up (or after
        `wait_s`, with orders queued until the venues answer)."""
        feed = self.links[_key("feed", name)]
        if not self.venue_up.is_set():
            feed.state = "waiting"
        try:
            await asyncio.wait_for(self.venue_up.wait(), wait_s)
        except asyncio.TimeoutError:
            pass
        feed.state = "connecting"
        await self._keep_connected(self.feed_urls[name], "feed",
                                   partial(self.on_feed_messages, feed=name) if name else self.on_feed_messages,
                                   partial(self._feed_connected, feed=name), partial(self._feed_lost, name), name)

    async def _listen(self, address, on_frame, source: str):
        """A guarded listener (`security.Guard`): a connection is admitted by the role of its
        token, or closed with code 1008; a control message is checked before it acts, and
        each control action is logged as an `access` record."""
        from websockets.asyncio.server import serve
        from websockets.exceptions import ConnectionClosed

        guard = self.config.guard
        if guard is None:  # no credentials: nobody is admitted (`run` refuses a listener without them)
            guard = self.config.guard = security.Guard(security.Credentials([]))

        async def handler(ws):
            identity = await security.admit(ws, guard, source)
            self._summarise_failures()
            if identity is None:
                return
            key, rate = (source, identity.credential), MESSAGES_PER_SECOND[source]
            try:
                async for frame in ws:
                    if self.stop.is_set():
                        reply = {"type": "error", "id": message_id(frame), "code": "stopping",
                                 "message": "the runtime is stopping; nothing was done"}
                    elif not self.allow(key, rate):
                        self._flooded(key, rate)
                        reply = {"type": "error", "id": message_id(frame), "code": "bad_message",
                                 "message": f"over {rate:g} messages per second"}
                    elif source == "control":
                        check = guard.check(identity, frame)
                        reply = check.refusal or on_frame(frame)
                        record = check.record(reply)
                        if record is not None:
                            self.log.write("access", **record)
                    else:
                        reply = on_frame(frame)
                    await ws.send(encode(reply).decode())
            except ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == 1009:
                    self.bad_message(source, f"frame over the {MAX_CLIENT_FRAME_BYTES:,}-byte limit: "
                                             "connection closed with code 1009")
            finally:
                self._flooded(key, rate, closing=True)

        host, port = address
        tls = security.server_context(self.config.tls_cert, self.config.tls_key) if self.config.tls_cert else None
        return await serve(handler, host, port, max_size=MAX_CLIENT_FRAME_BYTES, compression=None, ssl=tls,
                           open_timeout=security.HANDSHAKE_TIMEOUT_S)

    def _summarise_failures(self, force: bool = False) -> None:
        """Failed authentications to the log: one `auth_failures` record per interval at most."""
        if self.config.guard is None:
            return
        record = self.config.guard.summary.take(force)
        if record is not None:
            self.log.write("auth_failures", **record)

    async def _watch_failures(self) -> None:
        """The failures of a burst are written at the end of their interval, not at the next failure."""
        while not self.stop.is_set():
            await asyncio.sleep(security.SUMMARY_INTERVAL_S)
            self._summarise_failures()

    async def run(self) -> dict:
        """Trade until `stop` is set (SIGINT, SIGTERM, `duration`), then close the
        connections, the listeners and the log; returns `status()`. Raises LogFailed,
        once all that is done, when the decision log failed (the run stopped on it)."""
        with self._loop_lock:
            loop = self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
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
        for name, url in self.venue_urls.items():
            tasks.append(asyncio.create_task(self._keep_connected(
                url, "venue", partial(self.on_venue_messages, venue=name) if name else self.on_venue_messages,
                partial(self._venue_connected, venue=name),
                partial(self._venue_lost, name), name)))
        tasks += [asyncio.create_task(self._feed_after_venue(name=name)) for name in self.feed_urls]
        tasks.append(asyncio.create_task(self._watch_feed()))
        if servers:
            tasks.append(asyncio.create_task(self._watch_failures()))
        try:
            if self.config.duration is not None:
                await asyncio.wait_for(self.stop.wait(), self.config.duration)
            else:
                await self.stop.wait()
        except asyncio.TimeoutError:
            pass
        if self.config.flatten_on_exit and self.log_error is None:  # with no log, no order may leave
            try:
                await self.flatten()
            except OSError:
                if self.log_error is None:
                    raise
        self.stop.set()
        for stream in (*self.feed_streams.values(), *self.venue_streams.values()):
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
        if servers:
            self._summarise_failures(force=True)
        summary = self.status()
        try:
            self.log.close()
        except OSError:
            if self.log_error is None:  # `_log_failed` took every failure of the log's own
                raise
        if self.log_error is not None:
            raise LogFailed(self.log_error, summary)
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
