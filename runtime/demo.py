"""`make demo`: validate and compile every example policy, print its hashes, and run it
over the bundled ORCL daily bars through the compiled kernel."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from compiler.build import Events, compile_policy
from dsl.diagnostics import PolicyError, render_text

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "orcl-1995-2014.csv"


def _orcl_events(columns: list[str], n_instruments: int) -> Events | None:
    if not DATA.exists():
        return None
    raw = np.genfromtxt(DATA, delimiter=",", names=True, dtype=None, encoding="utf-8")
    days = np.array(raw["Date"], dtype="datetime64[ns]").astype(np.int64)
    fields = {"price": raw["Close"], "open": raw["Open"], "high": raw["High"], "low": raw["Low"],
              "close": raw["Close"], "volume": raw["Volume"].astype(float)}
    vals = np.column_stack([fields.get(c, np.full(len(days), np.nan)) for c in columns])
    n = len(days) * n_instruments
    ts = np.repeat(days, n_instruments)
    inst = np.tile(np.arange(n_instruments), len(days))
    return Events.market(ts, np.repeat(vals, n_instruments, axis=0), inst) if n else None


def main() -> int:
    status = 0
    for path in sorted((ROOT / "policies").glob("*.yaml")):
        try:
            t0 = time.perf_counter()
            cp = compile_policy(path)
            compiled_s = time.perf_counter() - t0
        except PolicyError as exc:
            for d in exc.diagnostics:
                print(render_text(d, path.read_text().split("\n")), file=sys.stderr)
            status = 1
            continue
        line = f"{path.name:<20} policy_hash {cp.policy_hash[:16]}  build_hash {cp.build_hash[:16]}  compiled in {compiled_s:.2f}s"
        events = _orcl_events(cp.columns, len(cp.instruments))
        if events is not None:
            t0 = time.perf_counter()
            result = cp.run(events)
            run_s = time.perf_counter() - t0
            line += f"  | ORCL: {len(result.orders)} orders, final equity {result.equity[-1]:,.2f} ({run_s * 1e3:.1f} ms)"
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
