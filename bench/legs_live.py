"""Detection to both orders, live: the time from a quote that opens a cross-venue price
difference to both legs of the arbitrage at their venues, next to the echo round trip
(bench/live.py) measured in the same run.

Two `policyc replay-feed` processes (one per venue, native quotes, which carry `sent_ns`)
feed the runtime in this process; two venue processes (`--worker legs-venue`) take its
orders, fill each at its limit price and note when each arrived. Every tenth quote of the
second venue is a dislocation of 20 bps, alternately above and below the first venue's,
so the policy flips both legs: one IOC limit order on each venue per dislocation. For each
dislocation the figure is the later leg's arrival minus the `sent_ns` of the quote that
opened it (both legs carry it as `event_sent_ns`); p50 and p99 over the dislocations.

Internal: `legs_live.py --worker legs-venue PORT` is the venue process.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from contextlib import suppress
from pathlib import Path

from live import HOST, RATE, _echo_cross_process, _pct, _policyc, _port, _run, _spawn, _stop, _wait_port

QUOTES = 2_500           # per venue, at RATE each
DISLOCATE_EVERY = 10     # every tenth quote of the second venue
VENUES = ("binance", "coinbase")
SYMBOLS = {"binance": "binance:BTCUSDT", "coinbase": "coinbase:BTC-USD"}

POLICY = """
policy: legs_latency
version: 1
instruments: {bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}
params:
  edge: 0.1%
signals:
  - when: cb.bid > bn.ask * (1 + edge)
    legs:
      bn: {target: 1, limit: bn.ask * 1.001}
      cb: {target: -1, limit: cb.bid * 0.999}
  - when: bn.bid > cb.ask * (1 + edge)
    legs:
      bn: {target: -1, limit: bn.bid * 0.999}
      cb: {target: 1, limit: cb.ask * 1.001}
risk:
  max_position: 1
  max_leg_imbalance: 1000
  price_collar: 1%
"""


def _quotes(folder: Path) -> dict[str, Path]:
    """One quote file per venue, a quote a second from 2024-01-02: both at 99.99 / 100.01;
    every DISLOCATE_EVERY-th of the second venue's 20 bps above, then below, in turn."""
    import numpy as np

    stamps = np.datetime_as_string(np.datetime64("2024-01-02T00:00") + np.arange(QUOTES).astype("timedelta64[s]"))
    paths = {}
    for venue in VENUES:
        bid, ask = np.full(QUOTES, 99.99), np.full(QUOTES, 100.01)
        if venue == VENUES[1]:
            k = np.arange(DISLOCATE_EVERY - 1, QUOTES, DISLOCATE_EVERY)
            up = (np.arange(len(k)) % 2) == 0
            bid[k[up]], ask[k[up]] = 100.20, 100.22
            bid[k[~up]], ask[k[~up]] = 99.78, 99.80
        path = folder / f"{venue}.csv"
        path.write_text("Datetime,bid,ask,bid_size,ask_size\n"
                        + "".join(f"{t},{b:.2f},{a:.2f},5,5\n" for t, b, a in zip(stamps, bid, ask)))
        paths[venue] = path
    return paths


async def _venue(port: int) -> None:
    """Acks and fills every order whole at its limit price (100 for a market order), keeps
    positions for the state request, and notes (event_sent_ns, arrival ns) of each order;
    on SIGINT prints them as JSON."""
    import orjson
    from websockets.asyncio.server import serve

    arrivals: list[tuple[int, int]] = []
    positions: dict[str, float] = {}

    async def handler(ws):
        async for frame in ws:
            arrived = time.time_ns()
            msg = orjson.loads(frame)
            if msg.get("type") == "state_request":
                await ws.send(orjson.dumps({"type": "state", "positions": positions, "open_orders": []}).decode())
                continue
            if msg.get("type") != "order":
                continue
            if "event_sent_ns" in msg:
                arrivals.append((msg["event_sent_ns"], arrived))
            qty = msg["qty"] if msg["side"] == "buy" else -msg["qty"]
            positions[msg["instrument"]] = positions.get(msg["instrument"], 0.0) + qty
            oid = msg["client_order_id"]
            await ws.send(orjson.dumps({"type": "ack", "client_order_id": oid}).decode())
            await ws.send(orjson.dumps({"type": "fill", "client_order_id": oid, "qty": msg["qty"],
                                        "price": msg.get("limit_price", 100.0), "fee": 0.0,
                                        "ts": msg["ts"]}).decode())

    try:
        async with serve(handler, HOST, port, compression=None):
            await asyncio.Future()
    finally:
        print(json.dumps(arrivals))


