"""The runner's order bookkeeping without sockets: venue answers replayed after a
reconnect, partial fills, and the kill switch with orders still open. Frames go in
through the same callbacks the sockets call; frames out are collected. Then what `run`
says when the feed or the venue cannot be reached (on ports nothing listens on)."""
import asyncio
import functools
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from loopback import HOST, free_port, until

from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.live.runner import LiveRuntime, RunConfig

from test_data import two_longs
from test_live_faults import RULES

#: Always long 10 (every price is above 0; none is below 0), at most 10: tests/test_live_faults.py's
#: `RULES` template, so this is the kernel its feed-driven tests compile (the same source: the
#: thresholds and targets are params, the limits' values are not code). Its max_order_qty
#: and its stop (100%: a price of 0, which no tick here sends) never bind.
POLICY = RULES.format(enter=0, up=10, leave=0, down=0, max_position=10, max_order_qty=1_000_000, stop_loss="100%",
                      custom="", initial_equity=100_000)
TS = 1_700_000_000_000_000_000


class Venue:
    """Stands in for the venue stream: keeps what the runtime sends."""

    def __init__(self):
        self.sent = []

    def send(self, frame):
        self.sent.append(orjson.loads(frame))

    def corked(self, enabled=True):
        from contextlib import nullcontext

        return nullcontext()


def connect(runtime, venue):
    """The venue connects; it answers the new run's state request: flat, nothing open."""
    runtime._venue_connected(venue)
    assert venue.sent[-1] == {"type": "state_request"}
    venue.sent.pop()
    runtime.on_venue_messages([orjson.dumps({"type": "state", "positions": {}, "open_orders": []})])


@pytest.fixture(scope="module")
def policy():
    return compile_policy(parse_policy_text(POLICY, "always_long.yaml"))


@pytest.fixture
def rt(policy, tmp_path):
    runtime = LiveRuntime(policy, RunConfig("ws://feed", "ws://venue", log_path=str(tmp_path / "log.jsonl")))
    connect(runtime, Venue())
    yield runtime
    runtime.log.close()


def tick(rt, k, price=50.0):
    rt.on_feed_messages([orjson.dumps({"type": "tick", "instrument": "ORCL", "ts": TS + k, "price": price})])


def answer(rt, *replies):
    rt.on_venue_messages([orjson.dumps(r) for r in replies])


def ack(oid):
    return {"type": "ack", "client_order_id": oid, "venue_order_id": "V1"}


def fill(oid, qty, price=50.0):
    return {"type": "fill", "client_order_id": oid, "qty": qty, "price": price, "fee": 0.0, "ts": TS}


def orders(venue, kind="order"):
    return [m for m in venue.sent if m["type"] == kind]


def test_a_partial_fill_answered_again_after_a_reconnect_is_applied_once(rt):
    tick(rt, 0)
    (order,) = orders(rt.venue)
    oid = order["client_order_id"]
    answer(rt, ack(oid), fill(oid, 4))
    assert rt.engine.position("ORCL") == 4 and rt.engine.open_quantity("ORCL") == 6

    rt._venue_lost()
    rt._venue_connected(Venue())              # the open order is resent ...
    assert orders(rt.venue) == [order]
    answer(rt, ack(oid), fill(oid, 4))         # ... and the venue answers all it said about it
    assert rt.engine.position("ORCL") == 4 and rt.engine.open_quantity("ORCL") == 6
    answer(rt, fill(oid, 6))                   # the rest, new
    assert rt.engine.position("ORCL") == 10 and rt.engine.open_quantity("ORCL") == 0 and not rt.open


