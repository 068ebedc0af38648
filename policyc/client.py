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

Errors (all `ClientError`): `AuthError` when the runtime refuses the token or role (close
code 1008; never retried), `Refused` when it answers with an error (`bad_message`,
`forbidden`, `stopping`), `Unreachable` when the attempts run out. A target or value that
is not a finite number of at most 1e15 in magnitude raises ValueError before anything is
sent.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import random
import ssl as ssl_module
import time
from dataclasses import dataclass

import orjson
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect as sync_connect

from policyc.compiler.layout import MAX_MAGNITUDE

FIRST_WAIT_S, MAX_WAIT_S = 0.05, 2.0
ATTEMPTS = 12      # connection attempts per message before Unreachable: about 15 s of back-off
TIMEOUT_S = 10.0   # for the opening handshake and for each answer
POLICY_VIOLATION = 1008


class ClientError(Exception):
    """A problem talking to `policyc run`; the message says what and where."""


class AuthError(ClientError):
    """The runtime refused the credential (wrong or missing token, a token of another role,
    or the address in its back-off after failures); `reason` is the runtime's."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: refused: {reason or 'no reason given'}")
        self.reason = reason


class Refused(ClientError):
    """The runtime answered a message with an error: `code` (`bad_message`, `forbidden`,
    `stopping`) and its `message`."""

    def __init__(self, url: str, code: str, message: str):
        super().__init__(f"{url}: {code}: {message}")
        self.code, self.message = code, message


class Unreachable(ClientError):
    """No answer after every attempt (the runtime down, the address wrong, each try timed out)."""


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
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ValueError(f"{name} must be a number, not {value!r}")
    x = float(value)
    if not (math.isfinite(x) and abs(x) <= MAX_MAGNITUDE):
        raise ValueError(f"{name} must be a finite number of at most {MAX_MAGNITUDE:g} in magnitude, not {value!r}")
    return x


def _headers(token: str | None) -> list[tuple[str, str]]:
    if not token:
        raise ValueError("a token is needed for this port (the runtime admits nobody without one)")
    return [("Authorization", f"Bearer {token}")]


def _answer(url: str, raw) -> dict:
    """One answer frame as a dict; raises Refused for an error answer."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClientError(f"{url}: the answer is not JSON: {raw[:200]!r}") from None
    if not isinstance(msg, dict):
        raise ClientError(f"{url}: the answer is not a JSON object: {raw[:200]!r}")
    if msg.get("type") == "error":
        raise Refused(url, str(msg.get("code")), str(msg.get("message")))
    return msg


def _decision(msg: dict) -> Decision:
    return Decision(msg["id"], msg["instrument"], msg["desired_target"], msg["approved_target"], msg["order_qty"],
                    tuple(msg["reasons"]), msg["policy_hash"])


class _Backoff:
    """Waits between attempts: FIRST_WAIT_S doubling to MAX_WAIT_S, times 0.5 to 1.5."""

    def __init__(self):
        self.next = FIRST_WAIT_S

    def wait(self) -> float:
        w = self.next * random.uniform(0.5, 1.5)
        self.next = min(self.next * 2, MAX_WAIT_S)
        return w


def _refusal(url: str, exc: ConnectionClosed) -> AuthError | None:
    code = exc.rcvd.code if exc.rcvd is not None else None
    return AuthError(url, exc.rcvd.reason) if code == POLICY_VIOLATION else None


_RETRY = (OSError, ConnectionClosed, InvalidHandshake, TimeoutError, asyncio.TimeoutError)


class _Ports:
    """What both clients share: the two ports, their tokens and the message ids."""

    def __init__(self, intents: str | None, token: str | None, control: str | None, control_token: str | None,
                 timeout: float, attempts: int, ssl: ssl_module.SSLContext | None):
        if intents is None and control is None:
            raise ValueError("give the intents URL, the control URL or both")
        if attempts < 1 or not timeout > 0:
            raise ValueError("attempts must be at least 1 and timeout above 0 s")
        self.urls = {"intents": intents, "control": control}
        self.tokens = {"intents": token, "control": control_token}
        self.timeout, self.attempts, self.ssl = timeout, attempts, ssl
        self._ids = itertools.count(1)
        self.reconnects = 0  # connections made after the first on a port: each a reconnect
        self._conns: dict = {}
        self._opened: set = set()

    def url(self, port: str) -> str:
        url = self.urls[port]
        if url is None:
            raise ValueError(f"no {port} URL was given to this client")
        return url

    def intent(self, instrument: str, target) -> dict:
        return {"type": "intent", "id": f"m{next(self._ids)}", "instrument": str(instrument),
                "target": _number("target", target)}

    def input(self, instrument: str, name: str, value) -> dict:
        return {"type": "input", "id": f"m{next(self._ids)}", "instrument": str(instrument), "name": str(name),
                "value": _number("value", value)}


