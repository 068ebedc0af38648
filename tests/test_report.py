"""The HTML report's axes: time labels are UTC dates (or times) inside the data's range,
placed where their time is; value labels are round money figures (percent on the
drawdown chart) on gridlines, placed where their value is; the drawdown chart reaches
the summary's max_drawdown; the same inputs write the same page. All read back from
the page `make demo` writes."""
from __future__ import annotations

import re

import numpy as np
import pytest

from policyc.compiler.build import compile_policy
from policyc.runtime import demo
from policyc.runtime.backtest import summary
from policyc.runtime.report import H, PAD, W, _downsample, time_ticks, value_ticks, write_report

NS_DAY = 86_400 * 10**9
T0 = 1_704_205_800 * 10**9  # 2024-01-02 14:30 UTC
LABEL = re.compile(r'<text class="time" x="([\d.]+)"[^>]*>([^<]+)</text>')
VALUE = re.compile(r'<text class="value" x="[\d.]+" y="([\d.]+)"[^>]*>([^<]+)</text>')
GRID = re.compile(r'<line x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)" y2="\1" stroke="#eee"/>')
LINE = re.compile(r'<polyline [^>]*points="([^"]+)"')


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


@pytest.fixture(scope="module")
def demo_report(demo_run):
    """(report page, event timestamps in ns) of `make demo`'s backtest."""
    path, result = demo_run
    return path.read_text(), result.events.ts


def value_axis(chart: str) -> list[tuple[float, float]]:
    """(y in px, value) of each value label of a chart, top first."""
    out = []
    for y, text in VALUE.findall(chart):
        assert re.fullmatch(r"-?\d{1,3}(,\d{3})*(\.\d+)?%?", text), text  # `100,500`, `-1.5%`: no `1.006e+05`
        out.append((float(y) - 4, float(text.rstrip("%").replace(",", ""))))
    return out


def test_every_chart_is_labelled_with_dates_of_the_data(demo_report):
    page, ts = demo_report
    first, last = int(ts[0]), int(ts[-1])
    charts = page.split("<svg")[1:]
    assert len(charts) == 3  # equity, drawdown, ORCL price
    for chart in charts:
        labels = [(float(x), text) for x, text in LABEL.findall(chart)]
        assert len(labels) >= 2
        dates = [np.datetime64(text, "D") for _, text in labels]
        assert str(dates[0]) == "1995-01-03" and str(dates[-1]) == "2014-12-31"
        assert dates == sorted(set(dates))
        for (x, _), date in zip(labels, dates):
            day = int(date.astype("datetime64[ns]").astype(np.int64))
            assert first - NS_DAY < day <= last
            # the label sits where its date is on the axis (0.1 px is about a day here)
            at = first + (x - PAD) / (W - 10 - PAD) * (last - first)
            assert abs(at - day) < 2 * NS_DAY


def test_ticks_closer_than_a_day_show_the_time():
    session = time_ticks(T0, T0 + 6 * 3600 * 10**9 + 30 * 60 * 10**9)
    assert [label for _, label in session] == ["2024-01-02 14:30", "2024-01-02 15:48", "2024-01-02 17:06",
                                               "2024-01-02 18:24", "2024-01-02 19:42", "2024-01-02 21:00"]
    assert [label for _, label in time_ticks(T0, T0 + 10 * 10**9)][-1] == "2024-01-02 14:30:10"
    assert time_ticks(T0, T0) == [(T0, "2024-01-02 14:30:00.000")]


def test_ticks_over_a_long_span_do_not_overflow():
    ticks = time_ticks(0, 2**62)  # 146 years of nanoseconds
    assert ticks[0] == (0, "1970-01-01") and ticks[-1] == (2**62, "2116-02-20")