def test_halt_with_a_partly_filled_order_liquidates_what_is_held_and_cancels_the_rest(rt):
    tick(rt, 0)
    oid = orders(rt.venue)[0]["client_order_id"]
    answer(rt, ack(oid), fill(oid, 4))
    rt.halt("test")
    assert orders(rt.venue, "cancel") == [{"type": "cancel", "client_order_id": oid}]
    liquidation = orders(rt.venue)[-1]
    assert liquidation["side"] == "sell" and liquidation["qty"] == 4
    answer(rt, {"type": "reject", "client_order_id": oid, "reason": "cancelled"})
    lid = liquidation["client_order_id"]
    answer(rt, ack(lid), fill(lid, 4))
    assert rt.engine.position("ORCL") == 0 and rt.engine.open_quantity("ORCL") == 0 and not rt.open
    tick(rt, 1)                                # halted: nothing new
    assert len(orders(rt.venue)) == 2


def test_a_fill_that_beats_its_kill_switch_cancel_is_flattened_too(rt):
    tick(rt, 0)
    oid = orders(rt.venue)[0]["client_order_id"]
    answer(rt, ack(oid), fill(oid, 4))
    rt.halt("test")
    lid = orders(rt.venue)[-1]["client_order_id"]
    answer(rt, fill(oid, 6))                   # the rest filled before the cancel arrived
    assert rt.engine.position("ORCL") == 10
    more = orders(rt.venue)[-1]
    assert more["client_order_id"] != lid and more["side"] == "sell" and more["qty"] == 6
    answer(rt, ack(lid), fill(lid, 4), ack(more["client_order_id"]), fill(more["client_order_id"], 6))
    assert rt.engine.position("ORCL") == 0 and not rt.open


def test_resume_counts_an_order_still_being_cancelled_against_the_limits_again(rt):
    tick(rt, 0)
    oid = orders(rt.venue)[0]["client_order_id"]
    rt.halt("test")                            # nothing filled: nothing to liquidate
    assert rt.engine.open_quantity("ORCL") == 0 and len(orders(rt.venue)) == 1
    rt.resume()
    assert rt.engine.open_quantity("ORCL") == 10
    tick(rt, 1)                                # target 10 is covered by the order still open
    assert len(orders(rt.venue)) == 1
    answer(rt, {"type": "reject", "client_order_id": oid, "reason": "cancelled"})
    assert rt.engine.open_quantity("ORCL") == 0
    tick(rt, 2)
    assert len(orders(rt.venue)) == 2


def test_a_reconnect_while_halted_cancels_the_orders_being_cancelled_and_resends_the_liquidation(rt):
    tick(rt, 0)
    oid = orders(rt.venue)[0]["client_order_id"]
    answer(rt, ack(oid), fill(oid, 4))
    rt._venue_lost()
    rt.halt("venue down")                      # the cancel and the liquidation cannot leave
    venue = Venue()
    rt._venue_connected(venue)
    kinds = sorted((m["type"], m.get("side")) for m in venue.sent)
    assert kinds == [("cancel", None), ("order", "sell")]


#: Long 1000 of each above 100, a kill switch at a drawdown of 10%: tests/test_data.py's
#: two-instrument kernel (its `PAIR` with these values).
DRAWDOWN = two_longs("A", "B", enter=100, size=1000, max_position=1000, max_drawdown="10%")


@pytest.fixture
def two(tmp_path):
    policy = compile_policy(parse_policy_text(DRAWDOWN, "two_longs.yaml"))
    runtime = LiveRuntime(policy, RunConfig("ws://feed", "ws://venue", log_path=str(tmp_path / "log.jsonl")))
    connect(runtime, Venue())
    yield runtime
    runtime.log.close()


def ticks(rt, *events):
    """One read of the feed carrying several ticks: one kernel call."""
    rt.on_feed_messages([orjson.dumps({"type": "tick", "instrument": i, "ts": TS + k, "price": p})
                         for k, (i, p) in enumerate(events)])


def test_a_read_that_trips_the_kill_switch_sends_none_of_its_orders_only_liquidations(two):
    ticks(two, ("A", 150.0))
    (buy,) = orders(two.venue)
    answer(two, ack(buy["client_order_id"]), fill(buy["client_order_id"], 1000, 150.0))
    # B's buy is decided first in this read, then A's drop trips max_drawdown
    ticks(two, ("B", 150.0), ("A", 130.0))
    assert two.engine.halted
    sent = orders(two.venue)[1:]
    assert [(o["instrument"], o["side"], o["qty"]) for o in sent] == [("A", "sell", 1000)]
    assert two.engine.open_quantity("B") == 0 and two.engine.open_quantity("A") == -1000


