"""The live runtime over real loopback sockets: replay feed -> runtime -> paper venue."""
import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from policyc.compiler.build import compile_policy
from policyc.compiler import layout as L
from policyc.compiler.layout import FILL_SAME
from policyc.dsl.document import parse_policy_text
from policyc.runtime.backtest import load_events, run_backtest
from policyc.runtime.live import replay, security
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.demo import loopback

from loopback import HOST, Lockstep, free_port, until

DATA = Path(__file__).resolve().parent.parent / "data" / "orcl-1995-2014.csv"
#: One kernel for the live tests here, tests/test_resume.py's (trading on intents alone) and
#: tests/test_crash_loop.py's `policyc run` (on the crossings alone): the rules' windows and targets,
#: and whether the crossings trade at all (`crossings`, 0 or 1), are params; the limits' values
#: are not code. A test that does not use a limit sets it where it never binds (`NEVER`).
LIVE = """
policy: live_check
version: 1
instruments: [{instrument}]
inputs: [intent]
params:
  fast: {fast}
  slow: {slow}
  up: {up}
  down: {down}
  crossings: {crossings}
features:
  f: ema(close, fast)
  s: sma(close, slow)
signals:
  - when: crosses_above(f, s) and crossings > 0
    target: up
  - when: crosses_below(f, s) and crossings > 0
    target: down
risk:
  max_position: {max_position}
  max_order_qty: {max_order_qty}
  stop_loss: {stop_loss}
  max_orders_per_day: {max_orders_per_day}
  max_orders_per_second: {max_orders_per_second}
account:
  fees_bps: {fees_bps}
"""
NEVER = {"max_order_qty": 1_000_000, "stop_loss": "100%", "max_orders_per_day": 1_000_000,
         "max_orders_per_second": 1_000_000}  # 100%: a long's stop at a price of 0, which never comes


def live(**values) -> str:
    """`LIVE` with `values`, and each limit not given at `NEVER`."""
    return LIVE.format(**{"instrument": "ORCL", "fees_bps": 0, **NEVER, **values})


#: Long 100 when the fast EMA crosses above the slow SMA, short 50 when it crosses below;
#: at most 120, in orders of at most 80, with a stop 3% away (no day or rate limit).
POLICY = live(fast=3, slow=8, up=100, down=-50, crossings=1, max_position=120, max_order_qty=80, stop_loss="3%",
              fees_bps=1)
TOKEN = "5e3c7a9b1d2f4e6a8c0b1d3f5a7c9e2b"     # the model's
OPERATOR = "a1b2c3d4e5f60718293a4b5c6d7e8f90"  # the operator's: the control port admits no model



@pytest.fixture(scope="module")
def policy():
    return compile_policy(parse_policy_text(POLICY, "live_check.yaml"))


@pytest.fixture(scope="module")
def short_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("live") / "orcl-head.csv"
    lines = DATA.read_text().splitlines()[:241]
    path.write_text("\n".join([lines[0] + ",intent"] + [line + "," for line in lines[1:]]) + "\n")  # no proposals
    return path


async def run_stack(policy, data_path, log_path, monkeypatch, pause_after=None, during_pause=None):
    """Replay feed, paper venue and runtime on loopback, the feed in lockstep with them
    (`loopback.Lockstep`): each event reaches the venue, then the runtime, and the next
    one leaves once every order this one caused is done. `during_pause(runtime)` runs
    after the `pause_after`-th event, with the feed held."""
    lock = Lockstep(pause_after)
    monkeypatch.setattr(replay, "broadcast", lock.broadcast)
    rec = replay.load_recording([("ORCL", str(data_path))])
    async with loopback(policy, rec, log_path, rate=1000.0, fees_bps=1.0, intents=(HOST, free_port()),  # rate: unused
                        control=(HOST, free_port()),
                        guard=security.Guard(security.Credentials([("model", TOKEN, "test"),
                                                                   ("operator", OPERATOR, "test")]))) as stack:
        lock.attach(stack)
        if during_pause is not None:
            paused = asyncio.create_task(lock.paused.wait())
            await asyncio.wait([paused, stack.feed], return_when=asyncio.FIRST_COMPLETED)
            assert lock.paused.is_set(), f"the feed ended before event {pause_after}: {lock.error!r}"
            try:
                await during_pause(stack.runtime)
            finally:
                lock.resume.set()
        sent = await stack.feed
        if lock.error is not None:
            raise lock.error
        assert lock.sent == sent == len(rec), "the replay feed did not go through Lockstep"
        await until(lambda: not stack.runtime.open)  # the last fills are in (Lockstep waited for them)
    return sent, stack.run.result(), stack.venue, stack.runtime


