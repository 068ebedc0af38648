"""Loading, start-up and sweep rates for `make bench`.

`bench_loading` gives the rows of the printed table (rows per second from CSV and
Parquet next to pyarrow.csv alone) and, among them, the loading and start-up targets,
each a dict {"section", "target", "measured", "limit", "unit", "pass"}:

- load_table on a clean 1M-row CSV file: at least 1M rows/s;
- a warm `policyc backtest` of ema_cross over 1M events from .npz: under 0.6 s wall
  (warm: ema_cross's kernel, the parser tables and Python's bytecode already cached);
- `policyc validate`: under 100 ms wall;
- a warm `policyc backtest` from the 1M-row CSV file: no slower than vectorbt reading
  the same file and running `Portfolio.from_signals` on the same crossover, with its
  Rust engine, in the same run. That row needs a Python with vectorbt and vectorbt-rust
  ($POLICYC_BENCH_VBT_PYTHON, else this one; `make bench` installs them in .venv-vbt);
  without one it is a table row that says so instead of a target.

Every figure is the median of interleaved runs (the commands take turns), so a busy
machine slows both sides of a comparison alike. `bench_sweep` gives param combinations
per second. `python bench/data_and_sweep.py` prints the loading rows and targets.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ORCL = ROOT / "data" / "orcl-1995-2014.csv"
EMA = ROOT / "policies" / "ema_cross.yaml"
POLICYC = Path(sys.executable).with_name("policyc")
SECTION = "loading"
RUNS = 5  # per figure; medians


def _synthetic_csv(path: Path, n: int) -> None:
    """`n` one-minute bars from 2020-01-01, a seeded random walk (Datetime, OHLC, Volume)."""
    rng = np.random.default_rng(7)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    minutes = np.datetime64("2020-01-01T00:00") + np.arange(n).astype("timedelta64[m]")
    with open(path, "w") as f:
        f.write("Datetime,Open,High,Low,Close,Volume\n")
        stamps = np.datetime_as_string(minutes, unit="s")
        for t, c in zip(stamps, close):
            f.write(f"{t},{c:.4f},{c * 1.001:.4f},{c * 0.999:.4f},{c:.4f},1000\n")


def _npz_like(csv_path: Path, npz_path: Path) -> None:
    """The same bars as an .npz file: `ts` (int64 ns since 1970) and the price columns."""
    from policyc.runtime.data import load_table

    table = load_table(csv_path, ["open", "high", "low", "close", "volume"])
    np.savez(npz_path, ts=table.ts, **table.columns)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _wall(cmd: list[str], env: dict) -> float:
    """Seconds of wall time for one run of `cmd`; raises RuntimeError when it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def _medians(commands: dict[str, list[str]], env: dict, runs: int) -> dict[str, float]:
    """The median wall time of each command over `runs` rounds, the commands taking turns."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            times[name].append(_wall(cmd, env))
    return {name: statistics.median(t) for name, t in times.items()}


def _row(target: str, measured: float, limit: float, unit: str, higher_is_better: bool = False) -> dict:
    """A target row; it passes when `measured` is at most `limit` (at least, if `higher_is_better`)."""
    return {"section": SECTION, "target": target, "measured": measured, "limit": limit, "unit": unit,
            "pass": measured >= limit if higher_is_better else measured <= limit}


# vectorbt's side of the CSV comparison: read the file, the EMA 12/26 crossover, a 3% stop,
# 100 units, 1 bp fees, as policies/ema_cross.yaml does (without its volatility brake,
# which only makes policyc's work larger)
VBT_JOB = """
import sys
import pandas as pd
import vectorbt as vbt
vbt.settings["engine"] = "rust"
close = pd.read_csv(sys.argv[1], index_col="Datetime", parse_dates=True, usecols=["Datetime", "Close"])["Close"]
fast = vbt.MA.run(close, 12, ewm=True).ma
slow = vbt.MA.run(close, 26, ewm=True).ma
entries = fast.vbt.crossed_above(slow)
exits = fast.vbt.crossed_below(slow)
pf = vbt.Portfolio.from_signals(close, entries, exits, size=100, fees=0.0001, sl_stop=0.03, init_cash=100000)
print(pf.total_return())
"""


def _vbt_python() -> tuple[str | None, str]:
    """A Python that imports vectorbt with its Rust engine, and why not when there is none."""
    python = os.environ.get("POLICYC_BENCH_VBT_PYTHON") or sys.executable
    try:
        probe = subprocess.run([python, "-c", "import vectorbt, vectorbt_rust"], capture_output=True, text=True,
                               timeout=120)
    except (OSError, subprocess.TimeoutExpired):  # no such interpreter (its environment did not install)
        probe = None
    if probe is None or probe.returncode != 0:
        return None, (f"vectorbt and vectorbt-rust not installed for {python} (set POLICYC_BENCH_VBT_PYTHON "
                      "to a Python that has them)")
    return python, ""


def bench_loading(n: int = 1_000_000, runs: int = RUNS, cache: str | None = None) -> list:
    """Table rows [what, time, rows/s] and target dicts (see the module's docstring), on `n`
    synthetic minute bars; `cache` is a POLICYC_CACHE that may already hold ema_cross's
    kernel (default: a new one, filled by a first, unmeasured run)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from policyc.runtime.data import load_table

    rows: list = []
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, npz_path, parquet_path = (Path(tmp) / f"bars.{ext}" for ext in ("csv", "npz", "parquet"))
        _synthetic_csv(csv_path, n)
        _npz_like(csv_path, npz_path)
        pq.write_table(pcsv.read_csv(csv_path), parquet_path)
        wanted = ["price", "high", "low", "close", "volume"]
        loads: dict[str, list[float]] = {"CSV": [], "Parquet": [], "pyarrow": []}
        for _ in range(runs):
            loads["CSV"].append(_timed(lambda: load_table(csv_path, wanted)))
            loads["Parquet"].append(_timed(lambda: load_table(parquet_path, wanted)))
            loads["pyarrow"].append(_timed(lambda: pcsv.read_csv(csv_path)))
        rate = {label: n / statistics.median(times) for label, times in loads.items()}
        for label in ("CSV", "Parquet"):
            rows.append([f"load_table {label} ({n:,} rows), median", f"{n / rate[label] * 1e3:,.0f} ms",
                         f"{rate[label]:,.0f}"])
        rows.append(["baseline: pyarrow.csv.read_csv alone, median", f"{n / rate['pyarrow'] * 1e3:,.0f} ms",
                     f"{rate['pyarrow']:,.0f}"])
        rows.append(_row(f"load_table, clean CSV of {n:,} rows ({rate['pyarrow'] / rate['CSV']:.1f}x pyarrow.csv "
                         "alone)", rate["CSV"], 1e6, "rows/s", higher_is_better=True))

        # warm as an installed policyc is: the kernel, the parser tables and the bytecode cached
        # (the bytecode in this run's folder, whatever PYTHONDONTWRITEBYTECODE says)
        env = {**os.environ, "POLICYC_CACHE": cache or str(Path(tmp) / "cache"),
               "PYTHONPYCACHEPREFIX": str(Path(tmp) / "bytecode")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        backtest = [str(POLICYC), "backtest", str(EMA), "--data"]
        commands = {"npz": backtest + [f"ORCL={npz_path}"], "validate": [str(POLICYC), "validate", str(EMA)],
                    "csv": backtest + [f"ORCL={csv_path}"]}
        vbt_python, why_not = _vbt_python()
        if vbt_python:
            job = Path(tmp) / "vbt_job.py"
            job.write_text(VBT_JOB)
            commands["vbt"] = [vbt_python, str(job), str(csv_path)]
        for command in commands.values():  # fills the caches (vectorbt's Numba cache too)
            _wall(command, env)
        walls = _medians(commands, env, runs)
        rows.append(_row(f"warm `policyc backtest` ema_cross, {n:,} events from .npz, wall", walls["npz"], 0.6, "s"))
        rows.append(_row("`policyc validate` ema_cross, wall", walls["validate"], 0.1, "s"))
        if vbt_python:
            rows.append(_row(f"warm `policyc backtest` from the CSV, wall, against vectorbt (Rust engine) read_csv + "
                             f"from_signals: {walls['vbt']:.2f} s", walls["csv"], walls["vbt"], "s"))
        else:
            rows.append([f"warm `policyc backtest` from the CSV: {why_not}", f"{walls['csv'] * 1e3:,.0f} ms", "-"])
    return rows


def bench_sweep(jobs: int = 2) -> list[list]:
    from policyc.runtime.sweep import parse_grid, run_sweep

    grid = parse_grid([("fast", "2:40:1"), ("slow", "20:100:10")])
    args = argparse.Namespace(skip_bad_rows=False, start=None, end=None, date_format=None, fill=("next", 0), tz=None)
    combos = 1
    for values in grid.values():
        combos *= len(values)
    out = []
    for j in (1, jobs):
        t0 = time.perf_counter()
        run_sweep(ROOT / "policies" / "ema_cross.yaml", grid, [(None, str(ORCL))], {}, args, jobs=j)
        elapsed = time.perf_counter() - t0
        out.append([f"sweep ema_cross on ORCL, {combos} combinations, {j} process(es), with set-up",
                    f"{elapsed * 1e3:,.0f} ms", f"{combos / elapsed:,.1f} combos/s"])
    return out


if __name__ == "__main__":
    for row in bench_loading():
        if isinstance(row, dict):
            print(f"{'PASS' if row['pass'] else 'MISS'}  {row['measured']:,.3f} {row['unit']} (limit {row['limit']:,.3f})  "
                  f"{row['target']}")
        else:
            print("      " + "  ".join(row))
