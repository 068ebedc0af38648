"""`policyc audit report`: what a decision log shows a risk officer.

Sans-I/O: `build_report(records, limits)` takes the log's records (dicts, in `seq`
order, as `runtime.live.audit` reads them) and the policy's bound risk limits, and
returns an `AuditReport`; `render_text` and `render_html` turn it into a page. Three
parts:

- per day (the policy's trading day of each record's `ts`: the UTC date, or with
  `calendar:` the session's date and with `timezone:` the local date, as the day
  counters of `max_orders_per_day` and `max_daily_loss` count it): orders, fills,
  rejects, limit hits by reason code, and every kill-switch trip and resume with its
  time and who did it;
- limits: the largest position, gross exposure, order size, order notional and orders in
  one day that the log shows, next to the policy's limit for each;
- control coverage: which of the pre-trade controls of RTS 6 (Commission Delegated
  Regulation (EU) 2017/589) Articles 12 and 15 and of SEC Rule 15c3-5(c)(1) the policy's
  risk keys provide, and which are missing.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from policyc.compiler.sessions import K_DAY, NS_PER_DAY, Clock, ClockError, clock_of
from policyc.dsl.diagnostics import PolicyError
from policyc.dsl.document import parse_policy_text

#: A figure above its limit by more than this share is a breach; below it, rounding.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Control:
    """One regulatory control: met when every requirement has at least one of its keys.

    `requirements` are (what, keys) pairs; `built_in` says what the runtime provides
    whatever the policy says (an empty string when nothing)."""

    rule: str
    provision: str
    asks: str
    requirements: tuple[tuple[str, tuple[str, ...]], ...]
    built_in: str = ""


#: RTS 6 Art. 15(1)(a)-(d) and Art. 12; SEC 15c3-5(c)(1)(i) and (ii).
CONTROLS = (
    Control("RTS 6", "Art. 15(1)(a)", "price collars: block orders outside set price parameters",
            (("price collar", ("price_collar",)),)),
    Control("RTS 6", "Art. 15(1)(b)", "maximum order value", (("order value limit", ("max_order_notional",)),)),
    Control("RTS 6", "Art. 15(1)(c)", "maximum order volume", (("order size limit", ("max_order_qty",)),)),
    Control("RTS 6", "Art. 15(1)(d)", "maximum messages limits",
            (("message rate limit", ("max_orders_per_second", "max_orders_per_day")),)),
    Control("RTS 6", "Art. 12", "kill functionality: cancel unexecuted orders at once",
            (), built_in="operator `halt` on the control port cancels open orders and liquidates"),
    Control("SEC 15c3-5", "(c)(1)(i)", "credit and capital thresholds, in the aggregate",
            (("aggregate exposure threshold", ("max_gross_exposure", "max_margin_usage")),
             ("capital loss threshold", ("max_drawdown", "max_daily_loss")))),
    Control("SEC 15c3-5", "(c)(1)(ii)", "erroneous orders: price or size parameters, over a short period, duplicates",
            (("price parameter", ("price_collar",)), ("size parameter", ("max_order_qty", "max_order_notional")),
             ("short-period / duplicate parameter", ("max_orders_per_second",)))),
)


@dataclass
class Coverage:
    control: Control
    met_by: list[str]       # the policy's keys that provide it
    missing: list[str]      # the requirements no key of the policy provides

    @property
    def status(self) -> str:
        if not self.missing:
            return "met"
        return "partial" if self.met_by else "missing"


@dataclass
class Day:
    date: str                                          # YYYY-MM-DD, the policy's trading day
    orders: int = 0
    exits: int = 0                                     # orders that were protective exits or liquidations
    fills: int = 0
    rejects: int = 0
    hits: dict[str, int] = field(default_factory=dict)  # reason code -> decisions that recorded it
    trips: list[dict] = field(default_factory=list)    # {"ts", "by", "reason"}
    resumes: list[dict] = field(default_factory=list)  # {"ts", "by"}


@dataclass
class LimitFigure:
    run: int                 # the `seq` of its run's session record (0: records before any)
    figure: str
    peak: float              # the largest value the log shows (NaN when it shows none)
    key: str                 # the risk key that limits it
    limit: float | None      # the policy's value, None when it sets none

    @property
    def breached(self) -> bool:
        return self.limit is not None and self.peak == self.peak and self.peak > self.limit * (1 + TOLERANCE)


@dataclass
class AuditReport:
    runs: list[dict]          # the session records
    days: list[Day]
    day_basis: str            # what a day is: "UTC", "XNYS sessions", "Europe/Berlin days" (runs apart: each, joined)
    limits: list[LimitFigure]
    coverage: list[Coverage]


def _date(ts) -> str:
    return datetime.fromtimestamp(int(ts) / 1e9, timezone.utc).strftime("%Y-%m-%d") if ts else "unknown"


def _clock(session: dict) -> Clock | None:
    """The calendar and zone of a run's policy, from the source its session record keeps;
    None (UTC days) when it names neither or the record keeps no readable source."""
    try:
        parsed = parse_policy_text(str(session.get("policy_source") or ""))
    except PolicyError:
        return None
    spec = (parsed.calendar and parsed.calendar.name, parsed.timezone and parsed.timezone.name)
    return clock_of(spec) if spec != (None, None) else None


def _multipliers(session: dict) -> dict[str, float]:
    """Symbol -> the multiplier of its contract, from the policy source and params the
    session record keeps; {} (every multiplier 1) when the source does not check."""
    from policyc.compiler.check import check

    try:
        checked = check(parse_policy_text(str(session.get("policy_source") or "")), session.get("params") or None)
    except PolicyError:
        return {}
    return {name: m for name, (m, _) in zip(checked.instruments, checked.contract_table) if m != 1.0}


def _basis(clock: Clock | None) -> str:
    if clock is None:
        return "UTC"
    return f"{clock.calendar} sessions" if clock.calendar else f"{clock.timezone} days"


def _trading_days(records: list[dict]) -> tuple[list[str], str]:
    """The trading day (YYYY-MM-DD, or "unknown" without a time) of each record, by the
    clock of the run it belongs to, computed a run at a time; and the days' basis."""
    days, bases = ["unknown"] * len(records), []
    clock, at, stamps = None, [], []

    def finish():
        if stamps:
            t = np.asarray(stamps, dtype=np.int64)
            try:
                day = t // NS_PER_DAY if clock is None else clock.columns(t)[:, K_DAY]
            except ClockError:  # times the calendar has no session for: the run could not have traded them
                day = t // NS_PER_DAY
            for k, d in zip(at, day.astype("datetime64[D]").astype(str)):
                days[k] = str(d)
        at.clear()
        stamps.clear()

    for k, r in enumerate(records):
        if r.get("kind") == "session":
            finish()
            clock = _clock(r)
            if _basis(clock) not in bases:
                bases.append(_basis(clock))
        ts = r.get("ts")
        if type(ts) is int and ts:
            at.append(k)
            stamps.append(ts)
    finish()
    return days, ", ".join(bases) or "UTC"


