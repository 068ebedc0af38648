"""Faults over real loopback sockets: junk frames, a venue that drops, a feed that drops."""
import asyncio
import itertools
import json
import tempfile
import time
from pathlib import Path

import pyotp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve
from websockets.protocol import State

from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.live import paper, security
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.runner import LiveRuntime, RunConfig

from loopback import FAILSAFE_S, FLIP, HOST, ORCL_DATA, Clock, free_port, policyc_command, runtime_side, until, wait_port

#: The policy of every test here that trades on intents alone (and of tests/test_engine.py's
#: live-mode limit tests): one kernel for all of them. A risk key's value is a kernel
#: argument, not code, so every policy with this name, these params and these keys has one
#: kernel source whatever the values: each test sets the limits it is about, and a key it
#: is not about is set where it can never bind (`NEVER`), so that nothing compiles twice.
LIMITS = """
policy: guard
version: 1
instruments: [{instrument}]
inputs: [intent]
signals: []
risk:
  max_position: {max_position}
  max_order_qty: {max_order_qty}
  max_drawdown: {max_drawdown}
  max_orders_per_day: {max_orders_per_day}
account:
  initial_equity: {initial_equity}
  fees_bps: 0
"""
#: Limits that never bind where a test leaves them so: a drawdown of 100% (all of the
#: equity lost, which no such test comes near), and sizes and order counts far past
#: anything a test sends.
NEVER = {"max_position": 1_000_000, "max_order_qty": 1_000_000, "max_drawdown": "100%",
         "max_orders_per_day": 1_000_000}


def limits(instrument: str = "ORCL", initial_equity: float = 100_000, **risk) -> str:
    """`LIMITS` with the risk keys given and every other one at `NEVER`."""
    assert set(risk) <= set(NEVER), risk
    return LIMITS.format(instrument=instrument, initial_equity=initial_equity, **{**NEVER, **risk})


#: Long or short at most 100, in orders of at most 100.
POLICY = limits(max_position=100, max_order_qty=100)
TOKEN = "70ce2f3a9b1d4e6f8a0b2c4d6e8f1a3b"     # the model's
OPERATOR = "0be7a10c5d2e4f6a8b0c1d3e5f7a9b2c"  # the operator's, for the control port
TOTP_SECRET = pyotp.random_base32()


def guard() -> security.Guard:
    """The listeners' credentials: a model and an operator token, and a TOTP secret
    (`resume` needs a code: `totp()`)."""
    return security.Guard(security.Credentials([("model", TOKEN, "test"), ("operator", OPERATOR, "test")]),
                          security.TotpVerifier(TOTP_SECRET))


def totp() -> str:
    return pyotp.TOTP(TOTP_SECRET).now()
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


#: --max-feed-silence where a test is not about it: longer than any stall of a busy
#: machine and than every move of a test's `Clock`, so the feed never goes silent
QUIET_S = 3600.0


def runtime_for(policy, feed_port, venue_port, log):
    return LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed_port}", f"ws://{HOST}:{venue_port}", log_path=str(log),
                                         intents=(HOST, free_port()), guard=guard(), max_feed_silence=QUIET_S))


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
        await until(lambda: rt.counters.events == 1 and venue.last_price.get("ORCL") == 50.0)
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
        await until(lambda: not rt.open)
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
        await until(lambda: runtime_side(feed.clients, rt) and len(feed.clients) == 2)
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
    await until(lambda: rt.counters.events == 1 and venue.last_price.get("ORCL") == 50.0)  # orders can fill

    async def close():
        rt.stop.set()
        await run
        stop_venue.set()
        await venue_task
        if feed.server.is_serving():
            await feed.stop()

    return feed, rt, close


async def _intent(rt, *messages):
    return await _client(rt.config.intents[1], *messages)


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


class _StoppedMonotonic:
    """The `time` module as the runner sees it, with `monotonic` stopped: its rate limiter
    (a token bucket per connection) then never refills, whatever the speed of the machine."""

    def __getattr__(self, name):
        return getattr(time, name)

    def monotonic(self):
        return 1000.0


def test_a_flood_of_messages_is_refused_and_counted(policy, tmp_path, monkeypatch):
    """Every message of a flood gets one answer; past the rate limit the answer is an
    error and each refusal counts as a bad message, logged once a second per credential
    with the number refused. The limiter's clock is stopped: at real
    speed a slow enough machine would never go over the rate, whatever the flood."""
    from policyc.runtime.live import runner

    monkeypatch.setattr(runner, "time", _StoppedMonotonic())
    rt_log = []

    async def scenario():
        from websockets.asyncio.client import connect

        feed, rt, close = await _stack(policy, tmp_path)
        rt_log.append(rt.config.log_path)
        url = f"ws://{HOST}:{rt.config.intents[1]}"
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            async def burst():  # without waiting for answers
                for k in range(4000):
                    await ws.send(json.dumps({"type": "intent", "id": str(k), "instrument": "ORCL", "target": 0}))

            sending = asyncio.create_task(burst())
            answers = [json.loads(await ws.recv()) for _ in range(4000)]
            await sending
        status = rt.status()
        await close()
        return answers, status

    answers, status = asyncio.run(scenario())
    refused = [a for a in answers if a["type"] == "error"]
    assert len(answers) == 4000 and len({a["id"] for a in answers}) == 4000  # one answer each
    # a full bucket lets MESSAGES_PER_SECOND through, then (no time passes) refuses the rest
    allowed = int(runner.MESSAGES_PER_SECOND["intents"])
    assert [a["id"] for a in refused] == [str(k) for k in range(allowed, 4000)]
    assert all(a["code"] == "bad_message" for a in refused) and status["bad_messages"] == len(refused)
    # the log has one `flood` record per second of the flood and one at the close, not one per message
    floods = [r for r in read_log(rt_log[0]) if r["kind"] == "bad_message" and r["source"] == "flood"]
    assert 1 <= len(floods) <= 3 and sum(int(r["reason"].split()[0].replace(",", "")) for r in floods) == len(refused)


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
    bound = 100 * (1 + ULP_TOLERANCE)  # fractional quantities: see the test below
    assert all(abs(a["approved_target"]) <= bound and abs(a["order_qty"]) <= bound for batch in answers for a in batch)
    assert abs(positions["ORCL"]) <= bound
    for r in read_log(log_dir / "log.jsonl"):  # open orders count in: the bound holds at every order
        if r["kind"] == "order":
            assert abs(r["approved_target"]) <= bound and abs(r["qty"]) <= bound


ULP_TOLERANCE = 1e-12  # docs/language.md, "Order rounding": limits and fractional quantities


def _interleaved(policy, steps):
    """Intents and fills on the sans-I/O engine, fills arriving between intents."""
    from policyc.compiler import layout as L
    from policyc.runtime.engine import Engine

    engine = Engine(policy, L.LIVE)
    engine.market("ORCL", TS, {"price": 50.0})
    sent = []
    for k, step in enumerate(steps):
        if step == "fill":
            engine.fill("ORCL", TS + 1 + k, sent.pop(0), 50.0)
        else:
            decision = engine.intent("ORCL", TS + 1 + k, step)
            assert abs(decision.approved_target) <= 100
            sent.append(decision.order_qty)
    assert engine.open_orders() == {"ORCL": 0.0}
    return engine.position("ORCL")


def test_fractional_quantities_stay_within_max_position_to_the_last_bits(policy):
    """Position and open quantity add the same fractional amounts in different orders
    (an order when sent, its fill when it arrives), so with quantities such as 1/3 the
    order that reaches max_position can land a few ulps past it (hypothesis found
    100.00000000000001 through concurrent clients). The documented bound is 1e-12
    relative; whole quantities are exact."""
    position = _interleaved(policy, [1 / 3, "fill", 0.2, 65.0, 199.0, "fill", "fill", "fill"])
    assert abs(position) <= 100 * (1 + ULP_TOLERANCE), repr(position)


def test_whole_quantities_never_pass_max_position_at_all(policy):
    position = _interleaved(policy, [3.0, "fill", 20.0, 65.0, 199.0, "fill", "fill", "fill"])
    assert position == 100.0


# ---- frames the runtime must refuse, over real sockets -----------------------------------------------------------

