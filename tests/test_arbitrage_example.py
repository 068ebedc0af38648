"""The cross-venue arbitrage example (examples/arbitrage/): its seeded data is what the
generator makes, with the properties the generator promises; the example policy
validates, and its backtest on that data trades the dislocations and ends up after fees."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from policyc.runtime.data import load_table

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "arbitrage"
POLICY = ROOT / "policies" / "arbitrage.yaml"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"arbitrage_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _module("generate")


@pytest.fixture(scope="module")
def drawn():
    """The bundled data's draw: ({venue: columns}, dislocation schedule)."""
    return gen.generate(7, 2.0)


def test_the_bundled_data_is_what_seed_7_generates(tmp_path, capsys):
    assert gen.main(["--seed", "7", "--hours", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in gen.FILES.values():
        path = tmp_path / name
        assert path.read_bytes() == (EXAMPLE / name).read_bytes(), name
        assert path.stat().st_size < 3_000_000
        assert f"wrote {path}" in out


def test_another_seed_gives_other_data(drawn):
    other, _ = gen.generate(8, 2.0)
    assert not np.array_equal(other["binance"]["bid"][:100], drawn[0]["binance"]["bid"][:100])


def test_the_loader_reads_each_file_as_quotes_with_sizes():
    for venue, name in gen.FILES.items():
        table = load_table(EXAMPLE / name, ["price", "bid", "ask", "bid_size", "ask_size"])
        c = table.columns
        assert abs(len(table) / (gen.RATE_PER_S[venue] * 2 * 3600) - 1) < 0.05   # Poisson: about rate x span
        assert np.all(np.diff(table.ts) > 0), "one quote per millisecond, in time order"
        assert table.ts[0] >= gen.START_NS and table.ts[-1] < gen.START_NS + 2 * 3600 * 10**9
        assert np.abs(c["price"] - (c["bid"] + c["ask"]) / 2).max() < 1e-6, "price is the quote's mid"
        assert np.all(c["bid_size"] >= gen.LOT) and np.all(c["ask_size"] >= gen.LOT)
        assert 0.5 < np.median(c["bid_size"]) < 2.0
        assert 50_000 < c["price"].min() and c["price"].max() < 70_000


@pytest.mark.parametrize("venue", ["binance", "coinbase"])
def test_spreads_are_positive_whole_ticks_within_the_venues_range(drawn, venue):
    q = drawn[0][venue]
    width = q["ask"] - q["bid"]
    assert width.min() >= 1
    bps = width / ((q["bid"] + q["ask"]) / 2) * 1e4
    lo, hi = gen.SPREAD_BPS[venue]
    rounding = 1.0 / q["bid"].min() * 1e4   # a spread is a whole number of ticks: half a tick either way
    assert bps.min() >= lo - rounding and bps.max() <= hi + rounding
    assert bps.min() < lo + 0.1 and bps.max() > hi - 0.1, "the whole range occurs"


def _mids_on(grid_ms: np.ndarray, q: dict) -> np.ndarray:
    """A venue's log mid as it stood at each grid time (its latest quote at or before)."""
    log_mid = np.log((q["bid"] + q["ask"]) / 2.0)
    return log_mid[np.maximum(np.searchsorted(q["t_ms"], grid_ms, side="right") - 1, 0)]


def test_the_leaders_mid_moves_a_couple_of_bps_a_second(drawn):
    grid = np.arange(0, 2 * 3_600_000, 1000)
    per_second = np.diff(_mids_on(grid, drawn[0]["binance"])).std() * 1e4
    assert abs(per_second - gen.VOL_BPS_PER_S) < 0.25 * gen.VOL_BPS_PER_S, per_second


def test_coinbase_follows_binance_with_the_lag(drawn):
    """The cross-correlation of the two venues' 50 ms mid returns peaks where coinbase's
    return trails binance's by the generator's lag."""
    step = 50
    grid = np.arange(0, 2 * 3_600_000, step)
    rb, rc = np.diff(_mids_on(grid, drawn[0]["binance"])), np.diff(_mids_on(grid, drawn[0]["coinbase"]))
    lags = np.arange(-10, 31)
    edge = 100
    corr = [np.corrcoef(rb[edge:-edge], rc[edge + k: len(rc) - edge + k])[0, 1] for k in lags]
    peak = lags[int(np.argmax(corr))] * step
    assert abs(peak - gen.LAG_MS) <= 100, peak
    assert max(corr) > 3 * abs(corr[list(lags).index(0)])


def test_every_dislocation_shows_in_the_quotes_and_nothing_else_does(drawn):
    """Episodes where coinbase's mid is more than 8 bps from binance's latest (quotes within
    2 s joined into one) are the generator's dislocations, one for one; outside them the
    two mids stay within a few bps."""
    venues, schedule = drawn
    bn, cb = venues["binance"], venues["coinbase"]
    latest = np.searchsorted(bn["t_ms"], cb["t_ms"], side="right") - 1
    seen = latest >= 0
    gap_bps = ((cb["bid"] + cb["ask"])[seen] / (bn["bid"] + bn["ask"])[latest[seen]] - 1) * 1e4
    hot = cb["t_ms"][seen][np.abs(gap_bps) > 8]
    episodes = np.split(hot, np.flatnonzero(np.diff(hot) > 2000) + 1)
    assert 20 <= len(schedule) <= 60
    assert len(episodes) == len(schedule)
    for times, (start_s, size_bps, hold_s) in zip(episodes, schedule):
        assert start_s * 1000 <= times[0] and times[-1] <= (start_s + hold_s + gen.DISLOCATION_REVERT_S) * 1000
    assert np.abs(gap_bps[np.abs(gap_bps) < 8]).std() < 1.5


@pytest.fixture(scope="module")
def backtest():
    """(compiled policy, its backtest on the bundled data with fill `next`)."""
    from policyc.compiler.build import compile_policy
    from policyc.runtime.backtest import load_events, run_backtest

    policy = compile_policy(POLICY)
    events, _ = load_events(policy, [(name, str(EXAMPLE / file)) for name, file in
                                     (("bn", gen.FILES["binance"]), ("cb", gen.FILES["coinbase"]))])
    return policy, run_backtest(policy, events, progress=False)


def test_the_backtest_trades_every_dislocation_and_ends_up_after_fees(backtest, drawn):
    from policyc.compiler import layout as L
    from policyc.runtime.backtest import summary

    policy, result = backtest
    s = summary(result)
    o = result.orders
    assert s["fees"] > 0 and s["final_equity"] > s["initial_equity"] + s["fees"] / 2
    assert s["max_drawdown"] < 0.005
    assert not result.pstate[:, L.P_POS].any(), "flat at the end: every entry was unwound"
    limit = ~np.isnan(o[:, L.O_LIMIT])
    entries = np.unique(o[limit, L.O_EVENT])       # an entry decision sends both legs on one event
    assert len(drawn[1]) <= len(entries) <= 2 * len(drawn[1])
    ioc = o[limit]
    filled = ~np.isnan(ioc[:, L.O_FILL_PRICE])
    buys = ioc[:, L.O_QTY] > 0
    assert np.all(ioc[filled & buys, L.O_FILL_PRICE] <= ioc[filled & buys, L.O_LIMIT])
    assert np.all(ioc[filled & ~buys, L.O_FILL_PRICE] >= ioc[filled & ~buys, L.O_LIMIT])
    assert np.all(ioc[~filled, L.O_FEE] == 0) and np.all(ioc[~filled, L.O_FILL_EVENT] >= 0)
    assert 0 < np.count_nonzero(~filled) < len(ioc) / 5, "a few legs miss, as IOC orders do"


@functools.cache
def _bench_arb():
    """bench/arb.py, loaded once for the tests that use it: its hand-written loop is an
    `@njit(cache=False)` function, compiled again for every fresh load of the module."""
    spec = importlib.util.spec_from_file_location("bench_arb", ROOT / "bench" / "arb.py")
    arb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arb)
    return arb


def test_the_hand_written_loop_of_the_bench_sends_the_kernels_orders(backtest):
    """bench/arb.py's parity check: the hand-written loop's orders equal the kernel's and
    run_backtest's, field for field, so its speed comparison compares the same work."""
    arb = _bench_arb()
    policy, _ = backtest
    job = arb.ArbJob(*arb.load(policy))
    assert job.check() == []
    assert job.hand_result[1] == len(job.backtest_result.orders) > 100


@pytest.mark.parametrize("change, binding", [
    # a 3 bp collar blocks most entries, whose retries then run into a day's limit of 150 orders
    ((("price_collar: 1%", "price_collar: 0.03%"), ("max_orders_per_day: 400", "max_orders_per_day: 150")),
     ("price_collar:blocked", "max_orders_per_day:blocked")),
    # a 0.02% drawdown halts the account at its first round trip's fees
    ((("max_drawdown: 2%", "max_drawdown: 0.02%"),), ("max_drawdown:halt", "kill_switch:halt")),
], ids=["collar-and-order-limit", "kill-switch"])
def test_the_hand_written_loop_follows_the_kernel_where_the_limits_bind(tmp_path, change, binding):
    from policyc.compiler.build import compile_policy

    arb = _bench_arb()
    path = tmp_path / "arbitrage.yaml"
    text = POLICY.read_text()
    for old, new in change:
        text = text.replace(old, new)
    path.write_text(text)
    job = arb.ArbJob(*arb.load(compile_policy(path)))
    assert job.check() == []
    assert all(job.backtest_result.reasons.get(code, 0) > 0 for code in binding), job.backtest_result.reasons


def test_the_demo_backtests_the_example(capsys):
    demo = _module("demo")
    assert demo.main(["--no-live"]) == 0
    out = capsys.readouterr().out
    assert "orders 176: 92 IOC limit legs (8 cancelled unfilled), 84 at market" in out
    assert "final equity 102,111.92 from 100,000.00" in out
