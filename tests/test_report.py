"""The HTML tearsheet (`--report`) of `make demo`'s backtest, read back two ways: from the
Plotly figures' JSON in the page (always), and as headless Chromium renders it (where a
Chromium is on PATH, or named by $POLICYC_CHROMIUM). Both check that the time axes carry dates of the data,
that the drawdown chart reaches the summary's max_drawdown, and that the trade count is
the summary's."""
from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from policyc.compiler.build import Events, compile_policy
from policyc.compiler.layout import FILL_SAME
from policyc.runtime import demo
from policyc.runtime.backtest import load_events, run_backtest, summary
from policyc.runtime.report import decimate, write_report

#: A headless Chromium: $POLICYC_CHROMIUM, else the first of these names on PATH (None: none installed).
CHROMIUM = os.environ.get("POLICYC_CHROMIUM") or next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))), None)
INTRADAY = demo.ROOT / "data" / "index-2006-5min.csv"
TIME_CHARTS = ("equity", "drawdown", "position", "price-0", "rolling-sharpe")
MS = 1_000_000


@pytest.fixture(scope="module")
def demo_policy():
    return compile_policy(demo.EXAMPLE)


@pytest.fixture(scope="module")
def demo_run(demo_policy, tmp_path_factory):
    """(report path, backtest result) of `make demo`'s backtest."""
    result = demo.backtest(demo_policy)
    path = tmp_path_factory.mktemp("report") / "ema_cross.html"
    write_report(result, path)
    return path, result


