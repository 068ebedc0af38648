"""The live part of `make demo`: replay feed, paper venue and runtime on loopback, with
a terminal view of positions, equity, orders, risk state, rejects and latency.
`loopback` is the same wiring for anything else that wants the three on one machine.

The demo's feed runs in lockstep (`Lockstep`), so that the live run decides and fills
as `backtest --fill same` does on the same file (or as the backtest's other fill models
do, with the paper venue in that model), and the two can be compared order by order; a
feed paced by the clock (`rate`) shows what happens without that."""
from __future__ import annotations

import asyncio
import socket
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy

from . import eventloop, paper, replay, view
from .protocol import encode
from .runner import LiveRuntime, RunConfig

HOST = "127.0.0.1"
#: Seconds the lockstep feed waits for one event to be handled before it sends the next
#: anyway (counted in `stalls`): far longer than any event takes, reached only when the
#: runtime or the venue has stopped answering.
STALL_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def _settled(condition, timeout: float) -> bool:
    """Yield to the event loop until `condition()` holds (True) or `timeout` s pass
    (False). Yielding without sleeping keeps the loop polling the sockets: each event of
    the lockstep feed takes a few hundred microseconds, not a timer's tick."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0)
    return True


class Lockstep:
    """A replay feed that sends one event at a time: to the paper venue first, then, once
    the venue has taken it and the runtime has applied the fills it made, to the
    runtime; the next event leaves once the runtime has handled this one and every order
    it caused is filled, refused, or acknowledged and resting in the venue's book for a
    later event (`next`, `next-open`, `latency`). The venue then fills every order at the
    event the backtest's fill model names: under `same` the one it was decided on.

    A feed paced by the clock races the venue against the runtime: after any stall of
    the machine it sends a burst, the venue reads the next event before the runtime's
    order for this one arrives, and fills the order at that later price, differently on
    every run.

    It serves the venue and the runtime on ports of their own (`venue_url`,
    `runtime_url`), each connection held open until `close`."""

    def __init__(self, recording: replay.Recording):
        self.recording = recording
        self.venue_port, self.runtime_port = free_port(), free_port()
        self.venue_url, self.runtime_url = f"ws://{HOST}:{self.venue_port}", f"ws://{HOST}:{self.runtime_port}"
        self.stalls = 0
        self._clients: dict[str, asyncio.Future] = {}

    async def open(self, stack: AsyncExitStack) -> None:
        """Listen on both ports until `stack` closes."""
        from websockets.asyncio.server import serve as ws_serve

        loop = asyncio.get_running_loop()
        for side, port in (("venue", self.venue_port), ("runtime", self.runtime_port)):
            self._clients[side] = connected = loop.create_future()

            async def handler(websocket, connected=connected):
                if not connected.done():
                    connected.set_result(websocket)
                await websocket.wait_closed()

            await stack.enter_async_context(ws_serve(handler, HOST, port, compression=None))

    async def run(self, runtime: LiveRuntime, venue: paper.PaperVenue) -> int:
        """Send the whole recording in lockstep; the number of events sent."""
        to_venue, to_runtime = await self._clients["venue"], await self._clients["runtime"]
        rec, counters = self.recording, runtime.counters

        def resting() -> bool:
            """Every order open in the runtime is acknowledged and waits in the venue's book."""
            return all(oid in venue.behind and oid not in runtime.unacked for oid in runtime.open)

        for k in range(len(rec)):
            msg = replay.message(rec, k, "native", time.time_ns())
            frame, name = encode(msg).decode(), msg["instrument"]
            await to_venue.send(frame)
            taken = await _settled(lambda: venue.last_ts.get(name) == msg["ts"] and resting(), STALL_S)
            before = counters.events + counters.bad_messages
            await to_runtime.send(frame)
            handled = await _settled(lambda: counters.events + counters.bad_messages > before and resting(),
                                     STALL_S)
            self.stalls += not (taken and handled)
        return len(rec)


@dataclass
class Loopback:
    runtime: LiveRuntime
    feed: asyncio.Task          # the replay; its result is the number of messages sent
    venue: paper.PaperVenue
    run: asyncio.Task           # the runtime; its result is the final status
    lockstep: Lockstep | None = None


