"""`policyc run` killed with SIGKILL at random moments of a loopback session (orders
pending at the venue, halts in between, UTC days passing in the data) and started again on
the same log, cycle after cycle. After every restart the venue's own record is the
judge: the runtime's positions are the venue's (the `reconcile` record of each run), no
order took the venue's exposure past max_position, no UTC day saw more orders than
max_orders_per_day, and every order the venue received has an `order` record in the log.

`make test` runs CRASH_CYCLES (8) cycles; `make crash` (CRASH_CYCLES=50) the long loop."""
import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyotp
import pytest

from policyc.runtime.journal import replay, session_policy
from policyc.runtime.live import paper
from policyc.runtime.live import replay as feed
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.protocol import encode

from loopback import FAILSAFE_S, HOST, free_port, wait_port
from test_live import live

CYCLES = int(os.environ.get("CRASH_CYCLES", "8"))
SEED = int(os.environ.get("CRASH_SEED", "7"))
OPERATOR = "c7a1e5b9d3f2048a6c8e0b2d4f6a8c1e"  # the operator's token (a test's, 128 bits)
TOTP_SECRET = pyotp.random_base32()             # `resume` needs a code
MAX_POSITION, MAX_ORDERS_PER_DAY = 100, 8
BAR_S = 600                    # one bar every 10 minutes: 144 a UTC day
RATE = 60.0                    # bars per second on the feed
#: Long 80 when the fast EMA crosses above the slow SMA, short 80 when it crosses below, so it
#: churns: tests/test_live.py's kernel (`live`), which `policyc run` here loads instead of
#: compiling one of its own. Only max_position and max_orders_per_day bind; its other limits
#: never do (orders of 160 at most, a bar every 10 minutes; a stop 100% away, a short's at twice
#: its entry price, which moves of 0.4% a bar cannot reach while a position is held: it flips
#: at the next crossing, or the next UTC day once the day's orders are used), and no intent is sent.
POLICY = live(instrument="SYN", fast=2, slow=5, up=80, down=-80, crossings=1, max_position=MAX_POSITION,
              max_orders_per_day=MAX_ORDERS_PER_DAY)
DAY_NS = 86_400 * 10**9


def recording(path: Path, bars: int) -> None:
    rng = np.random.default_rng(SEED)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, bars)))
    start = np.datetime64("2023-11-15T00:00:00")
    rows = [f"{start + np.timedelta64(k * BAR_S, 's')},{p:.4f}" for k, p in enumerate(price)]
    path.write_text("timestamp,close\n" + "\n".join(rows) + "\n")


class Exchange:
    """The replay feed and the paper venue, in an event loop of their own (a thread), so
    the test reads the venue's record directly. Every new order the venue takes is
    checked against max_position with what it already holds and has open."""

    def __init__(self, data: Path):
        self.venue = paper.PaperVenue(latency_ms=150.0)  # orders stay pending: a kill finds some open
        self.feed_port, self.venue_port = free_port(), free_port()
        self.worst = 0.0            # the largest |position + open orders| the venue ever held
        self.data = data
        self.loop = asyncio.new_event_loop()
        self.stop = None
        taken = self.venue.on_order

        def on_order(frame):
            before = len(self.venue.received)
            replies = taken(frame)
            if len(self.venue.received) > before:
                self.worst = max(self.worst, abs(self.exposure()))
            return replies

        self.venue.on_order = on_order
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()
        wait_port(self.venue_port)

    def exposure(self) -> float:
        v = self.venue
        held = sum(v.positions.values())
        for oid in [*v.pending, *v.behind]:
            msg = v.pending.get(oid) or v.behind.get(oid)
            held += msg["qty"] if msg["side"] == "buy" else -msg["qty"]
        return held

    async def _main(self):
        self.stop = asyncio.Event()
        rec = feed.load_recording([("SYN", str(self.data))])
        ready = asyncio.Event()
        served = asyncio.create_task(feed.serve(rec, HOST, self.feed_port, rate=RATE, clients_needed=2, ready=ready,
                                                stop=self.stop))
        await ready.wait()
        await paper.serve(self.venue, HOST, self.venue_port, f"ws://{HOST}:{self.feed_port}", stop=self.stop)
        served.cancel()
        rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in rest:  # the servers' connection handlers end here, not when the loop is collected
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def snapshot(self) -> dict:
        """The venue's record, read on its own loop."""
        async def read():
            v = self.venue
            return {"positions": dict(v.positions), "received": [dict(m) for m in v.received], "fills": len(v.fills)}
        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(FAILSAFE_S)

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(FAILSAFE_S)


