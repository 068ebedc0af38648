"""Wire protocol v1: every malformed message is refused with a reason, never acted on."""
import json

import pytest

from policyc.runtime.live.audit import DecisionLog, read_log
from policyc.runtime.live.protocol import (ANY_INSTRUMENT, MAX_FRAME_BYTES, FeedDecoder, Input, Intent, Market,
                                           ProtocolError, message_id, parse_control, parse_feed, parse_intent,
                                           parse_venue)

INSTRUMENTS = {"ORCL", "BTC-USD", "binance:BTCUSDT"}
TS = 1_700_000_000_000_000_000


def test_native_messages_and_batches():
    tick = {"type": "tick", "instrument": "ORCL", "ts": TS, "price": 45.1, "qty": 100, "sent_ns": TS + 5}
    bar = {"type": "bar", "instrument": "ORCL", "ts": TS, "open": 45.0, "high": 45.3, "low": 44.9, "close": 45.1,
           "volume": 120000}
    quote = {"type": "quote", "instrument": "ORCL", "ts": TS, "bid": 45.09, "ask": 45.11}
    score = {"type": "input", "instrument": "ORCL", "ts": TS, "name": "model_score", "value": 0.7}
    got = parse_feed(json.dumps([tick, bar, quote, score]), INSTRUMENTS)
    assert got[0] == Market("ORCL", TS, {"price": 45.1, "qty": 100.0}, TS + 5)
    assert got[1].fields["price"] == 45.1 and got[1].fields["volume"] == 120000
    assert got[2].fields["price"] == pytest.approx(45.10)
    assert got[3] == Input("ORCL", TS, "model_score", 0.7)


def test_venue_formats():
    trade = {"e": "trade", "E": 1672515782136, "s": "BTCUSDT", "t": 12345, "p": "16541.53", "q": "0.003",
             "T": 1672515782134, "m": True, "M": True}
    (m,) = parse_feed(json.dumps(trade), INSTRUMENTS, "binance")
    assert m == Market("binance:BTCUSDT", 1672515782134 * 1_000_000, {"price": 16541.53, "qty": 0.003})
    ticker = {"type": "ticker", "sequence": 1, "product_id": "BTC-USD", "price": "16541.53", "last_size": "0.003",
              "time": "2022-12-31T19:43:02.136Z"}
    (c,) = parse_feed(json.dumps(ticker), INSTRUMENTS, "coinbase")
    assert c.ts == 1672515782136000000 and c.fields == {"price": 16541.53, "qty": 0.003}


@pytest.mark.parametrize("frame, why", [
    ("{not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": "tick", "instrument": "ORCL", "ts": 1, "price": NaN}', "not JSON"),
    ('{"type": "tick", "instrument": "ORCL", "ts": 1, "price": -1}', "positive"),
    ('{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 0}', "positive"),
    ('{"type": "tick", "instrument": "ORCL", "ts": 1, "price": "45.1"}', "number"),
    ('{"type": "tick", "instrument": "ORCL", "ts": 1, "price": true}', "number"),
    ('{"type": "tick", "instrument": "ORCL", "ts": 1.5, "price": 1}', "integer"),
    ('{"type": "tick", "instrument": "ORCL", "price": 1}', "integer"),
    ('{"type": "tick", "instrument": "MSFT", "ts": 1, "price": 1}', "unknown instrument"),
    ('{"type": "trade", "instrument": "ORCL", "ts": 1, "price": 1}', "unknown message type"),
    ('{"type": "quote", "instrument": "ORCL", "ts": 1, "bid": 2, "ask": 1}', "crossed"),
    ('{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1, "qty": -5}', "positive"),
])
def test_bad_feed_messages_are_refused(frame, why):
    with pytest.raises(ProtocolError, match=why):
        parse_feed(frame, INSTRUMENTS)


def test_one_bad_message_rejects_the_whole_batch():
    good = {"type": "tick", "instrument": "ORCL", "ts": TS, "price": 1.0}
    with pytest.raises(ProtocolError):
        parse_feed(json.dumps([good, {**good, "price": -1}]), INSTRUMENTS)


def test_oversized_frames_are_refused():
    with pytest.raises(ProtocolError, match="limit"):
        parse_feed("[" + " " * MAX_FRAME_BYTES + "]", INSTRUMENTS)