#: The policy of the tests that trade on the feed alone (no intents): TREND here, and
#: STOP_FLIP below without its custom rule, are one kernel, as `LIMITS` is for the intents'
#: tests. The rules' thresholds and targets are params and the limits' values are not code,
#: so only the custom rule (present or absent) makes another kernel.
RULES = """
policy: rules
version: 1
instruments: [ORCL]
params:
  enter: {enter}
  up: {up}
  leave: {leave}
  down: {down}
signals:
  - when: close >= enter
    target: up
  - when: close < leave
    target: down
risk:
  max_position: {max_position}
  max_order_qty: {max_order_qty}
  stop_loss: {stop_loss}
{custom}account:
  initial_equity: {initial_equity}
  fees_bps: 0
"""
#: Long 10 at or above 60, flat below 40 (no test price is 60). Its stop is 100%: a price
#: of 0, which the feed can never send (prices are positive), so it never triggers.
TREND = RULES.format(enter=60, up=10, leave=40, down=0, max_position=100, max_order_qty=100, stop_loss="100%",
                     custom="", initial_equity=100_000)


@pytest.fixture(scope="module")
def trend():
    """Trades on the feed alone: long 10 at or above 60, flat below 40."""
    return compile_policy(parse_policy_text(TREND, "trend.yaml"))


class Stack:
    """A feed under the test's control, a paper venue following it and a runtime, on
    loopback. Unlike `_stack`, it knows which feed connection is the runtime's, so a
    fault can be sent to the runtime alone, and it prices the venue before the runtime
    sees a tick (an order the tick causes never races the venue's own copy of it)."""

    def __init__(self, policy, log, venue=None, control=False, **config):
        self.policy, self.log = policy, log
        self.venue = venue if venue is not None else paper.PaperVenue()
        self.control = control
        self.config = {"max_feed_silence": QUIET_S, **config}  # more RunConfig settings

    async def start(self, price=50.0):
        self.feed = Feed(free_port())
        await self.feed.start()
        self.venue_port, self.stop_venue = free_port(), asyncio.Event()
        self.venue_task = asyncio.create_task(paper.serve(self.venue, HOST, self.venue_port,
                                                          f"ws://{HOST}:{self.feed.port}", stop=self.stop_venue))
        self.rt = LiveRuntime(self.policy, RunConfig(
            f"ws://{HOST}:{self.feed.port}", f"ws://{HOST}:{self.venue_port}", log_path=str(self.log),
            intents=(HOST, free_port()), control=(HOST, free_port()) if self.control else None, guard=guard(),
            **self.config))
        self.run = asyncio.create_task(self.rt.run())
        await until(lambda: len(self.feed.clients) == 2 and self.rt.venue is not None and self.rt.feed is not None)
        await self.tick(0, price)
        return self

    async def runtime_side(self):
        """The feed server's end of the runtime's feed connection, once it is open (after
        a reconnect: the new one)."""
        return await until(lambda: runtime_side(self.feed.clients, self.rt))

    async def tick(self, k, price):
        ours = await self.runtime_side()
        for ws in [ws for ws in self.feed.clients - {ours} if ws.state is State.OPEN]:  # the venue's
            await ws.send(tick(k, price))
        await until(lambda: self.venue.last_price.get("ORCL") == price)
        events = self.rt.counters.events
        await ours.send(tick(k, price))
        await until(lambda: self.rt.counters.events == events + 1)

    async def close(self):
        self.rt.stop.set()
        status = await self.run
        self.stop_venue.set()
        await self.venue_task
        await self.feed.stop()
        return status


