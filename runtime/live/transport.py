"""WebSocket client connections for the hot path, on the sans-I/O layer of `websockets`.

The asyncio API of `websockets` hands over one message per `await`: under load that is
a future, a queue and a task switch for every market event. Here each read of the
socket hands every message it completed to one callback, so a burst of market data
becomes one batch for the kernel, and a quiet stream pays for nothing it does not use.
The protocol itself (handshake, framing, masking, ping, close, size limits) stays
with `websockets`.
"""
from __future__ import annotations

import asyncio
import ssl
from contextlib import contextmanager
from typing import Callable, Sequence

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from .security import client_context, describe_tls_error

CLOSE_TIMEOUT_S = 2.0
MAX_HANDSHAKE_BYTES = 1 << 16  # an answer to the opening handshake longer than this is the protocol's to refuse
PING_INTERVAL_S = 20.0  # a check every interval: a ping after an interval with nothing read, a drop when the
                        # interval after that ping also brought nothing


class Stream(asyncio.Protocol):
    """One client connection. `on_messages` gets the payloads (UTF-8 bytes) of the text
    messages completed by one read, in order; `on_rejected` gets a reason for each
    message that cannot be one of ours (a binary frame, a frame over `max_size`).
    `headers` are added to the opening handshake (an `Authorization` for the peer)."""

    def __init__(self, url: str, on_messages: Callable[[list[bytes]], None],
                 on_rejected: Callable[[str], None], max_size: int, headers: Sequence[tuple[str, str]] = ()):
        self.protocol = ClientProtocol(parse_uri(url), max_size=max_size)
        self.headers = headers
        self.on_messages, self.on_rejected, self.max_size = on_messages, on_rejected, max_size
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._parts: list[bytes] = []
        # Frames are parsed here (`_frames`) from the end of the opening handshake while the
        # connection is open: None during the handshake, True then, False once the
        # protocol parses all (closing, failing, or the handshake refused).
        self._direct: bool | None = None
        self._buffer = b""  # what waits for the next read: a handshake answer or a frame, cut short
        self._part_opcode: Opcode | None = None
        self._failure_reported = False
        self._corked = False
        self._reads = 0                  # reads so far: the keepalive compares counts, never times
        self._reads_at_check = 0
        self._reads_at_ping: int | None = None  # set while a ping is unanswered
        self._keepalive: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        request = self.protocol.connect()
        for name, value in self.headers:  # in place of, not beside, one the URL made (user:password@)
            if name in request.headers:
                del request.headers[name]
            request.headers[name] = value
        self.protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._reads += 1
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        if self._direct and self.protocol.state is State.OPEN:
            messages = self._frames(data)
        elif self._direct is None:
            messages = self._handshake(data)
        else:
            self._direct = False  # closing: the protocol takes all from here on
            self.protocol.receive_data(data)
            messages = self._events()
        if messages:
            try:
                self.on_messages(messages)
            except Exception as exc:  # a defect, not the peer's fault: keep the connection, count it
                self.on_rejected(f"internal error handling {len(messages)} message(s): {exc!r}")
        sent = self.protocol.close_sent
        if sent is not None and sent.code not in (1000, 1001) and not self._failure_reported:
            self._failure_reported = True  # the peer sent what the protocol refuses
            if sent.code == 1009:
                self.on_rejected(f"frame over the {self.max_size:,}-byte limit: connection closed with code 1009")
            else:
                self.on_rejected(f"connection closed with code {sent.code}: {sent.reason or 'protocol error'}")

    def _handshake(self, data: bytes) -> list[bytes]:
        """The opening handshake's answer to the protocol, and nothing after it: a 101
        answer has no body, so the protocol then stands between frames, and `_frames`
        parses what follows. Any other answer, or one too long, is the protocol's
        alone."""
        end = data.find(b"\r\n\r\n")
        if end < 0 and len(data) <= MAX_HANDSHAKE_BYTES:
            self._buffer = data
            return []
        head, rest = (data, b"") if end < 0 else (data[:end + 4], data[end + 4:])
        self.protocol.receive_data(head)
        messages = self._events()
        self._direct = self.protocol.state is State.OPEN
        if not self._direct:
            if rest:
                self.protocol.receive_data(rest)
                messages += self._events()
            return messages
        return messages + self._frames(rest)

    def _frames(self, data: bytes) -> list[bytes]:
        """The messages of `data`, the protocol standing between frames. Each complete
        final, unmasked text frame without reserved bits (all a feed sends) is taken
        here, in a few operations; any other complete frame (a ping, a close, a fragment,
        a binary or masked frame) goes to the protocol whole, in its turn; the start of
        an incomplete frame waits for the next read. A frame over `max_size`, and all
        after it, go to the protocol, which fails the connection with 1009."""
        messages = []
        end, pos = len(data), 0
        fragmented = bool(self._parts)
        while end - pos >= 2:
            head, length = data[pos], data[pos + 1]
            masked, length, start = length & 0x80, length & 0x7F, pos + 2
            if length == 126:
                length, start = int.from_bytes(data[start:start + 2], "big"), start + 2
            elif length == 127:
                length, start = int.from_bytes(data[start:start + 8], "big"), start + 8
            if length > self.max_size:
                self._direct = False
                self.protocol.receive_data(data[pos:])
                return messages + self._events()
            stop = start + (4 if masked else 0) + length
            if stop > end:
                break
            if head == 0x81 and not masked and not fragmented:
                messages.append(data[start:stop])
            else:
                self.protocol.receive_data(data[pos:stop])
                messages += self._events()
                fragmented = bool(self._parts)
                if self.protocol.state is not State.OPEN:  # closing: the protocol takes all from here on
                    self._direct = False
                    self.protocol.receive_data(data[stop:])
                    return messages + self._events()
            pos = stop
        self._buffer = data[pos:]
        return messages

    def _events(self) -> list[bytes]:
        """The messages among the events the protocol parsed; sends what it must answer."""
        events = self.protocol.events_received()
        self._flush()
        messages = []
        for event in events:
            if isinstance(event, Response):
                self._handshake_done()
                continue
            opcode = event.opcode
            if opcode is Opcode.CONT:
                self._parts.append(event.data)
                if not event.fin:
                    continue
                opcode, payload = self._part_opcode, b"".join(self._parts)
                self._parts, self._part_opcode = [], None
            elif opcode in (Opcode.TEXT, Opcode.BINARY):
                if not event.fin:
                    self._parts, self._part_opcode = [event.data], opcode
                    continue
                payload = event.data
            else:
                continue  # ping, pong, close: answered by the protocol
            if opcode is Opcode.TEXT:
                messages.append(payload)
            else:
                self.on_rejected(f"binary frame of {len(payload):,} bytes (messages are JSON text frames)")
        return messages

    def eof_received(self) -> None:
        if self._buffer:  # cut short: the protocol says so as if it had read it all along
            self.protocol.receive_data(self._buffer)
            self._buffer = b""
        self._direct = False
        self.protocol.receive_eof()
        self._flush()

    def connection_lost(self, exc) -> None:
        for timer in (self._abort_timer, self._keepalive):
            if timer is not None:
                timer.cancel()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        if not self.lost.done():
            self.lost.set_result(self.protocol.close_code)

    # ---- use -------------------------------------------------------------------------
    def send(self, text: str | bytes) -> None:
        """Write one text message now (no task, no await), or, while corked, queue it."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_text(text.encode() if isinstance(text, str) else text)
            if not self._corked:
                self._flush()

    @contextmanager
    def corked(self, enabled: bool = True):
        """Messages sent inside leave in one write at the end: a batch of orders is one
        syscall. A single message is better written at once, hence `enabled`."""
        if not enabled or self._corked:
            yield
            return
        self._corked = True
        try:
            yield
        finally:
            self._corked = False
            if self.transport is not None and not self.transport.is_closing():
                self._flush()

    def close(self) -> None:
        """Deliver nothing more and start the closing handshake; the TCP connection is
        dropped after CLOSE_TIMEOUT_S if the peer does not answer."""
        self.on_messages = self.on_rejected = _ignore
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._flush()

    # ---- internals -------------------------------------------------------------------
    def _handshake_done(self) -> None:
        if self.opened.done():
            return
        if self.protocol.handshake_exc is not None:
            self.opened.set_exception(self.protocol.handshake_exc)
            self.transport.close()
        else:
            self.opened.set_result(None)
            self._reads_at_check = self._reads  # the handshake's answer is not traffic
            self._keepalive = asyncio.get_running_loop().call_later(PING_INTERVAL_S, self._ping)

    def _ping(self) -> None:
        """A peer that vanished without closing (a host down, a cable pulled) sends no
        FIN: without this, orders would pile up in a dead socket for many minutes."""
        if self.protocol.state is not State.OPEN:
            return
        # Counting reads rather than comparing times keeps a quiet live peer whatever the
        # timer resolution (uvloop's is 1 ms): a check that found a read one interval
        # ago minus a tick would otherwise skip its ping, and the next drop the peer.
        if self._reads_at_ping is not None and self._reads == self._reads_at_ping:
            self.transport.abort()  # silent, not even a pong: the owner reconnects
            return
        # quiet since the last check, or only the pong of its ping came: ping again
        if self._reads == self._reads_at_check or self._reads_at_ping is not None:
            self.protocol.send_ping(b"keepalive")
            self._flush()
            self._reads_at_ping = self._reads
        else:
            self._reads_at_ping = None
        self._reads_at_check = self._reads
        self._keepalive = asyncio.get_running_loop().call_later(PING_INTERVAL_S, self._ping)

    def _flush(self) -> None:
        if self.transport.is_closing():
            return
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.protocol.state is State.CLOSED:
            self.transport.close()
        elif self.protocol.close_expected() and self._abort_timer is None:
            self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.transport.abort)


def _ignore(*_) -> None:
    pass


async def connect(url: str, on_messages: Callable[[list[bytes]], None], on_rejected: Callable[[str], None],
                  *, max_size: int = 1 << 20, open_timeout: float = 5.0, ca_file: str | None = None,
                  headers: Sequence[tuple[str, str]] = ()) -> Stream:
    """Open a connection and finish the opening handshake, or raise. A `wss` URL's
    certificate and host name are always verified (`security.client_context`): against
    the certificate authorities of `ca_file` alone when given, the system's otherwise.
    A failed TLS handshake raises ConnectionError saying why (an untrusted certificate
    names the fix), not OpenSSL's `[SSL: ...]` line; a CA file that cannot be used
    raises `security.SecurityError`."""
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    context = client_context(ca_file) if uri.secure else None

    async def opening() -> Stream:
        try:
            transport, stream = await loop.create_connection(
                lambda: Stream(url, on_messages, on_rejected, max_size, headers), uri.host, uri.port, ssl=context)
        except ssl.SSLError as exc:  # an OSError whose errno would read `Operation not permitted`
            raise ConnectionError(describe_tls_error(exc, uri.host, uri.port)) from exc
        except ConnectionResetError as exc:
            if context is None:
                raise
            # what a peer that does not speak TLS does to a TLS hello: say so, not `ConnectionResetError`
            raise ConnectionError(describe_tls_error(exc, uri.host, uri.port)) from exc
        try:
            await stream.opened
        except BaseException:
            transport.abort()
            raise
        return stream

    return await asyncio.wait_for(opening(), open_timeout)