async def _runtime(policy, feeds: dict[str, int], venues: dict[str, int], log: Path, expected: int) -> int:
    """The runtime on both feeds and venues until `expected` orders left, or the feeds ended."""
    from policyc.runtime.live.runner import LiveRuntime, RunConfig

    config = RunConfig("", "", log_path=str(log), feeds={v: f"ws://{HOST}:{p}" for v, p in feeds.items()},
                       venues={v: f"ws://{HOST}:{p}" for v, p in venues.items()},
                       feed_formats={v: "native" for v in feeds})
    rt = LiveRuntime(policy, config)
    task = asyncio.create_task(rt.run())
    try:
        async with asyncio.timeout(QUOTES / RATE + 30):
            while rt.counters.orders < expected and rt.counters.events < 2 * QUOTES:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the last orders' answers
    finally:
        rt.stop.set()
        await task
    return rt.counters.orders


def both_legs_latency(folder: Path) -> tuple[list[int], int]:
    """(ns from the opening quote's sent_ns to the later leg's arrival, one per dislocation
    both venues saw an order of; orders the runtime sent)."""
    from policyc.compiler.build import compile_policy
    from policyc.dsl.document import parse_policy_text

    policy = compile_policy(parse_policy_text(POLICY, "legs_latency.yaml"))
    data = _quotes(folder)
    feeds = {v: _port() for v in VENUES}
    venues = {v: _port() for v in VENUES}
    procs: dict[str, object] = {}
    arrivals = {}
    try:
        for v in VENUES:
            procs[f"venue {v}"] = _spawn(sys.executable, str(Path(__file__).resolve()), "--worker", "legs-venue",
                                         venues[v])
            procs[f"feed {v}"] = _policyc("replay-feed", "--data", f"{SYMBOLS[v]}={data[v]}", "--listen",
                                          f"{HOST}:{feeds[v]}", "--rate", RATE, "--clients", 1)
        for port in (*feeds.values(), *venues.values()):
            _wait_port(port)
        sent = _run(_runtime(policy, feeds, venues, folder / "legs.jsonl", 2 * (QUOTES // DISLOCATE_EVERY)))
    finally:
        for name, proc in procs.items():
            if name.startswith("feed"):
                _stop(proc)
            else:
                proc.send_signal(signal.SIGINT)
                stdout, _ = proc.communicate(timeout=20)
                lines = [line for line in stdout.splitlines() if line.startswith("[")]
                arrivals[name] = {s: at for s, at in json.loads(lines[-1])} if lines else {}
    first, second = (arrivals[f"venue {v}"] for v in VENUES)
    return [max(first[s], second[s]) - s for s in first.keys() & second.keys()], sent


def bench_legs_latency() -> tuple[list[list], dict]:
    """Rows for bench/run.py's table and the figures for reports/bench.json."""
    import tempfile

    e50, e99 = _pct(_echo_cross_process(QUOTES))
    with tempfile.TemporaryDirectory() as tmp:
        lat, sent = both_legs_latency(Path(tmp))
    rows = [[f"echo round trip, server in its own process ({QUOTES:,} msgs at {RATE:,.0f}/s)", f"p50 {e50:,.0f} us",
             f"p99 {e99:,.0f} us", "1.00"]]
    if not lat:
        rows.append(["detection to both legs at their venues", "no dislocation reached both venues", "", ""])
        return rows, {"echo_p50_us": e50, "pairs": 0, "orders": sent}
    p50, p99 = _pct(lat)
    rows.append([f"detection to both legs at their venues: second venue's quote to the later leg's arrival "
                 f"({len(lat):,} dislocations, {sent:,} orders; two feeds, two venues)", f"p50 {p50:,.0f} us",
                 f"p99 {p99:,.0f} us", f"{p50 / e50:.2f} (p50)"])
    return rows, {"echo_p50_us": e50, "echo_p99_us": e99, "p50_us": p50, "p99_us": p99, "pairs": len(lat),
                  "orders": sent}


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    if sys.argv[2] == "legs-venue":
        with suppress(KeyboardInterrupt):
            _run(_venue(int(sys.argv[3])))
