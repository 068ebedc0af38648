"""Performance statistics of a backtest, from its equity curve and its round trips.

Every function takes plain NumPy arrays and is vectorised. The conventions, which
docs/commands.md states for the summary and the report:

- Times are int64 ns since the epoch, UTC; returns, drawdowns and rates are fractions
  (0.05 is 5%); money is in the account's currency.
- Daily returns are those of the equity at the last event of each day that has an
  event (the UTC day, or the policy's trading day when it has a `calendar` or a
  `timezone`), the first from the initial equity (`daily_returns`). A year has
  `TRADING_DAYS` such days: the annualisation of empyrical (`empyrical.stats`, with
  `period="daily"`), whose functions these match on daily returns.
- Drawdown is measured on the equity after every event, from the running peak of the
  initial equity and the equity after each event. On daily bars that is the drawdown of
  the daily closes; on intraday data it can be deeper (empyrical sees daily closes only).

A figure that is undefined (a ratio over no days, a deviation of one return, a ratio
whose denominator is 0) is NaN; the report prints it as `n/a` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRADING_DAYS = 252
NS_PER_DAY = 86_400 * 1_000_000_000
ROLLING_DAYS = 126  # the rolling Sharpe's window: about six months of trading days


def _finite_or_nan(x: float) -> float:
    return float(x) if np.isfinite(x) else float("nan")


# ---- the equity curve -------------------------------------------------------------

def daily_closes(ts: np.ndarray, equity: np.ndarray, day: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(days, closes): for each day with an event, its start (int64 ns: the date's
    midnight UTC) and the equity after its last event. `ts` (int64 ns, non-decreasing)
    and `equity` (money) have one entry per event; `day`, when given, is each event's
    trading day under the policy's clock (days since 1970-01-01, `sessions.K_DAY`),
    else its UTC day."""
    day = ts // NS_PER_DAY if day is None else np.asarray(day, dtype=np.int64)
    last = np.flatnonzero(np.append(np.diff(day) != 0, len(day) > 0))
    return day[last] * NS_PER_DAY, equity[last]


