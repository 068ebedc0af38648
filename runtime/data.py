"""Market data in: CSV, Parquet and .npz files -> the kernel's event columns.

Every file of data/ loads as it is: `Date`, `Datetime`, or `Date` + `Time` columns, any
case, `Adj Close` and unknown columns ignored. A CSV file is UTF-8, or UTF-16 as Excel's
"Unicode Text" saves it, and may be delimited by `,` `;` tab or `|` (the one its header
line has most of). In a file not delimited by `,`, as a European Excel writes it, a
comma in a number is the decimal mark; thousands separators are read where they cannot be
mistaken (`1.234,5`, `36.301.200`, `1,234.5`, `1 234,5`).

Timestamps are ISO 8601 text, any form a strptime `date_format` describes, or, with the
`date_format` `epoch` (`epoch-ms`, `epoch-us`, `epoch-ns`), a count since 1970. A number
is never silently read as a date in some unit: `19950103` or `1443043062` in a CSV file
is a bad timestamp whose message says what it looks like and which `date_format` reads
it, and so is an integer column of a Parquet or .npz file that looks like seconds,
milliseconds, microseconds or YYYYMMDD rather than nanoseconds.

Bad rows are errors that name the file, the line, the value and the problem (a value
beyond `layout.MAX_MAGNITUDE` included: `value too large`); with
`skip_bad_rows` they are skipped and counted by kind, unless more than half of the rows
have a bad or out-of-order timestamp: that is a wrong date format (or a file sorted
newest first), not a few bad rows, and it is an error either way. Nothing is dropped
silently.

A clean CSV file (UTF-8, ISO timestamps, plain finite numbers, no blank lines) is read
by pyarrow.csv, millions of rows a second; any other, and any file that the clean path
cannot read exactly as the cell-by-cell reader does, by the standard `csv` module, which
finds and names every problem. Both give the same rows, values and line numbers.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
import shlex
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from policyc.compiler.build import Events
from policyc.compiler.layout import MAX_MAGNITUDE
from policyc.compiler.sessions import localize

PRICE_FIELDS = ("price", "open", "high", "low", "close", "bid", "ask")
_ALIASES = {"datetime": "datetime", "timestamp": "datetime", "date": "date", "time": "time",
            "last": "price", "vol": "volume"}
_IGNORED = {"adj close", "adj_close", "adjclose", "openinterest", "open_interest", "open interest"}
DELIMITERS = (",", ";", "\t", "|")
ISO_FORMS = "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.fff]"  # what NumPy reads without a date_format
# date_format values that read a number since 1970 (ns per unit); every other value is strptime
EPOCH_FORMATS = {"epoch": 1_000_000_000, "epoch-ms": 1_000_000, "epoch-us": 1_000, "epoch-ns": 1}
TOO_MANY_TIMESTAMPS = 0.5  # above this share of rows with a timestamp problem, skipping is refused
NS_PER_DAY = 86_400_000_000_000


class DataError(Exception):
    """A data problem: the message names the file and line (`str(exc)`); `file`, `line`
    (a CSV line; None for a whole file, or a Parquet/.npz row, which `detail` names) and
    `detail` (the message without `FILE:LINE: `) are there for tools (`--format json`)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.file, self.line, self.detail = file, line, detail if detail is not None else message


def _error(path, detail: str, line: int | None = None, label: str = "") -> DataError:
    """DataError `PATH:LINE: detail` (`PATH:row N: ` for Parquet and .npz; `PATH: ` for
    the whole file)."""
    if line is None:
        return DataError(f"{path}: {detail}", str(path), None, detail)
    if label:  # a row of a binary file: no line to point at, the row is in the text
        return DataError(f"{path}:{label}{line}: {detail}", str(path), None, f"{label}{line}: {detail}")
    return DataError(f"{path}:{line}: {detail}", str(path), line, detail)


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
               start_ns: int | None = None, end_ns: int | None = None, date_format: str | None = None,
               zone: str | None = None, *, optional: tuple[str, ...] | list[str] = ()) -> Table:
    """Read the timestamp and the `wanted` columns of one file; rows in [start_ns, end_ns]
    (ns since the epoch, UTC, both inclusive). The `optional` columns (in `wanted` or
    besides it) may be absent from the file: one it lacks is left out of `Table.columns`
    (`merge` makes it NaN), one it has is read and checked as the others are.
    `date_format` reads timestamps: a strptime format reads text (and integer columns,
    as their digits); a time zone in it (`%z`) is converted to UTC. A timestamp without
    a zone or offset (naive) is wall-clock time in `zone` (an IANA name, the policy's
    time zone), or UTC when `zone` is None; one with a zone keeps it. `epoch`,
    `epoch-ms`, `epoch-us` or `epoch-ns` reads numbers (text or numeric columns) as that
    unit since 1970, UTC by definition.
    Raises DataError naming the file (and line) when the file cannot be used."""
    p = Path(path)
    if p.is_dir():
        raise _error(path, "is a directory, not a data file")
    if not (p.is_file() or p.is_fifo()):
        raise _error(path, "no such file" if not p.exists() else "not a regular file")
    wanted = _reading(wanted, optional)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        source = _read_parquet(p)
    elif suffix == ".npz":
        source = _read_npz(p, wanted)
    else:
        raw = p.read_bytes()  # once: a FIFO cannot be read twice
        source = (_read_clean_csv(raw, wanted, optional) if date_format is None else None) or _read_csv(p, raw)
    return _build(str(path), source, wanted, skip_bad_rows, start_ns, end_ns, date_format, zone, optional)


