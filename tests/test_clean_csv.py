"""The clean-CSV path (pyarrow.csv) reads exactly what the cell-by-cell reader reads.

For every file it takes, the rows, timestamps, values and line numbers are those of
`_read_csv`, and so is any error the checks after reading raise; every file it cannot
read exactly (odd spellings of numbers and times, blank lines, encodings, ragged rows)
it leaves to `_read_csv`, whose messages name the problem.
"""
from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyc.runtime import data as D
from policyc.runtime.data import DataError, load_table

DATA = Path(__file__).resolve().parent.parent / "data"
WANTED = ["price", "high", "volume"]


def _outcome(path: Path, source, wanted):
    """The table _build makes of `source`, as plain values, or the error it raises."""
    try:
        t = D._build(str(path), source, wanted, False, None, None, None, None)
    except DataError as exc:
        return ("error", str(exc), exc.line, exc.detail)
    return ("table", t.ts.tolist(), t.lines.tolist(), {c: v.tolist() for c, v in t.columns.items()})


def _same_as_slow(path: Path, wanted=WANTED) -> bool:
    """Whether the clean path took the file; when it did, asserts it agrees with `_read_csv`."""
    raw = path.read_bytes()
    fast = D._read_clean_csv(raw, wanted)
    if fast is None:
        return False
    assert _outcome(path, fast, wanted) == _outcome(path, D._read_csv(path, raw), wanted), path.name
    return True


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.csv")))
def test_every_real_file_takes_the_clean_path_with_the_same_result(name):
    assert _same_as_slow(DATA / name)


HEADER = "Datetime,Open,High,Low,Close,Volume\n"
ROW = "2020-01-01T00:0{m}:00,1.5,1.6,1.4,1.5,100\n"
CLEAN = HEADER + "".join(ROW.format(m=m) for m in range(5))