def start(policy: Path, log: Path, ex: Exchange, control: int, token: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "policyc", "run", str(policy), "--feed", f"ws://{HOST}:{ex.feed_port}",
         "--venue", f"ws://{HOST}:{ex.venue_port}", "--log", str(log), "--control", f"{HOST}:{control}",
         "--operator-token-file", str(token), "--totp-secret-file", str(token.with_name("totp")),
         "--max-feed-silence", "60s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def reconciled(log: Path, count: int, port: int, proc: subprocess.Popen) -> None:
    """Wait until the run listens and the log holds `count` reconcile records: the run
    (every run, the first included) has compared its positions with the venue's."""
    wait_port(port, proc=proc)
    deadline = time.monotonic() + FAILSAFE_S
    while sum(r["kind"] == "reconcile" for r in read_log(log)) < count:
        assert time.monotonic() < deadline and proc.poll() is None, "no reconcile record"
        time.sleep(0.05)


def control(port: int, token: str, message: dict) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://{HOST}:{port}", additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=FAILSAFE_S) as ws:
        ws.send(encode(message).decode())
        ws.recv(FAILSAFE_S)


def per_day(orders: list[dict], exits: set | frozenset = frozenset()) -> dict[int, int]:
    """The most orders a UTC day (of their decision's event time) had when an order that
    is not an exit went out, the order included: max_orders_per_day blocks such an order
    once the day's count, exits included, has reached it (an exit is never blocked)."""
    count: dict[int, int] = {}
    worst: dict[int, int] = {}
    for m in orders:
        day = m["ts"] // DAY_NS
        count[day] = count.get(day, 0) + 1
        if m["client_order_id"] not in exits:
            worst[day] = max(worst.get(day, 0), count[day])
    return worst


def check(log: Path, ex: Exchange, runs: int) -> None:
    records = read_log(log)
    venue = ex.snapshot()
    logged = {r["client_order_id"] for r in records if r["kind"] == "order"}
    received = [m["client_order_id"] for m in venue["received"]]
    assert set(received) <= logged, set(received) - logged
    exits = {r["client_order_id"] for r in records if r["kind"] == "order" and r["exit"]}
    days = per_day(venue["received"], exits)
    assert max(days.values(), default=0) <= MAX_ORDERS_PER_DAY, days
    assert ex.worst <= MAX_POSITION + 1e-9
    reconciles = [r for r in records if r["kind"] == "reconcile"]
    assert len(reconciles) == runs and all(r["matched"] for r in reconciles), \
        [r for r in reconciles if not r["matched"]][:1]
    assert sum(r["kind"] == "session" for r in records) == runs


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_at_random_moments_breaks_no_limit_and_loses_no_order(tmp_path):
    rng = random.Random(SEED)
    data, policy, log, token = tmp_path / "syn.csv", tmp_path / "churn.yaml", tmp_path / "d.jsonl", tmp_path / "t"
    policy.write_text(POLICY)
    token.write_text(OPERATOR)
    token.chmod(0o600)
    token.with_name("totp").write_text(TOTP_SECRET)
    token.with_name("totp").chmod(0o600)
    bars = int(RATE * (CYCLES * 3.5 + 20))  # enough bars for every cycle
    recording(data, bars)
    ex = Exchange(data)
    halted, t0, days_seen = False, time.monotonic(), set()
    try:
        for cycle in range(1, CYCLES + 1):
            port = free_port()
            proc = start(policy, log, ex, port, token)
            try:
                reconciled(log, cycle, port, proc)
                if rng.random() < 0.25 and not halted:
                    control(port, OPERATOR, {"type": "halt", "reason": f"cycle {cycle}"})
                    halted = True
                elif halted and rng.random() < 0.6:
                    control(port, OPERATOR, {"type": "resume", "totp": pyotp.TOTP(TOTP_SECRET).now()})
                    halted = False
                time.sleep(rng.uniform(0.3, 2.5))
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                _, err = proc.communicate(timeout=FAILSAFE_S)
            assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
            check(log, ex, cycle)
            days_seen |= {m["ts"] // DAY_NS for m in ex.snapshot()["received"]}
        # a last run, stopped cleanly: its state is the venue's
        port = free_port()
        proc = start(policy, log, ex, port, token)
        reconciled(log, CYCLES + 1, port, proc)
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=FAILSAFE_S)
        assert proc.returncode == 0, err.decode()[-2000:]
        check(log, ex, CYCLES + 1)
        time.sleep(1.5)  # the venue fills what the last run left open (after its latency, or the feed's wait)
        venue = ex.snapshot()
    finally:
        ex.close()
    records = read_log(log)
    replayer, found = replay(records, session_policy)
    assert found == []
    # what the log says is held and still open is what the venue holds once those orders are done
    held = replayer.engine.position("SYN") + replayer.core.open_quantity("SYN")
    assert held == pytest.approx(venue["positions"].get("SYN", 0.0), abs=1e-9)
    assert len(days_seen) >= 2, "the data crossed no UTC day while orders went out"
    exits = {r["client_order_id"] for r in records if r["kind"] == "order" and r["exit"]}
    assert max(per_day(venue["received"], exits).values()) == MAX_ORDERS_PER_DAY, "the day's order limit never bound"
    print(f"\n{CYCLES} kills in {time.monotonic() - t0:.1f} s; {len(venue['received'])} orders and "
          f"{venue['fills']} fills at the venue over {len(days_seen)} UTC days")