def _reading(wanted: list[str], optional) -> list[str]:
    """The columns a load reads where the file has them: `wanted`, then the `optional`
    columns not among them, each once, in that order."""
    return [*wanted, *(name for name in dict.fromkeys(optional) if name not in wanted)]


@dataclass
class _Source:
    """A file's header and its cells as columns, with the file line of every row."""

    header: list[str]
    columns: list            # one sequence per header entry (None: a column the clean-CSV path skips)
    lines: np.ndarray
    problems: dict           # row -> (kind, message) found while reading
    line_label: str = ""     # "" for text files (lines), "row " for binary ones
    delimiter: str = ","     # of a CSV file; how a comma in a number is read follows from it
    zoned: frozenset = frozenset()  # columns of times that carried a zone (already UTC); the others are naive


def _decode(p: Path, raw: bytes) -> str:
    """The text of a CSV file (`raw`, its bytes): UTF-8 (a BOM allowed), or UTF-16 with a
    BOM, or UTF-16 without one (every other byte NUL), as spreadsheets save "Unicode Text"."""
    encoding = "utf-8-sig"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif len(raw) >= 4 and raw.count(0) * 2 >= len(raw) - 1:  # half NULs: UTF-16 without a BOM
        head = raw[:4096]
        if not any(head[1::2]) and all(head[0::2]):
            encoding = "utf-16-le"
        elif not any(head[0::2]) and all(head[1::2]):
            encoding = "utf-16-be"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        what = "UTF-16" if encoding.startswith("utf-16") else "UTF-8"
        raise _error(p, f"not a {what} text file (byte {exc.start}); is it really CSV? "
                        "If a spreadsheet wrote it, save it as CSV UTF-8") from None


def _delimiter(header_line: str) -> str:
    """The delimiter of a CSV file: the one of DELIMITERS its header line has most of (on
    a tie, or none at all: `,`)."""
    return max(DELIMITERS, key=header_line.count)


def _read_csv(p: Path, raw: bytes) -> _Source:
    """Any CSV file (`raw`, its bytes), cell by cell: every problem is found and named."""
    text = _decode(p, raw)
    if "\x00" in text:
        raise _error(p, "contains NUL bytes; not a CSV file")
    end = text.find("\n")
    delimiter = _delimiter(text if end < 0 else text[:end])
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows, lines = [], []
    try:
        header = next(reader, None)
        for row in reader:
            if any(c.strip() for c in row):
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise _error(p, f"malformed CSV: {exc}", reader.line_num) from None
    if not header:
        raise _error(p, "empty file")
    width = len(header)
    problems = {}
    for k, row in enumerate(rows):
        if len(row) != width:
            problems[k] = ("wrong number of fields", f"has {len(row)} fields, the header has {width}")
            rows[k] = [""] * width
    columns = [[r[c] for r in rows] for c in range(width)]
    return _Source(header, columns, np.array(lines, dtype=np.int64), problems, delimiter=delimiter)


