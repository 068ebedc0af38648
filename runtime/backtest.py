"""Backtests: load data, drive the engine core over it, and account for every number.

The kernel does the trading; this module only prepares columns, runs the session in
chunks (for a progress bar), and derives statistics a trader can check by hand:
round-trip trades that add up to the P&L, drawdown from the equity curve, daily Sharpe.

`run_through_order_core` runs the same events through the live order path instead (the
order core, an engine in live mode, and a venue that fills by the backtest's fill model),
to show which orders live order management makes of them.
"""
from __future__ import annotations

import csv
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy, Events
from policyc.dsl.diagnostics import did_you_mean

from .data import ISO_FORMS, DataError, Table, load_table, merge
from .engine import Engine
from .fills import Fill, FillBook, FillModel
from .live.protocol import Market, VenueReply
from .orders import MAX_NS, OrderCore

CHUNK = 1 << 20


@dataclass
class Trade:
    """A round trip on one instrument: from flat, back to flat (or reversed)."""

    instrument: str
    entry_event: int
    exit_event: int          # -1 while still open
    side: int                # +1 long, -1 short
    max_qty: float
    entry_price: float       # average of the opening fills
    pnl: float = 0.0         # realised, after fees
    fees: float = 0.0
    exit_qty: float = 0.0
    exit_notional: float = 0.0

    @property
    def exit_price(self) -> float:
        return self.exit_notional / self.exit_qty if self.exit_qty else math.nan


@dataclass
class BacktestResult:
    """A finished run. `acct` and `pstate` are the session's final account and
    per-instrument state (compiler/layout.py columns), which carry the run's statistics;
    `equity` is the equity after each event when it was recorded, else None."""

    policy: CompiledPolicy
    events: Events
    orders: np.ndarray
    equity: np.ndarray | None
    trace: np.ndarray | None
    reasons: dict[str, int]
    initial_equity: float
    elapsed_s: float
    acct: np.ndarray
    pstate: np.ndarray
    data_files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def fills(self) -> np.ndarray:
        """The order rows that filled (a fill event and a fill price)."""
        o = self.orders
        return o[(o[:, L.O_FILL_EVENT] >= 0) & ~np.isnan(o[:, L.O_FILL_PRICE])]

    @property
    def cancels(self) -> np.ndarray:
        """The IOC order rows cancelled unfilled: a fill event, no fill price
        (compiler/layout.py, O_LIMIT)."""
        o = self.orders
        return o[(o[:, L.O_FILL_EVENT] >= 0) & np.isnan(o[:, L.O_FILL_PRICE])]

    @cached_property
    def trades(self) -> list[Trade]:
        """Each round trip, itemised from the fills on first use (the summary's trade
        figures come from the kernel's counters and need no list)."""
        return round_trips(self)


_BOUND = re.compile(r"\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?)?)?)?")


def time_bound(text: str, end: bool = False) -> int:
    """A --from/--to bound as ns since the epoch, UTC. Both ends are inclusive: a year, a
    month or a date alone as --to means the whole of it (`--to 2010` is up to the end of
    2010-12-31). Raises ValueError for text that is not one: anything but ISO 8601 from a
    year to a time (NumPy alone would read `20100101` as the year 20100101)."""
    t = text.strip()
    moment = np.datetime64("NaT")
    shaped = _BOUND.fullmatch(t)
    if shaped:
        try:
            with warnings.catch_warnings():  # numpy warns on a UTC offset, then applies it
                warnings.simplefilter("ignore")
                moment = np.datetime64(t.replace(" ", "T").rstrip("Z"))
        except ValueError:
            pass
    if np.isnat(moment):
        if shaped and t:
            raise ValueError(f"not a real date: `{text}`")
        digits = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", t)
        fix = f"write it as {digits[1]}-{digits[2]}-{digits[3]}" if digits else f"use {ISO_FORMS}"
        raise ValueError(f"not a date: `{text}`; {fix}")
    ns = int(moment.astype("datetime64[ns]").astype(np.int64))
    if end and moment.dtype in (np.dtype("datetime64[Y]"), np.dtype("datetime64[M]"), np.dtype("datetime64[D]")):
        ns = int((moment + 1).astype("datetime64[ns]").astype(np.int64)) - 1
    return ns


