"""Faults over real loopback sockets: junk frames, a venue that drops, a feed that drops."""
import asyncio
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve

from compiler.build import compile_policy
from dsl.document import parse_policy_text
from runtime.live import paper
from runtime.live.audit import read_log
from runtime.live.runner import LiveRuntime, RunConfig

from loopback import HOST, free_port

POLICY = """
policy: guard
version: 1
instruments: [ORCL]
inputs: [intent]
signals: []
risk:
  max_position: 100
  max_order_qty: 100
"""
TOKEN = "t0ken"
TS = 1_700_000_000_000_000_000



@pytest.fixture(scope="module")
def policy():
    return compile_policy(parse_policy_text(POLICY, "guard.yaml"))


def tick(k: int, price: float = 50.0) -> str:
    return json.dumps({"type": "tick", "instrument": "ORCL", "ts": TS + k, "price": price})


class Feed:
    """A feed server under the test's control: it sends what it is told to."""

    def __init__(self, port: int):
        self.port, self.clients, self.server = port, set(), None

    async def start(self):
        async def handler(ws):
            self.clients.add(ws)
            try:
                await ws.wait_closed()
            finally:
                self.clients.discard(ws)

        self.server = await serve(handler, HOST, self.port)

    async def send(self, *frames):
        for ws in list(self.clients):
            for frame in frames:
                await ws.send(frame)

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


async def until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def runtime_for(policy, feed_port, venue_port, log):
    return LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed_port}", f"ws://{HOST}:{venue_port}", log_path=str(log),
                                         intents=(HOST, free_port()), token=TOKEN))


def test_paper_venue_answers_a_repeated_order_without_executing_it_again():
    venue = paper.PaperVenue(fees_bps=1.0)
    venue.on_feed([tick(0, 45.0)])
    order = json.dumps({"type": "order", "client_order_id": "c1", "instrument": "ORCL", "side": "buy", "qty": 10})
    first = venue.on_order(order)
    assert [r["type"] for r in first] == ["ack", "fill"] and first[1]["price"] == 45.0
    venue.on_feed([tick(1, 46.0)])
    assert venue.on_order(order) == first and len(venue.fills) == 1
    assert venue.on_order('{"type": "order"}')[0]["type"] == "reject"
    nothing = json.dumps({"type": "order", "client_order_id": "c2", "instrument": "NVDA", "side": "buy", "qty": 1})
    assert venue.on_order(nothing)[0]["reason"].startswith("no price")


def test_junk_on_the_feed_is_counted_logged_and_never_traded_on(policy, tmp_path):
    async def scenario():
        feed = Feed(free_port())
        await feed.start()
        venue_port, stop_venue = free_port(), asyncio.Event()
        venue = paper.PaperVenue()
        venue_task = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{feed.port}", stop=stop_venue))
        rt = runtime_for(policy, feed.port, venue_port, tmp_path / "log.jsonl")
        run = asyncio.create_task(rt.run())
        await until(lambda: len(feed.clients) == 2)
        junk = ["{", "[]x", json.dumps({"type": "tick", "instrument": "ORCL", "ts": TS, "price": float("nan")}),
                '{"type": "tick", "instrument": "ORCL", "ts": 1, "price": NaN}',
                json.dumps({"type": "tick", "instrument": "MSFT", "ts": TS, "price": 1}),
                json.dumps({"type": "tick", "instrument": "ORCL", "ts": TS, "price": -3}),
                json.dumps({"type": "bar", "instrument": "ORCL", "ts": TS}), "x" * 2_000_000]
        await feed.send(*junk[:-1])
        await feed.send(*[tick(k) for k in range(50)])
        await until(lambda: rt.counters.events == 50)
        status = rt.status()
        rt.stop.set()
        await run
        stop_venue.set()
        await venue_task
        await feed.stop()
        return status

    status = asyncio.run(scenario())
    assert status["bad_messages"] == 7 and status["orders"] == 0
    bad = [r for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "bad_message"]
    assert len(bad) == 7 and all(r["source"] == "feed" for r in bad)


def test_orders_sent_while_the_venue_is_down_are_resent_and_filled_once(policy, tmp_path):
    from websockets.asyncio.client import connect

    async def scenario():
        feed = Feed(free_port())
        await feed.start()
        venue_port = free_port()
        venue = paper.PaperVenue()
        stop1 = asyncio.Event()
        v1 = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{feed.port}", stop=stop1))
        rt = runtime_for(policy, feed.port, venue_port, tmp_path / "log.jsonl")
        run = asyncio.create_task(rt.run())
        await until(lambda: len(feed.clients) == 2 and rt.venue is not None)
        await feed.send(tick(0, 50.0))
        await until(lambda: rt.counters.events == 1)
        stop1.set()
        await v1
        await until(lambda: rt.venue is None)
        url = f"ws://{HOST}:{rt.config.intents[1]}"
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await ws.send(json.dumps({"type": "intent", "id": "i1", "instrument": "ORCL", "target": 60}))
            decision = json.loads(await ws.recv())
            # the order is out (and counts against limits) although the venue is down
            await ws.send(json.dumps({"type": "intent", "id": "i2", "instrument": "ORCL", "target": 200}))
            second = json.loads(await ws.recv())
        assert rt.engine.open_orders()["ORCL"] == 100
        stop2 = asyncio.Event()
        v2 = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{feed.port}", stop=stop2))
        await until(lambda: not rt.open, timeout=10)
        positions = rt.engine.positions()
        rt.stop.set()
        await run
        stop2.set()
        await v2
        await feed.stop()
        return decision, second, positions, venue, rt

    decision, second, positions, venue, rt = asyncio.run(scenario())
    assert decision["order_qty"] == 60
    assert second["order_qty"] == 40 and "max_position:clipped" in second["reasons"]
    assert positions == {"ORCL": 100.0}
    assert len(venue.fills) == 2 and rt.counters.reconnects >= 1