def _read_clean_csv(raw: bytes, wanted: list[str], optional=()) -> _Source | None:
    """A clean CSV file (`raw`, its bytes) read by pyarrow.csv, many times faster than
    `_read_csv`, with the same rows, values and line numbers; or None when the file is
    not one this path reads exactly as `_read_csv` does, which then reads it and names
    its problems. Clean: UTF-8; the timestamp and `wanted` columns present (but for the
    `optional` ones, read when there), each header name once; no blank line, nor a
    newline inside quotes (each would shift the line numbers); every row with the
    header's number of fields; timestamps ISO 8601 that pyarrow types as dates, times
    and timestamps; numbers finite in plain notation (NaN and infinities spelled in ways
    Python does not read are the slow path's)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if b"\x00" in raw or not (raw.isascii() or _is_utf8(raw)):
        return None
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    end = raw.find(b"\n")
    if end < 0:
        return None
    head = raw[start:end + 1].decode()
    delimiter = _delimiter(head)
    header = next(csv.reader([head.rstrip("\r\n")], delimiter=delimiter))
    index = _column_index(header)
    stamp_names = _timestamp_names(index)
    sources = [_source_of(name, index) for name in wanted]
    if not stamp_names or any(source is None and name not in optional for name, source in zip(wanted, sources)):
        return None
    numeric = {index[source] for source in sources if source is not None}
    used = sorted(_used_columns(header, wanted))
    if any(header.count(header[k]) > 1 for k in used):
        return None
    options = pcsv.ConvertOptions(
        column_types={header[k]: pa.float64() for k in numeric}, include_columns=[header[k] for k in used],
        null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False)
    try:
        table = pcsv.read_csv(pa.BufferReader(pa.py_buffer(memoryview(raw)[start:])),
                              parse_options=pcsv.ParseOptions(delimiter=delimiter), convert_options=options)
    except pa.ArrowException:
        return None
    n = table.num_rows
    if n + 1 != raw.count(b"\n") + (not raw.endswith(b"\n")) or table.column_names != [header[k] for k in used]:
        return None
    time_of_day = index["time"] if stamp_names == ("date", "time") else None
    columns: list = [None] * len(header)
    zoned = set()
    try:
        for k, col in zip(used, table.columns):
            if k in numeric:
                values = col.to_numpy()
                if not np.isfinite(values).all():
                    return None
            elif k == time_of_day and (pa.types.is_time32(col.type) or pa.types.is_time64(col.type)):
                ticks = col.cast(pa.int64() if pa.types.is_time64(col.type) else pa.int32()).to_numpy()
                values = (ticks.astype(np.int64) * _NS_PER[col.type.unit]).astype("timedelta64[ns]")
            elif k != time_of_day and (pa.types.is_timestamp(col.type) or pa.types.is_date32(col.type)):
                ns = pa.timestamp("ns", tz=getattr(col.type, "tz", None))
                values = np.asarray(col.cast(ns).to_numpy(), "datetime64[ns]")
                if ns.tz is not None:
                    zoned.add(k)
            else:
                return None
            columns[k] = values
    except pa.ArrowException:  # a date beyond datetime64[ns] (years 1678 to 2262): the slow path says which
        return None
    return _Source(header, columns, np.arange(2, n + 2, dtype=np.int64), {}, delimiter=delimiter,
                   zoned=frozenset(zoned))


_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _read_parquet(p: Path) -> _Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _error(p, f"not a readable Parquet file: {exc}") from None
    columns, zoned = [], set()
    for k, name in enumerate(table.column_names):
        col = table.column(name)
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            # datetime64[ns] (UTC, nulls NaT): a time, whatever unit --date-format gives numbers
            if getattr(col.type, "tz", None) is not None:
                zoned.add(k)
            col = col.cast(pa.timestamp("ns", tz=getattr(col.type, "tz", None)))
            columns.append(np.asarray(col.to_numpy(zero_copy_only=False), "datetime64[ns]"))
        else:
            columns.append(col.to_numpy(zero_copy_only=False))
    return _Source(table.column_names, columns, np.arange(table.num_rows), {}, "row ", zoned=frozenset(zoned))


def _read_npz(p: Path, wanted: list[str]) -> _Source:
    """The arrays of an .npz file that hold the timestamp and the `wanted` columns; of the
    others only the header is read, for its length (and an object array is refused, as
    when it is read)."""
    try:
        with np.load(p, allow_pickle=False) as z:
            header = list(z.files)
            used = _used_columns(header, wanted)
            columns = [z[name] if k in used else None for k, name in enumerate(header)]
            shapes = [c.shape if c is not None else _npy_shape(z, name) for c, name in zip(columns, header)]
    except (ValueError, OSError) as exc:
        raise _error(p, f"not a readable .npz file: {exc}") from None
    for name, shape in zip(header, shapes):
        if not shape:
            raise _error(p, f"array `{name}` is a single value, not a column")
    n = shapes[0][0] if shapes else 0
    if any(shape[0] != n for shape in shapes):
        raise _error(p, "arrays of different lengths")
    return _Source(header, columns, np.arange(n), {}, "row ")


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_shape(z, name: str) -> tuple:
    """The shape of the array `name` of the open .npz file `z`, from its header where it
    can; an object array is read, so that it is refused as when it is used (ValueError)."""
    with z.zip.open(f"{name}.npy") as f:
        read_header = _NPY_HEADERS.get(np.lib.format.read_magic(f))
        shape, _, dtype = read_header(f) if read_header else (None, None, None)
    return z[name].shape if shape is None or dtype.hasobject else shape


_NAT = np.iinfo(np.int64).min


# ---- timestamps --------------------------------------------------------------------
def _parse_times(values, date_format: str | None) -> tuple[np.ndarray, np.ndarray]:
    """ns since the epoch, and a mask of values that are not a date/time."""
    arr = np.asarray(values)
    unit = EPOCH_FORMATS.get(date_format or "")
    if arr.dtype.kind == "M":
        out = arr.astype("datetime64[ns]").view(np.int64)  # astype copies: the result is our own
        return out, out == _NAT
    if arr.dtype.kind in "iub":
        if date_format is not None and unit is None:  # a strptime format reads the digits
            return _parse_times(arr.astype(np.int64).astype(str), date_format)
        return _scaled(arr.astype(np.int64), unit or 1)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        scaled = np.where(bad, 0, arr) * (unit or 1)
        bad |= np.abs(scaled) >= 2.0 ** 63
        return np.where(bad, 0, scaled).astype(np.int64), bad
    strings = np.char.strip(arr.astype(str))
    if unit is not None:
        return _parse_numbers(strings, unit)
    if date_format is not None:
        out = np.array([_strptime(text, date_format) for text in strings], np.int64)
        return out, out == _NAT
    return _parse_iso(strings)


def _scaled(counts: np.ndarray, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of `unit` ns as ns; those that do not fit in int64 ns are bad."""
    limit = np.iinfo(np.int64).max // unit
    bad = np.abs(counts) > limit
    return np.where(bad, 0, counts) * unit, bad


