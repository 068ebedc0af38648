"""Clients for a running `policyc run`: a model sends targets on the intents port and gets
each decision back; an operator or a viewer reads the status on the control port.

`Client` is synchronous, `AsyncClient` the same for asyncio. Both connect lazily,
authenticate with a bearer token in the opening handshake (a `model` token for intents,
an `operator` or `viewer` token for the control port: docs/live.md, "Intents" and
"Control"), and when a connection cannot be made or drops, reconnect with exponential
back-off (0.05 s doubling to 2 s, each wait times a random factor from 0.5 to 1.5, as
`run` reconnects to its feed) and send the message again. Sending again is safe: an
intent is a target position, not an order, so the runtime answers a repeated target with
no second order; an input sets a value.

One client may be shared by threads (`Client`) or tasks (`AsyncClient`): it holds one
connection per port, and the calls on a port take turns on it (a lock per port), so each
gets its own answer.

Time: one call takes at most `deadline_s` (default 30 s), waiting for its turn, connecting,
back-off and answers included; each handshake and each answer is given at most `timeout`
(default 10 s) of it, and at most `attempts` (default 12) connections are tried.

Errors (all `ClientError`): `AuthError` when the runtime refuses the token or role (close
code 1008 on a connection that has not answered yet; never retried), `PolicyViolation`
when it closes an admitted connection with code 1008 (never retried), `Refused` when it
answers with an error (`bad_message`, `forbidden`, `stopping`), `Unreachable` when the
attempts or the deadline run out, and `ClientError` itself for an answer that is not the
JSON object the protocol describes (a decision lacking a field, say). A target or value
that is not a real number (a bool, a string or an array is not), not finite, or beyond
1e15 in magnitude raises ValueError before anything is sent.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import numbers
import random
import ssl as ssl_module
import threading
import time
from dataclasses import dataclass

import orjson
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect as sync_connect

from policyc.compiler.layout import MAX_MAGNITUDE

FIRST_WAIT_S, MAX_WAIT_S = 0.05, 2.0
ATTEMPTS = 12       # connections tried per call at most before Unreachable
TIMEOUT_S = 10.0    # for the opening handshake and for each answer (s)
DEADLINE_S = 30.0   # for the whole of one call (s): the most it can block
CLOSE_TIMEOUT_S = 1.0  # for the runtime's close frame when closing a connection (s), within the deadline
POLICY_VIOLATION = 1008
#: The fields of a decision answer and their types.
DECISION_FIELDS = {"id": str, "instrument": str, "desired_target": numbers.Real, "approved_target": numbers.Real,
                   "order_qty": numbers.Real, "reasons": list, "policy_hash": str}


class ClientError(Exception):
    """A problem talking to `policyc run`; the message says what and where."""


class AuthError(ClientError):
    """The runtime refused the credential (wrong or missing token, a token of another role,
    or the address in its back-off after failures); `reason` is the runtime's."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: refused: {reason or 'no reason given'}")
        self.reason = reason


class PolicyViolation(ClientError):
    """The runtime closed a connection it had admitted (one that had answered) with close
    code 1008, policy violation: not a refusal of the credential. `reason` is the runtime's."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: the runtime closed the connection for a policy violation (code 1008): "
                         f"{reason or 'no reason given'}")
        self.reason = reason


class Refused(ClientError):
    """The runtime answered a message with an error: `code` (`bad_message`, `forbidden`,
    `stopping`) and its `message`."""

    def __init__(self, url: str, code: str, message: str):
        super().__init__(f"{url}: {code}: {message}")
        self.code, self.message = code, message


class Unreachable(ClientError):
    """No answer after every attempt or within the call's deadline (the runtime down, the
    address wrong, each try timed out, a runtime that accepts and never answers)."""


@dataclass(frozen=True)
class Decision:
    """The runtime's answer to a target: `desired_target` as sent and `approved_target` as
    the risk steps allowed (units), the signed `order_qty` sent (units; 0 for none), the
    reason codes, and the `policy_hash` that decided it."""

    id: str
    instrument: str
    desired_target: float
    approved_target: float
    order_qty: float
    reasons: tuple[str, ...]
    policy_hash: str

    @property
    def overruled(self) -> bool:
        """The risk steps did not allow the target as sent."""
        return self.approved_target != self.desired_target


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, not {value!r}")
    x = float(value)
    if not (math.isfinite(x) and abs(x) <= MAX_MAGNITUDE):
        raise ValueError(f"{name} must be a finite number of at most {MAX_MAGNITUDE:g} in magnitude, not {value!r}")
    return x


def _headers(token: str | None) -> list[tuple[str, str]]:
    if not token:
        raise ValueError("a token is needed for this port (the runtime admits nobody without one)")
    return [("Authorization", f"Bearer {token}")]


def _parse(url: str, raw) -> dict:
    """One answer frame as a dict; raises ClientError for one that is not a JSON object."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClientError(f"{url}: the answer is not JSON: {raw[:200]!r}") from None
    if not isinstance(msg, dict):
        raise ClientError(f"{url}: the answer is not a JSON object: {raw[:200]!r}")
    return msg