def test_intents_controls_and_venue_replies():
    assert parse_intent('{"type": "intent", "id": "a1", "instrument": "ORCL", "target": 150}', INSTRUMENTS) == \
        Intent("a1", "ORCL", 150.0)
    with pytest.raises(ProtocolError, match="id"):
        parse_intent('{"type": "intent", "instrument": "ORCL", "target": 150}', INSTRUMENTS)
    assert message_id('{"type": "intent", "id": "x9", "target": "lots"}') == "x9"
    assert parse_control('{"type": "halt", "reason": "desk"}').type == "halt"
    with pytest.raises(ProtocolError):
        parse_control('{"type": "shutdown"}')
    fill = parse_venue('{"type": "fill", "client_order_id": "c1", "qty": 100, "price": 45.12, "fee": 0.45, "ts": 1}')
    assert (fill.qty, fill.price, fill.fee) == (100.0, 45.12, 0.45)
    with pytest.raises(ProtocolError):
        parse_venue('{"type": "fill", "client_order_id": "c1", "qty": 100, "price": -1}')


def test_decision_log_numbers_records_and_stamps_hashes(tmp_path):
    log = DecisionLog(tmp_path / "log.jsonl", "p" * 64, "b" * 64)
    log.write("session", policy="x", params={"a": 1.0})
    log.write("order", ts=5, qty=float("nan"))
    log.write("bad_message", reason="not JSON")
    log.close()
    records = read_log(tmp_path / "log.jsonl")
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert all(r["policy_hash"] == "p" * 64 and r["build_hash"] == "b" * 64 for r in records)
    assert records[1]["qty"] is None and records[1]["ts"] == 5
    refusing = DecisionLog(tmp_path / "x.jsonl", "p", "b")
    with pytest.raises(ValueError):
        refusing.write("party")
    refusing.close()  # its sync thread ends with it


@pytest.mark.parametrize("frame", [
    '{"type": "tick", "instrument": "ORCL", "ts": 9223372036854775808, "price": 45.1}',
    '{"type": "tick", "instrument": "ORCL", "ts": -1, "price": 45.1}',
    '{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 45.1, "sent_ns": 9223372036854775808}',
])
def test_timestamps_outside_int64_nanoseconds_are_refused(frame):
    with pytest.raises(ProtocolError, match="out of range"):
        parse_feed(frame, INSTRUMENTS)


def test_a_binance_trade_time_that_overflows_nanoseconds_is_refused():
    trade = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "1.0", "q": "1.0", "T": 10**16, "m": True, "M": True}
    with pytest.raises(ProtocolError, match="out of range"):
        parse_feed(json.dumps(trade), INSTRUMENTS, "binance")


# ---- numbers beyond layout.MAX_MAGNITUDE: finite, yet they would overflow the account ------------------------------

def _tick(**fields):
    return json.dumps({"type": "tick", "instrument": "ORCL", "ts": TS, "price": 45.1, **fields})


