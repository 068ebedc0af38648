"""Every built-in function of the language (spec section 4) against an oracle.

Both back ends are checked: the Numba kernel (its decision trace carries every named
feature) and the reference interpreter. The oracles are TA-Lib for the moving
statistics and a straightforward NumPy / Python computation for everything else.

Semantics beyond the spec that these tests pin down (docs/language.md):
  * a NaN input to a stateful function is skipped: NaN out for that event and the
    state does not advance (leading NaNs then behave like TA-Lib's Python wrapper);
  * stdev is sqrt(variance) when variance > 0 else 0 (TA-Lib says 0 below 1e-8, so
    stdev/zscore are compared only where TA-Lib's variance is >= 1e-8);
  * round is half away from zero; min/max/clip propagate NaN; every comparison with a
    NaN operand is false (`!=` included);
  * hour/minute_of_day/day_of_week read `ts` (integer ns) in UTC, Monday = 0.

Each distinct policy text costs a Numba compile, so each group below puts many
features into one policy, compiled once per module.
"""
from __future__ import annotations

import csv
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

talib = pytest.importorskip("talib")

from compiler import layout as L  # noqa: E402
from compiler.build import Events, compile_policy  # noqa: E402
from compiler.interpret import Interpreter  # noqa: E402
from dsl.diagnostics import PolicyError  # noqa: E402
from dsl.document import parse_policy_text  # noqa: E402

ORCL = Path("/work/shared/data/orcl-1995-2014.csv")
NS = 1_000_000_000
RTOL = 1e-9
TINY_VARIANCE = 1e-8  # below it TA-Lib's STDDEV is 0 by definition


# ---- helpers ----------------------------------------------------------------------------
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


def compile_features(name, features, params=None, inputs=None):
    return compile_policy(parse_policy_text(policy_text(name, features, params, inputs), f"{name}.yaml"))


def run_both(cp, ts, data: dict[str, np.ndarray]):
    """Run kernel and interpreter over market events; {feature: values} for each."""
    cols = cp.columns
    assert cols[0] == "price"
    vals = np.column_stack([np.asarray(data["close" if c == "price" else c], dtype=np.float64) for c in cols])
    ev = Events.market(np.asarray(ts, dtype=np.int64), vals)
    res = cp.run(ev, trace=True)
    kern = res.trace[:, L.TRACE_FIXED:]
    it = Interpreter(cp.program, cp.params, cp.checked.risk, cp.checked.account, 1).run(ev.ts, ev.kind, ev.inst,
                                                                                         ev.vals)
    assert len(it.trace) == len(ev), "every event has a valid price, so every event is traced"
    interp = np.array([[float(v) for v in rec["features"]] for rec in it.trace], dtype=np.float64)
    names = cp.feature_names
    assert kern.shape == interp.shape == (len(ev), len(names))
    return ({n: kern[:, j] for j, n in enumerate(names)}, {n: interp[:, j] for j, n in enumerate(names)})


def assert_matches(got, want, label, valid=None, rtol=RTOL):
    """NaN exactly where the oracle is NaN; elsewhere equal within rtol (atol 0).

    `valid` (bool mask) restricts the comparison to positions where the oracle is
    well defined (e.g. TA-Lib's variance >= 1e-8 for stdev)."""
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
    bad = np.flatnonzero(np.asarray(got) != want)
    assert bad.size == 0, f"{label}: differs at {bad[:5].tolist()}: got {np.asarray(got)[bad[:5]]}, want {want[bad[:5]]}"


def check_both(kern, interp, name, want, valid=None, boolean=False):
    for backend, out in (("kernel", kern), ("interpreter", interp)):
        if boolean:
            assert_bool_matches(out[name], want, f"{backend} {name}")
        else:
            assert_matches(out[name], want, f"{backend} {name}", valid)


def first_valid_only(ref: np.ndarray) -> np.ndarray:
    """Mask of positions from the oracle's first non-NaN output on."""
    ok = ~np.isnan(ref)
    assert ok.any()
    mask = np.zeros(len(ref), dtype=bool)
    mask[np.argmax(ok):] = True
    return mask


def lag(x, k):
    out = np.full(len(x), np.nan)
    if k == 0:
        return np.array(x, dtype=float)
    out[k:] = x[:-k]
    return out


def lag_bool(c, k):
    out = np.zeros(len(c), dtype=bool)
    out[k:] = c[:-k]
    return out


def skip_nan(fn, x):
    """Apply fn to the non-NaN values only; NaN where x is NaN (the skip semantics)."""
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    out = np.full(len(x), np.nan)
    out[ok] = fn(x[ok])
    return out


# ---- oracles TA-Lib cannot give --------------------------------------------------------
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
    d = np.diff(x)
    out[1:] = np.where(d > 0, 100.0, 0.0)
    return out