def _parse_numbers(strings: np.ndarray, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Text numbers of `unit` ns since the epoch (`1443043062`, `1443043062.146`)."""
    try:
        return _scaled(strings.astype(np.int64), unit)
    except (ValueError, OverflowError):
        pass
    out = np.zeros(len(strings), np.int64)
    bad = np.zeros(len(strings), bool)
    for k, text in enumerate(strings):
        try:
            ns = int(Decimal(text) * unit)
            if not -2**63 < ns < 2**63:
                raise OverflowError
            out[k] = ns
        except (InvalidOperation, OverflowError, ValueError):  # `abc`, `nan`, `inf`, too large
            bad[k] = True
    return out, bad


def _parse_iso(strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 text: a date `YYYY-MM-DD`, then optionally a time (`T` or a space), a
    `Z` or a UTC offset, which is applied. NumPy would also read `19950103` (as the year
    19950103), `2010` and `today`; text without the `YYYY-MM-DD` shape is refused."""
    n = len(strings)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    chars = strings.astype("U11").view("U1").reshape(n, 11)
    shaped = (chars[:, 4] == "-") & (chars[:, 7] == "-") & np.isin(chars[:, 10], ["", "T", " "])
    strings = np.char.rstrip(np.char.replace(np.where(shaped, strings, "NaT"), " ", "T"), "Z")
    try:
        with warnings.catch_warnings():  # numpy warns on a UTC offset, then applies it
            warnings.simplefilter("ignore")
            out = strings.astype("datetime64[ns]").astype(np.int64)
    except ValueError:
        out = np.zeros(n, np.int64)
        for k, text in enumerate(strings):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[k] = np.datetime64(text, "ns").astype(np.int64)
            except ValueError:
                out[k] = _NAT
    return out, out == _NAT


_ISO_ZONED = re.compile(r"[T ].*(?:Z|[+-]\d\d(?::?\d\d)?)\Z")  # a time followed by `Z` or a UTC offset


def _naive(values, date_format: str | None) -> np.ndarray:
    """Which timestamps carry no zone or offset (as `_parse_times` reads them): ISO text
    without `Z` or an offset, strptime text when the format has no `%z`, and datetimes
    (a file's typed times with a zone are told apart by the caller). Numbers since 1970
    are UTC by definition."""
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return np.ones(len(arr), bool)
    epoch = date_format in EPOCH_FORMATS or arr.dtype.kind == "f" or (date_format is None and arr.dtype.kind in "iub")
    if epoch:
        return np.zeros(len(arr), bool)
    if date_format is not None:
        return np.full(len(arr), "%z" not in date_format)
    return np.array([_ISO_ZONED.search(str(v).strip()) is None for v in arr], bool)


def _strptime(text: str, date_format: str) -> int:
    """ns since the epoch of `text` read with `date_format`, UTC; NaT when it does not match."""
    try:
        moment = datetime.strptime(text, date_format)
    except ValueError:
        return _NAT
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return int(np.datetime64(moment, "ns").astype(np.int64))


def show_time(ns: int, end: bool = False) -> str:
    """ns since the epoch as short ISO text: a date alone at midnight (and, for an `end`
    bound, at the last ns of a day), otherwise to the second or as finely as needed."""
    ns = int(ns)
    if ns % NS_PER_DAY == 0 or (end and (ns + 1) % NS_PER_DAY == 0):
        return str(np.datetime64(ns - (ns % NS_PER_DAY if end else 0), "ns").astype("datetime64[D]"))
    for unit, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1)):
        if ns % size == 0:
            return str(np.datetime64(ns // size, unit))
    return str(np.datetime64(ns, "ns"))


def _utc(ns: int) -> str:
    """`show_time`, with a `Z` on a time of day."""
    text = show_time(ns)
    return text if len(text) == 10 else text + "Z"


# forms of text timestamps, to tell a user which --date-format reads theirs
_DATE_FORMS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d", "%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y", "%m-%d-%Y",
               "%d-%m-%Y", "%m/%d/%y", "%d/%m/%y", "%d.%m.%y", "%d-%b-%Y", "%d-%b-%y", "%d %b %Y", "%b %d, %Y",
               "%b %d %Y", "%d %B %Y", "%B %d, %Y", "%Y-%m-%dT")
_TIME_FORMS = ("", " %H:%M", " %H:%M:%S", " %H:%M:%S.%f", "%H:%M", "%H:%M:%S", "%H:%M:%S.%f", " %I:%M %p",
               " %I:%M:%S %p", " %H%M%S", "%H%M%S", "%H%M")
_ZONE = re.compile(r".*\d(?:Z|[+-]\d\d:?\d\d)$")
_DIGITS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ].*)?")


def _forms(text: str) -> list[str]:
    """The formats of _DATE_FORMS x _TIME_FORMS (with `%z` for a zone) that read `text`."""
    zone = "%z" if _ZONE.fullmatch(text) else ""
    out = []
    for d in _DATE_FORMS:
        for t in _TIME_FORMS:
            if d.endswith("T") != t.startswith("%H"):  # `T` joins only a time written right after it
                continue
            fmt = d + t + zone
            try:
                datetime.strptime(text, fmt)
            except ValueError:
                continue
            out.append(fmt)
    return out


def _guess_formats(text: str, others=()) -> list[str]:
    """The formats that read `text`, narrowed to those that also read every one of
    `others` (more failing values of the same column) when some do."""
    found = _forms(text)
    narrowed = [f for f in found if all(_reads(o, f) for o in others)]
    return narrowed or found


def _reads(text: str, fmt: str) -> bool:
    try:
        datetime.strptime(text, fmt)
    except ValueError:
        return False
    return True


def _shell(fmt: str) -> str:
    return shlex.quote(fmt)


