"""Market data in: CSV, Parquet and .npz files -> the kernel's event columns.

Every file of data/ loads as it is: `Date`, `Datetime`, or `Date` + `Time`
columns, any case, `Adj Close` and unknown columns ignored. A CSV file may be delimited
by `,` `;` tab or `|` (the one its header line has most of); in a `;` file, as a European
Excel writes it, a comma in a number is the decimal mark. Timestamps are ISO 8601 text,
or any form a strptime `date_format` describes. Bad rows are errors that name the file,
the line, the value and the problem; with `skip_bad_rows` they are skipped and counted
by kind. Nothing is dropped silently.
"""
from __future__ import annotations

import csv
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from policyc.compiler.build import Events

PRICE_FIELDS = ("price", "open", "high", "low", "close", "bid", "ask")
_ALIASES = {"datetime": "datetime", "timestamp": "datetime", "date": "date", "time": "time",
            "last": "price", "vol": "volume"}
_IGNORED = {"adj close", "adj_close", "adjclose", "openinterest", "open_interest", "open interest"}
DELIMITERS = (",", ";", "\t", "|")
ISO_FORMS = "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.fff]"  # what NumPy reads without a date_format


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
               start_ns: int | None = None, end_ns: int | None = None, date_format: str | None = None) -> Table:
    """Read the timestamp and the `wanted` columns of one file; rows in [start_ns, end_ns]
    (ns since the epoch, UTC, both inclusive). `date_format` (strptime syntax) reads text
    timestamps; a time zone in it (`%z`) is converted to UTC, without one the time is UTC.
    Raises DataError naming the file (and line) when the file cannot be used."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        source = _read_parquet(p)
    elif suffix == ".npz":
        source = _read_npz(p)
    else:
        source = _read_csv(p)
    return _build(str(path), source, wanted, skip_bad_rows, start_ns, end_ns, date_format)


@dataclass
class _Source:
    """A file's header and its cells as columns, with the file line of every row."""

    header: list[str]
    columns: list            # one sequence per header entry
    lines: np.ndarray
    problems: dict           # row -> (kind, message) found while reading
    line_label: str = ""     # "" for text files (lines), "row " for binary ones
    decimal_comma: bool = False


def _read_csv(p: Path) -> _Source:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not a UTF-8 text file (byte {exc.start}); is it really CSV?") from None
    if "\x00" in text:
        raise DataError(f"{p}: contains NUL bytes; not a CSV file")
    end = text.find("\n")
    header_line = text if end < 0 else text[:end]
    delimiter = max(DELIMITERS, key=header_line.count)  # on a tie, or none at all: `,`
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows, lines = [], []
    try:
        header = next(reader, None)
        for row in reader:
            if any(c.strip() for c in row):
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{p}:{reader.line_num}: malformed CSV: {exc}") from None
    if not header:
        raise DataError(f"{p}: empty file")
    width = len(header)
    problems = {}
    for k, row in enumerate(rows):
        if len(row) != width:
            problems[k] = ("wrong number of fields", f"has {len(row)} fields, the header has {width}")
            rows[k] = [""] * width
    columns = [[r[c] for r in rows] for c in range(width)]
    return _Source(header, columns, np.array(lines, dtype=np.int64), problems, decimal_comma=delimiter == ";")


def _read_parquet(p: Path) -> _Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{p}: not a readable Parquet file: {exc}") from None
    columns = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            col = col.cast(pa.timestamp("ns", tz=getattr(col.type, "tz", None)))
            columns.append(col.cast(pa.int64()).to_numpy(zero_copy_only=False))
        else:
            columns.append(col.to_numpy(zero_copy_only=False))
    return _Source(table.column_names, columns, np.arange(table.num_rows), {}, "row ")