@pytest.mark.parametrize("parse, frame, key", [
    (parse_feed, _tick(price=1e308), "price"),
    (parse_feed, _tick(price=1e15 * (1 + 2**-52)), "price"),
    (parse_feed, _tick(qty=1e16), "qty"),
    (parse_feed, json.dumps({"type": "bar", "instrument": "ORCL", "ts": TS, "open": 1, "high": 1e300, "low": 1,
                             "close": 1}), "high"),
    (parse_feed, json.dumps({"type": "bar", "instrument": "ORCL", "ts": TS, "open": 1, "high": 1, "low": 1,
                             "close": 1, "volume": 1e20}), "volume"),
    (parse_feed, json.dumps({"type": "quote", "instrument": "ORCL", "ts": TS, "bid": 1, "ask": 1e16}), "ask"),
    (parse_feed, json.dumps({"type": "input", "instrument": "ORCL", "ts": TS, "name": "s", "value": -1e16}), "value"),
    (lambda f, i: parse_feed(f, i, "binance"),
     json.dumps({"e": "trade", "s": "BTCUSDT", "p": "1e300", "q": "1", "T": 1}), "p"),
    (lambda f, i: parse_feed(f, i, "coinbase"),
     json.dumps({"type": "ticker", "product_id": "BTC-USD", "price": "1", "last_size": "1e99",
                 "time": "2022-12-31T19:43:02.136Z"}), "last_size"),
    (parse_intent, json.dumps({"type": "intent", "id": "a", "instrument": "ORCL", "target": -1e16}), "target"),
    (parse_intent, json.dumps({"type": "input", "id": "a", "instrument": "ORCL", "name": "s", "value": 1e300}), "value"),
    (lambda f, i: parse_venue(f), json.dumps({"type": "fill", "client_order_id": "c", "qty": 1e16, "price": 1}), "qty"),
    (lambda f, i: parse_venue(f), json.dumps({"type": "fill", "client_order_id": "c", "qty": 1, "price": 1e300}),
     "price"),
    (lambda f, i: parse_venue(f), json.dumps({"type": "fill", "client_order_id": "c", "qty": 1, "price": 1,
                                              "fee": -1e16}), "fee"),
])
def test_a_number_beyond_the_largest_magnitude_is_refused_with_its_field(parse, frame, key):
    with pytest.raises(ProtocolError, match=f"^`{key}` is .*: too large \\(at most 1e\\+15 in magnitude\\)$"):
        parse(frame, INSTRUMENTS)


def test_the_largest_magnitude_itself_passes():
    (m,) = parse_feed(_tick(price=1e15, qty=1e15), INSTRUMENTS)
    assert m.fields == {"price": 1e15, "qty": 1e15}
    assert parse_intent(json.dumps({"type": "intent", "id": "a", "instrument": "ORCL", "target": -1e15}),
                        INSTRUMENTS).target == -1e15


# ---- values that would move equity or the clock without being market facts -----------------------------------------

def _fill(**fields):
    return json.dumps({"type": "fill", "client_order_id": "c", "qty": 10, "price": 50, **fields})


@pytest.mark.parametrize("fee", [-0.01, -1e15])
def test_a_fee_below_0_is_refused(fee):
    # one fill with fee -1e15 used to raise equity by 1e15 and with it the margin headroom; the bound
    # above (the notional, with the contract's multiplier) is the order core's (test_orders.py)
    with pytest.raises(ProtocolError, match=r"^`fee` is .*: a fee is 0 or more"):
        parse_venue(_fill(fee=fee))
    with pytest.raises(ProtocolError, match=r"^`fee` is .*: a fee is 0 or more"):
        parse_venue(_fill(fee=fee).encode())  # the msgspec fast path


@pytest.mark.parametrize("fee, kept", [(0, 0.0), (500, 500.0), (None, 0.0), (5000, 5000.0)])
def test_a_fee_from_0_to_the_notional_passes(fee, kept):
    assert parse_venue(_fill(**({} if fee is None else {"fee": fee}))).fee == kept


@pytest.mark.parametrize("text", ["1_000", "\u0663", "nan", "NaN", "inf", "-Infinity", "0x10", " 1", "1 ", ""])
def test_numbers_in_strings_are_plain_ascii_decimals(text):
    trade = {"e": "trade", "s": "BTCUSDT", "p": text, "q": "1", "T": 1}
    with pytest.raises(ProtocolError, match="must be a number|positive|non-empty"):
        parse_feed(json.dumps(trade), INSTRUMENTS, "binance")


@pytest.mark.parametrize("text, ts", [("16541.53", 16541.53), ("1e-3", 0.001), (".5", 0.5), ("2.", 2.0)])
def test_plain_decimal_strings_are_read(text, ts):
    trade = {"e": "trade", "s": "BTCUSDT", "p": text, "q": "1", "T": 1}
    assert parse_feed(json.dumps(trade), INSTRUMENTS, "binance")[0].fields["price"] == ts