def _one_of(formats: list[str]) -> str:
    """`%m/%d/%Y (month first) or %d/%m/%Y (day first)`, or `A`, or `A, B or C`."""
    formats = formats[:3]
    if len(formats) == 2 and formats[0].replace("%m", "%M!").replace("%d", "%m").replace("%M!", "%d") == formats[1]:
        first = {f: "month first" if f.index("%m") < f.index("%d") else "day first" for f in formats}
        return " or ".join(f"{_shell(f)} ({first[f]})" for f in formats)
    shown = [_shell(f) for f in formats]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _number_hint(text: str) -> str | None:
    """What a timestamp made of digits looks like, and the --date-format that reads it."""
    if not _DIGITS.fullmatch(text):
        return None
    whole = text.split(".")[0]
    for fmt, shape in (("%Y%m%d", "YYYYMMDD"), ("%Y%m%d%H%M", "YYYYMMDDHHMM"), ("%Y%m%d%H%M%S", "YYYYMMDDHHMMSS")):
        if "." not in text and len(text) == len(shape) and 1800 <= int(text[:4]) <= 2200 and _reads(text, fmt):
            return f"looks like {shape}; use --date-format {fmt}"
    value = int(whole)
    for name, unit, fmt in (("seconds", 10**9, "epoch"), ("milliseconds", 10**6, "epoch-ms"),
                            ("microseconds", 10**3, "epoch-us"), ("nanoseconds", 1, "epoch-ns")):
        if 10**17 // unit <= value < 10**19 // unit:  # 1973-03-03 to 2286-11-20 in this unit
            return f"looks like {name} since 1970 ({_utc(int(Decimal(text) * unit))}); use --date-format {fmt}"
    return None


def _bad_timestamp(text: str, date_format: str | None, others=()) -> str:
    """Why `text` is not a timestamp, and the fix, guessed from the text (and `others`,
    more failing values of its column, which can tell `01/03` day first from month first)."""
    if not text:
        return "timestamp is empty"
    if date_format in EPOCH_FORMATS:
        unit = {"epoch": "seconds", "epoch-ms": "milliseconds", "epoch-us": "microseconds", "epoch-ns": "nanoseconds"}
        fix = _guess_formats(text, others)
        hint = f"; it looks like a date: use --date-format {_one_of(fix)}" if fix else ""
        return f"timestamp `{text}` is not a number of {unit[date_format]} since 1970 (--date-format {date_format}){hint}"
    if date_format is not None:
        head = f"timestamp `{text}` does not match --date-format `{date_format}`"
        try:
            datetime.strptime(text, date_format)
        except ValueError as exc:
            if "does not match" not in str(exc) and "unconverted data" not in str(exc):
                return f"timestamp `{text}` is not a real date ({exc}; --date-format `{date_format}`)"
        digits = _number_hint(text)
        if digits:
            return f"{head}: it {digits}"
        if _iso_ns(text) is not None:
            return f"{head}: it is ISO 8601, which is read without --date-format"
        fix = [f for f in _guess_formats(text, others) if f != date_format]
        return f"{head}: try {_one_of(fix)}" if fix else head
    digits = _number_hint(text)
    if digits:
        return f"timestamp `{text}` {digits}"
    iso = _ISO_DATE.fullmatch(text)
    if iso:
        year, month, day = map(int, iso.groups())
        if not 1 <= month <= 12:
            return f"timestamp `{text}` is not a real date: there is no month {month}"
        try:
            date(year, month, day)
        except ValueError:
            last = (date(year + month // 12, month % 12 + 1, 1) - date(year, month, 1)).days
            return (f"timestamp `{text}` is not a real date: {date(year, month, 1):%B %Y} has {last} days")
    fix = _guess_formats(text, others)
    if fix:
        return f"timestamp `{text}` is not ISO 8601: use --date-format {_one_of(fix)}"
    return f"timestamp `{text}` is not a date/time: use {ISO_FORMS}, or give its strptime format with --date-format"


def _iso_ns(text: str) -> int | None:
    out, bad = _parse_iso(np.array([text]))
    return None if bad[0] else int(out[0])


def _unit_problem(values, ts: np.ndarray) -> str | None:
    """For a numeric timestamp column read as ns (Parquet, .npz): the message when its
    first value looks like another unit (seconds, ms, us since 1970, or YYYYMMDD)."""
    arr = np.asarray(values)
    finite = np.flatnonzero(np.isfinite(arr)) if arr.dtype.kind == "f" else np.arange(len(arr))
    if not len(finite):
        return None
    first = arr[finite[0]]
    text = str(int(first)) if float(first).is_integer() else repr(float(first))
    hint = _number_hint(text)
    if hint is None or "nanoseconds" in hint:
        return None
    return f"timestamp {text} read as nanoseconds since 1970 is {_utc(ts[finite[0]])}; it {hint}"


# ---- numbers -----------------------------------------------------------------------
_INT_PART = re.compile(r"[0-9]+|[0-9]{1,3}(?:([.,' ])[0-9]{3})(?:\1[0-9]{3})*")
_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " "})


