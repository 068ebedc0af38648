"""The sans-I/O engine core: one event in, one decision out, state in arrays.

The backtest feeds the compiled kernel whole batches; the live runtime calls this class
once per message. Both run the same kernel over the same state arrays, so a decision
does not depend on who drives it. Nothing here does I/O or knows about asyncio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy, Events, Session
from policyc.compiler.builtins import MARKET_FIELDS


@dataclass(frozen=True, init=False)
class Decision:
    """What the policy decided on one event (spec section 6). Quantities are in units,
    prices in the instrument's currency.

    A decision makes at most two orders: when a protective exit meets an opposite target,
    the exit leaves on its own (this Decision: `is_exit`, `order_qty` the exit) and the
    re-entry, checked like any order, is `then` (is_exit False); each carries its own
    reasons, and one whose order the risk steps blocked has `order_qty` 0. When a
    multi-leg rule fires (or `max_leg_imbalance` flattens the legs), the other
    instruments' decisions on the same event follow on `then` too, each with its own
    `instrument`, in the order the kernel made their orders (docs/language.md section
    5); a leg of another instrument appears only when it made an order, and its
    `position` is its filled position after the event. Otherwise `then` is None."""

    instrument: str
    ts: int
    price: float              # the instrument's last price (NaN before the first)
    desired_target: float
    approved_target: float    # position plus open orders once this order is sent
    position: float           # filled position before the decision
    order_qty: float          # signed; 0 when nothing is sent
    reasons: tuple[str, ...]
    is_exit: bool
    trips_kill_switch: bool = False  # this decision turned the kill switch on (max_drawdown, a custom halt)
    then: Decision | None = None     # the next order of the same event: a re-entry, or another leg
    limit_price: float = math.nan    # an immediate-or-cancel limit order's limit price; NaN: a market order

    # The fields above, in their order, with their defaults (`dataclasses.replace` calls it
    # so). The dataclass's __init__ sets each field of a frozen instance through
    # object.__setattr__ (1.2 us a Decision); a live run makes one for each event with an
    # order or a reason, and writing the instance's dict costs a third of that.
    def __init__(self, instrument: str, ts: int, price: float, desired_target: float, approved_target: float,
                 position: float, order_qty: float, reasons: tuple[str, ...], is_exit: bool,
                 trips_kill_switch: bool = False, then: Decision | None = None, limit_price: float = math.nan):
        fields = self.__dict__
        fields["instrument"], fields["ts"], fields["price"] = instrument, ts, price
        fields["desired_target"], fields["approved_target"] = desired_target, approved_target
        fields["position"], fields["order_qty"], fields["reasons"] = position, order_qty, reasons
        fields["is_exit"], fields["trips_kill_switch"] = is_exit, trips_kill_switch
        fields["then"], fields["limit_price"] = then, limit_price


#: From this many market events in one call on, their rows are written column by column
#: (a few NumPy calls per batch) rather than row by row.
VECTOR_MIN = 8


#: What `Engine.book` takes: (event kind, number of values)
_BOOKED = frozenset(((L.FILL, 3), (L.REJECT, 1)))


class EngineError(ValueError):
    """A message the engine cannot act on (unknown instrument or field, bad value)."""


def check_timestamp(ts) -> None:
    """Raise EngineError unless ts is int64 nanoseconds since the epoch (not before it),
    so no timestamp the kernel sees can overflow its arrays or its arithmetic."""
    if not isinstance(ts, (int, np.integer)) or isinstance(ts, bool) or not 0 <= ts < 2**63:
        raise EngineError(f"timestamp must be int64 nanoseconds, not {ts!r}")


class Engine:
    """Drives a compiled policy one event at a time. `mode` is layout.LIVE (fills come
    from a venue) or a backtest fill mode. Each call is a batch of one event, so the
    event columns of `session.orders` are 0; `Decision` carries the timestamp instead.

    `session` is the state and the back end the events run through: by default a fresh
    `policy.session(mode, account)` over the compiled kernel; anything with `Session`'s
    `feed`, `orders`, `n_orders`, `pstate` and `acct` can stand in for it (the tests run
    the reference interpreter behind an Engine this way)."""

    def __init__(self, policy: CompiledPolicy, mode: int = L.LIVE, account: dict | None = None, *,
                 session: Session | None = None):
        self.policy = policy
        self.session = policy.session(mode, account) if session is None else session
        self.index = {name: k for k, name in enumerate(policy.instruments)}
        self._names, self._reason_names = policy.instruments, policy.reason_names
        self._trip_mask = sum(1 << k for k, name in enumerate(self._reason_names)
                              if name.endswith(":halt") and name != "kill_switch:halt")
        self.columns = {name: k for k, name in enumerate(policy.columns)}
        # whether the kernel keeps a desired target's limit price (and so an intent's)
        self._limits = policy.program.uses_limits() or policy.program.intent_column is not None
        self.inputs = {name: self.columns[name] for name in policy.checked.inputs}
        self.intent_column = self.columns.get("intent")
        self._n_columns = max(len(policy.columns), 3)
        self.latest_inputs = np.full((len(policy.instruments), self._n_columns), np.nan)
        self._nans = (math.nan,) * self._n_columns  # what an event's row holds past its values
        self._blank_rows: dict[int, list] = {}
        self._price_columns = [(c, self.columns[c]) for c in ("price", "close") if c in self.columns]
        # every name a market event may carry -> its column, or None when the kernel has none for it (a field
        # the policy does not read; an optional column, the quote of a policy with a `limit`, is NaN when not sent)
        self._field_slots = {**dict.fromkeys(MARKET_FIELDS), **self.columns}
        self._plans: dict[tuple, tuple | bool] = {}  # the fields of a market event -> how `_market_batch` writes them
        self._grow(1)

    def _grow(self, capacity: int) -> None:
        """Event, trace and equity buffers for batches of up to `capacity` events."""
        self._events = Events(np.zeros(capacity, np.int64), np.zeros(capacity, np.int8),
                              np.zeros(capacity, np.int32), np.zeros((capacity, self._n_columns)))
        self._trace = np.full((capacity, L.TRACE_FIXED + len(self.policy.feature_names)), np.nan)
        self._equity = np.zeros(capacity)

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

    def position(self, instrument: str) -> float:
        return float(self.session.pstate[self.instrument(instrument), L.P_POS])

    def open_quantity(self, instrument: str) -> float:
        """Signed quantity of the orders sent and not yet filled or rejected."""
        return float(self.session.pstate[self.instrument(instrument), L.P_OPEN])

    def positions(self) -> dict[str, float]:
        return {name: float(self.session.pstate[k, L.P_POS]) for name, k in self.index.items()}

    def last_prices(self) -> dict[str, float]:
        return {name: float(self.session.pstate[k, L.P_LAST]) for name, k in self.index.items()}

    def open_orders(self) -> dict[str, float]:
        return {name: float(self.session.pstate[k, L.P_OPEN]) for name, k in self.index.items()}

    def snapshot(self) -> dict:
        snap = self.session.snapshot()
        snap["latest_inputs"] = self.latest_inputs.copy()
        return snap

    def restore(self, snap: dict) -> None:
        self.session.restore(snap)
        self.latest_inputs = snap["latest_inputs"].copy()
        self._blank_rows = {}

    # ---- events ------------------------------------------------------------------
    def _run(self, kind: int, inst: int, ts: int, values=(), traced: bool = True) -> tuple[int, int]:
        """One event through the kernel; `traced` when a Decision is read back from it."""
        check_timestamp(ts)
        ev = self._events
        ev.ts[0], ev.kind[0], ev.inst[0] = ts, kind, inst
        ev.vals[0] = (*values, *self._nans[len(values):])  # one write of the row (a fill is one event per call)
        before = self.session.n_orders
        if traced:
            self._trace[0, :] = np.nan
            self.session.feed(ev, self._equity, self._trace, 0, 1)
        else:
            self.session.feed(ev, None, None, 0, 1)
        return before, self.session.n_orders

    def _reasons(self, mask: float) -> tuple[str, ...]:
        return tuple(L.decode_reasons(mask, self._reason_names)) if mask else ()

    def _decision(self, row: int, inst: int, ts: int, price: float, orders: list | None) -> Decision | None:
        """The Decisions of trace row `row`, whose event made `orders` (None, or order rows
        as lists of floats: a list's items read faster than an array row's),
        chained on `then`: the event's instrument's, and those of the other instruments
        that made orders (a multi-leg rule's legs), in the order of their first order."""
        own = [o for o in orders or () if int(o[L.O_INST]) == inst]
        first = self._own_decision(row, inst, ts, price, own or None)
        if first is None or len(own) == len(orders or ()):
            return first
        groups: dict[int, list] = {}
        for o in orders:
            groups.setdefault(int(o[L.O_INST]), []).append(o)
        if inst not in groups:
            groups = {inst: [], **groups}
        chain = [first if x == inst else self._leg_decision(x, ts, rows) for x, rows in groups.items()]
        out = chain[-1]
        for d in reversed(chain[:-1]):
            out = _followed_by(d, out)
        return out

    def _leg_decision(self, inst: int, ts: int, rows: list) -> Decision:
        """The Decision of another instrument's orders on an event (one, or an exit and its
        re-entry), from their order rows."""
        out = None
        for o in reversed(rows):
            mask = int(o[L.O_REASONS])
            out = Decision(self._names[inst], ts, o[L.O_PRICE], o[L.O_DESIRED], o[L.O_TARGET],
                           float(self.session.pstate[inst, L.P_POS]), o[L.O_QTY], self._reasons(mask),
                           bool(o[L.O_EXIT]), bool(mask & self._trip_mask), out, _limit(o[L.O_LIMIT]))
        return out

    def _own_decision(self, row: int, inst: int, ts: int, price: float, orders: list | None) -> Decision | None:
        """The Decision of trace row `row`, whose instrument's decision made `orders` (None,
        or one or two order rows). When a protective exit met an opposite target the
        decision has two legs, the exit and the re-entry, and each Decision carries its
        own leg's order and reasons; a leg that made no order has order_qty 0 and the
        reasons the other leg's order lacks. (A single decision's order row has exactly
        the decision's reasons: one order row with others is one leg of two.)"""
        desired, position, target, order_qty, reasons = self._trace[row, :L.T_EQUITY].tolist()
        if desired != desired:
            return None  # the engine made no decision (e.g. a price it ignores)
        name, mask = self._names[inst], int(reasons)
        trips = bool(mask & self._trip_mask)
        if orders and (len(orders) == 2 or int(orders[0][L.O_REASONS]) != mask):
            legs = [(o[L.O_TARGET], o[L.O_QTY], int(o[L.O_REASONS]), bool(o[L.O_EXIT]), _limit(o[L.O_LIMIT]))
                    for o in orders]
            if len(legs) == 1:
                leg_target, leg_qty, leg_mask, leg_exit, _ = legs[0]
                if leg_exit:  # the re-entry made no order
                    legs.append((target, 0.0, mask & ~leg_mask, False, math.nan))
                else:  # the exit made none (blocked): the re-entry left from where the exit started
                    legs.insert(0, (leg_target - leg_qty, 0.0, mask & ~leg_mask, True, math.nan))
            (exit_target, exit_qty, exit_mask, exit_flag, exit_limit), \
                (entry_target, entry_qty, entry_mask, entry_flag, entry_limit) = legs
            then = Decision(name, ts, price, desired, entry_target, position, entry_qty, self._reasons(entry_mask),
                            entry_flag, bool(entry_mask & self._trip_mask), None, entry_limit)
            return Decision(name, ts, price, desired, exit_target, position, exit_qty, self._reasons(exit_mask),
                            exit_flag, trips, then, exit_limit)
        return Decision(name, ts, price, desired, target, position, order_qty, self._reasons(mask),
                        bool(orders and orders[0][L.O_EXIT]), trips, None,
                        _limit(float(orders[0][L.O_LIMIT])) if orders else math.nan)

    def _single(self, inst: int, ts: int, before: int, after: int) -> Decision | None:
        return self._decision(0, inst, ts, self.session.pstate[inst, L.P_LAST].item(),
                              self.session.orders[before:after].tolist() if after > before else None)

    def _blank_row(self, inst: int) -> list:
        """The values a market event of `inst` starts from: the latest inputs, and no
        intent (an intent acts once, when it arrives). Cached until an input changes."""
        row = self._blank_rows.get(inst)
        if row is None:
            row = self.latest_inputs[inst].tolist()
            if self.intent_column is not None:
                row[self.intent_column] = math.nan
            self._blank_rows[inst] = row
        return row

    def _market_values(self, inst: int, fields: dict) -> tuple[list, float]:
        """Validate one market event's fields into a row of event values and its price,
        or raise EngineError. `price` and `close` stand in for each other where the event
        does not carry one (a tick has no close); a value it carries is kept as it is."""
        price = fields.get("price", fields.get("close"))
        if not (price.__class__ is float and 0.0 < price < math.inf):  # the usual case first
            if price is None or isinstance(price, bool) or not isinstance(price, (int, float)) \
                    or not math.isfinite(price) or price <= 0:
                raise EngineError(f"price must be a positive number, not {price!r}")
        values = self._blank_row(inst).copy()
        slots = self._field_slots
        for name, value in fields.items():
            column = slots.get(name, -1)
            if column is None:
                continue  # a market field the kernel has no column for
            if column < 0:
                raise EngineError(f"unknown field `{name}`")
            values[column] = value
        for name, column in self._price_columns:
            if name not in fields:
                values[column] = price
        return values, float(price)

    def market(self, instrument: str, ts: int, fields: dict[str, float]) -> Decision | None:
        """A tick, bar or quote: updates features, runs the rules and the risk steps."""
        result = self.market_many([(instrument, ts, fields)])[0]
        if isinstance(result, EngineError):
            raise result
        return result

    def market_many(self, events: list[tuple], actionable_only: bool = False) -> list[Decision | EngineError | None]:
        """Market events in arrival order through one kernel call, as if fed one by one.
        Each event starts with (instrument, ts, fields); a protocol `Market` is one.
        A bad event is refused on its own (its EngineError takes its place in the
        result) and the others still run; None means no decision (a price it ignores),
        or with `actionable_only`, an event that made no order and whose own decision
        recorded no reason (an event whose only orders are other instruments' legs is
        returned, its own decision first, as without `actionable_only`)."""
        if len(events) > len(self._events):
            self._grow(max(len(events), 2 * len(self._events)))
        results: list = [None] * len(events)
        batch = self._market_batch(events) if len(events) >= VECTOR_MIN else None
        if batch is not None:
            positions, insts, stamps, prices = range(len(events)), *batch
        else:
            positions, insts, stamps, prices = self._market_rows(events, results)
        n = len(insts)
        if not n:
            return results
        ev = self._events
        if n == 1:  # the common live case: scalar writes are cheaper than slices
            ev.kind[0], ev.inst[0], ev.ts[0] = L.MARKET, insts[0], stamps[0]
        else:
            ev.kind[:n] = L.MARKET
            ev.inst[:n] = insts
            ev.ts[:n] = stamps
        self._trace[:n, :L.T_EQUITY] = np.nan
        before = self.session.n_orders
        self.session.feed(ev, self._equity, self._trace, 0, n)
        by_row: dict[int, list] = {}  # an event makes one order, or two (an exit and its re-entry)
        if self.session.n_orders > before:
            for order in self.session.orders[before: self.session.n_orders].tolist():
                by_row.setdefault(int(order[L.O_EVENT]), []).append(order)
        if not actionable_only:
            wanted = range(n)
        else:
            # a row's trace is its own instrument's decision only: a row whose orders are
            # all another instrument's (a multi-leg rule's legs, a leg flattened) is kept
            # by its order rows, so that every order sent reaches the caller
            if n < VECTOR_MIN:  # NaN (no decision) passes here and is dropped by _decision
                orders, reasons = self._trace[:n, L.T_ORDER].tolist(), self._trace[:n, L.T_REASONS].tolist()
                wanted = [row for row in range(n) if orders[row] or reasons[row]]
            else:
                trace = self._trace[:n]
                wanted = np.flatnonzero((trace[:, L.T_ORDER] != 0) | (trace[:, L.T_REASONS] != 0)).tolist()
            if by_row:
                wanted = sorted(set(wanted).union(by_row))
        for row in wanted:
            results[positions[row]] = self._decision(row, insts[row], stamps[row], prices[row], by_row.get(row))
        return results

    def _market_rows(self, events: list[tuple], results: list) -> tuple[list, list, list, list]:
        """Each event checked on its own into the event buffer's rows: the positions in
        `events`, instruments, times and prices of the valid ones, in order; an invalid
        event's EngineError goes to its place in `results`."""
        positions, insts, stamps, prices, values = [], [], [], [], []
        for k, event in enumerate(events):
            instrument, ts, fields = event[0], event[1], event[2]
            try:
                inst = self.instrument(instrument)
                check_timestamp(ts)
                row, price = self._market_values(inst, fields)
            except EngineError as exc:
                results[k] = exc
                continue
            values.append(row)
            positions.append(k)
            insts.append(inst)
            stamps.append(ts)
            prices.append(price)
        if len(values) == 1:
            self._events.vals[0] = values[0]
        elif values:
            self._events.vals[:len(values)] = values
        return positions, insts, stamps, prices

    def _market_batch(self, events: list[tuple]) -> tuple[list, list, list] | None:
        """The events' rows written column by column, when all of them are well-formed and
        carry the same fields with a float price (what the protocol makes of a feed's
        messages): their instruments, times and prices. None when any is not, and
        `_market_rows` then checks them one by one, with the reasons. The rows are
        those `_market_values` makes."""
        index, first = self.index, events[0][2]
        if first.__class__ is not dict:
            return None
        keys = first.keys()
        insts, stamps, columns = [], [], []
        for event in events:
            inst, ts, fields = index.get(event[0]), event[1], event[2]
            if inst is None or ts.__class__ is not int or not 0 <= ts < 2**63 or fields.__class__ is not dict \
                    or fields.keys() != keys:
                return None
            insts.append(inst)
            stamps.append(ts)
            columns.append(fields)
        plan = self._plans.get(tuple(first))
        if plan is None:
            plan = self._plans[tuple(first)] = self._plan(first)
        if plan is False:
            return None
        price_name, written, filled = plan
        prices = [fields[price_name] for fields in columns]
        if set(map(type, prices)) != {float}:
            return None
        checked = np.array(prices)
        if not ((checked > 0.0) & (checked < math.inf)).all():
            return None
        n = len(insts)
        vals = self._events.vals[:n]
        np.take(self.latest_inputs, insts, axis=0, out=vals)
        if self.intent_column is not None:
            vals[:, self.intent_column] = math.nan
        for name, column in written:
            vals[:, column] = checked if name == price_name else [fields[name] for fields in columns]
        for column in filled:
            vals[:, column] = checked
        return insts, stamps, prices

    def _plan(self, fields: dict):
        """How `_market_batch` writes events with these fields: (the field that is the
        price, [(field, column)] for the fields the policy reads, [the price columns
        the events do not carry]); False when one is not a market field (the per-event
        path refuses it) or there is no price."""
        price_name = "price" if "price" in fields else "close" if "close" in fields else None
        if price_name is None or any(self._field_slots.get(name, -1) == -1 for name in fields):
            return False
        written = [(name, self._field_slots[name]) for name in fields if self._field_slots[name] is not None]
        filled = [column for name, column in self._price_columns if name not in fields]
        return price_name, written, filled

    def set_input(self, instrument: str, name: str, value: float) -> None:
        """A model input such as a score: read by the next market event of the instrument."""
        inst = self.instrument(instrument)
        if name not in self.inputs or name == "intent":
            raise EngineError(f"`{name}` is not an input of `{self.policy.name}`"
                              + (" (send an intent instead)" if name == "intent" else ""))
        self.latest_inputs[inst, self.inputs[name]] = float(value)
        self._blank_rows.pop(inst, None)

    def intent(self, instrument: str, ts: int, target: float, limit_price: float = math.nan) -> Decision:
        """A model's proposed position (units); the risk steps decide what reaches the
        market. `limit_price` (money per unit): NaN for market orders, else the IOC limit
        price its orders carry (one that is infinite or at most 0 blocks them,
        `limit_invalid:blocked`). Raises EngineError for a target that is not a finite
        number, a limit price that is not a number, or a limit price for a policy whose
        kernel sends market orders only (no `limit`, `legs` or `intent` input)."""
        inst = self.instrument(instrument)
        if not math.isfinite(target):
            raise EngineError(f"target must be a finite number, not {target!r}")
        if isinstance(limit_price, bool) or not isinstance(limit_price, (int, float)):
            raise EngineError(f"limit price must be a number (NaN: a market order), not {limit_price!r}")
        if limit_price == limit_price and not self._limits:
            raise EngineError(f"`{self.policy.name}` sends market orders only: a limit price needs a rule with "
                              "`limit` or `legs`, or an `intent` input")
        return self._single(inst, ts, *self._run(L.INTENT, inst, ts, (float(target), float(limit_price))))

    def decide(self, instrument: str, ts: int) -> Decision:
        """Re-run the risk steps on the current desired target (after a halt, say)."""
        inst = self.instrument(instrument)
        return self._single(inst, ts, *self._run(L.DECIDE, inst, ts))

    def fill(self, instrument: str, ts: int, qty: float, price: float, fee: float = 0.0) -> None:
        self._run(L.FILL, self.instrument(instrument), ts, (qty, price, fee), traced=False)

    def reject(self, instrument: str, ts: int, qty: float) -> None:
        self._run(L.REJECT, self.instrument(instrument), ts, (qty,), traced=False)

    def book(self, events: list[tuple[int, str, int, tuple]]) -> list[tuple[float, float]]:
        """Fills and rejects through one kernel call, in order: what `fill` and `reject`
        do one call each, to the bit, for the cost of one (a call is about 1.5 us of
        argument passing; a venue read in a busy live run holds up to a hundred fills
        and more).

        Each event is `(kind, instrument, ts, values)`: kind layout.FILL with values
        (qty, price, fee), or layout.REJECT with (qty,); quantities in units (signed),
        price and fee in money, ts in ns. Returns the (position in units, equity in money)
        after each event. Raises EngineError for an unknown instrument, a ts that is not
        int64 ns, or an event of another kind or with another number of values, before
        any event is applied."""
        n = len(events)
        if not n:
            return []
        if n > len(self._events):
            self._grow(max(n, 2 * len(self._events)))
        insts = [self.instrument(name) for _, name, _, _ in events]
        for kind, _, ts, values in events:
            check_timestamp(ts)
            if (kind, len(values)) not in _BOOKED:
                raise EngineError(f"book takes fills (qty, price, fee) and rejects (qty), not kind {kind!r} with "
                                  f"{len(values)} values")
        # a fill's position is the kernel's own sum, the position before it plus its
        # quantity (other_event), in the same order: the same bits as reading it back
        held = dict.fromkeys(insts)
        pstate = self.session.pstate
        for inst in held:
            held[inst] = float(pstate[inst, L.P_POS])
        positions = []
        for (kind, _, _, values), inst in zip(events, insts):
            if kind == L.FILL:
                held[inst] += values[0]
            positions.append(held[inst])
        ev, nans = self._events, self._nans
        ev.kind[:n] = [event[0] for event in events]
        ev.inst[:n] = insts
        ev.ts[:n] = [event[2] for event in events]
        ev.vals[:n] = [(*values, *nans[len(values):]) for _, _, _, values in events]
        self.session.feed(ev, self._equity, None, 0, n)
        return list(zip(positions, self._equity[:n].tolist()))

    def halt(self, ts: int) -> list[Decision]:
        """Trip the kill switch and decide again on every instrument (liquidation orders)."""
        self._run(L.HALT, 0, ts, traced=False)
        return [d for d in (self.decide(name, ts) for name in self.index) if d is not None]

    def resume(self, ts: int) -> None:
        self._run(L.RESUME, 0, ts, traced=False)


def _limit(price: float) -> float:
    """An order row's limit price; a market order's is `math.nan` itself, so that two
    Decisions of market orders compare equal (NaN == NaN is false; the same object is not
    compared)."""
    return price if price == price else math.nan


def _followed_by(decision: Decision, then: Decision) -> Decision:
    """`decision` with `then` at the end of its chain."""
    tail = then if decision.then is None else _followed_by(decision.then, then)
    return replace(decision, then=tail)
