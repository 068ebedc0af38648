"""The backtest's fill models in the paper venue: `FillBook` (runtime/fills.py) under
`next`, `next-open` and `latency`, worked by hand on daily bars; `PaperVenue` on feed
and order frames without sockets; and the lockstep live run over loopback against the
backtest of the same fill model, order by order."""
import math

import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import compile_policy
from policyc.runtime import demo
from policyc.runtime.fills import Fill, FillBook, FillModel
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.demo import run_live_demo
from policyc.runtime.live.paper import FEED_WAIT_S, PaperVenue
from policyc.runtime.live.protocol import encode

T = 1_700_000_000_000_000_000
D = 86_400 * 10**9  # a day, ns
H = 3_600 * 10**9


def test_next_open_fills_at_the_open_of_the_instruments_next_bar():
    book = FillBook(FillModel(fees_bps=10.0), L.FILL_NEXT_OPEN)
    book.market("A", T, 10.0, bar_open=9.5)
    assert book.order("o", "A", 100.0, event_ts=T, decided_ts=T) is None
    assert book.market("B", T + D, 50.0, bar_open=49.0) == []  # another instrument's bar
    [fill] = book.market("A", T + D, 11.0, bar_open=10.25)
    assert fill[:4] == ("o", "A", 100.0, 10.25) and fill.ts == T + D
    assert fill.fee == pytest.approx(100 * 10.25 * 10 / 10_000)  # 1.025
    # a tick (no open), or a bar whose open is no price, fills at the event's price
    book.order("tick", "A", -5.0, event_ts=T + D)
    assert book.market("A", T + 2 * D, 12.0) == [Fill("tick", "A", -5.0, 12.0, 12.0 * 5 * 1e-3, T + 2 * D)]
    book.order("nan", "A", 1.0, event_ts=T + 2 * D)
    assert book.market("A", T + 3 * D, 13.0, bar_open=math.nan)[0].price == 13.0


def test_next_fills_at_the_next_events_price_not_its_open():
    book = FillBook(FillModel(), L.FILL_NEXT)
    book.market("A", T, 10.0, bar_open=9.5)
    book.order("o", "A", 1.0, event_ts=T)
    assert book.market("A", T + D, 11.0, bar_open=10.25) == [Fill("o", "A", 1.0, 11.0, 0.0, T + D)]


def test_latency_fills_at_the_first_event_at_or_after_the_decision_plus_the_latency():
    book = FillBook(FillModel(), L.FILL_LATENCY, latency_ns=36 * H)
    book.market("A", T, 10.0, bar_open=9.0)
    assert book.order("o", "A", 2.0, event_ts=T, decided_ts=T) is None  # due at T + 36 h
    assert book.market("A", T + D, 11.0, bar_open=10.5) == []           # T + 24 h: not yet
    assert book.market("A", T + 2 * D, 12.0, bar_open=11.75) == [Fill("o", "A", 2.0, 11.75, 0.0, T + 2 * D)]


def test_latency_zero_fills_at_the_next_event_even_one_of_the_same_time():
    book = FillBook(FillModel(), L.FILL_LATENCY)
    book.market("A", T, 10.0, bar_open=9.0)
    book.order("o", "A", 1.0, event_ts=T, decided_ts=T)
    # a second event dated T is after the deciding one: due, as the kernel has it (t >= decided + 0)
    assert book.market("A", T, 10.5, bar_open=10.25) == [Fill("o", "A", 1.0, 10.25, 0.0, T)]


def test_latency_of_an_order_decided_on_no_market_event_counts_from_its_decision_time():
    book = FillBook(FillModel(), L.FILL_LATENCY, latency_ns=12 * H)
    book.market("A", T, 10.0)
    book.order("at noon", "A", 1.0, decided_ts=T + 12 * H)         # an intent at noon: due T + 24 h
    book.order("a minute on", "A", 1.0, decided_ts=T + 12 * H + 60 * 10**9)  # due a minute after T + D
    assert [f.client_order_id for f in book.market("A", T + D, 11.0, bar_open=10.5)] == ["at noon"]
    assert [f.client_order_id for f in book.market("A", T + 2 * D, 12.0, bar_open=11.5)] == ["a minute on"]
    book.order("undated", "A", 1.0)  # no decision time at all: counts from the instrument's last event
    assert book.market("A", T + 2 * D + 11 * H, 12.5) == [] and len(book.market("A", T + 2 * D + 12 * H, 13.0)) == 1