def load_events(policy: CompiledPolicy, data: list[tuple[str | None, str]], skip_bad_rows: bool = False,
                start_ns: int | None = None, end_ns: int | None = None,
                date_format: str | None = None, bars: bool = False,
                zone: str | None = None) -> tuple[Events, list[Table]]:
    """Bind data files ((symbol or None, path) pairs; the symbol may be the policy's name of
    an instrument, `bn` for `instruments: {bn: "binance:BTCUSDT"}`) to the policy's
    instruments and merge them into one event stream; the other arguments are those of `load_table`, but that
    naive timestamps are read in `zone`, by default the policy's (its `timezone`, or its
    calendar's), UTC without either. With
    `bars`, the events also carry each row's open, high and low (`Events.bars`) when the
    files have them (a file without one of them leaves it NaN; none with `open`: no bars).
    Raises DataError for a file that cannot be used or that no instrument (or two) would take."""
    instruments = policy.instruments
    data = [(None if sym is None else policy.symbol(sym), path) for sym, path in data]  # a name means its symbol
    symbols = [sym for sym, _ in data if sym is not None]
    twice = next((s for k, s in enumerate(symbols) if s in symbols[:k]), None)
    if twice:
        raise DataError(f"--data gives `{twice}` twice; give one file per instrument")
    named = {sym: path for sym, path in data if sym is not None}
    plain = [path for sym, path in data if sym is None]
    unknown = [s for s in named if s not in instruments]
    if unknown:
        fix = did_you_mean(unknown[0], instruments) or f"instruments: {', '.join(instruments)}"
        raise DataError(f"--data names `{unknown[0]}`, which is not an instrument of `{policy.name}`; {fix}")
    if plain:
        if len(instruments) > 1 or len(plain) > 1 or named:
            raise DataError(f"`{policy.name}` trades {', '.join(instruments)}: give one --data SYMBOL=PATH each")
        named = {instruments[0]: plain[0]}
    missing = [s for s in instruments if s not in named]
    if missing:
        raise DataError(f"no --data for instrument `{missing[0]}`; give --data {missing[0]}=PATH")
    if zone is None and policy.clock is not None:
        zone = policy.clock.zone
    # with bars, the bar fields a file has are read besides the policy's columns, for the fills
    extra = [f for f in L.BAR_FIELDS if bars and f not in policy.columns]
    optional = (*policy.optional_columns, *extra)
    tables = [load_table(named[s], policy.columns, skip_bad_rows, start_ns, end_ns, date_format, zone,
                         optional=optional) for s in instruments]
    events = merge(tables, policy.columns, policy.optional_columns)
    if bars and any(L.BAR_FIELDS[L.BAR_OPEN] in t.columns for t in tables):
        nan = [np.full(len(t), np.nan) for t in tables]
        columns = [np.concatenate([t.columns.get(f, no) for t, no in zip(tables, nan)]) for f in L.BAR_FIELDS]
        stacked = np.column_stack(columns)
        if len(tables) > 1:  # in the order `merge` gives the events
            stacked = stacked[np.argsort(np.concatenate([t.ts for t in tables]), kind="stable")]
        events.bars = np.ascontiguousarray(stacked)
    return events, tables


def fill_mode(name: str | None, events: Events) -> int:
    """The layout fill mode of a `--fill` name (`next-open`, `next`, `same`, `latency`) for
    `events`; None is the default: `next-open` when the events have bars, else `next`.
    Raises DataError for `next-open` without bars."""
    if name is None:
        return L.FILL_NEXT_OPEN if events.bars is not None else L.FILL_NEXT
    if name == "next-open" and events.bars is None:
        raise DataError("--fill next-open needs bars: the data has no `open` column; use --fill next")
    return L.FILL_MODES[name]


