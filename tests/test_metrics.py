"""runtime/metrics.py: hand-worked cases, and the oracle, empyrical (empyrical-reloaded),
on backtests of the bundled data. Where the conventions are the same (daily returns of
the equity at each UTC day's last event, 252 days a year) the figures agree to 1e-9;
the one difference, drawdown measured after every event rather than at daily closes, is
checked to go the documented way (docs/commands.md, "Metrics")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

empyrical = pytest.importorskip("empyrical", reason="the oracle: pip install -e '.[test]' (empyrical-reloaded)")

from policyc.compiler.build import compile_policy  # noqa: E402
from policyc.compiler.layout import FILL_SAME  # noqa: E402
from policyc.runtime import metrics as M  # noqa: E402
from policyc.runtime.backtest import load_events, run_backtest, summary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DAY = M.NS_PER_DAY
T0 = 1_704_153_600 * 10**9  # 2024-01-02 00:00 UTC
CASES = {  # (policy, data by instrument); daily: one event a UTC day, so daily closes are every event
    "ema_cross on ORCL daily bars": ("ema_cross", {"ORCL": "orcl-1995-2014.csv"}, True),
    "pairs on ORCL and NVDA daily bars": ("pairs", {"ORCL": "orcl-1995-2014.csv", "NVDA": "nvda-1999-2014.csv"},
                                          False),
    "ema_cross on 5-minute index bars": ("ema_cross", {"ORCL": "index-2006-5min.csv"}, False),
}


@pytest.fixture(scope="module", params=list(CASES))
def run(request):
    name, data, one_event_a_day = CASES[request.param]
    policy = compile_policy(ROOT / "policies" / f"{name}.yaml")
    events, _ = load_events(policy, [(k, str(ROOT / "data" / v)) for k, v in data.items()])
    result = run_backtest(policy, events, FILL_SAME, progress=False, record_equity=True)
    days, ret = M.daily_returns(events.ts, result.equity, result.initial_equity)
    return result, days, ret, one_event_a_day


def test_return_statistics_match_empyrical(run):
    result, days, ret, _ = run
    assert len(ret) > 20 and np.std(ret) > 0
    assert M.sharpe(ret) == pytest.approx(empyrical.sharpe_ratio(ret), abs=1e-9)
    assert M.sortino(ret) == pytest.approx(empyrical.sortino_ratio(ret), abs=1e-9)
    assert M.annual_return(ret) == pytest.approx(empyrical.annual_return(ret), abs=1e-9)
    assert M.annual_return(ret) == pytest.approx(empyrical.cagr(ret), abs=1e-9)
    assert M.annual_volatility(ret) == pytest.approx(empyrical.annual_volatility(ret), abs=1e-9)
    rolling = M.rolling_sharpe(ret)
    oracle = np.asarray(empyrical.roll_sharpe_ratio(ret, window=M.ROLLING_DAYS))
    if len(ret) >= M.ROLLING_DAYS:
        assert rolling.shape == oracle.shape == (len(ret) - M.ROLLING_DAYS + 1,)
        np.testing.assert_allclose(rolling, oracle, atol=1e-9, rtol=0)
    else:  # fewer days than the window: empyrical gives the Sharpe of them all, metrics no window at all
        assert rolling.shape == (0,) and oracle.shape == (1,)
    series = pd.Series(ret, index=pd.DatetimeIndex(days.astype("datetime64[ns]")))
    for unit, period in (("M", "monthly"), ("Y", "yearly")):
        keys, got = M.period_returns(days, ret, unit)
        want = empyrical.aggregate_returns(series, period)
        np.testing.assert_allclose(got, want.to_numpy(), atol=1e-9, rtol=0)
        assert len(keys) == len(want)


def test_the_summary_figures_are_these_formulas(run):
    """The kernel keeps the summary's figures in streaming form; they are these
    functions' figures on the recorded equity."""
    result, _, ret, _ = run
    s = summary(result)
    assert s["sharpe"] == pytest.approx(M.sharpe(ret), abs=1e-9)
    assert s["sortino"] == pytest.approx(M.sortino(ret), abs=1e-9)
    assert s["max_drawdown"] == pytest.approx(M.max_drawdown(result.equity, result.initial_equity), abs=1e-12)
    closed = np.array([t.pnl for t in result.trades if t.exit_event >= 0])
    stats = M.trade_stats(closed)
    assert stats.trades == s["trades"] > 0
    assert stats.win_rate == pytest.approx(s["win_rate"], abs=1e-12)
    assert stats.profit_factor == pytest.approx(s["profit_factor"], rel=1e-9)


