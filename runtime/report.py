"""`--report FILE`: one self-contained HTML page (inline SVG, no scripts, no network)."""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from policyc.compiler import layout as L

from .backtest import BacktestResult, format_summary, summary

W, H, PAD = 900, 220, 64  # PAD: room left of the plot for the value labels (`10,000,000`)
TICKS = 6  # labels on the time axis, the first and last event included
VALUE_TICKS = 5  # about this many labelled gridlines on the value axis
CONSOLE_ONLY = ("elapsed_s", "events_per_s")  # summary rows measured anew each run: left out of the page
NS_PER_S = 1_000_000_000
# (tick spacing in ns, label unit): the coarsest unit that still tells the ticks apart
_UNITS = ((86_400 * NS_PER_S, "D"), (60 * NS_PER_S, "m"), (NS_PER_S, "s"), (0, "ms"))


def _downsample(x: np.ndarray, y: np.ndarray, points: int = 1500):
    """At most about `points` points of the series: the first and the last, and the
    minimum and the maximum of each of `points // 2` consecutive buckets, in order, so
    every extreme survives (the drawdown chart's bottom is the summary's max_drawdown)."""
    n = len(x)
    if n <= points:
        return x, y
    finite = np.isfinite(y)
    low, high = np.where(finite, y, np.inf), np.where(finite, y, -np.inf)
    edges = np.linspace(0, n, points // 2 + 1).astype(int)
    keep = [0, n - 1]
    for a, b in zip(edges[:-1], edges[1:]):
        keep += [a + int(np.argmin(low[a:b])), a + int(np.argmax(high[a:b]))]
    idx = np.unique(keep)
    return x[idx], y[idx]


def _scale(values, lo, hi, a, b):
    span = hi - lo if hi > lo else 1.0
    return a + (np.asarray(values, float) - lo) / span * (b - a)


def value_ticks(lo: float, hi: float, percent: bool = False,
                resolution: float = 0.01) -> tuple[float, float, list[tuple[float, str]]]:
    """The value axis for data from `lo` to `hi`: about VALUE_TICKS ticks a round step
    apart (1, 2, 2.5 or 5 times a power of ten, and at least `resolution`: cents, or
    hundredths of a percent), as (axis bottom, axis top, [(value, label)]). The axis runs
    from the tick at or below `lo` to the one at or above `hi`. Labels have thousands
    separators and as many decimals as the step needs (`99,400`, `12.50`), with `%`
    when `percent`."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo <= max(abs(lo), abs(hi)) * 1e-9:  # a flat series (up to rounding): a band around it
        pad = abs(lo) * 0.001 or 1.0
        lo, hi = lo - pad, (hi + pad if hi else hi)  # at 0 (no drawdown), the band below
    raw = max((hi - lo) / (VALUE_TICKS - 1), resolution)
    power = 10.0 ** math.floor(math.log10(raw))
    mantissa = next(m for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw * (1 - 1e-9))
    step = mantissa * power
    decimals = max(0, -math.floor(math.log10(step) + 1e-9) + (mantissa == 2.5))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    if first == last:  # all within rounding of one tick: one step more, below it at or under 0
        first, last = (first - 1, last) if hi <= 0 else (first, last + 1)
    values = [round(k * step, decimals) + 0.0 for k in range(first, last + 1)]  # + 0.0: no `-0`
    suffix = "%" if percent else ""
    return values[0], values[-1], [(v, f"{v:,.{decimals}f}{suffix}") for v in values]


def time_ticks(first: int, last: int) -> list[tuple[int, str]]:
    """Evenly spaced ticks from `first` to `last` (int ns since the epoch, UTC) with their
    UTC labels: dates (`2014-12-31`), or minutes, seconds or milliseconds when the ticks
    are closer than a day, a minute or a second (`2024-01-02 09:30`)."""
    span = last - first
    # Python ints: span * i would overflow int64 for spans over 58 years
    ticks = [first + span * i // (TICKS - 1) for i in range(TICKS)]
    unit = next(u for step, u in _UNITS if span // (TICKS - 1) >= step)
    labels = [str(s).replace("T", " ") for s in np.datetime_as_string(np.array(ticks, "datetime64[ns]"), unit=unit)]
    out: list[tuple[int, str]] = []
    for t, label in zip(ticks, labels):
        if not out or out[-1][1] != label:  # ticks under 1 ms apart share a label
            out.append((t, label))
    return out


def _chart(title: str, x: np.ndarray, y: np.ndarray, color: str, marks=(), fill=None, percent=False,
           low_note: str | None = None, resolution: float = 0.01) -> str:
    """A line chart. `fill`: the value down or up to which the area under the line is
    shaded ("bottom": the axis's bottom), None for no shading. `low_note`: mark the
    lowest point with its value (2 decimals) and this text. `resolution`: the finest
    step of the value axis."""
    if len(x) == 0:
        return f"<h2>{html.escape(title)}</h2><p>no data</p>"
    finite = y[np.isfinite(y)]
    lo, hi, values = value_ticks(*((float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)),
                                 percent=percent, resolution=resolution)
    xs, ys = _downsample(x, y)
    x0, x1 = float(x[0]), float(x[-1])
    px = _scale(xs, x0, x1, PAD, W - 10)
    py = _scale(ys, lo, hi, H - 25, 10)
    path = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py) if np.isfinite(b))
    body = [f'<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{path}"/>']
    if fill is not None:
        base = H - 25 if fill == "bottom" else float(_scale([fill], lo, hi, H - 25, 10)[0])
        body.insert(0, f'<polygon fill="{color}" opacity="0.15" points="{PAD},{base:.1f} {path} {W - 10},{base:.1f}"/>')
    for mx, my, shape, mcolor in marks:
        cx, cy = float(_scale([mx], x0, x1, PAD, W - 10)[0]), float(_scale([my], lo, hi, H - 25, 10)[0])
        pts = f"{cx},{cy - 6} {cx - 5},{cy + 4} {cx + 5},{cy + 4}" if shape == "up" else \
            f"{cx},{cy + 6} {cx - 5},{cy - 4} {cx + 5},{cy - 4}"
        body.append(f'<polygon fill="{mcolor}" points="{pts}"/>')
    if low_note is not None and len(finite):
        i = int(np.nanargmin(ys))
        cx, cy = float(px[i]), float(py[i])
        anchor, dx = ("end", -6) if cx > (PAD + W) / 2 else ("start", 6)
        ty = cy + 14 if cy + 14 < H - 28 else cy - 5  # under the point if there is room above the time labels
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{color}"/>'
                    f'<text class="low" x="{cx + dx:.1f}" y="{ty:.1f}" font-size="11" text-anchor="{anchor}" '
                    f'stroke="#fff" stroke-width="3" paint-order="stroke">'
                    f'{float(ys[i]):,.2f}{"%" if percent else ""} {html.escape(low_note)}</text>')
    ticks = time_ticks(int(x[0]), int(x[-1]))
    axis = []
    for v, label in values:
        vy = float(_scale([v], lo, hi, H - 25, 10)[0])
        axis.append(f'<line x1="{PAD}" x2="{W - 10}" y1="{vy:.1f}" y2="{vy:.1f}" stroke="#eee"/>'
                    f'<text class="value" x="{PAD - 4}" y="{vy + 4:.1f}" font-size="11" text-anchor="end">{label}</text>')
    for i, (t, label) in enumerate(ticks):
        tx = float(_scale([t], x0, x1, PAD, W - 10)[0])
        anchor = "start" if i == 0 else "end" if i == len(ticks) - 1 else "middle"
        axis.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="10" y2="{H - 25}" stroke="#eee"/>'
                    f'<text class="time" x="{tx:.1f}" y="{H - 5}" font-size="11" text-anchor="{anchor}">{label}</text>')
    return (f"<h2>{html.escape(title)}</h2><svg width='{W}' height='{H}' viewBox='0 0 {W} {H}' "
            f"xmlns='http://www.w3.org/2000/svg' role='img'><rect width='{W}' height='{H}' fill='#fff' "
            f"stroke='#ddd'/>{''.join(axis)}{''.join(body)}</svg>")


def write_report(result: BacktestResult, path: str | Path) -> None:
    s = summary(result)
    ts = result.events.ts
    eq = result.equity
    curve = np.concatenate([[result.initial_equity], eq])
    peak = np.maximum.accumulate(curve)[1:]
    drawdown = (eq - peak) / peak * 100  # 0.0 at a peak, not -0.0
    sections = [_chart("Equity", ts, eq, "#1f5fa8", fill="bottom"),
                _chart("Drawdown (%)", ts, drawdown, "#b03030", fill=0.0, percent=True,
                       low_note="max drawdown")]
    price_col = result.policy.columns.index("price")
    for i, name in enumerate(result.policy.instruments):
        mine = result.events.inst == i
        fills = result.fills[result.fills[:, L.O_INST] == i]
        marks = [(ts[int(o[L.O_FILL_EVENT])], o[L.O_FILL_PRICE], "up" if o[L.O_QTY] > 0 else "down",
                  "#1a8f3a" if o[L.O_QTY] > 0 else "#c0392b") for o in fills[:400]]
        sections.append(_chart(f"{name} price with entries (green) and exits (red)", ts[mine],
                               result.events.vals[mine, price_col], "#444", marks, resolution=1e-8))
    reasons = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(s["reasons"].items())) \
        or "<tr><td colspan=2>no risk step changed a decision</td></tr>"
    files = "".join(f"<li>{html.escape(str(f))}</li>" for f in s["data"])
    # the run's timing is the console's: without it the same inputs give the same page, byte for byte
    table = "\n".join(line for line in format_summary(s).split("\n") if line.split(maxsplit=1)[0] not in CONSOLE_ONLY)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(s['policy'])} backtest</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}pre{{background:#f6f6f6;padding:12px}}
table{{border-collapse:collapse}}td{{border:1px solid #ddd;padding:3px 8px}}h2{{font-size:16px;margin-top:24px}}</style>
</head><body>
<h1>Backtest of <code>{html.escape(s['policy'])}</code> v{s['version']}</h1>
<p>policy_hash <code>{s['policy_hash']}</code><br>build_hash <code>{s['build_hash']}</code></p>
<p>Data:</p><ul>{files}</ul>
<h2>Summary</h2><pre>{html.escape(table)}</pre>
{''.join(sections)}
<h2>Reason codes (decisions changed or blocked by a risk step)</h2><table>{reasons}</table>
</body></html>
"""
    Path(path).write_text(page)