@pytest.mark.parametrize("time, why", [
    ("2022-12-31T19:43:02.136", "no timezone"),            # would be read as the machine's local time
    ("0001-01-01T00:00:00", "no timezone"),
    ("0001-01-01T00:00:00+05:00", "out of range"),         # used to raise an uncaught OverflowError
    ("1969-12-31T23:59:59.5Z", "out of range"),            # used to come out as +0.5 s
    ("2262-04-12T00:00:00Z", "out of range"),
    ("yesterday", "not an ISO timestamp"),
])
def test_coinbase_times_without_a_zone_or_outside_int64_nanoseconds_are_refused(time, why):
    ticker = {"type": "ticker", "product_id": "BTC-USD", "price": "1", "time": time}
    with pytest.raises(ProtocolError, match=why):
        parse_feed(json.dumps(ticker), INSTRUMENTS, "coinbase")


def test_coinbase_times_are_exact_nanoseconds():
    ticker = {"type": "ticker", "product_id": "BTC-USD", "price": "1", "time": "2262-04-11T23:47:16.854775Z"}
    assert parse_feed(json.dumps(ticker), INSTRUMENTS, "coinbase")[0].ts == 9223372036854775000
    ticker["time"] = "2023-11-14T23:13:20.000001+01:00"
    assert parse_feed(json.dumps(ticker), INSTRUMENTS, "coinbase")[0].ts == TS + 1000


def test_a_refused_number_is_shown_in_full():
    with pytest.raises(ProtocolError, match=r"^`price` is 1000000000000001.0: too large"):
        parse_feed(_tick(price=1_000_000_000_000_001), INSTRUMENTS)


def test_a_parser_defect_is_a_bad_message_for_its_frame_alone(monkeypatch):
    from policyc.runtime.live import protocol

    def broken(msg, instruments):
        raise KeyError("a check nobody wrote")

    monkeypatch.setitem(protocol.FEED_PARSERS, "native", broken)
    with pytest.raises(ProtocolError, match=r"^unreadable message: KeyError\('a check nobody wrote'\)$"):
        parse_feed(_tick(), INSTRUMENTS)


# ---- JSON junk, field by field, in every message type ---------------------------------------------------------------
# Each field of each message gets each junk value, written as JSON text (so that what no
# JSON encoder writes, NaN and 1e999, can be sent). A value its field does not take is
# a ProtocolError, whose reason names the field or says the frame is not JSON; never
# another exception, and never a message read another way. A native feed frame is also
# decoded the fast way (FeedDecoder), which must agree.

JUNK = {
    "NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity", "1e999": "1e999", "-1e999": "-1e999",
    "-0": "-0", "-0.0": "-0.0", "2**64": str(2**64), "10**400": "1" + "0" * 400, "-2**63-1": str(-2**63 - 1),
    "true": "true", "null": "null", "a string": '"1"', "an empty string": '""', "an array": "[1]",
    "an object": '{"a": 1}', "nested 200 deep": "[" * 200 + "]" * 200, "nested 5,000 deep": "[" * 5000 + "]" * 5000,
}
#: per kind of field, the junk it takes (each is then read as it should be)
TAKES = {
    "price": set(), "decimal": {"a string"}, "ns": {"-0"}, "ms": {"-0"},
    "number": {"-0", "-0.0"}, "fee": {"-0", "-0.0", "null"},
    "optional price": {"null"}, "optional ns": {"null", "-0"}, "optional volume": {"null", "-0", "-0.0"},
    "id": {"a string"}, "name": {"a string"}, "instrument": set(), "type": set(),
    "positions": {"an object"}, "orders": set(),
    # informational text: a value of another type is read as "" (a reject is still a reject)
    "text": set(JUNK) - {"NaN", "Infinity", "-Infinity", "1e999", "-1e999", "10**400", "nested 5,000 deep"},
}
def FEED(fmt: str):
    """parse_feed of `fmt` over INSTRUMENTS; `_outcome` reads its `feed_format`."""
    def parse(frame):
        return parse_feed(frame, INSTRUMENTS, fmt)
    parse.feed_format = fmt
    return parse