def test_a_second_halt_after_resume_withdraws_orders_still_being_cancelled_again(rt):
    tick(rt, 0)
    oid = orders(rt.venue)[0]["client_order_id"]
    answer(rt, ack(oid), fill(oid, 4))
    rt.halt("first")                           # cancel sent for the 6 left, liquidation of 4
    lid = orders(rt.venue)[-1]["client_order_id"]
    answer(rt, ack(lid), fill(lid, 4))
    rt.resume()                                # the 6 count again while their cancel is unanswered
    assert rt.engine.open_quantity("ORCL") == 6
    rt.halt("second")
    assert rt.engine.open_quantity("ORCL") == 0 and len(orders(rt.venue)) == 2  # flat: nothing to sell
    assert len(orders(rt.venue, "cancel")) == 1  # the first cancel still stands
    answer(rt, {"type": "reject", "client_order_id": oid, "reason": "cancelled"})
    assert rt.engine.position("ORCL") == 0 and not rt.open


def test_the_end_of_a_connection_is_said_with_why_this_side_dropped_it():
    """stderr names the cause when the runtime dropped the connection itself (a venue not
    reading its orders, a peer not answering a ping: `Stream.dropped`), the peer's close
    code when it closed, and a plain loss otherwise."""
    from policyc.runtime.live.runner import _why_lost

    unread = "the peer left over 4,194,304 bytes unread"
    assert _why_lost(None, unread) == f"connection dropped: {unread}"
    assert _why_lost(1006, "no answer to a ping within 20 s") == "connection dropped: no answer to a ping within 20 s"
    assert _why_lost(1001, None) == "connection closed (code 1001)"
    assert _why_lost(None, None) == _why_lost(1006, None) == "connection lost"


def test_a_feed_that_breaks_the_protocol_is_said_dropped_with_its_reason_and_code(policy, tmp_path, capsys,
                                                                                 monkeypatch):
    """End to end: a feed that sends a text frame that is not UTF-8 is failed by the
    runtime (close 1007), and stderr says why, as its bad message does."""
    from test_live_transport import _answer, _raw
    from websockets.asyncio.server import serve

    monkeypatch.setattr(LiveRuntime, "_feed_after_venue", functools.partialmethod(LiveRuntime._feed_after_venue, 0.0))
    said: list[str] = []

    async def feed(reader, writer):
        writer.write(_answer(await reader.readuntil(b"\r\n\r\n")) + _raw(0x81, b'{"a":"\xff"}'))
        await reader.read()  # until the runtime drops it
        writer.close()

    async def hold(ws):
        await ws.wait_closed()

    async def scenario():
        feed_server = await asyncio.start_server(feed, HOST, 0)
        venue_server = await serve(hold, HOST, 0)
        feed_url = f"ws://{HOST}:{feed_server.sockets[0].getsockname()[1]}/"
        venue_url = f"ws://{HOST}:{venue_server.sockets[0].getsockname()[1]}/"
        rt = LiveRuntime(policy, RunConfig(feed_url, venue_url, log_path=str(tmp_path / "log.jsonl")))
        run = asyncio.create_task(rt.run())
        await until(lambda: said.extend(capsys.readouterr().err.splitlines()) or
                    any("connection dropped" in line for line in said))
        rt.stop.set()
        await run
        feed_server.close()
        venue_server.close()
        return feed_url, rt.counters.bad_messages

    feed_url, bad = asyncio.run(scenario())
    reason = "invalid UTF-8: invalid start byte at position 6"
    assert f"feed {feed_url}: connection dropped: {reason} (code 1007); reconnecting" in said
    assert bad >= 1  # and the bad message, with the same reason, is in the log


# ---- connections that fail: said once on stderr, not once per retry ---------------------------------------------------