def test_live_matches_backtest_fill_same_and_logs_the_hash(policy, short_data, tmp_path, monkeypatch):
    """Over real sockets, the runtime sends the backtest's orders (same event, qty,
    reasons) and the paper venue fills each at the price of the event it was decided
    on (FILL_SAME); the log is numbered without gaps, opens with the session record
    and carries the policy hash on every record; the equity ends where the backtest's does."""
    log_path = tmp_path / "decisions.jsonl"
    sent, status, venue, _ = asyncio.run(run_stack(policy, short_data, log_path, monkeypatch))
    assert sent == 240 and status["events"] == 240 and status["bad_messages"] == 0

    events, _ = load_events(policy, [(None, str(short_data))])
    bt = run_backtest(policy, events, FILL_SAME, progress=False)
    expected = [(int(events.ts[int(o[0])]), o[2], o[9]) for o in bt.orders]  # ts, qty, fill price
    records = read_log(log_path)
    orders = [r for r in records if r["kind"] == "order"]
    fills = {r["client_order_id"]: r for r in records if r["kind"] == "fill"}
    got = [(r["ts"], r["qty"], fills[r["client_order_id"]]["price"]) for r in orders]
    assert len(expected) > 5
    assert got == expected
    reasons = [r["reasons"] for r in orders]
    assert reasons == [L.decode_reasons(o[L.O_REASONS], policy.reason_names) for o in bt.orders]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["kind"] == "session"
    assert {r["policy_hash"] for r in records} == {policy.policy_hash}
    assert status["equity"] == pytest.approx(bt.equity[-1], rel=1e-9)


def test_intents_and_control_need_the_token_and_answer_each_message(policy, short_data, tmp_path, monkeypatch):
    """Mid-stream (after event 120, the feed held): a wrong token, or the model's on the
    control port, is closed with 1008; with the right one every intent or control
    message gets exactly one answer, a decision, a status or an error; the halt holds to
    the end and is logged, as an `access` record too; the failed authentications are
    summarised in `auth_failures` records, not one `bad_message` each."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    answers = {}

    async def drive(runtime):
        url = f"ws://{HOST}:{runtime.config.intents[1]}"
        async with connect(url, additional_headers={"Authorization": "Bearer wrong"}) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            answers["bad_token"] = closed.value.rcvd.code
        twice = [("Authorization", f"Bearer {TOKEN}")] * 2  # used to raise in the handler: a traceback, nothing logged
        async with connect(url, additional_headers=twice) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            answers["two_tokens"] = closed.value.rcvd.code
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await ws.send(json.dumps({"type": "intent", "id": "a1", "instrument": "ORCL", "target": 500}))
            answers["a1"] = json.loads(await ws.recv())
            await until(lambda: not runtime.open)  # a1's order is done: the halt below finds nothing open
            await ws.send('{"type": "intent", "id": "a2", "instrument": "ORCL", "target": "lots"}')
            answers["a2"] = json.loads(await ws.recv())
            await ws.send("not json at all")
            answers["junk"] = json.loads(await ws.recv())
        control = f"ws://{HOST}:{runtime.config.control[1]}"
        async with connect(control, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            answers["model_on_control"] = closed.value.rcvd.code
        async with connect(control, additional_headers={"Authorization": f"Bearer {OPERATOR}"}) as ws:
            await ws.send('{"type": "halt", "reason": "test"}')
            answers["halt"] = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "intent", "id": "x"}))
            answers["bad_control"] = json.loads(await ws.recv())

    _, status, _, runtime = asyncio.run(run_stack(policy, short_data, tmp_path / "log.jsonl", monkeypatch,
                                                  pause_after=120, during_pause=drive))
    assert answers["bad_token"] == answers["two_tokens"] == answers["model_on_control"] == 1008
    a1 = answers["a1"]
    assert a1["type"] == "decision" and a1["id"] == "a1" and a1["policy_hash"] == policy.policy_hash
    assert a1["approved_target"] <= 120 and "max_position:clipped" in a1["reasons"]
    assert answers["a2"]["type"] == "error" and answers["a2"]["id"] == "a2"
    assert answers["a2"]["code"] == "bad_message" and answers["junk"]["type"] == "error"
    assert answers["halt"]["halted"] is True
    assert answers["bad_control"]["type"] == "error" and answers["bad_control"]["code"] == "forbidden"  # no TOTP
    assert status["halted"] is True and status["bad_messages"] >= 2
    records = read_log(tmp_path / "log.jsonl")
    kinds = [r["kind"] for r in records]
    assert "halt" in kinds and "bad_message" in kinds
    assert not any(r.get("source") == "auth" for r in records)
    failures = [r for r in records if r["kind"] == "auth_failures"]
    # the wrong token, the token sent twice, the model's on the control port; the first at once, the rest at the end
    assert sum(r["failures"] for r in failures) == 3 and len(failures) <= 2
    access = [(r["role"], r["action"], r["result"]) for r in records if r["kind"] == "access"]
    assert access[0] == ("operator", "halt", "done") and access[1][:2] == ("operator", "intent")
    assert access[1][2].startswith("refused: `intent` needs a TOTP code")
    from policyc.runtime.journal import replay as replay_log, session_policy
    assert replay_log(records, session_policy)[1] == []  # `access` and `auth_failures` are not the core's


def test_replay_feed_reads_naive_times_in_the_zone_it_is_given():
    """The bundled Xetra bars are Frankfurt wall-clock times without an offset: the feed
    sends them one hour earlier in UTC with `--tz Europe/Berlin` (winter), as the backtest
    of a policy with `calendar: XETR` reads them, so live trades at the backtest's hours."""
    from policyc.runtime.live.replay import load_recording

    path = str(DATA.parent / "index-2006-5min.csv")
    utc, berlin = load_recording([("IDX", path)]), load_recording([("IDX", path)], zone="Europe/Berlin")
    assert utc.ts[0] - berlin.ts[0] == 3_600 * 10**9  # 2006-01-02 09:05 in Frankfurt is 08:05 UTC
    assert len(utc.ts) == len(berlin.ts) and (np.diff(berlin.ts) >= 0).all()