def test_the_feed_reconnects_after_it_drops(policy, tmp_path):
    async def scenario():
        port = free_port()
        feed = Feed(port)
        await feed.start()
        venue_port, stop_venue = free_port(), asyncio.Event()
        venue_task = asyncio.create_task(paper.serve(paper.PaperVenue(), HOST, venue_port, f"ws://{HOST}:{port}",
                                                     stop=stop_venue))
        rt = runtime_for(policy, port, venue_port, tmp_path / "log.jsonl")
        run = asyncio.create_task(rt.run())
        await until(lambda: len(feed.clients) == 2)
        await feed.send(tick(0))
        await until(lambda: rt.counters.events == 1)
        await feed.stop()
        feed = Feed(port)
        await feed.start()
        await until(lambda: len(feed.clients) == 2, timeout=10)
        await feed.send(tick(1), tick(2))
        await until(lambda: rt.counters.events == 3)
        reconnects = rt.counters.reconnects
        rt.stop.set()
        await run
        stop_venue.set()
        await venue_task
        await feed.stop()
        return reconnects

    assert asyncio.run(scenario()) >= 1


async def _stack(policy, tmp_path):
    feed = Feed(free_port())
    await feed.start()
    venue_port, stop_venue = free_port(), asyncio.Event()
    venue = paper.PaperVenue()
    venue_task = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{feed.port}", stop=stop_venue))
    rt = runtime_for(policy, feed.port, venue_port, tmp_path / "log.jsonl")
    run = asyncio.create_task(rt.run())
    await until(lambda: len(feed.clients) == 2 and rt.venue is not None)
    await feed.send(tick(0, 50.0))
    await until(lambda: rt.counters.events == 1)

    async def close():
        rt.stop.set()
        await run
        stop_venue.set()
        await venue_task
        if feed.server.is_serving():
            await feed.stop()

    return feed, rt, close


async def _intent(rt, *messages):
    from websockets.asyncio.client import connect

    url = f"ws://{HOST}:{rt.config.intents[1]}"
    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        out = []
        for m in messages:
            await ws.send(m if isinstance(m, str) else json.dumps(m))
            out.append(json.loads(await ws.recv()))
        return out


def test_while_the_feed_is_down_intents_are_reduce_only(policy, tmp_path):
    async def scenario():
        feed, rt, close = await _stack(policy, tmp_path)
        (first,) = await _intent(rt, {"type": "intent", "id": "a", "instrument": "ORCL", "target": 40})
        await until(lambda: not rt.open)
        await feed.stop()
        await until(lambda: not rt.feed_connected)
        grow, shrink = await _intent(rt, {"type": "intent", "id": "b", "instrument": "ORCL", "target": 90},
                                     {"type": "intent", "id": "c", "instrument": "ORCL", "target": 10})
        await close()
        return first, grow, shrink

    first, grow, shrink = asyncio.run(scenario())
    assert first["order_qty"] == 40
    assert grow["order_qty"] == 0 and "stale_after:blocked" in grow["reasons"]
    assert shrink["order_qty"] == -30


def test_a_flood_of_messages_is_refused_and_counted(policy, tmp_path):
    async def scenario():
        feed, rt, close = await _stack(policy, tmp_path)
        answers = await _intent(rt, *[{"type": "intent", "id": str(k), "instrument": "ORCL", "target": 0}
                                      for k in range(4000)])
        status = rt.status()
        await close()
        return answers, status

    answers, status = asyncio.run(scenario())
    refused = [a for a in answers if a["type"] == "error"]
    assert len(answers) == 4000 and len({a["id"] for a in answers}) == 4000  # one answer each
    assert refused and status["bad_messages"] == len(refused)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(targets=st.lists(st.lists(st.one_of(st.floats(-1e6, 1e6), st.integers(-500, 500).map(float)),
                                 min_size=1, max_size=40), min_size=2, max_size=5))
def test_concurrent_model_clients_never_push_a_limit_past_its_bound(policy, tmp_path, targets):
    async def client(rt, n, proposals):
        return await _intent(rt, *[{"type": "intent", "id": f"{n}-{k}", "instrument": "ORCL", "target": t}
                                   for k, t in enumerate(proposals)])

    async def scenario(log_dir):
        feed, rt, close = await _stack(policy, log_dir)
        answers = await asyncio.gather(*(client(rt, n, p) for n, p in enumerate(targets)))
        await until(lambda: not rt.open)
        positions = rt.engine.positions()
        await close()
        return answers, positions

    log_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    answers, positions = asyncio.run(scenario(log_dir))
    assert all(abs(a["approved_target"]) <= 100 and abs(a["order_qty"]) <= 100 for batch in answers for a in batch)
    assert abs(positions["ORCL"]) <= 100
    for r in read_log(log_dir / "log.jsonl"):  # open orders count in: the bound holds at every order
        if r["kind"] == "order":
            assert abs(r["approved_target"]) <= 100 and abs(r["qty"]) <= 100


def test_sigterm_stops_sending_flushes_the_log_and_exits_0(policy, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    policy_path = tmp_path / "guard.yaml"
    policy_path.write_text(POLICY)
    log = tmp_path / "log.jsonl"
    exe = Path(sys.executable).parent / "policyc"
    proc = subprocess.Popen([str(exe), "run", str(policy_path), "--feed", f"ws://{HOST}:{free_port()}",
                             "--venue", f"ws://{HOST}:{free_port()}", "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (log.exists() and log.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    records = read_log(log)
    assert records[0]["kind"] == "session" and records[0]["policy_hash"] == policy.policy_hash
