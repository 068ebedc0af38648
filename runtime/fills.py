"""Simulated fills, sans-I/O: when a market order fills, at what price and for what fee.

`FillModel` is the arithmetic of a simulated fill, as the kernel's `simulated_fill`
does it for a backtest: a buy pays `slippage_bps` above the market price, a sell gets
that much below it, and the fee is |qty| x fill price x `fees_bps` / 10,000 (money).
`FillBook` says which market price each order fills at, by one of the backtest's fill
modes (`backtest --fill`):

- `same` (layout.FILL_SAME): the price of the market event the order was decided on
  (its `event_ts`), or, for an order decided on no market event (an intent, a halt),
  the instrument's last price. When the book has not been shown that event yet (a
  venue's copy of the feed can lag the runtime's), the order waits for it.
- `next` (layout.FILL_NEXT): the price of the instrument's first market event after the
  order reached the book.

Its owner shows it the market events and hands it the orders in the order they happen,
and passes on the fills it returns; it keeps no clock. The paper venue
(`runtime/live/paper.py`, `--fill same` with its own latency and fees) and the
order-core backtest (`backtest.run_through_order_core`, either mode, the policy's
slippage and fees) are its two owners.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from policyc.compiler import layout as L


@dataclass(frozen=True)
class FillModel:
    """Slippage and fees of simulated fills, both in basis points (1 bp = 0.01%)."""

    slippage_bps: float = 0.0
    fees_bps: float = 0.0

    @classmethod
    def of(cls, settings: dict) -> FillModel:
        """The model of a policy's account settings (`slippage_bps`, `fees_bps`)."""
        return cls(settings["slippage_bps"], settings["fees_bps"])

    def fill(self, qty: float, market_price: float) -> tuple[float, float]:
        """(fill price, fee) of `qty` units (signed: above 0 buys) at `market_price`, in the
        instrument's currency; the same operations, in the same order, as the kernel's
        simulated fill, so a backtest's fill prices and fees are reproduced to the bit."""
        slip = self.slippage_bps / 1e4
        price = market_price * (1.0 + slip) if qty > 0.0 else market_price * (1.0 - slip)
        return price, abs(qty) * price * (self.fees_bps / 1e4)


class Fill(NamedTuple):
    """One order filled in full."""

    client_order_id: str
    instrument: str
    qty: float           # signed units: above 0 bought
    price: float         # the fill price, slippage included
    fee: float           # money
    ts: int              # the time (ns) of the market event whose price it took


@dataclass
class _Waiting:
    instrument: str
    qty: float
    event_ts: int | None  # `same`: the market event it fills at; `next`: None


@dataclass
class FillBook:
    """Open market orders and the market prices they fill at (see the module docstring).
    Instruments are named as the market events name them."""

    model: FillModel = field(default_factory=FillModel)
    mode: int = L.FILL_SAME
    last_price: dict[str, float] = field(default_factory=dict)  # instrument -> its latest market price
    last_ts: dict[str, int] = field(default_factory=dict)       # instrument -> that event's time, ns
    waiting: dict[str, _Waiting] = field(default_factory=dict)   # client_order_id -> order not filled yet

    def __post_init__(self):
        if self.mode not in (L.FILL_SAME, L.FILL_NEXT):
            raise ValueError(f"fill mode must be layout.FILL_SAME or FILL_NEXT, not {self.mode!r}")

    def market(self, instrument: str, ts: int, price: float) -> list[Fill]:
        """A market event at `price` (above 0, finite) and time `ts` (ns): the fills of the
        orders waiting for it, in the order the book got them. `next`: every order of the
        instrument waiting; `same`: those decided on a market event at or before `ts`."""
        self.last_price[instrument], self.last_ts[instrument] = price, ts
        due = [oid for oid, w in self.waiting.items()
               if w.instrument == instrument and (w.event_ts is None or w.event_ts <= ts)]
        return [self._fill(oid, self.waiting.pop(oid), price, ts) for oid in due]

    def order(self, client_order_id: str, instrument: str, qty: float, event_ts: int | None = None) -> Fill | None:
        """A market order of `qty` units (signed). `same`: its fill now, at the last price,
        unless the book has not reached the market event it was decided on (`event_ts`,
        ns) or has no price yet: then it waits (None). `next`: it waits for the
        instrument's next market event (None)."""
        if self.mode == L.FILL_SAME:
            last = self.last_ts.get(instrument)
            if last is not None and (event_ts is None or event_ts <= last):
                return self._fill(client_order_id, _Waiting(instrument, qty, event_ts), self.last_price[instrument],
                                  last)
        self.waiting[client_order_id] = _Waiting(instrument, qty, event_ts if self.mode == L.FILL_SAME else None)
        return None

    def fill_now(self, client_order_id: str) -> Fill | None:
        """End an order's wait: it leaves the book, filled at the instrument's last price,
        or unfilled (None) when the instrument has no price yet or it was not waiting."""
        w = self.waiting.pop(client_order_id, None)
        if w is None or w.instrument not in self.last_price:
            return None
        return self._fill(client_order_id, w, self.last_price[w.instrument], self.last_ts[w.instrument])

    def cancel(self, client_order_id: str) -> bool:
        """Take a waiting order off the book; whether it was waiting."""
        return self.waiting.pop(client_order_id, None) is not None

    def _fill(self, client_order_id: str, w: _Waiting, market_price: float, ts: int) -> Fill:
        price, fee = self.model.fill(w.qty, market_price)
        return Fill(client_order_id, w.instrument, w.qty, price, fee, ts)
