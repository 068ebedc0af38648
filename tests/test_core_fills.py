"""The fill models (`runtime/fills.py`) on their own: which market price an order fills
at under `same` and `next`, and the fill price and fee of the kernel's simulated fill."""
import pytest

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
