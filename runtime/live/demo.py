"""The live part of `make demo`: replay feed, paper venue and runtime on loopback, with
a terminal view of positions, equity, orders, risk state, rejects and latency."""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from compiler.build import CompiledPolicy

from . import eventloop, paper, replay, view
from .runner import LiveRuntime, RunConfig

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def _run(policy: CompiledPolicy, data: Path, log: Path, rate: float) -> dict:
    feed_port, venue_port = _free_port(), _free_port()
    rec = replay.load_recording([(policy.instruments[0], str(data))])
    venue = paper.PaperVenue(fees_bps=policy.checked.account["fees_bps"])
    ready, venue_ready, stop_venue = asyncio.Event(), asyncio.Event(), asyncio.Event()
    feed = asyncio.create_task(replay.serve(rec, HOST, feed_port, rate=rate, clients_needed=2, ready=ready))
    await ready.wait()
    venue_task = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{feed_port}",
                                                 ready=venue_ready, stop=stop_venue))
    await venue_ready.wait()
    rt = LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed_port}", f"ws://{HOST}:{venue_port}", log_path=str(log),
                                       flatten_on_exit=True))
    run = asyncio.create_task(rt.run())
    await view.watch(rt, feed, venue)
    await asyncio.sleep(0.2)
    rt.stop.set()
    status = await run
    stop_venue.set()
    await venue_task
    return {**status, "venue_latency": venue.percentiles(), "venue_fills": len(venue.fills)}


def run_live_demo(policy: CompiledPolicy, data: Path, log: Path, rate: float = 1000.0) -> dict:
    log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    status = eventloop.run(_run(policy, data, log, rate))
    status["elapsed_s"] = time.perf_counter() - t0
    return status