def _read_npz(p: Path) -> _Source:
    try:
        with np.load(p, allow_pickle=False) as z:
            header = list(z.files)
            columns = [z[name] for name in header]
    except (ValueError, OSError) as exc:
        raise DataError(f"{p}: not a readable .npz file: {exc}") from None
    n = len(columns[0]) if columns else 0
    if any(len(c) != n for c in columns):
        raise DataError(f"{p}: arrays of different lengths")
    return _Source(header, columns, np.arange(n), {}, "row ")


_NAT = np.iinfo(np.int64).min


def _parse_times(values, date_format: str | None) -> tuple[np.ndarray, np.ndarray]:
    """ns since the epoch, and a mask of values that are not a date/time. `date_format`
    applies to text; Parquet and .npz timestamps and numbers are read as they are."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64), np.zeros(len(arr), bool)
    if arr.dtype.kind == "M":
        out = arr.astype("datetime64[ns]").astype(np.int64)
        return out, out == _NAT
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        return np.where(bad, 0, arr).astype(np.int64), bad
    strings = np.char.strip(arr.astype(str))
    if date_format is not None:
        out = np.array([_strptime(text, date_format) for text in strings], np.int64)
        return out, out == _NAT
    if len(strings) and np.all(np.char.isdigit(np.char.lstrip(strings, "-"))):
        return strings.astype(np.int64), np.zeros(len(arr), bool)  # integer ns since the epoch
    strings = np.char.rstrip(np.char.replace(strings, " ", "T"), "Z")
    try:
        with warnings.catch_warnings():  # numpy warns on a UTC offset, then applies it
            warnings.simplefilter("ignore")
            out = strings.astype("datetime64[ns]").astype(np.int64)
    except ValueError:
        out = np.zeros(len(arr), np.int64)
        for k, text in enumerate(strings):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[k] = np.datetime64(text, "ns").astype(np.int64)
            except ValueError:
                out[k] = _NAT
    return out, out == _NAT


def _strptime(text: str, date_format: str) -> int:
    """ns since the epoch of `text` read with `date_format`, UTC; NaT when it does not match."""
    try:
        moment = datetime.strptime(text, date_format)
    except ValueError:
        return _NAT
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return int(np.datetime64(moment, "ns").astype(np.int64))


def _to_float(values, decimal_comma: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Floats, a mask of cells that are not numbers, and a mask of empty cells."""
    arr = np.asarray(values)
    if arr.dtype.kind in "fiub":
        out = arr.astype(np.float64)
        return out, np.zeros(len(arr), bool), np.zeros(len(arr), bool)
    texts = np.char.strip(arr.astype(str))
    if decimal_comma:
        texts = np.char.replace(texts, ",", ".")
    empty = texts == ""
    out = np.full(len(arr), np.nan)
    bad = np.zeros(len(arr), bool)
    try:
        out[~empty] = texts[~empty].astype(np.float64)
    except ValueError:
        for k in np.flatnonzero(~empty):
            try:
                out[k] = float(texts[k])
            except ValueError:
                bad[k] = True
    return out, bad, empty


def _timestamp_values(path: str, src: _Source, index: dict, found: list[str]):
    """The timestamp of every row as the file has it (`Date` and `Time` joined by a space)."""
    col = lambda name: src.columns[index[name]]
    if "datetime" in index:
        return col("datetime")
    if "date" in index and "time" in index:
        return [f"{str(d).strip()} {str(t).strip()}" for d, t in zip(col("date"), col("time"))]
    for name in ("date", "ts"):
        if name in index:
            return col(name)
    raise DataError(f"{path}: no timestamp column; expected Date, Datetime, Date and Time, or ts "
                    f"(found: {', '.join(found)})")


def _bad_timestamp(text: str, date_format: str | None) -> str:
    if not text:
        return "timestamp is empty"
    if date_format is not None:
        return f"timestamp `{text}` does not match --date-format `{date_format}`"
    return f"timestamp `{text}` is not a date/time: use {ISO_FORMS}, or --date-format FORMAT such as %m/%d/%Y"