def _number(text: str, comma_decimal: bool, dot_thousands: bool) -> float:
    """One number with a decimal mark and thousands separators as a spreadsheet writes
    them. Both marks in one number: the last is the decimal mark (`1.234,5`, `1,234.5`);
    one of them several times: thousands (`36.301.200`); one `,` alone: the decimal mark
    when `comma_decimal`, else thousands; one `.` alone: thousands when `dot_thousands`.
    Thousands separators (also a space or `'`) must group by three. Raises ValueError."""
    t = text.translate(_SPACES)
    commas, dots = t.count(","), t.count(".")
    if not commas and (dots == 0 or dots == 1 and not dot_thousands) and " " not in t and "'" not in t:
        return float(t)  # the ordinary case, and `nan`, `inf`, `1e-3`
    sign = t[0] if t[:1] in "+-" else ""
    t = t[len(sign):]
    if commas and dots:
        mark = "," if t.rfind(",") > t.rfind(".") else "."
    elif commas == 1 and comma_decimal:
        mark = ","
    elif dots == 1 and not dot_thousands:
        mark = "."
    else:
        mark = None
    whole, frac = t.rsplit(mark, 1) if mark else (t, "")
    grouped = _INT_PART.fullmatch(whole)
    if not grouped or (mark and not re.fullmatch(r"[0-9]+", frac)):
        raise ValueError(text)
    return float(sign + re.sub(r"[.,' ]", "", whole) + ("." + frac if frac else ""))