def test_a_connection_that_fails_is_said_once_on_stderr_and_again_when_it_comes_back(policy, tmp_path, capsys,
                                                                                     monkeypatch):
    from websockets.asyncio.server import serve

    # the feed is tried at once instead of after 5 s without a venue
    monkeypatch.setattr(LiveRuntime, "_feed_after_venue", functools.partialmethod(LiveRuntime._feed_after_venue, 0.0))
    feed_url, venue_port = f"ws://{HOST}:{free_port()}/", free_port()  # ports nothing listens on
    venue_url = f"ws://{HOST}:{venue_port}/"

    def lines():
        return capsys.readouterr().err.splitlines()

    async def scenario():
        rt = LiveRuntime(policy, RunConfig(feed_url, venue_url, log_path=str(tmp_path / "log.jsonl")))
        run = asyncio.create_task(rt.run())
        retries = []
        await until(lambda: rt.counters.reconnects >= 8)  # several failed attempts each
        retries.append(lines())
        assert {source: link.state for source, link in rt.links.items()} == {"feed": "down", "venue": "down"}
        assert rt.links["venue"].error == "cannot connect (Connection refused)"

        async def hold(ws):
            await ws.wait_closed()

        venue = await serve(hold, HOST, venue_port)  # the venue comes up ...
        await until(lambda: rt.links["venue"].state == "connected")
        retries.append(lines())
        venue.close()                                # ... and goes away again
        await venue.wait_closed()
        reconnects = rt.counters.reconnects
        await until(lambda: rt.links["venue"].state == "down" and rt.counters.reconnects >= reconnects + 4)
        retries.append(lines())
        rt.stop.set()
        return await run, retries

    status, (failing, back, lost) = asyncio.run(scenario())
    assert sorted(failing) == [f"feed {feed_url}: cannot connect (Connection refused); retrying about every 2 s",
                               f"venue {venue_url}: cannot connect (Connection refused); retrying about every 2 s"]
    assert back == [f"venue {venue_url}: connected"]
    assert lost == [f"venue {venue_url}: connection closed (code 1001); reconnecting"]  # the server going away
    assert not lines()  # stopping says nothing
    assert status["reconnects"] >= 12
    # the decision log has the session record and the venue connection's opening and closing as inputs of its
    # journal (audit.md), not each failed attempt
    assert [orjson.loads(line)["kind"] for line in (tmp_path / "log.jsonl").read_bytes().splitlines()] == \
        ["session", "link", "link"]


def test_the_terminal_view_shows_each_connection_and_why_one_is_down(rt):
    from rich.console import Console

    from policyc.runtime.live.view import render

    rt.links["venue"].state = "connected"
    rt._link_down("feed", "cannot connect (Connection refused)", "retrying about every 2 s")
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render(rt.status(), links=rt.links))
    text = console.export_text()
    assert "feed  ws://feed  DOWN for 0 s: cannot connect (Connection refused); retrying" in text
    assert "venue ws://venue  connected" in text