def test_an_order_that_reaches_the_book_before_its_deciding_event_fills_after_it():
    """The venue's copy of the feed lags the runtime's: the order comes before the event
    it was decided on, which it must not fill at, nor at any event before it."""
    book = FillBook(FillModel(), L.FILL_NEXT_OPEN)
    book.market("A", T, 10.0, bar_open=9.0)
    book.order("o", "A", 1.0, event_ts=T + 2 * D, decided_ts=T + 2 * D)
    assert book.market("A", T + D, 11.0, bar_open=10.5) == []        # before the deciding event
    assert book.market("A", T + 2 * D, 12.0, bar_open=11.5) == []    # the deciding event itself
    assert book.market("A", T + 3 * D, 13.0, bar_open=12.5) == [Fill("o", "A", 1.0, 12.5, 0.0, T + 3 * D)]


def test_the_book_never_fills_at_a_price_it_was_shown_before_the_order():
    """An order that comes after the venue has moved past its deciding event fills at the
    next event the venue sees, as a venue would (a backtest would have taken T + D):
    the reason the demo runs its feed in lockstep."""
    book = FillBook(FillModel(), L.FILL_NEXT)
    book.market("A", T, 10.0)
    book.market("A", T + D, 11.0)
    book.order("late", "A", 1.0, event_ts=T)
    assert book.market("A", T + 2 * D, 12.0) == [Fill("late", "A", 1.0, 12.0, 0.0, T + 2 * D)]


@pytest.mark.parametrize("mode, latency, why", [
    (L.LIVE, 0, "fill mode"), (L.FILL_LATENCY, -1, "0 or more"), (L.FILL_LATENCY, 1.5, "an int"),
    (L.FILL_NEXT, 5, "FILL_LATENCY only"), (L.FILL_SAME, 5, "FILL_LATENCY only")])
def test_a_book_refuses_a_mode_or_latency_it_cannot_simulate(mode, latency, why):
    with pytest.raises(ValueError, match=why):
        FillBook(FillModel(), mode, latency)


# ---- the paper venue, sans-I/O -------------------------------------------------------

def bar(ts: int, o: float, c: float, name: str = "ORCL") -> bytes:
    return encode({"type": "bar", "instrument": name, "ts": ts, "open": o, "high": max(o, c) + 1,
                   "low": min(o, c) - 1, "close": c})


def order(oid: str, side: str, qty: float, ts: int, on_market: bool = True) -> bytes:
    msg = {"type": "order", "client_order_id": oid, "instrument": "ORCL", "side": side, "qty": qty,
           "order_type": "market", "ts": ts}
    return encode({**msg, "event_ts": ts} if on_market else msg)


def test_the_paper_venue_fills_a_latency_order_at_the_open_of_the_first_bar_due():
    venue = PaperVenue(fees_bps=10.0, fill_mode=L.FILL_LATENCY, fill_latency_ns=36 * H)
    assert venue.feed_wait_s is None  # waits for its event, not for a lagging feed
    assert venue.on_feed([bar(T, 9.5, 10.0)]) == []
    [ack] = venue.on_order(order("o1", "buy", 100, T))
    assert ack["type"] == "ack" and venue.state()["open_orders"] == ["o1"] and venue.behind == {
        "o1": {"type": "order", "client_order_id": "o1", "instrument": "ORCL", "side": "buy", "qty": 100,
               "order_type": "market", "ts": T, "event_ts": T}}
    assert venue.on_feed([bar(T + D, 10.5, 11.0)]) == []  # 24 h after: not due
    [fill] = venue.on_feed([bar(T + 2 * D, 11.25, 12.0), bar(T + 3 * D, 13.0, 13.5)])
    assert (fill["type"], fill["client_order_id"], fill["qty"], fill["price"]) == ("fill", "o1", 100, 11.25)
    assert fill["fee"] == pytest.approx(100 * 11.25 * 1e-3)
    assert venue.state() == {"type": "state", "positions": {"ORCL": 100.0}, "open_orders": []}
    # an order sent again is answered with what was answered, and fills nothing twice
    assert [r["type"] for r in venue.on_order(order("o1", "buy", 100, T))] == ["ack", "fill"]
    assert venue.on_feed([bar(T + 4 * D, 14.0, 14.5)]) == [] and len(venue.fills) == 1