def skipped_rows_warnings(tables: list[Table]) -> list[str]:
    """One line per file and kind of bad row that --skip-bad-rows skipped."""
    out = []
    for t in tables:
        for kind, count in t.skipped.items():
            lines = t.skipped_lines[kind]
            shown = ", ".join(map(str, lines[:10])) + (" ..." if len(lines) > 10 else "")
            out.append(f"warning: {t.path}: skipped {count} row(s): {kind} (lines {shown})")
    return out


class _Progress:
    """A bar on stderr, shown only on a terminal and only once a run takes over a second."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.t0 = total, label, time.perf_counter()
        self.enabled = sys.stderr.isatty()
        self.shown = False

    def update(self, done: int):
        if not self.enabled or time.perf_counter() - self.t0 < 1.0:
            return
        self.shown = True
        frac = done / max(self.total, 1)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}% {done:,}/{self.total:,}")
        sys.stderr.flush()

    def close(self):
        if self.shown:
            sys.stderr.write("\n")


def run_backtest(policy: CompiledPolicy, events: Events, mode: int = L.FILL_NEXT, account: dict | None = None,
                 trace: bool = False, progress: bool = True, record_equity: bool = True,
                 latency_ns: int = 0) -> BacktestResult:
    """Run `events` through a fresh session of `policy` in the fill `mode` (with
    layout.FILL_LATENCY, orders wait `latency_ns` ns). `record_equity` keeps the equity
    after each event (8 bytes an event; a report's charts need it, the summary does not)."""
    session = policy.session(mode, account, latency_ns)
    n = len(events)
    session.reserve_orders(n)
    equity = np.empty(n) if record_equity else None
    tr = np.full((n, L.TRACE_FIXED + len(policy.feature_names)), np.nan) if trace else None
    bar = _Progress(n, policy.name) if progress else None
    t0 = time.perf_counter()
    for start in range(0, max(n, 1), CHUNK):
        session.feed(events, equity, tr, start, min(n, start + CHUNK))
        if bar:
            bar.update(min(n, start + CHUNK))
    elapsed = time.perf_counter() - t0
    if bar:
        bar.close()
    settings = {**policy.checked.account, **(account or {})}
    # the session ends here: its order buffer becomes the result's, without a copy
    return BacktestResult(policy, events, session.orders[: session.n_orders], equity, tr,
                          session.reason_counts, settings["initial_equity"], elapsed, session.acct.copy(),
                          session.pstate.copy())


def run_through_order_core(policy: CompiledPolicy, events: Events, mode: int = L.FILL_NEXT,
                           account: dict | None = None, record: Callable[..., object] | None = None) -> BacktestResult:
    """The backtest of `events` through the live order path, for both fill modes: each
    event goes to an `OrderCore` over an `Engine` in layout.LIVE mode, as `policyc run`
    hands its messages over, and every order the core sends goes to a venue that fills it
    by the fill model of `mode` (`fills.FillBook`, with the policy's slippage and fees);
    the venue's acks, fills and cancels go back into the core. Returns what `run_backtest`
    returns (without a trace), its orders read from the core's decision log: the event
    each was decided and filled on, quantity, decision price, targets, reasons, exit flag,
    fill price and fee. `record(event, kind, ts, **fields)`, when given, gets every record
    of that log as the core writes it, with the index of the event being handled.

    Both clocks of the core read the time (ns) of the event being handled: the events
    arrive as fast as their own timestamps say, so the core dates an intent, a halt or a
    fill with that time, and a feed is never silent once a market event has come. The
    venue is shown each market event with a usable price before the core is, so under
    `next` the fills of the orders waiting for it come in first, as the kernel applies
    them before the event. Event kinds map to the core's calls: market -> `market`,
    intent -> `intent` (a target that is not a finite number -> `decide`: the kernel
    keeps the desired target then, and the wire refuses such an intent), decide ->
    `decide`, halt -> `halt`, resume -> `resume`; an intent's limit price (its second
    value column, when the events have one) goes with it, as an intent message's
    `limit_price` does (`Engine.intent` raises EngineError for one given to a policy that
    sends market orders only). Fills and rejects are refused (ValueError): the venue
    makes those.

    A rule's `limit`, a leg's and an intent's make IOC limit orders, as in the kernel:
    the venue fills one whole at the event it fills at when the quote (`ask` for a buy,
    `bid` for a sell, where the events carry them and they are prices: the fill event's,
    or under `same` the instrument's latest, none for an order decided on no market
    event; else the price) is at or through its limit, else answers a `cancel` of all of
    it, which the core releases. The order's row carries its limit (layout.O_LIMIT); a
    cancelled one has the event of the cancel as its fill event, a NaN fill price and no
    fee, as the kernel's.

    The orders are `run_backtest`'s, bit for bit, but where live order management differs
    from the kernel's loop by design:
    - the kill switch: from a decision that trips it, the core withdraws that decision's
      orders, cancels the orders still waiting for a fill (under `next`) and decides
      every instrument again at once, so each is liquidated at its last price, the trip's
      reason in the `halt` and `risk` records rather than on the order; the kernel
      liquidates each instrument at its next decision and lets the waiting orders fill.
      A halt event likewise decides every instrument at once (as a `decide` of each after
      it would in the kernel) and cancels the waiting orders;
    - `next`: a fill reaches the engine before the event it filled at, so the engine
      marks the account at the price before it, which can raise peak equity
      (`max_drawdown`, `drawdown`), and a position it opens starts its trailing stop's
      best price there;
    - `same`: the exit of an exit and its re-entry on one event fills after both are
      decided, so the re-entry's daily-loss and margin checks see the equity before the
      exit's fees and slippage;
    - a market event dated before its instrument's latest is refused (the venue still
      fills at its price), and an intent before the first market event is reduce-only.
    One kernel call per event, with Python around it: of the order of 100,000 events
    per second, for checking a policy's order path rather than for research. Raises
    ValueError for a `mode` other than FILL_NEXT and FILL_SAME (the events carry no bars
    and no latency here)."""
    if mode not in (L.FILL_NEXT, L.FILL_SAME):
        raise ValueError(f"the order path's backtest fills `next` or `same`, not mode {mode!r}")
    if np.any((events.kind == L.FILL) | (events.kind == L.REJECT)):
        raise ValueError("a backtest's events have no fills or rejects: the simulated venue makes them")
    settings = {**policy.checked.account, **(account or {})}
    engine = Engine(policy, L.LIVE, account)
    names, columns = policy.instruments, policy.columns
    book = FillBook(FillModel.of(settings, dict(zip(names, policy.checked.contract_table))), mode)
    reason_bit = {name: k for k, name in enumerate(policy.reason_names)}
    quote = [(side, columns.index(side)) for side in L.QUOTE_SIDES if side in columns]  # what IOC orders fill against
    now = 0                          # the time (ns) of the event being handled: both clocks of the core
    current = 0                      # its index in `events`
    outbox: list[dict] = []          # what the core sent and the venue has not answered yet
    rows: dict[str, list] = {}       # client_order_id -> its order row, in the order sent

    def log(kind: str, ts: int | None = None, **fields) -> None:
        if kind == "order":
            rows[fields["client_order_id"]] = [
                current, names.index(fields["instrument"]), fields["qty"], fields["price"],
                fields["approved_target"], fields["desired_target"],
                float(sum(1 << reason_bit[r] for r in fields["reasons"])), float(fields["exit"]),
                -1.0, math.nan, math.nan, fields.get("limit_price", math.nan)]
        elif kind == "fill":  # the venue fills each order whole, once
            row = rows[fields["client_order_id"]]
            row[L.O_FILL_EVENT], row[L.O_FILL_PRICE], row[L.O_FEE] = current, fields["price"], fields["fee"]
        elif kind == "cancel":  # an IOC order the venue cancelled: none of it filled
            row = rows[fields["client_order_id"]]
            row[L.O_FILL_EVENT], row[L.O_FILL_PRICE], row[L.O_FEE] = current, math.nan, 0.0
        if record is not None:
            record(current, kind, ts, **fields)

    core = OrderCore(engine, f"{policy.name}-backtest", lambda message, _: outbox.append(message), log,
                     max_clock_skew_s=0.0, max_feed_silence_s=MAX_NS / 1e9,
                     wall_ns=lambda: now, monotonic_ns=lambda: now)
    core.feed_connected()

    def filled(fills: list[Fill]) -> None:
        for f in fills:
            if f.qty:
                core.venue_reply(VenueReply("fill", f.client_order_id, qty=abs(f.qty), price=f.price, fee=f.fee,
                                            ts=f.ts))
            if f.unfilled:
                core.venue_reply(VenueReply("cancel", f.client_order_id, qty=abs(f.unfilled), ts=f.ts,
                                            reason="ioc_unfilled"))

    def answer(deciding: str | None) -> None:
        """The venue answers what the core sent, which may send more (a fill that beat its
        cancel). `deciding`: the instrument of the market event being handled, if it is one."""
        while outbox:
            msg = outbox.pop(0)
            oid = msg["client_order_id"]
            if msg["type"] == "cancel":
                if book.cancel(oid):
                    core.venue_reply(VenueReply("reject", oid, reason="cancelled"))
                continue
            core.venue_reply(VenueReply("ack", oid))
            qty = msg["qty"] if msg["side"] == "buy" else -msg["qty"]
            # a leg decided on another instrument's event waits for no event of its own: under `same` it fills
            # at once, else at its instrument's next market event, whatever that event's time
            event_ts = msg.get("event_ts") if msg["instrument"] == deciding else None
            fill = book.order(oid, msg["instrument"], qty, event_ts, limit_price=msg.get("limit_price"))
            if fill is not None:
                filled([fill])

    n = len(events)
    equity = np.empty(n)
    t0 = time.perf_counter()
    for e in range(n):
        current, now, kind = e, int(events.ts[e]), int(events.kind[e])
        name, row = names[int(events.inst[e])], events.vals[e].tolist()
        if kind == L.MARKET:
            if 0.0 < row[0] < math.inf:  # a price the kernel takes (vals[:, 0] is `price`)
                # a side that is not a price is left out: an IOC order fills against the price then, as in the kernel
                sides = {side: row[j] for side, j in quote if 0.0 < row[j] < math.inf}
                filled(book.market(name, now, row[0], fields=sides))
            core.market([Market(name, now, dict(zip(columns, row)))])
        elif kind == L.INTENT:
            if math.isfinite(row[0]):
                core.intent(name, row[0], limit_price=row[1] if len(row) > 1 else math.nan)
            else:
                core.decide(name)
        elif kind == L.DECIDE:
            core.decide(name)
        elif kind == L.HALT:
            core.halt("halt event")
        elif kind == L.RESUME:
            core.resume()
        if kind == L.MARKET:
            answer(name)
        else:  # decided on no market event: an IOC order filled at once (`same`) has no quote, only the price
            quotes, book.last_fields = book.last_fields, {}
            answer(None)
            book.last_fields = quotes
        equity[e] = engine.equity
    elapsed = time.perf_counter() - t0
    orders = np.array(list(rows.values()), dtype=np.float64).reshape(-1, L.ORDER_WIDTH)
    return BacktestResult(policy, events, orders, equity, None, engine.session.reason_counts,
                          settings["initial_equity"], elapsed, engine.session.acct.copy(),
                          engine.session.pstate.copy())


def round_trips(result: BacktestResult) -> list[Trade]:
    """Trades from flat to flat; a reversal closes one trade and opens the next. Closed
    trades' P&L plus the open trade's realised and unrealised P&L is the equity change."""
    names = result.policy.instruments
    multiplier = [m for m, _ in result.policy.checked.contract_table]
    trades: list[Trade] = []
    open_: dict[int, Trade] = {}
    position: dict[int, float] = {}
    for o in result.fills:
        i, qty, price, fee = int(o[L.O_INST]), o[L.O_QTY], o[L.O_FILL_PRICE], o[L.O_FEE]
        e = int(o[L.O_FILL_EVENT])
        pos = position.get(i, 0.0)
        if pos != 0 and pos * qty < 0:
            t = open_[i]
            closing = qty if abs(qty) <= abs(pos) else -pos
            share = fee * abs(closing) / abs(qty)
            t.pnl += -closing * ((price - t.entry_price) * multiplier[i]) - share
            t.fees += share
            t.exit_qty += abs(closing)
            t.exit_notional += abs(closing) * price
            pos += closing
            qty -= closing
            fee -= share
            if pos == 0:
                t.exit_event = e
                trades.append(open_.pop(i))
        if qty != 0:
            if pos == 0:
                open_[i] = Trade(names[i], e, -1, 1 if qty > 0 else -1, abs(qty), price, -fee, fee)
            else:
                t = open_[i]
                t.entry_price = (t.entry_price * abs(pos) + price * abs(qty)) / abs(pos + qty)
                t.max_qty = max(t.max_qty, abs(pos + qty))
                t.pnl -= fee
                t.fees += fee
            pos += qty
        position[i] = pos
    trades.extend(open_.values())
    return trades


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns")) + "Z"


def max_drawdown(result: BacktestResult) -> float:
    """The largest fall of the equity curve (the initial equity, then the equity after
    each event) from its running peak, as a fraction of that peak; NaN once equity has
    not been a finite number."""
    return float(result.acct[L.A_MAX_DRAWDOWN])


def exposure(result: BacktestResult) -> float:
    """Fraction of events after which some position was open (|position| above
    layout.HELD_EPSILON)."""
    n = len(result.events)
    return float(result.acct[L.A_EXPOSED]) / n if n else 0.0


def return_moments(result: BacktestResult) -> tuple[int, float, float, float]:
    """(count, mean, sample stdev, root mean square of the negative ones) of the daily
    returns: returns of the equity at the last event of each day (the UTC day, or the
    trading day of the policy's clock), the first from the
    initial equity, the last day's at the final equity. The kernel keeps them for every
    day it closed (Welford's update); the last day's is added here."""
    a = result.acct
    n, mean, m2, down2 = float(a[L.A_RET_N]), float(a[L.A_RET_MEAN]), float(a[L.A_RET_M2]), float(a[L.A_RET_DOWN2])
    if len(result.events):
        r = float(a[L.A_EQUITY]) / float(a[L.A_DAY_CLOSE]) - 1.0
        n += 1.0
        d = r - mean
        mean += d / n
        m2 += d * (r - mean)
        down2 += r * r if r < 0.0 else 0.0
    std = math.sqrt(m2 / (n - 1.0)) if n > 1 else math.nan
    return int(n), mean, std, math.sqrt(down2 / n) if n else math.nan


def summary(result: BacktestResult) -> dict:
    """Every figure of the report, JSON-ready (None where a figure is undefined)."""
    r = result
    a = r.acct
    final = float(a[L.A_EQUITY]) if len(r.events) else r.initial_equity
    n_rets, mean, std, downside = return_moments(r)
    sharpe = sortino = None
    if n_rets > 1 and std > 0:
        sharpe = float(mean / std * math.sqrt(252))
        sortino = float(mean / downside * math.sqrt(252)) if downside > 0 else None
    closed, wins = int(a[L.A_TRADES]), int(a[L.A_WINS])
    win_pnl, loss_pnl = float(a[L.A_WIN_PNL]), float(a[L.A_LOSS_PNL])
    fills = r.fills
    checked = r.policy
    return {
        "policy": checked.name,
        "version": checked.checked.parsed.version,
        "policy_hash": checked.policy_hash,
        "build_hash": checked.build_hash,
        "params": checked.params,
        "data": r.data_files,
        "skipped_rows": r.skipped,
        "start": _iso(r.events.ts[0]) if len(r.events) else None,
        "end": _iso(r.events.ts[-1]) if len(r.events) else None,
        "events": len(r.events),
        "orders": len(r.orders),
        "fills": len(fills),
        "cancels": len(r.cancels),
        "trades": closed,
        "open_trades": int(np.count_nonzero(r.pstate[:, L.P_POS])),
        "initial_equity": r.initial_equity,
        "final_equity": final,
        "total_return": final / r.initial_equity - 1.0,
        "max_drawdown": max_drawdown(r),
        "sharpe": sharpe,
        "sortino": sortino,
        "win_rate": wins / closed if closed else None,
        "profit_factor": win_pnl / -loss_pnl if closed > wins and loss_pnl < 0 else None,
        "exposure": exposure(r),
        "fees": float(np.sum(fills[:, L.O_FEE])) if len(fills) else 0.0,
        "reasons": r.reasons,
        "elapsed_s": r.elapsed_s,
        "events_per_s": len(r.events) / r.elapsed_s if r.elapsed_s > 0 else None,
    }


def write_orders(result: BacktestResult, path: str | Path) -> None:
    names = result.policy.instruments
    reasons = result.policy.reason_names
    ts = result.events.ts
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["decision_ts", "fill_ts", "instrument", "qty", "fill_price", "fee", "reasons", "limit_price",
                    "status"])
        for o in result.orders:
            ended = o[L.O_FILL_EVENT] >= 0
            filled = ended and o[L.O_FILL_PRICE] == o[L.O_FILL_PRICE]
            w.writerow([
                _iso(ts[int(o[L.O_EVENT])]),
                _iso(ts[int(o[L.O_FILL_EVENT])]) if ended else "",
                names[int(o[L.O_INST])],
                f"{o[L.O_QTY]:.17g}",
                repr(float(o[L.O_FILL_PRICE])) if filled else "",
                repr(float(o[L.O_FEE])) if filled else "",
                ";".join(L.decode_reasons(o[L.O_REASONS], reasons)),
                repr(float(o[L.O_LIMIT])) if o[L.O_LIMIT] == o[L.O_LIMIT] else "",
                "filled" if filled else "cancelled" if ended else "open",
            ])


