"""Live runtime figures for `make bench`, each next to a bare websockets baseline measured
in the same run: tick-to-order latency vs an echo round trip, and market-data
throughput through the runtime vs a bare client receiving the same frames."""
from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
POLICY = """
policy: flip
version: 1
instruments: [SYN]
features:
  up: close > close[1]
signals:
  - when: up
    target: 10
  - when: not up
    target: -10
risk:
  max_position: 10
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pct(xs_ns) -> tuple[float, float]:
    xs = np.sort(np.asarray(xs_ns, dtype=float)) / 1e3
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 99))


async def _echo_round_trip(n: int) -> list[int]:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for frame in ws:
            await ws.send(frame)

    port = _port()
    out = []
    async with serve(echo, HOST, port):
        async with connect(f"ws://{HOST}:{port}") as ws:
            for k in range(n):
                t0 = time.time_ns()
                await ws.send(json.dumps({"type": "tick", "instrument": "SYN", "ts": k, "price": 1.0, "sent_ns": t0}))
                await ws.recv()
                out.append(time.time_ns() - t0)
    return out


def _recording(n: int, tmp: Path) -> Path:
    rng = np.random.default_rng(3)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    stamps = np.datetime_as_string(np.datetime64("2024-01-02T00:00") + np.arange(n).astype("timedelta64[s]"))
    path = tmp / "syn.csv"
    path.write_text("Datetime,Close\n" + "".join(f"{t},{p:.5f}\n" for t, p in zip(stamps, price)))
    return path


async def _stack(policy, data: Path, rate: float | None, log: Path):
    from runtime.live import paper, replay
    from runtime.live.runner import LiveRuntime, RunConfig

    feed_port, venue_port = _port(), _port()
    rec = replay.load_recording([("SYN", str(data))])
    venue = paper.PaperVenue()
    ready, venue_ready, stop_venue = asyncio.Event(), asyncio.Event(), asyncio.Event()
    feed = asyncio.create_task(replay.serve(rec, HOST, feed_port, rate=rate, clients_needed=2, ready=ready))
    await ready.wait()
    venue_task = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{feed_port}",
                                                 ready=venue_ready, stop=stop_venue))
    await venue_ready.wait()
    rt = LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed_port}", f"ws://{HOST}:{venue_port}", log_path=str(log)))
    run = asyncio.create_task(rt.run())
    t0 = time.perf_counter()
    await feed
    while rt.counters.events < len(rec) and time.perf_counter() - t0 < 120:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    rt.stop.set()
    await run
    stop_venue.set()
    await venue_task
    return rt, venue, elapsed


async def _bare_receive(data: Path) -> float:
    """Events per second a bare websockets client takes from the same replay feed."""
    from websockets.asyncio.client import connect

    from runtime.live import replay

    port = _port()
    rec = replay.load_recording([("SYN", str(data))])
    ready = asyncio.Event()
    feed = asyncio.create_task(replay.serve(rec, HOST, port, clients_needed=1, ready=ready))
    await ready.wait()
    got = 0
    async with connect(f"ws://{HOST}:{port}", max_size=1 << 20) as ws:
        t0 = time.perf_counter()
        async for frame in ws:
            json.loads(frame)
            got += 1
            if got == len(rec):
                break
        elapsed = time.perf_counter() - t0
    await feed
    return got / elapsed


def bench_live() -> list[list]:
    from compiler.build import compile_policy
    from dsl.document import parse_policy_text

    policy = compile_policy(parse_policy_text(POLICY, "flip.yaml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        echo = asyncio.run(_echo_round_trip(3000))
        e50, e99 = _pct(echo)
        rt, venue, _ = asyncio.run(_stack(policy, _recording(3000, tmp), 1000.0, tmp / "lat.jsonl"))
        v50, v99 = _pct(venue.latencies_ns)
        rows.append(["bare websockets echo round trip (3,000 msgs)", f"p50 {e50:,.0f} us", f"p99 {e99:,.0f} us", "1.00"])
        rows.append([f"tick-to-order at the paper venue ({len(venue.latencies_ns):,} orders, 1,000 ev/s)",
                     f"p50 {v50:,.0f} us", f"p99 {v99:,.0f} us", f"{v50 / e50:.2f} (p50)"])
        big = _recording(50_000, tmp)
        bare = asyncio.run(_bare_receive(big))
        rt, venue, elapsed = asyncio.run(_stack(policy, big, None, tmp / "tput.jsonl"))
        runtime_rate = rt.counters.events / elapsed
        rows.append(["bare websockets client receiving the feed (50,000 events)", f"{bare:,.0f} ev/s", "", "1.00"])
        rows.append([f"runtime through the kernel, orders flowing ({rt.counters.orders:,} orders)",
                     f"{runtime_rate:,.0f} ev/s", "", f"{runtime_rate / bare:.2f}"])
    return rows
