"""Live runtime figures for `make bench`, each next to a bare websockets baseline measured
in the same run: tick-to-order latency vs an echo round trip, and market-data
throughput through the runtime vs a bare client receiving the same frames."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
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
    async with serve(echo, HOST, port, compression=None):
        async with connect(f"ws://{HOST}:{port}", compression=None) as ws:
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


def _spawn(*args) -> "subprocess.Popen":
    exe = Path(sys.executable).parent / "policyc"
    return subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _stop(proc) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


async def _runtime(policy, feed_port: int, venue_port: int, n: int, log: Path):
    from runtime.live.runner import LiveRuntime, RunConfig

    rt = LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed_port}", f"ws://{HOST}:{venue_port}", log_path=str(log)))
    run = asyncio.create_task(rt.run())
    while rt.counters.events == 0:
        await asyncio.sleep(0.001)
    t0 = time.perf_counter()
    while rt.counters.events < n and time.perf_counter() - t0 < 120:
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    rt.stop.set()
    await run
    return rt, (rt.counters.events - 1) / elapsed


def _live_run(policy, data: Path, n: int, rate: float | None, log: Path):
    """replay-feed and paper-venue as their own processes, the runtime in this one."""
    feed_port, venue_port = _port(), _port()
    pace = ["--rate", str(rate)] if rate else []
    feed = _spawn("replay-feed", "--data", f"SYN={data}", "--listen", f"{HOST}:{feed_port}", "--clients", "2", *pace)
    _wait_port(feed_port)
    venue = _spawn("paper-venue", "--listen", f"{HOST}:{venue_port}", "--feed", f"ws://{HOST}:{feed_port}")
    _wait_port(venue_port)
    try:
        rt, rate_got = asyncio.run(_runtime(policy, feed_port, venue_port, n, log))
    finally:
        venue_err = _stop(venue)
        _stop(feed)
    lines = [l for l in venue_err.splitlines() if l.startswith("{")]
    return rt, rate_got, (json.loads(lines[-1]) if lines else {})


async def _bare_client(port: int, n: int) -> float:
    from websockets.asyncio.client import connect

    got = 0
    async with connect(f"ws://{HOST}:{port}", max_size=1 << 20, compression=None) as ws:
        async for frame in ws:
            json.loads(frame)
            got += 1
            if got == 1:
                t0 = time.perf_counter()
            if got == n:
                break
    return (n - 1) / (time.perf_counter() - t0)


def _bare_receive(data: Path, n: int) -> float:
    """Events per second a bare websockets client takes from the same replay feed."""
    port = _port()
    feed = _spawn("replay-feed", "--data", f"SYN={data}", "--listen", f"{HOST}:{port}", "--clients", "1")
    _wait_port(port)
    try:
        return asyncio.run(_bare_client(port, n))
    finally:
        _stop(feed)


def bench_live() -> list[list]:
    from compiler.build import compile_policy
    from dsl.document import parse_policy_text

    policy = compile_policy(parse_policy_text(POLICY, "flip.yaml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        echo = asyncio.run(_echo_round_trip(3000))
        e50, e99 = _pct(echo)
        rows.append(["bare websockets echo round trip (3,000 msgs, one process)", f"p50 {e50:,.0f} us",
                     f"p99 {e99:,.0f} us", "1.00"])
        rt, _, venue = _live_run(policy, _recording(3000, tmp), 3000, 500.0, tmp / "lat.jsonl")
        lat = venue.get("latency", {})
        if lat:
            rows.append([f"tick-to-order at the paper venue ({lat['n']:,} orders, feed at 500 ev/s)",
                         f"p50 {lat['p50_us']:,.0f} us", f"p99 {lat['p99_us']:,.0f} us",
                         f"{lat['p50_us'] / e50:.2f} (p50)"])
        big = _recording(50_000, tmp)
        bare = _bare_receive(big, 50_000)
        rt, got, _ = _live_run(policy, big, 50_000, None, tmp / "tput.jsonl")
        rows.append(["bare websockets client receiving the replay feed (50,000 events)", f"{bare:,.0f} ev/s", "", "1.00"])
        rows.append([f"runtime through the kernel, orders flowing ({rt.counters.orders:,} orders)",
                     f"{got:,.0f} ev/s", "", f"{got / bare:.2f}"])
    return rows
