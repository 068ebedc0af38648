"""`--report FILE`: a tearsheet of a backtest, one self-contained interactive HTML page.

The charts are Plotly figures, with plotly.js inlined (the page works offline). Each
figure's JSON sits in the page in a `<script type="application/json" id="fig-NAME">`
element, drawn into `<div id="chart-NAME">` by the one script at the end; the same
inputs write the same page, byte for byte (the run's timing is left out).

Time axes: on data with a day or more between events, Plotly date axes (x in ms since
the epoch, UTC, labelled `YYYY-MM-DD`, or with the time when zoomed to hours). On
intraday data, an ordinal axis: x is the index of the event's distinct timestamp, so
nights, weekends and holidays take no room, with ticks labelled by their UTC date and
time. Long series are decimated to `BUCKETS` buckets, each keeping its first, lowest,
highest and last point, so every extreme is drawn; fills are all drawn (WebGL markers).
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from policyc.compiler import layout as L
from policyc.compiler.sessions import K_DAY

from . import metrics as M
from .backtest import BacktestResult, summary

BUCKETS = 2000          # a series longer than 4 points a bucket is decimated to this many buckets
TIME_TICKS = 8          # labelled ticks of an ordinal (intraday) time axis
MAX_TRADE_ROWS = 5000   # the trade list shows the first and last half of this many round trips
NS_PER_MS = 1_000_000
CONFIG = {"responsive": True, "displaylogo": False}
STYLE = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}code{font-size:13px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:13px}
.chart{height:360px}.tall{height:460px}.scroll{max-height:480px;overflow:auto}.grid{display:flex;gap:32px;flex-wrap:wrap}"""


# ---- series helpers ---------------------------------------------------------------------

def decimate(n: int, *series: np.ndarray, buckets: int = BUCKETS) -> np.ndarray:
    """Indices (sorted) of the points of `n`-long `series` to draw: all of them when
    there are at most 4 a bucket, else the first and last point of each of `buckets`
    equal buckets and, of every series, each bucket's lowest and highest (NaN-free)
    point. Shape (k,), k <= 4 * buckets * len(series)."""
    if n <= 4 * buckets:
        return np.arange(n)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    starts = edges[:-1]
    keep = [starts, edges[1:] - 1]
    position = np.arange(n)
    bucket = np.repeat(np.arange(buckets), np.diff(edges))
    for y in series:
        low = np.where(np.isnan(y), np.inf, y)
        high = np.where(np.isnan(y), -np.inf, y)
        # per bucket: the first position at its minimum (maximum), via a lexicographic sort
        for values in (low, -high):
            order = np.lexsort((position, values, bucket))
            keep.append(order[np.searchsorted(bucket[order], np.arange(buckets))])
    return np.unique(np.concatenate(keep))