def figures(page: str) -> dict[str, dict]:
    """Every figure of the page by name, its typed arrays (`bdata`) decoded."""
    def decode(obj):
        if isinstance(obj, dict):
            if "bdata" in obj and "dtype" in obj:
                return np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
            return {k: decode(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        return obj
    found = re.findall(r'<script type="application/json" id="fig-([\w-]+)">(.*?)</script>', page, re.S)
    return {name: decode(json.loads(text.replace("<\\/", "</"))) for name, text in found}


def table_rows(page: str, ident: str) -> list[list[str]]:
    body = re.search(rf'<table id="{ident}">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)] for row in re.findall(r"<tr>(.*?)</tr>", body)]


def closed_trades_listed(page: str) -> int:
    return sum(row[4] != "open" for row in table_rows(page, "trades"))


def stat(page: str, name: str) -> str:
    return dict((r[0], r[1]) for r in table_rows(page, "stats"))[name]


# ---- from the figures' JSON ------------------------------------------------------------------

def test_time_axes_are_dates_spanning_the_data(demo_run):
    path, result = demo_run
    figs = figures(path.read_text())
    first, last = int(result.events.ts[0]), int(result.events.ts[-1])
    for name in TIME_CHARTS:
        axis = figs[name]["layout"]["xaxis"]
        assert axis["type"] == "date", name  # daily bars: a date axis, x in ms since the epoch
        assert axis["range"] == [first / MS, last / MS]
        for trace in figs[name]["data"]:
            x = np.asarray(trace["x"], dtype=np.float64)
            assert first / MS <= x.min() and x.max() <= last / MS, (name, trace["name"])
    assert str(np.datetime64(int(figs["equity"]["data"][0]["x"][0]), "ms")) == "1995-01-03T00:00:00.000"


def test_intraday_axes_leave_out_nights_and_label_real_times(demo_policy, tmp_path):
    events, _ = load_events(demo_policy, [(None, str(INTRADAY))])
    result = run_backtest(demo_policy, events, FILL_SAME, progress=False)
    write_report(result, tmp_path / "intraday.html")
    page = (tmp_path / "intraday.html").read_text()
    stamps = np.unique(events.ts)
    for name in TIME_CHARTS[:4]:
        axis = figures(page)[name]["layout"]["xaxis"]
        assert axis["type"] == "linear" and axis["range"] == [0, len(stamps) - 1]
        labels = [np.datetime64(t.replace(" ", "T"), "ns").astype(np.int64) for t in axis["ticktext"]]
        # each tick is labelled with the UTC time of the event it stands on, to the minute
        assert labels == (stamps[axis["tickvals"]] // (60 * 10**9) * 60 * 10**9).tolist()
        assert axis["ticktext"][0] == "2006-01-02 09:05" and axis["ticktext"][-1] == "2006-01-30 17:30"
    # the overnight gap takes one step of the axis, as a 5-minute one does
    equity = figures(page)["equity"]["data"][0]
    assert np.array_equal(np.asarray(equity["x"]), np.arange(len(stamps)))


def test_drawdown_chart_reaches_the_summary_s_max_drawdown(demo_run):
    path, result = demo_run
    page = path.read_text()
    s = summary(result)
    chart = figures(page)["drawdown"]
    y = np.asarray(chart["data"][0]["y"])
    assert len(y) == len(result.events)  # 5,036 points: drawn whole
    assert y.min() == pytest.approx(-s["max_drawdown"] * 100, abs=1e-9)
    assert chart["layout"]["annotations"][0]["text"].startswith(f"max drawdown -{s['max_drawdown'] * 100:.2f}%")
    assert stat(page, "max drawdown") == f"-{s['max_drawdown'] * 100:.2f}%"
    deepest = table_rows(page, "drawdowns")[0]
    assert deepest[1] == f"-{s['max_drawdown'] * 100:.2f}%"


def test_trade_count_and_every_fill_are_the_summary_s(demo_run):
    path, result = demo_run
    page = path.read_text()
    s = summary(result)
    assert closed_trades_listed(page) == s["trades"] == int(stat(page, "closed trades")) > 0
    assert f"<h2>Trades ({s['trades']:,} closed, {s['open_trades']:,} open)</h2>" in page
    marks = [t for t in figures(page)["price-0"]["data"] if t["type"] == "scattergl"]
    assert sum(len(t["x"]) for t in marks) == s["fills"] == 105  # every fill, not the first few hundred
    assert {t["name"] for t in marks} <= {"buys opening", "buys reducing or closing", "sells opening",
                                          "sells reducing or closing"}
    assert all("@" in t["hovertemplate"] and "reasons" in t["hovertemplate"] for t in marks)
    assert s["policy_hash"] in page and s["build_hash"] in page and "orcl-1995-2014.csv" in page


def test_the_page_works_offline_and_is_the_same_for_the_same_inputs(demo_run, demo_policy, tmp_path):
    path, _ = demo_run
    page = path.read_text()
    assert not re.search(r'<script[^>]+src=|<link[^>]+href="http', page)  # plotly.js inlined, nothing fetched
    assert "Plotly.newPlot" in page
    write_report(demo.backtest(demo_policy), tmp_path / "again.html")  # another run: another elapsed time
    assert (tmp_path / "again.html").read_bytes() == path.read_bytes()


def test_decimation_keeps_every_extreme():
    rng = np.random.default_rng(7)
    y = rng.normal(size=100_000).cumsum()
    y[12_345], y[67_891] = y.min() - 50, y.max() + 50  # one-event spikes
    z = -y
    z[40_000] = np.nan
    keep = decimate(len(y), y, z, buckets=500)
    assert len(keep) <= 4 * 500 * 2 and (np.diff(keep) > 0).all()
    assert keep[0] == 0 and keep[-1] == len(y) - 1
    assert y[keep].min() == y.min() and y[keep].max() == y.max() and np.nanmin(z[keep]) == np.nanmin(z)
    assert np.array_equal(decimate(10, y[:10]), np.arange(10))


def test_edge_cases_give_a_clear_page(demo_policy, demo_run, tmp_path):
    _, full = demo_run
    ev = full.events
    cut = lambda k: Events(ev.ts[:k], ev.kind[:k], ev.inst[:k], ev.vals[:k])  # noqa: E731
    for k, expect in ((0, "No events"), (1, "n/a (fewer than 2 days)"), (40, "n/a (no variation)")):
        result = run_backtest(demo_policy, cut(k), FILL_SAME, progress=False)
        write_report(result, tmp_path / f"cut{k}.html")
        page = (tmp_path / f"cut{k}.html").read_text()
        assert expect in page
        shown = re.sub(r"<script.*?</script>", "", page, flags=re.S)
        assert not re.search(r"\bnan\b|\binf\b", shown, re.I), k  # undefined figures say n/a and why
        if k:  # flat: no trade, no drawdown
            assert "No trades" in page and "The equity never fell below its peak." in page
    result = run_backtest(demo_policy, ev, FILL_SAME, progress=False, record_equity=False)
    with pytest.raises(ValueError, match="record_equity=True"):
        write_report(result, tmp_path / "none.html")


# ---- in a browser ----------------------------------------------------------------------------------

def render(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,4000", "--virtual-time-budget=20000", *args,
         page.as_uri()], capture_output=True, text=True, timeout=120)


def rendered_chart(dom: str, name: str) -> str:
    start = dom.index(f'id="chart-{name}"')
    end = dom.find('<script type="application/json"', start)
    return dom[start:end]


def ticks(chart: str, axis: str) -> list[tuple[float, str]]:
    """(position in px along the axis, label) of each rendered tick of `axis` (x or y)."""
    out = []
    for tag in re.findall(rf'<g class="{axis}tick"><text([^>]*)>', chart):
        label = html.unescape(re.search(r'data-unformatted="([^"]*)"', tag).group(1))
        move = re.search(r"translate\(([-\d.e]+),\s*([-\d.e]+)\)", tag)
        out.append((float(move.group(1 if axis == "x" else 2)) if move else 0.0, label))
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (or $POLICYC_CHROMIUM): the report's figures "
                                              "are checked from their JSON only")
def test_the_report_as_chromium_renders_it(demo_run, tmp_path):
    path, result = demo_run
    done = render(path, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    s = summary(result)
    first, last = (np.datetime64(int(t), "ns") for t in result.events.ts[[0, -1]])
    for name in TIME_CHARTS:
        labels = [label for _, label in ticks(rendered_chart(dom, name), "x")]
        assert len(labels) >= 3, name
        for label in labels:
            date = np.datetime64(label.replace(" ", "T"))  # raises on anything but an ISO date
            assert first <= date <= last, (name, label)

    # the drawdown chart's lowest point, read back through its rendered value axis
    chart = rendered_chart(dom, "drawdown")
    y_ticks = [(px, float(label.replace("\u2212", "-").rstrip("%"))) for px, label in ticks(chart, "y")]
    (p0, v0), (p1, v1) = y_ticks[0], y_ticks[-1]
    path_d = re.search(r'<path class="js-line"[^>]* d="([^"]+)"', chart).group(1)
    top = float(re.search(r'<g class="overplot"><g class="xy" transform="translate\([-\d.e]+,\s*([-\d.e]+)\)', chart).group(1))
    lowest_px = top + max(float(y) for y in re.findall(r"[ML][-\d.e]+,([-\d.e]+)", path_d))  # in the plot area
    drawn = v0 + (lowest_px - p0) * (v1 - v0) / (p1 - p0)
    px_per_pct = abs((p1 - p0) / (v1 - v0))
    assert drawn == pytest.approx(-s["max_drawdown"] * 100, abs=0.5 / px_per_pct)  # within half a pixel
    assert f"max drawdown -{s['max_drawdown'] * 100:.2f}%" in html.unescape(chart)

    assert closed_trades_listed(dom) == s["trades"] == int(stat(dom, "closed trades"))
    shot = tmp_path / "report.png"
    assert render(path, tmp_path, f"--screenshot={shot}").returncode == 0 and shot.stat().st_size > 50_000


@pytest.mark.parametrize("value, shown", [(-0.004, "0.00"), (-0.006, "-0.01"), (0.004, "0.00"), (-1234.565, "-1,234.57"),
                                          (float("nan"), "n/a")])
def test_money_never_shows_a_negative_zero(value, shown):
    """A trade that lost a fraction of a cent is shown as 0.00, as a trader writes it."""
    from policyc.runtime.report import _money

    assert _money(value) == shown
