"""policyc.client against a real `policyc run` over loopback: `replay-feed`, `paper-venue`
and `run` as processes, a model token and an operator token. The sync and asyncio clients
send targets and get decisions with their reasons, read the status, are refused with a
wrong token or role, refuse bad targets before sending, and reconnect with back-off when
`run` is stopped and started again on the same ports. One client shared by threads or
tasks gives each call its own answer over one connection per port. Against small fake
runtimes: a call that gets no answer ends at its deadline, a decision lacking fields is a
ClientError, and a close with code 1008 after the runtime has answered is a policy
violation, not a refused credential."""
from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import orjson
import pytest
from websockets.protocol import State
from websockets.sync.server import serve

import policyc.client
from loopback import FAILSAFE_S, HOST, ORCL_DATA, free_port, policyc_command, wait_port
from policyc.client import AsyncClient, AuthError, Client, ClientError, PolicyViolation, Refused, Unreachable
from test_live_faults import limits

MODEL, OPERATOR = secrets.token_hex(16), secrets.token_hex(16)
#: A model alone sets the target: no rules, so every order is the model's, within the limits
#: (long or short at most 100, in orders of at most 60). It is tests/test_live_faults.py's
#: `LIMITS` template, so `policyc run` here loads the kernel those tests compile (the same
#: source: limits' values are not code) instead of compiling one of its own; its other
#: keys (max_drawdown, max_orders_per_day) are at values these tests never come near.
GUARD = limits(max_position=100, max_order_qty=60)