VENUE = lambda frame: parse_venue(frame)  # noqa: E731
MESSAGES = {  # name: (parse, {field: (kind, value as JSON text)})
    "tick": (FEED("native"), {"type": ("type", '"tick"'), "instrument": ("instrument", '"ORCL"'), "ts": ("ns", str(TS)),
                              "price": ("price", "45.1"), "qty": ("optional price", "100"),
                              "sent_ns": ("optional ns", str(TS + 5))}),
    "bar": (FEED("native"), {"type": ("type", '"bar"'), "instrument": ("instrument", '"ORCL"'), "ts": ("ns", str(TS)),
                             "open": ("price", "45"), "high": ("price", "46"), "low": ("price", "44"),
                             "close": ("price", "45.5"), "volume": ("optional volume", "1000")}),
    "quote": (FEED("native"), {"type": ("type", '"quote"'), "instrument": ("instrument", '"ORCL"'),
                               "ts": ("ns", str(TS)), "bid": ("price", "45.09"), "ask": ("price", "45.11")}),
    "feed input": (FEED("native"), {"type": ("type", '"input"'), "instrument": ("instrument", '"ORCL"'),
                                    "ts": ("ns", str(TS)), "name": ("name", '"score"'), "value": ("number", "0.7")}),
    "binance trade": (FEED("binance"), {"e": ("type", '"trade"'), "s": ("instrument", '"BTCUSDT"'),
                                        "p": ("decimal", '"16541.53"'), "q": ("decimal", '"0.003"'),
                                        "T": ("ms", "1672515782134")}),
    "coinbase ticker": (FEED("coinbase"), {"type": ("type", '"ticker"'), "product_id": ("instrument", '"BTC-USD"'),
                                           "price": ("decimal", '"16541.53"'),
                                           "time": ("type", '"2022-12-31T19:43:02Z"')}),
    "intent": (lambda frame: parse_intent(frame, INSTRUMENTS),
               {"type": ("type", '"intent"'), "id": ("id", '"a1"'), "instrument": ("instrument", '"ORCL"'),
                "target": ("number", "150")}),
    "intents input": (lambda frame: parse_intent(frame, INSTRUMENTS),
                      {"type": ("type", '"input"'), "id": ("id", '"a2"'), "instrument": ("instrument", '"ORCL"'),
                       "name": ("name", '"score"'), "value": ("number", "0.7")}),
    "ack": (VENUE, {"type": ("type", '"ack"'), "client_order_id": ("id", '"c1"'), "venue_order_id": ("text", '"v1"')}),
    "fill": (VENUE, {"type": ("type", '"fill"'), "client_order_id": ("id", '"c1"'), "qty": ("price", "10"),
                     "price": ("price", "45"), "fee": ("fee", "0.5"), "ts": ("optional ns", str(TS))}),
    "reject": (VENUE, {"type": ("type", '"reject"'), "client_order_id": ("id", '"c1"'), "reason": ("text", '"no"')}),
    "state": (VENUE, {"type": ("type", '"state"'), "positions": ("positions", '{"ORCL": 10}'),
                      "open_orders": ("orders", '["c1"]')}),
    "halt": (parse_control, {"type": ("type", '"halt"'), "reason": ("text", '"why"')}),
}
CASES = [(name, field, junk) for name, (_, fields) in MESSAGES.items() for field in fields for junk in JUNK]


def _frame(fields: dict, **replaced: str) -> str:
    return "{" + ", ".join(f'"{key}": {replaced.get(key, value)}' for key, (_, value) in fields.items()) + "}"


def _read(parse, frame):
    """`parse(frame)`, or its ProtocolError (its reason alone) when it refuses the frame."""
    try:
        return parse(frame)
    except ProtocolError as exc:
        return ProtocolError(str(exc))


def _outcome(parse, frame: str):
    """What `parse` makes of `frame` (its messages, or its ProtocolError's reason), and,
    for a native feed frame, the same from FeedDecoder, as bytes from a socket: over the
    runtime's instruments, and over any (a paper venue's reading)."""
    got = _read(parse, frame)
    if parse is VENUE:  # as bytes from a socket, the fast way
        fast = _read(parse_venue, frame.encode())
        assert fast == got if not isinstance(got, ProtocolError) else str(fast) == str(got)
    if getattr(parse, "feed_format", None) == "native":
        anyone = _read(lambda text: parse_feed(text, ANY_INSTRUMENT), frame)
        for instruments, slow in ((INSTRUMENTS, got), (ANY_INSTRUMENT, anyone)):
            fast = FeedDecoder(instruments).messages([frame.encode()])
            assert fast == slow if not isinstance(slow, ProtocolError) else [str(m) for m in fast] == [str(slow)]
    return got


