"""The terminal view of a live run (`policyc run` on a terminal, `make demo`): the feed
and venue connections, positions, equity, orders, risk state, rejected messages and
latency, redrawn a few times a second from `LiveRuntime.status()` and `.links`. Off a
terminal it prints nothing until the run ends, so logs and pipes stay clean (a
connection going down or coming back is one line on stderr either way, runner.py)."""
from __future__ import annotations

import asyncio
import math
import sys
import time

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .runner import VENUE_FIRST_S


MAX_ROWS = 12


def percentiles_text(latency: dict) -> str:
    if not latency:
        return "-"
    return f"{latency['p50_us']:,.0f} / {latency['p99_us']:,.0f} us"


def links_text(links: dict, now: float | None = None) -> Text:
    """A line for each connection (`LiveRuntime.links`) and its state; one that is down
    in red, with for how long and why."""
    now = time.monotonic() if now is None else now
    lines = []
    for source, link in links.items():
        if link.state == "connected":
            state = ("connected", "green")
        elif link.state == "down":
            state = (f"DOWN for {now - link.since:,.0f} s: {link.error}; retrying", "bold red")
        elif link.state == "waiting":
            state = (f"waiting for the venue ({VENUE_FIRST_S:g} s at most)", "yellow")
        else:
            state = ("connecting", "yellow")
        lines.append(Text.assemble(f"{source:<5} {link.url}  ", state))
    return Text("\n").join(lines)


def render(status: dict, venue_latency: dict | None = None, links: dict | None = None) -> Group:
    halted = status["halted"]
    head = Text.assemble(
        (f"{status['policy']} ", "bold"), (f"policy_hash {status['policy_hash'][:16]}  ", "dim"),
        ("KILL SWITCH ON: flattening, nothing new until resume", "bold red") if halted else
        ("REDUCE-ONLY: no market data from the feed", "bold yellow") if status["reduce_only"] else
        ("trading", "bold green"))

    book = Table(title="positions", expand=True)
    for column in ("instrument", "position", "open orders", "last price"):
        book.add_column(column, justify="right" if column != "instrument" else "left")
    names = list(status["positions"])
    if len(names) > MAX_ROWS:  # many instruments: the ones with the most at stake
        names.sort(key=lambda n: -abs((status["positions"][n] + status["open_orders"][n])
                                      * (status["last_prices"][n] if status["last_prices"][n] == status["last_prices"][n] else 0.0)))
    for name in names[:MAX_ROWS]:
        last = status["last_prices"].get(name, math.nan)
        book.add_row(name, f"{status['positions'][name]:+,g}", f"{status['open_orders'][name]:+,g}",
                     "-" if last != last else f"{last:,.4f}")
    if len(names) > MAX_ROWS:
        book.add_row(f"... {len(names) - MAX_ROWS:,} more", "", "", "")

    account = Table(title="account and risk", expand=True, show_header=False)
    account.add_column()
    account.add_column(justify="right")
    account.add_row("equity", f"{status['equity']:,.2f}")
    account.add_row("cash", f"{status['cash']:,.2f}")
    account.add_row("drawdown", f"{status['drawdown']:.2%}")
    for reason, count in sorted(status["risk"].items(), key=lambda kv: -kv[1])[:6]:
        account.add_row(reason, f"{count:,}")

    flow = Table(title="flow", expand=True, show_header=False)
    flow.add_column()
    flow.add_column(justify="right")
    for key in ("events", "orders", "fills", "rejects", "bad_messages", "reconnects"):
        style = "red" if key == "bad_messages" and status[key] else ""
        flow.add_row(key.replace("_", " "), Text(f"{status[key]:,}", style=style))
    flow.add_row("tick->order p50/p99", percentiles_text(status["latency"]))
    if venue_latency is not None:
        flow.add_row("at the venue", percentiles_text(venue_latency))

    recent = Table(title="latest decisions", expand=True)
    for column in ("seq", "kind", "instrument", "qty", "reasons"):
        recent.add_column(column)
    for record in status["recent"]:
        reasons = record.get("reasons") or record.get("reason") or ""
        recent.add_row(str(record["seq"]), record["kind"], record.get("instrument", ""),
                       "" if record.get("qty") is None else f"{record['qty']:+,g}",
                       ", ".join(reasons) if isinstance(reasons, (list, tuple)) else str(reasons))

    grid = Table.grid(expand=True)
    grid.add_row(book, account, flow)
    return Group(head, *([links_text(links)] if links else []), grid, recent)


async def watch(runtime, until: asyncio.Future | asyncio.Task, venue=None, hz: float = 4.0) -> None:
    """Redraw the view until `until` is done; only on a terminal."""
    if not sys.stdout.isatty():
        await asyncio.wait([until])
        return

    def frame():
        return render(runtime.status(), venue.percentiles() if venue is not None else None,
                      runtime.links)

    with Live(frame(), refresh_per_second=hz, transient=False) as live:
        while not until.done():
            await asyncio.wait([until], timeout=1 / hz)
            live.update(frame())