def test_a_cancel_reaches_an_order_resting_for_its_bar():
    venue = PaperVenue(fill_mode=L.FILL_NEXT_OPEN)
    venue.on_feed([bar(T, 9.5, 10.0)])
    venue.on_order(order("o1", "sell", 5, T))
    assert venue.on_order(encode({"type": "cancel", "client_order_id": "o1"})) == [
        {"type": "reject", "client_order_id": "o1", "reason": "cancelled"}]
    assert venue.on_feed([bar(T + D, 10.5, 11.0)]) == [] and not venue.fills and venue.state()["open_orders"] == []


def test_the_paper_venue_under_next_open_fills_an_intent_order_at_the_next_bar():
    venue = PaperVenue(fill_mode=L.FILL_NEXT_OPEN)
    venue.on_feed([bar(T, 9.5, 10.0)])
    venue.on_order(order("i1", "buy", 3, T + H, on_market=False))  # decided on an intent
    [fill] = venue.on_feed([bar(T + D, 10.5, 11.0)])
    assert fill["price"] == 10.5 and fill["qty"] == 3


def test_the_paper_venue_under_same_fills_at_once_as_before():
    venue = PaperVenue()
    assert venue.feed_wait_s == FEED_WAIT_S
    venue.on_feed([bar(T, 9.5, 10.0)])
    assert [(r["type"], r.get("price")) for r in venue.on_order(order("o1", "buy", 1, T))] == [
        ("ack", None), ("fill", 10.0)]


# ---- over loopback, in lockstep, against the backtest ------------------------------------

@pytest.mark.parametrize("name, mode, latency_ns", [
    ("next", L.FILL_NEXT, 0), ("latency=0ms", L.FILL_LATENCY, 0), ("latency=2d", L.FILL_LATENCY, 2 * D)])
def test_a_lockstep_live_run_fills_as_the_backtest_of_the_same_model(tmp_path, name, mode, latency_ns):
    """`make demo`'s live run with the paper venue in the backtest's fill model: every
    order the same, one by one, decision time, fill price and fee (at the next bar's open
    for `latency`; two days of latency skips a bar after a Thursday or a Friday)."""
    policy = compile_policy(demo.EXAMPLE)
    status = run_live_demo(policy, demo.DATA, tmp_path / "decisions.jsonl", fill_mode=mode, fill_latency_ns=latency_ns)
    result = demo.backtest(policy, mode, latency_ns)
    rows, why = demo.compare(result, read_log(tmp_path / "decisions.jsonl"), status)
    assert status["stalls"] == 0 and status["bad_messages"] == 0
    assert all(backtest == live for _, backtest, live in rows), rows
    assert why[0].startswith("orders: all 105 the same"), why
    assert status["equity"] == pytest.approx(float(result.acct[L.A_EQUITY]), rel=1e-12)


def test_the_fill_models_give_the_demo_different_fills():
    """The lockstep comparison above can fail: the models fill the demo's orders at
    different prices (or the test of each against its own backtest would say nothing)."""
    policy = compile_policy(demo.EXAMPLE)
    prices = {name: [float(o[L.O_FILL_PRICE]) for o in demo.backtest(policy, mode, latency).orders]
              for name, mode, latency in [("same", L.FILL_SAME, 0), ("next", L.FILL_NEXT, 0),
                                          ("latency=0ms", L.FILL_LATENCY, 0), ("latency=2d", L.FILL_LATENCY, 2 * D)]}
    assert len({tuple(p) for p in prices.values()}) == 4
