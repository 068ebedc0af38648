"""Simulated fills, sans-I/O: when an order fills, at what price and for what fee.

`FillModel` is the arithmetic of a simulated fill, as the kernel's `simulated_fill`
does it for a backtest: a buy pays `slippage_bps` above the market price, a sell gets
that much below it (then rounded to the instrument's tick size against the trader, when
it has one), and the fee is |qty| x fill price x multiplier x `fees_bps` / 10,000
(money; the paper venue, given no policy, has no contracts: multiplier 1, no tick).
`FillBook` says which market event, and which of its prices, each order fills at, by
the backtest's fill modes (`backtest --fill`, docs/language.md section 8):

- `same` (layout.FILL_SAME): the price of the market event the order was decided on
  (its `event_ts`), or, for an order decided on no market event (an intent, a halt),
  the instrument's last price. When the book has not been shown that event yet (a
  venue's copy of the feed can lag the runtime's), the order waits for it.
- `next` (layout.FILL_NEXT): the price of the instrument's first market event after the
  one the order was decided on, and after the order reached the book.
- `next-open` (layout.FILL_NEXT_OPEN): that same event, at its open (a bar's `open`;
  its price when the event has none).
- `latency` (layout.FILL_LATENCY, with `latency_ns`): the first such event dated at or
  after the order's decision time plus `latency_ns`, at its open as for `next-open`.

An immediate-or-cancel (IOC) limit order (`FillBook.order`'s `limit_price`) is decided
at the market event it would fill at: a buy fills when the ask (the event's price when
it has no ask) is at or below the limit, at that ask moved by slippage and capped at the
limit; a sell mirrors with the bid. Otherwise it is cancelled unfilled. The book fills it
whole or not at all, or, with `partial`, up to the size there is (`ask_size` for a buy,
`bid_size` for a sell; else the event's `qty`; else whole), the rest cancelled.

"After the one the order was decided on": an order that reaches the book before the
event it was decided on (its `event_ts`) does not fill at that event, as the backtest
never fills an order at the event that decided it. "After the order reached the book":
the book never fills at a price it was shown before the order came, as a venue cannot.
So an owner that hands each order over before showing the next market event gets the
backtest's fills, event for event; protective exits inside a bar (`next-open` in a
backtest) are the kernel's, not the book's.

Its owner shows it the market events and hands it the orders in the order they happen,
and passes on the fills it returns; it keeps no clock but the market events' times. The
paper venue (`runtime/live/paper.py`, any mode, with its own fees and no slippage) and
the order-core backtest (`backtest.run_through_order_core`, the policy's slippage and
fees) are its two owners.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from policyc.compiler import layout as L
from policyc.compiler.semantics import on_tick


@dataclass(frozen=True)
class FillModel:
    """Slippage and fees of simulated fills, both in basis points (1 bp = 0.01%).
    `contracts`: instrument -> (multiplier, tick size) of those a policy gives a contract
    (docs/language.md section 1); any other has a multiplier of 1 and no tick size."""

    slippage_bps: float = 0.0
    fees_bps: float = 0.0
    contracts: dict = field(default_factory=dict)

    @classmethod
    def of(cls, settings: dict, contracts: dict | None = None) -> FillModel:
        """The model of a policy's account settings (`slippage_bps`, `fees_bps`) and contracts."""
        return cls(settings["slippage_bps"], settings["fees_bps"], contracts or {})

    def fill(self, qty: float, market_price: float, instrument: str | None = None) -> tuple[float, float]:
        """(fill price, fee) of `qty` units (signed: above 0 buys) of `instrument` at
        `market_price`, in the instrument's currency; the same operations, in the same
        order, as the kernel's simulated fill, so a backtest's fill prices and fees are
        reproduced to the bit. With a tick size the price is rounded against the trader;
        the fee is on the notional, quantity x price x multiplier."""
        slip = self.slippage_bps / 1e4
        price = market_price * (1.0 + slip) if qty > 0.0 else market_price * (1.0 - slip)
        multiplier, tick = self.contracts.get(instrument, (1.0, math.nan))
        if tick == tick:
            price = on_tick(price, tick, qty > 0.0)
        return price, abs(qty) * (price * multiplier) * (self.fees_bps / 1e4)

    def limit_fill(self, qty: float, touch: float, limit: float, instrument: str | None = None) -> tuple[float, float]:
        """(fill price, fee) of an IOC limit order of `qty` units (signed) that is
        marketable at `touch` (the ask for a buy, the bid for a sell): `fill`'s price
        capped at `limit` (no worse than the limit), the fee on that price."""
        price, _ = self.fill(qty, touch, instrument)
        price = min(price, limit) if qty > 0.0 else max(price, limit)
        multiplier = self.contracts.get(instrument, (1.0, math.nan))[0]
        return price, abs(qty) * (price * multiplier) * (self.fees_bps / 1e4)


