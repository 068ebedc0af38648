"""The reference interpreter: the language's semantics in plain Python, one event at a time.

It is written from the spec, not from the kernel, and deliberately shares no code with
the templates: the differential tests run both on random policies and random events and
require identical decisions. Slow by design; clarity is its only job.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from . import layout as L
from .ir import Program, resolve_int
from .semantics import NAN, NS_PER_DAY, PURE_FUNCTIONS, TIME_FUNCTIONS, arith, compare, on_tick
from .sessions import K_DAY, K_OFFSET, clock_of, session_value


# ---- stateful functions, following TA-Lib's arithmetic step for step -----------------
class Moving:
    """A moving statistic over the last n valid (non-NaN) inputs; NaN input -> NaN out."""

    def __init__(self, n: int):
        self.n = n
        self.count = 0
        self.buf = [0.0] * n
        self.pos = 0

    def push(self, x: float) -> float | None:
        """Store x in the ring; return the value leaving the window, if any."""
        old = self.buf[self.pos] if self.count >= self.n else None
        self.buf[self.pos] = x
        self.pos = (self.pos + 1) % self.n
        self.count += 1
        return old


class Sma(Moving):
    total = 0.0

    def update(self, x):
        if x != x:
            return NAN
        old = self.push(x)
        if old is not None:
            self.total -= old
        self.total += x
        return self.total / self.n if self.count >= self.n else NAN


class Sum(Sma):
    def update(self, x):
        mean = super().update(x)
        return self.total if mean == mean else NAN


class Ema:
    def __init__(self, n: int, wilder: bool = False):
        self.n, self.wilder = n, wilder
        self.count, self.total, self.value = 0, 0.0, NAN
        self.k = 2.0 / (n + 1)

    def update(self, x):
        if x != x:
            return NAN
        if self.count < self.n:
            self.count += 1
            self.total += x
            if self.count == self.n:
                self.value = self.total / self.n
            return self.value
        if self.wilder:
            self.value = (self.value * (self.n - 1) + x) / self.n
        else:
            self.value = ((x - self.value) * self.k) + self.value
        return self.value


class Wma(Moving):
    psum = psub = trailing = 0.0

    def update(self, x):
        if x != x:
            return NAN
        if self.n == 1:
            return x
        if self.count < self.n - 1:
            self.psub += x
            self.psum += x * (self.count + 1)
            self.push(x)
            return NAN
        self.psub += x
        self.psub -= self.trailing
        self.psum += x * self.n
        self.push(x)
        self.trailing = self.buf[self.pos]
        out = self.psum / (self.n * (self.n + 1) // 2)
        self.psum -= self.psub
        return out


class Variance(Moving):
    """Sums of deviations from an anchor K (a recent value): no cancellation between
    large squares. The sums are rebuilt from the window every n events, and at once when
    a value leaving the window dwarfs what remains (an outlier passing through)."""

    k = s1 = s2 = 0.0
    since = 0

    def update(self, x):
        if x != x:
            return NAN
        if self.count == 0:
            self.k = x
        old = self.push(x)
        gone = 0.0
        if old is not None:
            gone = old - self.k
            self.s1 -= gone
            self.s2 -= gone * gone
        d = x - self.k
        self.s1 += d
        self.s2 += d * d
        self.since += 1
        if self.count >= self.n and (self.since >= self.n or gone * gone > 1e3 * self.s2):
            self.k, self.s1, self.s2, self.since = x, 0.0, 0.0, 0
            for v in self.buf:
                d = v - self.k
                self.s1 += d
                self.s2 += d * d
        if self.count < self.n:
            return NAN
        m1 = self.s1 / self.n
        return max(self.s2 / self.n - m1 * m1, 0.0)


class Stdev(Variance):
    def update(self, x):
        var = super().update(x)
        return NAN if var != var else math.sqrt(var)


class Extreme(Moving):
    """highest / lowest: the newest extreme wins ties (it stays longest); when the
    extreme leaves the window, the window is scanned again, oldest to newest."""

    def __init__(self, n, highest: bool):
        super().__init__(n)
        self.better = (lambda a, b: a >= b) if highest else (lambda a, b: a <= b)
        self.best, self.age = 0.0, 0

    def update(self, x):
        if x != x:
            return NAN
        self.push(x)
        self.age += 1
        if self.count == 1 or self.better(x, self.best):
            self.best, self.age = x, 0
        elif self.age >= self.n:
            best, at = self.buf[self.pos], 0
            for j in range(1, self.n):
                v = self.buf[(self.pos + j) % self.n]
                if self.better(v, best):
                    best, at = v, j
            self.best, self.age = best, self.n - 1 - at
        return self.best if self.count >= self.n else NAN


class Rsi:
    def __init__(self, n):
        self.n, self.count, self.prev, self.gain, self.loss = n, 0, NAN, 0.0, 0.0

    def update(self, x):
        if x != x:
            return NAN
        if self.count == 0:
            self.prev, self.count = x, 1
            return NAN
        diff, self.prev = x - self.prev, x
        if self.count <= self.n:
            if diff < 0:
                self.loss -= diff
            else:
                self.gain += diff
            self.count += 1
            if self.count <= self.n:
                return NAN
            self.loss /= self.n
            self.gain /= self.n
        else:
            self.loss *= self.n - 1
            self.gain *= self.n - 1
            if diff < 0:
                self.loss -= diff
            else:
                self.gain += diff
            self.loss /= self.n
            self.gain /= self.n
        total = self.gain + self.loss
        return 100.0 * (self.gain / total) if not -1e-8 < total < 1e-8 else 0.0


def make_moving(name: str, n: int):
    return {
        "sma": lambda: Sma(n), "sum": lambda: Sum(n), "ema": lambda: Ema(n), "rma": lambda: Ema(n, wilder=True),
        "wma": lambda: Wma(n), "variance": lambda: Variance(n), "stdev": lambda: Stdev(n),
        "highest": lambda: Extreme(n, True), "lowest": lambda: Extreme(n, False), "rsi": lambda: Rsi(n),
    }[name]()


class BarsSince:
    def __init__(self):
        self.value = NAN

    def update(self, c: bool):
        if c:
            self.value = 0.0
        elif self.value == self.value:
            self.value += 1.0
        return self.value


class History:
    def __init__(self, size: int):
        self.values: list = []
        self.size = size

    def push(self, v):
        self.values.append(v)
        if len(self.values) > self.size:
            self.values.pop(0)

    def get(self, k: int, is_bool: bool):
        if k > len(self.values):
            return False if is_bool else NAN
        return self.values[-k]


# ---- the engine ------------------------------------------------------------------------
@dataclass
class Order:
    event: int
    instrument: int
    qty: float
    price: float
    target: float
    desired: float
    reasons: int
    exit: bool
    ts: int = 0              # the decision's time, ns
    fill_event: int = -1
    fill_price: float = NAN  # NaN once filled: an IOC order cancelled unfilled (fee 0)
    fee: float = NAN
    limit: float = NAN       # an IOC order's limit price; NaN: a market order


@dataclass
class Account:
    cash: float
    peak: float
    equity: float
    halted: bool = False
    day: int | None = None
    day_open: float = 0.0
    day_loss: bool = False
    orders_today: int = 0
    tokens: float = NAN
    token_ts: int | None = None
    fees: float = 0.0


@dataclass
class Book:
    """One instrument's position, risk state and feature state."""

    position: float = 0.0
    open: float = 0.0
    entry: float = NAN
    best: float = NAN
    last: float = NAN
    prev: float = NAN
    last_ts: int | None = None
    desired: float = 0.0
    limit: float = NAN            # the limit price the desired target's orders carry (when `limited`)
    limited: bool = False         # the desired target came with a limit: its orders are IOC limit orders
    flatten: bool = False         # max_leg_imbalance flattens this leg (an exit) until it is flat
    held: bool = False            # its multi-leg rule held a target of it on this event
    quote: tuple = (NAN, NAN)     # (bid, ask) of the latest market event (NaN where it had none)
    lock: float = 0.0
    lock_key: str | None = None   # the protective exit that holds the lock
    volatility: float = NAN
    pending: list = field(default_factory=list)   # orders waiting for the next event (fill next)
    custom: list = field(default_factory=list)
    states: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    latest: list | None = None    # every op's value at the latest market event, for other instruments
    multiplier: float = 1.0       # money per point of price per unit held
    tick: float = NAN             # the price step of simulated fills (NaN: none)

    def value(self, x: float) -> float:
        """The money of one unit at the price (or price difference) x."""
        return x * self.multiplier