class Client(_Ports):
    """A synchronous client of `policyc run`.

    intents: `ws://HOST:PORT` (or wss) of `--intents`, with `token` a model token; control:
    the URL of `--control`, with `control_token` an operator's or a viewer's. `timeout`
    (s) bounds the handshake and each answer; `attempts` the connections tried per message;
    `ssl` a client context for wss (`policyc.runtime.live.security.client_context`).
    `reconnects` counts the connections made after a port's first."""

    def __init__(self, intents: str | None = None, token: str | None = None, *, control: str | None = None,
                 control_token: str | None = None, timeout: float = TIMEOUT_S, attempts: int = ATTEMPTS,
                 ssl: ssl_module.SSLContext | None = None):
        super().__init__(intents, token, control, control_token, timeout, attempts, ssl)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def intent(self, instrument: str, target: float) -> Decision:
        """Propose `target` units for `instrument`; returns the runtime's Decision."""
        return _decision(self._ask("intents", super().intent(instrument, target)))

    def input(self, instrument: str, name: str, value: float) -> None:
        """Set the model input `name` (read by the instrument's next market event)."""
        self._ask("intents", super().input(instrument, name, value))

    def status(self) -> dict:
        """The runtime's status object (docs/live.md, "The status object")."""
        return self._ask("control", {"type": "status"})

    def _ask(self, port: str, message: dict) -> dict:
        url, frame, backoff = self.url(port), orjson.dumps(message).decode(), _Backoff()
        headers = _headers(self.tokens[port])
        last = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(backoff.wait())
            try:
                conn = self._conns.get(port)
                if conn is None:
                    conn = sync_connect(url, additional_headers=headers, open_timeout=self.timeout, ssl=self.ssl,
                                        proxy=None)
                    conn.__enter__()  # held open across calls until close(), as a `with` block would hold it
                    self.reconnects += port in self._opened
                    self._opened.add(port)
                    self._conns[port] = conn
                conn.send(frame)
                while True:
                    msg = _answer(url, conn.recv(timeout=self.timeout))
                    if port == "control" or msg.get("id") == message["id"]:
                        return msg
            except InvalidURI as exc:
                raise ValueError(f"not a WebSocket URL: {url} ({exc})") from None
            except Refused as exc:
                if exc.code != "stopping":
                    raise
                last = exc
                self._drop(port)
            except ConnectionClosed as exc:
                self._drop(port)
                refused = _refusal(url, exc)
                if refused:
                    raise refused from None
                last = exc
            except _RETRY as exc:
                self._drop(port)
                last = exc
        raise Unreachable(f"{url}: no answer after {self.attempts} attempts (last: {last or 'timeout'})")

    def _drop(self, port: str) -> None:
        conn = self._conns.pop(port, None)
        if conn is not None:
            conn.close()


class AsyncClient(_Ports):
    """`Client` for asyncio: the same arguments; `intent`, `input`, `status` and `close`
    are coroutines, and `async with` closes it."""

    def __init__(self, intents: str | None = None, token: str | None = None, *, control: str | None = None,
                 control_token: str | None = None, timeout: float = TIMEOUT_S, attempts: int = ATTEMPTS,
                 ssl: ssl_module.SSLContext | None = None):
        super().__init__(intents, token, control, control_token, timeout, attempts, ssl)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()

    async def intent(self, instrument: str, target: float) -> Decision:
        return _decision(await self._ask("intents", super().intent(instrument, target)))

    async def input(self, instrument: str, name: str, value: float) -> None:
        await self._ask("intents", super().input(instrument, name, value))

    async def status(self) -> dict:
        return await self._ask("control", {"type": "status"})

    async def _ask(self, port: str, message: dict) -> dict:
        url, frame, backoff = self.url(port), orjson.dumps(message).decode(), _Backoff()
        headers = _headers(self.tokens[port])
        last = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(backoff.wait())
            try:
                conn = self._conns.get(port)
                if conn is None:
                    conn = await async_connect(url, additional_headers=headers, open_timeout=self.timeout,
                                               ssl=self.ssl, proxy=None)
                    self.reconnects += port in self._opened
                    self._opened.add(port)
                    self._conns[port] = conn
                await conn.send(frame)
                while True:
                    msg = _answer(url, await asyncio.wait_for(conn.recv(), self.timeout))
                    if port == "control" or msg.get("id") == message["id"]:
                        return msg
            except InvalidURI as exc:
                raise ValueError(f"not a WebSocket URL: {url} ({exc})") from None
            except Refused as exc:
                if exc.code != "stopping":
                    raise
                last = exc
                await self._drop(port)
            except ConnectionClosed as exc:
                await self._drop(port)
                refused = _refusal(url, exc)
                if refused:
                    raise refused from None
                last = exc
            except _RETRY as exc:
                await self._drop(port)
                last = exc
        raise Unreachable(f"{url}: no answer after {self.attempts} attempts (last: {last or 'timeout'})")

    async def _drop(self, port: str) -> None:
        conn = self._conns.pop(port, None)
        if conn is not None:
            await conn.close()