async def _client(port, *messages, token=TOKEN):
    """Send each message on a fresh authenticated connection and read one answer each."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://{HOST}:{port}", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        out = []
        for m in messages:
            await ws.send(m if isinstance(m, str) else json.dumps(m))
            out.append(json.loads(await ws.recv()))
        return out


def _records(log, kind):
    return [r for r in read_log(log) if r["kind"] == kind]


@pytest.mark.parametrize("shape", ["one frame", "fragments"])
def test_an_oversized_feed_message_is_a_bad_message_the_feed_reconnects_and_trading_goes_on(trend, tmp_path, shape):
    from websockets.exceptions import ConnectionClosed

    from policyc.runtime.live.protocol import MAX_FRAME_BYTES

    log = tmp_path / "log.jsonl"

    async def scenario():
        stack = await Stack(trend, log).start(price=50.0)
        rt, first = stack.rt, stack.rt.feed
        reconnects = rt.counters.reconnects
        # a well-formed tick that would trade (price 70), padded past the limit
        big = json.dumps({"type": "tick", "instrument": "ORCL", "ts": TS + 1, "price": 70.0,
                          "pad": "x" * (MAX_FRAME_BYTES + 10)})
        payload = big if shape == "one frame" else [big[:len(big) // 2], big[len(big) // 2:]]  # each part < 1 MiB
        try:
            await (await stack.runtime_side()).send(payload)
        except ConnectionClosed:
            pass  # the runtime closed while the frame was still going out
        await until(lambda: rt.feed is not None and rt.feed is not first and len(stack.feed.clients) == 2)
        mid = {"bad": rt.counters.bad_messages, "events": rt.counters.events, "orders": rt.counters.orders,
               "reconnects": rt.counters.reconnects - reconnects}
        await stack.tick(2, 61.0)  # after the reconnect: trades
        await until(lambda: not rt.open and rt.counters.fills == 1)
        positions = rt.engine.positions()
        await stack.close()
        return mid, positions

    mid, positions = asyncio.run(scenario())
    assert mid == {"bad": 1, "events": 1, "orders": 0, "reconnects": mid["reconnects"]} and mid["reconnects"] >= 1
    assert positions == {"ORCL": 10.0}
    (bad,) = _records(log, "bad_message")
    assert bad["source"] == "feed" and "1009" in bad["reason"]
    (order,) = _records(log, "order")
    assert order["price"] == 61.0 and order["qty"] == 10
    (fill,) = _records(log, "fill")
    assert fill["price"] == 61.0


@pytest.mark.parametrize("frame, text, reason, same_connection", [
    (tick(1, 70.0).encode(), False, "binary", True),                # a tick that would trade, as a binary frame
    # not UTF-8: the connection fails with 1007 (RFC 6455), and the feed connects again
    (b'{"type": "tick", "price": "\xff\xfe"}', True, "connection closed with code 1007: invalid UTF-8", False),
], ids=["binary", "not-utf8"])
def test_a_feed_frame_the_runtime_cannot_read_is_a_bad_message_and_trading_goes_on(trend, tmp_path, frame, text,
                                                                                     reason, same_connection):
    log = tmp_path / "log.jsonl"

    async def scenario():
        stack = await Stack(trend, log).start(price=50.0)
        rt, first = stack.rt, stack.rt.feed
        await (await stack.runtime_side()).send(frame, text=text)
        await until(lambda: rt.counters.bad_messages == 1)
        mid = {"events": rt.counters.events, "orders": rt.counters.orders, "last_price": rt.engine.last_prices()["ORCL"]}
        await stack.tick(2, 61.0)  # on the same connection, or on the next one once it is open
        await until(lambda: not rt.open and rt.counters.fills == 1)
        after = {"same_connection": rt.feed is first, "positions": rt.engine.positions()}
        await stack.close()
        return mid, after

    mid, after = asyncio.run(scenario())
    assert mid == {"events": 1, "orders": 0, "last_price": 50.0}  # never acted on
    assert after["positions"] == {"ORCL": 10.0}
    assert after["same_connection"] is same_connection
    (bad,) = _records(log, "bad_message")
    assert bad["source"] == "feed" and reason in bad["reason"]
    (order,) = _records(log, "order")
    assert order["price"] == 61.0


def test_a_feed_that_closes_with_a_code_of_its_own_is_reconnected_and_no_bad_message(trend, tmp_path):
    """A close the peer starts (1011, a server error) is echoed and the feed reconnects;
    unlike a close the runtime sends for a frame it refuses, it is not a bad message."""
    log = tmp_path / "log.jsonl"

    async def scenario():
        stack = await Stack(trend, log).start(price=50.0)
        rt, first = stack.rt, stack.rt.feed
        await (await stack.runtime_side()).close(1011, "restarting")
        await stack.tick(2, 61.0)  # on the next connection
        await until(lambda: not rt.open and rt.counters.fills == 1)
        after = {"reconnected": rt.feed is not first, "bad": rt.counters.bad_messages,
                 "positions": rt.engine.positions()}
        await stack.close()
        return after

    assert asyncio.run(scenario()) == {"reconnected": True, "bad": 0, "positions": {"ORCL": 10.0}}
    assert _records(log, "bad_message") == []


@pytest.mark.parametrize("source", ["intents", "control"])
def test_an_oversized_client_frame_is_a_bad_message_and_the_listener_stays_up(policy, tmp_path, source):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from policyc.runtime.live.runner import MAX_CLIENT_FRAME_BYTES

    log = tmp_path / "log.jsonl"

    async def scenario():
        stack = await Stack(policy, log, control=True).start()
        rt = stack.rt
        port = rt.config.intents[1] if source == "intents" else rt.config.control[1]
        big = json.dumps({"type": "intent" if source == "intents" else "halt", "id": "big", "instrument": "ORCL",
                          "target": 50, "reason": "x" * (MAX_CLIENT_FRAME_BYTES + 10)})
        token = TOKEN if source == "intents" else OPERATOR
        async with connect(f"ws://{HOST}:{port}", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(big)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        await until(lambda: rt.counters.bad_messages == 1)
        (status,) = await _client(rt.config.control[1], {"type": "status"}, token=OPERATOR)
        (decision,) = await _client(rt.config.intents[1],
                                    {"type": "intent", "id": "a", "instrument": "ORCL", "target": 20})
        await until(lambda: not rt.open)
        positions = rt.engine.positions()
        await stack.close()
        return closed.value, status, decision, positions

    closed, status, decision, positions = asyncio.run(scenario())
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    assert status["type"] == "status" and status["halted"] is False and status["bad_messages"] == 1
    assert decision["type"] == "decision" and decision["id"] == "a" and decision["order_qty"] == 20
    assert positions == {"ORCL": 20.0}
    (bad,) = _records(log, "bad_message")
    assert bad["source"] == source and "1009" in bad["reason"]


# ---- the paper venue's cancel ------------------------------------------------------------------------------------

def _order(oid, qty=10, side="buy", instrument="ORCL"):
    return json.dumps({"type": "order", "client_order_id": oid, "instrument": instrument, "side": side, "qty": qty})


def _cancel(oid):
    return json.dumps({"type": "cancel", "client_order_id": oid})


def test_paper_venue_cancels_a_pending_order_and_remembers_it():
    venue = paper.PaperVenue(latency_ms=50)
    venue.on_feed([tick(0, 45.0)])
    (ack,) = venue.on_order(_order("p1"))
    assert ack["type"] == "ack" and ack["client_order_id"] == "p1" and "p1" in venue.pending
    cancelled = {"type": "reject", "client_order_id": "p1", "reason": "cancelled"}
    assert venue.on_order(_cancel("p1")) == [cancelled]
    assert venue.execute("p1") == [] and venue.fills == []  # its latency is over: nothing happens
    assert venue.on_order(_order("p1")) == [ack, cancelled]  # a resend: what was answered, nothing executes
    assert venue.execute("p1") == [] and venue.fills == [] and not venue.pending

    (ack2,) = venue.on_order(_order("p2"))
    (fill,) = venue.execute("p2")
    assert fill["type"] == "fill" and fill["price"] == 45.0 and fill["client_order_id"] == "p2"
    assert venue.on_order(_order("p2")) == [ack2, fill] and len(venue.fills) == 1


def test_paper_venue_answers_a_cancel_with_nothing_to_cancel_with_how_the_order_ended():
    """A cancel of an order already filled, cancelled or refused is answered with all it
    was answered so far; of one never seen, with a reject. Nothing executes:
    after a cancel the runtime knows how each order ended (docs/live.md, the paper venue)."""
    venue = paper.PaperVenue(latency_ms=50)
    venue.on_feed([tick(0, 45.0)])
    cancelled = [*venue.on_order(_order("p1")), *venue.on_order(_cancel("p1"))]
    filled = [*venue.on_order(_order("p2")), *venue.execute("p2")]
    refused = venue.on_order(_order("p4", instrument="NVDA"))
    instant = paper.PaperVenue()
    instant.on_feed([tick(0, 45.0)])
    at_once = instant.on_order(_order("p3"))
    assert [r["type"] for r in cancelled] == ["ack", "reject"] and [r["type"] for r in filled] == ["ack", "fill"]
    assert venue.on_order(_cancel("p1")) == cancelled
    assert venue.on_order(_cancel("p2")) == filled
    assert venue.on_order(_cancel("p4")) == refused
    assert instant.on_order(_cancel("p3")) == at_once
    assert venue.on_order(_cancel("never-seen")) == [
        {"type": "reject", "client_order_id": "never-seen", "reason": "unknown order: nothing to cancel"}]
    assert len(venue.fills) == 1 and len(instant.fills) == 1 and not venue.pending


def _order_at(oid, ts, qty=10):
    """An order decided on the market event at `ts`."""
    return json.dumps({"type": "order", "client_order_id": oid, "instrument": "ORCL", "side": "buy", "qty": qty,
                       "ts": ts, "event_ts": ts})


def test_paper_venue_fills_an_order_at_the_event_it_was_decided_on_even_when_its_feed_lags():
    """The runtime's copy of the feed can be ahead of the venue's: an order decided on
    an event the venue has not seen yet waits for that event and fills at its price,
    as `backtest --fill same` does, never at the price before it."""
    venue = paper.PaperVenue()
    venue.on_feed([tick(0, 45.0)])
    (ack,) = venue.on_order(_order_at("p1", ts=TS + 1))  # decided on event 1; the venue is at event 0
    assert ack["type"] == "ack" and venue.fills == [] and "p1" in venue.behind
    (fill,) = venue.on_feed([tick(1, 46.0)])
    assert fill["client_order_id"] == "p1" and fill["price"] == 46.0 and not venue.behind
    assert venue.on_feed([tick(2, 47.0)]) == []  # filled once
    # an order of an event the venue has seen fills at once, at the last price
    assert [r["type"] for r in venue.on_order(_order_at("p2", ts=TS + 1))] == ["ack", "fill"]
    assert venue.fills[-1]["price"] == 47.0
    # a cancel reaches an order waiting for the feed
    venue.on_order(_order_at("p3", ts=TS + 9))
    assert venue.on_order(_cancel("p3")) == [{"type": "reject", "client_order_id": "p3", "reason": "cancelled"}]
    assert venue.on_feed([tick(9, 50.0)]) == [] and len(venue.fills) == 2


def test_paper_venue_ends_the_wait_for_its_feed_with_the_last_price_or_a_reject():
    """Two feeds should never be a second apart; when the venue's is, the wait ends
    (FEED_WAIT_S) with a fill at the last price there is, or a reject with none."""
    venue = paper.PaperVenue()
    venue.on_order(_order_at("early", ts=TS + 0))  # no feed at all yet: it waits, not refused
    assert "early" in venue.behind
    (reject,) = venue.execute("early", venue.behind.pop("early"), wait=False)
    assert reject == {"type": "reject", "client_order_id": "early", "reason": "no price for ORCL"}
    venue.on_feed([tick(0, 45.0)])
    venue.on_order(_order_at("late", ts=TS + 5))
    (fill,) = venue.execute("late", venue.behind.pop("late"), wait=False)
    assert fill["price"] == 45.0


def test_paper_venue_over_sockets_cancels_and_fills_on_the_last_connection_to_send_the_order():
    """An order resent on another connection is answered there and its fill goes there
    only; a cancelled order never fills, not even when its latency is over. The venue's
    latency runs on the test's clock: nothing fills until the test moves it on."""
    from websockets.asyncio.client import connect

    clock = Clock()
    latency_s = 5.0  # far longer than any stall of the machine; `clock.advance` goes past it

    async def recv(ws):
        return json.loads(await asyncio.wait_for(ws.recv(), FAILSAFE_S))

    async def barrier(ws):
        """Everything the venue sent on `ws` before this answer."""
        await ws.send('{"type": "order"}')  # malformed: answered at once with a reject without an id
        seen = []
        while True:
            msg = await recv(ws)
            if msg["type"] == "reject" and msg["client_order_id"] is None:
                return seen
            seen.append(msg)

    async def scenario():
        venue = paper.PaperVenue(latency_ms=latency_s * 1000)
        venue.on_feed([tick(0, 45.0)])
        port, stop = free_port(), asyncio.Event()
        task = asyncio.create_task(paper.serve(venue, HOST, port, f"ws://{HOST}:{free_port()}", stop=stop))
        await until(lambda: _listening(port))
        url = f"ws://{HOST}:{port}"
        async with connect(url, ping_interval=None) as a, connect(url, ping_interval=None) as b:
            await a.send(_order("o1"))
            ack_a = await recv(a)
            await b.send(_order("o1"))  # a resend on another connection: the fill moves there
            ack_b = await recv(b)
            await b.send(_order("o2"))
            ack2 = await recv(b)
            await b.send(_cancel("o2"))
            cancelled = await recv(b)
            await b.send(_order("o2"))
            repeated = [await recv(b), await recv(b)]
            quiet = await barrier(b)  # o1's latency is not over yet: nothing came
            await clock.advance(latency_s)  # o1 (and the cancelled o2) are due now
            fill1 = await recv(b)
            await b.send(_order("o3"))
            until_fill3 = [await recv(b)]
            await clock.advance(latency_s)
            while until_fill3[-1]["type"] != "fill":  # o2 would have been due before o3
                until_fill3.append(await recv(b))
            on_a = await barrier(a)
        stop.set()
        await task
        return dict(ack_a=ack_a, ack_b=ack_b, ack2=ack2, cancelled=cancelled, repeated=repeated, quiet=quiet,
                    fill1=fill1, until_fill3=until_fill3, on_a=on_a, venue=venue)

    r = clock.run(scenario())
    assert r["ack_a"] == r["ack_b"] == {"type": "ack", "client_order_id": "o1", "venue_order_id": r["ack_a"]["venue_order_id"]}
    assert r["ack2"]["type"] == "ack"
    assert r["cancelled"] == {"type": "reject", "client_order_id": "o2", "reason": "cancelled"}
    assert r["repeated"] == [r["ack2"], r["cancelled"]] and r["quiet"] == []
    assert r["fill1"]["type"] == "fill" and r["fill1"]["client_order_id"] == "o1" and r["fill1"]["price"] == 45.0
    assert [(m["type"], m["client_order_id"]) for m in r["until_fill3"]] == [("ack", "o3"), ("fill", "o3")]
    assert r["on_a"] == []  # the o1 fill went to b only
    assert [f["client_order_id"] for f in r["venue"].fills] == ["o1", "o3"]