class Interpreter:
    """Runs a program over events exactly as the spec says (sections 3 to 7)."""

    def __init__(self, program: Program, params: dict, risk: dict, account: dict, n_instruments: int,
                 mode: int = L.FILL_NEXT, latency_ns: int = 0, contracts: list[tuple[float, float]] | None = None):
        """`contracts`: per instrument (multiplier, tick size), as CheckedPolicy.contract_table
        gives them; None: a multiplier of 1 and no tick size for each."""
        self.p = program
        self.latency_ns = latency_ns  # FILL_LATENCY: an order fills at the first event this long after its decision
        self.param_values = [params[name] for name in program.params]
        self.risk, self.account_cfg, self.mode = risk, account, mode
        self.acct = Account(cash=account["initial_equity"], peak=account["initial_equity"],
                            equity=account["initial_equity"], day_open=account["initial_equity"])
        self.books = [self._new_book() for _ in range(n_instruments)]
        for b, (multiplier, tick) in zip(self.books, contracts or []):
            b.multiplier, b.tick = multiplier, tick
        self.clock = clock_of(program.clock)
        self.clock_row = None  # the current event's row of Clock.columns, with a clock
        self.orders: list[Order] = []
        self.leg_set = program.leg_set()
        self.leg_partners = program.leg_partners()
        self.busy: set[int] = set()  # legs another leg of whose rules was busy as this event began
        # a desired target carries a limit price from a rule's `limit`, or from an intent
        self.uses_limits = program.uses_limits() or program.intent_column is not None
        self.quote_columns = tuple(program.columns.index(f) if f in program.columns else None for f in L.QUOTE_SIDES)
        # on a market event, each instrument -> its latest (bid, ask): the event's own for its
        # instrument; what an order filled at once (--fill same) fills against
        self.quotes: dict[int, tuple[float, float]] = {}
        self.trace: list[dict] = []
        self.equity_curve: list[float] = []

    def _new_book(self) -> Book:
        book = Book(custom=[False] * len(self.p.custom))
        for i, op in enumerate(self.p.ops):
            if op.kind == "moving":
                book.states[i] = make_moving(op.attr[0], resolve_int(op.attr[1], self.param_values))
            elif op.kind == "bars_since":
                book.states[i] = BarsSince()
        for source, specs in self.p.history_sources().items():
            book.history[source] = History(max(max(resolve_int(s, self.param_values) for s in specs), 1))
        return book

    # -- expressions --
    def evaluate(self, b: Book, i: int, ts: int, row) -> list:
        values: list = [None] * len(self.p.ops)
        for j, op in enumerate(self.p.ops):
            k = op.kind
            a = [values[x] for x in op.args] if k != "lag" else None
            if k == "const":
                v = op.attr[0]
            elif k == "param":
                v = self.param_values[op.attr[0]]
                v = bool(v) if op.type == "bool" else float(v)
            elif k == "field":
                v = float(row[op.attr[0]])
            elif k == "state":
                v = self.state_value(op.attr[0], b)
            elif k == "ts":  # the time functions read wall-clock time in the policy's zone
                v = ts if self.clock_row is None else ts + int(self.clock_row[K_OFFSET])
            elif k == "session":
                v = session_value(op.attr[0], ts, self.clock_row)
            elif k == "neg":
                v = -a[0]
            elif k == "not":
                v = not a[0]
            elif k == "and":
                v = a[0] and a[1]
            elif k == "or":
                v = a[0] or a[1]
            elif k == "arith":
                v = arith(op.attr[0], a[0], a[1])
            elif k == "cmp":
                v = compare(op.attr[0], a[0], a[1])
            elif k == "select":
                v = a[1] if a[0] else a[2]
            elif k == "call":
                fn = op.attr[0]
                v = TIME_FUNCTIONS[fn](a[0]) if fn in TIME_FUNCTIONS else PURE_FUNCTIONS[fn](*a)
            elif k == "moving":
                v = b.states[j].update(a[0])
            elif k == "bars_since":
                v = b.states[j].update(a[0])
            elif k == "lag":
                kk = resolve_int(op.attr[0], self.param_values)
                v = values[op.args[0]] if kk == 0 else b.history[op.args[0]].get(kk, op.type == "bool")
            elif k in ("ref", "xlag"):  # another instrument's value: from its book, as its latest event left it
                x = self.books[op.attr[0]]
                kk = 0 if k == "ref" else resolve_int(op.attr[1], self.param_values)
                if x is b:
                    v = values[op.args[0]] if kk == 0 else b.history[op.args[0]].get(kk, op.type == "bool")
                elif x.latest is None:
                    v = False if op.type == "bool" else NAN
                else:  # its history holds its latest event's value too: one further back
                    v = x.latest[op.args[0]] if kk == 0 else x.history[op.args[0]].get(kk + 1, op.type == "bool")
            elif k == "xstate":
                v = self.state_value(op.attr[0], self.books[op.attr[1]])
            elif k == "age":
                x = self.books[op.attr[0]]
                v = NAN if x.last_ts is None else (float(ts) - x.last_ts) / 1e9
            else:
                raise AssertionError(k)
            values[j] = v
        for source, hist in b.history.items():
            hist.push(values[source])
        b.latest = values
        return values

    def state_value(self, name: str, b: Book) -> float:
        a = self.acct
        if name == "position":
            return b.position
        if name == "entry_price":
            return b.entry
        if name == "unrealized_pnl":
            return b.position * b.value(b.last - b.entry) if b.position != 0 else 0.0
        if name == "equity":
            return a.equity
        if name == "cash":
            return a.cash
        if name == "drawdown":
            return (a.peak - a.equity) / a.peak if a.peak > 0 else 0.0
        if name == "margin_usage":
            return self.gross() * self.account_cfg["margin_rate"] / a.equity if a.equity > 0 else NAN
        if name == "orders_today":
            return float(a.orders_today)
        raise AssertionError(name)

    # -- accounting --
    def gross(self) -> float:
        """Gross exposure: the sum over instruments of |(position + open) x last price x multiplier|."""
        return total([abs((b.position + b.open) * b.value(b.last)) for b in self.books if b.position + b.open != 0])

    def mark(self):
        """Equity: cash plus the sum over instruments of position x last price x multiplier."""
        a = self.acct
        a.equity = total([a.cash] + [b.position * b.value(b.last) for b in self.books if b.position != 0])
        if a.equity > a.peak:
            a.peak = a.equity

    def fill(self, b: Book, qty: float, price: float, fee: float, market: float):
        """A fill at `price`; `market` is the market price it happened at: a new position's
        best price (trailing stop) starts there, not at a slipped price."""
        a = self.acct
        pos = b.position
        new = pos + qty
        a.cash -= qty * b.value(price) + fee
        a.fees += fee
        if pos == 0 or pos * qty > 0:
            b.entry = price if pos == 0 else (b.entry * abs(pos) + price * abs(qty)) / abs(new)
            if pos == 0:
                b.best = market
        elif abs(qty) <= abs(pos):
            if new == 0:
                b.entry, b.best = NAN, NAN
        else:
            b.entry, b.best = price, market
        b.position = new

    def simulated_fill(self, order: Order, b: Book, e: int, price: float, quote: tuple[float, float] = (NAN, NAN)):
        """Fill `order` on event e at `price`. An IOC order fills at its side of `quote`
        (bid, ask: the ask for a buy; `price` where that is not a positive number) moved by
        slippage and capped at its limit, when that side is at or through the limit; else
        it is cancelled: its open quantity released, fill price NaN, fee 0."""
        slip = self.account_cfg["slippage_bps"] / 1e4
        buy = order.qty > 0
        if order.limit == order.limit:
            side = quote[1] if buy else quote[0]
            at = side if 0 < side < math.inf else price
            if not (at <= order.limit if buy else at >= order.limit):
                order.fill_event, order.fill_price, order.fee = e, NAN, 0.0
                b.open -= order.qty
                return
            fill_price = on_tick(at * (1.0 + slip) if buy else at * (1.0 - slip), b.tick, buy)
            fill_price = min(fill_price, order.limit) if buy else max(fill_price, order.limit)
        else:
            fill_price = price * (1.0 + slip) if buy else price * (1.0 - slip)
            fill_price = on_tick(fill_price, b.tick, buy)
        fee = abs(order.qty) * b.value(fill_price) * self.account_cfg["fees_bps"] / 1e4
        order.fill_event, order.fill_price, order.fee = e, fill_price, fee
        b.open -= order.qty
        self.fill(b, order.qty, fill_price, fee, price)

    def roll_day(self, ts: int):
        """A later day resets the day counters; an earlier one (time going backwards)
        does not. The day is the UTC day, or the trading day of the policy's clock."""
        a = self.acct
        day = ts // NS_PER_DAY if self.clock_row is None else int(self.clock_row[K_DAY])
        if a.day is None or day > a.day:
            a.day, a.orders_today, a.day_loss, a.day_open = day, 0, False, a.equity

    # -- the event loop --
    def run(self, ts, kind, inst, vals, bars=None):
        """`bars`: each event's open, high and low (layout.BAR_*), or None without bars."""
        for e in range(len(ts)):
            self.step(e, int(ts[e]), int(kind[e]), int(inst[e]), vals[e], None if bars is None else bars[e])
        return self

    def step(self, e: int, ts: int, kind: int, i: int, row, bar=None):
        b = self.books[i]
        self.now = ts
        if self.clock is not None:
            self.clock_row = self.clock.columns([ts])[0]
        self.quotes = {}
        if kind == L.MARKET:
            price = float(row[0])
            if price > 0 and price != math.inf:
                self.market(e, ts, i, b, row, price, bar)
        elif kind == L.INTENT:
            self.roll_day(ts)
            if math.isfinite(row[0]):
                limit = float(row[1]) if self.uses_limits and len(row) > 1 else NAN
                self.take_intent(i, b, float(row[0]), limit, limit == limit)
            self.decide_event(e, ts, i, [i], None)
        elif kind == L.DECIDE:
            self.roll_day(ts)
            self.decide_event(e, ts, i, [i], None)
        elif kind == L.FILL:
            b.open -= float(row[0])
            price = float(row[1])
            self.fill(b, float(row[0]), price, float(row[2]), b.last if b.last == b.last else price)
            self.mark()
        elif kind == L.REJECT:
            b.open -= float(row[0])
        elif kind == L.HALT:
            self.acct.halted = True
        elif kind == L.RESUME:
            if self.acct.halted:  # the halt used up every desired target
                for book in self.books:
                    book.desired, book.limit, book.limited = 0.0, NAN, False
            self.acct.halted = False
            self.acct.peak = self.acct.equity
        self.equity_curve.append(self.acct.equity)

    def market(self, e: int, ts: int, i: int, b: Book, row, price: float, bar=None):
        # the bar: the event's price alone without one; its high and low reach at least its
        # open and its price, and a value that is no price is left out
        low = high = open_ = price
        if bar is not None:
            if 0 < bar[L.BAR_OPEN] < math.inf:
                open_ = float(bar[L.BAR_OPEN])
            high, low = max(open_, price), min(open_, price)
            if high < bar[L.BAR_HIGH] < math.inf:
                high = float(bar[L.BAR_HIGH])
            if 0 < bar[L.BAR_LOW] < low:
                low = float(bar[L.BAR_LOW])
        # waiting orders: at the open with next-open and latency, else at the price; with
        # latency only those due (decided at least the latency before this event)
        at = open_ if self.mode in (L.FILL_NEXT_OPEN, L.FILL_LATENCY) else price
        b.quote = tuple(float(row[c]) if c is not None else NAN for c in self.quote_columns)
        self.quotes = {x: book.quote for x, book in enumerate(self.books)}
        # an IOC order filled at a bar's open meets the open: the bar's quote is its end's
        opened = bar is not None and 0 < bar[L.BAR_OPEN] < math.inf
        at_quote = (NAN, NAN) if opened and self.mode in (L.FILL_NEXT_OPEN, L.FILL_LATENCY) else b.quote
        pending, b.pending = b.pending, []
        for order in pending:
            if self.mode == L.FILL_LATENCY and order.ts + self.latency_ns > ts:
                b.pending.append(order)
            else:
                self.simulated_fill(order, b, e, at, at_quote)
        in_bar = bar is not None and self.mode == L.FILL_NEXT_OPEN
        stopped = self.exits_in_bar(e, i, b, open_, high, low) if in_bar else 0
        b.prev, b.last, b.last_ts = b.last, price, float(ts)
        self.mark()
        self.roll_day(ts)
        self.acct.orders_today += stopped
        if b.position > 0:
            b.best = max(b.best, high if in_bar else price)
        elif b.position < 0:
            b.best = min(b.best, low if in_bar else price)
        values = self.evaluate(b, i, ts, row)
        if self.p.volatility is not None:
            b.volatility = values[self.p.volatility]
        b.custom = [values[w] for _, _, w in self.p.custom]
        deciding = [i]
        for when, target, limit, legs in self.p.rules:
            if values[when]:
                if not legs:
                    self.set_target(b, values[target], NAN if limit is None else values[limit], limit is not None)
                else:  # the event's instrument decides first when it is not a leg, then the legs as written
                    # the legs move together: while one is busy, no target that moves a leg
                    books = [self.books[x] for x, _, _ in legs]
                    settled = all(self.settled(lb) for lb in books)
                    for lb, (_, leg_target, leg_limit) in zip(books, legs):
                        t = values[leg_target]
                        if not settled and math.isfinite(t) and t != lb.position + lb.open:
                            lb.held = True
                        else:
                            self.set_target(lb, t, NAN if leg_limit is None else values[leg_limit],
                                            leg_limit is not None)
                    deciding = ([] if any(x == i for x, _, _ in legs) else [i]) + [x for x, _, _ in legs]
                break
        if self.p.intent_column is not None and math.isfinite(row[self.p.intent_column]):
            self.take_intent(i, b, float(row[self.p.intent_column]), NAN, False)
        self.decide_event(e, ts, i, deciding, [values[f] for f in self.p.features.values()])

    def take_intent(self, i: int, b: Book, target: float, limit: float, limited: bool):
        """An intent's target for instrument i: held when i is a leg one of whose partners
        (itself included) has an order open or a position still to flatten, as a rule's is."""
        if target != b.position + b.open and any(not self.settled(self.books[y]) for y in self.leg_partners.get(i, ())):
            b.held = True
        else:
            b.desired, b.limit, b.limited = target, limit, limited

    @staticmethod
    def settled(b: Book) -> bool:
        """Whether a leg can take a new target: no order open, no position left to flatten."""
        return b.open == 0 and (not b.flatten or b.position == 0)

    @staticmethod
    def set_target(b: Book, target: float, limit: float, limited: bool):
        """A rule's target (and limit price) for book b; a target that is not a finite
        number leaves both as they were."""
        if math.isfinite(target):
            b.desired, b.limit, b.limited = target, limit, limited

    def leg_imbalance(self) -> float:
        """|sum over the leg set of (position + open) x last price x multiplier|, summed in
        instrument order; a leg with nothing held or open adds nothing."""
        net = 0.0
        for x in self.leg_set:
            book = self.books[x]
            q = book.position + book.open
            if q != 0:
                net += q * book.value(book.last)
        return abs(net)

    def decide_event(self, e: int, ts: int, i: int, deciding: list[int], features):
        """The decisions of one event, in order (the trace row is the event's instrument's).
        When one of them is a leg's and the legs' imbalance is beyond `max_leg_imbalance`
        (or not a number), every leg is flagged to flatten, its desired target becomes 0,
        and every leg decides."""
        # as the event begins: a leg another leg of whose rules is busy sends no entry on it
        self.busy = {x for x, partners in self.leg_partners.items()
                     if any(not self.settled(self.books[y]) for y in partners if y != x)}
        if "max_leg_imbalance" in self.risk and any(x in self.leg_set for x in deciding):
            if not self.leg_imbalance() <= self.risk["max_leg_imbalance"]:
                for x in self.leg_set:
                    book = self.books[x]
                    book.flatten, book.desired, book.limit, book.limited = True, 0.0, NAN, False
                deciding = deciding + [x for x in self.leg_set if x not in deciding]
        for x in deciding:
            self.decide(e, ts, x, self.books[x], features if x == i else None, x == i)
        self.busy = set()  # the snapshot is this event's

    def decide(self, e: int, ts: int, i: int, b: Book, features, traced: bool = True):
        """Spec section 6: steps 1 and 2 here, then steps 3 to 10 and the order in `leg`;
        twice when a protective exit meets an opposite target (the exit, then the re-entry).
        `traced`: the decision is the event's instrument's, recorded in the trace."""
        r, a = self.risk, self.acct
        bit = lambda code: 1 << L.R[code]
        price, desired, pos = b.last, b.desired, b.position
        q = b.position + b.open
        seen = (e, desired, features, pos, q, a.equity, a.cash)  # recorded as the decision saw them
        reasons, target, exit_ = 0, desired, False
        if b.held:  # its multi-leg rule held the legs' targets on this event
            b.held = False
            reasons |= bit("order_open:blocked")
        if price != price:
            if desired != q:
                reasons |= bit("no_price:blocked")
            self.record(seen, 0.0, reasons, traced)
            return
        # 1. kill switch; equity, peak and drawdown must be numbers for it to be off
        if not a.halted:
            if not (math.isfinite(a.equity) and math.isfinite(a.peak)):
                a.halted = True
                reasons |= bit("equity_invalid:halt")
            elif "max_drawdown" in r and not (a.peak > 0 and (a.peak - a.equity) / a.peak < r["max_drawdown"]):
                a.halted = True
                reasons |= bit("max_drawdown:halt")
        if a.halted:
            if target != 0:
                reasons |= bit("kill_switch:halt")
            target, exit_ = 0.0, True
        # 2. protective exits
        if b.lock != 0 and (desired == 0 or desired * b.lock < 0):
            b.lock, b.lock_key = 0.0, None
        triggered = False
        if b.lock == 0 and pos != 0:
            long_ = pos > 0
            hit = next((key for key in L.EXITS if key in r and _exit_hit(key, r[key], price, b, long_)), None)
            if hit is not None:
                b.lock, b.lock_key, triggered = (1.0 if long_ else -1.0), hit, True
                reasons |= 1 << L.EXITS[hit].exit
        if b.lock != 0 and target * b.lock > 0:
            target, exit_ = 0.0, True
            if not triggered:
                bits = L.EXITS[b.lock_key]
                reasons |= 1 << (bits.exit if pos * b.lock > 0 else bits.blocked)
        if triggered and target == 0:  # the strategy went flat as the stop fired: still an exit
            exit_ = True
        # 2. a leg holds while an order of it is open: an IOC may still be cancelled, so
        # no order is netted against it, the kill switch's liquidation neither (it follows
        # once the order ends). A leg flattened by max_leg_imbalance is then closed as an
        # exit, until flat.
        if i in self.leg_set:
            if b.open != 0:
                if b.flatten:
                    exit_ = True
                    reasons |= bit("max_leg_imbalance:exit")
                elif target != q:
                    reasons |= bit("order_open:blocked")
                target = q
            elif b.flatten:
                if pos != 0:
                    target, exit_ = 0.0, True
                    reasons |= bit("max_leg_imbalance:exit")
                else:  # flat: the code only when the breach's 0 is still the target (not a new entry's)
                    b.flatten = False
                    if desired == 0:
                        reasons |= bit("max_leg_imbalance:exit")
            if i in self.busy and not exit_ and target != q:
                # the legs move together: no entry, nor a stale target's, while another leg is busy
                reasons |= bit("order_open:blocked")
                target = q
        if triggered and target * b.lock < 0 and q * b.lock > 0:
            # the exit leaves first as an order of its own: steps 8 and 9 only (it is exempt
            # from 3 to 5 and 10); the re-entry is then a new order from where the exit
            # leaves q, with every check
            exit_order, exit_reasons = self.order_limits(b, -q, reasons)
            if exit_order != 0 and not math.isfinite(abs(exit_order) * b.value(price)):
                exit_order, exit_reasons = 0.0, exit_reasons | bit("notional_invalid:blocked")
            self.send(e, i, b, desired, q, exit_order, exit_reasons, True)
            order, reasons = self.leg(e, ts, i, b, desired, q + exit_order, target, False, 0)
            self.record(seen, exit_order + order, exit_reasons | reasons, traced)
            return
        order, reasons = self.leg(e, ts, i, b, desired, q, target, exit_, reasons)
        self.record(seen, order, reasons, traced)

    def leg(self, e: int, ts: int, i: int, b: Book, desired: float, q: float, target: float, exit_: bool,
            reasons: int) -> tuple[float, int]:
        """Steps 3 to 10 for one order from q toward target, and the order itself (sent
        when not 0): (order, reasons). `desired` is the decision's, recorded on the order."""
        r, a = self.risk, self.acct
        bit = lambda code: 1 << L.R[code]
        price = b.last
        # 3 and 4: reduce-only conditions; a loss or volatility that is not a number counts as a breach
        if "max_daily_loss" in r and not a.day_loss and \
                not (a.day_open > 0 and (a.day_open - a.equity) / a.day_open < r["max_daily_loss"]):
            a.day_loss = True
        reduce = 0
        if a.day_loss:
            reduce |= bit("max_daily_loss:blocked")
        if "max_volatility" in r:
            if b.volatility > r["max_volatility"]:
                reduce |= bit("max_volatility:blocked")
            elif math.isnan(b.volatility):
                reduce |= bit("volatility_unknown:blocked")
        if "stale_after" in r and b.last_ts is not None and \
                not (0.0 <= float(ts) - b.last_ts <= r["stale_after"] * 1e9):
            reduce |= bit("stale_after:blocked")
        if r.get("long_only") and target < 0:
            target = 0.0
            reasons |= bit("long_only:clipped")
        # 5. custom rules
        block = 0
        for j, (name, action, _) in enumerate(self.p.custom):
            if not b.custom[j]:
                continue
            mask = 1 << (L.CUSTOM_BASE + j)
            if action == "block":
                block |= mask
            elif action == "reduce_only":
                reduce |= mask
            elif action == "liquidate":
                if target != 0:
                    reasons |= mask
                target, exit_ = 0.0, True
                b.desired = 0.0   # spent: no re-opening once the rule stops firing
            else:
                if not a.halted:
                    a.halted = True
                    reasons |= mask
                target, exit_ = 0.0, True
        if reduce and not exit_ and _increases(target, q):
            target = q if target * q > 0 else 0.0
            reasons |= reduce
        # 6. position limits
        if "max_position" in r and abs(target) > r["max_position"]:
            target = math.copysign(r["max_position"], target)
            reasons |= bit("max_position:clipped")
        if "max_position_notional" in r and abs(target) * b.value(price) > r["max_position_notional"]:
            target = math.copysign(r["max_position_notional"] / b.value(price), target)
            reasons |= bit("max_position_notional:clipped")
        # 7. portfolio limits, on exposure increases only
        if ("max_gross_exposure" in r or "max_margin_usage" in r) and _increases(target, q):
            other = self.gross() - abs(q * b.value(price))
            keep = abs(q) if target * q > 0 else 0.0
            if not other < math.inf:   # the exposure overflowed, or is NaN: no increase
                target = q if target * q > 0 else 0.0
                reasons |= bit("exposure_invalid:blocked")
            else:
                if "max_gross_exposure" in r:
                    room = max((r["max_gross_exposure"] - other) / b.value(price), keep)
                    if abs(target) > room:
                        target = math.copysign(room, target)
                        reasons |= bit("max_gross_exposure:clipped")
                if "max_margin_usage" in r:
                    room = max((r["max_margin_usage"] * a.equity / self.account_cfg["margin_rate"] - other)
                               / b.value(price), keep)
                    if abs(target) > room:
                        target = math.copysign(room, target)
                        reasons |= bit("max_margin_usage:clipped")
        # 8 and 9. the order and its limits
        order, reasons = self.order_limits(b, target - q, reasons, target)
        if order != 0 and b.limited and not exit_:   # an IOC limit order: its limit must be a price
            if not 0 < b.limit < math.inf:
                order = 0.0
                reasons |= bit("limit_invalid:blocked")
            elif "price_collar" in r and abs(b.limit - price) > r["price_collar"] * price:
                order = 0.0
                reasons |= bit("price_collar:blocked")
        if block and order != 0 and not exit_:
            order = 0.0
            reasons |= block
        if order != 0 and not math.isfinite(abs(order) * b.value(price)):  # NaN, inf, or a notional past float64
            order = 0.0
            reasons |= bit("notional_invalid:blocked")
        # 10. rate limits
        if order != 0 and not exit_:
            if "max_orders_per_day" in r and a.orders_today >= r["max_orders_per_day"]:
                order = 0.0
                reasons |= bit("max_orders_per_day:blocked")
            elif "max_orders_per_second" in r:
                rate, now = r["max_orders_per_second"], float(ts)
                if a.token_ts is None:
                    a.tokens = rate
                elif now > a.token_ts:   # tokens come from time going forward only
                    a.tokens = min(rate, a.tokens + (now - a.token_ts) / 1e9 * rate)
                a.token_ts = now if a.token_ts is None else max(a.token_ts, now)
                if a.tokens < 1.0:
                    order = 0.0
                    reasons |= bit("max_orders_per_second:blocked")
                else:
                    a.tokens -= 1.0
        self.send(e, i, b, desired, q, order, reasons, exit_)
        return order, reasons

    def exits_in_bar(self, e: int, i: int, b: Book, open_: float, high: float, low: float) -> int:
        """Protective exits inside a bar (next-open with bars): the position held after the
        open's fills exits at the open when it opened through a level, else at the first
        level the bar reaches, the stop before the target when it reaches both. The exit
        fills at once and locks as step 2 does. Returns the number of orders it sent.

        A lock does not stop the check: under a lock of the position's side its exit did
        not go out (the collar blocked it), and a position on the other side is the
        re-entry after an exit; both keep their stops."""
        r, pos = self.risk, b.position
        if pos == 0:
            return 0
        long_ = pos > 0
        side = 1.0 if long_ else -1.0
        adverse = lambda x, level: x <= level if long_ else x >= level      # at or past a stop
        favourable = lambda x, level: x >= level if long_ else x <= level   # at or past the target
        # the stop nearest the price is the one a falling (rising) price reaches first;
        # the stop loss wins a tie, as it is checked first
        stops = []
        if "stop_loss" in r:
            stops.append(("stop_loss", b.entry * (1.0 - side * r["stop_loss"])))
        if "trailing_stop" in r:
            b.best = max(b.best, open_) if long_ else min(b.best, open_)
            stops.append(("trailing_stop", b.best * (1.0 - side * r["trailing_stop"])))
        stop = None
        for key, level in stops:
            if stop is None or (level - stop[1]) * side > 0:
                stop = (key, level)
        goal = ("take_profit", b.entry * (1.0 + side * r["take_profit"])) if "take_profit" in r else None
        if stop is not None and adverse(open_, stop[1]):
            key, fill = stop[0], open_
        elif goal is not None and favourable(open_, goal[1]):
            key, fill = goal[0], open_
        elif stop is not None and adverse(low if long_ else high, stop[1]):
            key, fill = stop
        elif goal is not None and favourable(high if long_ else low, goal[1]):
            key, fill = goal
        else:
            return 0
        b.lock, b.lock_key = side, key
        order, reasons = self.order_limits(b, -pos, 1 << L.EXITS[key].exit, price=fill, prev=b.last)
        if order != 0 and not math.isfinite(abs(order) * b.value(fill)):
            order, reasons = 0.0, reasons | (1 << L.R["notional_invalid:blocked"])
        if order == 0:
            return 0
        o = Order(e, i, order, fill, pos + b.open + order, b.desired, reasons, True)
        self.orders.append(o)
        b.open += order
        self.simulated_fill(o, b, e, fill)
        return 1

    def order_limits(self, b: Book, order: float, reasons: int, target: float = 0.0, price: float | None = None,
                     prev: float | None = None) -> tuple[float, int]:
        """Steps 8 and 9 on an order (units) toward `target`: lot rounding, min_order_qty
        (never for a target of 0: it closes everything), max_order_qty and
        max_order_notional, the collar: (order, reasons)."""
        r = self.risk
        price = b.last if price is None else price
        prev = b.prev if prev is None else prev
        bit = lambda code: 1 << L.R[code]
        lot = r.get("lot_size")
        if lot and order != 0:
            rounded = _toward_zero(order / lot) * lot
            if rounded != order:
                order = rounded
                reasons |= bit("lot_size:clipped")
        if "min_order_qty" in r and order != 0 and abs(order) < r["min_order_qty"] and target != 0:
            order = 0.0
            reasons |= bit("min_order_qty:blocked")
        clipped = False
        if "max_order_qty" in r and abs(order) > r["max_order_qty"]:
            order = math.copysign(r["max_order_qty"], order)
            reasons |= bit("max_order_qty:clipped")
            clipped = True
        if "max_order_notional" in r and abs(order) * b.value(price) > r["max_order_notional"]:
            order = math.copysign(r["max_order_notional"] / b.value(price), order)
            reasons |= bit("max_order_notional:clipped")
            clipped = True
        if clipped and lot:
            order = _toward_zero(order / lot) * lot
        if "price_collar" in r and order != 0 and prev == prev and abs(price - prev) > r["price_collar"] * prev:
            order = 0.0
            reasons |= bit("price_collar:blocked")
        return order, reasons

    def send(self, e: int, i: int, b: Book, desired: float, q: float, order: float, reasons: int, exit_: bool):
        """The order from q, unless it is 0: recorded, counted for the day and as open
        quantity, and filled at once (--fill same) or at the next market event (--fill next)."""
        if order == 0:
            return
        o = Order(e, i, order, b.last, q + order, desired, reasons, exit_, self.now,
                  limit=b.limit if b.limited and not exit_ else NAN)
        self.orders.append(o)
        self.acct.orders_today += 1
        b.open += order
        if self.mode == L.FILL_SAME:
            self.simulated_fill(o, b, e, b.last, self.quotes.get(i, (NAN, NAN)))
            self.mark()
        elif self.mode in (L.FILL_NEXT, L.FILL_NEXT_OPEN, L.FILL_LATENCY):
            b.pending.append(o)

    def record(self, seen: tuple, order: float, reasons: int, traced: bool = True):
        """One trace row: `seen` is (event, desired, features, position, q, equity) as the
        decision began; order and reasons are those of all its orders. A decision of
        another instrument than the event's (a leg) has no row."""
        if not traced:
            return
        e, desired, features, pos, q, equity, cash = seen
        self.trace.append({"event": e, "desired": desired, "position": pos, "target": q + order,
                           "order": order, "reasons": reasons, "equity": equity, "cash": cash,
                           "features": features})