def _mine(port: str, message: dict, msg: dict) -> bool:
    """Whether `msg` answers `message`: on the intents port an answer carries its message's
    id (an earlier message's late answer is skipped; an error without an id is taken as
    this one's), the control port answers in order."""
    return port == "control" or msg.get("id") in (message["id"], None)


def _result(url: str, msg: dict) -> dict:
    """`msg`, or Refused for an error answer."""
    if msg.get("type") == "error":
        raise Refused(url, str(msg.get("code")), str(msg.get("message")))
    return msg


def _decision(url: str, msg: dict) -> Decision:
    """A decision answer as a Decision; raises ClientError naming the fields that are
    missing or of the wrong type."""
    missing = [k for k in DECISION_FIELDS if k not in msg]
    if missing:
        raise ClientError(f"{url}: the decision answer lacks {', '.join(f'`{k}`' for k in missing)}: "
                          f"{orjson.dumps(msg)[:200].decode(errors='replace')}")
    wrong = [k for k, kind in DECISION_FIELDS.items() if isinstance(msg[k], bool) or not isinstance(msg[k], kind)]
    if not wrong and not all(isinstance(r, str) for r in msg["reasons"]):
        wrong = ["reasons"]
    if wrong:
        raise ClientError(f"{url}: the decision answer has {', '.join(f'`{k}`' for k in wrong)} of the wrong type: "
                          f"{orjson.dumps(msg)[:200].decode(errors='replace')}")
    return Decision(msg["id"], msg["instrument"], float(msg["desired_target"]), float(msg["approved_target"]),
                    float(msg["order_qty"]), tuple(msg["reasons"]), msg["policy_hash"])


class _Backoff:
    """Waits between attempts: FIRST_WAIT_S doubling to MAX_WAIT_S, times 0.5 to 1.5."""

    def __init__(self):
        self.next = FIRST_WAIT_S

    def wait(self) -> float:
        w = self.next * random.uniform(0.5, 1.5)
        self.next = min(self.next * 2, MAX_WAIT_S)
        return w


def _closed(url: str, exc: ConnectionClosed, answered: bool) -> ClientError | None:
    """The error for a connection closed with code 1008: AuthError when it had not answered
    yet (the runtime refuses a credential as the connection opens), PolicyViolation when it
    had; None for any other close (retried)."""
    if exc.rcvd is None or exc.rcvd.code != POLICY_VIOLATION:
        return None
    return (PolicyViolation if answered else AuthError)(url, exc.rcvd.reason)


_RETRY = (OSError, ConnectionClosed, InvalidHandshake, TimeoutError, asyncio.TimeoutError)


