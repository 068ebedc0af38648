"""The sans-I/O engine core: one event in, one decision out, state in arrays.

The backtest feeds the compiled kernel whole batches; the live runtime calls this class
once per message. Both run the same kernel over the same state arrays, so a decision
does not depend on who drives it. Nothing here does I/O or knows about asyncio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compiler import layout as L
from compiler.build import CompiledPolicy, Events
from compiler.builtins import MARKET_FIELDS


@dataclass(frozen=True)
class Decision:
    """What the policy decided on one event (spec section 6)."""

    instrument: str
    ts: int
    price: float              # the instrument's last price (NaN before the first)
    desired_target: float
    approved_target: float
    position: float           # filled position before the decision
    order_qty: float          # signed; 0 when nothing is sent
    reasons: tuple[str, ...]
    is_exit: bool


class EngineError(ValueError):
    """A message the engine cannot act on (unknown instrument or field, bad value)."""


class Engine:
    """Drives a compiled policy one event at a time. `mode` is layout.LIVE (fills come
    from a venue) or a backtest fill mode. Each call is a batch of one event, so the
    event columns of `session.orders` are 0; `Decision` carries the timestamp instead."""

    def __init__(self, policy: CompiledPolicy, mode: int = L.LIVE, account: dict | None = None):
        self.policy = policy
        self.session = policy.session(mode, account)
        self.index = {name: k for k, name in enumerate(policy.instruments)}
        self.columns = {name: k for k, name in enumerate(policy.columns)}
        self.market_columns = [c for c in policy.columns if c in MARKET_FIELDS]
        self.inputs = {name: self.columns[name] for name in policy.checked.inputs}
        self.latest_inputs = np.full((len(policy.instruments), len(policy.columns)), np.nan)
        n_columns = max(len(policy.columns), 3)
        self._events = Events(np.zeros(1, np.int64), np.zeros(1, np.int8), np.zeros(1, np.int32),
                              np.zeros((1, n_columns)))
        self._trace = np.full((1, L.TRACE_FIXED + len(policy.feature_names)), np.nan)
        self._equity = np.zeros(1)
        self.events = 0

    # ---- state -------------------------------------------------------------------
    def instrument(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise EngineError(f"unknown instrument `{name}`") from None

    @property
    def halted(self) -> bool:
        return bool(self.session.acct[L.A_HALTED])

    @property
    def equity(self) -> float:
        return float(self.session.acct[L.A_EQUITY])

    @property
    def cash(self) -> float:
        return float(self.session.acct[L.A_CASH])

    def positions(self) -> dict[str, float]:
        return {name: float(self.session.pstate[k, L.P_POS]) for name, k in self.index.items()}

    def open_orders(self) -> dict[str, float]:
        return {name: float(self.session.pstate[k, L.P_OPEN]) for name, k in self.index.items()}

    def snapshot(self) -> dict:
        snap = self.session.snapshot()
        snap["latest_inputs"] = self.latest_inputs.copy()
        return snap

    def restore(self, snap: dict) -> None:
        self.session.restore(snap)
        self.latest_inputs = snap["latest_inputs"].copy()

    # ---- events ------------------------------------------------------------------
    def _run(self, kind: int, inst: int, ts: int, values=()) -> tuple[int, int]:
        ev = self._events
        ev.ts[0], ev.kind[0], ev.inst[0] = ts, kind, inst
        ev.vals[0, :] = np.nan
        for k, v in enumerate(values):
            ev.vals[0, k] = v
        self._trace[0, :] = np.nan
        before = self.session.n_orders
        self.session.feed(ev, self._equity, self._trace)
        self.events += 1
        return before, self.session.n_orders

    def _decision(self, inst: int, ts: int, before: int, after: int) -> Decision | None:
        row = self._trace[0]
        if row[L.T_DESIRED] != row[L.T_DESIRED]:
            return None  # the engine made no decision (e.g. a price it ignores)
        order = self.session.orders[before] if after > before else None
        return Decision(
            instrument=self.policy.instruments[inst], ts=ts,
            price=float(self.session.pstate[inst, L.P_LAST]),
            desired_target=float(row[L.T_DESIRED]), approved_target=float(row[L.T_TARGET]),
            position=float(row[L.T_POSITION]), order_qty=float(row[L.T_ORDER]),
            reasons=tuple(L.decode_reasons(row[L.T_REASONS], self.policy.reason_names)),
            is_exit=bool(order is not None and order[L.O_EXIT]),
        )

    def market(self, instrument: str, ts: int, fields: dict[str, float]) -> Decision | None:
        """A tick, bar or quote: updates features, runs the rules and the risk steps."""
        inst = self.instrument(instrument)
        unknown = [f for f in fields if f not in MARKET_FIELDS and f not in self.inputs]
        if unknown:
            raise EngineError(f"unknown field `{unknown[0]}`")
        if "price" not in fields and "close" in fields:
            fields = {**fields, "price": fields["close"]}
        if "close" not in fields and "price" in fields:
            fields = {**fields, "close": fields["price"]}
        price = fields.get("price")
        if price is None or not (isinstance(price, (int, float)) and math.isfinite(price) and price > 0):
            raise EngineError(f"price must be a positive number, not {price!r}")
        values = self.latest_inputs[inst].copy()
        if "intent" in self.columns:
            values[self.columns["intent"]] = np.nan  # an intent acts once, when it arrives
        for name, value in fields.items():
            if name in self.columns:
                values[self.columns[name]] = float(value)
        before, after = self._run(L.MARKET, inst, ts, values)
        return self._decision(inst, ts, before, after)

    def set_input(self, instrument: str, name: str, value: float) -> None:
        """A model input such as a score: read by the next market event of the instrument."""
        inst = self.instrument(instrument)
        if name not in self.inputs or name == "intent":
            raise EngineError(f"`{name}` is not an input of `{self.policy.name}`"
                              + (" (send an intent instead)" if name == "intent" else ""))
        self.latest_inputs[inst, self.inputs[name]] = float(value)

    def intent(self, instrument: str, ts: int, target: float) -> Decision:
        """A model's proposed position; the risk steps decide what reaches the market."""
        inst = self.instrument(instrument)
        if not math.isfinite(target):
            raise EngineError(f"target must be a finite number, not {target!r}")
        before, after = self._run(L.INTENT, inst, ts, (float(target),))
        return self._decision(inst, ts, before, after)

    def decide(self, instrument: str, ts: int) -> Decision:
        """Re-run the risk steps on the current desired target (after a halt, say)."""
        inst = self.instrument(instrument)
        before, after = self._run(L.DECIDE, inst, ts)
        return self._decision(inst, ts, before, after)

    def fill(self, instrument: str, ts: int, qty: float, price: float, fee: float = 0.0) -> None:
        self._run(L.FILL, self.instrument(instrument), ts, (qty, price, fee))

    def reject(self, instrument: str, ts: int, qty: float) -> None:
        self._run(L.REJECT, self.instrument(instrument), ts, (qty,))

    def halt(self, ts: int) -> list[Decision]:
        """Trip the kill switch and decide again on every instrument (liquidation orders)."""
        self._run(L.HALT, 0, ts)
        return [d for d in (self.decide(name, ts) for name in self.index) if d is not None]

    def resume(self, ts: int) -> None:
        self._run(L.RESUME, 0, ts)
