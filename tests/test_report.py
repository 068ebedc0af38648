"""The HTML report's time axes: labels are UTC dates (or times) inside the data's range,
placed where their time is, read back from the page `make demo` writes."""
from __future__ import annotations

import re

import numpy as np
import pytest

from policyc.compiler.build import compile_policy
from policyc.runtime import demo
from policyc.runtime.report import PAD, W, time_ticks, write_report

NS_DAY = 86_400 * 10**9
T0 = 1_704_205_800 * 10**9  # 2024-01-02 14:30 UTC
LABEL = re.compile(r'<text class="time" x="([\d.]+)"[^>]*>([^<]+)</text>')


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """(report page, event timestamps in ns) of `make demo`'s backtest."""
    result = demo.backtest(compile_policy(demo.EXAMPLE))
    path = tmp_path_factory.mktemp("report") / "ema_cross.html"
    write_report(result, path)
    return path.read_text(), result.events.ts


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
