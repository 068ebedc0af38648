"""The terminal view of a live run (`policyc run` on a terminal, `make demo`): the feed
and venue connections, how far the feed has got, the account (equity, realised,
unrealised and today's P&L), the risk state (kill switch, orders today against
`max_orders_per_day`, margin usage against `max_margin_usage`, drawdown), positions,
message counts, latency and the latest decisions, redrawn a few times a second from
`LiveRuntime.status()`, `.links` and the kernel's account state (`account_figures`).

It is laid out for a terminal of 80 columns and 24 rows and uses more when there are:
no line wraps, and with more instruments than rows it shows those with the largest
exposure and how many more there are. Off a terminal it prints nothing until the run
ends, so logs and pipes stay clean (a connection going down or coming back is one line
on stderr either way, runner.py)."""
from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import deque

import numpy as np
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from policyc.compiler import layout as L

from ..audit_report import printable
from .runner import VENUE_FIRST_S

#: The smallest terminal the view fits: columns and rows.
WIDTH, HEIGHT = 80, 24
#: Characters of the policy's name the first line shows at most.
MAX_NAME = 24
#: Columns of the account block and of the risk block (side by side), of their labels,
#: and of a figure in the tables.
BLOCK_WIDTH, ACCOUNT_LABEL_WIDTH, RISK_LABEL_WIDTH, NUMBER_WIDTH = 38, 15, 12, 11
#: Seconds of history the feed's event rate is measured over.
RATE_WINDOW_S = 5.0
#: Rows the latest decisions keep at least, when there are that many, however many
#: instruments there are (the rest of the height goes to the positions first).
MIN_DECISION_ROWS = 3


def percentiles_text(latency: dict) -> str:
    if not latency:
        return "-"
    return f"{latency['p50_us']:,.0f} / {latency['p99_us']:,.0f} us"


def account_figures(engine) -> dict:
    """The account and risk figures of the view, read from the kernel's state (an
    `Engine`'s `session`: the limits it enforces, not the policy file's text):

    - `realised_pnl`: closed round trips' P&L plus the realised part of the open ones
      (a partial close), after all fees; money. With `unrealised_pnl` (the open
      positions' position x (last price - average entry price) x multiplier) it sums to the equity's
      change since the start, as the backtest's trades do (docs/commands.md).
    - `today_pnl`: equity minus the equity at the day's first market event, as
      `max_daily_loss` measures the day (UTC, or the policy's trading day); money.
    - `orders_today`: orders sent today, as `max_orders_per_day` counts them (int);
      `max_orders_per_day`: that limit, None when the policy has none.
    - `margin_usage`: gross exposure (|position + open orders| x last price x multiplier, summed)
      x `margin_rate` / equity, as the `margin_usage` function; NaN when equity is not
      above 0 or a held instrument has no price. `max_margin_usage`, `max_drawdown`:
      the limits (fractions), None when absent.
    - `instruments`: name -> (unrealised P&L, gross exposure); exposure is inf for an
      instrument with a position or open order and no price yet."""
    s = engine.session
    acct, p, cfg = s.acct, s.pstate, s.config
    pos, last, entry, mult = p[:, L.P_POS], p[:, L.P_LAST], p[:, L.P_ENTRY], p[:, L.P_MULT]
    held = pos != 0.0
    unrealised = np.where(held, pos * ((last - entry) * mult), 0.0)
    q = pos + p[:, L.P_OPEN]
    exposure = np.where(q != 0.0, np.abs(q * (last * mult)), 0.0)
    exposure = np.where(np.isnan(exposure), math.inf, exposure)
    equity = float(acct[L.A_EQUITY])
    gross = float(np.sum(exposure))
    margin = gross * float(cfg[L.C["margin_rate"]]) / equity if equity > 0.0 and gross < math.inf else math.nan

    def limit(key: str) -> float | None:
        value = float(cfg[L.C[key]])
        return None if math.isnan(value) else value

    return {"realised_pnl": float(acct[L.A_WIN_PNL] + acct[L.A_LOSS_PNL] + np.sum(p[:, L.P_TRADE_PNL])),
            "unrealised_pnl": float(np.sum(unrealised)), "today_pnl": equity - float(acct[L.A_DAY_OPEN]),
            "orders_today": int(acct[L.A_ORDERS_TODAY]), "max_orders_per_day": limit("max_orders_per_day"),
            "margin_usage": margin, "max_margin_usage": limit("max_margin_usage"),
            "max_drawdown": limit("max_drawdown"),
            "instruments": {name: (float(unrealised[k]), float(exposure[k])) for name, k in engine.index.items()}}