def talib_moving(fn: str, x: np.ndarray, n: int) -> np.ndarray:
    """The oracle of `fn(x, n)` for a NaN-free (or leading-NaN) series."""
    x = np.asarray(x, dtype=np.float64)
    if fn == "sma":
        return talib.SMA(x, n)
    if fn == "ema":
        return talib.EMA(x, n)
    if fn == "wma":
        return talib.WMA(x, n)
    if fn == "variance":
        return talib.VAR(x, n, 1)
    if fn == "stdev":
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


# ---- data -------------------------------------------------------------------------------
def load_orcl():
    with ORCL.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ts = np.array([np.datetime64(r["Date"], "ns").astype(np.int64) for r in rows], dtype=np.int64)
    col = lambda k: np.array([float(r[k]) for r in rows])
    return ts, {"open": col("Open"), "high": col("High"), "low": col("Low"), "close": col("Close"),
                "volume": col("Volume")}


def random_bars(seed: int, n: int):
    """A random walk around 100 with consistent high/low, one bar a minute."""
    rng = np.random.default_rng(seed)
    close = 100.0 + np.cumsum(rng.normal(0.0, 0.5, n))
    close = np.maximum(close, 5.0)
    open_ = np.concatenate([[close[0]], close[:-1]]) + rng.normal(0.0, 0.1, n)
    high = np.maximum(open_, close) + np.abs(rng.normal(0.0, 0.3, n))
    low = np.minimum(open_, close) - np.abs(rng.normal(0.0, 0.3, n))
    ts = np.datetime64("2024-01-01T00:00", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * 60 * NS
    return ts, {"open": open_, "high": high, "low": low, "close": close}, rng


# ---- 1. moving statistics against TA-Lib -----------------------------------------------
MOVING_FNS = ("sma", "ema", "wma", "stdev", "variance", "sum", "highest", "lowest", "rsi", "rma", "zscore")
WINDOWS = (1, 2, 5, 14, 200)
ZSCORE_WINDOWS = (2, 5, 14, 200)     # zscore(x, 1) is 0/0 everywhere
ATR_WINDOWS = (1, 2, 14, 200)
SERIES = ("close", "y")              # y: an input stream, with NaNs


def moving_features() -> dict[str, str]:
    feats = {}
    for src in SERIES:
        for fn in MOVING_FNS:
            for n in (ZSCORE_WINDOWS if fn == "zscore" else WINDOWS):
                feats[f"{fn}_{src}_{n}"] = f"{fn}({src}, {n})"
    for n in ATR_WINDOWS:
        feats[f"atr_{n}"] = f"atr({n})"
        # rma of the true range written out by hand is ATR too
        feats[f"rma_tr_{n}"] = f"rma(max(high - low, abs(high - close[1]), abs(low - close[1])), {n})"
    # 2. nested calls keep their own state
    feats["ema_ema"] = "ema(ema(close, 10), 10)"
    feats["ema_10"] = "ema(close, 10)"
    feats["sma_ema_y"] = "sma(ema(y, 7), 5)"
    feats["rsi_sma"] = "rsi(sma(close, 3), 14)"
    feats["wma_wma"] = "wma(wma(close, 4), 9)"
    feats["stdev_ret"] = "stdev(returns(close), 20)"
    feats["highest_lowest"] = "highest(lowest(close, 5), 5)"
    feats["sum_sum_y"] = "sum(sum(y, 3), 3)"
    return feats


@pytest.fixture(scope="module")
def moving_policy():
    return compile_features("moving_stats", moving_features(), inputs=["y"])


@pytest.fixture(scope="module")
def orcl_run(moving_policy):
    ts, d = load_orcl()
    y = d["volume"] / 1e6
    y[:25] = np.nan                      # leading NaNs are skipped
    data = {**d, "y": y}
    return data, run_both(moving_policy, ts, data)


@pytest.fixture(scope="module")
def random_run(moving_policy):
    ts, d, rng = random_bars(7, 2500)
    y = rng.normal(3.0, 2.0, len(ts)) + np.cumsum(rng.normal(0.0, 0.2, len(ts)))
    y[:37] = np.nan
    data = {**d, "y": y}
    return data, run_both(moving_policy, ts, data)


@pytest.fixture(scope="module")
def gappy_run(moving_policy):
    """y with NaNs scattered through it: each is skipped, the state does not advance."""
    ts, d, rng = random_bars(11, 2000)
    y = 50.0 + np.cumsum(rng.normal(0.0, 1.0, len(ts)))
    y[:5] = np.nan
    y[rng.random(len(ts)) < 0.15] = np.nan
    y[700:760] = np.nan                  # a long gap
    data = {**d, "y": y}
    return data, run_both(moving_policy, ts, data)


def _check_moving(data, kern, interp, src, fn):
    x = data[src]
    for n in (ZSCORE_WINDOWS if fn == "zscore" else WINDOWS):
        name = f"{fn}_{src}_{n}"
        want = talib_moving(fn, x, n)
        check_both(kern, interp, name, want, well_defined(fn, x, n))
        # from the first output on the oracle is defined everywhere (no NaN holes)
        assert not np.isnan(want[first_valid_only(want)]).any() or fn == "zscore", name


@pytest.mark.parametrize("fn", MOVING_FNS)
@pytest.mark.parametrize("src", SERIES)
def test_moving_orcl(orcl_run, fn, src):
    data, (kern, interp) = orcl_run
    _check_moving(data, kern, interp, src, fn)


@pytest.mark.parametrize("fn", MOVING_FNS)
@pytest.mark.parametrize("src", SERIES)
def test_moving_random(random_run, fn, src):
    data, (kern, interp) = random_run
    _check_moving(data, kern, interp, src, fn)


@pytest.mark.parametrize("fn", MOVING_FNS)
def test_moving_skips_interior_nan(gappy_run, fn):
    """Equal to the oracle over the non-NaN values, scattered back; NaN at each NaN input."""
    data, (kern, interp) = gappy_run
    y = data["y"]
    ok = ~np.isnan(y)
    for n in (ZSCORE_WINDOWS if fn == "zscore" else WINDOWS):
        name = f"{fn}_y_{n}"
        want = skip_nan(lambda v: talib_moving(fn, v, n), y)
        valid = None
        if fn in ("stdev", "zscore"):
            valid = np.ones(len(y), dtype=bool)
            valid[ok] = well_defined(fn, y[ok], n)
        check_both(kern, interp, name, want, valid)
        assert np.isnan(kern[name][~ok]).all()


@pytest.mark.parametrize("run", ["orcl_run", "random_run"])
def test_atr(request, run):
    data, (kern, interp) = request.getfixturevalue(run)
    h, lo, c = data["high"], data["low"], data["close"]
    tr = np.maximum.reduce([h - lo, np.abs(h - lag(c, 1)), np.abs(lo - lag(c, 1))])  # NaN at 0
    for n in ATR_WINDOWS:
        want = talib.ATR(h, lo, c, n)
        check_both(kern, interp, f"atr_{n}", want)
        check_both(kern, interp, f"rma_tr_{n}", want)
        # and ATR is the Wilder smoothing of the true range
        assert_matches(want, skip_nan(lambda v: wilder(v, n), tr), f"oracle self-check atr {n}", rtol=1e-12)


def test_rma_matches_wilder_via_talib_identities(random_run):
    """rma(x, n) is the smoothing inside TA-Lib's ATR and RSI: check the oracle itself."""
    data, (kern, interp) = random_run
    x = data["close"]
    for n in (2, 14):
        gains = np.concatenate([[np.nan], np.maximum(np.diff(x), 0.0)])
        losses = np.concatenate([[np.nan], np.maximum(-np.diff(x), 0.0)])
        g, lo = skip_nan(lambda v: wilder(v, n), gains), skip_nan(lambda v: wilder(v, n), losses)
        assert_matches(100.0 * g / (g + lo), talib.RSI(x, n), f"Wilder RSI {n}", rtol=1e-9)
        check_both(kern, interp, f"rma_close_{n}", wilder(x, n))


# ---- 2. nested calls ----------------------------------------------------------------------
@pytest.mark.parametrize("run", ["orcl_run", "random_run", "gappy_run"])
def test_nested_calls_keep_their_own_state(request, run):
    data, (kern, interp) = request.getfixturevalue(run)
    c, y = data["close"], data["y"]
    check_both(kern, interp, "ema_10", talib.EMA(c, 10))
    check_both(kern, interp, "ema_ema", talib.EMA(talib.EMA(c, 10), 10))
    check_both(kern, interp, "sma_ema_y", skip_nan(lambda v: talib.SMA(talib.EMA(v, 7), 5), y))
    check_both(kern, interp, "rsi_sma", talib.RSI(talib.SMA(c, 3), 14))
    check_both(kern, interp, "wma_wma", talib.WMA(talib.WMA(c, 4), 9))
    with np.errstate(all="ignore"):
        ret = c / lag(c, 1) - 1.0
    sd = talib.STDDEV(ret, 20, 1)
    check_both(kern, interp, "stdev_ret", sd, np.isnan(sd) | (talib.VAR(ret, 20, 1) >= TINY_VARIANCE))
    check_both(kern, interp, "highest_lowest", talib.MAX(talib.MIN(c, 5), 5))
    check_both(kern, interp, "sum_sum_y", skip_nan(lambda v: talib.SUM(talib.SUM(v, 3), 3), y))