def test_every_value_axis_has_round_labels_on_gridlines_where_their_value_is(demo_report):
    page, _ = demo_report
    equity, drawdown, price = page.split("<svg")[1:]
    for chart, percent in ((equity, False), (drawdown, True), (price, False)):
        axis = value_axis(chart)
        assert 3 <= len(axis) <= 8
        assert all(text.endswith("%") == percent for _, text in VALUE.findall(chart))
        ys, values = [y for y, _ in axis], [v for _, v in axis]
        assert ys == sorted(ys, reverse=True) and ys[-1] == pytest.approx(10) and ys[0] == pytest.approx(H - 25)
        steps = np.diff(values)
        assert np.allclose(steps, steps[0]) and steps[0] > 0  # one round step apart, evenly placed:
        assert np.allclose(np.diff(ys), np.diff(ys)[0], atol=0.1)
        gridlines = {float(y) for y in GRID.findall(chart)}
        assert all(any(abs(y - g) < 0.06 for g in gridlines) for y in ys)  # each label on its gridline
    assert [text for _, text in VALUE.findall(equity)] == ["99,000", "99,500", "100,000", "100,500", "101,000"]
    assert [text for _, text in VALUE.findall(drawdown)] == ["-1.5%", "-1.0%", "-0.5%", "0.0%"]


def test_value_ticks_are_round_and_cover_the_data():
    assert value_ticks(99_348.5, 100_622.1)[:2] == (99_000.0, 101_000.0)
    assert [label for _, label in value_ticks(12.3, 13.1)[2]] == ["12.2", "12.4", "12.6", "12.8", "13.0", "13.2"]
    assert [label for _, label in value_ticks(-0.9, 0.0, percent=True)[2]] == \
        ["-1.00%", "-0.75%", "-0.50%", "-0.25%", "0.00%"]  # a 2.5 step needs one more decimal; no `-0.00%`
    assert [label for _, label in value_ticks(-3e6, 1.2e7)[2]] == \
        ["-5,000,000", "0", "5,000,000", "10,000,000", "15,000,000"]
    lo, hi, ticks = value_ticks(100_000.0, 100_000.0)  # a flat equity curve still gets an axis
    assert lo < 100_000.0 < hi and "100,000" in [label for _, label in ticks]
    # no drawdown, or one of rounding noise: an axis below 0, no labels of 14 decimals
    assert [label for _, label in value_ticks(0.0, 0.0, percent=True)[2]][-1] == "0.00%"
    assert value_ticks(-1e-14, 0.0, percent=True)[2] == [(-0.01, "-0.01%"), (0.0, "0.00%")]
    assert [label for _, label in value_ticks(1.234e-5, 1.299e-5, resolution=1e-8)[2]] == \
        ["0.0000122", "0.0000124", "0.0000126", "0.0000128", "0.0000130"]  # prices under a cent


def test_the_drawdown_chart_reaches_the_summarys_max_drawdown(demo_run):
    path, result = demo_run
    drawdown = path.read_text().split("<svg")[2]
    assert len(result.equity) > 1500  # the series is downsampled for the chart
    max_drawdown = summary(result)["max_drawdown"] * 100
    # the lowest point drawn, read back through the value axis's labels
    (y_top, v_top), *_, (y_bottom, v_bottom) = value_axis(drawdown)
    lowest = max(float(point.split(",")[1]) for point in LINE.search(drawdown).group(1).split())
    drawn = v_bottom + (lowest - y_bottom) / (y_top - y_bottom) * (v_top - v_bottom)
    assert drawn == pytest.approx(-max_drawdown, abs=0.002)  # 0.1 px is 0.0008% here
    # and it is labelled with the summary's figure
    assert f"max_drawdown              {max_drawdown:.2f}%" in path.read_text()
    assert re.search(r'<text class="low"[^>]*>([^<]+)</text>', drawdown).group(1) == f"-{max_drawdown:.2f}% max drawdown"


def test_downsampling_keeps_every_bucket_s_extremes():
    rng = np.random.default_rng(7)
    x = np.arange(100_000)
    y = rng.normal(size=len(x)).cumsum()
    y[12_345], y[67_891] = y.min() - 50, y.max() + 50  # one-event spikes
    xs, ys = _downsample(x, y, points=1500)
    assert len(xs) <= 1502 and (np.diff(xs) > 0).all()
    assert ys.min() == y[12_345] and ys.max() == y[67_891]
    assert xs[0] == 0 and xs[-1] == len(x) - 1
    assert (ys == y[xs]).all()


def test_the_same_inputs_write_the_same_report_byte_for_byte(demo_run, demo_policy, tmp_path):
    path, first = demo_run
    again = demo.backtest(demo_policy)  # another run: another elapsed time
    write_report(again, tmp_path / "again.html")
    assert (tmp_path / "again.html").read_bytes() == path.read_bytes()
    page = path.read_text()
    assert "elapsed_s" not in page and "events_per_s" not in page  # they belong to the console summary