def _by(record: dict) -> str:
    """Who tripped or resumed the kill switch: the control's role when the log names it,
    the policy for a decision's reason codes, the runtime for a flatten on exit or a venue
    break, otherwise an operator."""
    if record.get("role"):
        return str(record["role"])
    reason = str(record.get("reason", ""))
    if record["kind"] == "halt" and ":halt" in reason:
        return "policy"
    if reason == "flatten on exit" or reason.startswith("venue_break:"):
        return "runtime"
    return "operator"


def coverage(limits: dict[str, float]) -> list[Coverage]:
    out = []
    for control in CONTROLS:
        met, missing = [], []
        for what, keys in control.requirements:
            present = [k for k in keys if k in limits]
            met += [k for k in present if k not in met]
            if not present:
                missing.append(f"{what} ({' or '.join(keys)})")
        out.append(Coverage(control, met, missing))
    return out


@dataclass
class _Peaks:
    """The largest figures of one run, as its records go by."""

    limits: dict
    multipliers: dict = field(default_factory=dict)  # instrument -> its multiplier, when not 1
    position: dict = field(default_factory=dict)   # instrument -> position after its latest fill
    price: dict = field(default_factory=dict)      # instrument -> latest logged price
    pos: float = math.nan
    gross: float = math.nan
    qty: float = math.nan
    notional: float = math.nan
    entries: dict = field(default_factory=dict)    # UTC date -> orders that were not exits

    def figures(self, run: int) -> list[LimitFigure]:
        most = float(max(self.entries.values(), default=0))
        lim = self.limits.get
        return [
            LimitFigure(run, "largest position (units, absolute)", self.pos, "max_position", lim("max_position")),
            LimitFigure(run, "largest gross exposure (money, at the latest logged prices)", self.gross,
                        "max_gross_exposure", lim("max_gross_exposure")),
            LimitFigure(run, "largest order (units)", self.qty, "max_order_qty", lim("max_order_qty")),
            LimitFigure(run, "largest order notional, exits aside (money)", self.notional, "max_order_notional",
                        lim("max_order_notional")),
            LimitFigure(run, "most orders in one day, exits aside", most, "max_orders_per_day",
                        lim("max_orders_per_day")),
        ]