# text -> whether the clean path takes it (False: _read_csv reads it, and names what is wrong)
CASES = {
    "clean": (CLEAN, True),
    "no final newline": (CLEAN.rstrip("\n"), True),
    "CRLF": (CLEAN.replace("\n", "\r\n"), True),
    "BOM": (codecs.BOM_UTF8.decode() + CLEAN, True),
    "quoted number": (HEADER + '2020-01-01T00:00:00,1.5,"1.6",1.4,1.5,100\n', True),
    "padded number": (HEADER + "2020-01-01T00:00:00,1.5, 1.6 ,1.4,1.5,100\n", True),
    "exponent": (HEADER + "2020-01-01T00:00:00,1.5,1.6e0,1.4,1.5,1E2\n", True),
    "minus zero": (HEADER + "2020-01-01T00:00:00,1.5,-0,1.4,1.5,100\n", True),
    "negative price": (HEADER + "2020-01-01T00:00:00,1.5,-1.6,1.4,1.5,100\n", True),
    "huge value": (HEADER + "2020-01-01T00:00:00,1.5,1e300,1.4,1.5,100\n", True),
    "out of order": (HEADER + ROW.format(m=2) + ROW.format(m=1) + ROW.format(m=3), True),
    "newest first": (HEADER + "".join(ROW.format(m=m) for m in (4, 3, 2, 1)), True),
    "zone Z": (CLEAN.replace(":00,1.5", ":00Z,1.5"), True),
    "zone offset": (CLEAN.replace(":00,1.5", ":00+02:00,1.5"), True),
    "hour only": (HEADER + "2020-01-01T10,1.5,1.6,1.4,1.5,100\n", True),
    "space separated": (CLEAN.replace("T", " "), True),
    "fraction of a second": (CLEAN.replace(":00,1.5", ":00.123456789,1.5"), True),
    "date only": ("Date,Close,High,Volume\n2020-01-01,1,2,3\n2020-01-02,1,2,3\n", True),
    "date and time": ("Date,Time,Close,High,Volume\n2020-01-01,09:30,1,2,3\n2020-01-01,09:35:10,1,2,3\n", True),
    "text column not read": ("Symbol,Datetime,Close,High,Volume\nORCL,2020-01-01,1,2,3\nÖL,2020-01-02,1,2,3\n", True),
    "semicolons": (CLEAN.replace(",", ";"), True),
    "mixed zones": (HEADER + "2020-01-01T00:00:00Z,1,1,1,1,1\n2020-01-01T00:01:00,1,1,1,1,1\n", False),
    "hex number": (HEADER + "2020-01-01T00:00:00,1.5,0x10,1.4,1.5,100\n", False),
    "nan": (HEADER + "2020-01-01T00:00:00,1.5,nan,1.4,1.5,100\n", False),
    "nan with payload": (HEADER + "2020-01-01T00:00:00,1.5,nan(1),1.4,1.5,100\n", False),
    "infinity": (HEADER + "2020-01-01T00:00:00,1.5,Infinity,1.4,1.5,100\n", False),
    "underscore digits": (HEADER + "2020-01-01T00:00:00,1.5,1_6,1.4,1.5,100\n", False),
    "empty cell": (HEADER + "2020-01-01T00:00:00,1.5,,1.4,1.5,100\n", False),
    "comma decimal": (CLEAN.replace(",", ";").replace("1.", "1,"), False),
    "blank line": (HEADER + ROW.format(m=0) + "\n" + ROW.format(m=1), False),
    "blank line at the end": (CLEAN + "\n", False),
    "line of delimiters": (HEADER + ROW.format(m=0) + ",,,,,\n" + ROW.format(m=1), False),
    "short row": (HEADER + ROW.format(m=0) + "2020-01-01T00:01:00,1.5\n", False),
    "long row": (HEADER + ROW.format(m=0) + ROW.format(m=1).replace("\n", ",7\n"), False),
    "quoted newline": (HEADER + '2020-01-01T00:00:00,1.5,1.6,1.4,1.5,"1\n00"\n', False),
    "old Mac line ends": (CLEAN.replace("\n", "\r"), False),
    "not a date": (HEADER + "2020-02-30T00:00:00,1.5,1.6,1.4,1.5,100\n", False),
    "hour 24": (HEADER + "2020-01-01T24:00:00,1.5,1.6,1.4,1.5,100\n", False),
    "YYYYMMDD": (CLEAN.replace("2020-01-01T00:0", "2020010").replace("0:00,", "0,"), False),
    "epoch seconds": (HEADER + "1577836800,1.5,1.6,1.4,1.5,100\n", False),
    "year 1600": (HEADER + "1600-01-01T00:00:00,1.5,1.6,1.4,1.5,100\n", False),
    "year 2300": (HEADER + "2300-01-01T00:00:00,1.5,1.6,1.4,1.5,100\n", False),
    "duplicate column": ("Datetime,Close,Close,High,Volume\n2020-01-01,1,2,3,4\n", False),
    "no timestamp column": ("When,Close,High,Volume\n2020-01-01,1,2,3\n", False),
    "no wanted column": ("Datetime,Close,Volume\n2020-01-01,1,3\n", False),
    "header only": (HEADER, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_clean_path_agrees_or_declines(case, tmp_path):
    text, taken = CASES[case]
    path = tmp_path / "bars.csv"
    path.write_text(text, encoding="utf-8", newline="")
    assert _same_as_slow(path) == taken


@pytest.mark.parametrize("raw", [b"Datetime,Close\n2020-01-01,1\x00\n", CLEAN.encode("utf-16"),
                                 HEADER.encode() + b"2020-01-01T00:00:00,1.5,1.6,1.4,1.5,100\n\xff\xfe,,,\n"],
                         ids=["NUL", "UTF-16", "not UTF-8"])
def test_bytes_that_are_not_utf8_text_take_the_slow_path(raw, tmp_path):
    path = tmp_path / "bars.csv"
    path.write_bytes(raw)
    assert D._read_clean_csv(raw, WANTED) is None


def test_large_clean_file_loads_as_the_slow_reader_loads_it(tmp_path):
    n = 20_000
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    stamps = np.datetime_as_string(np.datetime64("2021-03-01T00:00") + np.arange(n).astype("timedelta64[s]"), "ms")
    path = tmp_path / "big.csv"
    path.write_text("Datetime,Close,High,Volume\n" + "".join(
        f"{t},{c!r},{c * 1.01:.6f},{k}\n" for k, (t, c) in enumerate(zip(stamps, close.tolist()))))
    assert _same_as_slow(path)
    table = load_table(path, WANTED)
    assert table.columns["price"].tolist() == close.tolist()  # repr round-trips: the very same floats


@st.composite
def stamps(draw, zone: str) -> str:
    """An ISO-like timestamp, often valid, sometimes not (month 13, hour 24, a 10-digit fraction)."""
    text = f"{draw(st.integers(1600, 2300)):04d}-{draw(st.integers(0, 13)):02d}-{draw(st.integers(0, 32)):02d}"
    if draw(st.booleans()):
        text += draw(st.sampled_from("T ")) + f"{draw(st.integers(0, 25)):02d}"
        for _ in range(draw(st.integers(0, 2))):
            text += f":{draw(st.integers(0, 61)):02d}"
        if draw(st.booleans()):
            text += "." + draw(st.text("0123456789", min_size=1, max_size=10))
        text += zone
    return text


numbers = st.one_of(st.floats().map(repr), st.floats(allow_nan=False).map(lambda x: f"{x:.4e}"),
                    st.floats(-1e6, 1e6).map(lambda x: f"{x:.3f}"), st.integers(-10**20, 10**20).map(str),
                    st.sampled_from(["0x10", "-0", "+5", ".5", "5.", "1_0", " 7 ", '"8"', "", "nan", "NaN", "Inf",
                                     "-Infinity", "1e", "e1", "1,5"]))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["", "Z", "+02:00", "-0130"]).flatmap(
    lambda zone: st.lists(st.tuples(stamps(zone), numbers), min_size=1, max_size=4)))
def test_random_cells_agree_or_decline(tmp_path, rows):
    """Whatever the cells, the clean path reads them as `_read_csv` does, or leaves them to it."""
    path = tmp_path / "random.csv"
    path.write_text("Datetime,Close,High,Volume\n" + "".join(f"{t},{x},1,1\n" for t, x in rows),
                    encoding="utf-8", newline="")
    _same_as_slow(path)
