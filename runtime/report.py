"""`--report FILE`: one self-contained HTML page (inline SVG, no scripts, no network)."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from policyc.compiler import layout as L

from .backtest import BacktestResult, format_summary, summary

W, H, PAD = 900, 220, 40
TICKS = 6  # labels on the time axis, the first and last event included
NS_PER_S = 1_000_000_000
# (tick spacing in ns, label unit): the coarsest unit that still tells the ticks apart
_UNITS = ((86_400 * NS_PER_S, "D"), (60 * NS_PER_S, "m"), (NS_PER_S, "s"), (0, "ms"))


def _downsample(x: np.ndarray, y: np.ndarray, points: int = 1500):
    if len(x) <= points:
        return x, y
    idx = np.linspace(0, len(x) - 1, points).astype(int)
    return x[idx], y[idx]


def _scale(values, lo, hi, a, b):
    span = hi - lo if hi > lo else 1.0
    return a + (np.asarray(values, float) - lo) / span * (b - a)


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


def _chart(title: str, x: np.ndarray, y: np.ndarray, color: str, marks=(), fill=False) -> str:
    if len(x) == 0:
        return f"<h2>{html.escape(title)}</h2><p>no data</p>"
    xs, ys = _downsample(x, y)
    finite = ys[np.isfinite(ys)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    x0, x1 = float(x[0]), float(x[-1])
    px = _scale(xs, x0, x1, PAD, W - 10)
    py = _scale(ys, lo, hi, H - 25, 10)
    path = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py) if np.isfinite(b))
    body = [f'<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{path}"/>']
    if fill:
        body.insert(0, f'<polygon fill="{color}" opacity="0.15" points="{PAD},{H - 25} {path} {W - 10},{H - 25}"/>')
    for mx, my, shape, mcolor in marks:
        cx, cy = float(_scale([mx], x0, x1, PAD, W - 10)[0]), float(_scale([my], lo, hi, H - 25, 10)[0])
        pts = f"{cx},{cy - 6} {cx - 5},{cy + 4} {cx + 5},{cy + 4}" if shape == "up" else \
            f"{cx},{cy + 6} {cx - 5},{cy - 4} {cx + 5},{cy - 4}"
        body.append(f'<polygon fill="{mcolor}" points="{pts}"/>')
    ticks = time_ticks(int(x[0]), int(x[-1]))
    axis = [f'<text x="2" y="14" font-size="11">{hi:,.4g}</text>'
            f'<text x="2" y="{H - 28}" font-size="11">{lo:,.4g}</text>']
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
    sections = [_chart("Equity", ts, eq, "#1f5fa8", fill=True),
                _chart("Drawdown (%)", ts, drawdown, "#b03030", fill=True)]
    price_col = result.policy.columns.index("price")
    for i, name in enumerate(result.policy.instruments):
        mine = result.events.inst == i
        fills = result.fills[result.fills[:, L.O_INST] == i]
        marks = [(ts[int(o[L.O_FILL_EVENT])], o[L.O_FILL_PRICE], "up" if o[L.O_QTY] > 0 else "down",
                  "#1a8f3a" if o[L.O_QTY] > 0 else "#c0392b") for o in fills[:400]]
        sections.append(_chart(f"{name} price with entries (green) and exits (red)", ts[mine],
                               result.events.vals[mine, price_col], "#444", marks))
    reasons = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(s["reasons"].items())) \
        or "<tr><td colspan=2>no risk step changed a decision</td></tr>"
    files = "".join(f"<li>{html.escape(str(f))}</li>" for f in s["data"])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(s['policy'])} backtest</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}pre{{background:#f6f6f6;padding:12px}}
table{{border-collapse:collapse}}td{{border:1px solid #ddd;padding:3px 8px}}h2{{font-size:16px;margin-top:24px}}</style>
</head><body>
<h1>Backtest of <code>{html.escape(s['policy'])}</code> v{s['version']}</h1>
<p>policy_hash <code>{s['policy_hash']}</code><br>build_hash <code>{s['build_hash']}</code></p>
<p>Data:</p><ul>{files}</ul>
<h2>Summary</h2><pre>{html.escape(format_summary(s))}</pre>
{''.join(sections)}
<h2>Reason codes (decisions changed or blocked by a risk step)</h2><table>{reasons}</table>
</body></html>
"""
    Path(path).write_text(page)