class FeedRate:
    """Market events per second over the last `RATE_WINDOW_S` seconds, from the running
    count of events applied sampled at each redraw."""

    def __init__(self):
        self.samples: deque = deque()  # (monotonic s, events), oldest first

    def update(self, events: int, now: float) -> float | None:
        """Add a sample; the rate (events/s), None until two samples span some time."""
        self.samples.append((now, events))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        t0, e0 = self.samples[0]
        return (events - e0) / (now - t0) if now > t0 else None


def links_text(links: dict, now: float | None = None) -> Text:
    """A line for each connection (`LiveRuntime.links`) and its state; one that is down
    in red, with for how long and why."""
    now = time.monotonic() if now is None else now
    lines = []
    for source, link in links.items():
        if link.state == "connected":
            state = ("connected", "green")
        elif link.state == "down":
            state = (f"DOWN for {now - link.since:,.0f} s: {printable(str(link.error))}; retrying", "bold red")
        elif link.state == "waiting":
            state = (f"waiting for the venue ({VENUE_FIRST_S:g} s at most)", "yellow")
        else:
            state = ("connecting", "yellow")
        lines.append(Text.assemble(f"{source:<5} {link.url}  ", state))
    return Text("\n").join(lines)


def _line(*parts) -> Text:
    """One line that never wraps: what does not fit the width ends in an ellipsis."""
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


def _fit(x: float, fmt: str, width: int) -> str:
    """`x` in `fmt`, or in scientific notation when that is wider than `width` (at
    least 10); `-` for NaN."""
    if x != x:
        return "-"
    text = format(x, fmt)
    return text if len(text) <= width else format(x, ("+" if "+" in fmt else "") + ".3e")


def _fraction(x: float) -> str:
    """A fraction as a percentage; `-` for NaN (margin usage without a positive equity)."""
    if math.isnan(x):
        return "-"
    return f"{x:.2%}" if abs(x) < 100 else f"{x * 100:.3e}%"  # 10,000% and more: a near-zero equity


def _when(ts: int | None) -> str:
    """An event time (ns since the epoch, UTC) to the minute."""
    if ts is None:
        return ""
    return str(np.datetime64(int(ts), "ns").astype("datetime64[m]")).replace("T", " ")


def progress_line(events: int, total: int | None, rate: float | None, event_ts: int | None, width: int) -> Text:
    """How far the feed has got: `events` applied of `total` (a replay's length; None
    when unknown) with a bar, the latest event's time, and the rate (events/s)."""
    tail = "".join([f"  {_when(event_ts)}" if event_ts is not None else "",
                    f"  {rate:,.0f} ev/s" if rate is not None else ""])
    label = ("progress  ", "bold")
    if total is None:
        return _line(label, f"{events:,} events", tail)
    done = min(events / total, 1.0) if total > 0 else 1.0
    head = f"{events:,}/{total:,} events {done:6.1%} "
    cells = max(0, min(20, width - len(label[0]) - len(head) - len(tail)))
    filled = round(done * cells)
    return _line(label, head, ("━" * filled, "green"), ("━" * (cells - filled), "grey35"), tail)


def _pair_table(label_width: int) -> Table:
    """Labels and figures in a block of BLOCK_WIDTH columns."""
    table = Table.grid(padding=(0, 1))
    table.add_column(width=label_width, no_wrap=True, overflow="ellipsis")
    table.add_column(width=BLOCK_WIDTH - 1 - label_width, justify="right", no_wrap=True, overflow="ellipsis")
    return table