def _build(path: str, src: _Source, wanted: list[str], skip_bad_rows: bool, start_ns, end_ns, date_format) -> Table:
    names = [_canonical(h) for h in src.header]
    index = {n: k for k, n in enumerate(names) if n}
    found = [str(h).strip() for h in src.header]
    n = len(src.lines)
    problems: dict[int, tuple[str, str]] = dict(src.problems)  # first problem of a row wins

    def report(rows, kind, message):
        for k in rows:
            problems.setdefault(int(k), (kind, message(int(k)) if callable(message) else message))

    stamps = _timestamp_values(path, src, index, found)
    ts, bad_ts = _parse_times(stamps, date_format)
    report(np.flatnonzero(bad_ts), "bad timestamp", lambda k: _bad_timestamp(str(stamps[k]).strip(), date_format))

    columns: dict[str, np.ndarray] = {}
    for name in wanted:  # price and close stand in for each other (spec section 2)
        source = name if name in index else {"price": "close", "close": "price"}.get(name)
        if source not in index:
            needed = f"`{name}`" + (" (or `close`)" if name == "price" else " (or `price`)" if name == "close" else "")
            raise DataError(f"{path}: the policy reads {needed} but the file has no such column "
                            f"(found: {', '.join(found)})")
        label, cells = found[index[source]], src.columns[index[source]]
        values, bad, empty = _to_float(cells, src.decimal_comma)
        is_input = name not in PRICE_FIELDS and name not in ("qty", "volume")
        if not is_input:  # a model input may be empty on rows without a value; market data may not
            report(np.flatnonzero(empty), "not a number", f"`{label}` is empty: not a number")
        report(np.flatnonzero(bad), "not a number",
               lambda k, c=cells, lab=label: f"`{lab}` is not a number: `{str(c[k]).strip()}`")
        if name in PRICE_FIELDS:
            report(np.flatnonzero(~bad & ~empty & ~((values > 0) & (values < np.inf))), "non-positive, NaN or infinite price",
                   lambda k, v=values, lab=label: f"`{lab}` is {v[k]:g}; prices must be positive and finite")
        columns[name] = values

    # equal timestamps are normal (several trades in one millisecond); going back is not
    if n > 1 and np.any(np.diff(ts) < 0):
        last = None
        for k in range(n):
            if k in problems:
                continue
            if last is not None and ts[k] < last:
                report([k], "timestamp out of order", "timestamp is earlier than the row before")
                continue
            last = ts[k]

    skipped, skipped_lines = Counter(), {}
    if problems:
        rows = sorted(problems)
        if len(rows) == n or not skip_bad_rows:
            first = f"{path}:{src.line_label}{int(src.lines[rows[0]])}: {problems[rows[0]][1]}"
            if len(rows) == n:  # skipping would leave nothing: say what is wrong, by kind
                kinds = Counter(problems[k][0] for k in rows)
                raise DataError(f"{first} (every row is bad; {', '.join(f'{kind}: {c}' for kind, c in kinds.items())})")
            more = f" ({len(rows) - 1} more problem rows; --skip-bad-rows skips them and reports each kind)" \
                if len(rows) > 1 else ""
            raise DataError(first + more)
        keep = np.ones(n, bool)
        for k in rows:
            kind = problems[k][0]
            keep[k] = False
            skipped[kind] += 1
            skipped_lines.setdefault(kind, []).append(int(src.lines[k]))
        ts, lines = ts[keep], src.lines[keep]
        columns = {c: v[keep] for c, v in columns.items()}
    else:
        lines = src.lines
    if start_ns is not None or end_ns is not None:
        sel = np.ones(len(ts), bool)
        if start_ns is not None:
            sel &= ts >= start_ns
        if end_ns is not None:
            sel &= ts <= end_ns
        ts, lines = ts[sel], lines[sel]
        columns = {c: v[sel] for c, v in columns.items()}
    if len(ts) == 0:
        raise DataError(f"{path}: no rows to run on" + (" in the chosen date range" if start_ns or end_ns else ""))
    return Table(path, ts, columns, lines, skipped, skipped_lines)


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
