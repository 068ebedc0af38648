"""WebSocket client connections for the hot path, on the sans-I/O layer of `websockets`.

The asyncio API of `websockets` hands over one message per `await`: under load that is
a future, a queue and a task switch for every market event. Here each read of the
socket hands every message it completed to one callback, so a burst of market data
becomes one batch for the kernel, and a quiet stream pays for nothing it does not use.
The protocol stays with `websockets` (the handshake, pings, closing, size limits, and
every frame but two kinds), except where the hot path moves bytes itself: an unmasked,
final text frame from the peer (what a feed sends) is parsed here, and a text frame
sent (an order) is framed and masked here. What RFC 6455 asks and the sans-I/O layer
leaves out is checked here too: every frame's length in its shortest form, every text
message in UTF-8, no message without end, no unread output without end.
"""
from __future__ import annotations

import asyncio
import os
import ssl
from contextlib import contextmanager
from typing import Callable, Sequence

from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from .security import client_context, describe_tls_error

CLOSE_TIMEOUT_S = 2.0
MAX_HANDSHAKE_BYTES = 1 << 16  # an answer to the opening handshake longer than this is the protocol's to refuse
MAX_FRAGMENTS = 1024  # frames of one fragmented message: a message that never ends would hold the
                      # connection forever, each frame looking like a live peer
MAX_UNSENT_BYTES = 1 << 22  # written and not taken by the peer: past this it is not reading (it floods pings
                            # and reads no pong, say), and the connection is dropped, not buffered without end
PING_INTERVAL_S = 20.0  # a check every interval: a ping after an interval in which no frame came in, a drop
                        # when the interval after that ping also completed none