def account_and_risk(status: dict, figures: dict | None) -> tuple[Table, int]:
    """Two blocks side by side, the account (equity and P&L) and the risk state (kill
    switch, orders today, margin usage, drawdown, the most frequent reason code), and
    the number of lines they take."""
    f = figures or {}
    nan = math.nan
    account = _pair_table(ACCOUNT_LABEL_WIDTH)
    width = BLOCK_WIDTH - 1 - ACCOUNT_LABEL_WIDTH
    account.add_row(Text("account", style="bold"), "")
    account.add_row("equity", _fit(status["equity"], ",.2f", width))
    account.add_row("realised P&L", _fit(f.get("realised_pnl", nan), "+,.2f", width))
    account.add_row("unrealised P&L", _fit(f.get("unrealised_pnl", nan), "+,.2f", width))
    account.add_row("today's P&L", _fit(f.get("today_pnl", nan), "+,.2f", width))
    account.add_row("cash", _fit(status["cash"], ",.2f", width))

    risk = _pair_table(RISK_LABEL_WIDTH)
    risk.add_row(Text("risk", style="bold"), "")
    risk.add_row("kill switch", Text("ON", style="bold red") if status["halted"] else Text("off", style="green"))
    if "orders_today" in f:
        cap = f["max_orders_per_day"]
        used = f"{f['orders_today']:,} / {cap:,.0f}" if cap is not None else f"{f['orders_today']:,} (no limit)"
        risk.add_row("orders today", Text(used, style="bold red" if cap is not None and f["orders_today"] >= cap else ""))
    else:
        risk.add_row("orders today", "-")
    usage, cap = f.get("margin_usage", nan), f.get("max_margin_usage")
    risk.add_row("margin usage", _fraction(usage) + (f" / {_fraction(cap)}" if cap is not None else ""))
    cap = f.get("max_drawdown")
    risk.add_row("drawdown", _fraction(status["drawdown"]) + (f" / {_fraction(cap)}" if cap is not None else ""))
    top = max(status["risk"].items(), key=lambda kv: kv[1], default=None)
    risk.add_row("top reason", "-" if top is None else f"{top[1]:,} {top[0]}")  # the count first: a long code is cut

    grid = Table.grid(padding=(0, 2))
    grid.add_row(account, risk)
    return grid, max(account.row_count, risk.row_count)


def _by_exposure(names: list[str], figures: dict | None) -> list[str]:
    """The instruments, largest exposure first (ties, and every one without `figures`,
    in the policy's order)."""
    if figures is None:
        return names
    return sorted(names, key=lambda name: -figures["instruments"][name][1])


def positions_table(status: dict, figures: dict | None, rows: int) -> Table:
    """At most `rows` rows below the header: every instrument when they fit (in the
    policy's order), else the largest exposures and a last row `+N more`."""
    names = list(status["positions"])
    shown = names if len(names) <= rows else _by_exposure(names, figures)[:max(rows - 1, 0)]
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold")
    table.add_column("instrument", width=16, no_wrap=True, overflow="ellipsis")
    for column in ("position", "open", "last price", "unrealised", "exposure"):
        table.add_column(column, width=NUMBER_WIDTH, justify="right", no_wrap=True, overflow="ellipsis")
    per = figures["instruments"] if figures is not None else {}
    for name in shown:
        unrealised, exposure = per.get(name, (math.nan, math.nan))
        table.add_row(name, _fit(status["positions"][name], "+,g", NUMBER_WIDTH),
                      _fit(status["open_orders"][name], "+,g", NUMBER_WIDTH),
                      _fit(status["last_prices"].get(name, math.nan), ",.4f", NUMBER_WIDTH),
                      _fit(unrealised, "+,.2f", NUMBER_WIDTH),
                      "-" if math.isinf(exposure) else _fit(exposure, ",.0f", NUMBER_WIDTH))
    if len(shown) < len(names):
        table.add_row(Text(f"+{len(names) - len(shown):,} more", style="dim"), "", "", "", "", "")
    return table


def flow_lines(status: dict, venue_latency: dict | None) -> list[Text]:
    """Two lines, each cut rather than wrapped: the message counts (bad messages in red
    when not 0), then latency."""
    bad = status["bad_messages"]
    counts = _line(f"events {status['events']:,}  orders {status['orders']:,}  fills {status['fills']:,}  "
                   f"rejects {status['rejects']:,}  cancels {status.get('cancels', 0):,}  "
                   f"unacked {status['unacknowledged']:,}  ",
                   (f"bad {bad:,}", "bold red" if bad else ""), f"  reconnects {status['reconnects']:,}")
    latency = _line(f"tick->order p50/p99 {percentiles_text(status['latency'])}",
                    f"   at the venue {percentiles_text(venue_latency)}" if venue_latency is not None else "")
    return [counts, latency]


def _instrument_at(record: dict) -> str:
    """A record's instrument, and the venue of its order (`@coinbase`) when the name
    does not already begin with it (`coinbase:BTC-USD` does)."""
    name, venue = str(record.get("instrument", "")), record.get("venue")
    return name if not venue or name.startswith(f"{venue}:") else f"{name} @{venue}"