def write_trace(result: BacktestResult, path: str | Path) -> None:
    if result.trace is None:
        raise ValueError("the backtest ran without a trace")
    names = result.policy.instruments
    reasons = result.policy.reason_names
    features = result.policy.feature_names
    tr, ev = result.trace, result.events
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "instrument", *features, "desired_target", "position", "order_qty", "equity", "cash",
                    "reasons"])
        for e in range(len(ev)):
            row = tr[e]
            if row[L.T_DESIRED] != row[L.T_DESIRED]:
                continue  # an event the engine skipped (no decision was made)
            w.writerow([
                _iso(ev.ts[e]), names[int(ev.inst[e])],
                *(f"{v:.10g}" for v in row[L.TRACE_FIXED:]),
                f"{row[L.T_DESIRED]:g}", f"{row[L.T_POSITION]:g}", f"{row[L.T_ORDER]:g}",
                repr(float(row[L.T_EQUITY])), repr(float(row[L.T_CASH])),
                ";".join(L.decode_reasons(row[L.T_REASONS], reasons)),
            ])


_PERCENT_FIGURES = {"total_return", "max_drawdown", "win_rate", "exposure"}
_MONEY_FIGURES = {"initial_equity", "final_equity", "fees"}


def figure_text(key: str, v) -> str:
    """A summary figure rounded for people: fractions as percentages to 0.01%, money to
    the cent with thousands separators, other ratios to 3 decimals; `n/a` when undefined."""
    if v is None:
        return "n/a"
    if key in _PERCENT_FIGURES:
        return f"{v * 100:.2f}%"
    if key in _MONEY_FIGURES:
        return f"{v:,.2f}"
    if key == "events_per_s":
        return f"{v:,.0f}"
    if key == "elapsed_s":
        return f"{v * 1e3:.2f} ms"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def format_summary(s: dict) -> str:
    """The summary as an aligned two-column table."""
    rows = []
    for key in ("policy", "policy_hash", "build_hash", "start", "end", "events", "orders", "fills", "cancels", "trades",
                "initial_equity", "final_equity", "total_return", "max_drawdown", "sharpe", "sortino", "win_rate",
                "profit_factor", "exposure", "fees", "elapsed_s", "events_per_s"):
        rows.append((key, figure_text(key, s[key])))
    if s["skipped_rows"]:
        rows.append(("skipped_rows", ", ".join(f"{k}: {v}" for k, v in s["skipped_rows"].items())))
    for code, count in sorted(s["reasons"].items()):
        rows.append((f"reason {code}", str(count)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