class TimeAxis:
    """Where an event time (int64 ns, UTC) goes on the report's time axes: a date axis
    (x in ms) or, on intraday data (half a day or less between events, by the median),
    the ordinal of its distinct timestamp, with dated ticks."""

    def __init__(self, ts: np.ndarray):
        self.stamps = np.unique(ts)
        steps = np.diff(self.stamps)
        self.intraday = bool(len(steps)) and float(np.median(steps)) <= M.NS_PER_DAY / 2

    def x(self, ts: np.ndarray) -> np.ndarray:
        ts = np.asarray(ts, dtype=np.int64)
        if self.intraday:
            return np.searchsorted(self.stamps, ts).astype(np.float64)
        return ts / NS_PER_MS

    def labels(self, ts: np.ndarray) -> list[str]:
        """UTC date and time of each time, as the hover texts of an ordinal axis show it."""
        unit = "m" if self.intraday else "D"
        return [s.replace("T", " ") for s in np.datetime_as_string(np.asarray(ts, "datetime64[ns]"), unit=unit)]

    def layout(self) -> dict:
        """The x axis: from the first event to the last, no padding."""
        span = [float(v) for v in self.x(self.stamps[[0, -1]])]
        if not self.intraday:
            return {"type": "date", "range": span, "tickformatstops": [
                {"dtickrange": [None, M.NS_PER_DAY // NS_PER_MS], "value": "%Y-%m-%d %H:%M"},
                {"dtickrange": [M.NS_PER_DAY // NS_PER_MS, None], "value": "%Y-%m-%d"}],
                "hoverformat": "%Y-%m-%d %H:%M"}
        at = np.unique(np.linspace(0, len(self.stamps) - 1, TIME_TICKS).round().astype(np.int64))
        return {"type": "linear", "range": span, "tickmode": "array", "tickvals": at.tolist(),
                "ticktext": self.labels(self.stamps[at]), "title": {"text": "UTC; nights and closed days left out"}}

    def hover(self, ts: np.ndarray) -> dict:
        """Trace keywords that make a point's hover show its time."""
        if self.intraday:
            return {"text": self.labels(ts), "hovertemplate": "%{text}<br>%{y}<extra>%{fullData.name}</extra>"}
        return {}


def _ffill_prices(events, price_col: int, n_inst: int) -> np.ndarray:
    """(n_events, n_inst): each instrument's last price at or before each event, NaN
    before its first."""
    n = len(events)
    out = np.full((n, n_inst), np.nan)
    rows = np.arange(n)
    for i in range(n_inst):
        mine = (events.inst == i) & np.isfinite(events.vals[:, price_col]) & (events.vals[:, price_col] > 0)
        last = np.maximum.accumulate(np.where(mine, rows, -1))
        seen = last >= 0
        out[seen, i] = events.vals[last[seen], price_col]
    return out


def _positions(result: BacktestResult, n_inst: int) -> np.ndarray:
    """(n_events, n_inst): each instrument's position after each event, summed from the fills."""
    delta = np.zeros((len(result.events), n_inst))
    f = result.fills
    np.add.at(delta, (f[:, L.O_FILL_EVENT].astype(np.int64), f[:, L.O_INST].astype(np.int64)), f[:, L.O_QTY])
    return np.cumsum(delta, axis=0)


# ---- formatting ---------------------------------------------------------------------------

def _pct(v: float, why: str = "") -> str:
    # + 0.0: a tiny loss rounds to 0.00%, not -0.00%
    return f"{round(v * 100, 2) + 0.0:,.2f}%" if np.isfinite(v) else f"n/a{' (' + why + ')' if why else ''}"


def _num(v: float, why: str = "", digits: int = 3) -> str:
    # + 0.0 after rounding: a tiny loss shows as 0.00, not -0.00
    return f"{round(v, digits) + 0.0:,.{digits}f}" if v is not None and np.isfinite(v) \
        else f"n/a{' (' + why + ')' if why else ''}"


def _money(v: float, why: str = "") -> str:
    return _num(v, why, 2)


def _duration(ns: int) -> str:
    days, rest = divmod(int(ns), M.NS_PER_DAY)
    hours, rest = divmod(rest, 3_600 * 10**9)
    minutes = rest // (60 * 10**9)
    return f"{days}d {hours}h {minutes}m" if hours or minutes else f"{days}d"


def _iso(ns: int | None) -> str:
    if ns is None:
        return "not recovered"
    text = str(np.datetime64(int(ns), "ns").astype("datetime64[s]")).replace("T", " ")
    return text[:10] if text.endswith("00:00:00") else text


def _table(head: list[str], rows: list[list[str]], cls: str = "", ident: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    at = f' id="{ident}"' if ident else ""
    return f'<div class="{cls}"><table{at}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(name: str, fig: go.Figure, tall: bool = False) -> str:
    """The chart's div and its figure as JSON (`</` escaped so the JSON cannot end the script)."""
    fig.update_layout(template="plotly_white", margin={"l": 70, "r": 20, "t": 80, "b": 50},
                      title={"y": 0.98, "yanchor": "top"},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0})
    text = pio.to_json(fig, validate=False).replace("</", "<\\/")
    return (f'<div id="chart-{name}" class="chart{" tall" if tall else ""}"></div>'
            f'<script type="application/json" id="fig-{name}">{text}</script>')


# ---- the sections -------------------------------------------------------------------------

def _stats_rows(s: dict, ret: np.ndarray, cagr: float, stats: M.TradeStats) -> list[list[str]]:
    short = "fewer than 2 days" if len(ret) < 2 else ""
    no_trades = "no closed trades" if not s["trades"] else ""
    return [
        ["total return", _pct(s["total_return"])],
        ["CAGR", _pct(cagr, "no days")],
        ["annual volatility", _pct(M.annual_volatility(ret), short)],
        ["Sharpe", _num(s["sharpe"], short or "no variation")],
        ["Sortino", _num(s["sortino"], short or "no losing day")],
        ["Calmar", _num(M.calmar(cagr, s["max_drawdown"]), "no drawdown")],
        ["max drawdown", _pct(-s["max_drawdown"])],
        ["closed trades", f"{s['trades']:,}"],
        ["open trades", f"{s['open_trades']:,}"],
        ["win rate", _pct(s["win_rate"] if s["win_rate"] is not None else np.nan, no_trades)],
        ["profit factor", _num(s["profit_factor"], no_trades or "no losing trade")],
        ["expectancy (per trade)", _money(stats.expectancy, no_trades)],
        ["average win", _money(stats.average_win, no_trades or "no winning trade")],
        ["average loss", _money(stats.average_loss, no_trades or "no losing trade")],
        ["exposure", _pct(s["exposure"])],
        ["fees", _money(s["fees"])],
        ["initial equity", _money(s["initial_equity"])],
        ["final equity", _money(s["final_equity"])],
        ["events", f"{s['events']:,}"],
        ["orders / fills", f"{s['orders']:,} / {s['fills']:,}"],
    ]


def _trade_table(result: BacktestResult, prices: np.ndarray) -> tuple[str, np.ndarray]:
    """The trade list (HTML) and the closed trades' P&L (money)."""
    trades = result.trades
    if not trades:
        return '<p class="note">No trades: the policy never held a position.</p>', np.zeros(0)
    names = result.policy.instruments
    ts, n = result.events.ts, len(result.events)
    inst = np.array([names.index(t.instrument) for t in trades])
    entry = np.array([t.entry_event for t in trades])
    closed = np.array([t.exit_event >= 0 for t in trades])
    exit_ = np.where(closed, [t.exit_event for t in trades], n - 1)
    side = np.array([t.side for t in trades], dtype=np.float64)
    entry_price = np.array([t.entry_price for t in trades])
    qty = np.array([t.max_qty for t in trades])
    pnl = np.array([t.pnl for t in trades])
    mae, mfe = np.zeros(len(trades)), np.zeros(len(trades))
    reasons = np.full(len(trades), "", dtype=object)
    fills = result.fills
    for i in np.unique(inst):
        mine = inst == i
        rows = np.flatnonzero(np.isfinite(prices[:, i]))
        # the instrument's price path from the entry to the exit event, as positions in `rows`
        a, b = np.searchsorted(rows, entry[mine]), np.searchsorted(rows, exit_[mine], side="right") - 1
        mae[mine], mfe[mine] = M.excursions(prices[rows, i], a, np.maximum(a, b), side[mine], entry_price[mine])
        f = fills[fills[:, L.O_INST] == i]
        f = f[np.argsort(f[:, L.O_FILL_EVENT], kind="stable")]
        at = np.searchsorted(f[:, L.O_FILL_EVENT], exit_[mine], side="right") - 1  # the fill that closed it
        reasons[mine] = [", ".join(L.decode_reasons(f[k, L.O_REASONS], result.policy.reason_names)) or "signal"
                         for k in at]
    reasons[~closed] = "open at the end"
    multiplier = np.array([m for m, _ in result.policy.checked.contract_table])[inst]
    ret = pnl / (entry_price * qty * multiplier)
    shown = np.arange(len(trades))
    note = ""
    if len(trades) > MAX_TRADE_ROWS:
        half = MAX_TRADE_ROWS // 2
        shown = np.concatenate([shown[:half], shown[-half:]])
        note = (f'<p class="note">{len(trades):,} round trips: the first and last {half:,} are listed; '
                "every fill is in the orders CSV (--orders).</p>")
    rows = []
    for k in shown:
        end = int(ts[exit_[k]])
        rows.append([str(k + 1), names[inst[k]], "long" if side[k] > 0 else "short", _iso(ts[entry[k]]),
                     _iso(end) if closed[k] else "open", f"{qty[k]:,g}", f"{entry_price[k]:,.4f}",
                     f"{trades[k].exit_price:,.4f}" if closed[k] else "-", _money(pnl[k]), _pct(ret[k]),
                     _duration(end - int(ts[entry[k]])), _pct(mae[k]), _pct(mfe[k]), reasons[k]])
    head = ["#", "instrument", "side", "entry", "exit", "max qty", "entry price", "exit price", "P&L", "return",
            "duration", "MAE", "MFE", "exit reason"]
    intro = ('<p class="note">P&L after fees; return = P&L / (entry price x max qty); MAE and MFE: the worst and '
             "best move of the price against and for the trade from its entry to its exit event, as a fraction of "
             "the entry price. An open trade's P&L is what it realised so far.</p>")
    return intro + note + _table(head, rows, "scroll", "trades"), pnl[closed]


def _price_figures(result: BacktestResult, axis: TimeAxis, price_col: int) -> list[str]:
    """One price chart per instrument with every fill: buys as up triangles, sells as
    down ones, solid where the fill opened or added to a position, hollow where it
    reduced, closed or reversed it."""
    ts, out = result.events.ts, []
    names, reason_names = result.policy.instruments, result.policy.reason_names
    for i, name in enumerate(names):
        mine = np.flatnonzero(result.events.inst == i)
        price = result.events.vals[mine, price_col]
        fig = go.Figure()
        keep = mine[decimate(len(mine), price)] if len(mine) else mine
        fig.add_trace(go.Scatter(x=axis.x(ts[keep]), y=result.events.vals[keep, price_col], name=f"{name} price",
                                 mode="lines", line={"color": "#555", "width": 1}, **axis.hover(ts[keep])))
        f = result.fills[result.fills[:, L.O_INST] == i]
        before = np.cumsum(f[:, L.O_QTY]) - f[:, L.O_QTY]
        opening = (before == 0) | (before * f[:, L.O_QTY] > 0)
        for buy, color, symbol in ((True, "#1a8f3a", "triangle-up"), (False, "#c0392b", "triangle-down")):
            for opens in (True, False):
                sel = ((f[:, L.O_QTY] > 0) == buy) & (opening == opens)
                g = f[sel]
                if not len(g):
                    continue
                at = ts[g[:, L.O_FILL_EVENT].astype(np.int64)]
                why = [", ".join(L.decode_reasons(m, reason_names)) or "signal" for m in g[:, L.O_REASONS]]
                custom = np.column_stack([axis.labels(at), np.abs(g[:, L.O_QTY]), g[:, L.O_FEE], why])
                fig.add_trace(go.Scattergl(
                    x=axis.x(at), y=g[:, L.O_FILL_PRICE], mode="markers",
                    name=f"{'buy' if buy else 'sell'}s {'opening' if opens else 'reducing or closing'}",
                    marker={"symbol": symbol if opens else f"{symbol}-open", "color": color, "size": 9},
                    customdata=custom,
                    hovertemplate=(f"{'buy' if buy else 'sell'} %{{customdata[1]}} @ %{{y}}<br>%{{customdata[0]}}"
                                   "<br>fee %{customdata[2]}<br>reasons: %{customdata[3]}<extra></extra>")))
        fig.update_layout(title=f"{name}: price and every fill ({len(f):,})", xaxis=axis.layout(),
                          yaxis={"title": {"text": "price"}})
        out.append(_figure(f"price-{i}", fig, tall=True))
    return out


def write_report(result: BacktestResult, path: str | Path) -> None:
    """Write the tearsheet of `result` to `path`. Raises ValueError when the backtest
    ran without recording its equity (`run_backtest(record_equity=True)`)."""
    if result.equity is None:
        raise ValueError("the report needs the equity after each event: run the backtest with record_equity=True")
    s = summary(result)
    ev, eq, initial = result.events, result.equity, result.initial_equity
    ts, n = ev.ts, len(ev)
    names = result.policy.instruments
    price_col = result.policy.columns.index("price")
    axis = TimeAxis(ts)
    files = "".join(f"<li><code>{html.escape(str(f))}</code></li>" for f in s["data"]) or "<li>none named</li>"
    head = (f"<h1>Backtest of <code>{html.escape(s['policy'])}</code> v{s['version']}</h1>"
            f"<p>policy_hash <code>{s['policy_hash']}</code><br>build_hash <code>{s['build_hash']}</code><br>"
            f"params <code>{html.escape(json.dumps(s['params']))}</code><br>"
            f"from {s['start'] or '-'} to {s['end'] or '-'} (UTC), {n:,} events</p><p>Data:</p><ul>{files}</ul>")
    if n == 0:
        body = '<p class="note">No events: the data had no rows in the range asked for, so there is nothing to chart.</p>'
        _write_page(path, s, head + body)
        return

    clock = result.policy.clock
    day_word = "UTC day" if clock is None else "trading day of the policy's clock"
    days, ret = M.daily_returns(ts, eq, initial, None if clock is None else clock.columns(ts)[:, K_DAY])
    cagr = M.annual_return(ret)
    prices = _ffill_prices(ev, price_col, len(names))
    trades_html, closed_pnl = _trade_table(result, prices)
    stats = M.trade_stats(closed_pnl)
    sections = [f"<h2>Statistics</h2>{_table(['figure', 'value'], _stats_rows(s, ret, cagr, stats), '', 'stats')}"
                f'<p class="note">Daily returns are those of the equity at the last event of each {day_word}; a year is '
                f"{M.TRADING_DAYS} such days. Drawdown is measured after every event. docs/commands.md gives every "
                "formula.</p>"]

    # equity against buy-and-hold of the same instruments, equal money in each at its first price
    first = prices[np.argmax(np.isfinite(prices), axis=0), np.arange(len(names))]
    hold = initial * np.nanmean(np.where(np.isfinite(prices), prices / first, 1.0), axis=1)
    dd = M.drawdown(eq, initial)
    keep = decimate(n, eq, hold, dd)
    x = axis.x(ts[keep])
    top = M.top_drawdowns(ts, eq, initial)
    fig = go.Figure([go.Scatter(x=x, y=eq[keep], name="equity", line={"color": "#1f5fa8"}, **axis.hover(ts[keep])),
                     go.Scatter(x=x, y=hold[keep], name="buy and hold", line={"color": "#999", "dash": "dot"},
                                **axis.hover(ts[keep]))])
    for k, d in enumerate(top):
        fig.add_vrect(x0=float(axis.x([d.start])[0]), x1=float(axis.x([d.recovery or int(ts[-1])])[0]),
                      fillcolor="#c0392b", opacity=0.08, line_width=0, annotation_text=f"#{k + 1}",
                      annotation_position="top left")
    fig.update_layout(title="Equity and buy-and-hold of the same instruments (shaded: the top 5 drawdowns)",
                      xaxis=axis.layout(), yaxis={"title": {"text": "equity"}, "type": "linear"},
                      updatemenus=[{"type": "buttons", "direction": "right", "x": 1, "y": 1.25, "buttons": [
                          {"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
                          {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]}]}])
    sections.append("<h2>Equity</h2>" + _figure("equity", fig, tall=True)
                    + '<p class="note">Click a legend entry to hide its line; the axes rescale to the rest.</p>')

    # drawdown: its lowest point is the summary's max_drawdown, marked
    fig = go.Figure(go.Scatter(x=x, y=dd[keep] * 100, name="drawdown", fill="tozeroy",
                               line={"color": "#b03030", "width": 1}, **axis.hover(ts[keep])))
    low = int(np.argmin(dd))
    if dd[low] < 0:
        fig.add_annotation(x=float(axis.x([ts[low]])[0]), y=float(dd[low] * 100), showarrow=True, arrowhead=2,
                           text=f"max drawdown {dd[low] * 100:.2f}% on {_iso(int(ts[low]))}", ax=40, ay=30)
    fig.update_layout(title="Drawdown (% below the running peak, after every event)", xaxis=axis.layout(),
                      yaxis={"title": {"text": "%"}, "ticksuffix": "%"})
    rows = [[f"#{k + 1}", _pct(d.depth), _iso(d.start), _iso(d.trough), _iso(d.recovery),
             _duration(d.duration_ns) + ("" if d.recovery else " (to the end)")] for k, d in enumerate(top)]
    table = (_table(["", "depth", "start (peak)", "trough", "recovery", "duration"], rows, "", "drawdowns") if rows
             else '<p class="note">The equity never fell below its peak.</p>')
    sections.append("<h2>Drawdowns</h2>" + _figure("drawdown", fig) + "<h3>Top 5</h3>" + table)

    # position and exposure
    pos = _positions(result, len(names))
    multiplier = np.array([m for m, _ in result.policy.checked.contract_table])
    gross = np.nansum(np.abs(pos) * (np.nan_to_num(prices) * multiplier), axis=1)
    exposure = np.divide(gross, eq, out=np.full(n, np.nan), where=eq > 0) * 100
    keep_p = decimate(n, exposure, *pos.T)
    xp, hover = axis.x(ts[keep_p]), axis.hover(ts[keep_p])
    fig = go.Figure([go.Scatter(x=xp, y=pos[keep_p, i], name=f"{name} position", line_shape="hv", **hover)
                     for i, name in enumerate(names)])
    fig.add_trace(go.Scatter(x=xp, y=exposure[keep_p], name="gross exposure (% of equity)", yaxis="y2",
                             line={"color": "#999", "width": 1}, **hover))
    fig.update_layout(title=f"Position and exposure (held after {s['exposure'] * 100:.2f}% of events)",
                      xaxis=axis.layout(), yaxis={"title": {"text": "position (units)"}},
                      yaxis2={"title": {"text": "% of equity"}, "overlaying": "y", "side": "right",
                              "ticksuffix": "%", "showgrid": False})
    sections.append("<h2>Position and exposure</h2>" + _figure("position", fig))

    sections.append("<h2>Trades on the price</h2>" + "".join(_price_figures(result, axis, price_col)))
    sections.append(_returns_section(axis, days, ret))
    sections.append(f"<h2>Trades ({s['trades']:,} closed, {s['open_trades']:,} open)</h2>" + trades_html)
    reasons = [[k, f"{v:,}"] for k, v in sorted(s["reasons"].items())]
    sections.append("<h2>Reason codes</h2>" + (_table(["code", "decisions"], reasons) if reasons else
                                               '<p class="note">No risk step changed or blocked a decision.</p>'))
    _write_page(path, s, head + "".join(sections))


def _returns_section(axis: TimeAxis, days: np.ndarray, ret: np.ndarray) -> str:
    """Monthly returns heatmap, yearly table, rolling Sharpe and the daily returns' histogram."""
    months, monthly = M.period_returns(days, ret, "M")
    years, yearly = M.period_returns(days, ret, "Y")
    year_of = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month_of = months.astype(np.int64) % 12
    span = np.arange(year_of.min(), year_of.max() + 1)
    grid = np.full((len(span), 12), np.nan)
    grid[year_of - span[0], month_of] = monthly * 100
    text = np.where(np.isnan(grid), "", np.char.mod("%.2f", np.round(np.nan_to_num(grid), 2) + 0.0))
    limit = float(np.nanmax(np.abs(grid))) or 1.0
    fig = go.Figure(go.Heatmap(z=grid, x=["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                          "Nov", "Dec"], y=[str(y) for y in span], text=text,
                               texttemplate="%{text}", colorscale="RdYlGn", zmid=0, zmin=-limit, zmax=limit,
                               hovertemplate="%{y} %{x}: %{z:.2f}%<extra></extra>", colorbar={"ticksuffix": "%"}))
    fig.update_layout(title="Monthly returns (%)", yaxis={"autorange": "reversed", "type": "category"})
    heat = _figure("monthly", fig, tall=len(span) > 8)
    yearly_rows = [[str(y), _pct(r)] for y, r in zip(years.astype(np.int64) + 1970, yearly)]

    roll = M.rolling_sharpe(ret)
    if len(roll):
        end = days[M.ROLLING_DAYS - 1:]  # each window's last day (on an ordinal axis, that day's first event)
        fig = go.Figure(go.Scatter(x=axis.x(end), y=roll, name="rolling Sharpe", line={"color": "#6a3d9a"},
                                   **axis.hover(end)))
        fig.update_layout(title=f"Rolling Sharpe ({M.ROLLING_DAYS} days, annualised)", xaxis=axis.layout())
        rolling = _figure("rolling-sharpe", fig)
    else:
        rolling = (f'<p class="note">Rolling Sharpe: {len(ret):,} days of returns, fewer than its '
                   f"{M.ROLLING_DAYS}-day window.</p>")
    fig = go.Figure(go.Histogram(x=ret * 100, nbinsx=80, marker={"color": "#1f5fa8"}, name="days"))
    fig.update_layout(title=f"Daily returns ({len(ret):,} days)", xaxis={"title": {"text": "%"}, "ticksuffix": "%"},
                      yaxis={"title": {"text": "days"}}, bargap=0.02)
    return ("<h2>Returns</h2>" + heat + '<div class="grid"><div><h3>Yearly</h3>'
            + _table(["year", "return"], yearly_rows, "scroll") + f'</div><div style="flex:1">{rolling}</div></div>'
            + _figure("histogram", fig))


def _write_page(path: str | Path, s: dict, body: str) -> None:
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(s['policy'])} backtest</title>
<style>{STYLE}</style>
<script>{get_plotlyjs()}</script>
</head><body>
{body}
<script>
for (const data of document.querySelectorAll('script[type="application/json"][id^="fig-"]')) {{
  const fig = JSON.parse(data.textContent);
  Plotly.newPlot("chart-" + data.id.slice(4), fig.data, fig.layout, {json.dumps(CONFIG)});
}}
</script>
</body></html>
"""
    Path(path).write_text(page)