def decisions_table(status: dict, rows: int) -> Table:
    """The latest `rows` decision records of the status, newest last."""
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold")
    for column, width in (("seq", 10), ("kind", 11), ("instrument", 16), ("qty", NUMBER_WIDTH), ("reasons", 24)):
        table.add_column(column, width=width, no_wrap=True, overflow="ellipsis",
                         justify="right" if column in ("seq", "qty") else "left")
    for record in status["recent"][len(status["recent"]) - rows:] if rows > 0 else []:
        reasons = record.get("reasons") or record.get("reason") or ""
        table.add_row(str(record["seq"]), record["kind"], printable(_instrument_at(record)),
                      "" if record.get("qty") is None else _fit(record["qty"], "+,g", NUMBER_WIDTH),
                      printable(", ".join(map(str, reasons)) if isinstance(reasons, (list, tuple)) else str(reasons)))
    return table


def render(status: dict, venue_latency: dict | None = None, links: dict | None = None, *,
           figures: dict | None = None, total: int | None = None, rate: float | None = None,
           event_ts: int | None = None, width: int = WIDTH, height: int = HEIGHT) -> Group:
    """The view of one moment, `height` rows at most and no line over `width` columns
    (at least WIDTH x HEIGHT). `status`: `LiveRuntime.status()`; `figures`:
    `account_figures` of its engine (without it the P&L and limits show `-`); `total`:
    the feed's length when known (a replay); `rate`: events/s; `event_ts`: the latest
    market event's time (ns)."""
    name = status["policy"] if len(status["policy"]) <= MAX_NAME else status["policy"][:MAX_NAME - 1] + "…"
    head = _line((name, "bold"), "  ",
                 ("KILL SWITCH ON: flattening", "bold red") if status["halted"] else
                 ("REDUCE-ONLY: no market data", "bold yellow") if status["reduce_only"] else ("trading", "bold green"),
                 f"  policy_hash {status['policy_hash'][:16]}")
    top = [head]
    if links:
        top += [_line(line) for line in links_text(links).split()]
    top.append(progress_line(status["events"], total, rate, event_ts, width))
    blocks, block_lines = account_and_risk(status, figures)
    flow = flow_lines(status, venue_latency)
    # what is left of the height once the lines above, the blocks, the flow and the two tables' headers are drawn
    free = height - len(top) - block_lines - len(flow) - 2
    decisions = min(len(status["recent"]), MIN_DECISION_ROWS)
    positions = max(min(len(status["positions"]), free - decisions), 1)
    decisions = max(min(len(status["recent"]), free - positions), 0)
    return Group(*top, blocks, positions_table(status, figures, positions), *flow, decisions_table(status, decisions))


def runtime_view(runtime, venue=None, rate: FeedRate | None = None, total: int | None = None, width: int = WIDTH,
                 height: int = HEIGHT, now: float | None = None) -> Group:
    """`render` of a `LiveRuntime` as it is now: its status and links, its engine's
    `account_figures`, its latest market event's time; `venue`, a paper venue whose
    latency to show; `rate`, the `FeedRate` to add this moment's event count to (at
    `now`, monotonic s)."""
    status = runtime.status()
    events_per_s = None
    if rate is not None:
        events_per_s = rate.update(status["events"], time.monotonic() if now is None else now)
    return render(status, venue.percentiles() if venue is not None else None, runtime.links,
                  figures=account_figures(runtime.engine), total=total, rate=events_per_s,
                  event_ts=max(runtime.core.last_ts.values(), default=None), width=width, height=height)


async def watch(runtime, until: asyncio.Future | asyncio.Task, venue=None, hz: float = 4.0,
                total: int | None = None) -> None:
    """Redraw the view until `until` is done, `hz` times a second, at the terminal's
    size; only on a terminal. `venue`: a paper venue whose latency to show; `total`: the
    number of events the feed will send, when known (a replay)."""
    if not sys.stdout.isatty():
        await asyncio.wait([until])
        return
    rate = FeedRate()
    with Live(refresh_per_second=hz, transient=False) as live:
        while True:
            size = live.console.size
            live.update(runtime_view(runtime, venue, rate, total, size.width, size.height))
            if until.done():
                return
            await asyncio.wait([until], timeout=1 / hz)
