"""Wire protocol v1 (docs/live.md, "Wire protocol v1"): frames in, validated messages out.

Every check happens here, before anything reaches the engine: a frame that is not
JSON, a missing field, a wrong type, a NaN or non-positive price or size, a number
beyond `layout.MAX_MAGNITUDE`, an unknown `type` or instrument raises `ProtocolError`,
which the runtime counts and logs as `bad_message`. Nothing here does I/O.
"""
from __future__ import annotations

import functools
import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Callable, Literal, NamedTuple, Optional, Union

import msgspec
import orjson

from policyc.compiler.layout import MAX_MAGNITUDE

MAX_FRAME_BYTES = 1 << 20
MAX_BATCH = 10_000
FEED_FORMATS = ("native", "binance", "coinbase")


class ProtocolError(ValueError):
    """A rejected message: `code` is always `bad_message`, `message` says why."""

    code = "bad_message"


class Market(NamedTuple):  # named tuples: the cheapest records to build, one per message
    instrument: str
    ts: int
    fields: dict            # market fields: price, qty, open, high, low, close, volume, bid, ask, bid_size, ask_size
    sent_ns: int | None = None


class Input(NamedTuple):
    instrument: str
    ts: int | None
    name: str
    value: float
    id: str | None = None
    sent_ns: int | None = None


class Intent(NamedTuple):
    id: str
    instrument: str
    target: float
    limit_price: float = math.nan  # an IOC limit order's limit price (money per unit); NaN: market orders


class Control(NamedTuple):
    type: str               # status, halt or resume
    reason: str = ""


class VenueReply(NamedTuple):
    type: str               # ack, fill, reject, or cancel (an IOC order's unfilled remainder ended)
    client_order_id: str
    qty: float = 0.0        # a fill's quantity; a cancel's remainder (0 when the venue did not say)
    price: float = 0.0
    fee: float = 0.0
    ts: int | None = None
    venue_order_id: str = ""
    reason: str = ""


class VenueState(NamedTuple):
    """The venue's answer to `{"type": "state_request"}`."""

    type: str               # "state"
    positions: dict         # instrument -> signed position (units)
    open_orders: list       # client_order_ids the venue holds open