def _top(a: float, b: float) -> float:
    return b if a != a or b > a else a


def build_report(records: list[dict], limits: dict[str, float]) -> AuditReport:
    """The report of `records` (every record of the log, in order). Each run's figures are
    judged by its own limits, the `risk` field of its `session` record, or `limits` (key ->
    value, as `policyc explain` shows them; money in the account's currency, quantities
    in units) for a run whose record has none. Coverage is of the latest run's limits.
    The exits and liquidations the rules never block are left out of the order notional
    and the orders per day, as the checks leave them out."""
    days: dict[str, Day] = {}
    runs, figures = [], []
    peaks = _Peaks(limits)
    trading_day, basis = _trading_days(records)

    order_day: dict[str, str] = {}  # client_order_id -> the trading day of its order

    def day(k: int) -> Day:
        d = trading_day[k]
        return days.setdefault(d, Day(d))

    def day_of_order(k: int) -> Day:
        """A fill's or reject's day: its order's (the venue stamps it with its own clock,
        which in a replay of old data is not the data's day)."""
        d = order_day.get(records[k].get("client_order_id"), trading_day[k])
        return days.setdefault(d, Day(d))

    for k, r in enumerate(records):
        kind = r.get("kind")
        if kind == "session":
            if runs:
                figures += peaks.figures(runs[-1].get("seq", len(runs)))
            runs.append(r)
            peaks = _Peaks(r.get("risk") or limits, _multipliers(r))   # each run starts flat as far as its log says
            continue
        if kind in ("order", "risk"):
            hits = day(k).hits
            for code in r.get("reasons") or ():
                hits[code] = hits.get(code, 0) + 1
        if kind == "order":
            d = day(k)
            order_day[r.get("client_order_id")] = d.date
            d.orders += 1
            d.exits += bool(r.get("exit"))
            qty, p = abs(float(r.get("qty") or 0.0)), r.get("price")
            peaks.qty = _top(peaks.qty, qty)
            if not r.get("exit"):
                peaks.entries[d.date] = peaks.entries.get(d.date, 0) + 1
            if p is not None and math.isfinite(p):
                peaks.price[r["instrument"]] = float(p)
                if not r.get("exit"):
                    peaks.notional = _top(peaks.notional, qty * (float(p) * peaks.multipliers.get(r["instrument"], 1.0)))
        elif kind == "fill":
            day_of_order(k).fills += 1
            inst = r["instrument"]
            peaks.position[inst] = float(r.get("position", 0.0))
            peaks.price[inst] = float(r.get("price", peaks.price.get(inst, math.nan)))
            peaks.pos = _top(peaks.pos, abs(peaks.position[inst]))
            gross = sum(abs(q) * (peaks.price.get(i, math.nan) * peaks.multipliers.get(i, 1.0))
                        for i, q in peaks.position.items() if q)
            if gross == gross:
                peaks.gross = _top(peaks.gross, gross)
        elif kind == "reject":
            day_of_order(k).rejects += 1
        elif kind == "halt":
            day(k).trips.append({"ts": r.get("ts"), "by": _by(r), "reason": r.get("reason", "")})
        elif kind == "resume":
            day(k).resumes.append({"ts": r.get("ts"), "by": _by(r)})
    figures += peaks.figures(runs[-1].get("seq", len(runs)) if runs else 0)
    return AuditReport(runs, [days[d] for d in sorted(days)], basis, figures, coverage(peaks.limits))


