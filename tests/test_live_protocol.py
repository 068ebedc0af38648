"""Wire protocol v1: every malformed message is refused with a reason, never acted on."""
import json

import pytest

from policyc.runtime.live.audit import DecisionLog, read_log
from policyc.runtime.live.protocol import (MAX_FRAME_BYTES, Input, Intent, Market, ProtocolError, message_id,
                                   parse_control, parse_feed, parse_intent, parse_venue)

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


@pytest.mark.parametrize("fee", [-0.01, -1e15, 500.01])
def test_a_fee_below_0_or_above_the_notional_is_refused(fee):
    # one fill with fee -1e15 used to raise equity by 1e15 and with it the margin headroom
    with pytest.raises(ProtocolError, match=r"^`fee` is .*: a market order's fee is from 0 to the fill's notional \(500\)$"):
        parse_venue(_fill(fee=fee))


@pytest.mark.parametrize("fee, kept", [(0, 0.0), (500, 500.0), (None, 0.0)])
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