def _private(path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


class Stack:
    """A replay feed (looping, 200 events/s), a paper venue and `run` with its intents and
    control ports; `restart_run()` stops `run` and starts a new one on the same ports."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.feed, self.venue, self.intents, self.control = (free_port() for _ in range(4))
        self.policy = tmp_path / "guarded.yaml"
        self.policy.write_text(GUARD)
        self.model = _private(tmp_path / "model", MODEL)
        self.operator = _private(tmp_path / "operator", OPERATOR)
        self.procs = [
            subprocess.Popen(policyc_command("replay-feed", "--data", ORCL_DATA, "--listen", f"{HOST}:{self.feed}",
                                             "--rate", 200, "--loop", "--clients", 2),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
            subprocess.Popen(policyc_command("paper-venue", "--listen", f"{HOST}:{self.venue}", "--feed",
                                             f"ws://{HOST}:{self.feed}"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
        self.runs = 0
        self.run = self._start_run()

    def _start_run(self) -> subprocess.Popen:
        self.runs += 1
        proc = subprocess.Popen(policyc_command(
            "run", self.policy, "--feed", f"ws://{HOST}:{self.feed}", "--venue", f"ws://{HOST}:{self.venue}",
            "--intents", f"{HOST}:{self.intents}", "--control", f"{HOST}:{self.control}",
            "--model-token-file", self.model, "--operator-token-file", self.operator,
            "--log", self.tmp / f"decisions-{self.runs}.jsonl"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def restart_run(self) -> None:
        self.run.send_signal(signal.SIGTERM)
        assert self.run.wait(FAILSAFE_S) == 0, self.run.stderr.read().decode()[-2000:]
        self.run = self._start_run()

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(FAILSAFE_S)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        wait_port(s.intents, proc=s.run)
        yield s
    finally:
        s.close()


def _trading(client: Client) -> dict:
    """Wait until the runtime has market data (an intent before any is reduce-only)."""
    for _ in range(int(FAILSAFE_S / 0.05)):
        status = client.status()
        if status["events"] > 0 and not status["reduce_only"]:
            return status
        time.sleep(0.05)
    raise AssertionError("no market data reached the runtime")


def test_sync_client_decisions_status_refusals_and_a_reconnect(stack):
    url, control = f"ws://{HOST}:{stack.intents}", f"ws://{HOST}:{stack.control}"
    with Client(url, MODEL, control=control, control_token=OPERATOR, timeout=FAILSAFE_S) as client:
        _trading(client)
        d = client.intent("ORCL", 80)
        assert (d.instrument, d.desired_target) == ("ORCL", 80.0)
        assert d.approved_target == 60.0 and d.order_qty == 60.0 and d.reasons == ("max_order_qty:clipped",)
        assert d.overruled and len(d.policy_hash) == 64
        d = client.intent("ORCL", 500)  # beyond max_position: clipped to 100, of which 60 are open or held
        assert d.approved_target == 100.0 and "max_position:clipped" in d.reasons and d.overruled
        status = client.status()
        assert status["type"] == "status" and status["policy"] == "guard"  # the name `limits` gives
        assert status["positions"]["ORCL"] + status["open_orders"]["ORCL"] == 100.0

        for bad in (math.nan, math.inf, 1e16, "10", True):
            with pytest.raises(ValueError, match="target must be"):
                client.intent("ORCL", bad)
        with pytest.raises(Refused, match="bad_message") as refused:
            client.intent("NOPE", 1)
        assert refused.value.code == "bad_message"

        stack.restart_run()  # the client's connections drop; it reconnects with back-off once run listens again
        d = client.intent("ORCL", 0)
        assert client.reconnects >= 1 and d.desired_target == 0.0
        assert _trading(client)["policy_hash"] == d.policy_hash
    assert stack.run.poll() is None


def test_wrong_tokens_roles_and_a_dead_port_give_clear_errors(stack):
    url, control = f"ws://{HOST}:{stack.intents}", f"ws://{HOST}:{stack.control}"
    with pytest.raises(AuthError, match="wrong or missing token"):
        Client(url, secrets.token_hex(16)).intent("ORCL", 1)
    with pytest.raises(AuthError, match="model credential may not use the control port"):
        Client(control=control, control_token=MODEL).status()
    with pytest.raises(ValueError, match="no intents URL"):
        Client(control=control, control_token=OPERATOR).intent("ORCL", 1)
    dead = Client(f"ws://{HOST}:{free_port()}", MODEL, attempts=3, timeout=1.0)
    with pytest.raises(Unreachable, match="no answer after 3 attempts"):
        dead.intent("ORCL", 1)


def test_async_client_against_the_same_runtime(stack):
    url, control = f"ws://{HOST}:{stack.intents}", f"ws://{HOST}:{stack.control}"

    async def main():
        async with AsyncClient(url, MODEL, control=control, control_token=OPERATOR, timeout=FAILSAFE_S) as client:
            for _ in range(int(FAILSAFE_S / 0.05)):
                if (await client.status())["events"] > 0:
                    break
                await asyncio.sleep(0.05)
            decisions = [await client.intent("ORCL", t) for t in (40, -30)]
            return decisions, await client.status()

    (up, down), status = asyncio.run(main())
    assert up.approved_target == 40.0 and up.order_qty == 40.0 and not up.overruled and up.reasons == ()
    # from 40 to -30 is an order of -70: max_order_qty clips it to -60
    assert (down.desired_target, down.order_qty, down.approved_target) == (-30.0, -60.0, -20.0)
    assert down.reasons == ("max_order_qty:clipped",) and down.overruled
    # -20 as the intent left it, or -30 once a market event since has decided the rest of the way to the
    # desired -30 (the feed keeps running): never beyond
    assert status["positions"]["ORCL"] + status["open_orders"]["ORCL"] in (-20.0, -30.0)


def _recording(monkeypatch, name: str) -> list:
    """Record every connection `policyc.client` opens through its `name` (sync_connect or
    async_connect)."""
    opened, real = [], getattr(policyc.client, name)

    def sync_connect(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    async def async_connect(*args, **kwargs):
        opened.append(await real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(policyc.client, name, sync_connect if name == "sync_connect" else async_connect)
    return opened


def test_one_client_shared_by_threads_and_tasks_gives_each_call_its_answer(stack, monkeypatch):
    url, control = f"ws://{HOST}:{stack.intents}", f"ws://{HOST}:{stack.control}"
    opened = _recording(monkeypatch, "sync_connect")
    client = Client(url, MODEL, timeout=FAILSAFE_S)
    results: dict[int, list] = {0: [], 1: []}

    def model(k: int) -> None:
        for n in range(100):
            target = (1 if k == 0 else -1) * (n % 90 + 1)
            try:
                results[k].append((target, client.intent("ORCL", target)))
            except Exception as exc:  # noqa: BLE001  (the assertion below shows it)
                results[k].append((target, exc))

    threads = [threading.Thread(target=model, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(FAILSAFE_S)
    for k in (0, 1):
        assert len(results[k]) == 100
        for target, d in results[k]:
            assert not isinstance(d, Exception), d
            assert d.desired_target == target
    assert len(opened) == 1 and client.reconnects == 0
    client.close()
    assert opened[0].state is State.CLOSED

    opened = _recording(monkeypatch, "async_connect")

    async def main():
        client = AsyncClient(url, MODEL, control=control, control_token=OPERATOR, timeout=FAILSAFE_S)
        statuses = await asyncio.gather(*(client.status() for _ in range(5)))  # a fresh client: none open yet
        targets = [n - 10 for n in range(20)]
        decisions = await asyncio.gather(*(client.intent("ORCL", t) for t in targets))
        assert [d.desired_target for d in decisions] == targets
        assert all(s["type"] == "status" for s in statuses)
        assert len(opened) == 2 and client.reconnects == 0  # one per port
        await client.close()
        assert all(c.state is State.CLOSED for c in opened)

    asyncio.run(main())


@contextlib.contextmanager
def _fake_runtime(handler):
    """A WebSocket server on loopback running `handler(ws)` per connection; yields its URL."""
    server = serve(handler, HOST, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://{HOST}:{server.socket.getsockname()[1]}"
    finally:
        server.shutdown()
        thread.join(FAILSAFE_S)


def test_a_runtime_that_never_answers_is_given_up_on_at_the_deadline():
    def silent(ws):
        for _ in ws:  # reads every message, answers none
            pass

    with socket.socket() as mute, _fake_runtime(silent) as url:
        mute.bind((HOST, 0))
        mute.listen()  # the kernel completes TCP connections; nothing ever speaks WebSocket
        for where in (url, f"ws://{HOST}:{mute.getsockname()[1]}"):
            client = Client(where, MODEL, deadline_s=0.5)  # the default timeout of 10 s per answer
            began = time.monotonic()
            with pytest.raises(Unreachable, match="within the deadline of 0.5 s"):
                client.intent("ORCL", 1)
            assert time.monotonic() - began < 5.0
            client.close()

        async def main():
            client = AsyncClient(url, MODEL, deadline_s=0.5)
            began = time.monotonic()
            with pytest.raises(Unreachable, match="within the deadline of 0.5 s"):
                await client.intent("ORCL", 1)
            assert time.monotonic() - began < 5.0
            await client.close()

        asyncio.run(main())
    with pytest.raises(ValueError, match="deadline_s must be"):
        Client(url, MODEL, deadline_s=math.inf)


def _decision_answer(msg: dict) -> dict:
    return {"type": "decision", "id": msg["id"], "instrument": msg["instrument"], "desired_target": msg["target"],
            "approved_target": msg["target"], "order_qty": msg["target"], "reasons": [], "policy_hash": "0" * 64}


def test_bad_answers_a_later_1008_and_array_targets_give_clear_errors():
    def runtime(ws):
        if ws.request.headers.get("Authorization") != f"Bearer {MODEL}":
            ws.close(1008, "wrong or missing token")
            return
        for frame in ws:
            msg = orjson.loads(frame)
            if msg["target"] == 1:
                ws.send(orjson.dumps(_decision_answer(msg)).decode())
            elif msg["target"] == 2:  # a decision lacking two fields
                answer = _decision_answer(msg)
                del answer["approved_target"], answer["reasons"]
                ws.send(orjson.dumps(answer).decode())
            else:
                ws.close(1008, "over the message limit")

    with _fake_runtime(runtime) as url:
        with Client(url, MODEL) as client:
            assert client.intent("ORCL", 1).approved_target == 1.0
            with pytest.raises(ClientError, match="lacks `approved_target`, `reasons`"):
                client.intent("ORCL", 2)
            with pytest.raises(PolicyViolation, match=r"policy violation \(code 1008\): over the message limit"):
                client.intent("ORCL", 3)
            for bad in (np.array([500.0]), np.array(5.0), "5", None):
                with pytest.raises(ValueError, match="target must be a number"):
                    client.intent("ORCL", bad)
            assert client.intent("ORCL", np.float32(1)).desired_target == 1.0
        with pytest.raises(AuthError, match="wrong or missing token"):
            Client(url, OPERATOR).intent("ORCL", 1)

        async def main():
            async with AsyncClient(url, MODEL) as client:
                assert (await client.intent("ORCL", 1)).order_qty == 1.0
                with pytest.raises(PolicyViolation):
                    await client.intent("ORCL", 3)
            with pytest.raises(AuthError):
                await AsyncClient(url, OPERATOR).intent("ORCL", 1)

        asyncio.run(main())
