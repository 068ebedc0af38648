"""Immediate-or-cancel (IOC) limit orders and contract fees on the live side: the order
core sends a decision with a limit price as an IOC limit order and releases what the
venue cancels; the fill rule of `runtime/fills.py` worked by hand (whole or none in the
simulated venue, up to the size shown in the paper venue); the fee bound and the paper
venue's fee with a contract multiplier of 50; the venue protocol's `cancel` answer."""
import dataclasses
import math

import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.engine import Engine
from policyc.runtime.fills import Fill, FillBook, FillModel
from policyc.runtime.live.audit import KINDS
from policyc.runtime.live.paper import PaperVenue
from policyc.runtime.live.protocol import Market, ProtocolError, VenueReply, encode, parse_feed, parse_venue
from policyc.runtime.orders import OrderCore

S = 1_000_000_000
T = 1_699_963_200 * S
WALL = 1_800_000_000_000_000_000
#: Intents on two venues: tests/test_multi_venue.py's policy (its name and keys; a limit's
#: value is a kernel argument, not code), so the two files compile one kernel (that of
#: tests/test_replay.py's `WALK`). Its limits but max_position never bind.
TWO = """
policy: walk
version: 1
instruments: {bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}
inputs: [intent]
signals: []
risk:
  max_position: 5
  max_order_qty: 1000000
  max_orders_per_day: 1000000
  max_drawdown: 100%
"""
ES = """
policy: es
version: 1
instruments: {es: {symbol: "CME:ES", multiplier: 50}}
inputs: [intent]
signals: []
risk:
  max_position: 5
"""
BN, CB, ES_NAME = "binance:BTCUSDT", "coinbase:BTC-USD", "CME:ES"


def compiled(text, name):
    return compile_policy(parse_policy_text(text, name))


class Rig:
    """An order core over a fresh engine; what it sends (with the venue it goes to, given
    `venues`) and records."""

    def __init__(self, text, venues=None):
        policy = compiled(text, "p.yaml")
        self.engine = Engine(policy, L.LIVE)
        self.sent, self.records = [], []
        route = (lambda venue, message, sent_ns: self.sent.append((venue, message))) if venues else None
        self.core = OrderCore(self.engine, "p-1", lambda message, sent_ns: self.sent.append(("", message)),
                              self.record, wall_ns=lambda: WALL, monotonic_ns=lambda: 0, venues=venues, route=route)
        self.core.feed_connected()

    def record(self, kind, ts=None, **fields):
        assert kind in KINDS, kind
        self.records.append({"kind": kind, "ts": ts, **fields})

    def kinds(self, kind):
        return [r for r in self.records if r["kind"] == kind]

    def quote(self, instrument, ts, bid, ask):
        self.core.market([Market(instrument, ts, {"bid": bid, "ask": ask, "price": (bid + ask) / 2}, None)])

    def decide(self, instrument, target, limit=math.nan):
        """The engine's decision for `target` (so it counts the open quantity), with `limit` as its limit price."""
        decision = self.engine.intent(instrument, self.core.now_for(instrument), target)
        return dataclasses.replace(decision, limit_price=limit)


def test_a_decision_with_a_limit_goes_out_as_an_ioc_limit_order_and_is_logged_with_it():
    rig = Rig(TWO)
    rig.quote(BN, T, 100.0, 100.5)
    rig.core.act([(rig.decide(BN, 2.0, limit=100.51), None)])
    (_, order), = rig.sent
    assert (order["order_type"], order["limit_price"], order["time_in_force"]) == ("limit", 100.51, "IOC")
    assert (order["side"], order["qty"]) == ("buy", 2.0)
    (record,) = rig.kinds("order")
    assert record["limit_price"] == 100.51 and "venue" not in record  # one venue, unnamed
    rig.quote(CB, T, 101.0, 101.5)
    rig.core.act([(rig.decide(CB, -1.0), None)])  # NaN: a market order, as before
    assert len(rig.sent) == 2
    market = rig.sent[-1][1]
    assert market["order_type"] == "market" and "limit_price" not in market and "time_in_force" not in market
    assert "limit_price" not in rig.kinds("order")[-1]


