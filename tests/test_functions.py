"""Every built-in function of the language (spec section 4) against an oracle.

Both back ends are checked on every value: the Numba kernel (its decision trace carries
every named feature) and the reference interpreter. The oracles are TA-Lib for the
moving statistics and a straightforward NumPy / Python computation for the rest.

Semantics beyond the spec that these tests pin down:
  * a NaN input to a stateful function is skipped: NaN out for that event and the
    state does not advance (leading NaNs then behave like TA-Lib's Python wrapper);
  * stdev is sqrt(variance) when variance > 0 else 0 (TA-Lib says 0 below 1e-8, so
    stdev/zscore are compared only where TA-Lib's variance is >= 1e-8);
  * round is half away from zero; min/max/clip propagate NaN; every comparison with a
    NaN operand is false (`!=` included);
  * hour/minute_of_day/day_of_week read `ts` (integer ns) in UTC, Monday = 0.

Each distinct kernel source costs a Numba compile (superlinear in its size), so there are
two policies, each compiled once per session and run over several data sets: every
moving statistic (windows from a param, re-bound per window) and every other function.
Edge cases each have a test with a minimal input:
  * stdev/variance/zscore on short windows of prices, prices near 1e8, and after an
    outlier leaves the window (sums of deviations from a recent anchor, rebuilt
    from the window, keep them accurate);
  * wma(x, 1) is x;
  * round(0.49999999999999994) is 0 and round(2**52 + 1) is itself;
  * (-inf) ** 0.5 is +inf in both back ends (C `pow`).
"""
from __future__ import annotations

import csv
import functools
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

talib = pytest.importorskip("talib")

from policyc.compiler import layout as L  # noqa: E402
from policyc.compiler.build import Events, compile_policy  # noqa: E402
from policyc.compiler.frontend import check_text  # noqa: E402
from policyc.compiler.interpret import Interpreter  # noqa: E402
from policyc.dsl.diagnostics import PolicyError  # noqa: E402
from policyc.dsl.document import parse_policy_text  # noqa: E402

ORCL = Path(__file__).resolve().parent.parent / "data" / "orcl-1995-2014.csv"
NS = 1_000_000_000
RTOL = 1e-9
TINY_VARIANCE = 1e-8  # below it TA-Lib's STDDEV is 0 by definition


# ==== helpers ===============================================================================
def policy_text(name: str, features: dict[str, str], params: dict | None = None,
                inputs: list[str] | None = None) -> str:
    lines = [f"policy: {name}", "version: 1", "instruments: [X]"]
    if inputs:
        lines.append(f"inputs: [{', '.join(inputs)}]")
    if params:
        lines.append("params:")
        lines += [f"  {k}: {v}" for k, v in params.items()]
    lines.append("features:")
    lines += [f"  {k}: '{v}'" for k, v in features.items()]
    lines += ["signals:", "  - when: false", "    target: 0", "risk:", "  max_position: 1"]
    return "\n".join(lines) + "\n"


def compile_features(name, features, params=None, inputs=None, overrides=None):
    text = policy_text(name, features, params, inputs)
    return compile_policy(parse_policy_text(text, f"{name}.yaml"), overrides)


def run_both(cp, ts, data: dict[str, np.ndarray]):
    """Run kernel and interpreter over market events: ({feature: values}, {feature: values})."""
    cols = cp.columns
    assert cols[0] == "price"
    vals = np.column_stack([np.asarray(data["close" if c == "price" else c], dtype=np.float64) for c in cols])
    ev = Events.market(np.asarray(ts, dtype=np.int64), vals)
    res = cp.run(ev, trace=True)
    kern = res.trace[:, L.TRACE_FIXED:]
    it = Interpreter(cp.program, cp.params, cp.checked.risk, cp.checked.account, 1).run(
        ev.ts, ev.kind, ev.inst, ev.vals)
    assert len(it.trace) == len(ev), "every event has a valid price, so every event is traced"
    interp = np.array([[float(v) for v in rec["features"]] for rec in it.trace], dtype=np.float64)
    names = cp.feature_names
    assert kern.shape == interp.shape == (len(ev), len(names))
    return ({n: kern[:, j].copy() for j, n in enumerate(names)},
            {n: interp[:, j].copy() for j, n in enumerate(names)})