def test_run_says_on_stderr_that_it_cannot_reach_the_venue(tmp_path):
    """`policyc run` off a terminal, against a venue port nothing listens on: one line on
    stderr right away however many retries follow, and the final status on stdout."""
    policy_file = tmp_path / "always_long.yaml"
    policy_file.write_text(POLICY)
    feed_url, venue_url = f"ws://{HOST}:{free_port()}/", f"ws://{HOST}:{free_port()}/"
    run = subprocess.run([str(Path(sys.executable).parent / "policyc"), "run", str(policy_file), "--feed", feed_url,
                          "--venue", venue_url, "--log", str(tmp_path / "log.jsonl"), "--duration", "2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    said = [line for line in run.stderr.splitlines() if "ws://" in line]
    # the feed is tried 5 s after start without a venue: not within --duration 2
    assert said == [f"venue {venue_url}: cannot connect (Connection refused); retrying about every 2 s"]
    status = json.loads(run.stdout[:run.stdout.rindex("decision log:")])
    assert status["reconnects"] >= 1


def test_an_order_says_which_market_event_it_was_decided_on(rt):
    """An order decided on a market event carries that event's time as `event_ts` (a
    paper venue fills it at that event's price); one decided on nothing the feed sent,
    like the kill switch's liquidation, has none."""
    venue = rt.venue
    tick(rt, 1)
    (buy,) = orders(venue)
    assert buy["event_ts"] == buy["ts"] == TS + 1
    answer(rt, ack(buy["client_order_id"]), fill(buy["client_order_id"], 10))
    rt.halt("operator")
    (sell,) = orders(venue)[1:]
    assert sell["side"] == "sell" and "event_ts" not in sell


def test_the_session_record_says_the_clock_skew_and_feed_silence_the_run_uses(policy, tmp_path):
    log = tmp_path / "log.jsonl"
    runtime = LiveRuntime(policy, RunConfig("ws://feed", "ws://venue", log_path=str(log), max_clock_skew=0.5,
                                            max_feed_silence=30.0))
    runtime.log.close()
    (session,) = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert (session["max_clock_skew_s"], session["max_feed_silence_s"]) == (0.5, 30.0)
    assert (runtime.core.max_clock_skew_ns, runtime.core.max_feed_silence_ns) == (500_000_000, 30_000_000_000)


def test_an_answer_the_core_cannot_handle_does_not_cost_the_fills_after_it(rt, monkeypatch):
    """A defect in handling one venue answer (here: the core raising on an id) is a counted
    bad message; the real fill in the same read is still applied."""
    tick(rt, 0)
    oid = orders(rt.venue)[0]["client_order_id"]
    handle = rt.core._venue_reply

    def defective(reply):
        if reply.client_order_id == "poison":
            raise ValueError("a defect")
        handle(reply)

    monkeypatch.setattr(rt.core, "_venue_reply", defective)
    answer(rt, fill("poison", 1), fill(oid, 10))
    assert rt.engine.position("ORCL") == 10 and rt.counters.bad_messages == 1
    (bad,) = [r for r in json_records(rt) if r["kind"] == "bad_message"]
    assert bad["reason"] == "internal error handling a `fill` for 'poison': ValueError('a defect')"


def test_the_answers_of_one_read_are_one_journal_record_and_replay_from_it(rt):
    tick(rt, 0)
    oid = orders(rt.venue)[0]["client_order_id"]
    answer(rt, ack(oid), fill(oid, 4), fill(oid, 6))
    venue = [r for r in json_records(rt) if r["kind"] == "venue" and r.get("type") != "state"]  # after the state
    assert [[a["type"] for a in r["frames"]] for r in venue] == [["ack", "fill", "fill"]]  # as they came
    assert rt.engine.position("ORCL") == 10
    rt.log.close()
    from policyc.runtime.journal import replay

    replayer, divergences = replay(json_records(rt), lambda session: rt.policy)
    assert divergences == [] and replayer.engine.position("ORCL") == 10


def test_a_read_is_journaled_as_its_frames_came_only_when_every_frame_is_well_formed(rt):
    """A read of well-formed frames is journaled as them, verbatim (`frames`); a read with a
    refused frame, a frame whose JSON spans lines (which a line of the log cannot hold), one
    padded past VERBATIM_BYTES a message, or a valid answer with members the protocol does
    not know or an escape, as its messages (`events`, `replies`): no text a peer chose
    beyond the protocol's own reaches the log. Every read replays to the same decisions."""
    good = [orjson.dumps({"type": "tick", "instrument": "ORCL", "ts": TS + k, "price": 50.0 + k}) for k in (0, 1)]
    rt.on_feed_messages(good)
    oid = orders(rt.venue)[0]["client_order_id"]
    answer(rt, ack(oid))
    spread = orjson.dumps({"type": "tick", "instrument": "ORCL", "ts": TS + 2, "price": 52.0},
                          option=orjson.OPT_INDENT_2)
    rt.on_feed_messages([spread])
    rt.on_feed_messages([orjson.dumps({"type": "tick", "instrument": "ORCL", "ts": TS + 3, "price": 53.0}),
                         b'{"type": "tick", "instrument": "ORCL", "ts": 1, "price": -1}'])
    rt.on_feed_messages([b'{"type": "tick",' + b" " * 2000 + b'"instrument": "ORCL", "ts": %d, "price": 54.0}' % (TS + 4)])
    rt.on_venue_messages([orjson.dumps(fill(oid, 4), option=orjson.OPT_INDENT_2)])
    rt.on_venue_messages([orjson.dumps(fill(oid, 3)), b"not json", orjson.dumps(fill(oid, 3))])
    rt.on_venue_messages([orjson.dumps({**fill(oid, 0.5), "enc": "x", "hash": "y"})])  # valid, members it ignores
    rt.on_venue_messages([orjson.dumps(fill(oid, 0.25)).replace(b'"fill"', b'"\\u0066ill"')])  # valid, escaped
    rt.log.close()
    lines = rt.log.path.read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    markets = [r for r in records if r["kind"] == "market"]
    assert [sorted(set(r) & {"frames", "events"}) for r in markets] == [["frames"], ["events"], ["events"], ["events"]]
    assert markets[0]["frames"] == [orjson.loads(frame) for frame in good]
    assert [r.get("frames") for r in records if r["kind"] == "venue" and r.get("type") != "state"] == \
        [[ack(oid)], None, [fill(oid, 3)], [fill(oid, 3)], None, None]
    assert rt.engine.position("ORCL") == 10 and rt.counters.bad_messages == 2 and rt.counters.fills == 3
    from policyc.runtime.journal import replay

    replayer, divergences = replay(json_records(rt), lambda session: rt.policy)
    assert divergences == [] and replayer.engine.position("ORCL") == 10
    assert replayer.core.counters.bad_messages == 2 and replayer.core.counters.events == rt.counters.events


def json_records(rt):
    from policyc.runtime.live.audit import read_log

    return read_log(rt.log.path)


class WalVenue(Venue):
    """Reads the log file at the moment each frame is sent: its order's record must be there."""

    def __init__(self, path):
        super().__init__()
        self.path, self.logged_at_send = path, []

    def send(self, frame):
        super().send(frame)
        if self.sent[-1]["type"] != "order":
            return
        ids = {r.get("client_order_id") for r in map(orjson.loads, self.path.read_bytes().splitlines())
               if r["kind"] == "order"}
        self.logged_at_send.append(self.sent[-1]["client_order_id"] in ids)


def test_a_read_is_one_write_of_the_log_and_each_order_is_in_the_file_before_its_frame_leaves(policy, tmp_path,
                                                                                              monkeypatch):
    path = tmp_path / "log.jsonl"
    runtime = LiveRuntime(policy, RunConfig("ws://feed", "ws://venue", log_path=str(path), fsync="never"))
    venue = WalVenue(path)
    connect(runtime, venue)
    writes = []
    real = __import__("os").write
    monkeypatch.setattr("os.write", lambda fd, data: writes.append(data.count(b"\n")) or real(fd, data))
    frames = [orjson.dumps({"type": "tick", "instrument": "ORCL", "ts": TS + k, "price": 50.0}) for k in range(3)]
    runtime.on_feed_messages(frames)
    monkeypatch.undo()
    runtime.log.close()
    kinds = [r["kind"] for r in map(orjson.loads, path.read_bytes().splitlines())]
    # the journal's market record and the order's go out in the write before the frame; nothing is left after
    assert kinds[-2:] == ["market", "order"] and writes == [2]
    assert venue.logged_at_send == [True] and len(orders(venue)) == 1


def test_records_a_full_disk_refused_in_a_batch_are_dropped_and_the_chain_goes_on_from_the_last_written(tmp_path,
                                                                                                      monkeypatch):
    from policyc.runtime.live.audit import DecisionLog, verify_log

    path = tmp_path / "log.jsonl"
    log = DecisionLog(path, "p" * 64, "b" * 64, fsync="never")
    log.write("session", policy="t")
    real = __import__("os").write

    def full_disk(fd, data):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        with log.batch():
            log.write("market", ts=1, events=[])
            monkeypatch.setattr("os.write", full_disk)
    monkeypatch.setattr("os.write", real)
    with log.batch():
        log.write("market", ts=2, events=[])
    log.close()
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(r["seq"], r["ts"]) for r in records[1:]] == [(2, 2)]
    assert verify_log(path)[2] is None


def test_a_halt_from_the_control_socket_writes_its_records_before_its_orders_leave(rt, monkeypatch):
    """A control message is handled as a socket read is: its records are written before
    each order it sends (the cancel, then the flattening order, decided after it), and
    the log's sync thread is woken once, when the message is handled."""
    tick(rt, 0)
    oid = orders(rt.venue)[0]["client_order_id"]
    answer(rt, ack(oid), fill(oid, 4))
    log, trail = rt.log, []
    deadline = time.monotonic() + 10
    while log._syncer._pending and time.monotonic() < deadline:  # the sync thread idle
        time.sleep(0.001)
    append, send, wake = log._append, rt.venue.send, log._syncer._wake.set
    monkeypatch.setattr(log, "_append", lambda parts, size: (trail.append("write"), append(parts, size)))
    monkeypatch.setattr(rt.venue, "send", lambda frame: (trail.append(orjson.loads(frame)["type"]), send(frame)))
    monkeypatch.setattr(log._syncer._wake, "set", lambda: (trail.append("sync"), wake()))
    status = rt.on_control_frame(json.dumps({"type": "halt", "reason": "desk"}))
    assert status["halted"] and trail == ["write", "cancel", "write", "order", "sync"]


# ---- a decision log that fails: the run stops (fail closed) ------------------------------
def _sync_fails_in_its_thread(monkeypatch, now: bool = True):
    """The --fsync batch sync thread's syncs fail (a disk that reports an I/O error) from
    now on, or, with `now` false, once the returned event is set; a sync in the caller's
    thread succeeds, as one after a reported error does."""
    import threading

    from policyc.runtime.live import audit

    real, failing = audit._sync, threading.Event()
    if now:
        failing.set()

    def sync(fd):
        if failing.is_set() and threading.current_thread().name == "decision-log-sync":
            raise OSError(5, "Input/output error")
        real(fd)
    monkeypatch.setattr(audit, "_sync", sync)
    return failing


def test_a_log_that_fails_stops_the_run_and_no_order_leaves_after_it(policy, tmp_path, monkeypatch, capsys):
    """The first read's order leaves; the sync thread then fails. The venue's reject of
    that order is applied, and its read's records raise the failure: the runtime says
    so and asks its run to stop. The next tick would send the order again: its record
    cannot be shown on disk, so it does not leave."""
    failing = _sync_fails_in_its_thread(monkeypatch, now=False)  # not before the first order is out
    runtime = LiveRuntime(policy, RunConfig("ws://feed", "ws://venue", log_path=str(tmp_path / "log.jsonl")))
    venue = Venue()
    connect(runtime, venue)
    tick(runtime, 1)
    (first,) = orders(venue)
    failing.set()
    runtime.log._syncer._wake.set()  # a sync now, as the next write would ask for
    deadline = time.monotonic() + 10
    while runtime.log._syncer.error is None and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(OSError, match="sync to disk failed"):
        answer(runtime, {"type": "reject", "client_order_id": first["client_order_id"], "reason": "no"})
    assert runtime.stop.is_set() and runtime.log_error is not None
    assert "stopping: no order leaves without its record" in capsys.readouterr().err
    with pytest.raises(OSError, match="sync to disk failed"):
        tick(runtime, 2)
    assert orders(venue) == [first]
    with pytest.raises(OSError):
        runtime.log.close()


def test_run_stops_on_a_failed_log_and_says_so_with_its_status(tmp_path, monkeypatch, capsys):
    """`policyc run` whose log cannot be synced (no write after the failure: it is found
    as the log closes): the status and the log's path on stdout, the error on stderr,
    exit status 1."""
    from policyc.cli import main

    _sync_fails_in_its_thread(monkeypatch)
    policy_file, log = tmp_path / "always_long.yaml", tmp_path / "log.jsonl"
    policy_file.write_text(POLICY)
    code = main(["run", str(policy_file), "--feed", f"ws://{HOST}:{free_port()}/", "--venue",
                 f"ws://{HOST}:{free_port()}/", "--log", str(log), "--duration", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    status = json.loads(out[:out.rindex("decision log:")])
    assert status["orders"] == 0 and f"decision log: {log}" in out
    assert f"error: decision log {log}: sync to disk failed: Input/output error; the run stopped" in err
    assert f"decision log {log}: sync to disk failed: Input/output error; stopping: no order leaves" in err


def test_a_failed_background_sync_stops_the_run_as_it_fails_with_nothing_written_after_it(policy, tmp_path,
                                                                                         monkeypatch):
    """Nothing connects, so nothing is written after the session record: the sync
    thread's failure, once the run is under way, stops it at once (through the loop),
    not at the next write or at a --duration that may never come."""
    import threading

    from policyc.runtime.live import audit
    from policyc.runtime.live.runner import LogFailed

    started = threading.Event()

    def sync(fd):
        if threading.current_thread().name == "decision-log-sync":
            started.wait(10)  # the session record's sync: failing once `run` has its loop
            raise OSError(5, "Input/output error")
    monkeypatch.setattr(audit, "_sync", sync)
    runtime = LiveRuntime(policy, RunConfig(f"ws://{HOST}:{free_port()}/", f"ws://{HOST}:{free_port()}/",
                                            log_path=str(tmp_path / "log.jsonl")))

    async def main():
        asyncio.get_running_loop().call_soon(started.set)
        t0 = time.monotonic()
        with pytest.raises(LogFailed, match="sync to disk failed") as failed:
            await asyncio.wait_for(runtime.run(), 30)
        return time.monotonic() - t0, failed.value

    elapsed, failed = asyncio.run(main())
    assert elapsed < 3 and failed.status["orders"] == 0


def test_a_log_that_cannot_take_the_session_record_is_no_run(tmp_path, monkeypatch, capsys):
    """A full disk from the start: `policyc run` says so, starts nothing and leaves no
    sync thread behind."""
    import threading

    from policyc.cli import main
    from policyc.runtime.live import audit

    def full_disk(fd, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(audit.os, "write", full_disk)
    policy_file, log = tmp_path / "always_long.yaml", tmp_path / "log.jsonl"
    policy_file.write_text(POLICY)
    code = main(["run", str(policy_file), "--feed", f"ws://{HOST}:{free_port()}/", "--venue",
                 f"ws://{HOST}:{free_port()}/", "--log", str(log), "--duration", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert f"error: decision log {log}: No space left on device; the run did not start" in err
    assert "decision-log-sync" not in {t.name for t in threading.enumerate()}


def test_a_read_with_a_text_frame_is_journaled_as_its_messages():
    """Frames of text (a transport that decoded them) have no bytes as they came."""
    from policyc.runtime.orders import as_read

    assert as_read([b'{"a":1}', b"[]"], 1) == b'[{"a":1},[]]'
    assert as_read([b'{"a":1}', '{"a":1}'], 2) is None


def test_a_live_command_starts_with_its_garbage_collected_and_what_lives_frozen():
    """`eventloop.run`: garbage in cycles made before it (a compile leaves about 100,000
    such objects) is collected, not frozen for the whole run; what is alive at the start
    is out of the collector's scans while the command runs."""
    import gc
    import weakref

    from policyc.runtime.live import eventloop

    class Node:
        pass

    alive = [Node() for _ in range(100)]
    garbage = Node()
    garbage.itself = garbage  # a cycle: only a collection frees it
    gone = weakref.ref(garbage)
    del garbage
    seen = {}

    async def command():
        seen["collected"] = gone() is None
        seen["frozen"] = not {id(node) for node in alive} & {id(o) for o in gc.get_objects()}

    try:
        eventloop.run(command())
    finally:
        gc.unfreeze()  # the test's process goes on
    assert seen == {"collected": True, "frozen": True}
