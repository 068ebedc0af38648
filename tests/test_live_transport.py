"""The feed's and venue's transport, mostly without sockets: whatever the boundaries of
the reads, the frames a peer sends come out as the same messages, in order, whether the
stream's own framer took them or the protocol of `websockets` did, and as websockets'
own client gives them; pings are answered, fragments joined, binary and oversized frames
refused, and a close ends the direct parsing. A hostile or broken peer gets a counted
refusal or the close code RFC 6455 gives, never an exception, a hang or memory without
end; what the stream sends is what a server reads."""
import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.datastructures import Headers
from websockets.utils import accept_key

from policyc.runtime.live import transport

MAX_SIZE = 1 << 17


class Wire:
    """Stands in for the asyncio transport: keeps what the stream writes."""

    def __init__(self):
        self.written, self.closed = [], False

    def write(self, data):
        self.written.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    abort = close

    def can_write_eof(self):
        return True

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def write_eof(self):
        pass


def _text(payload: bytes, fin: bool = True, opcode=Opcode.TEXT) -> bytes:
    return Frame(opcode, payload, fin).serialize(mask=False)


def _peer_bytes(messages: list[bytes]) -> bytes:
    """The server's side after its handshake answer: text frames of every length
    encoding, a ping, a fragmented text message, a binary frame, more text, a close."""
    frames = [_text(m) for m in messages[:3]]
    frames.append(Frame(Opcode.PING, b"are you there").serialize(mask=False))
    frames += [_text(b'{"part":', fin=False), _text(b'"one"}', opcode=Opcode.CONT)]
    frames.append(Frame(Opcode.BINARY, b"\x00\x01").serialize(mask=False))
    frames += [_text(m) for m in messages[3:]]
    frames.append(Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=False))
    frames.append(_text(b'{"after":"close"}'))  # discarded: nothing is read after a close
    return b"".join(frames)