class Fill(NamedTuple):
    """What one order got: a market order is filled in full; an IOC limit order in full,
    in part or not at all, `unfilled` being what was cancelled."""

    client_order_id: str
    instrument: str
    qty: float           # signed units: above 0 bought; 0 when an IOC order filled nothing
    price: float         # the fill price, slippage included; NaN when nothing filled
    fee: float           # money
    ts: int              # the time (ns) of the market event whose price it took
    unfilled: float = 0.0  # signed units of an IOC order left unfilled and cancelled


@dataclass
class _Waiting:
    instrument: str
    qty: float
    event_ts: int | None  # the market event it was decided on (ns), None for an intent, a halt
    passed: bool          # the book has been shown that event (or the order has none)
    due_ts: int | None    # `latency`: the earliest market event time it may fill at (ns)
    limit: float | None = None  # an IOC limit order's limit price; None: a market order


#: Fill modes whose orders wait for a market event after the one that decided them.
_LATER = (L.FILL_NEXT, L.FILL_NEXT_OPEN, L.FILL_LATENCY)


@dataclass
class FillBook:
    """Open market orders and the market prices they fill at (see the module docstring).
    Instruments are named as the market events name them. `latency_ns` (int ns, 0 or
    more) is the delay of layout.FILL_LATENCY; other modes take none. `partial`: an IOC
    order fills up to the size there is, the rest cancelled (the paper venue); else
    whole or not at all (the order-core backtest). Raises ValueError for a mode that is
    not one of the backtest's (layout.LIVE among them) or a latency that is negative,
    not an int, or given with another mode."""

    model: FillModel = field(default_factory=FillModel)
    mode: int = L.FILL_SAME
    latency_ns: int = 0
    partial: bool = False
    last_price: dict[str, float] = field(default_factory=dict)  # instrument -> its latest market price
    last_ts: dict[str, int] = field(default_factory=dict)       # instrument -> that event's time, ns
    last_fields: dict[str, dict] = field(default_factory=dict)  # instrument -> that event's market fields
    #: client_order_id -> order not filled yet; changed only by the book's own methods
    waiting: dict[str, _Waiting] = field(default_factory=dict, init=False)
    #: `waiting` by instrument, each in the order the book got them: a market event looks
    #: at its own instrument's orders only, however many others wait (a venue whose feed
    #: lags holds one or more per instrument)
    _waiting_of: dict[str, dict[str, _Waiting]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.mode not in (L.FILL_SAME, *_LATER):
            raise ValueError(f"fill mode must be layout.FILL_SAME, FILL_NEXT, FILL_NEXT_OPEN or FILL_LATENCY, "
                             f"not {self.mode!r}")
        if self.latency_ns.__class__ is not int or self.latency_ns < 0:
            raise ValueError(f"latency_ns must be an int of 0 or more, not {self.latency_ns!r}")
        if self.latency_ns and self.mode != L.FILL_LATENCY:
            raise ValueError("latency_ns is for layout.FILL_LATENCY only")

    def market(self, instrument: str, ts: int, price: float, bar_open: float | None = None,
               fields: dict | None = None) -> list[Fill]:
        """A market event at `price` (above 0, finite) and time `ts` (ns); `bar_open`, a bar's
        opening price (None for a tick or a quote, or a bar without a usable one);
        `fields`, the event's market fields, of which IOC orders read `bid`, `ask`,
        `bid_size`, `ask_size` and `qty` (units; each optional). Returns
        the fills of the orders waiting for this event, in the order the book got them:
        `same`, those decided on an event at or before `ts` (or on none), at `price`;
        the other modes, those decided on an earlier event (or reached after it) and, for
        `latency`, due at or before `ts`: at `bar_open` for `next-open` and `latency` when it
        is a price (above 0, finite), else at `price`."""
        self.last_price[instrument], self.last_ts[instrument] = price, ts
        self.last_fields[instrument] = fields or {}
        mine = self._waiting_of.get(instrument)
        if not mine:
            return []
        if self.mode == L.FILL_SAME:
            due = [oid for oid, w in mine.items() if w.event_ts is None or w.event_ts <= ts]
            return [self._fill(oid, self._take(oid), price, ts) for oid in due]
        at, quoted = price, True
        if self.mode != L.FILL_NEXT and bar_open is not None and 0.0 < bar_open < math.inf:
            at, quoted = bar_open, False  # an IOC order meets the open: the bar's quote is its end's
        due = []
        for oid, w in mine.items():
            if not w.passed:  # the book lags the decision: wait for the deciding event to pass
                if ts < w.event_ts:
                    continue
                w.passed = True
                if ts == w.event_ts:  # the deciding event itself
                    continue
            if w.due_ts is None or ts >= w.due_ts:
                due.append(oid)
        return [self._fill(oid, self._take(oid), at, ts, quoted) for oid in due]

    def order(self, client_order_id: str, instrument: str, qty: float, event_ts: int | None = None,
              decided_ts: int | None = None, limit_price: float | None = None) -> Fill | None:
        """An order of `qty` units (signed), decided on the market event at `event_ts`
        (ns; None for an intent or a halt) at event time `decided_ts` (ns; the order's
        `ts`, which `latency` counts from: None takes `event_ts`, or without one the
        instrument's last event time); a market order, or with `limit_price` (above 0,
        money per unit) an IOC limit order. `same`: its fill now, at the last event,
        unless the book has not reached the market event it was decided on or has no
        price yet: then it waits (None). The other modes: it waits for a later market
        event (None), which `market` fills it at. An IOC order's `Fill` says what filled
        and what was cancelled (`unfilled`)."""
        if self.mode == L.FILL_SAME:
            last = self.last_ts.get(instrument)
            if last is not None and (event_ts is None or event_ts <= last):
                return self._fill(client_order_id, _Waiting(instrument, qty, event_ts, True, None, limit_price),
                                  self.last_price[instrument], last)
            self._wait(client_order_id, _Waiting(instrument, qty, event_ts, False, None, limit_price))
            return None
        last = self.last_ts.get(instrument)
        passed = event_ts is None or (last is not None and last >= event_ts)
        due_ts = None
        if self.mode == L.FILL_LATENCY:
            start = decided_ts if decided_ts is not None else event_ts if event_ts is not None else last
            due_ts = None if start is None else start + self.latency_ns
        self._wait(client_order_id, _Waiting(instrument, qty, event_ts, passed, due_ts, limit_price))
        return None

    def fill_now(self, client_order_id: str) -> Fill | None:
        """End an order's wait: it leaves the book, filled at the instrument's last price,
        or unfilled (None) when the instrument has no price yet or it was not waiting."""
        w = self._take(client_order_id)
        if w is None or w.instrument not in self.last_price:
            return None
        return self._fill(client_order_id, w, self.last_price[w.instrument], self.last_ts[w.instrument])

    def cancel(self, client_order_id: str) -> bool:
        """Take a waiting order off the book; whether it was waiting."""
        return self._take(client_order_id) is not None

    def _wait(self, client_order_id: str, w: _Waiting) -> None:
        """The order waits, after the others (an id given again waits anew, as the last)."""
        self._take(client_order_id)
        self.waiting[client_order_id] = w
        self._waiting_of.setdefault(w.instrument, {})[client_order_id] = w

    def _take(self, client_order_id: str) -> _Waiting | None:
        """The waiting order off the book, None when it was not waiting."""
        w = self.waiting.pop(client_order_id, None)
        if w is not None:
            mine = self._waiting_of[w.instrument]
            del mine[client_order_id]
            if not mine:  # no key left behind per instrument name an order ever carried
                del self._waiting_of[w.instrument]
        return w

    def _fill(self, client_order_id: str, w: _Waiting, market_price: float, ts: int, quoted: bool = True) -> Fill:
        """The order's fill at the instrument's latest event, whose price (or, for
        `next-open` and `latency`, open) is `market_price`; `quoted`: an IOC order meets
        the event's quote and sizes (not at a bar's open, which they postdate)."""
        if w.limit is None:
            price, fee = self.model.fill(w.qty, market_price, w.instrument)
            return Fill(client_order_id, w.instrument, w.qty, price, fee, ts)
        fields = self.last_fields.get(w.instrument, {}) if quoted else {}
        buy = w.qty > 0.0
        touch = fields.get("ask" if buy else "bid", market_price)
        if (touch > w.limit) if buy else (touch < w.limit):  # not marketable: cancelled whole
            return Fill(client_order_id, w.instrument, 0.0, math.nan, 0.0, ts, w.qty)
        qty = w.qty
        if self.partial:
            there = fields.get("ask_size" if buy else "bid_size", fields.get("qty"))
            if there is not None and there < abs(qty):
                qty = there if buy else -there
        price, fee = self.model.limit_fill(qty, touch, w.limit, w.instrument)
        return Fill(client_order_id, w.instrument, qty, price, fee, ts, w.qty - qty)
