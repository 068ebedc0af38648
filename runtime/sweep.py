"""`policyc sweep`: every combination of param values, one compiled kernel, N processes.

Params are kernel arguments, so each combination re-binds and re-checks the policy but
reuses the machine code; workers are forked after the data is loaded, so they share it.
"""
from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from decimal import Decimal, InvalidOperation
from pathlib import Path

from policyc.compiler.build import compile_policy
from policyc.dsl.diagnostics import PolicyError

from .backtest import figure_text, fill_mode, load_events, run_backtest, skipped_rows_warnings, summary

METRICS = ("final_equity", "total_return", "max_drawdown", "sharpe", "sortino", "win_rate", "profit_factor",
           "exposure", "fees", "trades", "orders")

LOWER_IS_BETTER = {"max_drawdown", "fees"}  # every other metric ranks highest first

_STATE: dict = {}


_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*"
_TWO_ENDS = re.compile(f"{_NUMBER}[-\u2013:]{_NUMBER}")  # `5-15`, `5–15` or `5:15`: a range without its step


def parse_values(text: str) -> list[float | bool]:
    """`5:50:5` (stop included), `20,30,50`, or `true,false`. Raises ValueError saying
    what is wrong, with the range meant when it was written `5-15` or `5:15`."""
    text = text.strip()
    ends = _TWO_ENDS.fullmatch(text)
    if ends:
        raise ValueError(f"a range is start:stop:step; did you mean `{ends[1]}:{ends[2]}:1`?")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"a range is start:stop:step, not `{text}`")
        try:
            start, stop, step = (Decimal(p) for p in parts)
        except InvalidOperation:
            raise ValueError(f"a range is start:stop:step of numbers, not `{text}`") from None
        if step <= 0 or stop < start:
            raise ValueError(f"range `{text}` is empty or has a step that is not positive")
        count = int((stop - start) / step) + 1
        if count > 100_000:
            raise ValueError(f"range `{text}` has {count:,} values; split the sweep")
        return [float(start + k * step) for k in range(count)]
    values = []
    for part in text.split(","):
        p = part.strip().lower()
        if p in ("true", "false"):
            values.append(p == "true")
            continue
        try:
            values.append(float(p[:-1]) / 100 if p.endswith("%") else float(p))
        except ValueError:
            raise ValueError(f"`{part}` is not a number") from None
    return values


def parse_grid(specs: list[tuple[str, str]]) -> dict[str, list]:
    """{name: values} from (name, text) pairs; raises ValueError naming the `-p` at fault."""
    grid = {}
    for name, text in specs:
        if name in grid:
            raise ValueError(f"param `{name}` is given twice")
        try:
            grid[name] = parse_values(text)
        except ValueError as exc:
            raise ValueError(f"-p {name}={text}: {exc}") from None
    return grid


def _init(policy_path, data, account, args):
    base = compile_policy(policy_path, on_compile=lambda message: print(message, file=sys.stderr, flush=True))
    name, latency_ns = args.fill or (None, 0)
    events, tables = load_events(base, data, args.skip_bad_rows, args.start, args.end, args.date_format,
                                 bars=name in (None, "next-open", "latency"), zone=args.tz)
    for line in skipped_rows_warnings(tables):
        print(line, file=sys.stderr)
    _STATE.update(base=base, events=events, account=account, mode=fill_mode(name, events), latency_ns=latency_ns,
                  files=[t.path for t in tables])


def _run_one(combo: dict) -> dict:
    try:
        policy = _STATE["base"].with_params(**combo)
    except PolicyError as exc:  # sent back to the parent, which reports it
        return {"__diagnostics__": exc.diagnostics}
    result = run_backtest(policy, _STATE["events"], _STATE["mode"], _STATE["account"], progress=False,
                          record_equity=False, latency_ns=_STATE["latency_ns"])
    s = summary(result)
    row = {f"p.{k}": v for k, v in combo.items()}
    row.update({k: s[k] for k in METRICS})
    row["policy_hash"] = s["policy_hash"]
    return row


def run_sweep(policy_path, grid: dict, data, account, args, jobs: int = 1) -> list[dict]:
    """One summary row per combination of `grid`, in completion order. `args` carries the
    options of `policyc sweep` for loading and filling: `skip_bad_rows`, `start` and `end`
    (ns, or None), `date_format` (or None) and `fill` (None for the default, or a fill mode
    name and its latency in ns). Raises DataError and PolicyError."""
    names = list(grid)
    combos = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    jobs = max(1, min(jobs, len(combos)))  # no more processes than combinations
    _init(policy_path, data, account, args)  # compile and load once, before forking
    for combo in combos[:1]:  # check every param name and type early, with a clear diagnostic
        _STATE["base"].with_params(**combo)
    t0 = time.perf_counter()
    rows: list[dict] = []
    tty = sys.stderr.isatty()
    if jobs == 1 or len(combos) == 1:
        for k, combo in enumerate(combos, 1):
            rows.append(_run_one(combo))
            _progress(k, len(combos), t0, tty)
    else:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run_one, c) for c in combos]
            for k, fut in enumerate(as_completed(futures), 1):
                rows.append(fut.result())
                _progress(k, len(combos), t0, tty)
    if tty:
        sys.stderr.write("\n")
    for row in rows:
        if "__diagnostics__" in row:
            raise PolicyError(row["__diagnostics__"])
    elapsed = time.perf_counter() - t0
    print(f"{len(combos)} combinations in {elapsed:.2f}s ({len(combos) / elapsed:,.1f}/s) on {jobs} process(es)",
          file=sys.stderr)
    return rows


def _progress(done: int, total: int, t0: float, tty: bool):
    if tty and time.perf_counter() - t0 > 1.0:
        frac = done / total
        sys.stderr.write(f"\rsweep [{'#' * int(frac * 30):<30}] {done}/{total}")
        sys.stderr.flush()


def _cell(value):
    """A param value as it was written: `10`, not `10.0`."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**53 else value


def format_sweep(rows: list[dict]) -> str:
    """The rows as an aligned table for people: params as written, the metrics rounded as
    the backtest summary rounds them, the policy hash shortened to 12 characters (the CSV
    and `--format json` keep every digit)."""
    if not rows:
        return ""
    keys = list(rows[0])

    def text(key: str, value) -> str:
        if key.startswith("p."):
            return str(_cell(value))
        if key == "policy_hash":
            return value[:12]
        return figure_text(key, value)

    table = [keys] + [[text(k, row[k]) for k in keys] for row in rows]
    widths = [max(len(r[j]) for r in table) for j in range(len(keys))]
    return "\n".join("  ".join(cell.rjust(w) if j else cell.ljust(w)
                                for j, (cell, w) in enumerate(zip(r, widths))).rstrip()
                      for r in table)


def sweep_json(rows: list[dict]) -> str:
    """The rows as a JSON list, every figure at full precision (params as written)."""
    return json.dumps([{k: _cell(v) if k.startswith("p.") else v for k, v in row.items()} for row in rows], indent=2)


def write_sweep(rows: list[dict], path) -> None:
    """The rows as CSV to `path` (its missing parent directories created) or stdout."""
    if not rows:
        return
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    out = open(path, "w", newline="") if path else sys.stdout
    try:
        w = csv.DictWriter(out, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: _cell(v) if k.startswith("p.") else v for k, v in row.items()} for row in rows)
    finally:
        if path:
            out.close()