class _Ports:
    """What both clients share: the two ports, their tokens, the message ids, the open
    connection of each port and whether it has answered."""

    def __init__(self, intents: str | None, token: str | None, control: str | None, control_token: str | None,
                 timeout: float, attempts: int, deadline_s: float, ssl: ssl_module.SSLContext | None):
        if intents is None and control is None:
            raise ValueError("give the intents URL, the control URL or both")
        if not (isinstance(attempts, int) and attempts >= 1):
            raise ValueError(f"attempts must be a whole number, at least 1, not {attempts!r}")
        for name, value in (("timeout", timeout), ("deadline_s", deadline_s)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds above 0, not {value!r}")
        self.urls = {"intents": intents, "control": control}
        self.tokens = {"intents": token, "control": control_token}
        self.timeout, self.attempts, self.deadline_s, self.ssl = float(timeout), attempts, float(deadline_s), ssl
        self._ids = itertools.count(1)
        self.reconnects = 0  # connections made after the first on a port: each a reconnect
        self._conns: dict = {}
        self._answered: dict = {}  # port -> its connection has answered (it was admitted)
        self._opened: set = set()

    def url(self, port: str) -> str:
        url = self.urls[port]
        if url is None:
            raise ValueError(f"no {port} URL was given to this client")
        return url

    def intent(self, instrument: str, target, limit_price=None) -> dict:
        message = {"type": "intent", "id": f"m{next(self._ids)}", "instrument": str(instrument),
                   "target": _number("target", target)}
        if limit_price is not None:
            message["limit_price"] = _number("limit_price", limit_price)
        return message

    def input(self, instrument: str, name: str, value) -> dict:
        return {"type": "input", "id": f"m{next(self._ids)}", "instrument": str(instrument), "name": str(name),
                "value": _number("value", value)}

    def _opened_now(self, port: str, conn) -> None:
        self.reconnects += port in self._opened
        self._opened.add(port)
        self._conns[port] = conn
        self._answered[port] = False

    def _gave_up(self, url: str, tried: int, started: float, last) -> Unreachable:
        spent = time.monotonic() - started
        why = (f"after {tried} attempts" if tried >= self.attempts
               else f"within the deadline of {self.deadline_s:g} s ({tried} attempts)")
        return Unreachable(f"{url}: no answer {why}, {spent:.1f} s (last: {last or 'timeout'})")


class Client(_Ports):
    """A synchronous client of `policyc run`, safe to share between threads.

    intents: `ws://HOST:PORT` (or wss) of `--intents`, with `token` a model token; control:
    the URL of `--control`, with `control_token` an operator's or a viewer's. `deadline_s`
    (s, default 30) bounds the whole of one call, its wait for its turn on the port
    included: it returns or raises within it. Within that, `timeout` (s, default 10)
    bounds the handshake and each answer, and `attempts` (default 12) the connections
    tried. `ssl` a client context for wss (`policyc.runtime.live.security.client_context`).
    `reconnects` counts the connections made after a port's first.

    The calls on one port take turns on its one connection (a lock per port), so threads
    sharing the client each get their own answer. Raises the `ClientError`s of the module
    docstring, and ValueError for a bad target, value, URL or option."""

    def __init__(self, intents: str | None = None, token: str | None = None, *, control: str | None = None,
                 control_token: str | None = None, timeout: float = TIMEOUT_S, attempts: int = ATTEMPTS,
                 deadline_s: float = DEADLINE_S, ssl: ssl_module.SSLContext | None = None):
        super().__init__(intents, token, control, control_token, timeout, attempts, deadline_s, ssl)
        self._locks = {"intents": threading.Lock(), "control": threading.Lock()}

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection, after the calls in progress end (each within its deadline);
        a later call connects again."""
        for port, lock in self._locks.items():
            with lock:
                self._drop(port, None)

    def intent(self, instrument: str, target: float, limit_price: float | None = None) -> Decision:
        """Propose `target` units for `instrument`; returns the runtime's Decision. With
        `limit_price` (money per unit, above 0) the orders toward it are IOC limit orders
        at that price; the policy must allow limits (docs/live.md, "Intents")."""
        message = super().intent(instrument, target, limit_price)
        return _decision(self.url("intents"), self._ask("intents", message))

    def input(self, instrument: str, name: str, value: float) -> None:
        """Set the model input `name` (read by the instrument's next market event)."""
        self._ask("intents", super().input(instrument, name, value))

    def status(self) -> dict:
        """The runtime's status object (docs/live.md, "The status object")."""
        return self._ask("control", {"type": "status"})

    def _ask(self, port: str, message: dict) -> dict:
        url, frame = self.url(port), orjson.dumps(message).decode()
        headers = _headers(self.tokens[port])
        started = time.monotonic()
        deadline = started + self.deadline_s
        if not self._locks[port].acquire(timeout=self.deadline_s):
            raise self._gave_up(url, 0, started, "other calls on this client held the connection")
        try:
            return self._exchange(port, url, frame, headers, message, started, deadline)
        finally:
            self._locks[port].release()

    def _exchange(self, port, url, frame, headers, message, started, deadline) -> dict:
        backoff, last, tried = _Backoff(), None, 0
        while tried < self.attempts:
            if tried:
                time.sleep(max(0.0, min(backoff.wait(), deadline - time.monotonic())))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            tried += 1
            try:
                conn = self._conns.get(port)
                if conn is None:
                    conn = sync_connect(url, additional_headers=headers, open_timeout=min(self.timeout, left),
                                        close_timeout=CLOSE_TIMEOUT_S, ssl=self.ssl, proxy=None)
                    conn.__enter__()  # held open across calls until close(), as a `with` block would hold it
                    self._opened_now(port, conn)
                conn.send(frame)
                while True:
                    left = deadline - time.monotonic()
                    raw = conn.recv(timeout=max(0.0, min(self.timeout, left)))
                    self._answered[port] = True
                    msg = _parse(url, raw)
                    if _mine(port, message, msg):
                        return _result(url, msg)
            except InvalidURI as exc:
                raise ValueError(f"not a WebSocket URL: {url} ({exc})") from None
            except Refused as exc:
                if exc.code != "stopping":
                    raise
                last = exc
                self._drop(port, deadline)
            except ConnectionClosed as exc:
                fatal = _closed(url, exc, self._answered.get(port, False))
                self._drop(port, deadline)
                if fatal:
                    raise fatal from None
                last = exc
            except _RETRY as exc:
                self._drop(port, deadline)
                last = exc
        raise self._gave_up(url, tried, started, last)

    def _drop(self, port: str, deadline: float | None) -> None:
        """Close the port's connection, waiting for the runtime's close frame at most
        CLOSE_TIMEOUT_S and at most until `deadline` (monotonic s) when one is given."""
        conn = self._conns.pop(port, None)
        if conn is not None:
            if deadline is not None:
                conn.close_timeout = max(0.01, min(CLOSE_TIMEOUT_S, deadline - time.monotonic()))
            conn.close()


class AsyncClient(_Ports):
    """`Client` for asyncio, safe to share between tasks: the same arguments, and the same
    deadline per call; `intent`, `input`, `status` and `close` are coroutines, and
    `async with` closes it. The calls on one port take turns on its one connection (an
    asyncio.Lock per port); use the client within one event loop."""

    def __init__(self, intents: str | None = None, token: str | None = None, *, control: str | None = None,
                 control_token: str | None = None, timeout: float = TIMEOUT_S, attempts: int = ATTEMPTS,
                 deadline_s: float = DEADLINE_S, ssl: ssl_module.SSLContext | None = None):
        super().__init__(intents, token, control, control_token, timeout, attempts, deadline_s, ssl)
        self._locks = {"intents": asyncio.Lock(), "control": asyncio.Lock()}

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection, after the calls in progress end (each within its deadline)."""
        for port, lock in self._locks.items():
            async with lock:
                await self._drop(port, None)

    async def intent(self, instrument: str, target: float, limit_price: float | None = None) -> Decision:
        """Propose `target` units for `instrument`; returns the runtime's Decision; with
        `limit_price`, as `Client.intent`."""
        message = super().intent(instrument, target, limit_price)
        return _decision(self.url("intents"), await self._ask("intents", message))

    async def input(self, instrument: str, name: str, value: float) -> None:
        """Set the model input `name` (read by the instrument's next market event)."""
        await self._ask("intents", super().input(instrument, name, value))

    async def status(self) -> dict:
        """The runtime's status object (docs/live.md, "The status object")."""
        return await self._ask("control", {"type": "status"})

    async def _ask(self, port: str, message: dict) -> dict:
        url, frame = self.url(port), orjson.dumps(message).decode()
        headers = _headers(self.tokens[port])
        started = time.monotonic()
        deadline = started + self.deadline_s
        lock = self._locks[port]
        try:  # another task's call may hold the port: wait for it, within the deadline
            await asyncio.wait_for(lock.acquire(), self.deadline_s)
        except asyncio.TimeoutError:
            raise self._gave_up(url, 0, started, "other calls on this client held the connection") from None
        try:
            return await self._exchange(port, url, frame, headers, message, started, deadline)
        finally:
            lock.release()

    async def _exchange(self, port, url, frame, headers, message, started, deadline) -> dict:
        backoff, last, tried = _Backoff(), None, 0
        while tried < self.attempts:
            if tried:
                await asyncio.sleep(max(0.0, min(backoff.wait(), deadline - time.monotonic())))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            tried += 1
            try:
                conn = self._conns.get(port)
                if conn is None:
                    conn = await async_connect(url, additional_headers=headers, open_timeout=min(self.timeout, left),
                                               close_timeout=CLOSE_TIMEOUT_S, ssl=self.ssl, proxy=None)
                    self._opened_now(port, conn)
                await asyncio.wait_for(conn.send(frame), max(0.0, deadline - time.monotonic()))
                while True:
                    left = deadline - time.monotonic()
                    raw = await asyncio.wait_for(conn.recv(), max(0.0, min(self.timeout, left)))
                    self._answered[port] = True
                    msg = _parse(url, raw)
                    if _mine(port, message, msg):
                        return _result(url, msg)
            except InvalidURI as exc:
                raise ValueError(f"not a WebSocket URL: {url} ({exc})") from None
            except Refused as exc:
                if exc.code != "stopping":
                    raise
                last = exc
                await self._drop(port, deadline)
            except ConnectionClosed as exc:
                fatal = _closed(url, exc, self._answered.get(port, False))
                await self._drop(port, deadline)
                if fatal:
                    raise fatal from None
                last = exc
            except _RETRY as exc:
                await self._drop(port, deadline)
                last = exc
        raise self._gave_up(url, tried, started, last)

    async def _drop(self, port: str, deadline: float | None) -> None:
        """Close the port's connection, waiting for the runtime's close frame at most
        CLOSE_TIMEOUT_S and at most until `deadline` (monotonic s) when one is given."""
        conn = self._conns.pop(port, None)
        if conn is not None:
            if deadline is not None:
                conn.close_timeout = max(0.01, min(CLOSE_TIMEOUT_S, deadline - time.monotonic()))
            await conn.close()
