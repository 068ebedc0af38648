"""Loopback helpers shared by the live tests: every socket stays on 127.0.0.1.

The live tests wait on conditions, never on time: a busy machine may stall any of the
processes or the event loop for a long while, so a sleep that is "long enough" or a
deadline that is "short enough" is a flaky test. Timeouts here are failsafes only
(`FAILSAFE_S`): generous, and reached only when the awaited thing will never happen.
Where the code under test itself acts on time (a venue's latency, a keepalive ping),
the test moves the event loop's clock itself (`Clock`)."""
from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

from websockets.protocol import State

from policyc.runtime.live import replay
from policyc.runtime.live.demo import HOST, free_port  # noqa: F401  (the tests import them from here)
from policyc.runtime.live.protocol import encode

FAILSAFE_S = 60.0  # only ever reached when a test is going to fail anyway
ORCL_DATA = Path(__file__).resolve().parent.parent / "data" / "orcl-1995-2014.csv"
#: A policy that trades often on ORCL's daily bars: the live processes' tests run it.
FLIP = """
policy: flip
version: 1
instruments: [ORCL]
params:
  fast: 2
  slow: 4
features:
  f: ema(close, fast)
  s: sma(close, slow)
signals:
  - when: crosses_above(f, s)
    target: 10
  - when: crosses_below(f, s)
    target: 0
risk:
  max_position: 100
  max_order_qty: 100
"""


def policyc_command(*args) -> list[str]:
    """The argv of the installed `policyc` command (beside this Python) with `args`."""
    return [str(Path(sys.executable).parent / "policyc"), *map(str, args)]


def wait_port(port: int, timeout: float = FAILSAFE_S, proc=None) -> None:
    """Block until something listens on HOST:port (a process started for the test
    has come up), polling; fail early if `proc` has already exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"process exited with {proc.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {HOST}:{port} after {timeout} s")
            time.sleep(0.02)


async def until(predicate, timeout: float = FAILSAFE_S, poll: float = 0.002):
    """Wait until `predicate()` is true and return its value; the timeout is a failsafe."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s: {getattr(predicate, '__qualname__', predicate)}")
        await asyncio.sleep(poll)


class Clock:
    """An event loop whose clock the test moves: `loop.time()` is the monotonic clock
    plus every `advance` so far. Timers (`call_later`, `asyncio.sleep`, timeouts) fall
    due when the test moves the clock past them, so code that acts after a delay (a
    venue's latency, a keepalive ping) acts when the test says, however busy the
    machine: use delays far longer than any stall, and `advance` over them.

    Every single `advance` should stay under 20 s while websockets' own keepalive runs
    (ping every 20 s, pong due within 20 s): one jump may start a ping, two in a row
    could time it out."""

    def __init__(self):
        self.skew = 0.0

    def run(self, main):
        """`asyncio.run(main)` on a loop with this clock."""
        def new_loop():
            loop = asyncio.new_event_loop()
            monotonic = loop.time
            loop.time = lambda: monotonic() + self.skew
            return loop

        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(main)

    async def advance(self, seconds: float) -> None:
        """Move the clock on, and return once every callback the move made due has run."""
        self.skew += seconds
        loop = asyncio.get_running_loop()
        after = loop.create_future()
        loop.call_later(0, after.set_result, None)  # due last: after every timer due now
        await after


def runtime_side(clients, runtime):
    """The feed server's end of the runtime's feed connection, once both ends are open
    (else None: not connected yet, or closing)."""
    stream = runtime.feed
    if stream is None or stream.protocol.state is not State.OPEN or stream.transport is None:
        return None
    port = stream.transport.get_extra_info("sockname")[1]
    for ws in list(clients):
        if ws.remote_address[1] == port and ws.state is State.OPEN:
            return ws
    return None


class Lockstep:
    """Stands in for `replay.broadcast` (monkeypatch it in): the replay feed sends its
    recording one event at a time, first to the paper venue, then, once the venue has
    taken that price, to the runtime; the next event leaves once the runtime has taken
    this one and every order it caused is done (filled or refused).

    A feed paced by the wall clock races the venue against the runtime: after a stall
    it sends a burst, the venue reads the next event before the runtime's order for
    this one arrives, and fills it at the wrong price. In lockstep the venue always
    fills at the price of the event the order was decided on, as the backtest does.

    `pause_after=k`: after the k-th event the feed sets `paused` and waits for `resume`
    (the test acts on the runtime at a known point of the stream)."""

    def __init__(self, pause_after: int | None = None):
        self.stack = None
        self.attached = asyncio.Event()
        self.pause_after = pause_after
        self.paused, self.resume = asyncio.Event(), asyncio.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def attach(self, stack) -> None:
        """The loopback stack (`runtime.live.demo.Loopback`) whose venue and runtime to wait for."""
        self.stack = stack
        self.attached.set()

    async def broadcast(self, rec, clients, sent, fmt="native", speed=None, rate=None, loop=False) -> None:
        try:
            await asyncio.wait_for(self.attached.wait(), FAILSAFE_S)
            rt, venue = self.stack.runtime, self.stack.venue
            ours = await until(lambda: runtime_side(clients, rt))
            for k in range(len(rec)):
                msg = replay.message(rec, k, fmt, time.time_ns())
                frame = encode(msg).decode()
                price = (msg["close"] if "close" in msg else msg["price"] if "price" in msg
                         else (msg["bid"] + msg["ask"]) / 2)  # a quote: the venue prices it at its midpoint
                for ws in [ws for ws in clients - {ours} if ws.state is State.OPEN]:  # the venue's
                    await ws.send(frame)
                await until(lambda: venue.last_price.get(msg["instrument"]) == price)
                before = rt.counters.events + rt.counters.bad_messages
                await ours.send(frame)
                sent[0] += 1
                self.sent += 1
                await until(lambda: rt.counters.events + rt.counters.bad_messages == before + 1 and not rt.open)
                if self.sent == self.pause_after:
                    self.paused.set()
                    await self.resume.wait()
                    await until(lambda: not rt.open)
        except BaseException as exc:
            self.error = exc
            raise


async def feeds_and_venues(recordings: dict, venues: dict, stop: asyncio.Event) -> tuple[dict, dict, list]:
    """One replay feed per name of `recordings` (each served to two clients, its venue and
    the runtime, at 100 events a second, looping) and one paper venue per name of
    `venues`, following the feed of its name; started and listening when this returns.
    Returns (feed port by name, venue port by name, the servers' tasks, which end once
    `stop` is set)."""
    from policyc.runtime.live import paper

    feed_ports = {name: free_port() for name in recordings}
    venue_ports = {name: free_port() for name in venues}
    servers = []
    for name, rec in recordings.items():
        ready = asyncio.Event()
        servers.append(asyncio.create_task(replay.serve(rec, HOST, feed_ports[name], name, rate=100, loop=True,
                                                        clients_needed=2, ready=ready, stop=stop)))
        await ready.wait()
    for name, venue in venues.items():
        ready = asyncio.Event()
        servers.append(asyncio.create_task(paper.serve(venue, HOST, venue_ports[name],
                                                       f"ws://{HOST}:{feed_ports[name]}", ready=ready, stop=stop)))
        await ready.wait()
    return feed_ports, venue_ports, servers


def named_urls(ports: dict) -> dict:
    """{name: ws URL} of `feeds_and_venues`' ports, for RunConfig's `feeds` and `venues`."""
    return {name: f"ws://{HOST}:{port}" for name, port in ports.items()}
