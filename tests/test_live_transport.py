"""The feed's transport without sockets: whatever the boundaries of the reads, the frames
a peer sends come out as the same messages, in order, whether the stream's own framer
took them or the protocol of `websockets` did; pings are answered, fragments joined,
binary and oversized frames refused, and a close ends the direct parsing."""
import asyncio
import random

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
