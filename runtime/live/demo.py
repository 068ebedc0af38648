"""The live part of `make demo`: replay feed, paper venue and runtime on loopback, with
a terminal view of positions, equity, orders, risk state, rejects and latency.
`loopback` is the same wiring for anything else that wants the three on one machine."""
from __future__ import annotations

import asyncio
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from policyc.compiler.build import CompiledPolicy

from . import eventloop, paper, replay, view
from .runner import LiveRuntime, RunConfig

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Loopback:
    runtime: LiveRuntime
    feed: asyncio.Task          # the replay; its result is the number of messages sent
    venue: paper.PaperVenue
    run: asyncio.Task           # the runtime; its result is the final status


@asynccontextmanager
async def loopback(policy: CompiledPolicy, recording: replay.Recording, log: Path, rate: float,
                   fees_bps: float = 0.0, **config):
    """A replay feed, a paper venue following it and a runtime between them, on
    127.0.0.1; the feed starts once both are connected. On exit the runtime stops (its
    status is `run.result()`), then the venue and the feed."""
    feed_port, venue_port = free_port(), free_port()
    venue = paper.PaperVenue(fees_bps=fees_bps)
    feed_ready, venue_ready, stop_venue = asyncio.Event(), asyncio.Event(), asyncio.Event()
    feed = asyncio.create_task(replay.serve(recording, HOST, feed_port, rate=rate, clients_needed=2,
                                            ready=feed_ready))
    await feed_ready.wait()
    venue_task = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{feed_port}",
                                                 ready=venue_ready, stop=stop_venue))
    await venue_ready.wait()
    runtime = LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed_port}", f"ws://{HOST}:{venue_port}",
                                            log_path=str(log), **config))
    stack = Loopback(runtime, feed, venue, asyncio.create_task(runtime.run()))
    try:
        yield stack
    finally:
        runtime.stop.set()
        await stack.run
        stop_venue.set()
        await venue_task
        if not feed.done():
            feed.cancel()


async def _run(policy: CompiledPolicy, data: Path, log: Path, rate: float) -> dict:
    rec = replay.load_recording([(policy.instruments[0], str(data))])
    async with loopback(policy, rec, log, rate, fees_bps=policy.checked.account["fees_bps"],
                        flatten_on_exit=True) as stack:
        await view.watch(stack.runtime, stack.feed, stack.venue)
        await asyncio.sleep(0.2)
    return {**stack.run.result(), "venue_latency": stack.venue.percentiles(), "venue_fills": len(stack.venue.fills)}


def run_live_demo(policy: CompiledPolicy, data: Path, log: Path, rate: float = 1000.0) -> dict:
    log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    status = eventloop.run(_run(policy, data, log, rate))
    status["elapsed_s"] = time.perf_counter() - t0
    return status