def total(terms: list[float]) -> float:
    """The sum of an account's terms (each already a float), as the spec defines it: the
    exact sum of the finite terms rounded once (to ±inf past the largest float), plus the
    IEEE sum of the others when there are any (NaN for a NaN or for both infinities)."""
    finite = [x for x in terms if math.isfinite(x)]
    try:
        exact = math.fsum(finite)
    except OverflowError:  # a partial sum overflowed on the way: add exactly, round once
        whole = sum(map(Fraction, finite), Fraction(0))
        try:
            exact = float(whole)
        except OverflowError:
            exact = math.inf if whole > 0 else -math.inf
    others = [x for x in terms if not math.isfinite(x)]
    return exact + sum(others) if others else exact


def _toward_zero(x: float) -> float:
    """x rounded toward zero, as a float with x's sign (math.trunc raises on inf)."""
    return math.copysign(float(math.trunc(x)), x) if math.isfinite(x) else x


def _increases(target: float, q: float) -> bool:
    """Whether moving from q to target opens exposure (grows it, or crosses zero)."""
    return abs(target) > abs(q) or (target * q < 0)


def _exit_hit(key: str, limit: float, price: float, b: Book, long_: bool) -> bool:
    """Whether the protective exit `key` triggers at `price` (spec section 6, step 2): the
    stop loss and the trailing stop on an adverse move of `limit` (a fraction) from the
    entry price, or from the best price since entry; the take profit on a favourable one."""
    if key == "stop_loss":
        return price <= b.entry * (1 - limit) if long_ else price >= b.entry * (1 + limit)
    if key == "take_profit":
        return price >= b.entry * (1 + limit) if long_ else price <= b.entry * (1 - limit)
    if key == "trailing_stop":
        return price <= b.best * (1 - limit) if long_ else price >= b.best * (1 + limit)
    raise NotImplementedError(f"the interpreter has no rule for the protective exit `{key}`")