class Stream(asyncio.Protocol):
    """One client connection. `on_messages` gets the payloads (UTF-8 bytes) of the text
    messages completed by one read, in order; `on_rejected` gets a reason for each
    message that cannot be one of ours (a binary frame) and for each failure of the
    connection the peer caused (RFC 6455 7.1.7: a close frame with code 1002 for a
    frame the protocol forbids, 1007 for a text message that is not UTF-8, 1009 for a
    frame or message over `max_size` or a message in more than MAX_FRAGMENTS frames;
    nothing read after it is parsed), and when the peer leaves MAX_UNSENT_BYTES unread
    and is dropped. A close the peer starts is answered, and is not a failure. `headers`
    are added to the opening handshake (an `Authorization` for the peer)."""

    def __init__(self, url: str, on_messages: Callable[[list[bytes]], None],
                 on_rejected: Callable[[str], None], max_size: int, headers: Sequence[tuple[str, str]] = ()):
        self.protocol = ClientProtocol(parse_uri(url), max_size=max_size)
        self.headers = headers
        self.on_messages, self.on_rejected, self.max_size = on_messages, on_rejected, max_size
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.transport: asyncio.Transport | None = None
        # Frames are parsed here (`_frames`) from the end of the opening handshake while the
        # connection is open: None during the handshake, True then, False once the
        # protocol parses all (closing, failing, or the handshake refused).
        self._direct: bool | None = None
        self._answer = bytearray()  # the answer to the opening handshake, as far as it came
        # A frame cut short by the end of a read: the reads it spans so far, their size, and
        # the size they must reach before parsing can go on (its header's, then its own).
        # Joined once when complete, so a frame that trickles in costs its size, not its
        # size times its reads.
        self._cut: list[bytes] = []
        self._cut_size = self._wanted = 0
        # A fragmented message while one is under way: its opcode, payload and frames so far.
        self._message_opcode: Opcode | None = None
        self._message = bytearray()
        self._fragments = 0
        self._failure_reported = False
        #: Why this side dropped the connection, when it did (the peer breaking the protocol,
        #: not reading, or not answering a ping); None when the peer or the network ended it.
        self.dropped: str | None = None
        self._corked: list[bytes] | None = None  # while corked: the frames to write at its end
        # Reads that completed at least one frame: the keepalive compares counts, never times.
        # A read of part of a frame is not counted, so a peer trickling a frame in is not
        # taken for a live one.
        self._reads = 0
        self._reads_at_check = 0
        self._reads_at_ping: int | None = None  # set while a ping is unanswered
        self._keepalive: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=MAX_UNSENT_BYTES)
        request = self.protocol.connect()
        for name, value in self.headers:  # in place of, not beside, one the URL made (user:password@)
            if name in request.headers:
                del request.headers[name]
            request.headers[name] = value
        self.protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._cut:
            self._cut.append(data)
            self._cut_size += len(data)
            if self._cut_size < self._wanted:
                return
            data = b"".join(self._cut)
            self._cut, self._cut_size = [], 0
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
        if (sent is not None and sent is not self.protocol.close_rcvd and sent.code not in (1000, 1001)
                and not self._failure_reported):
            self._failure_reported = True  # the peer sent what the protocol refuses, not a close of its own
            if sent.code == 1009 and isinstance(self.protocol.parser_exc, PayloadTooBig):
                why = f"frame over the {self.max_size:,}-byte limit"
                self.on_rejected(f"{why}: connection closed with code 1009")
            else:
                why = sent.reason or "protocol error"
                self.on_rejected(f"connection closed with code {sent.code}: {why}")
            self.dropped = f"{why} (code {sent.code})"

    def _handshake(self, data: bytes) -> list[bytes]:
        """The opening handshake's answer to the protocol, and nothing after it: a 101
        answer has no body, so the protocol then stands between frames, and `_frames`
        parses what follows. Any other answer, or one too long, is the protocol's
        alone."""
        searched = max(0, len(self._answer) - 3)  # an end cut by the read ends in the last 3 bytes
        self._answer += data
        end = self._answer.find(b"\r\n\r\n", searched)
        if end < 0 and len(self._answer) <= MAX_HANDSHAKE_BYTES:
            return []
        answer, self._answer = bytes(self._answer), bytearray()
        head, rest = (answer, b"") if end < 0 else (answer[:end + 4], answer[end + 4:])
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
        an incomplete frame waits in `_cut`. Every header is checked here first for what
        the protocol lets through: a length not in its minimal form or with its most
        significant bit set fails the connection with 1002. A frame over `max_size`,
        and all after it, go to the protocol, which fails the connection with 1009."""
        messages = []
        end, pos = len(data), 0
        while True:
            start = pos + 2
            if start > end:
                wanted = start - pos
                break
            head, second = data[pos], data[pos + 1]
            length = second & 0x7F
            if length > 125:
                size = 2 if length == 126 else 8
                start += size
                if start > end:
                    wanted = start - pos
                    break
                length = int.from_bytes(data[start - size:start], "big")
                if length < (126 if size == 2 else 65536) or length >> 63:
                    self._fail(1002, f"frame length {length:,} in {size} bytes: not the minimal encoding"
                               if not length >> 63 else "frame length with its most significant bit set")
                    return messages
            if length > self.max_size:
                self._direct = False
                self.protocol.receive_data(data[pos:])
                return messages + self._events()
            stop = start + length + (4 if second & 0x80 else 0)
            if stop > end:
                wanted = stop - pos
                break
            if head == 0x81 and second < 0x80 and self._message_opcode is None:
                payload = data[start:stop]
                if not payload.isascii():
                    why = _not_utf8(payload)
                    if why:
                        self._fail(1007, why)
                        return messages
                messages.append(payload)
            else:
                self.protocol.receive_data(data[pos:stop])
                messages += self._events()
                if self.protocol.state is not State.OPEN:  # closing: the protocol takes all from here on
                    self._direct = False
                    self.protocol.receive_data(data[stop:])
                    return messages + self._events()
            pos = stop
        if pos:
            self._reads += 1
        if pos < end:
            self._cut, self._cut_size, self._wanted = [data[pos:]], end - pos, wanted
        return messages

    def _events(self) -> list[bytes]:
        """The messages among the events the protocol parsed; sends what it must answer."""
        messages = []
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self._handshake_done()
                continue
            opcode = event.opcode
            if opcode is Opcode.CONT:  # the protocol has checked that a message is under way
                self._fragments += 1
                if self._fragments > MAX_FRAGMENTS:
                    self._fail(1009, f"message in more than {MAX_FRAGMENTS:,} frames")
                    break
                self._message += event.data
                if not event.fin:
                    continue
                opcode, payload = self._message_opcode, bytes(self._message)
                self._message_opcode, self._message, self._fragments = None, bytearray(), 0
            elif opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if not event.fin:
                    self._message_opcode, self._message, self._fragments = opcode, bytearray(event.data), 1
                    continue
                payload = event.data
            else:
                continue  # ping, pong, close: answered by the protocol
            if opcode is Opcode.BINARY:
                self.on_rejected(f"binary frame of {len(payload):,} bytes (messages are JSON text frames)")
                continue
            why = None if payload.isascii() else _not_utf8(payload)
            if why:
                self._fail(1007, why)
                break
            messages.append(payload)
        if self.protocol.handshake_exc is not None:  # an answer that is not HTTP makes no event
            self._handshake_done()
        self._flush()
        return messages

    def pause_writing(self) -> None:
        """The peer has left MAX_UNSENT_BYTES of ours unread: drop the connection rather
        than buffer without end (the owner reconnects)."""
        self.dropped = f"the peer left over {MAX_UNSENT_BYTES:,} bytes unread"
        self.on_rejected(f"{self.dropped}: connection dropped")
        self.transport.abort()

    def eof_received(self) -> None:
        cut = bytes(self._answer) + b"".join(self._cut)
        if cut:  # cut short: the protocol says so as if it had read it all along
            self.protocol.receive_data(cut)
            self._answer, self._cut, self._cut_size = bytearray(), [], 0
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
        """Write one text message now (no task, no await), or, while corked, queue it.
        Nothing is sent once the connection is no longer open."""
        if self.protocol.state is State.OPEN and not self.transport.is_closing():
            frame = _client_frame(text.encode() if text.__class__ is str else text)
            if self._corked is None:
                self.transport.write(frame)
            else:
                self._corked.append(frame)

    @contextmanager
    def corked(self, enabled: bool = True):
        """Messages sent inside leave in one write at the end: a batch of orders is one
        syscall. A single message is better written at once, hence `enabled`."""
        if not enabled or self._corked is not None:
            yield
            return
        self._corked = frames = []
        try:
            yield
        finally:
            self._corked = None
            if frames and self.protocol.state is State.OPEN and not self.transport.is_closing():
                self.transport.write(b"".join(frames))

    def close(self) -> None:
        """Deliver nothing more and start the closing handshake; the TCP connection is
        dropped after CLOSE_TIMEOUT_S if the peer does not answer."""
        self.on_messages = self.on_rejected = _ignore
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._flush()

    # ---- internals -------------------------------------------------------------------
    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7) for a fault the protocol does not check:
        a close frame with `code` goes out, nothing read after it is parsed, and the peer
        closes the TCP connection or is dropped after CLOSE_TIMEOUT_S."""
        self.protocol.fail(code, reason)
        self._direct = False
        self._flush()

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
            # not even a pong (nor the end of a frame cut short): the owner reconnects
            self.dropped = f"no answer to a ping within {PING_INTERVAL_S:g} s"
            self.transport.abort()
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


