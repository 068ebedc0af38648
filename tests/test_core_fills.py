"""The fill models (`runtime/fills.py`) on their own: which market price an order fills
at under `same` and `next`, the fill price and fee of the kernel's simulated fill, and
the book's fills against a reference that scans every waiting order."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyc.compiler import layout as L
from policyc.runtime.fills import Fill, FillBook, FillModel

T = 1_700_000_000_000_000_000


def test_the_fill_price_pays_the_slippage_and_the_fee_is_on_the_fill_price():
    model = FillModel(slippage_bps=2.0, fees_bps=10.0)
    assert model.fill(100.0, 50.0) == (50.0 * (1.0 + 2e-4), 100.0 * 50.0 * (1.0 + 2e-4) * 1e-3)
    assert model.fill(-100.0, 50.0) == (50.0 * (1.0 - 2e-4), 100.0 * 50.0 * (1.0 - 2e-4) * 1e-3)
    assert FillModel().fill(-3.0, 7.25) == (7.25, 0.0)


def test_same_fills_at_once_at_the_event_the_order_was_decided_on_or_waits_for_it():
    book = FillBook(FillModel(), L.FILL_SAME)
    assert book.order("early", "A", 5.0) is None and "early" in book.waiting  # no price yet
    assert book.market("A", T, 10.0) == [Fill("early", "A", 5.0, 10.0, 0.0, T)]
    assert book.order("now", "A", -5.0, event_ts=T) == Fill("now", "A", -5.0, 10.0, 0.0, T)
    assert book.order("ahead", "A", 1.0, event_ts=T + 2) is None  # decided on an event not seen yet
    assert book.market("A", T + 1, 11.0) == [] and book.market("B", T + 2, 99.0) == []
    assert book.market("A", T + 2, 12.0) == [Fill("ahead", "A", 1.0, 12.0, 0.0, T + 2)] and not book.waiting


def test_next_fills_at_the_instruments_next_event_in_the_order_the_orders_came():
    book = FillBook(FillModel(slippage_bps=100.0), L.FILL_NEXT)
    book.market("A", T, 10.0)
    assert book.order("first", "A", 2.0, event_ts=T) is None and book.order("second", "A", -1.0) is None
    assert book.order("other", "B", 1.0) is None
    assert book.market("B", T + 1, 20.0) == [Fill("other", "B", 1.0, 20.0 * 1.01, 0.0, T + 1)]
    assert book.market("A", T + 1, 11.0) == [Fill("first", "A", 2.0, 11.0 * 1.01, 0.0, T + 1),
                                             Fill("second", "A", -1.0, 11.0 * 0.99, 0.0, T + 1)]


def test_a_cancel_takes_a_waiting_order_off_and_fill_now_ends_a_wait():
    book = FillBook(FillModel(), L.FILL_NEXT)
    book.order("gone", "A", 1.0)
    assert book.cancel("gone") and not book.cancel("gone") and book.market("A", T, 10.0) == []
    book.order("late", "A", 1.0)
    assert book.fill_now("late") == Fill("late", "A", 1.0, 10.0, 0.0, T) and book.fill_now("late") is None
    book.order("priceless", "B", 1.0)
    assert book.fill_now("priceless") is None and not book.waiting


def test_a_book_has_one_of_the_backtests_fill_modes():
    with pytest.raises(ValueError, match="fill mode"):
        FillBook(FillModel(), L.LIVE)


class ScanEveryOrder(FillBook):
    """The reference: the book as it was, whose market event scanned every waiting
    order, of every instrument, for its own instrument's (the book now looks at that
    instrument's alone)."""

    def market(self, instrument, ts, price, bar_open=None, fields=None):
        self.last_price[instrument], self.last_ts[instrument] = price, ts
        self.last_fields[instrument] = fields or {}
        if self.mode == L.FILL_SAME:
            due = [oid for oid, w in self.waiting.items()
                   if w.instrument == instrument and (w.event_ts is None or w.event_ts <= ts)]
            return [self._fill(oid, self._take(oid), price, ts) for oid in due]
        at, quoted = price, True
        if self.mode != L.FILL_NEXT and bar_open is not None and 0.0 < bar_open < math.inf:
            at, quoted = bar_open, False
        due = []
        for oid, w in self.waiting.items():
            if w.instrument != instrument:
                continue
            if not w.passed:
                if ts < w.event_ts:
                    continue
                w.passed = True
                if ts == w.event_ts:
                    continue
            if w.due_ts is None or ts >= w.due_ts:
                due.append(oid)
        return [self._fill(oid, self._take(oid), at, ts, quoted) for oid in due]


_INSTRUMENTS = st.sampled_from(["A", "B", "C"])
_TS = st.integers(T, T + 6)
_STEP = st.one_of(
    st.tuples(st.just("order"), st.integers(0, 30), _INSTRUMENTS, st.sampled_from([-2.0, 1.0, 3.0]),
              st.none() | _TS, st.none() | _TS, st.none() | st.sampled_from([9.0, 10.0, 11.0])),
    st.tuples(st.just("market"), _INSTRUMENTS, _TS, st.sampled_from([9.5, 10.0, 10.5]),
              st.none() | st.sampled_from([9.0, 10.0]),
              st.sampled_from([{}, {"bid": 9.9, "ask": 10.1, "bid_size": 1.0, "ask_size": 2.0}])),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("fill_now"), st.integers(0, 30)),
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(mode=st.sampled_from([L.FILL_SAME, L.FILL_NEXT, L.FILL_NEXT_OPEN, L.FILL_LATENCY]),
       partial=st.booleans(), steps=st.lists(_STEP, max_size=60))
def test_a_market_event_fills_what_scanning_every_waiting_order_would(mode, partial, steps):
    """Random orders (market and IOC limit, with and without the event they were decided
    on), market events (bars with opens, quotes with sizes), cancels and ended waits on
    three instruments: the same fills, in the same order, and the same orders left
    waiting, as the reference that scans every instrument's orders."""
    latency = 2 if mode == L.FILL_LATENCY else 0
    books = [kind(FillModel(slippage_bps=1.0, fees_bps=2.0), mode, latency, partial)
             for kind in (ScanEveryOrder, FillBook)]
    for step in steps:
        if step[0] == "order":
            _, k, instrument, qty, event_ts, decided_ts, limit = step
            if f"o{k}" in books[0].waiting:
                continue  # the venue and the backtest never send an id twice
            got = [b.order(f"o{k}", instrument, qty, event_ts, decided_ts, limit) for b in books]
        elif step[0] == "market":
            _, instrument, ts, price, bar_open, fields = step
            got = [b.market(instrument, ts, price, bar_open, fields) for b in books]
        else:
            got = [getattr(b, step[0])(f"o{step[1]}") for b in books]
        assert got[0] == got[1], step
        assert list(books[0].waiting) == list(books[1].waiting)
        # the index by instrument holds exactly the waiting orders, in the order the book got them
        assert all(mine for mine in books[1]._waiting_of.values())
        assert {instrument: list(mine) for instrument, mine in books[1]._waiting_of.items()} == \
            {instrument: [oid for oid, w in books[1].waiting.items() if w.instrument == instrument]
             for instrument in {w.instrument for w in books[1].waiting.values()}}