@asynccontextmanager
async def loopback(policy: CompiledPolicy, recording: replay.Recording, log: Path, rate: float | None,
                   fees_bps: float = 0.0, fill_mode: int = L.FILL_SAME, fill_latency_ns: int = 0, **config):
    """A replay feed, a paper venue following it and a runtime between them, on
    127.0.0.1. `rate`: the feed sends that many events a second, starting once both are
    connected; None: it runs in lockstep with them (`Lockstep`). `fill_mode` and
    `fill_latency_ns`: the venue's fill model (`paper.PaperVenue`). On exit the runtime
    stops (its status is `run.result()`), then the venue and the feed."""
    async with AsyncExitStack() as servers:
        lockstep = None
        if rate is None:
            lockstep = Lockstep(recording)
            await lockstep.open(servers)
            venue_feed, runtime_feed = lockstep.venue_url, lockstep.runtime_url
        else:
            feed_port = free_port()
            feed_ready = asyncio.Event()
            feed = asyncio.create_task(replay.serve(recording, HOST, feed_port, rate=rate, clients_needed=2,
                                                    ready=feed_ready))
            await feed_ready.wait()
            venue_feed = runtime_feed = f"ws://{HOST}:{feed_port}"
        venue_port = free_port()
        venue = paper.PaperVenue(fees_bps=fees_bps, fill_mode=fill_mode, fill_latency_ns=fill_latency_ns)
        venue_ready, stop_venue = asyncio.Event(), asyncio.Event()
        venue_task = asyncio.create_task(paper.serve(venue, HOST, venue_port, venue_feed, ready=venue_ready,
                                                     stop=stop_venue))
        await venue_ready.wait()
        runtime = LiveRuntime(policy, RunConfig(runtime_feed, f"ws://{HOST}:{venue_port}", log_path=str(log),
                                                **config))
        run = asyncio.create_task(runtime.run())
        if lockstep is not None:
            feed = asyncio.create_task(lockstep.run(runtime, venue))
        stack = Loopback(runtime, feed, venue, run, lockstep)
        try:
            yield stack
        finally:
            runtime.stop.set()
            await stack.run
            stop_venue.set()
            await venue_task
            if not feed.done():
                feed.cancel()


async def _run(policy: CompiledPolicy, data: Path, log: Path, rate: float | None, flatten: bool, fill_mode: int,
               fill_latency_ns: int) -> dict:
    rec = replay.load_recording([(policy.instruments[0], str(data))])
    async with loopback(policy, rec, log, rate, fees_bps=policy.checked.account["fees_bps"], fill_mode=fill_mode,
                        fill_latency_ns=fill_latency_ns, flatten_on_exit=flatten) as stack:
        await view.watch(stack.runtime, stack.feed, stack.venue, total=len(rec))
        if stack.lockstep is None:
            await asyncio.sleep(0.2)  # the last orders' fills, which a clock-paced feed did not wait for
    return {**stack.run.result(), "venue_latency": stack.venue.percentiles(), "venue_fills": len(stack.venue.fills),
            "stalls": stack.lockstep.stalls if stack.lockstep is not None else None}


def run_live_demo(policy: CompiledPolicy, data: Path, log: Path, rate: float | None = None,
                  flatten: bool | None = None, fill_mode: int = L.FILL_SAME, fill_latency_ns: int = 0) -> dict:
    """Trade `policy` on the replayed `data` over loopback, logging to `log`; the
    runtime's final status, with the venue's latency percentiles and fill count, the
    lockstep feed's `stalls` (None for a clock-paced feed) and `elapsed_s`. `rate`: as
    `loopback`. `flatten`: liquidate when the feed ends; by default only with a
    clock-paced feed (in lockstep the run ends holding what the backtest holds).
    `fill_mode`, `fill_latency_ns`: the paper venue's fill model, as `loopback`."""
    log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    status = eventloop.run(_run(policy, data, log, rate, rate is not None if flatten is None else flatten,
                                fill_mode, fill_latency_ns))
    status["elapsed_s"] = time.perf_counter() - t0
    return status