@pytest.mark.parametrize("name, field, junk", CASES, ids=[f"{n}.{f}={j}" for n, f, j in CASES])
def test_json_junk_in_any_field_is_refused_with_its_reason_or_read_as_the_field_takes_it(name, field, junk):
    parse, fields = MESSAGES[name]
    kind = fields[field][0]
    got = _outcome(parse, _frame(fields, **{field: JUNK[junk]}))
    if junk in TAKES[kind]:
        assert not isinstance(got, ProtocolError), got
    else:
        assert isinstance(got, ProtocolError)
        assert str(got).startswith("not JSON") or field in str(got) or "unknown" in str(got) or \
            "out of range" in str(got), str(got)


@pytest.mark.parametrize("name", list(MESSAGES))
def test_every_message_as_written_is_read(name):
    parse, fields = MESSAGES[name]
    assert not isinstance(_outcome(parse, _frame(fields)), ProtocolError)


DUPLICATES = [(name, field) for name, (_, fields) in MESSAGES.items() for field in fields]


@pytest.mark.parametrize("name, field", DUPLICATES, ids=[f"{n}.{f}" for n, f in DUPLICATES])
def test_a_key_twice_in_one_object_is_refused_whichever_value_comes_last(name, field):
    """RFC 8259 leaves an object with a key twice open to reading either value; orjson
    and msgspec keep the last, other readers the first."""
    parse, fields = MESSAGES[name]
    for twice in (f'"{field}": {fields[field][1]}', f'"{field}": 1', f'"{field}": null'):
        frame = _frame(fields)[:-1] + ", " + twice + "}"
        got = _outcome(parse, frame)
        assert isinstance(got, ProtocolError) and str(got) == f"key `{field}` appears twice in one object"


@pytest.mark.parametrize("frame", [
    '{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1, "x": {"a": 1, "a": 2}}',        # in an unknown field
    '[{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1}, '
    '{"type": "tick", "instrument": "ORCL", "ts": 2, "ts": 3, "price": 1}]',                     # in a batch
    '{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1, "x": "\\u003a", "ts": 2}',      # an escaped colon
    '{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1, "x": '
    + "[" * 300 + '{"a": 1, "a": 1}' + "]" * 300 + "}",                                         # deeper than orjson writes
])
def test_a_key_twice_is_found_in_nested_objects_batches_and_behind_escapes(frame):
    assert "appears twice in one object" in str(_outcome(FEED("native"), frame))


@pytest.mark.parametrize("frame", [
    '{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1, "x": "a:b", "y": {"c:d": ":"}}',
    '{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1, "x": "\\u003a\\"", "y": "\\\\:"}',
    '{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1, "qty": null, "sent_ns": null}',
    '[{"type": "tick", "instrument": "ORCL", "ts": 1, "price": 1}, {"type": "tick", "instrument": "ORCL", "ts": 1, '
    '"price": 2}]',
    '{"type": "tick", "instrument": "binance:BTCUSDT", "ts": 1, "price": 1}',
    '{"type": "tick", "instrument": "binance\\u003aBTCUSDT", "ts": 1, "price": 1}',
])
def test_colons_in_strings_escapes_and_explicit_nulls_are_no_duplicate(frame):
    got = _outcome(FEED("native"), frame)
    assert not isinstance(got, ProtocolError), got


@pytest.mark.parametrize("open_, high, low, close", [(45.0, 44.0, 44.9, 45.1), (46.0, 45.3, 44.9, 45.1),
                                                     (45.0, 45.3, 44.9, 44.0)])
def test_a_bar_whose_prices_do_not_nest_is_refused_on_both_paths(open_, high, low, close):
    """As a data file's `inconsistent bar`: the fast msgspec path and `parse_feed` agree."""
    frame = json.dumps({"type": "bar", "instrument": "ORCL", "ts": TS, "open": open_, "high": high, "low": low,
                        "close": close}).encode()
    with pytest.raises(ProtocolError, match="inconsistent bar"):
        parse_feed(frame, {"ORCL"}, "native")
    (got,) = FeedDecoder({"ORCL"}).messages([frame])
    assert isinstance(got, ProtocolError) and "inconsistent bar" in str(got)