def _num(v) -> str:
    if v is None:
        return "none"
    if v != v:
        return "-"
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4g}"


def _time(ts) -> str:
    return datetime.fromtimestamp(int(ts) / 1e9, timezone.utc).strftime("%H:%M:%S") if ts else "?"


def _sections(rep: AuditReport) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table, shared by the text and the HTML page."""
    runs = [[str(r.get("seq", "")), _date(r.get("ts")), str(r.get("policy", "")), str(r.get("policy_hash", ""))[:16],
             str(r.get("order_prefix", ""))] for r in rep.runs]
    days = [[d.date, str(d.orders), str(d.exits), str(d.fills), str(d.rejects),
             ", ".join(f"{k} {n}" for k, n in sorted(d.hits.items())) or "-",
             "; ".join(f"{_time(t['ts'])} by {t['by']} ({t['reason']})" for t in d.trips) or "-",
             "; ".join(f"{_time(t['ts'])} by {t['by']}" for t in d.resumes) or "-"] for d in rep.days]
    limits = [[str(f.run), f.figure, _num(f.peak), f.key, _num(f.limit),
               "BREACH" if f.breached else ("no limit" if f.limit is None else "held")] for f in rep.limits]
    cover = [[c.control.rule, c.control.provision, c.control.asks, c.status.upper() if c.status != "met" else "met",
              ", ".join(c.met_by + ([c.control.built_in] if c.control.built_in else [])) or "-",
              "; ".join(c.missing) or "-"] for c in rep.coverage]
    return [
        ("Runs", ["session seq", "date", "policy", "policy_hash", "order prefix"], runs),
        (f"Per day ({rep.day_basis}; times UTC)", ["date", "orders", "exits", "fills", "rejects", "limit hits by reason",
                           "kill-switch trips", "resumes"], days),
        ("Limits, each run against its own", ["run", "figure", "peak in the log", "risk key", "limit", ""], limits),
        ("Control coverage", ["rule", "provision", "asks for", "status", "met by", "missing"], cover),
    ]


#: Control and bidirectional-format characters: an operator's halt reason is free text, and
#: a newline, an escape sequence or a right-to-left override in it must not redraw the table.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with each character that would move the cursor or the text's direction (a
    newline, an escape sequence, a right-to-left override) shown as `?`: for text from
    outside (a peer's message, an operator's reason) on a terminal."""
    return _UNPRINTABLE.sub("?", text)


def render_text(rep: AuditReport) -> str:
    """The report as plain text tables; characters that would move the cursor or the
    text's direction are shown as `?`."""
    out = []
    for title, header, rows in _sections(rep):
        rows = [[printable(cell) for cell in row] for row in rows]
        out.append(title)
        widths = [max(len(x) for x in col) for col in zip(header, *rows)]
        for row in [header, *rows]:
            out.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if not rows:
            out.append("  (none)")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_html(rep: AuditReport, title: str) -> str:
    """One self-contained page: tables only, no scripts, no network."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
             ".bad{color:#b00;font-weight:bold}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for name, header, rows in _sections(rep):
        parts.append(f"<h2>{html.escape(name)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(
                f"<td class='bad'>{html.escape(c)}</td>" if c in ("BREACH", "MISSING", "PARTIAL")
                else f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)
