"""Market data in: CSV, Parquet and .npz files -> the kernel's event columns.

Every file of ../shared/data loads as it is: `Date`, `Datetime`, or `Date` + `Time`
columns, any case, `Adj Close` and unknown columns ignored. Bad rows are errors that
name the file, the line and the problem; with `skip_bad_rows` they are skipped and
counted by kind. Nothing is dropped silently.
"""
from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.build import Events

PRICE_FIELDS = ("price", "open", "high", "low", "close", "bid", "ask")
_ALIASES = {"datetime": "datetime", "timestamp": "datetime", "date": "date", "time": "time",
            "last": "price", "vol": "volume"}
_IGNORED = {"adj close", "adj_close", "adjclose", "openinterest", "open_interest", "open interest"}


class DataError(Exception):
    """A data problem, with the file and line it comes from."""


@dataclass
class Table:
    """One file's rows: timestamps (ns, UTC) and named float columns."""

    path: str
    ts: np.ndarray
    columns: dict[str, np.ndarray]
    lines: np.ndarray                      # source line of each row, for messages
    skipped: Counter = field(default_factory=Counter)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)


def _canonical(name: str) -> str:
    key = name.strip().lower()
    if key in _IGNORED:
        return ""
    return _ALIASES.get(key, key.replace(" ", "_"))


def load_table(path: str | Path, wanted: list[str], skip_bad_rows: bool = False,
               start_ns: int | None = None, end_ns: int | None = None) -> Table:
    """Read the timestamp and the `wanted` columns of one file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        header, raw = _read_parquet(p)
    elif suffix == ".npz":
        header, raw = _read_npz(p)
    else:
        header, raw = _read_csv(p)
    return _build(str(path), header, raw, wanted, skip_bad_rows, start_ns, end_ns)


def _read_csv(p: Path) -> tuple[list[str], list[list[str]]]:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not a UTF-8 text file (byte {exc.start}); is it really CSV?") from None
    if "\x00" in text:
        raise DataError(f"{p}: contains NUL bytes; not a CSV file")
    reader = csv.reader(io.StringIO(text))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(f"{p}:{reader.line_num}: malformed CSV: {exc}") from None
    if not rows:
        raise DataError(f"{p}: empty file")
    return rows[0], rows[1:]


def _read_parquet(p: Path):
    import pyarrow.parquet as pq

    table = pq.read_table(p)
    header = table.column_names
    cols = []
    for name in header:
        col = table.column(name)
        if str(col.type).startswith("timestamp"):
            arr = col.cast("int64").to_numpy(zero_copy_only=False)
            cols.append(np.array(arr, dtype=np.int64))
        else:
            cols.append(col.to_numpy(zero_copy_only=False))
    return header, cols


def _read_npz(p: Path):
    with np.load(p, allow_pickle=False) as z:
        header = list(z.files)
        cols = [z[name] for name in header]
    return header, cols


def _parse_times(values: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ns since the epoch, and a mask of values that did not parse."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64), np.zeros(len(arr), bool)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").astype(np.int64), np.zeros(len(arr), bool)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        return np.where(bad, 0, arr).astype(np.int64), bad
    strings = np.char.strip(arr.astype(str))
    strings = np.char.replace(strings, " ", "T")
    strings = np.char.rstrip(strings, "Z")
    try:
        return strings.astype("datetime64[ns]").astype(np.int64), np.zeros(len(arr), bool)
    except ValueError:
        out = np.zeros(len(arr), np.int64)
        bad = np.zeros(len(arr), bool)
        for k, s in enumerate(strings):
            try:
                out[k] = np.datetime64(s, "ns").astype(np.int64)
            except ValueError:
                bad[k] = True
        return out, bad


def _to_float(values) -> tuple[np.ndarray, np.ndarray]:
    """Floats, and a mask of cells that are not numbers (empty cells included)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64), np.zeros(len(arr), bool)
    try:
        return arr.astype(np.float64), np.zeros(len(arr), bool)
    except ValueError:
        out = np.empty(len(arr))
        bad = np.zeros(len(arr), bool)
        for k, s in enumerate(arr):
            try:
                out[k] = float(s)
            except ValueError:
                out[k], bad[k] = np.nan, True
        return out, bad