def test_a_venue_cancel_after_a_partial_fill_releases_the_remainder_like_a_reject():
    rig = Rig(TWO)
    rig.quote(BN, T, 100.0, 100.5)
    rig.core.act([(rig.decide(BN, 3.0, limit=100.6), None)])
    oid = rig.sent[0][1]["client_order_id"]
    assert rig.engine.open_quantity(BN) == 3.0
    rig.core.venue_replies([VenueReply("ack", oid), VenueReply("fill", oid, qty=1.25, price=100.5),
                            VenueReply("cancel", oid, qty=1.75, reason="ioc_unfilled")])
    assert rig.engine.position(BN) == 1.25 and rig.engine.open_quantity(BN) == 0.0 and not rig.core.open
    (cancel,) = rig.kinds("cancel")
    assert (cancel["qty"], cancel["reason"], cancel["client_order_id"]) == (1.75, "ioc_unfilled", oid)
    assert (rig.core.counters.cancels, rig.core.counters.rejects, rig.core.counters.fills) == (1, 0, 1)
    # a fill the venue sends after it cancelled the order contradicts it: the kill switch trips
    rig.core.venue_reply(VenueReply("fill", oid, qty=1.75, price=100.5))
    assert rig.engine.halted and rig.engine.position(BN) == 1.25


def test_a_multi_leg_decision_sends_one_order_per_leg_each_to_its_venue():
    rig = Rig(TWO, venues={BN: "binance", CB: "coinbase"})
    rig.quote(BN, T, 100.0, 100.5)
    rig.quote(CB, T, 101.0, 101.5)
    buy = rig.decide(BN, 0.5, limit=100.51)
    sell = rig.decide(CB, -0.5, limit=100.99)
    rig.core.act([(dataclasses.replace(buy, then=sell), None)])
    assert [(venue, m["instrument"], m["side"], m["limit_price"]) for venue, m in rig.sent] == [
        ("binance", BN, "buy", 100.51), ("coinbase", CB, "sell", 100.99)]
    assert [r["venue"] for r in rig.kinds("order")] == ["binance", "coinbase"]
    # the kill switch cancels on every venue, each cancel on the order's own
    rig.sent.clear()
    rig.core.halt("operator")
    cancels = [(venue, m["client_order_id"]) for venue, m in rig.sent if m["type"] == "cancel"]
    assert cancels == [("binance", "p-1-000001"), ("coinbase", "p-1-000002")]


def test_a_venue_reconnection_resends_only_its_own_orders_and_reconciles_its_own_instruments():
    rig = Rig(TWO, venues={BN: "binance", CB: "coinbase"})
    rig.quote(BN, T, 100.0, 100.5)
    rig.quote(CB, T, 101.0, 101.5)
    rig.core.act([(rig.decide(BN, 1.0), None), (rig.decide(CB, -1.0), None)])
    rig.sent.clear()
    rig.core.venue_connected("coinbase")
    assert [(venue, m["instrument"]) for venue, m in rig.sent] == [("coinbase", CB)]
    rig.core.reconcile_due = {"binance"}
    rig.sent.clear()
    rig.core.venue_connected("binance")
    assert [(venue, m["type"]) for venue, m in rig.sent] == [("binance", "order"), ("binance", "state_request")]
    assert rig.core.reconciling
    # the binance venue holds the open BN order and no position: it matches, the coinbase side is not its business
    rig.core.venue_state({}, ["p-1-000001"], "binance")
    (record,) = rig.kinds("reconcile")
    assert record["matched"] and record["venue"]["name"] == "binance" and list(record["runtime"]["positions"]) == [BN]
    assert not rig.core.reconciling and not rig.engine.halted


# ---- the fee bound with a contract multiplier --------------------------------------------------------------------

def test_the_fee_bound_is_the_notional_with_the_contracts_multiplier():
    rig = Rig(ES)
    rig.core.market([Market(ES_NAME, T, {"price": 4000.0}, None)])
    rig.core.act([(rig.decide(ES_NAME, 2.0), None)])
    oid = rig.sent[0][1]["client_order_id"]
    # 2 x 4000 x 50 = 400,000 of notional: a fee of 10,000 is within it (the protocol once refused above 8,000)
    rig.core.venue_reply(VenueReply("fill", oid, qty=1.0, price=4000.0, fee=10_000.0))
    assert rig.engine.position(ES_NAME) == 1.0 and rig.core.counters.bad_messages == 0
    # exactly 1 x 4000 x 50 = 200,000 is within it too
    other = Rig(ES)
    other.core.market([Market(ES_NAME, T, {"price": 4000.0}, None)])
    other.core.act([(other.decide(ES_NAME, 1.0), None)])
    other.core.venue_reply(VenueReply("fill", other.sent[0][1]["client_order_id"], qty=1.0, price=4000.0,
                                      fee=200_000.0))
    assert other.engine.position(ES_NAME) == 1.0 and not other.core.open and not other.engine.halted
    # above it the fill is refused, not applied; the venue holds a fill this runtime does not, so the
    # kill switch trips (venue_break), as for an overfill
    rig.core.venue_reply(VenueReply("fill", oid, qty=1.0, price=4000.0, fee=200_000.5))
    assert rig.engine.position(ES_NAME) == 1.0 and rig.core.counters.bad_messages == 1
    assert "multiplier 50" in rig.kinds("bad_message")[0]["reason"]
    assert rig.engine.halted and "venue_break" in rig.kinds("halt")[0]["reason"]