def _listening(port):
    import socket

    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


# ---- a fill lost with the venue connection -----------------------------------------------------------------------

class DropsTheFirstFill:
    """A venue server around a `PaperVenue`: the first order that fills is acknowledged,
    executed, and then the connection is closed before the fill goes out. Connections
    after the first wait for `release` before they read anything; while `refuse` is set,
    new connections are closed at once (the venue is down)."""

    def __init__(self, venue):
        self.venue, self.port = venue, free_port()
        self.connections: list[list] = []  # the frames each accepted connection received
        self.release = asyncio.Event()
        self.dropped = False
        self.refuse, self.refused = False, 0

    async def start(self):
        async def handler(ws):
            if self.refuse:
                self.refused += 1
                await ws.close(1013, "down")
                return
            frames = []
            self.connections.append(frames)
            if len(self.connections) > 1:
                await self.release.wait()
            async for frame in ws:
                frames.append(json.loads(frame))
                replies = self.venue.on_order(frame)
                if not self.dropped and any(r["type"] == "fill" for r in replies):
                    self.dropped = True
                    await ws.send(json.dumps(replies[0]))  # the ack only
                    await ws.close(1011, "going down")
                    return
                for reply in replies:
                    await ws.send(json.dumps(reply))

        self.server = await serve(handler, HOST, self.port)
        return self

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


def test_a_fill_lost_with_the_venue_connection_is_recovered_once_on_reconnect(policy, tmp_path):
    log = tmp_path / "log.jsonl"

    async def scenario():
        feed = Feed(free_port())
        await feed.start()
        venue = paper.PaperVenue()
        venue.on_feed([tick(0, 50.0)])
        server = await DropsTheFirstFill(venue).start()
        rt = runtime_for(policy, feed.port, server.port, log)
        run = asyncio.create_task(rt.run())
        await until(lambda: len(feed.clients) == 1 and rt.venue is not None)
        await feed.send(tick(0, 50.0))
        await until(lambda: rt.counters.events == 1)
        reconnects = rt.counters.reconnects
        (decision,) = await _intent(rt, {"type": "intent", "id": "i1", "instrument": "ORCL", "target": 60})
        await until(lambda: len(server.connections) == 2)  # dropped, and the runtime is back (held)
        (oid,) = list(rt.open)
        held = {"venue_fills": len(venue.fills), "acked": oid not in rt.unacked, "open": rt.engine.open_orders(),
                "positions": rt.engine.positions(), "fills": rt.counters.fills,
                "reconnects": rt.counters.reconnects - reconnects}
        server.release.set()
        await until(lambda: not rt.open)
        await until(lambda: len(server.connections[1]) >= 1)
        after = {"positions": rt.engine.positions(), "open": rt.engine.open_orders(), "fills": rt.counters.fills}
        rt.stop.set()
        await run
        await server.stop()
        await feed.stop()
        return decision, oid, held, after, server.connections, venue

    decision, oid, held, after, connections, venue = asyncio.run(scenario())
    assert decision["order_qty"] == 60
    # the venue executed the order and the runtime got its ack, but not its fill
    assert held == {"venue_fills": 1, "acked": True, "open": {"ORCL": 60.0}, "positions": {"ORCL": 0.0},
                    "fills": 0, "reconnects": held["reconnects"]} and held["reconnects"] >= 1
    # on reconnect the open order went out again, unchanged, and nothing else did
    # (the first connection opened with the new run's state request, which the venue answered: flat)
    assert connections[0][0] == {"type": "state_request"}
    assert [m["client_order_id"] for m in connections[0][1:]] == [oid] and connections[1] == connections[0][1:]
    assert after == {"positions": {"ORCL": 60.0}, "open": {"ORCL": 0.0}, "fills": 1}
    assert len(venue.fills) == 1
    fills = _records(log, "fill")
    assert [(f["client_order_id"], f["qty"], f["price"]) for f in fills] == [(oid, 60, 50.0)]


def test_a_fill_lost_with_the_venue_connection_is_learnt_from_the_cancel_of_a_halt(policy, tmp_path):
    """The fill is lost with the connection, the venue stays down, the operator halts:
    on reconnect the runtime sends a cancel instead of the order, the venue answers it
    with how the order ended (ack, fill), the fill is applied once, and only then the
    position is liquidated."""
    log = tmp_path / "log.jsonl"

    async def scenario():
        feed = Feed(free_port())
        await feed.start()
        venue = paper.PaperVenue()
        venue.on_feed([tick(0, 50.0)])
        server = await DropsTheFirstFill(venue).start()
        server.release.set()
        rt = LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed.port}", f"ws://{HOST}:{server.port}", log_path=str(log),
                                           intents=(HOST, free_port()), control=(HOST, free_port()), guard=guard(),
                                           max_feed_silence=QUIET_S))
        run = asyncio.create_task(rt.run())
        await until(lambda: len(feed.clients) == 1 and rt.venue is not None)
        await feed.send(tick(0, 50.0))
        await until(lambda: rt.counters.events == 1)
        server.refuse = True  # from now on the venue is down
        (decision,) = await _client(rt.config.intents[1],
                                    {"type": "intent", "id": "i1", "instrument": "ORCL", "target": 60})
        (oid,) = list(rt.open)
        await until(lambda: server.dropped and server.refused >= 1)
        (halted,) = await _client(rt.config.control[1], {"type": "halt", "reason": "venue down"}, token=OPERATOR)
        server.refuse = False
        await until(lambda: len(server.connections) == 2)
        await until(lambda: not rt.open and len(venue.fills) == 2)
        out = {"positions": rt.engine.positions(), "fills": rt.counters.fills, "halted": rt.engine.halted}
        rt.stop.set()
        await run
        await server.stop()
        await feed.stop()
        return decision, halted, oid, out, server.connections, venue

    decision, halted, oid, out, connections, venue = asyncio.run(scenario())
    assert decision["order_qty"] == 60 and halted["halted"] is True
    assert connections[1][0] == {"type": "cancel", "client_order_id": oid}  # not the order again
    assert [(f["side"], f["qty"]) for f in venue.fills] == [("buy", 60), ("sell", 60.0)]
    assert out == {"positions": {"ORCL": 0.0}, "fills": 2, "halted": True}
    fills = [(f["client_order_id"] == oid, f["qty"]) for f in _records(log, "fill")]
    assert fills == [(True, 60), (False, -60)]


# ---- halt with an order waiting out the venue's latency ---------------------------------------------------------

#: The paper venue's latency in the tests below, on the test's clock (`Clock`): far longer
#: than any stall of a busy machine, so an order is still waiting at the venue when the
#: test sends its cancel; the test moves the clock past it to let orders fill.
LATENCY_S = 5.0