def _client_frame(payload: bytes) -> bytes:
    """A final text frame as a client sends it: masked (RFC 6455 5.3) with a key from the
    operating system's random source. The protocol's own `send_text` does the same in
    a dozen calls and a getrandom syscall per frame; an order is one of these."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 1 << 16:
        head = b"\x81\xfe" + n.to_bytes(2, "big")
    else:
        head = b"\x81\xff" + n.to_bytes(8, "big")
    key = _mask_key()
    return head + key + apply_mask(payload, key)


class _MaskKeys:
    """Fresh 4-byte masking keys, unpredictable to the peer as RFC 6455 10.3 asks: read
    from os.urandom MASK_KEYS at a time, one syscall for that many frames."""

    MASK_KEYS = 1024

    def __init__(self):
        self.pool, self.at = b"", 0

    def __call__(self) -> bytes:
        at = self.at
        if at == len(self.pool):
            self.pool, at = os.urandom(4 * self.MASK_KEYS), 0
        self.at = at + 4
        return self.pool[at:at + 4]


_mask_key = _MaskKeys()


def _not_utf8(payload: bytes) -> str | None:
    """Why a text message's payload is not UTF-8 (as websockets words it), or None."""
    try:
        payload.decode()
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8: {exc.reason} at position {exc.start}"
    return None


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