def test_the_paper_venue_charges_its_fee_on_the_notional_with_the_multiplier():
    venue = PaperVenue(fees_bps=2.0, multipliers={"CME:ES": 50})
    venue.on_feed([encode({"type": "tick", "instrument": "ES", "ts": T, "price": 4000.0})])
    replies = venue.on_order(encode({"type": "order", "client_order_id": "a", "instrument": "CME:ES", "side": "buy",
                                     "qty": 3, "order_type": "market"}))
    fill = replies[-1]
    assert fill["price"] == 4000.0 and fill["fee"] == pytest.approx(3 * 4000 * 50 * 2 / 10_000)  # 120
    with pytest.raises(ValueError, match="multiplier"):
        PaperVenue(multipliers={"X": 0})


# ---- the fill rule, by hand --------------------------------------------------------------------------------------

def quote(bid, ask, bid_size=None, ask_size=None):
    fields = {"bid": bid, "ask": ask, "price": (bid + ask) / 2}
    fields.update({k: v for k, v in (("bid_size", bid_size), ("ask_size", ask_size)) if v is not None})
    return fields


def test_the_simulated_venue_fills_an_ioc_whole_or_not_at_all():
    book = FillBook(FillModel(slippage_bps=10.0, fees_bps=10.0), L.FILL_SAME)
    book.market("A", T, 100.25, fields=quote(100.0, 100.5, ask_size=0.1))
    # a buy limited at 100.6: the ask 100.5 is below it; 100.5 x 1.001 = 100.6005, capped at 100.6; whole (no partial)
    full = book.order("full", "A", 2.0, event_ts=T, limit_price=100.6)
    assert full == Fill("full", "A", 2.0, 100.6, pytest.approx(2 * 100.6 * 0.001), T, 0.0)
    # a buy limited at 100.4: the ask is above it, nothing fills
    none = book.order("none", "A", 2.0, event_ts=T, limit_price=100.4)
    assert (none.qty, none.fee, none.ts, none.unfilled) == (0.0, 0.0, T, 2.0) and math.isnan(none.price)
    # a sell limited at 99.9: the bid 100 is at or above it, at 100 x 0.999 = 99.9 (the limit itself)
    sell = book.order("sell", "A", -1.0, event_ts=T, limit_price=99.9)
    assert (sell.qty, sell.price, sell.unfilled) == (-1.0, pytest.approx(99.9), 0.0)
    # a trade without a quote: its price is the ask and the bid
    book.market("A", T + 1, 101.0)
    assert book.order("trade", "A", 1.0, limit_price=101.0).price == 101.0


def test_the_paper_venue_fills_up_to_the_size_shown_and_cancels_the_rest():
    venue = PaperVenue(fees_bps=10.0)
    venue.on_feed([encode({"type": "quote", "instrument": "BTCUSDT", "ts": T, "bid": 99.0, "ask": 100.0,
                           "bid_size": 0.5, "ask_size": 0.75})])

    def order(oid, side, qty, limit):
        return venue.on_order(encode({"type": "order", "client_order_id": oid, "instrument": "binance:BTCUSDT",
                                      "side": side, "qty": qty, "order_type": "limit", "limit_price": limit,
                                      "time_in_force": "IOC", "event_ts": T}))

    # full: 0.5 at most 0.75 shown
    assert [r["type"] for r in order("full", "buy", 0.5, 100.0)] == ["ack", "fill"]
    # partial: 2 against 0.75 shown at 100: a fill of 0.75, then the rest cancelled
    ack, fill, cancel = order("part", "buy", 2.0, 100.5)
    assert (fill["qty"], fill["price"], fill["fee"]) == (0.75, 100.0, pytest.approx(0.75 * 100 * 0.001))
    assert cancel == {"type": "cancel", "client_order_id": "part", "qty": 1.25, "reason": "ioc_unfilled"}
    # none: a sell limited above the bid
    ack, cancel = order("none", "sell", 1.0, 99.5)
    assert cancel == {"type": "cancel", "client_order_id": "none", "qty": 1.0, "reason": "ioc_unfilled"}
    assert venue.positions == {"binance:BTCUSDT": 1.25}
    # asked again, the answers are the same, nothing executed twice
    assert order("part", "buy", 2.0, 100.5) == [ack | {"client_order_id": "part", "venue_order_id": "P2"}, fill, cancel
                                                 | {"client_order_id": "part", "qty": 1.25}]
    assert venue.positions == {"binance:BTCUSDT": 1.25}
    assert order("gtc", "buy", 1.0, 100.0)[0]["type"] == "ack"
    bad = venue.on_order(encode({"type": "order", "client_order_id": "x", "instrument": "binance:BTCUSDT",
                                 "side": "buy", "qty": 1, "order_type": "limit", "limit_price": 100.0}))
    assert bad == [{"type": "reject", "client_order_id": "x", "reason": "only IOC limit orders"}]