def decode(frame: str | bytes) -> object:
    """JSON of one frame (strict RFC 8259: NaN and Infinity literals are not JSON),
    refusing oversized frames and an object with a key twice (`_unique_keys`)."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame):,} bytes is over the {MAX_FRAME_BYTES:,}-byte limit")
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    _unique_keys(frame, data)
    return data


def _unique_keys(frame: str | bytes, data) -> None:
    """Raise ProtocolError when an object of `frame` has a key twice. RFC 8259 leaves
    such an object's meaning open and parsers differ (orjson keeps the last value), so
    a fill whose `qty` is there twice could be read one way here and another way by
    whatever else reads it. The check counts colons: without a backslash in the frame,
    every string reads as it is written, and the frame holds one colon per key and the
    colons of its strings, duplicates' included; `data` re-encoded holds the same minus
    what duplicates took. Any other frame is read again, key by key."""
    colon, backslash = (b":", b"\\") if frame.__class__ is not str else (":", "\\")
    try:
        if backslash not in frame and frame.count(colon) == orjson.dumps(data).count(b":"):
            return
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: read it again
        pass
    try:
        json.loads(frame, object_pairs_hook=_object_of_pairs)
    except RecursionError:
        raise ProtocolError("nested too deeply") from None


def _object_of_pairs(pairs: list[tuple[str, object]]) -> dict:
    data = dict(pairs)
    if len(data) < len(pairs):
        seen = set()
        key = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ProtocolError(f"key `{key}` appears twice in one object")
    return data


def encode(message: dict) -> bytes:
    """One message as compact JSON; NaN and infinities are written as null."""
    return orjson.dumps(message)


def encode_indented(message: dict) -> str:
    """The same JSON for a person to read (the status `run` prints when it stops)."""
    return orjson.dumps(message, option=orjson.OPT_INDENT_2).decode()


def _object(msg) -> dict:
    if not isinstance(msg, dict):
        raise ProtocolError(f"a message is a JSON object, not {type(msg).__name__}")
    return msg


def _text(msg: dict, key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"`{key}` must be a non-empty string")
    return value


#: A number written as text (Binance and Coinbase send prices as strings): ASCII digits
#: only. Python's float() also takes `1_000`, other scripts' digits and `nan`, none of
#: which a venue sends on purpose.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def _number(msg: dict, key: str, *, positive: bool = False, required: bool = True, text: bool = False) -> float | None:
    value = msg.get(key)
    if value is None and not required:
        return None
    if text and isinstance(value, str):
        if not _DECIMAL.match(value):
            raise ProtocolError(f"`{key}` must be a number, not {value!r}")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"`{key}` must be a number, not {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ProtocolError(f"`{key}` must be finite")
    if positive and value <= 0:
        raise ProtocolError(f"`{key}` must be positive, not {value:g}")
    if abs(value) > MAX_MAGNITUDE:  # finite, yet sums and products of it could overflow and turn a limit off
        raise ProtocolError(f"`{key}` is {value!r}: too large (at most {MAX_MAGNITUDE:g} in magnitude)")
    return value


def _positive(msg: dict, key: str) -> float:
    """`_number(positive=True)` with the well-formed case first: a market message
    carries several prices and this runs for each."""
    value = msg.get(key)
    if (value.__class__ is float or value.__class__ is int) and 0 < value <= MAX_MAGNITUDE:
        return float(value)
    return _number(msg, key, positive=True)


MAX_NS = 2**63 - 1  # timestamps are int64 nanoseconds


def _integer(msg: dict, key: str, required: bool = True) -> int | None:
    value = msg.get(key)
    if (value.__class__ is int and 0 <= value <= MAX_NS) or (value is None and not required):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"`{key}` must be an integer (ns since the epoch), not {value!r}")
    raise ProtocolError(f"`{key}` is out of range: {value} (ns since the epoch, 0 to 2**63-1)")


class _AnyInstrument:
    """Holds every instrument name (a non-empty string): for a reader that takes whatever
    its feed carries."""

    def __contains__(self, name) -> bool:
        return name.__class__ is str and name != ""


#: `instruments` for `parse_feed` and `FeedDecoder` that accepts any name (a non-empty string).
ANY_INSTRUMENT = _AnyInstrument()


def _instrument(msg: dict, key: str, instruments) -> str:
    name = _text(msg, key)
    if name not in instruments:
        raise ProtocolError(f"unknown instrument `{name}`")
    return name


def _one_frame(parse):
    """A parser whose every failure is a ProtocolError for its frame alone: an exception
    the checks did not foresee (a defect) must not cost the other frames of the read."""
    @functools.wraps(parse)
    def guarded(frame, *args, **kwargs):
        try:
            return parse(frame, *args, **kwargs)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(f"unreadable message: {exc!r}"[:300]) from exc
    return guarded


@_one_frame
def parse_feed(frame: str | bytes, instruments, fmt: str = "native") -> list[Market | Input]:
    """Every message of a market-data frame (a batch is a JSON array); one bad message
    rejects the whole frame, so a batch is never half applied."""
    data = decode(frame)
    items = data if isinstance(data, list) else [data]
    if len(items) > MAX_BATCH:
        raise ProtocolError(f"batch of {len(items):,} messages is over the {MAX_BATCH:,} limit")
    parse = FEED_PARSERS[fmt]
    return [parse(item if item.__class__ is dict else _object(item), instruments) for item in items]


def _native(msg: dict, instruments) -> Market | Input:
    """Each check has its well-formed case inline (a feed sends this for every event);
    anything else goes through the general checks, which raise with the reason."""
    kind = msg.get("type")
    instrument = msg.get("instrument")
    if instrument.__class__ is not str or instrument not in instruments:
        instrument = _instrument(msg, "instrument", instruments)
    ts = msg.get("ts")
    if not (ts.__class__ is int and 0 <= ts <= MAX_NS):
        ts = _integer(msg, "ts")
    sent = msg.get("sent_ns")
    if sent is not None and not (sent.__class__ is int and 0 <= sent <= MAX_NS):
        sent = _integer(msg, "sent_ns")
    if kind == "tick":
        fields = {"price": _positive(msg, "price")}
        qty = _number(msg, "qty", positive=True, required=False)
        if qty is not None:
            fields["qty"] = qty
    elif kind == "bar":
        fields = {"open": _positive(msg, "open"), "high": _positive(msg, "high"), "low": _positive(msg, "low"),
                  "close": _positive(msg, "close")}
        if not _nests(fields):  # as a data file's `inconsistent bar`: fills inside a bar rest on its range
            raise ProtocolError(f"inconsistent bar: open {fields['open']:g}, close {fields['close']:g} not within "
                                f"low {fields['low']:g} and high {fields['high']:g}")
        volume = msg.get("volume")
        if volume is not None:
            if not ((volume.__class__ is float or volume.__class__ is int) and 0 <= volume <= MAX_MAGNITUDE):
                volume = _number(msg, "volume")
                if volume < 0:
                    raise ProtocolError("`volume` must not be negative")
            fields["volume"] = float(volume)
        fields["price"] = fields["close"]
    elif kind == "quote":
        bid, ask = _positive(msg, "bid"), _positive(msg, "ask")
        if bid > ask:
            raise ProtocolError(f"crossed quote: bid {bid:g} above ask {ask:g}")
        fields = {"bid": bid, "ask": ask, "price": (bid + ask) / 2}
        for key in ("bid_size", "ask_size"):
            size = _number(msg, key, positive=True, required=False)
            if size is not None:
                fields[key] = size
    elif kind == "input":
        return Input(instrument, ts, _text(msg, "name"), _number(msg, "value"), sent_ns=sent)
    else:
        raise ProtocolError(f"unknown message type {kind!r}")
    return Market(instrument, ts, fields, sent)


class FeedDecoder:
    """`parse_feed` over every frame of a socket read, in one pass. A native frame of
    well-formed ticks, bars and quotes is decoded and checked by one msgspec call (typed
    structs with the limits of the checks above); a frame that call refuses (an input, a
    field it does not know, any fault) goes through `parse_feed`, so a refusal has the
    same reason and an accepted frame the same messages, whichever way the frame went.
    msgspec keeps the last of a key given twice: the frames it read are checked for
    that together, once per read (`_same_colons`), and the read goes through
    `parse_feed` when that check fails."""

    def __init__(self, instruments, fmt: str = "native"):
        """`instruments`: the names a message may carry, or ANY_INSTRUMENT for any
        non-empty name (a paper venue trades whatever its feed carries). `fmt`: a key of
        FEED_PARSERS."""
        self.instruments, self.fmt = instruments, fmt
        names = None if instruments is ANY_INSTRUMENT else tuple(sorted(instruments))
        self._decode, self._build = _native_decoder(names) if fmt == "native" else (None, {})
        #: Whether every frame of the last read was a native frame of market events that
        #: the msgspec call took whole: its messages are all `Market`s.
        self.clean = False

    def messages(self, frames) -> list:
        """The messages of `frames` (UTF-8 bytes, as a socket gives them; a frame of text
        goes the slow way), in order: `Market`s and `Input`s, and for a frame refused,
        its `ProtocolError` in place of its messages (a batch is all or nothing)."""
        decode, build = self._decode, self._build
        self.clean = False
        if decode is None:
            return self._slow(frames)
        out = []
        read, structs = [], []  # the frames msgspec read, and what it read from them
        for frame in frames:
            try:
                msg = decode(frame) if len(frame) <= MAX_FRAME_BYTES and frame.__class__ is bytes else None
            except Exception:  # noqa: BLE001 - whatever the fast path refuses, parse_feed judges
                msg = None
            make = build.get(msg.__class__)
            if make is not None:
                item = make(msg)
                if item is not None:
                    out.append(item)
                    read.append(frame)
                    structs.append(msg)
                    continue
            elif msg.__class__ is list and len(msg) <= MAX_BATCH:
                items = [build[m.__class__](m) for m in msg]
                if None not in items:
                    out += items
                    read.append(frame)
                    structs.append(msg)
                    continue
            out += self._slow((frame,))
        if read and not _same_colons(read, structs):  # a key twice somewhere: parse_feed finds where
            return self._slow(frames)
        self.clean = len(read) == len(frames)
        return out

    def _slow(self, frames) -> list:
        out = []
        for frame in frames:
            try:
                out += parse_feed(frame, self.instruments, self.fmt)
            except ProtocolError as exc:
                out.append(exc)
        return out


_encode_structs = msgspec.json.Encoder().encode


def _same_colons(frames: list, structs: list) -> bool:
    """Whether `frames` hold no object with a key twice, for what msgspec read from them
    (`structs`, which omit the keys left out or null): `_unique_keys`' count, made once
    for all of them. False also when a backslash or an explicit null makes the count
    unsure: `parse_feed` then judges."""
    text = frames[0] if len(frames) == 1 else b"".join(frames)
    return b"\\" not in text and text.count(b":") == _encode_structs(structs).count(b":")


# The limits of `_positive`, `_integer` and a bar's `volume`, for the fast path. A JSON
# integer is taken for a float, as `_positive` takes it; a bool never is, nor NaN or
# Infinity (not JSON), nor a float for an integer.
_Price = Annotated[float, msgspec.Meta(gt=0, le=MAX_MAGNITUDE)]
_Volume = Annotated[float, msgspec.Meta(ge=0, le=MAX_MAGNITUDE)]
_Ns = Annotated[int, msgspec.Meta(ge=0, le=MAX_NS)]


def _tick(m) -> Market:
    return Market(m.instrument, m.ts, {"price": m.price} if m.qty is None else {"price": m.price, "qty": m.qty},
                  m.sent_ns)


def _nests(bar: dict) -> bool:
    """low <= open, close <= high."""
    return bar["low"] <= min(bar["open"], bar["close"]) and max(bar["open"], bar["close"]) <= bar["high"]


def _bar(m) -> Market | None:
    """None for a bar whose prices do not nest, which `parse_feed` refuses with its reason."""
    fields = {"open": m.open, "high": m.high, "low": m.low, "close": m.close}
    if not _nests(fields):
        return None
    if m.volume is not None:
        fields["volume"] = m.volume
    fields["price"] = m.close
    return Market(m.instrument, m.ts, fields, m.sent_ns)


def _quote(m) -> Market | None:
    """None for a crossed quote, which `parse_feed` refuses with its reason."""
    if m.bid > m.ask:
        return None
    fields = {"bid": m.bid, "ask": m.ask, "price": (m.bid + m.ask) / 2}
    if m.bid_size is not None:
        fields["bid_size"] = m.bid_size
    if m.ask_size is not None:
        fields["ask_size"] = m.ask_size
    return Market(m.instrument, m.ts, fields, m.sent_ns)


@functools.lru_cache(maxsize=8)
def _native_decoder(instruments: tuple[str, ...] | None) -> tuple[Callable, dict]:
    """The decoder of native frames whose `instrument` is one of `instruments` (a
    Literal: an unknown one is refused inside the call; None: any non-empty string, as
    `_text` takes), and for each struct it makes, the function from it to a `Market`
    (fields in the order `_native` gives them, which the journal records). Built once per
    set of instruments."""
    name = Annotated[str, msgspec.Meta(min_length=1)] if instruments is None else Literal[instruments]
    fields = {
        "tick": [("price", _Price), ("qty", Optional[_Price], None)],
        "bar": [("open", _Price), ("high", _Price), ("low", _Price), ("close", _Price),
                ("volume", Optional[_Volume], None)],
        "quote": [("bid", _Price), ("ask", _Price), ("bid_size", Optional[_Price], None),
                  ("ask_size", Optional[_Price], None)],
    }
    build = {}
    for tag, make in (("tick", _tick), ("bar", _bar), ("quote", _quote)):
        struct = msgspec.defstruct(f"_{tag}", [("instrument", name), ("ts", _Ns), *fields[tag],
                                               ("sent_ns", Optional[_Ns], None)],
                                   tag=tag, tag_field="type", forbid_unknown_fields=True, omit_defaults=True)
        build[struct] = make
    message = Union[tuple(build)]
    return msgspec.json.Decoder(Union[message, list[message]]).decode, build


def _binance(msg: dict, instruments) -> Market:
    """A trade (`"e": "trade"`) or a best bid and offer (`"e": "bookTicker"`, the USD-M
    futures stream's form, which carries the transaction time `T`)."""
    event = msg.get("e")
    if event not in ("trade", "bookTicker"):
        raise ProtocolError(f"unknown binance event {event!r}")
    symbol = _text(msg, "s")
    instrument = symbol if symbol in instruments else f"binance:{symbol}"
    if instrument not in instruments:
        raise ProtocolError(f"unknown instrument `{symbol}`")
    ms = _integer(msg, "T")
    if ms > MAX_NS // 1_000_000:
        raise ProtocolError(f"`T` is out of range: {ms} (ms since the epoch)")
    if event == "trade":
        fields = {"price": _number(msg, "p", positive=True, text=True),
                  "qty": _number(msg, "q", positive=True, text=True)}
    else:
        fields = _quote_fields(*(_number(msg, key, positive=True, text=True, required=key.islower())
                                 for key in "bBaA"))  # the sizes `B` and `A` are optional
    return Market(instrument, ms * 1_000_000, fields)


def _quote_fields(bid: float, bid_size: float | None, ask: float, ask_size: float | None) -> dict:
    """The market fields of a best bid and offer, `price` its midpoint; a crossed one
    (bid above ask) raises ProtocolError."""
    if bid > ask:
        raise ProtocolError(f"crossed quote: bid {bid:g} above ask {ask:g}")
    fields = {"bid": bid, "ask": ask, "price": (bid + ask) / 2}
    if bid_size is not None:
        fields["bid_size"] = bid_size
    if ask_size is not None:
        fields["ask_size"] = ask_size
    return fields


def _coinbase(msg: dict, instruments) -> Market:
    if msg.get("type") != "ticker":
        raise ProtocolError(f"unknown coinbase message type {msg.get('type')!r}")
    product = _text(msg, "product_id")
    instrument = product if product in instruments else f"coinbase:{product}"
    if instrument not in instruments:
        raise ProtocolError(f"unknown instrument `{product}`")
    text = _text(msg, "time")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolError(f"`time` is not an ISO timestamp: {text!r}") from None
    if moment.tzinfo is None:  # read as local time it would depend on the machine
        raise ProtocolError(f"`time` has no timezone: {text!r} (Coinbase sends UTC with `Z`)")
    try:
        ts = (moment - _EPOCH) // timedelta(microseconds=1) * 1000  # exact: no float seconds
    except OverflowError:  # a year-1 time with an offset east of UTC
        raise ProtocolError(f"`time` is out of range: {text!r} (1970 to 2262)") from None
    if not 0 <= ts <= MAX_NS:
        raise ProtocolError(f"`time` is out of range: {text!r} (1970 to 2262)")
    fields = {"price": _number(msg, "price", positive=True, text=True)}
    size = _number(msg, "last_size", positive=True, text=True, required=False)
    if size is not None:
        fields["qty"] = size
    book = {key: _number(msg, f"best_{key}", positive=True, text=True, required=False)
            for key in ("bid", "ask", "bid_size", "ask_size")}
    if book["bid"] is not None and book["ask"] is not None and book["bid"] > book["ask"]:
        raise ProtocolError(f"crossed quote: best_bid {book['bid']:g} above best_ask {book['ask']:g}")
    fields.update((key, value) for key, value in book.items() if value is not None)
    return Market(instrument, ts, fields)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FEED_PARSERS = {"native": _native, "binance": _binance, "coinbase": _coinbase}


@_one_frame
def parse_intent(frame: str | bytes, instruments) -> Intent | Input:
    msg = _object(decode(frame))
    kind = msg.get("type")
    ident = msg.get("id")
    if not isinstance(ident, str) or not ident:
        raise ProtocolError("`id` must be a non-empty string")
    instrument = _instrument(msg, "instrument", instruments)
    if kind == "intent":
        limit = _number(msg, "limit_price", positive=True, required=False)
        return Intent(ident, instrument, _number(msg, "target"), math.nan if limit is None else limit)
    if kind == "input":
        return Input(instrument, None, _text(msg, "name"), _number(msg, "value"), id=ident)
    raise ProtocolError(f"unknown message type {kind!r}")


def message_id(frame: str | bytes) -> str | None:
    """The `id` of a frame if it has one, so even a rejected message gets its answer."""
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    ident = msg.get("id") if isinstance(msg, dict) else None
    return ident if isinstance(ident, str) else None


@_one_frame
def parse_control(frame: str | bytes) -> Control:
    msg = _object(decode(frame))
    kind = msg.get("type")
    if kind not in ("status", "halt", "resume"):
        raise ProtocolError(f"unknown message type {kind!r}")
    reason = msg.get("reason", "")
    return Control(kind, reason if isinstance(reason, str) else "")


@_one_frame
def parse_venue(frame: str | bytes) -> VenueReply | VenueState:
    """A venue's answer. A well-formed `ack`, `fill`, `reject` or `cancel` (two for each order)
    in bytes is decoded and checked by one msgspec call, as a native feed frame is
    (`well_formed_venue`); anything else, and anything that call refuses, is checked field
    by field (`_venue_fields`), which gives the reason: the same answers and refusals
    either way."""
    reply = well_formed_venue(frame)
    return reply if reply is not None else _venue_fields(frame)


def well_formed_venue(frame: str | bytes) -> VenueReply | None:
    """`parse_venue`'s answer for a frame its msgspec call takes whole: bytes of an `ack`,
    `fill`, `reject` or `cancel` with no member the protocol does not know, no explicit
    null and no backslash escape. None for any other frame (which may still be a valid
    answer, read field by field)."""
    return well_formed_venues((frame,))[0]


def well_formed_venues(frames) -> list[VenueReply | None]:
    """`well_formed_venue` of each of `frames` (one read of the venue), in order, with the
    colons of the frames msgspec took counted once for all of them (`_same_colons`, which
    cost more than the decoding when made for each frame). A frame's text never holds
    fewer colons than the JSON of what msgspec read from it, so the read's counts agree
    only when each frame's do; when they differ, each frame is counted on its own."""
    replies, msgs, taken, structs = [], [], [], []
    for frame in frames:
        try:
            msg = _decode_venue(frame) if frame.__class__ is bytes and len(frame) <= MAX_FRAME_BYTES else None
        except Exception:  # noqa: BLE001 - whatever the fast path refuses, _venue_fields judges
            msg = None
        make = _VENUE_BUILD.get(msg.__class__)
        reply = make(msg) if make is not None else None
        if reply is not None:
            taken.append(frame)
            structs.append(msg)
        replies.append(reply)
        msgs.append(msg)
    if taken and not _same_colons(taken, structs):  # a key twice somewhere (or a null, a backslash): which frame
        return [reply if reply is None or _same_colons((frame,), (msg,)) else None
                for frame, reply, msg in zip(frames, replies, msgs)]
    return replies


def _venue_fields(frame: str | bytes) -> VenueReply | VenueState:
    msg = _object(decode(frame))
    kind = msg.get("type")
    if kind not in ("ack", "fill", "reject", "cancel", "state"):
        raise ProtocolError(f"unknown message type {kind!r}")
    if kind == "state":
        positions, open_orders = msg.get("positions"), msg.get("open_orders")
        if not isinstance(positions, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for k, v in positions.items()):
            raise ProtocolError("`positions` must map instruments to finite numbers")
        if not isinstance(open_orders, list) or not all(isinstance(o, str) for o in open_orders):
            raise ProtocolError("`open_orders` must be a list of client_order_ids")
        return VenueState("state", {k: float(v) for k, v in positions.items()}, open_orders)
    oid = _text(msg, "client_order_id")
    if kind == "ack":
        vid = msg.get("venue_order_id", "")
        return VenueReply("ack", oid, venue_order_id=vid if isinstance(vid, str) else "")
    if kind == "fill":
        qty = _positive(msg, "qty")
        price = _positive(msg, "price")
        fee = _number(msg, "fee", required=False) or 0.0
        # Orders take liquidity (market and IOC orders), which pays a fee and never earns a
        # rebate. The upper bound, the fill's notional, needs the contract's multiplier: the
        # order core checks it (`OrderCore`), knowing the order's instrument.
        if fee < 0:
            raise ProtocolError(f"`fee` is {fee!r}: a fee is 0 or more (orders take liquidity, which earns no rebate)")
        return VenueReply("fill", oid, qty=qty, price=price, fee=fee, ts=_integer(msg, "ts", required=False))
    reason = msg.get("reason", "")
    reason = reason if isinstance(reason, str) else ""
    if kind == "cancel":
        left = _number(msg, "qty", required=False) or 0.0
        if left < 0:
            raise ProtocolError(f"`qty` is {left:g}: a cancel's remainder is 0 or more")
        return VenueReply("cancel", oid, qty=left, reason=reason)
    return VenueReply("reject", oid, reason=reason)


def _fill(m) -> VenueReply:
    return VenueReply("fill", m.client_order_id, qty=m.qty, price=m.price, fee=m.fee or 0.0, ts=m.ts)


def _venue_decoder() -> tuple[Callable, dict]:
    """The decoder of well-formed acks, fills, rejects and cancels, with `_venue_fields`' limits,
    and for each struct it makes, the function from it to a `VenueReply`."""
    oid = ("client_order_id", Annotated[str, msgspec.Meta(min_length=1)])
    fields = {
        "ack": [oid, ("venue_order_id", str, "")],
        "fill": [oid, ("qty", _Price), ("price", _Price), ("fee", Optional[_Volume], None),
                 ("ts", Optional[_Ns], None)],
        "reject": [oid, ("reason", str, "")],
        "cancel": [oid, ("qty", _Volume, 0.0), ("reason", str, "")],
    }
    makes = {"ack": lambda m: VenueReply("ack", m.client_order_id, venue_order_id=m.venue_order_id),
             "fill": _fill,
             "reject": lambda m: VenueReply("reject", m.client_order_id, reason=m.reason),
             "cancel": lambda m: VenueReply("cancel", m.client_order_id, qty=m.qty, reason=m.reason)}
    build = {msgspec.defstruct(f"_{tag}", fields[tag], tag=tag, tag_field="type", forbid_unknown_fields=True,
                               omit_defaults=True): makes[tag] for tag in fields}
    return msgspec.json.Decoder(Union[tuple(build)]).decode, build


_decode_venue, _VENUE_BUILD = _venue_decoder()