def _build(path, header, raw, wanted, skip_bad_rows, start_ns, end_ns) -> Table:
    names = [_canonical(h) for h in header]
    index = {n: k for k, n in enumerate(names) if n}
    found = [h.strip() for h in header]
    is_csv = isinstance(raw, list)
    if is_csv:
        width = len(header)
        short = [k for k, row in enumerate(raw) if len(row) != width and any(c.strip() for c in row)]
        blank = {k for k, row in enumerate(raw) if not any(c.strip() for c in row)}
        lines = np.arange(2, len(raw) + 2)
        problems: list[tuple[int, str, str]] = [(k, "wrong number of fields",
                                                 f"has {len(raw[k])} fields, the header has {width}") for k in short]
        keep = [k for k in range(len(raw)) if k not in blank]
        bad_shape = set(short)
        rows = [raw[k] if k not in bad_shape else [""] * width for k in keep]
        lines = lines[keep]
        column = lambda c: [r[c] for r in rows]
        problems = [(keep.index(k), kind, msg) for k, kind, msg in problems]
        n = len(rows)
    else:
        n = len(raw[0]) if raw else 0
        lines = np.arange(n)
        column = lambda c: raw[c]
        problems = []

    # timestamps
    if "datetime" in index:
        ts, bad_ts = _parse_times(column(index["datetime"]))
    elif "date" in index and "time" in index:
        dates, times = column(index["date"]), column(index["time"])
        ts, bad_ts = _parse_times([f"{d.strip()}T{t.strip()}" for d, t in zip(dates, times)])
    elif "date" in index:
        ts, bad_ts = _parse_times(column(index["date"]))
    elif "ts" in index:
        ts, bad_ts = _parse_times(column(index["ts"]))
    else:
        raise DataError(f"{path}: no timestamp column; expected Date, Datetime, Date and Time, or ts "
                        f"(found: {', '.join(found)})")
    problems += [(k, "bad timestamp", "timestamp is not a date/time") for k in np.flatnonzero(bad_ts)]

    # value columns, with price <-> close filled in from each other
    available = set(index)
    columns: dict[str, np.ndarray] = {}
    for name in wanted:
        source = name
        if name not in available:
            if name == "price" and "close" in available:
                source = "close"
            elif name == "close" and "price" in available:
                source = "price"
            else:
                have = ", ".join(found)
                raise DataError(f"{path}: the policy reads `{name}` but the file has no such column "
                                f"(found: {have})")
        values, bad = _to_float(column(index[source]))
        input_column = name not in PRICE_FIELDS and name not in ("qty", "volume")
        if input_column:  # model inputs may be empty on rows without a value
            bad &= ~np.array([isinstance(v, str) and not v.strip() for v in column(index[source])]) if is_csv \
                else bad
        problems += [(k, "not a number", f"`{header[index[source]].strip()}` is not a number")
                     for k in np.flatnonzero(bad)]
        if name in PRICE_FIELDS:
            nonpos = ~bad & ~(values > 0)
            problems += [(k, "non-positive or NaN price",
                          f"`{header[index[source]].strip()}` is {values[k]:g}; prices must be positive")
                         for k in np.flatnonzero(nonpos)]
        columns[name] = values

    # order: equal timestamps are normal, going back in time is not
    order_bad = np.zeros(n, bool)
    ok_ts = ~bad_ts
    last = None
    back = np.flatnonzero(np.diff(ts) < 0) + 1 if n > 1 else np.array([], int)
    if len(back):
        for k in range(n):  # exact pass only when there is a problem
            if not ok_ts[k]:
                continue
            if last is not None and ts[k] < last:
                order_bad[k] = True
                continue
            last = ts[k]
        problems += [(k, "timestamp out of order", "timestamp is earlier than the row before")
                     for k in np.flatnonzero(order_bad)]

    skipped, skipped_lines = Counter(), {}
    if problems:
        problems.sort()
        if not skip_bad_rows:
            k, kind, msg = problems[0]
            more = f" ({len(problems) - 1} more problem rows; --skip-bad-rows skips them and reports each kind)" \
                if len(problems) > 1 else ""
            raise DataError(f"{path}:{_line(lines, k, is_csv)}: {msg}{more}")
        drop = np.zeros(n, bool)
        for k, kind, _ in problems:
            if not drop[k]:
                drop[k] = True
                skipped[kind] += 1
                skipped_lines.setdefault(kind, []).append(int(lines[k]))
        keep_mask = ~drop
        ts = ts[keep_mask]
        columns = {c: v[keep_mask] for c, v in columns.items()}
        lines = lines[keep_mask]
    if start_ns is not None or end_ns is not None:
        sel = np.ones(len(ts), bool)
        if start_ns is not None:
            sel &= ts >= start_ns
        if end_ns is not None:
            sel &= ts < end_ns
        ts, lines = ts[sel], lines[sel]
        columns = {c: v[sel] for c, v in columns.items()}
    if len(ts) == 0:
        raise DataError(f"{path}: no rows to run on" + (" in the chosen date range" if start_ns or end_ns else ""))
    return Table(path, ts, columns, lines, skipped, skipped_lines)


def _line(lines, k, is_csv) -> str:
    return f"{int(lines[k])}" if is_csv else f"row {int(lines[k])}"


def merge(tables: list[Table], columns: list[str]) -> Events:
    """One event stream from one table per instrument, by timestamp (stable: ties keep
    instrument order)."""
    ts = np.concatenate([t.ts for t in tables])
    inst = np.concatenate([np.full(len(t), k, np.int32) for k, t in enumerate(tables)])
    vals = np.concatenate([np.column_stack([t.columns[c] for c in columns]) if columns else np.zeros((len(t), 0))
                           for t in tables])
    if len(tables) > 1:
        order = np.argsort(ts, kind="stable")
        ts, inst, vals = ts[order], inst[order], vals[order]
    return Events(np.ascontiguousarray(ts), np.zeros(len(ts), np.int8), np.ascontiguousarray(inst),
                  np.ascontiguousarray(vals))