def test_a_venue_cancel_is_read_by_both_paths_alike():
    frame = encode({"type": "cancel", "client_order_id": "c", "qty": 1.5, "reason": "ioc_unfilled"})
    assert parse_venue(frame) == parse_venue(frame.decode()) == VenueReply("cancel", "c", qty=1.5,
                                                                          reason="ioc_unfilled")
    assert parse_venue(b'{"type":"cancel","client_order_id":"c"}').qty == 0.0
    with pytest.raises(ProtocolError, match="remainder is 0 or more"):
        parse_venue(b'{"type":"cancel","client_order_id":"c","qty":-1}')


def test_quotes_carry_their_sizes_in_every_format():
    names = {"BTCUSDT", "BTC-USD"}
    native = encode({"type": "quote", "instrument": "BTCUSDT", "ts": T, "bid": 1.0, "ask": 2.0, "bid_size": 3.0,
                     "ask_size": 4.0})
    want = {"bid": 1.0, "ask": 2.0, "price": 1.5, "bid_size": 3.0, "ask_size": 4.0}
    assert parse_feed(native, names)[0].fields == want
    from policyc.runtime.live.protocol import FeedDecoder
    assert FeedDecoder(names).messages([native])[0].fields == want  # the msgspec fast path
    book = {"e": "bookTicker", "u": 400900217, "s": "BTCUSDT", "b": "1", "B": "3", "a": "2", "A": "4",
            "T": 1568014460891, "E": 1568014460893}
    (m,) = parse_feed(encode(book), names, "binance")
    assert m.fields == want and m.ts == 1568014460891 * 1_000_000
    with pytest.raises(ProtocolError, match="crossed quote"):
        parse_feed(encode(book | {"b": "2.5"}), names, "binance")
    ticker = {"type": "ticker", "product_id": "BTC-USD", "price": "1.6", "time": "2022-12-31T19:43:02.136Z",
              "best_bid": "1", "best_ask": "2", "best_bid_size": "3", "best_ask_size": "4"}
    (m,) = parse_feed(encode(ticker), names, "coinbase")
    assert m.fields == {**want, "price": 1.6}
    with pytest.raises(ProtocolError, match="crossed quote"):
        parse_feed(encode(ticker | {"best_bid": "3"}), names, "coinbase")


def test_an_intent_with_a_limit_price_goes_out_as_an_ioc_limit_order():
    """The wire's `limit_price` on an intent reaches the kernel: the order toward that
    target carries it (the engine keeps it with the desired target), and the journal
    records it so a replay decides the same; without one the order is a market order."""
    from policyc.runtime.live.protocol import parse_intent

    msg = parse_intent(b'{"type":"intent","id":"a1","instrument":"binance:BTCUSDT","target":2,"limit_price":100.5}',
                       (BN, CB))
    assert (msg.target, msg.limit_price) == (2.0, 100.5)
    assert math.isnan(parse_intent(b'{"type":"intent","id":"a2","instrument":"binance:BTCUSDT","target":1}',
                                   (BN, CB)).limit_price)
    for bad in (b'-1', b'0', b'"100"', b'1e300'):
        with pytest.raises(ProtocolError, match="limit_price"):
            parse_intent(b'{"type":"intent","id":"a3","instrument":"binance:BTCUSDT","target":1,"limit_price":'
                         + bad + b'}', (BN, CB))
    rig = Rig(TWO)
    rig.core.journal = True
    rig.quote(BN, T, 100.0, 100.5)
    decision, added = rig.core.intent(BN, msg.target, msg.id, msg.limit_price)
    assert decision.limit_price == 100.5 and added == ()
    (_, order), = rig.sent
    assert (order["order_type"], order["limit_price"], order["side"], order["qty"]) == ("limit", 100.5, "buy", 2.0)
    (journal,) = rig.kinds("intent")
    assert (journal["target"], journal["limit_price"]) == (2.0, 100.5)
    rig.core.intent(BN, 0.0, "a4")
    assert rig.sent[-1][1]["order_type"] == "market" and "limit_price" not in rig.kinds("intent")[-1]