async def _halt_with_a_pending_order(policy, log, clock):
    stack = await Stack(policy, log, venue=paper.PaperVenue(latency_ms=LATENCY_S * 1000), control=True).start(price=50.0)
    rt, venue = stack.rt, stack.venue
    (decision,) = await _client(rt.config.intents[1], {"type": "intent", "id": "a", "instrument": "ORCL", "target": 40})
    (oid,) = list(rt.open)
    await until(lambda: oid in venue.pending and oid not in rt.unacked)  # acked, waiting out the latency
    orders_before = rt.counters.orders
    (halted,) = await _client(rt.config.control[1], {"type": "halt", "reason": "test"}, token=OPERATOR)
    await until(lambda: oid not in rt.open)  # the cancel's answer came back
    await clock.advance(LATENCY_S)  # the cancelled order is due now, and whatever the halt sent
    await until(lambda: not rt.open)  # settles (a fill, if it sent an order)
    at_halt = {"orders_sent": rt.counters.orders - orders_before, "positions": rt.engine.positions(),
               "open": rt.engine.open_orders(), "venue_fills": [f["client_order_id"] for f in venue.fills]}
    (while_halted,) = await _client(rt.config.intents[1],
                                    {"type": "intent", "id": "b", "instrument": "ORCL", "target": 30})
    orders_while_halted = rt.counters.orders - orders_before
    (resumed,) = await _client(rt.config.control[1], {"type": "resume", "totp": totp()},
                               token=OPERATOR)
    (after_resume,) = await _client(rt.config.intents[1],
                                    {"type": "intent", "id": "c", "instrument": "ORCL", "target": 30})
    orders_after_resume = rt.counters.orders - orders_before
    await stack.close()
    return {"decision": decision, "oid": oid, "halted": halted, "at_halt": at_halt, "while_halted": while_halted,
            "orders_while_halted": orders_while_halted, "resumed": resumed, "after_resume": after_resume,
            "orders_after_resume": orders_after_resume, "venue": venue}


def test_halt_cancels_an_order_waiting_at_the_venue_and_it_never_fills(policy, tmp_path):
    """A halt cancels an order the venue acknowledged and holds for its latency: the
    venue answers the cancel with a reject, and once the latency is over nothing fills."""
    log = tmp_path / "log.jsonl"
    clock = Clock()
    r = clock.run(_halt_with_a_pending_order(policy, log, clock))
    oid, venue = r["oid"], r["venue"]
    assert r["decision"]["order_qty"] == 40 and r["halted"]["halted"] is True
    assert venue.replies[oid][1:] == [{"type": "reject", "client_order_id": oid, "reason": "cancelled"}]
    assert oid not in venue.pending and oid not in r["at_halt"]["venue_fills"]
    cancels = [rec for rec in _records(log, "reject") if rec["client_order_id"] == oid]
    assert [(rec["reason"], rec["qty"]) for rec in cancels] == [("cancelled", 40)]
    assert not [rec for rec in _records(log, "fill") if rec["client_order_id"] == oid]
    (halt,) = _records(log, "halt")
    assert halt["open_orders"] == [oid]


def test_halt_with_only_a_pending_order_sends_nothing_and_leaves_the_position_flat(policy, tmp_path):
    """The halt cancels the pending buy of 40 and must not also liquidate it: flattening
    `position + open` would sell 40 of a flat position, and once the cancel succeeded
    and the sell filled, the halted account would be short 40."""
    log = tmp_path / "log.jsonl"
    clock = Clock()
    r = clock.run(_halt_with_a_pending_order(policy, log, clock))
    sent_at_halt = [(rec["client_order_id"], rec["qty"], rec["reasons"]) for rec in _records(log, "order")[1:2]]
    assert r["at_halt"]["orders_sent"] == 0, (
        f"the halt sent {sent_at_halt} although the position was flat; once settled: "
        f"positions {r['at_halt']['positions']}, venue fills {r['at_halt']['venue_fills']}")
    assert r["at_halt"]["positions"] == {"ORCL": 0.0} and r["at_halt"]["open"] == {"ORCL": 0.0}
    assert r["at_halt"]["venue_fills"] == []
    assert r["while_halted"]["order_qty"] == 0 and r["orders_while_halted"] == 0  # nothing new until resume
    assert r["resumed"]["halted"] is False
    assert r["after_resume"]["order_qty"] == 30 and r["orders_after_resume"] == 1


def test_an_order_pending_when_halt_comes_while_the_venue_is_down_never_executes(policy, tmp_path):
    """An order queued while the venue is down, then a halt, then the venue comes back:
    the order must not go out: the reconnect sends its cancel, not the order."""
    log = tmp_path / "log.jsonl"

    async def scenario():
        stack = await Stack(policy, log, control=True).start(price=50.0)
        rt, venue = stack.rt, stack.venue
        stack.stop_venue.set()
        await stack.venue_task
        await until(lambda: rt.venue is None)
        (decision,) = await _client(rt.config.intents[1],
                                    {"type": "intent", "id": "a", "instrument": "ORCL", "target": 40})
        (halted,) = await _client(rt.config.control[1], {"type": "halt", "reason": "venue down"}, token=OPERATOR)
        stack.stop_venue = asyncio.Event()
        stack.venue_task = asyncio.create_task(paper.serve(venue, HOST, stack.venue_port,
                                                           f"ws://{HOST}:{stack.feed.port}", stop=stack.stop_venue))
        await until(lambda: rt.venue is not None)
        await until(lambda: not rt.open)  # the runtime learnt how the order ended
        out = {"executed": [(f["side"], f["qty"]) for f in venue.fills], "positions": rt.engine.positions()}
        await stack.close()
        return decision, halted, out

    decision, halted, out = asyncio.run(scenario())
    assert decision["order_qty"] == 40 and halted["halted"] is True
    assert out["executed"] == [], f"the venue executed {out['executed']} after the halt (positions {out['positions']})"


DRAWDOWN = limits(max_position=200, max_order_qty=200, max_drawdown="5%", initial_equity=10000)


def test_a_tripped_max_drawdown_with_a_pending_order_liquidates_the_position_only(tmp_path):
    """Long 100 filled with a buy of 20 waiting at the venue, a drop trips max_drawdown:
    the runtime cancels the 20 and sells the 100, not 120 (a liquidation netted against
    the order being cancelled would end short 20)."""
    policy = compile_policy(parse_policy_text(DRAWDOWN, "dd.yaml"))  # POLICY's kernel
    log = tmp_path / "log.jsonl"

    async def scenario():
        stack = await Stack(policy, log, venue=paper.PaperVenue(latency_ms=LATENCY_S * 1000)).start(price=50.0)
        rt, venue = stack.rt, stack.venue
        await _client(rt.config.intents[1], {"type": "intent", "id": "a", "instrument": "ORCL", "target": 100})
        await until(lambda: rt.open and not rt.unacked)
        await clock.advance(LATENCY_S)
        await until(lambda: not rt.open)
        (pending,) = await _client(rt.config.intents[1],
                                   {"type": "intent", "id": "b", "instrument": "ORCL", "target": 120})
        (oid,) = list(rt.open)
        await until(lambda: oid in venue.pending and oid not in rt.unacked)
        await stack.tick(1, 40.0)  # -1,000 on 10,000: past the 5% drawdown
        await until(lambda: oid not in rt.open)  # cancelled before its latency was over
        await clock.advance(LATENCY_S)  # the liquidation fills
        await until(lambda: not rt.open)
        out = {"halted": rt.engine.halted, "positions": rt.engine.positions(), "oid": oid,
               "replies": venue.replies[oid], "liquidation": [f["qty"] for f in venue.fills[1:]]}
        await stack.close()
        return pending, out

    clock = Clock()
    pending, out = clock.run(scenario())
    assert pending["order_qty"] == 20 and out["halted"] is True
    assert out["replies"][1:] == [{"type": "reject", "client_order_id": out["oid"], "reason": "cancelled"}]
    assert out["positions"] == {"ORCL": 0.0}, (
        f"liquidation sold {out['liquidation']} for a filled position of 100 (the pending 20 was cancelled)")


# ---- issue 9 over loopback: numbers too large, time going backwards, a silent feed --------------------------------

HUGE = limits(max_drawdown="10%", initial_equity=10000)