def _run(data: bytes, cuts: list[int]):
    """`data` (the handshake answer and the frames) delivered in reads cut at `cuts`;
    returns the messages, the refusals and what the stream wrote back after its request."""
    got, refused = [], []

    async def scenario():
        stream = transport.Stream("ws://feed.example/", got.extend, refused.append, MAX_SIZE)
        wire = Wire()
        stream.connection_made(wire)
        request = wire.written[0].decode()
        key = next(line.split(": ", 1)[1] for line in request.split("\r\n") if line.startswith("Sec-WebSocket-Key"))
        answer = Response(101, "Switching Protocols", Headers([("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                               ("Sec-WebSocket-Accept", accept_key(key))]))
        blob = answer.serialize() + data
        bounds = [0, *cuts, len(blob)]
        for a, b in zip(bounds, bounds[1:]):
            if b > a:
                stream.data_received(blob[a:b])
        stream.connection_lost(None)
        return wire.written[1:], stream.opened.done() and stream.opened.exception() is None

    written, opened = asyncio.run(scenario())
    assert opened
    return [bytes(m) for m in got], refused, written


def _messages() -> list[bytes]:
    rng = random.Random(7)
    sizes = [5, 125, 126, 300, 65_535, 65_536, 70_000, 40]
    return [b'{"k":"' + bytes(rng.choice(b"abcdef") for _ in range(n)) + b'"}' for n in sizes]


def test_every_read_boundary_gives_the_same_messages_in_order_and_pings_are_answered():
    messages = _messages()
    data = _peer_bytes(messages)
    expected = [*messages[:3], b'{"part":"one"}', *messages[3:]]
    whole, refused, written = _run(data, [])
    assert whole == expected
    assert refused == ["binary frame of 2 bytes (messages are JSON text frames)"]
    assert [frame[0] for frame in written] == [0x8A, 0x88]  # a final pong, then the close answered
    rng = random.Random(11)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(data) + 200), rng.randint(1, 40)))
        got, refused_now, written_now = _run(data, cuts)
        assert got == expected and refused_now == refused and len(written_now) == len(written)


def test_a_read_cut_inside_any_header_or_the_handshake_answer_changes_nothing():
    small = [b'{"a":1}', b'{"b":2}', b"x" * 130, b'{"c":3}']
    data = _peer_bytes(small)
    expected = [*small[:3], b'{"part":"one"}', *small[3:]]
    for cut in range(1, 400):  # through the answer, then every byte of the first frames
        got, _, _ = _run(data, [cut])
        assert got == expected, cut


def test_a_frame_over_the_size_limit_fails_the_connection_with_1009():
    data = _text(b'{"ok":1}') + _text(b"y" * (MAX_SIZE + 1)) + _text(b'{"never":1}')
    got, refused, _ = _run(data, [300])
    assert got == [b'{"ok":1}']
    assert refused == [f"frame over the {MAX_SIZE:,}-byte limit: connection closed with code 1009"]


def test_a_masked_frame_from_the_server_is_refused_by_the_protocol():
    data = _text(b'{"ok":1}') + Frame(Opcode.TEXT, b'{"masked":1}').serialize(mask=True) + _text(b'{"never":1}')
    got, refused, _ = _run(data, [])
    assert got == [b'{"ok":1}']
    assert refused == ["connection closed with code 1002: incorrect masking"]


# ---- a hostile or broken peer ----------------------------------------------------------------------------------------
# Each case is sent between two good messages, in one read and in reads of one byte each:
# it is a counted refusal with the connection kept, or the connection failed with the
# close code RFC 6455 gives (7.4.1), nothing after it delivered; never an exception.

OK = b'{"ok":1}'
TOO_BIG = ("refused", f"frame over the {MAX_SIZE:,}-byte limit: connection closed with code 1009")


def _raw(head: int, payload: bytes, length: bytes | None = None, mask: bytes | None = None) -> bytes:
    """A frame written byte by byte, so that it can break the rules: `head` is the first
    byte (FIN, RSV1-3, opcode), `length` the length field as sent (the minimal one by
    default), `mask` a masking key, which a server must not send (the payload is then
    sent unmasked: the protocol refuses the frame at its header)."""
    if length is None:
        n = len(payload)
        length = bytes([n]) if n < 126 else b"\x7e" + n.to_bytes(2, "big") if n < 1 << 16 else \
            b"\x7f" + n.to_bytes(8, "big")
    if mask is not None:
        length = bytes([length[0] | 0x80]) + length[1:] + mask
    return bytes([head]) + length + payload


def _close(code: int, reason: bytes = b"") -> bytes:
    return _raw(0x88, code.to_bytes(2, "big") + reason)


class Session:
    """What one connection made of the bytes a peer sent after its handshake answer."""

    def __init__(self, data: bytes, cuts=(), max_size: int = MAX_SIZE, eof: bool = False):
        got, self.refused = [], []

        async def scenario():
            stream = transport.Stream("ws://feed.example/", got.append, self.refused.append, max_size)
            wire = Wire()
            stream.connection_made(wire)
            blob = _answer(wire.written[0]) + data
            bounds = [0, *(c for c in cuts if 0 < c < len(blob)), len(blob)]
            for a, b in zip(bounds, bounds[1:]):
                if b > a:
                    stream.data_received(blob[a:b])
            if eof:
                stream.eof_received()
            if stream._keepalive is not None:
                stream._keepalive.cancel()
            return stream, wire

        self.stream, wire = asyncio.run(scenario())
        self.reads = got                          # the messages of each read that completed some
        self.messages = [m for read in got for m in read]
        self.written = wire.written[1:]           # the frames the stream sent back (masked)
        self.aborted = wire.closed
        sent = self.stream.protocol.close_sent
        self.close_code = sent.code if sent is not None else None

    def sent_opcodes(self) -> list[int]:
        return [frame[0] & 0x0F for frame in self.written]


def _answer(request: bytes) -> bytes:
    key = next(line.split(": ", 1)[1] for line in request.decode().split("\r\n")
               if line.startswith("Sec-WebSocket-Key"))
    return Response(101, "Switching Protocols", Headers([("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                         ("Sec-WebSocket-Accept", accept_key(key))])).serialize()


def _failed(code: int, reason: str):
    return ("failed", code, reason)


def _refused(reason: str):
    return ("refused", reason)


def _kept(*messages: bytes):
    return ("kept", messages)


HOSTILE = {
    # fragments and control frames among them
    "fragments with a ping between them": (
        _raw(0x01, b'{"a":') + _raw(0x89, b"hi") + _raw(0x00, b"") + _raw(0x80, b"1}"), _kept(b'{"a":1}')),
    "a close inside a fragmented message": (
        _raw(0x01, b'{"a":') + _close(1000), _failed(1002, "incomplete fragmented message")),
    "a text frame inside a fragmented message": (
        _raw(0x01, b'{"a":') + _raw(0x81, OK), _failed(1002, "expected a continuation frame")),
    "a binary frame inside a fragmented message": (
        _raw(0x01, b'{"a":') + _raw(0x82, b"x"), _failed(1002, "expected a continuation frame")),
    "a continuation frame with no message under way": (_raw(0x80, OK), _failed(1002, "unexpected continuation frame")),
    "a fragmented ping": (_raw(0x09, b"hi"), _failed(1002, "fragmented control frame")),
    "a fragmented close": (_raw(0x08, (1000).to_bytes(2, "big")), _failed(1002, "fragmented control frame")),
    "1,025 fragments": (_raw(0x01, b"[") + _raw(0x00, b" ") * 1023 + _raw(0x80, b"]"),
                        _failed(1009, "message in more than 1,024 frames")),
    "1,025 empty fragments": (_raw(0x01, b"") + _raw(0x00, b"") * 1023 + _raw(0x80, b""),
                              _failed(1009, "message in more than 1,024 frames")),
    "1,024 fragments": (_raw(0x01, b"[") + _raw(0x00, b" ") * 1022 + _raw(0x80, b"]"),
                        _kept(b"[" + b" " * 1022 + b"]")),
    # frames a server must not send, or that no one may
    "a masked frame": (_raw(0x81, OK, mask=b"\x01\x02\x03\x04"), _failed(1002, "incorrect masking")),
    **{f"RSV{k}": (_raw(0x81 | (0x40 >> (k - 1)), OK), _failed(1002, "reserved bits must be 0")) for k in (1, 2, 3)},
    **{f"opcode {op:X}": (_raw(0x80 | op, b"x"), _failed(1002, "invalid opcode"))
       for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)},
    # lengths
    "a 16-bit length for 7 bytes": (_raw(0x81, b'{"a":1}', b"\x7e\x00\x07"), _failed(1002, "not the minimal encoding")),
    "a 16-bit length for 125 bytes": (_raw(0x81, b"x" * 125, b"\x7e\x00\x7d"),
                                      _failed(1002, "not the minimal encoding")),
    "a 64-bit length for 7 bytes": (_raw(0x81, b'{"a":1}', b"\x7f" + (7).to_bytes(8, "big")),
                                    _failed(1002, "not the minimal encoding")),
    "a 64-bit length for 65,535 bytes": (_raw(0x81, b"x" * 65535, b"\x7f" + (65535).to_bytes(8, "big")),
                                         _failed(1002, "not the minimal encoding")),
    "a non-minimal length on a ping": (_raw(0x89, b"hi", b"\x7e\x00\x02"), _failed(1002, "not the minimal encoding")),
    "a length of 2**63": (_raw(0x81, b"", b"\x7f" + (1 << 63).to_bytes(8, "big")),
                          _failed(1002, "most significant bit set")),
    "a length of 2**64-1": (_raw(0x81, b"", b"\x7f" + b"\xff" * 8), _failed(1002, "most significant bit set")),
    "a length of 2**63-1": (_raw(0x81, b"", b"\x7f" + ((1 << 63) - 1).to_bytes(8, "big")), TOO_BIG),
    "a frame one byte over the limit": (_raw(0x81, b"x" * (MAX_SIZE + 1)), TOO_BIG),
    "a fragmented message over the limit": (_raw(0x01, b"x" * (MAX_SIZE // 2)) + _raw(0x80, b"x" * (MAX_SIZE // 2 + 1)),
                                            TOO_BIG),
    "a frame of the limit exactly": (_raw(0x81, b"x" * MAX_SIZE), _kept(b"x" * MAX_SIZE)),
    # payloads
    "a binary frame": (_raw(0x82, OK), _refused("binary frame of 8 bytes (messages are JSON text frames)")),
    "a fragmented binary message": (_raw(0x02, b"ab") + _raw(0x80, b"c"),
                                    _refused("binary frame of 3 bytes (messages are JSON text frames)")),
    "an empty binary frame": (_raw(0x82, b""), _refused("binary frame of 0 bytes (messages are JSON text frames)")),
    "an empty text frame": (_raw(0x81, b""), _kept(b"")),
    "an empty ping": (_raw(0x89, b""), _kept()),
    "an unsolicited pong": (_raw(0x8A, b"x"), _kept()),
    "a byte that is never UTF-8": (_raw(0x81, b'{"a":"\xff"}'), _failed(1007, "invalid start byte")),
    "an overlong encoding": (_raw(0x81, b'{"a":"\xc0\xaf"}'), _failed(1007, "invalid start byte")),
    "an encoded surrogate": (_raw(0x81, b'{"a":"\xed\xa0\x80"}'), _failed(1007, "invalid continuation byte")),
    "a character cut at the end of a message": (_raw(0x81, b'{"a":"\xc3'), _failed(1007, "unexpected end of data")),
    "invalid UTF-8 across fragments": (_raw(0x01, b'{"a":"\xc3') + _raw(0x80, b'\xff"}'),
                                       _failed(1007, "invalid continuation byte")),
    "a character split between fragments": (_raw(0x01, b'{"a":"\xc3') + _raw(0x80, b'\xa9"}'),
                                            _kept('{"a":"é"}'.encode())),
    # control frames
    "a ping of 126 bytes": (_raw(0x89, b"x" * 126), _failed(1002, "control frame too long")),
    "a pong of 126 bytes": (_raw(0x8A, b"x" * 126), _failed(1002, "control frame too long")),
    "a close of 126 bytes": (_close(1000, b"x" * 124), _failed(1002, "control frame too long")),
    "a close of 1 byte": (_raw(0x88, b"\x03"), _failed(1002, "close frame too short")),
    "a close reason that is not UTF-8": (_close(1000, b"\xff"), _failed(1007, "invalid start byte")),
    **{f"close code {code}": (_close(code), _failed(1002, "invalid status code"))
       for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)},
}


def _expect(session: Session, outcome) -> None:
    # `dropped`: what the runtime says on stderr when the connection ends (runner._why_lost)
    if outcome[0] == "kept":
        assert session.messages == [OK, *outcome[1], OK] and session.refused == []
        assert session.close_code is None and not session.aborted and session.stream.dropped is None
    elif outcome[0] == "refused":
        assert session.refused == [outcome[1]]
        if "1009" in outcome[1]:  # the connection failed: nothing after the frame
            assert session.messages == [OK] and session.close_code == 1009
            assert session.sent_opcodes()[-1] == 0x8
            assert session.stream.dropped == f"frame over the {MAX_SIZE:,}-byte limit (code 1009)"
        else:  # refused alone: the connection goes on
            assert session.messages == [OK, OK] and session.close_code is None and session.stream.dropped is None
    else:
        _, code, reason = outcome
        assert session.messages == [OK]
        assert session.close_code == code and session.sent_opcodes()[-1] == 0x8
        assert len(session.refused) == 1 and session.refused[0].startswith(f"connection closed with code {code}: ")
        assert reason in session.refused[0]
        assert session.stream.dropped == f"{session.refused[0].split(': ', 1)[1]} (code {code})"


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_frame_is_refused_and_counted_or_fails_the_connection_with_its_close_code(case):
    frames, outcome = HOSTILE[case]
    data = _raw(0x81, OK) + frames + _raw(0x81, OK)
    _expect(Session(data), outcome)
    if len(data) < 5000:  # every byte a read of its own
        _expect(Session(data, cuts=range(1, len(data) + 300)), outcome)
    else:  # the large cases: cut at every header and around them
        _expect(Session(data, cuts=[*range(1, 300), *range(len(data) - 400, len(data) + 300, 3)]), outcome)


def test_a_valid_close_is_echoed_and_nothing_after_it_is_read():
    for code in (1000, 1001, 3000, 4999):
        session = Session(_raw(0x81, OK) + _close(code, b"bye") + _raw(0x81, OK))
        assert session.messages == [OK] and session.refused == [] and session.close_code == code


def test_many_frames_in_one_read_are_one_batch():
    messages = [b'{"k":%d}' % k for k in range(20_000)]
    session = Session(b"".join(_raw(0x81, m) for m in messages))
    assert session.reads == [messages]


def test_a_ping_is_answered_with_its_payload_at_once():
    session = Session(_raw(0x89, b"x" * 125) + _raw(0x89, b""))
    pongs = [frame for frame in session.written if frame[0] == 0x8A]
    assert len(pongs) == 2 and pongs[0][1] == 0x80 | 125 and pongs[1][1] == 0x80


def test_a_frame_cut_short_by_the_end_of_the_stream_fails_the_connection():
    session = Session(_raw(0x81, OK) + _raw(0x81, OK)[:5], eof=True)
    assert session.messages == [OK] and session.stream.protocol.close_code == 1006


def test_an_answer_to_the_handshake_that_never_ends_is_refused_without_an_exception():
    async def scenario():
        stream = transport.Stream("ws://feed.example/", lambda m: None, lambda why: None, MAX_SIZE)
        stream.connection_made(Wire())
        stream.data_received(b"HTTP/1.1 101 Switching Protocols\r\n")
        for _ in range(2_000):
            stream.data_received(b"X-Pad: " + b"y" * 40 + b"\r\n")
        return stream.opened

    opened = asyncio.run(scenario())
    assert opened.done() and opened.exception() is not None


def test_a_frame_that_trickles_in_is_parsed_once_when_complete(monkeypatch):
    """A frame of the limit in reads of 16 bytes: the reads are kept as they come and the
    frame is parsed once its last byte is in, not again at each read (which would cost
    the frame's size per read: a peer trickling bytes would make the runtime copy the
    frame's square)."""
    parsed = []
    frames = transport.Stream._frames

    def counted(self, data):
        parsed.append(len(data))
        return frames(self, data)

    monkeypatch.setattr(transport.Stream, "_frames", counted)
    payload = b'"' + b"x" * (MAX_SIZE - 2) + b'"'
    data = _raw(0x81, payload) + _raw(0x81, OK)
    session = Session(data, cuts=range(1, len(data) + 200, 16))
    assert session.messages == [payload, OK]
    assert len(parsed) <= 4  # its header cut short, the header complete, the frame complete, the last one


@pytest.mark.parametrize("trickle", [False, True], ids=["silence", "a byte per interval"])
def test_a_frame_cut_short_and_then_silence_or_a_trickle_is_pinged_and_then_dropped(trickle):
    """Slowloris: the start of a frame, then nothing, or a byte of it now and then. Only
    a read that completes a frame shows a live peer, so both are pinged at the first
    keepalive check without one, and dropped at the next (the pong would have to come
    after the frame), which lets the owner connect again."""
    async def scenario():
        stream = transport.Stream("ws://feed.example/", lambda m: None, lambda why: None, MAX_SIZE)
        wire = Wire()
        stream.connection_made(wire)
        stream.data_received(_answer(wire.written[0]) + _raw(0x81, OK) + _raw(0x81, b"x" * 1000)[:10])
        steps = []
        for _ in range(3):
            stream._keepalive.cancel()  # the test makes every check itself
            if trickle:
                stream.data_received(b"x")
            sent = len(wire.written)
            stream._ping()
            steps.append("drop" if wire.closed else "ping" if wire.written[sent:] else "-")
            if wire.closed:
                break
            assert stream.dropped is None
        return steps, [frame[0] for frame in wire.written[1:]], stream.dropped

    steps, sent, dropped = asyncio.run(scenario())
    assert steps == ["-", "ping", "drop"]  # the first interval completed a frame: no ping
    assert sent == [0x89]
    assert dropped == f"no answer to a ping within {transport.PING_INTERVAL_S:g} s"  # what the runtime says on stderr


# ---- the same messages as websockets' own client --------------------------------------------------------------

async def _reference(data: bytes, max_size: int) -> tuple[list, int | None]:
    """What the asyncio client of websockets receives when a server sends `data` after
    its handshake answer: its messages (str for text, bytes for binary), and the code of
    the close frame it sends back, which the server reads before closing the TCP
    connection."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    answered = asyncio.get_running_loop().create_future()

    async def server(reader, writer):
        writer.write(_answer(await reader.readuntil(b"\r\n\r\n")) + data)
        buffer = b""
        while not answered.done():  # the client's frames: masked pongs, then its close
            chunk = await reader.read(1 << 16)
            if not chunk:
                answered.set_result(None)
                break
            buffer += chunk
            while len(buffer) >= 6 and len(buffer) >= 6 + (buffer[1] & 0x7F):
                size = 6 + (buffer[1] & 0x7F)
                if buffer[0] & 0x0F == 0x8:
                    answered.set_result(int.from_bytes(bytes(b ^ buffer[2 + k % 4] for k, b in
                                                             enumerate(buffer[6:8])), "big"))
                    break
                buffer = buffer[size:]
        writer.close()

    listener = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    messages = []
    try:
        async with connect(f"ws://127.0.0.1:{port}", max_size=max_size, compression=None, ping_interval=None,
                           close_timeout=FAILSAFE_S) as ws:
            try:
                async for message in ws:
                    messages.append(message)
            except ConnectionClosed:
                pass
        return messages, await asyncio.wait_for(answered, FAILSAFE_S)
    finally:
        listener.close()


FAILSAFE_S = 60.0
DIFFERENTIAL_MAX = 1 << 20

_texts = st.one_of(st.text(max_size=40),
                   st.builds(lambda unit, n: unit * n, st.text(min_size=1, max_size=3),
                             st.sampled_from([50, 130, 30_000, 70_000])))
_message = st.one_of(
    st.tuples(st.just("text"), _texts, st.lists(st.floats(0, 1), max_size=4),
              st.lists(st.binary(max_size=125), max_size=3)),
    st.tuples(st.just("binary"), st.binary(max_size=300), st.lists(st.floats(0, 1), max_size=3), st.just([])),
    st.tuples(st.just("ping"), st.binary(max_size=125), st.just([]), st.just([])),
    st.tuples(st.just("pong"), st.binary(max_size=125), st.just([]), st.just([])))


def _stream(items, close_code: int, reason: str) -> tuple[bytes, list[bytes]]:
    """Valid frames, written by websockets' framer: messages cut into fragments at any
    byte (inside a UTF-8 character too), pings between fragments, then a close. Also
    the payloads of the pings, in order."""
    out, pinged = [], []
    for kind, value, cuts, pings in items:
        if kind in ("ping", "pong"):
            out.append(Frame(Opcode.PING if kind == "ping" else Opcode.PONG, value).serialize(mask=False))
            pinged += [value] if kind == "ping" else []
            continue
        payload = value.encode() if kind == "text" else value
        bounds = sorted({0, *(int(c * len(payload)) for c in cuts), len(payload)})
        parts = [payload[a:b] for a, b in zip(bounds, bounds[1:])] or [b""]
        for k, part in enumerate(parts):
            opcode = (Opcode.TEXT if kind == "text" else Opcode.BINARY) if k == 0 else Opcode.CONT
            out.append(Frame(opcode, part, fin=k == len(parts) - 1).serialize(mask=False))
            if k < len(parts) - 1 and k < len(pings):
                out.append(Frame(Opcode.PING, pings[k]).serialize(mask=False))
                pinged.append(pings[k])
    out.append(Frame(Opcode.CLOSE, Close(close_code, reason).serialize()).serialize(mask=False))
    return b"".join(out), pinged


def _unmasked(frame: bytes) -> bytes:
    """The payload of a short frame the client sent (masked)."""
    mask = frame[2:6]
    return bytes(b ^ mask[k % 4] for k, b in enumerate(frame[6:6 + (frame[1] & 0x7F)]))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(_message, max_size=8), close_code=st.sampled_from([1000, 1001, 3000, 4999]),
       reason=st.text(max_size=20), cuts=st.lists(st.lists(st.floats(0, 1), max_size=30), min_size=1, max_size=3))
def test_any_valid_stream_cut_anywhere_gives_what_websockets_own_client_gives(items, close_code, reason, cuts):
    """The reference is the asyncio client of websockets over a socket; the stream gets
    the same bytes in one read and in reads cut at random places (in the handshake
    answer, in headers, in UTF-8 characters): the same text messages in order, a refusal
    for each binary one, a pong for each ping, and the close echoed."""
    data, pings = _stream(items, close_code, reason)
    expected, echoed = asyncio.run(_reference(data, DIFFERENTIAL_MAX))
    assert echoed == close_code
    texts = [m for m in expected if isinstance(m, str)]
    binaries = [f"binary frame of {len(m):,} bytes (messages are JSON text frames)"
                for m in expected if isinstance(m, bytes)]
    for fractions in [[], *cuts]:
        total = len(data) + 200  # the handshake answer is about 130 bytes: cuts fall in it too
        session = Session(data, cuts=sorted(int(f * total) for f in fractions), max_size=DIFFERENTIAL_MAX)
        assert [m.decode() for m in session.messages] == texts
        assert session.refused == binaries
        assert [_unmasked(frame) for frame in session.written if frame[0] == 0x8A] == pings
        assert session.close_code == close_code


# ---- what the stream sends -------------------------------------------------------------------------------------

def _client_frames(blob: bytes) -> list[Frame]:
    """The frames of `blob` as a server reads them (websockets' parser: masked, as a
    client must send them)."""
    from websockets.streams import StreamReader

    reader, frames = StreamReader(), []
    reader.feed_data(blob)
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("a frame cut short")
    return frames


def test_sent_messages_are_masked_text_frames_as_websockets_reads_them_and_a_corked_batch_is_one_write():
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536, '{"é":1}']

    async def scenario():
        stream = transport.Stream("ws://venue.example/", lambda m: None, lambda why: None, MAX_SIZE)
        wire = Wire()
        stream.connection_made(wire)
        stream.data_received(_answer(wire.written[0]))
        for payload in payloads:
            stream.send(payload)
        one_by_one = wire.written[1:]
        with stream.corked():
            for payload in payloads:
                stream.send(payload)
            queued = len(wire.written) - 1 - len(payloads)
        return one_by_one, queued, wire.written[1 + len(payloads):]

    one_by_one, queued, corked = asyncio.run(scenario())
    expected = [p.encode() if isinstance(p, str) else p for p in payloads]
    assert [f.data for f in _client_frames(b"".join(one_by_one))] == expected and len(one_by_one) == len(payloads)
    assert queued == 0 and len(corked) == 1  # nothing leaves before the block ends, then one write
    frames = _client_frames(corked[0])
    assert [(f.opcode, f.fin, f.data) for f in frames] == [(Opcode.TEXT, True, p) for p in expected]
    keys = [frame[2:6] for frame in one_by_one[:2]]
    assert keys[0] != keys[1]  # a fresh masking key per frame


def test_nothing_is_sent_after_the_close_even_from_a_corked_batch():
    async def scenario():
        stream = transport.Stream("ws://venue.example/", lambda m: None, lambda why: None, MAX_SIZE)
        wire = Wire()
        stream.connection_made(wire)
        stream.data_received(_answer(wire.written[0]))
        with stream.corked():
            stream.send(b'{"a":1}')
            stream.close()
        stream.send(b'{"b":2}')
        return wire.written[1:]

    (close,) = asyncio.run(scenario())
    assert close[0] == 0x88


def test_a_peer_that_floods_pings_and_reads_nothing_is_dropped_before_the_pongs_fill_memory(monkeypatch):
    """Each ping is answered; a peer that never reads its pongs would make them pile up in
    the process without end. Past MAX_UNSENT_BYTES unread the connection is dropped, with a
    refusal saying why (over a real socket: the kernel's buffers fill first)."""
    import socket

    monkeypatch.setattr(transport, "MAX_UNSENT_BYTES", 1 << 18)
    refused = []

    async def scenario():
        flooding = asyncio.Event()

        async def server(reader, writer):
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 12)
            writer.write(_answer(await reader.readuntil(b"\r\n\r\n")))
            await flooding.wait()
            ping = _raw(0x89, b"p" * 125)
            while not writer.is_closing():  # pings, and never a read
                writer.write(ping * 512)
                await writer.drain()

        listener = await asyncio.start_server(server, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        stream = await transport.connect(f"ws://127.0.0.1:{port}", lambda m: None, refused.append)
        stream.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 12)
        flooding.set()
        await asyncio.wait_for(asyncio.shield(stream.lost), FAILSAFE_S)
        listener.close()
        return stream.dropped

    dropped = asyncio.run(scenario())
    assert refused == [f"the peer left over {1 << 18:,} bytes unread: connection dropped"]
    assert dropped == f"the peer left over {1 << 18:,} bytes unread"  # what the runtime says on stderr