def _to_float(values, delimiter: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Floats, a mask of cells that are not numbers, and a mask of empty cells."""
    arr = np.asarray(values)
    if arr.dtype.kind in "fiub":
        out = arr.astype(np.float64)
        return out, np.zeros(len(arr), bool), np.zeros(len(arr), bool)
    texts = np.char.strip(arr.astype(str))
    empty = texts == ""
    out = np.full(len(arr), np.nan)
    bad = np.zeros(len(arr), bool)
    cells = texts[~empty]
    try:
        out[~empty] = cells.astype(np.float64)
        return out, bad, empty
    except ValueError:
        pass
    # the column's convention, from the numbers that cannot be mistaken
    commas, dots = np.char.count(cells, ","), np.char.count(cells, ".")
    last_comma, last_dot = np.char.rfind(cells, ","), np.char.rfind(cells, ".")
    both = (commas > 0) & (dots > 0)
    european = bool(np.any(both & (last_comma > last_dot)) or np.any((dots > 1) & (commas == 0)))
    american = bool(np.any(both & (last_dot > last_comma)) or np.any((commas > 1) & (dots == 0)))
    comma_decimal = european or (delimiter != "," and not american)
    dot_thousands = european and not american
    if comma_decimal and not dot_thousands and not np.any(dots):
        try:  # the usual European file: a decimal comma and nothing else
            out[~empty] = np.char.replace(cells, ",", ".").astype(np.float64)
            return out, bad, empty
        except ValueError:
            pass
    for k in np.flatnonzero(~empty):
        try:
            out[k] = _number(str(texts[k]), comma_decimal, dot_thousands)
        except ValueError:
            bad[k] = True
    return out, bad, empty


def _timestamp_names(index: dict) -> tuple[str, ...]:
    """The columns (canonical names) a row's timestamp is read from: `datetime`, or `date`
    and `time`, or `date`, or `ts`; () when the file has none of them."""
    if "datetime" in index:
        return ("datetime",)
    if "date" in index and "time" in index:
        return ("date", "time")
    return next(((name,) for name in ("date", "ts") if name in index), ())


def _column_index(header: list[str]) -> dict[str, int]:
    """Canonical column name -> its position in `header` (the last, for a name given twice)."""
    return {n: k for k, n in enumerate(_canonical(str(h)) for h in header) if n}


def _used_columns(header: list[str], wanted: list[str]) -> set[int]:
    """The positions in `header` of the columns the timestamp and the `wanted` columns are
    read from (those the file has)."""
    index = _column_index(header)
    names = [*_timestamp_names(index), *(_source_of(name, index) for name in wanted)]
    return {index[name] for name in names if name is not None}


def _source_of(name: str, index: dict) -> str | None:
    """The column a wanted column is read from: itself, or for `price` and `close`, which
    stand in for each other (spec section 2), the other; None when the file has neither."""
    source = name if name in index else {"price": "close", "close": "price"}.get(name)
    return source if source in index else None


def _timestamp_values(path: str, src: _Source, index: dict, found: list[str]):
    """The timestamp of every row as the file has it (`Date` and `Time` joined by a space,
    or added when the clean-CSV path has typed them as dates and times of day)."""
    names = _timestamp_names(index)
    if not names:
        raise _error(path, f"no timestamp column; expected Date, Datetime, Date and Time, or ts "
                           f"(found: {', '.join(found)})")
    cols = [src.columns[index[name]] for name in names]
    if len(cols) == 1:
        return cols[0]
    day, time = cols
    if getattr(day, "dtype", None) is not None and day.dtype.kind == "M" and time.dtype.kind == "m":
        return day + time
    return [f"{str(d).strip()} {str(t).strip()}" for d, t in zip(day, time)]


def market_faults(columns: dict[str, np.ndarray], optional=(), labels: dict[str, str] | None = None,
                  stand_ins=()) -> list[tuple[np.ndarray, str, object]]:
    """The rules market data keeps, as the live feed checks them, over `columns` (float64
    values by field name, a row per line or event): each rule a row breaks, as (rows, the
    kind of bad row, its message: a str or a function of the row). Rules, in order:

    - in a column read (not in `optional`): a price (PRICE_FIELDS) positive and finite;
      a trade's `qty` above 0 and a bar's `volume` 0 or more (NaN breaks both); any value
      at most MAX_MAGNITUDE in magnitude, since sums and products of larger ones could
      overflow the account's arithmetic and turn a limit off;
    - no crossed quote (`bid` above `ask`);
    - a bar's prices nest (low <= open, close <= high), since fills inside a bar (stops,
      next-open) rest on them; `stand_ins` (`open`, `close` read from another column)
      are not held to it.

    An optional column (the quote an IOC order fills against, a bar's open, high, low,
    which the policy does not read) breaks none of a column's own rules: a value there
    that is not a usable price, and both sides of a crossed quote the policy does not
    read, become NaN (no value on that row, which the fills do without), in place; a
    bar's fields nest whether read or not. `labels` names the columns
    in messages (a file's header); by default, their field names."""
    labels = labels or {}
    found = []
    for name, values in columns.items():
        label = labels.get(name, name)
        if name in optional:
            if name in PRICE_FIELDS:
                values[~((values > 0) & (values < np.inf) & (values <= MAX_MAGNITUDE))] = np.nan
            continue
        if name in PRICE_FIELDS:
            found.append((np.flatnonzero(~((values > 0) & (values < np.inf))), "non-positive, NaN or infinite price",
                          lambda k, v=values, lab=label: f"`{lab}` is {v[k]:g}; prices must be positive and finite"))
        elif name in ("qty", "volume"):
            wrong = ~(values > 0) if name == "qty" else ~(values >= 0)
            rule = "a trade size must be above 0" if name == "qty" else "volume must be 0 or more"
            found.append((np.flatnonzero(wrong), "bad size",
                          lambda k, v=values, lab=label, r=rule: f"`{lab}` is {v[k]:g}; {r}"))
        found.append((np.flatnonzero(np.abs(values) > MAX_MAGNITUDE), "value too large",
                      lambda k, v=values, lab=label: f"`{lab}` is {v[k]:g}; values must be at most "
                                                     f"{MAX_MAGNITUDE:g} in magnitude"))
    if "bid" in columns and "ask" in columns:
        bid, ask = columns["bid"], columns["ask"]
        crossed = np.flatnonzero(bid > ask)
        if "bid" in optional and "ask" in optional:
            bid[crossed] = ask[crossed] = np.nan
        else:
            found.append((crossed, "crossed quote",
                          lambda k: f"`{labels.get('bid', 'bid')}` {bid[k]:g} is above `{labels.get('ask', 'ask')}` "
                                    f"{ask[k]:g}: a crossed quote"))
    if "high" in columns and "low" in columns:
        high, low = columns["high"], columns["low"]
        found.append((np.flatnonzero(high < low), "inconsistent bar",
                      lambda k: f"`{labels.get('high', 'high')}` {high[k]:g} is below `{labels.get('low', 'low')}` "
                                f"{low[k]:g}"))
        for name in ("open", "close"):
            if name in columns and name not in stand_ins:
                v = columns[name]
                found.append((np.flatnonzero((v < low) | (v > high)), "inconsistent bar",
                              lambda k, v=v, lab=labels.get(name, name): f"`{lab}` {v[k]:g} is outside the bar's low "
                                                                        f"{low[k]:g} and high {high[k]:g}"))
    return found


def _build(path: str, src: _Source, wanted: list[str], skip_bad_rows: bool, start_ns, end_ns, date_format,
           zone: str | None, optional=()) -> Table:
    index = _column_index(src.header)
    found = [str(h).strip() for h in src.header]
    n = len(src.lines)
    # row -> (kind, message or a function of the row giving it); the first problem of a
    # row wins, and a message is only made for a row that is shown
    problems: dict[int, tuple] = dict(src.problems)

    def report(rows, kind, message):
        for k in rows:
            problems.setdefault(int(k), (kind, message))

    def message(k: int) -> str:
        text = problems[k][1]
        return text(k) if callable(text) else text

    def where(k: int) -> str:
        return f"{path}:{src.line_label}{int(src.lines[k])}"

    stamps = _timestamp_values(path, src, index, found)
    ts, bad_ts = _parse_times(stamps, date_format)
    names = _timestamp_names(index)
    if zone is not None and not (len(names) == 1 and index[names[0]] in src.zoned):
        naive = _naive(stamps, date_format) & ~bad_ts
        if naive.any():  # wall-clock times in the zone, before the order of the rows is checked
            ts[naive] = localize(ts[naive], zone)
    raw = np.asarray(stamps)
    if raw.dtype.kind in "iuf" and date_format is None and n:
        problem = _unit_problem(raw, ts)
        if problem:
            raise _error(path, problem, int(src.lines[0]), src.line_label)
    bad_rows = np.flatnonzero(bad_ts)

    def bad_timestamp(k: int) -> str:  # with more failing values of the column, to narrow the guess
        others = [str(stamps[j]).strip() for j in bad_rows[:: max(1, len(bad_rows) // 50)][:50] if j != k]
        return _bad_timestamp(str(stamps[k]).strip(), date_format, [o for o in others if o])

    report(bad_rows, "bad timestamp", bad_timestamp)

    columns: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}  # each column's name in the file's header
    for name in wanted:
        source = _source_of(name, index)
        if source is None and name in optional:
            continue  # the file may lack it: left out, and NaN in the events
        if source is None:
            needed = f"`{name}`" + (" (or `close`)" if name == "price" else " (or `price`)" if name == "close" else "")
            raise _error(path, f"the policy reads {needed} but the file has no such column (found: {', '.join(found)})")
        label, cells = found[index[source]], src.columns[index[source]]
        values, bad, empty = _to_float(cells, src.delimiter)
        labels[name] = label
        if name in optional:
            columns[name] = np.where(~bad & ~empty, values, np.nan)  # `market_faults` drops what is left unusable
            continue
        if name in PRICE_FIELDS or name in ("qty", "volume"):  # a model input may be empty on rows without a value
            report(np.flatnonzero(empty), "not a number", f"`{label}` is empty: not a number")
        report(np.flatnonzero(bad), "not a number",
               lambda k, c=cells, lab=label: f"`{lab}` is not a number: `{str(c[k]).strip()}`")
        columns[name] = values
    # after the cells that are no number: a row's first problem is the one it is shown with
    stand_ins = [name for name in ("open", "close") if name in columns and _source_of(name, index) != name]
    for rows, kind, text in market_faults(columns, optional, labels, stand_ins):
        report(rows, kind, text)

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
        kinds = Counter(problems[k][0] for k in rows)
        timing = kinds["bad timestamp"] + kinds["timestamp out of order"]
        if len(rows) == n:  # skipping would leave nothing: say what is wrong, by kind
            raise _row_error(where(rows[0]), message(rows[0]), path, src, rows[0],
                             f" (every row is bad; {', '.join(f'{kind}: {c}' for kind, c in kinds.items())})")
        if timing > TOO_MANY_TIMESTAMPS * n:  # a wrong --date-format, or a file sorted newest first
            good = np.array([k for k in range(n) if k not in problems or problems[k][0] == "timestamp out of order"])
            if not kinds["bad timestamp"] and len(good) > 1 and np.all(np.diff(ts[good]) <= 0):
                raise _error(path, f"the rows run newest first ({show_time(ts[good[0]])} down to "
                                   f"{show_time(ts[good[-1]])}); sort them oldest first")
            first = next(k for k in rows if problems[k][0] == ("bad timestamp" if kinds["bad timestamp"]
                                                                else "timestamp out of order"))
            ooo = kinds["timestamp out of order"]
            counts = (f"{kinds['bad timestamp']} of {n} rows have a bad timestamp"
                      + (f" and {ooo} more are out of order" if ooo and kinds["bad timestamp"] else "")
                      if kinds["bad timestamp"] else f"{ooo} of {n} rows are out of order")
            raise _row_error(where(first), message(first), path, src, first,
                             f" ({counts}: too many to skip)")
        if not skip_bad_rows:
            more = f" ({len(rows) - 1} more problem rows; --skip-bad-rows skips them and reports each kind)" \
                if len(rows) > 1 else ""
            raise _row_error(where(rows[0]), message(rows[0]), path, src, rows[0], more)
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
    if len(ts) == 0:
        raise _error(path, "no rows to run on")
    if start_ns is not None or end_ns is not None:
        sel = np.ones(len(ts), bool)
        if start_ns is not None:
            sel &= ts >= start_ns
        if end_ns is not None:
            sel &= ts <= end_ns
        if not sel.any():
            span = (f"from {show_time(start_ns)} to {show_time(end_ns, end=True)}" if start_ns is not None and end_ns is not None
                    else f"from {show_time(start_ns)} on" if start_ns is not None else f"up to {show_time(end_ns, end=True)}")
            raise _error(path, f"no rows {span} (--from/--to); the file runs from {show_time(ts.min())} "
                               f"to {show_time(ts.max())}")
        ts, lines = ts[sel], lines[sel]
        columns = {c: v[sel] for c, v in columns.items()}
    return Table(path, ts, columns, lines, skipped, skipped_lines)


def _row_error(where: str, detail: str, path: str, src: _Source, k: int, suffix: str) -> DataError:
    line = int(src.lines[k])
    return DataError(f"{where}: {detail}{suffix}", path, None if src.line_label else line,
                     f"{src.line_label}{line}: {detail}{suffix}" if src.line_label else detail + suffix)


def merge(tables: list[Table], columns: list[str], optional: tuple[str, ...] | list[str] = ()) -> Events:
    """One event stream from one table per instrument, by timestamp (stable: ties keep
    instrument order), with the value `columns` in that order: NaN in a table that lacks
    an `optional` one (a column its file may not have). Raises KeyError for another
    column a table lacks."""
    def column(t: Table, c: str) -> np.ndarray:
        return t.columns[c] if c in t.columns or c not in optional else np.full(len(t), np.nan)

    ts = np.concatenate([t.ts for t in tables])
    inst = np.concatenate([np.full(len(t), k, np.int32) for k, t in enumerate(tables)])
    vals = np.concatenate([np.column_stack([column(t, c) for c in columns])
                           if columns else np.zeros((len(t), 0)) for t in tables])
    if len(tables) > 1:
        order = np.argsort(ts, kind="stable")
        ts, inst, vals = ts[order], inst[order], vals[order]
    return Events(np.ascontiguousarray(ts), np.zeros(len(ts), np.int8), np.ascontiguousarray(inst),
                  np.ascontiguousarray(vals))