def test_a_huge_finite_price_is_refused_and_the_kill_switch_still_trips(tmp_path):
    """Issue 9, case 1: long 100 at 50, then a tick at 1e308 and ticks at 40, 25, 10, 5.
    The 1e308 used to overflow equity and its peak to inf, so drawdown was NaN and
    `max_drawdown` never tripped, even at a 45% loss. It is a bad message now; the tick
    at 40 is a 10% drawdown, which trips the kill switch, and the liquidation sells at 40."""
    policy = compile_policy(parse_policy_text(HUGE, "huge.yaml"))  # POLICY's kernel
    log = tmp_path / "log.jsonl"

    async def scenario():
        stack = await Stack(policy, log).start(price=50.0)
        rt = stack.rt
        (buy,) = await _client(rt.config.intents[1], {"type": "intent", "id": "a", "instrument": "ORCL", "target": 100})
        await until(lambda: not rt.open)
        ours = await stack.runtime_side()
        await ours.send(tick(1, 1e308))
        await until(lambda: rt.counters.bad_messages == 1)
        for k, price in enumerate((40.0, 25.0, 10.0, 5.0), start=2):
            await stack.tick(k, price)
            await until(lambda: not rt.open)
        return buy, await stack.close()

    buy, status = asyncio.run(scenario())
    assert buy["order_qty"] == 100
    assert status["halted"] is True and status["positions"] == {"ORCL": 0.0} and status["equity"] == 9000.0
    assert status["bad_messages"] == 1 and status["events"] == 5
    (bad,) = _records(log, "bad_message")
    assert bad["reason"] == "`price` is 1e+308: too large (at most 1e+15 in magnitude)"
    assert _records(log, "halt")[0]["reason"] == "kill_switch:halt,max_drawdown:halt"
    assert [(r["qty"], r["price"], r["exit"]) for r in _records(log, "order")] == [(100.0, 50.0, False),
                                                                                  (-100.0, 40.0, True)]


ONCE_A_DAY = limits(max_position=100, max_order_qty=100, max_orders_per_day=1)
DAY_NS = 86_400_000_000_000


def test_time_going_backwards_on_the_feed_is_refused_and_does_not_reset_the_day(tmp_path):
    """Issue 9, case 2: one order a day. After a tick at T, intent 10 is sent and intent
    20 is blocked; a tick dated a day back, then one a second on, used to reset the day
    counters twice and let 3 orders out within a second. The tick from the day before is
    refused and logged with both times, so the third intent is blocked too; so is a tick
    dated at the last nanosecond of int64, without raising anywhere."""
    policy = compile_policy(parse_policy_text(ONCE_A_DAY, "once_a_day.yaml"))  # POLICY's kernel
    log = tmp_path / "log.jsonl"
    last_ns = 2**63 - 1

    async def scenario():
        stack = await Stack(policy, log).start(price=50.0)
        rt = stack.rt
        first, second = await _intent(rt, {"type": "intent", "id": "a", "instrument": "ORCL", "target": 10},
                                      {"type": "intent", "id": "b", "instrument": "ORCL", "target": 20})
        ours = await stack.runtime_side()
        await ours.send(tick(-DAY_NS, 51.0))
        await ours.send(tick(last_ns - TS, 52.0))
        await until(lambda: rt.counters.bad_messages == 2)
        await stack.tick(1_000_000_000, 53.0)
        (third,) = await _intent(rt, {"type": "intent", "id": "c", "instrument": "ORCL", "target": 30})
        await until(lambda: not rt.open)
        return first, second, third, await stack.close()

    first, second, third, status = asyncio.run(scenario())
    assert first["order_qty"] == 10
    assert second["order_qty"] == 0 and "max_orders_per_day:blocked" in second["reasons"]
    assert third["order_qty"] == 0 and "max_orders_per_day:blocked" in third["reasons"]
    assert status["orders"] == 1 and status["events"] == 2 and status["last_prices"] == {"ORCL": 53.0}
    back, ahead = _records(log, "bad_message")
    assert (back["source"], back["event_ts"], back["last_ts"]) == ("feed", TS - DAY_NS, TS)
    assert back["reason"] == (f"ORCL: event time {TS - DAY_NS} is before the instrument's latest event at {TS} "
                              "(86400 s earlier): refused")
    assert ahead["event_ts"] == last_ns and ahead["wall_ts"] < last_ns and "--max-clock-skew 5 s" in ahead["reason"]


def test_a_feed_that_goes_silent_makes_intents_reduce_only_until_it_sends_again(policy, tmp_path, capsys):
    """Issue 9, case 6: a feed that stops sending but keeps its connection open, and a
    policy without `stale_after`. After --max-feed-silence without a market event, intents
    may only reduce exposure; the silence is logged when it starts and when it ends. The
    silence passes on the test's clock (`Clock`): the runtime's timer and its durations
    run on the event loop's clock."""
    log = tmp_path / "log.jsonl"
    silence_s = 10.0

    async def scenario():
        stack = await Stack(policy, log, max_feed_silence=silence_s).start(price=50.0)
        rt = stack.rt
        (first,) = await _intent(rt, {"type": "intent", "id": "a", "instrument": "ORCL", "target": 40})
        await until(lambda: not rt.open)
        assert rt.status()["reduce_only"] is False
        await clock.advance(silence_s + 1)
        await until(lambda: rt.core.silent_since_ns is not None)  # the timer noticed, no intent asked
        grow, shrink = await _intent(rt, {"type": "intent", "id": "b", "instrument": "ORCL", "target": 90},
                                     {"type": "intent", "id": "c", "instrument": "ORCL", "target": 10})
        await until(lambda: not rt.open)
        silent = rt.status()["reduce_only"]
        await stack.tick(1, 51.0)
        (again,) = await _intent(rt, {"type": "intent", "id": "d", "instrument": "ORCL", "target": 90})
        await until(lambda: not rt.open)
        live = not rt.status()["reduce_only"]
        return first, grow, shrink, again, silent and live, await stack.close()

    clock = Clock()
    first, grow, shrink, again, silent_then_live, status = clock.run(scenario())
    assert first["order_qty"] == 40 and silent_then_live
    assert grow["order_qty"] == 0 and grow["reasons"] == ["stale_after:blocked"]
    assert shrink["order_qty"] == -30 and again["order_qty"] == 80
    assert status["positions"] == {"ORCL": 90.0}
    kinds = [r for r in read_log(log) if r["kind"] in ("order", "feed_silent", "feed_live")]
    assert [(r["kind"], r.get("qty")) for r in kinds] == [("order", 40.0), ("feed_silent", None), ("order", -30.0),
                                                          ("feed_live", None), ("order", 80.0)]
    assert kinds[1]["silent_s"] >= silence_s and kinds[1]["last_event_ts"] == TS
    assert kinds[3]["silent_s"] >= silence_s + 1 and kinds[3]["ts"] == TS + 1
    said = [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines() if "market data" in line]
    assert [line.split(" for ")[0].split(" after ")[0] for line in said] == ["no market data", "market data again"]
    assert said[0].endswith("s; intents are reduce-only")


#: Long 10 at or above 100, short 10 below 92, a 5% stop; its order size is never limited.
#: Without a custom rule it is TREND's kernel; with one, a kernel of its own.
STOP_FLIP = RULES.format(enter=100, up=10, leave=92, down=-10, max_position=10, max_order_qty=1_000_000,
                         stop_loss="5%", custom="{custom}", initial_equity=10_000)
AFTERNOON = "  custom:\n    - {name: afternoon, when: hour(ts) >= 13, action: block}\n"
TEN_AM = 1_700_042_400 * 1_000_000_000 - TS  # 2023-11-15T10:00:00Z, as an offset for `tick`
HOUR = 3_600_000_000_000


@pytest.mark.parametrize("custom, orders, position, equity", [
    # issue 9, case 3: the re-entry is blocked after 13:00, the exit is not: out at 90, 9,900 left
    (AFTERNOON, [(10.0, 100.0, False), (-10.0, 90.0, True)], 0.0, 9900.0),
    # without the block the re-entry follows the exit as an order of its own; short 10 from 90 at 80
    ("", [(10.0, 100.0, False), (-10.0, 90.0, True), (-10.0, 90.0, False)], -10.0, 10000.0),
])
def test_a_stop_that_meets_an_opposite_target_exits_first_and_re_enters_as_a_checked_order(tmp_path, custom, orders,
                                                                                           position, equity):
    """Hourly bars 100, 99, 96, 90, 85, 80 from 10:00, long 10 at 100 with a 5% stop; at
    13:00 the stop triggers on the bar whose signal asks for -10."""
    policy = compile_policy(parse_policy_text(STOP_FLIP.format(custom=custom), "stop_flip.yaml"))
    log = tmp_path / "log.jsonl"

    async def scenario():
        stack = await Stack(policy, log).start(price=95.0)  # no signal
        for h, price in enumerate((100.0, 99.0, 96.0, 90.0, 85.0, 80.0)):
            await stack.tick(TEN_AM + h * HOUR, price)
            await until(lambda: not stack.rt.open)
        return await stack.close()

    status = asyncio.run(scenario())
    assert [(r["qty"], r["price"], r["exit"]) for r in _records(log, "order")] == orders
    assert status["positions"] == {"ORCL": position} and status["equity"] == equity