def daily_returns(ts: np.ndarray, equity: np.ndarray, initial: float,
                  day: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(days, returns): the return of each day's closing equity over the day before's,
    the first day's over `initial`. Shapes (n_days,); days and `day` as in `daily_closes`."""
    days, closes = daily_closes(ts, equity, day)
    before = np.concatenate([[initial], closes[:-1]])
    return days, closes / before - 1.0


def drawdown(equity: np.ndarray, initial: float) -> np.ndarray:
    """The drawdown after each event, a fraction at or below 0: (equity - peak) / peak,
    the peak the running maximum of `initial` and the equity up to that event.
    Source: the definition of drawdown (Magdon-Ismail and Atiya, "Maximum drawdown",
    Risk 2004); empyrical.stats.drawdown_series computes it on daily closes."""
    peak = np.maximum.accumulate(np.concatenate([[initial], equity]))[1:]
    return (equity - peak) / peak


def max_drawdown(equity: np.ndarray, initial: float) -> float:
    """The largest fall from a running peak, a fraction at or above 0 (0.25 is 25%): the
    negated minimum of `drawdown`, 0.0 for no events. empyrical.stats.max_drawdown gives
    the same (negative) on the daily returns of daily bars."""
    return float(-min(drawdown(equity, initial).min(initial=0.0), 0.0))


@dataclass
class Drawdown:
    """One period under water: from a peak (`start`, ns: the event at the peak, the first
    event when the peak is the initial equity), to its lowest point (`trough`, ns), to
    the first event back at the peak (`recovery`, ns; None when it never came back).
    `depth` is the fall at the trough, a fraction below 0; `duration_ns` runs from start
    to recovery, or to the last event."""

    depth: float
    start: int
    trough: int
    recovery: int | None
    duration_ns: int


def top_drawdowns(ts: np.ndarray, equity: np.ndarray, initial: float, top: int = 5) -> list[Drawdown]:
    """The `top` deepest periods under water, deepest first, as pyfolio's
    `gen_drawdown_table` lists them (peak, valley, recovery date and duration), here on
    the equity after every event. A period is a run of events below the running peak."""
    dd = drawdown(equity, initial)
    under = dd < 0
    if not under.any():
        return []
    edges = np.diff(np.concatenate([[0], under.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # ends: first event back at the peak
    troughs = np.minimum.reduceat(dd, starts)
    order = np.argsort(troughs, kind="stable")[:top]
    # each run's trough: its first event at the run's minimum (runs are contiguous, in order)
    run_of = np.repeat(np.arange(len(starts)), ends - starts)
    at_min = np.flatnonzero(under)[dd[under] == troughs[run_of]]
    first_min = at_min[np.unique(run_of[dd[under] == troughs[run_of]], return_index=True)[1]]
    out = []
    for k in order:
        start = ts[max(starts[k] - 1, 0)]
        recovered = ends[k] < len(ts)
        end = int(ts[ends[k]]) if recovered else int(ts[-1])
        out.append(Drawdown(float(troughs[k]), int(start), int(ts[first_min[k]]),
                            end if recovered else None, end - int(start)))
    return out


# ---- return statistics (daily returns) ----------------------------------------------

def annual_return(returns: np.ndarray, periods: int = TRADING_DAYS) -> float:
    """CAGR: the compound growth per year, (prod(1 + r)) ** (periods / n) - 1, a
    fraction, for n returns of which `periods` make a year. Source: empyrical
    `annual_return` (= `cagr`). NaN for no returns; -1.0 once equity reached 0."""
    if len(returns) == 0:
        return float("nan")
    growth = float(np.prod(1.0 + returns))
    if growth <= 0.0:
        return -1.0
    return _finite_or_nan(growth ** (periods / len(returns)) - 1.0)


def annual_volatility(returns: np.ndarray, periods: int = TRADING_DAYS) -> float:
    """The sample standard deviation of the returns (ddof=1) times sqrt(periods), a
    fraction. Source: empyrical `annual_volatility` (alpha=2). NaN for under 2 returns."""
    if len(returns) < 2:
        return float("nan")
    return float(np.std(returns, ddof=1) * np.sqrt(periods))


def sharpe(returns: np.ndarray, periods: int = TRADING_DAYS) -> float:
    """mean / sample standard deviation (ddof=1) of the returns, times sqrt(periods),
    with a risk-free rate of 0. Source: Sharpe, "The Sharpe Ratio", J. Portfolio
    Management 1994; empyrical `sharpe_ratio`. NaN for under 2 returns or all equal."""
    if len(returns) < 2 or np.ptp(returns) == 0:
        return float("nan")
    return float(np.mean(returns) / np.std(returns, ddof=1) * np.sqrt(periods))


def sortino(returns: np.ndarray, periods: int = TRADING_DAYS) -> float:
    """mean return / downside deviation, times sqrt(periods); the downside deviation is
    sqrt(mean(min(r, 0) ** 2)) over all returns (target 0). Source: Sortino and Price,
    "Performance Measurement in a Downside Risk Framework", J. Investing 1994; empyrical
    `sortino_ratio`. NaN for under 2 returns or no negative one."""
    if len(returns) < 2:
        return float("nan")
    downside = np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))
    if downside == 0:
        return float("nan")
    return float(np.mean(returns) / downside * np.sqrt(periods))


def calmar(cagr: float, max_dd: float) -> float:
    """CAGR / max drawdown (both fractions, the drawdown positive). Source: Young,
    "Calmar Ratio: A Smoother Tool", Futures 1991; empyrical `calmar_ratio`, there over
    the drawdown of daily closes. NaN without a drawdown."""
    if not max_dd > 0:
        return float("nan")
    return _finite_or_nan(cagr / max_dd)


def rolling_sharpe(returns: np.ndarray, window: int = ROLLING_DAYS, periods: int = TRADING_DAYS) -> np.ndarray:
    """`sharpe` of each `window` consecutive returns, shape (max(n - window + 1, 0),):
    entry k covers returns k .. k + window - 1. Source: empyrical `roll_sharpe_ratio`.
    NaN where the window's returns are all equal."""
    if len(returns) < window:
        return np.zeros(0)
    w = np.lib.stride_tricks.sliding_window_view(returns, window)
    std = np.std(w, axis=1, ddof=1)
    flat = np.ptp(w, axis=1) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flat, np.nan, w.mean(axis=1) / std * np.sqrt(periods))


def period_returns(days: np.ndarray, returns: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """(periods, returns): the compounded return, prod(1 + r) - 1, of the daily returns
    in each calendar month (`unit="M"`) or year (`"Y"`) that has any, as datetime64 of
    that unit and fractions. Source: empyrical `aggregate_returns`."""
    key = days.astype("datetime64[ns]").astype(f"datetime64[{unit}]")
    if len(key) == 0:
        return key, np.zeros(0)
    first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    return key[first], np.multiply.reduceat(1.0 + returns, first) - 1.0


# ---- round trips ----------------------------------------------------------------------

@dataclass
class TradeStats:
    """Figures of closed round trips, from their P&L (money, after fees). A win is a
    trade with P&L above 0, a loss one at or below 0 (as the kernel counts them)."""

    trades: int
    win_rate: float        # wins / trades
    profit_factor: float   # sum of wins / -(sum of losses); NaN with no losing money
    expectancy: float      # mean P&L per trade, money
    average_win: float     # mean P&L of the wins, money
    average_loss: float    # mean P&L of the losses, money (at or below 0)


def trade_stats(pnl: np.ndarray) -> TradeStats:
    """Win rate, profit factor (Schwager, "Market Wizards" glossary: gross profit over
    gross loss), expectancy (Tharp, "Trade Your Way to Financial Freedom": the mean P&L
    per trade) and the average win and loss of closed trades' P&L, shape (n,). NaN for
    any figure over no trades."""
    n = len(pnl)
    wins, losses = pnl[pnl > 0], pnl[pnl <= 0]
    nan = float("nan")
    gross_loss = -float(losses.sum())
    return TradeStats(
        trades=n,
        win_rate=len(wins) / n if n else nan,
        profit_factor=float(wins.sum()) / gross_loss if gross_loss > 0 else nan,
        expectancy=float(pnl.mean()) if n else nan,
        average_win=float(wins.mean()) if len(wins) else nan,
        average_loss=float(losses.mean()) if len(losses) else nan,
    )


def excursions(prices: np.ndarray, entry: np.ndarray, exit_: np.ndarray, side: np.ndarray,
               entry_price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MAE, MFE) of each trade, fractions of its entry price: how far the price went
    against the trade and for it between its entry and its exit event, inclusive.
    MAE = min(0, min over p of side * (p - entry_price) / entry_price), at or below 0;
    MFE = max(0, max of the same), at or above 0. Source: Sweeney, "Maximum Adverse
    Excursion", Wiley 1997.

    `prices` (n,): one instrument's price at each of its events; `entry`, `exit_`
    (m,): positions in `prices` (exit at or after entry; a trade still open passes the
    last position); `side` (m,): +1 long, -1 short; `entry_price` (m,). Trades may share
    an event (a reversal exits one and enters the next)."""
    m = len(entry)
    if m == 0:
        return np.zeros(0), np.zeros(0)
    bounds = np.empty(2 * m, dtype=np.int64)
    bounds[0::2], bounds[1::2] = entry, exit_ + 1
    padded = np.append(prices, np.nan)  # so an exit at the last price has an end index
    # segments [entry, exit + 1) are the even ones; an odd one may run backwards, and is dropped
    low = np.minimum.reduceat(padded, bounds)[0::2]
    high = np.maximum.reduceat(padded, bounds)[0::2]
    worst = np.where(side > 0, low, high)
    best = np.where(side > 0, high, low)
    return (np.minimum(side * (worst - entry_price) / entry_price, 0.0),
            np.maximum(side * (best - entry_price) / entry_price, 0.0))
