"""The live part of `make demo`: replay feed, paper venue and runtime on loopback, with
a terminal view of positions, equity, orders, risk state, rejects and latency."""
from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

from compiler.build import CompiledPolicy

from . import paper, replay
from .runner import LiveRuntime, RunConfig

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _view(rt: LiveRuntime, venue: paper.PaperVenue) -> str:
    s = rt.status()
    pos = ", ".join(f"{k} {v:+g}" for k, v in s["positions"].items())
    lat = s["latency"]
    venue_lat = venue.percentiles()
    return (f"events {s['events']:>6,}  orders {s['orders']:>4}  fills {s['fills']:>4}  rejected msgs {s['bad_messages']}"
            f"  | position {pos}  equity {s['equity']:>12,.2f}  {'HALTED' if s['halted'] else 'trading'}"
            f"  | tick->order p50 {lat.get('p50_us', float('nan')):.0f}us"
            f" p99 {lat.get('p99_us', float('nan')):.0f}us (venue p50 {venue_lat.get('p50_us', float('nan')):.0f}us)")


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
    tty = sys.stdout.isatty()
    while not feed.done():
        await asyncio.sleep(0.25)
        line = _view(rt, venue)
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
    await asyncio.sleep(0.2)
    rt.stop.set()
    status = await run
    stop_venue.set()
    await venue_task
    if tty:
        print()
    return {**status, "venue_latency": venue.percentiles(), "venue_fills": len(venue.fills)}


def run_live_demo(policy: CompiledPolicy, data: Path, log: Path, rate: float = 1000.0) -> dict:
    log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    status = asyncio.run(_run(policy, data, log, rate))
    status["elapsed_s"] = time.perf_counter() - t0
    return status