def test_a_looped_replay_dates_each_pass_after_the_one_before():
    """`replay-feed --loop` moves each pass on by the recording's span and one mean step,
    so a runtime that refuses time going backwards takes every pass."""
    import numpy as np
    from websockets.asyncio.client import connect

    from policyc.runtime.live import replay

    day = 86_400_000_000_000
    rec = replay.Recording(["ORCL"], np.array([TS, TS + day, TS + 3 * day]), np.zeros(3, int),
                           {"price": np.array([1.0, 2.0, 3.0])})

    async def scenario():
        port, stop, ready = free_port(), asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(replay.serve(rec, HOST, port, loop=True, ready=ready, stop=stop))
        await ready.wait()
        async with connect(f"ws://{HOST}:{port}") as ws:
            got = [json.loads(await ws.recv()) for _ in range(7)]
        stop.set()
        await server
        return got

    got = asyncio.run(scenario())
    step = 3 * day + 3 * day // 2  # the span and one mean step
    assert [(m["ts"], m["price"]) for m in got] == [
        (TS, 1.0), (TS + day, 2.0), (TS + 3 * day, 3.0),
        (TS + step, 1.0), (TS + step + day, 2.0), (TS + step + 3 * day, 3.0), (TS + 2 * step, 1.0)]


# ---- a paper venue priced from a binance feed --------------------------------------------------------------------

def trade(k: int, price: float, symbol: str = "BTCUSDT") -> str:
    ms = TS // 1_000_000 + k
    return json.dumps({"e": "trade", "E": ms, "s": symbol, "t": k, "p": repr(price), "q": "0.5", "T": ms,
                       "m": False, "M": True})


def test_paper_venue_fills_at_the_last_binance_trade_price(tmp_path):
    from websockets.asyncio.client import connect

    async def scenario():
        feed = Feed(free_port())
        await feed.start()
        venue, port, stop = paper.PaperVenue(feed_format="binance"), free_port(), asyncio.Event()
        task = asyncio.create_task(paper.serve(venue, HOST, port, f"ws://{HOST}:{feed.port}", stop=stop))
        await until(lambda: len(feed.clients) == 1 and _listening(port))
        await feed.send(trade(1, 16540.0), tick(2, 99.0), trade(3, 16541.53))  # a native tick is not read
        await until(lambda: venue.last_price.get("BTCUSDT") == 16541.53)
        async with connect(f"ws://{HOST}:{port}") as ws:
            await ws.send(_order("b1", qty=0.5, instrument="BTCUSDT"))
            replies = [json.loads(await ws.recv()), json.loads(await ws.recv())]
            await ws.send(_order("b2", qty=1, instrument="ORCL"))
            refused = json.loads(await ws.recv())
        stop.set()
        await task
        await feed.stop()
        return replies, refused

    replies, refused = asyncio.run(scenario())
    assert [r["type"] for r in replies] == ["ack", "fill"]
    assert replies[1]["price"] == 16541.53 and replies[1]["qty"] == 0.5
    assert refused["type"] == "reject" and refused["reason"].startswith("no price")


@pytest.mark.parametrize("instrument", ["BTCUSDT", "binance:BTCUSDT"])
def test_a_runtime_on_a_binance_feed_gets_fills_from_a_binance_paper_venue(tmp_path, instrument):
    """The runtime names a trade's instrument `binance:SYMBOL` when the policy lists it so
    and sends its orders under that name; the venue must price them from SYMBOL's trades."""
    policy = compile_policy(parse_policy_text(  # POLICY's kernel: an instrument's name is not code
        limits(f'"{instrument}"', max_position=10, max_order_qty=10), "crypto.yaml"))
    log = tmp_path / "log.jsonl"

    async def scenario():
        feed = Feed(free_port())
        await feed.start()
        venue, port, stop = paper.PaperVenue(feed_format="binance"), free_port(), asyncio.Event()
        task = asyncio.create_task(paper.serve(venue, HOST, port, f"ws://{HOST}:{feed.port}", stop=stop))
        rt = LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed.port}", f"ws://{HOST}:{port}", feed_format="binance",
                                           log_path=str(log), intents=(HOST, free_port()), guard=guard(),
                                           max_feed_silence=QUIET_S))
        run = asyncio.create_task(rt.run())
        await until(lambda: len(feed.clients) == 2 and rt.venue is not None)
        await feed.send(trade(1, 16540.0), trade(2, 16541.53))
        await until(lambda: rt.counters.events == 2 and venue.last_price.get("BTCUSDT") == 16541.53)
        (decision,) = await _client(rt.config.intents[1],
                                    {"type": "intent", "id": "a", "instrument": instrument, "target": 2})
        await until(lambda: not rt.open)
        positions = rt.engine.positions()
        rt.stop.set()
        await run
        stop.set()
        await task
        await feed.stop()
        return decision, positions

    decision, positions = asyncio.run(scenario())
    assert decision["order_qty"] == 2
    rejects = [r["reason"] for r in _records(log, "reject")]
    assert rejects == [], f"the paper venue refused the order: {rejects}"
    assert positions == {instrument: 2.0}
    (fill,) = _records(log, "fill")
    assert fill["price"] == 16541.53


# ---- SIGTERM ---------------------------------------------------------------------------------------------------------


def _sigterm(proc, timeout=FAILSAFE_S):
    """SIGTERM, and the process's (returncode, stdout, stderr) once it is gone."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args[1]} still running {timeout} s after SIGTERM; stderr: {err}")
    return proc.returncode, out, err


def _first_line(pipe, timeout=FAILSAFE_S) -> str:
    """The next line from a process's pipe ('' if it closed); the timeout is a failsafe."""
    import select

    ready, _, _ = select.select([pipe], [], [], timeout)
    assert ready, f"no output after {timeout} s"
    return pipe.readline()