def test_drawdown_matches_empyrical_on_daily_closes_and_is_deeper_per_event(run):
    result, days, ret, one_event_a_day = run
    per_event = M.max_drawdown(result.equity, result.initial_equity)
    oracle = -empyrical.max_drawdown(ret)  # from daily closes
    _, closes = M.daily_closes(result.events.ts, result.equity)
    assert oracle == pytest.approx(M.max_drawdown(closes, result.initial_equity), abs=1e-9)
    cagr = M.annual_return(ret)
    if one_event_a_day:
        assert per_event == pytest.approx(oracle, abs=1e-9)
        assert M.calmar(cagr, per_event) == pytest.approx(empyrical.calmar_ratio(ret), abs=1e-9)
    else:  # events within a day: the equity between daily closes can fall further
        assert per_event > oracle + 1e-4
        assert M.calmar(cagr, oracle) == pytest.approx(empyrical.calmar_ratio(ret), abs=1e-9)


# ---- hand-worked cases ----------------------------------------------------------------------

def test_daily_returns_take_each_utc_day_s_last_event():
    ts = np.array([T0 + 3600e9, T0 + 7200e9, T0 + DAY + 60e9, T0 + 3 * DAY], dtype=np.int64)
    equity = np.array([101.0, 102.0, 99.96, 104.958])
    days, ret = M.daily_returns(ts, equity, 100.0)
    assert days.tolist() == [T0, T0 + DAY, T0 + 3 * DAY]
    np.testing.assert_allclose(ret, [0.02, -0.02, 0.05], atol=1e-15)
    assert M.daily_returns(ts[:0], equity[:0], 100.0)[1].shape == (0,)


def test_ratios_worked_by_hand():
    r = np.array([0.01, -0.02, 0.03, 0.0])
    mean, sd = 0.005, np.sqrt((0.005**2 + 0.025**2 + 0.025**2 + 0.005**2) / 3)
    assert M.sharpe(r) == pytest.approx(mean / sd * np.sqrt(252), rel=1e-12)
    assert M.sortino(r) == pytest.approx(mean / np.sqrt(0.02**2 / 4) * np.sqrt(252), rel=1e-12)
    growth = 1.01 * 0.98 * 1.03
    assert M.annual_return(r) == pytest.approx(growth ** (252 / 4) - 1, rel=1e-12)
    assert M.calmar(0.10, 0.25) == pytest.approx(0.4)
    # undefined: NaN, never a number made up
    for value in (M.sharpe(r[:1]), M.sharpe(np.zeros(5)), M.sortino(np.array([0.01, 0.02])),
                  M.annual_return(r[:0]), M.annual_volatility(r[:1]), M.calmar(0.1, 0.0)):
        assert np.isnan(value)
    assert M.annual_return(np.array([0.1, -1.0])) == -1.0  # equity gone: not a complex power


def test_top_drawdowns_worked_by_hand():
    equity = np.array([110, 99, 88, 110, 120, 90, 100, 121, 115], dtype=float)
    ts = T0 + np.arange(len(equity)) * DAY
    dd = M.drawdown(equity, 100.0)
    np.testing.assert_allclose(dd, [0, -0.1, -0.2, 0, 0, -0.25, -1 / 6, 0, -6 / 121])
    assert M.max_drawdown(equity, 100.0) == pytest.approx(0.25)
    top = M.top_drawdowns(ts, equity, 100.0, top=5)
    assert [(round(d.depth, 6), d.start, d.trough, d.recovery) for d in top] == [
        (-0.25, ts[4], ts[5], ts[7]), (-0.2, ts[0], ts[2], ts[3]), (round(-6 / 121, 6), ts[7], ts[8], None)]
    assert [d.duration_ns for d in top] == [3 * DAY, 3 * DAY, DAY]
    assert M.top_drawdowns(ts, equity, 100.0, top=1)[0].depth == pytest.approx(-0.25)
    flat = np.full(4, 100.0)
    assert M.top_drawdowns(ts[:4], flat, 100.0) == [] and M.max_drawdown(flat, 100.0) == 0.0
    # a fall from the initial equity starts at the first event
    assert M.top_drawdowns(ts[:2], np.array([90.0, 95.0]), 100.0)[0].start == ts[0]


