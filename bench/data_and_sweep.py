"""Loading and sweep rates for `make bench`: rows per second from CSV and Parquet, and
param combinations per second on 2 processes."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ORCL = ROOT / "data" / "orcl-1995-2014.csv"


def _synthetic_csv(path: Path, n: int) -> None:
    rng = np.random.default_rng(7)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    minutes = np.datetime64("2020-01-01T00:00") + np.arange(n).astype("timedelta64[m]")
    with open(path, "w") as f:
        f.write("Datetime,Open,High,Low,Close,Volume\n")
        stamps = np.datetime_as_string(minutes, unit="s")
        for t, c in zip(stamps, close):
            f.write(f"{t},{c:.4f},{c * 1.001:.4f},{c * 0.999:.4f},{c:.4f},1000\n")


def bench_loading(n: int = 1_000_000) -> list[list]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from policyc.runtime.data import load_table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "bars.csv"
        _synthetic_csv(csv_path, n)
        parquet_path = Path(tmp) / "bars.parquet"
        pq.write_table(pcsv.read_csv(csv_path), parquet_path)
        wanted = ["price", "high", "low", "close", "volume"]
        for label, path in (("CSV", csv_path), ("Parquet", parquet_path)):
            best = min(_timed(lambda: load_table(path, wanted)) for _ in range(3))
            rows.append([f"load_table {label} ({n:,} rows)", f"{best * 1e3:,.0f} ms", f"{n / best:,.0f}"])
        best = min(_timed(lambda: pcsv.read_csv(csv_path)) for _ in range(3))
        rows.append([f"baseline: pyarrow.csv.read_csv alone", f"{best * 1e3:,.0f} ms", f"{n / best:,.0f}"])
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_sweep(jobs: int = 2) -> list[list]:
    from policyc.runtime.sweep import parse_grid, run_sweep

    grid = parse_grid([("fast", "2:40:1"), ("slow", "20:100:10")])
    args = argparse.Namespace(skip_bad_rows=False, start=None, end=None, date_format=None, fill="next")
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