def test_replay_feed_stops_on_sigterm_with_exit_0():
    import subprocess

    port = free_port()
    proc = subprocess.Popen(policyc_command("replay-feed", "--data", f"ORCL={ORCL_DATA}", "--listen", f"{HOST}:{port}",
                                     "--rate", "100"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _first_line(proc.stderr).startswith("replaying")  # up, and about to handle signals
        wait_port(port, proc=proc)
    finally:
        code, _, err = _sigterm(proc)
    assert code == 0, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "sent 0 events"


def test_paper_venue_cli_prices_from_a_binance_feed_and_stops_on_sigterm_with_a_summary():
    from websockets.asyncio.client import connect

    async def scenario():
        feed = Feed(free_port())
        await feed.start()
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *policyc_command("paper-venue", "--listen", f"{HOST}:{port}", "--feed", f"ws://{HOST}:{feed.port}",
                      "--feed-format", "binance"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await until(lambda: len(feed.clients) == 1 and _listening(port))
            await feed.send(trade(1, 16540.0), trade(2, 16541.53), trade(3, 1.5, symbol="ETHUSDT"))
            async with connect(f"ws://{HOST}:{port}") as ws:
                async def until_priced():  # ETHUSDT is priced once every trade before it was read
                    for k in itertools.count():
                        await ws.send(_order(f"probe{k}", qty=1, instrument="ETHUSDT"))
                        if json.loads(await ws.recv())["type"] == "ack":
                            await ws.recv()  # its fill
                            return
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(until_priced(), FAILSAFE_S)
                await ws.send(_order("b1", qty=0.5, instrument="BTCUSDT"))
                replies = [json.loads(await ws.recv()), json.loads(await ws.recv())]
        finally:
            proc.send_signal(15)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), FAILSAFE_S)
            except asyncio.TimeoutError:
                proc.kill()
                raise AssertionError(f"paper-venue still running {FAILSAFE_S} s after SIGTERM")
            await feed.stop()
        return replies, proc.returncode, err.decode()

    replies, code, err = asyncio.run(scenario())
    assert [r["type"] for r in replies] == ["ack", "fill"] and replies[1]["price"] == 16541.53
    assert code == 0, err
    assert "Traceback" not in err
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["fills"] == 2  # the probe and b1


def test_sigterm_mid_stream_stops_run_replay_feed_and_paper_venue_with_exit_0_and_a_flushed_log(tmp_path):
    """The three live commands as processes, trading: SIGTERM each while the feed is still
    streaming. The log must end on a complete line and hold every order and fill `run`
    counted, and the SIGTERM path must sync and close it. The feed runs at 250 events a
    second: the stream lasts 20 s, far longer than the SIGTERMs take on a busy machine."""
    import subprocess
    import time

    policy = compile_policy(parse_policy_text(FLIP, "flip.yaml"))
    policy_path = tmp_path / "flip.yaml"
    policy_path.write_text(FLIP)
    log = tmp_path / "log.jsonl"
    feed_port, venue_port = free_port(), free_port()
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    feed = subprocess.Popen(policyc_command("replay-feed", "--data", f"ORCL={ORCL_DATA}", "--listen", f"{HOST}:{feed_port}",
                                     "--rate", "250", "--clients", "2"), **pipes)
    venue = subprocess.Popen(policyc_command("paper-venue", "--listen", f"{HOST}:{venue_port}",
                                      "--feed", f"ws://{HOST}:{feed_port}"), **pipes)
    run = subprocess.Popen(policyc_command("run", policy_path, "--feed", f"ws://{HOST}:{feed_port}",
                                    "--venue", f"ws://{HOST}:{venue_port}", "--log", log), **pipes)
    procs = [run, feed, venue]
    try:
        deadline = time.monotonic() + FAILSAFE_S
        while b'"kind":"order"' not in (log.read_bytes() if log.exists() else b""):  # trading is under way
            gone = [p for p in procs if p.poll() is not None]
            assert not gone, [(p.args[1], p.returncode, p.communicate()[1]) for p in gone]
            assert time.monotonic() < deadline, f"no decision log after {FAILSAFE_S} s"
            time.sleep(0.02)
        before = log.read_bytes()
        run_code, run_out, run_err = _sigterm(run)
        feed_code, _, feed_err = _sigterm(feed)
        venue_code, _, venue_err = _sigterm(venue)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert run_code == 0, run_err
    assert feed_code == 0, feed_err
    assert venue_code == 0, venue_err
    assert not any("Traceback" in e for e in (run_err, feed_err, venue_err))

    status = json.loads(run_out[:run_out.rindex("decision log:")])
    raw = log.read_bytes()
    # (whether some records were still buffered at the SIGTERM is chance; the counts below
    # prove that none that were got lost)
    assert raw.startswith(before) and raw.endswith(b"\n")
    records = read_log(log)  # every line is complete JSON
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["kind"] == "session" and records[0]["policy_hash"] == policy.policy_hash
    assert status["orders"] > 0
    kinds = [r["kind"] for r in records]
    assert kinds.count("order") == status["orders"] and kinds.count("fill") == status["fills"]
    sent = int(feed_err.strip().splitlines()[-1].split()[1].replace(",", ""))
    assert 0 < sent < 5036  # stopped mid-stream
    assert json.loads(venue_err.strip().splitlines()[-1])["fills"] >= status["fills"]


# ---- a peer that vanishes without closing ------------------------------------------------------------------------

def _keepalive_on_the_tests_clock(monkeypatch, interval):
    """`transport` with PING_INTERVAL_S = `interval`, and the loop time of every keepalive
    check of a Stream and of every read of one, as lists the test can wait on."""
    from policyc.runtime.live import transport

    monkeypatch.setattr(transport, "PING_INTERVAL_S", interval)
    checks, reads = [], []
    ping, data_received = transport.Stream._ping, transport.Stream.data_received

    def counted_ping(self):
        checks.append(asyncio.get_running_loop().time())
        ping(self)

    def counted_read(self, data):
        reads.append(asyncio.get_running_loop().time())
        data_received(self, data)

    monkeypatch.setattr(transport.Stream, "_ping", counted_ping)
    monkeypatch.setattr(transport.Stream, "data_received", counted_read)
    return transport, checks, reads


#: The keepalive interval in the two tests below, on the test's clock (`Clock`): the test
#: moves time on one interval at a time, and no stall of a busy machine comes near it, so
#: a stall can neither pass for a silent peer nor hide one.
KEEPALIVE_S = 60.0


def test_a_silent_peer_is_pinged_and_dropped_so_the_connection_can_be_remade(monkeypatch):
    """No FIN from a host that went away: the stream pings after PING_INTERVAL_S of
    silence and drops the connection when not even a pong came back by the next check."""
    transport, checks, reads = _keepalive_on_the_tests_clock(monkeypatch, KEEPALIVE_S)
    clock = Clock()

    async def scenario():
        release = asyncio.Event()

        async def handler(ws):
            ws.transport.pause_reading()  # alive for TCP, deaf for WebSocket: no pong
            await release.wait()
            ws.transport.abort()  # no closing handshake to wait out: it would not be read

        async with serve(handler, HOST, 0, ping_interval=None) as server:
            port = server.sockets[0].getsockname()[1]
            stream = await transport.connect(f"ws://{HOST}:{port}", lambda m: None, lambda why: None)
            await clock.advance(KEEPALIVE_S)
            await until(lambda: len(checks) == 1)
            after_one_interval = stream.lost.done()  # silent for one interval: pinged, not dropped
            await clock.advance(KEEPALIVE_S)
            await until(lambda: len(checks) == 2)
            await asyncio.wait_for(asyncio.shield(stream.lost), FAILSAFE_S)
            release.set()
            return after_one_interval, len(checks), stream.protocol.close_rcvd

    after_one_interval, n_checks, close_rcvd = clock.run(scenario())
    assert after_one_interval is False
    assert n_checks == 2 and close_rcvd is None  # dropped by the second check; the peer never closed


def test_a_quiet_but_alive_peer_keeps_its_connection(monkeypatch):
    """A peer that sends nothing but answers every ping keeps its connection, check
    after check: each check after an interval of quiet pings, the pong comes back."""
    transport, checks, reads = _keepalive_on_the_tests_clock(monkeypatch, KEEPALIVE_S)
    clock = Clock()

    async def scenario():
        release = asyncio.Event()

        async def handler(ws):
            await release.wait()  # sends nothing, but its protocol answers pings

        async with serve(handler, HOST, 0, ping_interval=None) as server:
            port = server.sockets[0].getsockname()[1]
            stream = await transport.connect(f"ws://{HOST}:{port}", lambda m: None, lambda why: None)
            pongs = 0
            for k in range(1, 5):
                read_before = len(reads)
                await clock.advance(KEEPALIVE_S)
                await until(lambda: len(checks) == k)
                await until(lambda: len(reads) > read_before or stream.lost.done())  # the pong, the only read
                if stream.lost.done():
                    break
                pongs += 1
            alive = not stream.lost.done()
            stream.close()
            release.set()
            return alive, pongs

    alive, pongs = clock.run(scenario())
    assert alive and pongs == 4


def test_keepalive_decides_on_reads_not_on_timer_precision(monkeypatch):
    """Each keepalive check looks only at what was read since the last one, so a timer
    that fires a millisecond early or late (uvloop's resolution) cannot drop a live peer:
    traffic -> no ping; quiet -> ping; only the pong -> ping again; nothing after a
    ping -> drop."""
    from policyc.runtime.live import transport

    class Wire:  # the socket side of a Stream: what it sends and whether it aborted
        def __init__(self):
            self.aborted = False

        def is_closing(self):
            return self.aborted

        def write(self, data):
            pass

        def abort(self):
            self.aborted = True

    async def scenario():
        stream = transport.Stream("ws://127.0.0.1:1", lambda m: None, lambda why: None, 1 << 20)
        stream.transport = Wire()
        monkeypatch.setattr(stream.protocol, "state", transport.State.OPEN)
        pings = []
        monkeypatch.setattr(stream.protocol, "send_ping", lambda data: pings.append(data))
        steps = []
        for reads in (3, 0, 1, 1, 0, 1):  # reads arriving before each check
            stream._reads += reads
            before = len(pings)
            stream._ping()
            if stream._keepalive is not None:
                stream._keepalive.cancel()  # the test makes every check itself
            steps.append("drop" if stream.transport.aborted else "ping" if len(pings) > before else "-")
            if stream.transport.aborted:
                break
        return steps

    assert asyncio.run(scenario()) == ["-", "ping", "ping", "ping", "drop"]