def test_trade_stats_worked_by_hand():
    s = M.trade_stats(np.array([30.0, -10.0, 0.0, 20.0, -40.0]))
    assert (s.trades, s.win_rate) == (5, 0.4)
    assert s.profit_factor == pytest.approx(50 / 50)
    assert s.expectancy == pytest.approx(0.0) and s.average_win == 25.0 and s.average_loss == pytest.approx(-50 / 3)
    none = M.trade_stats(np.zeros(0))
    assert none.trades == 0 and all(np.isnan(v) for v in (none.win_rate, none.expectancy, none.profit_factor))
    assert np.isnan(M.trade_stats(np.array([5.0])).profit_factor)  # no losing money: no ratio


def test_excursions_worked_by_hand():
    prices = np.array([10.0, 9.0, 12.0, 11.0, 8.0, 10.0])
    # a long from 0 to 2, a short from 2 to 4 (a reversal shares event 2), a long still open from 4 to the end
    mae, mfe = M.excursions(prices, np.array([0, 2, 4]), np.array([2, 4, 5]), np.array([1.0, -1.0, 1.0]),
                            np.array([10.0, 12.0, 8.0]))
    np.testing.assert_allclose(mae, [-0.1, 0.0, 0.0])
    np.testing.assert_allclose(mfe, [0.2, 4 / 12, 0.25])
    assert M.excursions(prices, *(np.zeros(0),) * 4)[0].shape == (0,)


def test_period_returns_compound_within_the_month():
    days = np.array([T0, T0 + DAY, T0 + 31 * DAY, T0 + 366 * DAY], dtype=np.int64)  # Jan 2, Jan 3, Feb 2, 2025
    keys, got = M.period_returns(days, np.array([0.1, 0.1, -0.5, 0.2]), "M")
    assert [str(k) for k in keys] == ["2024-01", "2024-02", "2025-01"]
    np.testing.assert_allclose(got, [0.21, -0.5, 0.2])
    keys, got = M.period_returns(days, np.array([0.1, 0.1, -0.5, 0.2]), "Y")
    assert [str(k) for k in keys] == ["2024", "2025"]
    np.testing.assert_allclose(got, [1.21 * 0.5 - 1, 0.2])


def test_daily_returns_follow_the_policys_trading_days_under_a_clock():
    """`timezone: America/New_York`: 22:00 New York on 2 January is 03:00 UTC on the 3rd.
    By New York days the equity closes 2 January at 102 (that event) and 3 January at
    99.96: returns 2% and -2%. By UTC days they would be 1% and about 0.97%."""
    from policyc.compiler.build import Events
    from policyc.runtime.backtest import return_moments
    from test_sessions import clocked

    hour = 3600 * 10**9
    ts = np.array([T0 + 15 * hour, T0 + 27 * hour, T0 + 39 * hour], dtype=np.int64)  # 10:00, 22:00, 10:00 NY
    equity = np.array([101.0, 102.0, 99.96])
    day = np.array([19724, 19724, 19725])   # 2024-01-02, 2024-01-02, 2024-01-03 (days since 1970)
    days, ret = M.daily_returns(ts, equity, 100.0, day)
    assert days.tolist() == [T0, T0 + DAY]
    np.testing.assert_allclose(ret, [0.02, -0.02], atol=1e-15)
    # the kernel's streaming statistics use the same days: 18:00 and 20:00 New York on 2
    # January are one New York day, and two UTC days (23:00 and 01:00 UTC). The count of
    # daily returns does not depend on what the policy trades, so the case without a
    # clock runs on ema_cross, whose kernel the backtests above compiled already, and the
    # case with New York's zone on tests/test_sessions.py's kernel of every clock (a
    # kernel with a clock is another source; the zone's name is not in it)
    stamps = np.array([T0 + 23 * hour, T0 + 25 * hour], dtype=np.int64)
    for cp, expected in ((clocked("timezone: America/New_York"), 1),
                         (compile_policy(ROOT / "policies" / "ema_cross.yaml"), 2)):
        assert (cp.clock is None) == (expected == 2)
        # as every column the policy reads (ema_cross: price and close; the clocked one: price and intent)
        prices = np.array([1.0, 2.0])
        res = run_backtest(cp, Events.market(stamps, np.column_stack([prices] * len(cp.columns))), FILL_SAME,
                           progress=False)
        assert return_moments(res)[0] == expected