def assert_matches(got, want, label, valid=None, rtol=RTOL):
    """NaN exactly where the oracle is NaN; elsewhere equal within rtol (atol 0).

    `valid` (bool mask) restricts the check to positions where the oracle is
    comparable (e.g. TA-Lib's variance >= 1e-8 for stdev)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, label
    sel = np.ones(len(want), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    g_nan, w_nan = np.isnan(got) & sel, np.isnan(want) & sel
    if not np.array_equal(g_nan, w_nan):
        bad = np.flatnonzero(g_nan != w_nan)[:5]
        raise AssertionError(f"{label}: NaN pattern differs at {bad.tolist()}: got {got[bad]}, want {want[bad]}")
    both = sel & ~w_nan
    np.testing.assert_allclose(got[both], want[both], rtol=rtol, atol=0, err_msg=label)


def assert_bool_matches(got, want, label):
    want = np.asarray(want, dtype=bool).astype(np.float64)
    got = np.asarray(got)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{label}: differs at {bad[:5].tolist()}: got {got[bad[:5]]}, want {want[bad[:5]]}"


def check_both(kern, interp, name, want, valid=None, boolean=False, rtol=RTOL, label=None):
    """Both back ends against the oracle; a failure names every back end that is off
    (and `label`, the feature's name unless given: a window the name does not carry)."""
    failures = []
    label = label or name
    for backend, out in (("kernel", kern), ("interpreter", interp)):
        try:
            if boolean:
                assert_bool_matches(out[name], want, f"{backend} {label}")
            else:
                assert_matches(out[name], want, f"{backend} {label}", valid, rtol)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError("\n".join(failures))


def lag(x, k):
    x = np.asarray(x, dtype=np.float64)
    if k == 0:
        return x.copy()
    out = np.full(len(x), np.nan)
    out[k:] = x[:-k]
    return out


def lag_bool(c, k):
    out = np.zeros(len(c), dtype=bool)
    out[k:] = c[:-k]
    return out


def skip_nan(fn, x):
    """fn over the non-NaN values only, scattered back; NaN where x is NaN (the skip rule)."""
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    out = np.full(len(x), np.nan)
    out[ok] = fn(x[ok])
    return out


def nan_false(fn, *xs):
    """A comparison that is false whenever an operand is NaN."""
    with np.errstate(invalid="ignore"):
        out = fn(*xs)
    for x in xs:
        out &= ~np.isnan(x)
    return out


# ==== oracles TA-Lib cannot give =============================================================
def wilder(x, n):
    """Wilder smoothing: seed = mean of the first n values, then (prev*(n-1)+x)/n."""
    out = np.full(len(x), np.nan)
    if len(x) < n:
        return out
    prev = float(np.sum(x[:n])) / n
    out[n - 1] = prev
    for i in range(n, len(x)):
        prev = (prev * (n - 1) + x[i]) / n
        out[i] = prev
    return out


def rsi_one(x):
    """RSI with n = 1 (TA-Lib refuses it): 100 after a rise, 0 after a fall or no move."""
    out = np.full(len(x), np.nan)
    out[1:] = np.where(np.diff(x) > 0, 100.0, 0.0)
    return out


def talib_moving(fn: str, x: np.ndarray, n: int) -> np.ndarray:
    """The oracle of `fn(x, n)` for a series that is NaN-free after its leading NaNs."""
    x = np.asarray(x, dtype=np.float64)
    if fn == "sma":
        return talib.SMA(x, n)
    if fn == "ema":
        return talib.EMA(x, n)
    if fn == "wma":
        return talib.WMA(x, n)
    if fn == "variance":
        return talib.VAR(x, n, 1)
    if fn == "stdev":      # TA-Lib refuses n = 1; the deviation of one value is 0
        return talib.STDDEV(x, n, 1) if n > 1 else np.where(np.isnan(x), np.nan, 0.0)
    if fn == "sum":
        return talib.SUM(x, n) if n > 1 else x.copy()
    if fn == "highest":
        return talib.MAX(x, n) if n > 1 else x.copy()
    if fn == "lowest":
        return talib.MIN(x, n) if n > 1 else x.copy()
    if fn == "rsi":
        return talib.RSI(x, n) if n > 1 else skip_nan(rsi_one, x)
    if fn == "rma":
        return skip_nan(lambda v: wilder(v, n), x)
    if fn == "zscore":
        with np.errstate(all="ignore"):
            return (x - talib.SMA(x, n)) / talib.STDDEV(x, n, 1)
    raise AssertionError(fn)


def well_defined(fn: str, x: np.ndarray, n: int) -> np.ndarray | None:
    """Where the oracle is comparable: stdev and zscore need TA-Lib's variance >= 1e-8."""
    if fn not in ("stdev", "zscore") or n == 1:
        return None
    var = talib.VAR(np.asarray(x, dtype=np.float64), n, 1)
    return np.isnan(var) | (var >= TINY_VARIANCE)


# ==== data ====================================================================================
@functools.lru_cache(maxsize=None)
def orcl_bars():
    with ORCL.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ts = np.array([np.datetime64(r["Date"], "ns").astype(np.int64) for r in rows], dtype=np.int64)
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    return ts, {"open": col("Open"), "high": col("High"), "low": col("Low"), "close": col("Close"),
                "volume": col("Volume")}


def random_bars(seed: int, n: int):
    """A random walk around 100 with consistent high/low, one bar a minute."""
    rng = np.random.default_rng(seed)
    close = np.maximum(100.0 + np.cumsum(rng.normal(0.0, 0.5, n)), 5.0)
    open_ = np.concatenate([[close[0]], close[:-1]]) + rng.normal(0.0, 0.1, n)
    high = np.maximum(open_, close) + np.abs(rng.normal(0.0, 0.3, n))
    low = np.minimum(open_, close) - np.abs(rng.normal(0.0, 0.3, n))
    ts = np.datetime64("2024-01-01T00:00", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * 60 * NS
    return ts, {"open": open_, "high": high, "low": low, "close": close}, rng


@functools.lru_cache(maxsize=None)
def moving_dataset(name: str):
    """(ts, data) with bars and an input stream `y`."""
    if name == "orcl":               # the real thing; y = volume in millions, leading NaNs
        ts, d = orcl_bars()
        y = d["volume"] / 1e6
        y[:25] = np.nan
    elif name == "walk":             # seeded random walk; y wanders across zero, leading NaNs
        ts, d, rng = random_bars(7, 2500)
        y = rng.normal(3.0, 2.0, len(ts)) + np.cumsum(rng.normal(0.0, 0.2, len(ts)))
        y[:37] = np.nan
    elif name == "gappy":            # y has NaNs all through it, and one long gap
        ts, d, rng = random_bars(11, 2000)
        y = 10.0 + rng.normal(0.0, 1.0, len(ts)) + 0.3 * np.sin(np.arange(len(ts)) / 50.0)
        y[:5] = np.nan
        y[rng.random(len(ts)) < 0.15] = np.nan
        y[700:760] = np.nan
    else:
        raise AssertionError(name)
    return ts, {**d, "y": y}


DATASETS = ("orcl", "walk", "gappy")

# ==== 1. moving statistics against TA-Lib =====================================================
SERIES = ("close", "y")
# Numba compile time grows superlinearly with kernel size, and a window is a kernel
# argument whether it is written as a number or as a param: `sma(close, 2)` and
# `sma(close, n)` with n = 2 generate the same kernel source, and both back ends size a
# window of either kind with `resolve_int` (compiler/ir.py); see
# test_literal_and_param_windows_generate_one_kernel.
# So each moving statistic is one feature per series, `fn(close, n)` and `fn(y, n)`, all
# in one policy (MOVING) compiled once, and each window is a run of that kernel re-bound
# with `with_params(n=...)`. The windows checked per series are those of `windows_of`: 1
# (TA-Lib's own special case, or the language's where TA-Lib refuses 1), 2, 5 for the
# dispersion functions, `n` (the default, 14; part 4 moves it to other values) and 200 on
# prices; `n` alone on `y`, the series with NaNs.
GROUPS = {
    "averages": ("sma", "ema", "rma", "wma", "sum"),
    "dispersion": ("stdev", "variance", "zscore"),
    "extremes": ("highest", "lowest", "rsi"),
}
GROUP_OF = {fn: g for g, fns in GROUPS.items() for fn in fns}
N_DEFAULT = 14
ATR_WINDOWS = (1, 2, "n", 200)
# stdev/variance/zscore at 2 and 5 are checked against an exact oracle (see below)
DISPERSION_BUGGY_WINDOWS = (2, 5)
TRUE_RANGE = "max(high - low, abs(high - close[1]), abs(low - close[1]))"


def windows_of(fn: str, src: str) -> tuple:
    if src == "y":
        return ("n",)
    if fn in GROUPS["dispersion"]:
        return (2, 5, "n", 200) if fn == "zscore" else (1, 2, 5, "n", 200)   # zscore(x, 1) is 0/0
    return (1, 2, "n", 200)


def window_of(w, n_param: int = N_DEFAULT) -> int:
    return n_param if w == "n" else w


def moving_features() -> dict[str, str]:
    """`{fn}_{src}` is fn(src, n) for every moving statistic; `atr_w` and `rma_tr` are
    atr(n) and rma of the true range written out; part 2's nested calls ride along."""
    feats = {f"{fn}_{src}": f"{fn}({src}, n)" for fn in GROUP_OF for src in SERIES}
    feats["atr_w"] = "atr(n)"
    feats["rma_tr"] = f"rma({TRUE_RANGE}, n)"
    feats.update(NESTED_FEATURES)
    return feats


@functools.lru_cache(maxsize=None)
def moving_policy():
    return compile_features("moving", moving_features(), {"n": N_DEFAULT}, inputs=["y"])


def at_window(n: int):
    """MOVING with its window param at n: the same kernel, never a new compile."""
    cp = moving_policy()
    return cp if n == N_DEFAULT else cp.with_params(n=n)


@functools.lru_cache(maxsize=None)
def moving_run(dataset: str, n: int = N_DEFAULT):
    """Run MOVING (its window param at n) over a data set: (data, (kernel, interpreter))."""
    ts, data = moving_dataset(dataset)
    return data, run_both(at_window(n), ts, data)


def run_series(x, n: int):
    """MOVING at window n over one short series given as close and y (and as high and
    low, which only atr reads): (kernel, interpreter)."""
    x = np.asarray(x, dtype=np.float64)
    return run_both(at_window(n), np.arange(len(x)) * NS, {"close": x, "y": x, "high": x, "low": x})


def check_moving(dataset, fn, src, n_param, skip=()):
    """Kernel and interpreter equal TA-Lib (rtol 1e-9) from its first output, NaN before,
    at every window of `windows_of` not in `skip` (`n` at n_param).

    Where the series has NaNs inside, the oracle is TA-Lib over the non-NaN values,
    scattered back (each NaN is skipped and leaves the state as it was)."""
    for w in windows_of(fn, src):
        if w in skip:
            continue
        n = window_of(w, n_param)
        data, (kern, interp) = moving_run(dataset, n)
        x = data[src]
        ok = ~np.isnan(x)
        name = f"{fn}_{src}"
        label = f"{fn}({src}, {n}) on {dataset}"
        want = skip_nan(lambda v: talib_moving(fn, v, n), x)
        valid = None
        if fn in ("stdev", "zscore") and n > 1:
            valid = np.ones(len(x), dtype=bool)
            valid[ok] = well_defined(fn, x[ok], n)
        check_both(kern, interp, name, want, valid, label=label)
        assert np.isnan(kern[name][~ok]).all(), f"{label}: a NaN input gives NaN"
        if n > 1 and fn not in ("stdev", "variance"):
            assert np.isnan(kern[name][np.flatnonzero(ok)[0]]), f"{label}: no value before the window fills"
        if not np.isnan(x[np.argmax(ok):]).any():
            # leading NaNs only: the plain TA-Lib call (its wrapper skips them) is the oracle too
            plain = talib_moving(fn, x, n)
            assert np.isnan(plain[:np.argmax(ok)]).all()
            assert_matches(want, plain, f"oracle self-check {label}", rtol=0)


def _moving_cases():
    for dataset in DATASETS:
        for fn in GROUP_OF:
            for src in SERIES:
                yield pytest.param(dataset, fn, src, id=f"{dataset}-{fn}-{src}")


@pytest.mark.parametrize("dataset, fn, src", list(_moving_cases()))
def test_moving_statistic_matches_talib(dataset, fn, src):
    skip = ()
    if fn in GROUPS["dispersion"]:
        skip = DISPERSION_BUGGY_WINDOWS        # see test_short_window_dispersion_on_prices_matches_talib
    if fn == "wma":
        skip = (1,)                            # see test_wma_window_one_is_the_identity
    check_moving(dataset, fn, src, N_DEFAULT, skip)


@pytest.mark.parametrize("dataset", DATASETS)
def test_atr_matches_talib(dataset):
    for w in ATR_WINDOWS:
        n = window_of(w)
        data, (kern, interp) = moving_run(dataset, n)
        h, lo, c = data["high"], data["low"], data["close"]
        tr = np.maximum.reduce([h - lo, np.abs(h - lag(c, 1)), np.abs(lo - lag(c, 1))])  # NaN at 0
        want = talib.ATR(h, lo, c, n)
        check_both(kern, interp, "atr_w", want, label=f"atr({n}) on {dataset}")
        # `rma` of the true range written out is ATR: rma against TA-Lib
        check_both(kern, interp, "rma_tr", want, label=f"rma(true range, {n}) on {dataset}")
        # and the test's own Wilder smoothing agrees with TA-Lib's
        assert_matches(skip_nan(lambda v: wilder(v, n), tr), want, f"oracle self-check atr {n}", rtol=1e-12)


def test_rma_is_the_smoothing_inside_talib_rsi():
    """The Wilder oracle of `rma` rebuilds TA-Lib's RSI; the kernel's rma equals it."""
    for w in (2, "n", 200):
        n = window_of(w)
        data, (kern, interp) = moving_run("walk", n)
        x = data["close"]
        d = np.diff(x)
        g = wilder(np.maximum(d, 0.0), n)
        lo = wilder(np.maximum(-d, 0.0), n)
        rsi = np.concatenate([[np.nan], 100.0 * g / (g + lo)])
        assert_matches(rsi, talib.RSI(x, n), f"Wilder RSI {n}")
        check_both(kern, interp, "rma_close", wilder(x, n), label=f"rma(close, {n})")


# ---- known mismatches of part 1 -------------------------------------------------------------
SHORT_DISPERSION_CASES = [pytest.param(fn, n, id=f"{fn}-{n}") for fn in GROUPS["dispersion"] for n in (2, 5)]


@pytest.mark.parametrize("fn, n", SHORT_DISPERSION_CASES)
def test_short_window_dispersion_on_prices_matches_talib(fn, n):
    for dataset in ("orcl", "walk"):
        data, (kern, interp) = moving_run(dataset, n)
        x = data["close"]
        # TA-Lib's own running sums lose digits on short windows of prices (a few 1e-9
        # relative on tiny variances); the exact two-pass value is the oracle here
        var = np.concatenate([np.full(n - 1, np.nan), np.lib.stride_tricks.sliding_window_view(x, n).var(axis=1)])
        with np.errstate(invalid="ignore", divide="ignore"):
            want = {"variance": var, "stdev": np.sqrt(var),
                    "zscore": (x - talib.SMA(x, n)) / np.sqrt(var)}[fn]
        np.testing.assert_allclose(want, talib_moving(fn, x, n), rtol=1e-6)  # still TA-Lib's meaning
        check_both(kern, interp, f"{fn}_close", want, well_defined(fn, x, n), label=f"{fn}(close, {n}) on {dataset}")


def test_variance_of_large_prices():
    x = 1e8 + np.array([0.0, 1.0, 3.0, 0.0, 2.0, 1.0])
    want = np.concatenate([[np.nan], np.lib.stride_tricks.sliding_window_view(x, 2).var(axis=1)])
    assert_matches(talib.VAR(x, 2, 1), want, "oracle self-check", rtol=1e-12)
    kern, interp = run_series(x, 2)
    check_both(kern, interp, "variance_close", want, label="variance(close, 2)")
    check_both(kern, interp, "stdev_close", np.sqrt(want), label="stdev(close, 2)")


def test_variance_recovers_after_an_outlier():
    x = np.array([1.0, 2, 3, 4, 5, 1e9] + [1.0, 2, 3, 4, 5] * 4)
    want = talib.VAR(x, 5, 1)
    assert_matches(want[11:], np.full(len(x) - 11, 2.0), "oracle self-check", rtol=1e-12)
    kern, interp = run_series(x, 5)
    check_both(kern, interp, "variance_close", want, label="variance(close, 5)")
    check_both(kern, interp, "stdev_close", np.sqrt(want), label="stdev(close, 5)")


def test_wma_window_one_is_the_identity():
    x = np.array([1e6, 0.001, 0.001, 0.001])
    assert np.array_equal(talib.WMA(x, 1), x)
    kern, interp = run_series(x, 1)
    check_both(kern, interp, "wma_close", x, rtol=0, label="wma(close, 1)")


# ==== 2. nested calls keep their own state =====================================================
NESTED_FEATURES = {
    "ema_10": "ema(close, 10)",
    "ema_ema": "ema(ema(close, 10), 10)",
    "sma_ema_y": "sma(ema(y, 7), 5)",
    "rsi_sma": "rsi(sma(close, 3), 14)",
    "stdev_ret": "stdev(returns(close), 20)",
    "highest_lowest": "highest(lowest(close, 5), 5)",
    "sum_sum_y": "sum(sum(y, 3), 3)",
    "ema_ema_ema_y": "ema(ema(ema(y, 3), 4), 5)",
}


@pytest.mark.parametrize("dataset", DATASETS)
def test_nested_calls_keep_their_own_state(dataset):
    data, (kern, interp) = moving_run(dataset)
    c, y = data["close"], data["y"]
    check_both(kern, interp, "ema_10", talib.EMA(c, 10))
    # TA-Lib's wrapper skips the inner EMA's leading NaNs, as the language does
    check_both(kern, interp, "ema_ema", talib.EMA(talib.EMA(c, 10), 10))
    check_both(kern, interp, "sma_ema_y", skip_nan(lambda v: talib.SMA(talib.EMA(v, 7), 5), y))
    check_both(kern, interp, "rsi_sma", talib.RSI(talib.SMA(c, 3), 14))
    with np.errstate(all="ignore"):
        ret = c / lag(c, 1) - 1.0
    sd = talib.STDDEV(ret, 20, 1)
    check_both(kern, interp, "stdev_ret", sd, np.isnan(sd) | (talib.VAR(ret, 20, 1) >= TINY_VARIANCE))
    check_both(kern, interp, "highest_lowest", talib.MAX(talib.MIN(c, 5), 5))
    check_both(kern, interp, "sum_sum_y", skip_nan(lambda v: talib.SUM(talib.SUM(v, 3), 3), y))
    check_both(kern, interp, "ema_ema_ema_y",
               skip_nan(lambda v: talib.EMA(talib.EMA(talib.EMA(v, 3), 4), 5), y))


# ==== 3. the other functions against NumPy ======================================================
SCALAR_FEATURES = {
    # change / returns / log_return
    "ch1": "change(close)", "ch3": "change(close, 3)", "chk": "change(close, k)", "ch_y": "change(y)",
    "ret1": "returns(close)", "ret5": "returns(close, 5)", "retk": "returns(close, k)",
    "ret_y": "returns(y, 2)", "lr": "log_return(close)", "lr_y": "log_return(y)",
    "lr3": "log(close / close[3])",
    # lookback, literal and param k, on numbers, bools and a feature's own past
    "lb0": "close[0]", "lb3": "close[3]", "lbk": "close[k]", "lbj": "close[j]", "lb_y": "y[2]", "lb_far": "close[300]",
    "up": "close > close[1]", "up2": "up[2]", "upk": "up[k]", "peak": "max(nz(peak[1], close), close)",
    # crosses and bars_since
    "fast": "sma(close, 5)", "slow": "sma(close, 20)",
    "xa": "crosses_above(fast, slow)", "xb": "crosses_below(fast, slow)",
    "xa_y": "crosses_above(y, z)", "xb_y": "crosses_below(y, z)",
    "bs_xa": "bars_since(xa)", "bs_y": "bars_since(y > 2)", "bs_never": "bars_since(close < 0)",
    # one-argument functions
    "abs_y": "abs(y)", "log_y": "log(y)", "exp_y": "exp(y)", "sqrt_y": "sqrt(y)", "sign_y": "sign(y)",
    "floor_y": "floor(y)", "ceil_y": "ceil(y)", "round_y": "round(y)", "log_z": "log(z)",
    # min / max / clip / nz / is_nan
    "min2": "min(y, z)", "max2": "max(y, z)", "min3": "min(y, z, close - 100)", "max3": "max(y, 0, z)",
    "clip_y": "clip(y, -1.5, 2.5)", "clip_yz": "clip(z, y - 1, y + 1)",
    "nz_y": "nz(y, 0)", "nz_yz": "nz(y, z)", "isnan_y": "is_nan(y)", "isnan_sma": "is_nan(sma(y, 3))",
    # time
    "t_hour": "hour(ts)", "t_minute": "minute_of_day(ts)", "t_weekday": "day_of_week(ts)",
    # if/then/else
    "ite": "if y > 0 then y else -1", "ite_nan": "if is_nan(y) then z * 2 else y",
    "ite_bool": "if close > close[1] then y > 0 else z > 0",
    "ite_nested": "if y > 1 then 1 else if y < -1 then -1 else 0",
    # power (right-associative, binds tighter than unary minus)
    "pow2": "y ** 2", "pow_half": "y ** 0.5", "pow_inv": "z ** -1", "pow_yz": "y ** z",
    "pow_2y": "2 ** y", "neg_pow": "-close ** 2", "pow_right": "2 ** z ** 2",
    # division by zero: inf or NaN, never an error
    "div": "y / z", "div_self0": "close / (close - close)", "div_00": "(y - y) / (z - z)",
    "div_neg": "-close / (z * 0)",
    # comparisons: false on NaN, `!=` included
    "gt": "y > z", "ge": "y >= z", "lt": "y < z", "le": "y <= z", "eq": "y == z", "ne": "y != z",
    "ne_self": "y != y", "eq_self": "y == y", "not_gt": "not (y > z)", "ne_lit": "y != 0",
    "bool_ne": "(y > 0) != (z > 0)", "bool_eq": "(y > 0) == (z > 0)",
    # the same rules on literals, which the optimiser folds at compile time
    "c_div": "1 / 0", "c_div_neg": "-1 / 0", "c_div00": "0 / 0", "c_pow": "0 ** -1", "c_log": "log(0)",
    "c_sqrt": "sqrt(-1)", "c_round": "round(-2.5)", "c_nan_ne": "(0 / 0) != 1", "c_nan_eq": "(0 / 0) == (0 / 0)",
    "c_ite": "if (0 / 0) > 1 then 1 else 2", "c_min": "min(1, 0 / 0, 3)", "c_nz": "nz(0 / 0, 7)",
}
SCALAR_PARAMS = {"k": 4, "j": 2}
BOOL_FEATURES = {"up", "up2", "upk", "xa", "xb", "xa_y", "xb_y", "isnan_y", "isnan_sma", "ite_bool",
                 "gt", "ge", "lt", "le", "eq", "ne", "ne_self", "eq_self", "not_gt", "ne_lit", "bool_ne", "bool_eq",
                 "c_nan_ne", "c_nan_eq"}


def bars_since(c):
    out = np.full(len(c), np.nan)
    last = None
    for i, v in enumerate(c):
        if v:
            last = i
        if last is not None:
            out[i] = i - last
    return out


def round_half_away(x):
    """Exact: compares the fraction (x - trunc(x) is exact in floating point) with 0.5."""
    t = np.trunc(x)
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(x - t) >= 0.5, t + np.sign(x), t)


def utc_parts(ts):
    base = datetime(1970, 1, 1, tzinfo=timezone.utc)
    dts = [base + timedelta(microseconds=int(t) // 1000) for t in ts]
    return (np.array([d.hour for d in dts], dtype=float),
            np.array([d.hour * 60 + d.minute for d in dts], dtype=float),
            np.array([d.weekday() for d in dts], dtype=float))


def scalar_reference(d, ts, k, j):
    c, y, z = d["close"], d["y"], d["z"]
    hour, mod, dow = utc_parts(ts)
    fast, slow = talib.SMA(c, 5), talib.SMA(c, 20)
    up = nan_false(np.greater, c, lag(c, 1))
    xa = nan_false(np.greater, fast, slow) & nan_false(np.less_equal, lag(fast, 1), lag(slow, 1))
    peak = np.maximum.accumulate(c)
    with np.errstate(all="ignore"):
        ref = {
            "ch1": c - lag(c, 1), "ch3": c - lag(c, 3), "chk": c - lag(c, k), "ch_y": y - lag(y, 1),
            "ret1": c / lag(c, 1) - 1, "ret5": c / lag(c, 5) - 1, "retk": c / lag(c, k) - 1,
            "ret_y": y / lag(y, 2) - 1, "lr": np.log(c / lag(c, 1)), "lr_y": np.log(y / lag(y, 1)),
            "lr3": np.log(c / lag(c, 3)),
            "lb0": c, "lb3": lag(c, 3), "lbk": lag(c, k), "lbj": lag(c, j), "lb_y": lag(y, 2), "lb_far": lag(c, 300),
            "up": up, "up2": lag_bool(up, 2), "upk": lag_bool(up, k), "peak": peak,
            "fast": fast, "slow": slow, "xa": xa,
            "xb": nan_false(np.less, fast, slow) & nan_false(np.greater_equal, lag(fast, 1), lag(slow, 1)),
            "xa_y": nan_false(np.greater, y, z) & nan_false(np.less_equal, lag(y, 1), lag(z, 1)),
            "xb_y": nan_false(np.less, y, z) & nan_false(np.greater_equal, lag(y, 1), lag(z, 1)),
            "bs_xa": bars_since(xa), "bs_y": bars_since(nan_false(np.greater, y, 2.0)),
            "bs_never": np.full(len(c), np.nan),
            "abs_y": np.abs(y), "log_y": np.log(y), "exp_y": np.exp(y), "sqrt_y": np.sqrt(y),
            "sign_y": np.sign(y), "floor_y": np.floor(y), "ceil_y": np.ceil(y), "round_y": round_half_away(y),
            "log_z": np.log(z),
            "min2": np.minimum(y, z), "max2": np.maximum(y, z), "min3": np.minimum(np.minimum(y, z), c - 100),
            "max3": np.maximum(np.maximum(y, 0.0), z),
            "clip_y": np.clip(y, -1.5, 2.5),
            "clip_yz": np.where(np.isnan(y) | np.isnan(z), np.nan, np.clip(z, y - 1, y + 1)),
            "nz_y": np.where(np.isnan(y), 0.0, y), "nz_yz": np.where(np.isnan(y), z, y),
            "isnan_y": np.isnan(y), "isnan_sma": np.isnan(skip_nan(lambda v: talib.SMA(v, 3), y)),
            "t_hour": hour, "t_minute": mod, "t_weekday": dow,
            "ite": np.where(nan_false(np.greater, y, 0.0), y, -1.0),
            "ite_nan": np.where(np.isnan(y), z * 2, y),
            "ite_bool": np.where(up, nan_false(np.greater, y, 0.0), nan_false(np.greater, z, 0.0)),
            "ite_nested": np.where(nan_false(np.greater, y, 1.0), 1.0, np.where(nan_false(np.less, y, -1.0), -1.0, 0.0)),
            "pow2": np.power(y, 2.0), "pow_half": np.power(y, 0.5), "pow_inv": np.power(z, -1.0),
            "pow_yz": np.power(y, z), "pow_2y": np.power(2.0, y), "neg_pow": -np.power(c, 2.0),
            "pow_right": np.power(2.0, np.power(z, 2.0)),
            "div": np.divide(y, z), "div_self0": c / (c - c), "div_00": (y - y) / (z - z),
            "div_neg": -c / (z * 0.0),
            "gt": nan_false(np.greater, y, z), "ge": nan_false(np.greater_equal, y, z),
            "lt": nan_false(np.less, y, z), "le": nan_false(np.less_equal, y, z),
            "eq": nan_false(np.equal, y, z), "ne": nan_false(np.not_equal, y, z),
            "ne_self": nan_false(np.not_equal, y, y), "eq_self": nan_false(np.equal, y, y),
            "not_gt": ~nan_false(np.greater, y, z), "ne_lit": nan_false(np.not_equal, y, 0.0),
            "bool_ne": nan_false(np.greater, y, 0.0) != nan_false(np.greater, z, 0.0),
            "bool_eq": nan_false(np.greater, y, 0.0) == nan_false(np.greater, z, 0.0),
        }
    const = {"c_div": np.inf, "c_div_neg": -np.inf, "c_div00": np.nan, "c_pow": np.inf, "c_log": -np.inf,
             "c_sqrt": np.nan, "c_round": -3.0, "c_nan_ne": False, "c_nan_eq": False, "c_ite": 2.0,
             "c_min": np.nan, "c_nz": 7.0}
    ref.update({name: np.full(len(c), value, dtype=bool if isinstance(value, bool) else float)
                for name, value in const.items()})
    assert set(ref) == set(SCALAR_FEATURES)
    return ref


@functools.lru_cache(maxsize=None)
def scalar_policy():
    return compile_features("scalar_fns", SCALAR_FEATURES, SCALAR_PARAMS, inputs=["y", "z"])


SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5, 1.5, 3.0, -7.25,
                     700.0, -700.0, 1e-300])


@functools.lru_cache(maxsize=None)
def scalar_dataset(name: str):
    if name == "mixed":
        # around 2024-01-01 (a Monday), steps of 1 to 150 minutes plus some seconds:
        # crosses many midnights and every weekday
        rng = np.random.default_rng(2024)
        n = 3000
        steps = rng.integers(1, 150, n) * 60 * NS + rng.integers(0, 60, n) * NS
        ts = np.datetime64("2023-12-29T20:00", "ns").astype(np.int64) + np.cumsum(steps)
        c = np.maximum(100.0 + np.cumsum(rng.normal(0.0, 0.4, n)), 1.0)
        y = rng.normal(0.0, 3.0, n)
        pick = rng.random(n)
        y[pick < 0.10] = rng.integers(-6, 6, int(np.sum(pick < 0.10))) + 0.5     # exact halves for round
        y[(pick >= 0.10) & (pick < 0.15)] = 0.0
        y[(pick >= 0.15) & (pick < 0.17)] = -0.0
        y[(pick >= 0.17) & (pick < 0.27)] = np.nan
        z = rng.choice(np.array([0.0, -0.0, 1.0, -2.0, 0.5, 3.0, np.nan, 2.0, -0.5]), n)
        normal = rng.random(n) < 0.4
        z[normal] = rng.normal(0.0, 2.0, int(normal.sum()))
        return ts, {"close": c, "y": y, "z": z}
    if name == "specials":
        # every pair of special values (NaN, +-inf, +-0, halves, huge exponents), with
        # timestamps crossing the epoch backwards from Monday 1969-12-29
        yy, zz = np.meshgrid(SPECIALS, SPECIALS, indexing="ij")
        y, z = yy.ravel(), zz.ravel()
        n = len(y)
        ts = np.datetime64("1969-12-29T00:00", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * (
            47 * 60 + 13) * NS + 123_456_789
        c = 50.0 + 10.0 * np.sin(np.arange(n) / 7.0)
        return ts, {"close": c, "y": y, "z": z}
    if name == "extremes":
        # time at the ends of int64 nanoseconds (1677 and 2262), around the epoch, and
        # jumping between them, backwards as often as forwards: no time arithmetic may
        # overflow or raise, and every time function is still exact
        rng = np.random.default_rng(63)
        lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        anchors = np.array([lo, hi, 0, -1, hi - 86_400 * NS, lo + 86_400 * NS], dtype=np.int64)
        n = 600
        offsets = rng.integers(0, 3 * 86_400, n) * NS + rng.integers(0, NS, n)
        picks = anchors[rng.integers(0, len(anchors), n)]
        ts = np.where(picks >= 0, picks - offsets, picks + offsets)   # inside int64 from either end
        ts[:6] = anchors
        c = np.maximum(100.0 + np.cumsum(rng.normal(0.0, 0.4, n)), 1.0)
        return ts, {"close": c, "y": rng.normal(0.0, 3.0, n), "z": rng.normal(0.0, 2.0, n)}
    raise AssertionError(name)


@functools.lru_cache(maxsize=None)
def scalar_run(name: str):
    ts, d = scalar_dataset(name)
    return ts, d, run_both(scalar_policy(), ts, d)


def _known_pow_mismatch(name, d):
    """(-inf) ** p for a non-integer p > 0: see test_power_of_minus_infinity."""
    if name not in ("pow_half", "pow_yz"):
        return None
    p = 0.5 if name == "pow_half" else d["z"]
    with np.errstate(invalid="ignore"):
        bad = (d["y"] == -np.inf) & (p > 0) & (np.asarray(p) != np.trunc(p))
    return ~bad


@pytest.mark.parametrize("dataset", ["mixed", "specials", "extremes"])
@pytest.mark.parametrize("name", list(SCALAR_FEATURES))
def test_scalar_function_matches_numpy(dataset, name):
    ts, d, (kern, interp) = scalar_run(dataset)
    want = scalar_reference(d, ts, SCALAR_PARAMS["k"], SCALAR_PARAMS["j"])[name]
    if name in BOOL_FEATURES:
        check_both(kern, interp, name, want, boolean=True)
    else:
        check_both(kern, interp, name, want, valid=_known_pow_mismatch(name, d), rtol=1e-12)


def test_scalar_data_covers_the_edges():
    """The data really has what the tests claim to cover."""
    ts, d, (kern, _) = scalar_run("mixed")
    y, z = d["y"], d["z"]
    assert np.isnan(y).sum() > 100 and (y == 0).sum() > 100 and (z == 0).sum() > 100
    assert (np.abs(y - np.trunc(y)) == 0.5).sum() > 100
    hour, mod, dow = utc_parts(ts)
    assert set(dow) == set(range(7)) and set(hour) == set(range(24))
    assert (np.diff(ts // (86_400 * NS)) > 0).sum() > 50          # many midnights
    assert kern["xa"].sum() > 5 and kern["xb"].sum() > 5
    assert np.isinf(kern["div"]).sum() > 10 and np.isnan(kern["div_00"]).all()
    sts = scalar_dataset("specials")[0]
    assert sts[0] < 0 < sts[-1]


def test_log_return_takes_no_k():
    """Spec section 4 defines `log_return(x)` only; `log(x / x[k])` is the k-event form."""
    with pytest.raises(PolicyError) as info:
        compile_features("bad_log_return", {"a": "log_return(close, 3)"})
    assert "E203" in str(info.value) or any(d.code == "E203" for d in info.value.diagnostics)


# ---- known mismatches of part 3 ---------------------------------------------------------------
def test_round_is_exact_at_the_edges():
    y = np.array([0.49999999999999994, -0.49999999999999994, 4503599627370497.0, -4503599627370497.0,
                  2.5, -2.5, 0.5, 1e300])
    n = len(y)
    d = {"close": np.full(n, 100.0), "y": y, "z": np.ones(n)}
    kern, interp = run_both(scalar_policy(), np.arange(n) * NS, d)
    want = np.array([0.0, -0.0, 4503599627370497.0, -4503599627370497.0, 3.0, -3.0, 1.0, 1e300])
    assert_matches(round_half_away(y), want, "oracle self-check", rtol=0)
    check_both(kern, interp, "round_y", want, rtol=0)


def test_power_of_minus_infinity():
    y = np.array([-np.inf, -np.inf, 1.0])
    z = np.array([0.5, 2.5, 1.0])
    d = {"close": np.full(3, 100.0), "y": y, "z": z}
    kern, interp = run_both(scalar_policy(), np.arange(3) * NS, d)
    for name in ("pow_half", "pow_yz"):
        np.testing.assert_array_equal(kern[name][:2], [np.inf, np.inf])
        np.testing.assert_array_equal(interp[name], kern[name], err_msg=name)


# ==== 4. windows and lookbacks from params ========================================================
# The moving policy of part 1 takes its windows from the param `n`, the scalar policy of
# part 3 its lookbacks from `k` and `j`: moving them needs no new compile. Each case
# checks one group of part 1's functions at a new n (the cases of the three policies
# per group this file once had).
@pytest.mark.parametrize("group, n", [("averages", 3), ("averages", 30), ("dispersion", 30),
                                      ("dispersion", 100), ("extremes", 3), ("extremes", 30)])
def test_window_param_moves_without_recompiling(group, n):
    """`with_params(n=...)` reuses the kernel object and gives TA-Lib's values at n."""
    cp = moving_policy()
    other = cp.with_params(n=n)
    assert other.kernel is cp.kernel, "with_params must not recompile"
    assert other.source == cp.source and other.kernel_path == cp.kernel_path
    assert other.params == {"n": float(n)} and cp.params == {"n": float(N_DEFAULT)}
    assert other.policy_hash != cp.policy_hash
    assert other.state.width != cp.state.width        # the windows really changed size
    for dataset in ("walk", "gappy"):
        for fn in GROUPS[group]:
            for src in SERIES:
                check_moving(dataset, fn, src, n, skip=(1, 2, 5, 200))
        if group == "extremes":
            data, (kern, interp) = moving_run(dataset, n)
            want = talib.ATR(data["high"], data["low"], data["close"], n)
            check_both(kern, interp, "atr_w", want, label=f"atr({n}) on {dataset}")
    # and the original still computes at the default
    for fn in GROUPS[group]:
        check_moving("walk", fn, "close", N_DEFAULT, skip=(1, 2, 5, 200))


def test_compile_with_params_equals_with_params():
    """Compiling the same text with n=30 loads the same kernel and hashes like with_params."""
    cp = moving_policy()
    text = policy_text("moving", moving_features(), {"n": N_DEFAULT}, inputs=["y"])
    direct = compile_policy(parse_policy_text(text, "moving.yaml"), {"n": 30})
    assert direct.kernel is cp.kernel
    assert direct.policy_hash == cp.with_params(n=30).policy_hash
    ts, data = moving_dataset("walk")
    kern, interp = run_both(direct, ts, data)
    check_both(kern, interp, "highest_close", talib.MAX(data["close"], 30), label="highest(close, 30)")


def generated(text: str) -> tuple[str, int]:
    """(kernel source, state width) a policy gets, without a Numba compile."""
    from policyc.compiler.emit import emit
    from policyc.compiler.lower import lower
    from policyc.compiler.passes import optimise

    checked = check_text(text, name="windows.yaml").checked
    program = optimise(lower(checked))
    return emit(program, checked), L.state_layout(program, [checked.params[k] for k in program.params]).width


@pytest.mark.parametrize("w", [1, 2, 5, 200])
def test_literal_and_param_windows_generate_one_kernel(w):
    """What lets part 1 check `fn(x, 2)` as `fn(x, n)` at n = 2: for every moving
    statistic (and atr, and rma of an expression) a literal window and a param window
    generate the same kernel source and the same state under the same value. And the
    source generated here is the one `compile_policy` loads for the moving policy."""
    calls = [f"{fn}({src}, {{w}})" for fn in GROUP_OF for src in SERIES]
    calls += ["atr({w})", f"rma({TRUE_RANGE}, {{w}})"]
    literal, param = (policy_text("windows", {f"f{i}": c.format(w=v) for i, c in enumerate(calls)}, {"n": w},
                                  inputs=["y"]) for v in (w, "n"))
    assert generated(literal) == generated(param)
    text = policy_text("moving", moving_features(), {"n": N_DEFAULT}, inputs=["y"])
    assert generated(text)[0] == moving_policy().source


@pytest.mark.parametrize("k, j", [(1, 0), (7, 11), (50, 1)])
def test_lookback_params_move_without_recompiling(k, j):
    """`x[j]`, `change(x, k)`, `returns(x, k)`, `up[k]` under new k and j (j = 0 is x itself)."""
    cp = scalar_policy()
    other = cp.with_params(k=k, j=j)
    assert other.kernel is cp.kernel
    ts, d = scalar_dataset("mixed")
    kern, interp = run_both(other, ts, d)
    ref = scalar_reference(d, ts, k, j)
    for name in ("chk", "retk", "lbk", "lbj", "upk"):
        if name in BOOL_FEATURES:
            check_both(kern, interp, name, ref[name], boolean=True)
        else:
            check_both(kern, interp, name, ref[name], rtol=1e-12)
