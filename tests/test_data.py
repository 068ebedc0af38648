"""Market data in: the real files of data/, Parquet and .npz, several instruments,
and every kind of broken CSV (a clear error naming file, line and problem; or, with
--skip-bad-rows, a run that reports what it skipped). Never a Python traceback.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from policyc.compiler.build import compile_policy
from policyc.cli import main
from policyc.runtime.backtest import load_events
from policyc.runtime.data import DataError, load_table, market_faults

from loopback import FLIP
from test_live_faults import limits

DATA = Path(__file__).resolve().parent.parent / "data"

#: The policies here are only read for their columns and run for the shape of their
#: results (events, dates, skipped rows), so each is a kernel other test files compile too
#: (a kernel is keyed by its source: params', limits' and instruments' values are not code).
#: One instrument, trading on its closes: tests/loopback.py's FLIP, which the live tests run.
CLOSER = FLIP
#: Two instruments (long `size` above `enter`), a kernel tests/test_live_runner.py's
#: kill-switch test runs too, as `two_longs(...)`.
PAIR_TEMPLATE = """\
policy: pair
version: 1
instruments: [{first}, {second}]
params:
  enter: {enter}
  size: {size}
signals:
  - when: close > enter
    target: size
risk:
  max_position: {max_position}
  max_drawdown: {max_drawdown}
"""


def two_longs(first: str, second: str, enter: int, size: int, max_position: int, max_drawdown: str) -> str:
    return PAIR_TEMPLATE.format(first=first, second=second, enter=enter, size=size, max_position=max_position,
                                max_drawdown=max_drawdown)


PAIR = two_longs("ORCL", "NVDA", enter=0, size=10, max_position=10, max_drawdown="100%")
#: On intents alone, long or short at most 100: tests/test_live_faults.py's `LIMITS`
#: template (its other keys where they never bind).
INTENT = limits(max_position=100)

# file -> (rows, first timestamp, last timestamp, first close)
REAL = {
    "orcl-1995-2014.csv": (5036, "1995-01-03T00:00:00", "2014-12-31T00:00:00", 2.117284),
    "nvda-1999-2014.csv": (4012, "1999-01-22T00:00:00", "2014-12-31T00:00:00", 1.640625),
    "yhoo-1996-2015.csv": (4965, "1996-04-12T00:00:00", "2015-12-31T00:00:00", 1.375),
    "index-2006-5min.csv": (2142, "2006-01-02T09:05:00", "2006-01-30T17:30:00", 3582.99),
    "index-ticks-2015-09-23.csv": (135, "2015-09-23T20:57:42.146", "2015-09-23T21:00:00.238", 3067.0),
}


def ns(text: str) -> int:
    return int(np.datetime64(text, "ns").astype(np.int64))


def cli(capsys, *argv):
    """`policyc ...` in-process: (exit code, stdout, stderr), and never a traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert "internal error" not in out.err, out.err
    return code, out.out, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("policies")
    out = {}
    for name, text in (("closer", CLOSER), ("pair", PAIR), ("intent", INTENT)):
        (d / f"{name}.yaml").write_text(text)
        out[name] = d / f"{name}.yaml"
    return out


@pytest.fixture(scope="module")
def closer(files):
    return compile_policy(str(files["closer"]))


def read_csv_closes(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, np.array([float(r["Close"]) for r in rows])


# =====================================================================================
# The real files
# =====================================================================================
def test_every_shared_file_is_covered():
    assert sorted(p.name for p in DATA.glob("*.csv")) == sorted(REAL)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_file_loads_with_load_table(closer, name):
    rows, first, last, first_close = REAL[name]
    t = load_table(DATA / name, closer.columns)
    assert len(t) == rows
    assert t.ts[0] == ns(first) and t.ts[-1] == ns(last)
    assert np.all(np.diff(t.ts) >= 0)
    _, closes = read_csv_closes(DATA / name)
    np.testing.assert_array_equal(t.columns["close"], closes)
    np.testing.assert_array_equal(t.columns["price"], closes)  # bars: price = close
    assert t.columns["close"][0] == first_close
    assert t.lines[0] == 2 and t.lines[-1] == rows + 1
    assert not t.skipped


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_file_runs_through_the_backtest_cli(capsys, files, name):
    rows, first, last, _ = REAL[name]
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", DATA / name, "--format", "json")
    assert code == 0, err
    s = json.loads(out)
    assert s["events"] == rows
    assert s["start"] == str(np.datetime64(first, "ns")) + "Z"
    assert s["end"] == str(np.datetime64(last, "ns")) + "Z"
    assert s["data"] == [str(DATA / name)] and s["skipped_rows"] == {}
    assert "warning: " not in err.replace("warning[W", "")  # nothing skipped, nothing reported


def test_timestamp_forms(closer, tmp_path):
    """Date only -> midnight UTC; Date + Time; Datetime with milliseconds; any header case."""
    cases = {
        "date.csv": ("Date,Close\n2024-03-01,1\n", "2024-03-01T00:00:00"),
        "date_time.csv": ("date,time,close\n2024-03-01,09:30:15,1\n", "2024-03-01T09:30:15"),
        "datetime_ms.csv": ("Datetime,Close\n2024-03-01T09:30:15.250,1\n", "2024-03-01T09:30:15.250"),
        "datetime_space.csv": ("DATETIME,CLOSE\n2024-03-01 09:30:15.250,1\n", "2024-03-01T09:30:15.250"),
        "datetime_z.csv": ("Datetime,Close\n2024-03-01T09:30:15Z,1\n", "2024-03-01T09:30:15"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert load_table(tmp_path / name, closer.columns).ts[0] == ns(expected), name


# =====================================================================================
# Parquet and .npz
# =====================================================================================
def _orcl_arrays():
    rows, closes = read_csv_closes(DATA / "orcl-1995-2014.csv")
    ts = np.array([ns(r["Date"]) for r in rows], dtype=np.int64)
    return ts, closes, np.array([float(r["Volume"]) for r in rows])




def test_parquet_loads_the_same_values_as_the_csv(closer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ts, closes, volume = _orcl_arrays()
    path = tmp_path / "orcl.parquet"
    pq.write_table(pa.table({"Date": pa.array(ts.astype("datetime64[ns]"), pa.timestamp("ns")),
                             "Close": closes, "Volume": volume}), path)
    t = load_table(path, closer.columns)
    c = load_table(DATA / "orcl-1995-2014.csv", closer.columns)
    np.testing.assert_array_equal(t.ts, c.ts)
    np.testing.assert_array_equal(t.columns["close"], c.columns["close"])
    np.testing.assert_array_equal(t.columns["price"], c.columns["price"])


def test_parquet_with_string_dates_loads(closer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"Date": ["2024-01-02", "2024-01-03"], "Close": [1.5, 2.5]}), path)
    t = load_table(path, closer.columns)
    assert list(t.ts) == [ns("2024-01-02"), ns("2024-01-03")]
    assert list(t.columns["close"]) == [1.5, 2.5]


def test_parquet_timestamps_in_micro_and_milliseconds(closer, tmp_path):
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    days = [dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 3, 9, 30)]
    for unit in ("ms", "us"):
        path = tmp_path / f"t_{unit}.parquet"
        pq.write_table(pa.table({"Date": pa.array(days, pa.timestamp(unit)), "Close": [1.0, 2.0]}), path)
        assert list(load_table(path, closer.columns).ts) == [ns("2024-01-02"), ns("2024-01-03T09:30")], unit


def test_npz_loads_the_same_values_as_the_csv(closer, tmp_path):
    ts, closes, volume = _orcl_arrays()
    path = tmp_path / "orcl.npz"
    np.savez(path, ts=ts, close=closes, volume=volume)
    t = load_table(path, closer.columns)
    c = load_table(DATA / "orcl-1995-2014.csv", closer.columns)
    np.testing.assert_array_equal(t.ts, c.ts)
    np.testing.assert_array_equal(t.columns["close"], c.columns["close"])
    path2 = tmp_path / "dates.npz"
    np.savez(path2, date=ts.astype("datetime64[ns]"), close=closes)
    np.testing.assert_array_equal(load_table(path2, closer.columns).ts, c.ts)


def test_npz_arrays_the_policy_does_not_read_are_still_checked(closer, tmp_path):
    ts, closes = np.arange(3) + 10**18, np.array([1.0, 2.0, 3.0])
    for name, extra, problem in (("short", np.zeros(2), "arrays of different lengths"),
                                 ("objects", np.array([None, 1, "x"], dtype=object), "not a readable .npz file"),
                                 ("scalar", np.float64(1.0), "array `spare` is a single value, not a column")):
        path = tmp_path / f"{name}.npz"
        np.savez(path, ts=ts, close=closes, spare=extra)
        with pytest.raises(DataError, match=problem):
            load_table(path, closer.columns)
    np.savez(tmp_path / "used.npz", ts=ts, close=np.float64(1.0))
    with pytest.raises(DataError, match="array `close` is a single value"):
        load_table(tmp_path / "used.npz", closer.columns)
    path = tmp_path / "fine.npz"
    np.savez(path, ts=ts, close=closes, spare=np.zeros(3), label=np.array(["a", "b", "c"]))
    assert load_table(path, closer.columns).columns["close"].tolist() == closes.tolist()


def test_parquet_and_npz_through_the_cli(capsys, files, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ts, closes, _ = _orcl_arrays()
    pq.write_table(pa.table({"Date": pa.array(ts.astype("datetime64[ns]"), pa.timestamp("ns")),
                             "Close": closes}), tmp_path / "o.parquet")
    np.savez(tmp_path / "o.npz", ts=ts, close=closes)
    # the same fills for all three: the CSV has `open`, the other two only the close
    _, csv_out, _ = cli(capsys, "backtest", files["closer"], "--data", DATA / "orcl-1995-2014.csv",
                        "--fill", "next", "--format", "json")
    for name in ("o.parquet", "o.npz"):
        code, out, err = cli(capsys, "backtest", files["closer"], "--data", tmp_path / name, "--format", "json")
        assert code == 0, err
        assert json.loads(out)["final_equity"] == json.loads(csv_out)["final_equity"]
        assert json.loads(out)["events"] == 5036


# =====================================================================================
# Several instruments
# =====================================================================================
def test_two_instruments_merge_by_timestamp(capsys, files):
    pair = compile_policy(str(files["pair"]))
    orcl, nvda = DATA / "orcl-1995-2014.csv", DATA / "nvda-1999-2014.csv"
    events, tables = load_events(pair, [("NVDA", str(nvda)), ("ORCL", str(orcl))])  # order of --data is free
    assert [t.path for t in tables] == [str(orcl), str(nvda)]          # instrument order
    assert len(events) == 5036 + 4012
    assert np.all(np.diff(events.ts) >= 0)
    price = events.vals[:, pair.columns.index("close")]
    for i, path in enumerate((orcl, nvda)):
        mine = events.inst == i
        _, closes = read_csv_closes(path)
        np.testing.assert_array_equal(price[mine], closes)
        np.testing.assert_array_equal(events.ts[mine], load_table(path, pair.columns).ts)
    # ties keep instrument order: on a day both trade, ORCL's bar comes first
    same = np.flatnonzero(np.diff(events.ts) == 0)
    assert len(same) > 3000
    assert np.all(events.inst[same] == 0) and np.all(events.inst[same + 1] == 1)

    code, out, err = cli(capsys, "backtest", files["pair"], "--data", f"ORCL={orcl}", "--data", f"NVDA={nvda}",
                         "--format", "json")
    assert code == 0, err
    s = json.loads(out)
    assert s["events"] == 9048 and s["start"].startswith("1995-01-03") and s["data"] == [str(orcl), str(nvda)]


def test_data_binding_errors(capsys, files):
    orcl = DATA / "orcl-1995-2014.csv"
    code, _, err = cli(capsys, "backtest", files["pair"], "--data", f"ORCL={orcl}")
    assert code == 1 and "no --data for instrument `NVDA`" in err
    code, _, err = cli(capsys, "backtest", files["pair"], "--data", orcl)
    assert code == 1 and "--data SYMBOL=PATH" in err
    code, _, err = cli(capsys, "backtest", files["pair"], "--data", f"ORCL={orcl}", "--data", f"MSFT={orcl}")
    assert code == 1
    assert ("error: --data names `MSFT`, which is not an instrument of `pair`; instruments: ORCL, NVDA"
            in err.splitlines())
    code, _, err = cli(capsys, "backtest", files["pair"], "--data", f"ORLC={orcl}", "--data", f"NVDA={orcl}")
    assert code == 1
    assert "error: --data names `ORLC`, which is not an instrument of `pair`; did you mean `ORCL`?" in err.splitlines()


# =====================================================================================
# The intent input column
# =====================================================================================
def test_intent_column_with_empty_cells(capsys, files, tmp_path):
    data = tmp_path / "intents.csv"
    data.write_text("Date,Close,intent\n"
                    "2024-01-02,100,\n"
                    "2024-01-03,101,50\n"
                    "2024-01-04,102,\n"
                    "2024-01-05,103,-20\n"
                    "2024-01-08,104,\n"
                    "2024-01-09,105,nan\n")
    pol = compile_policy(str(files["intent"]))
    t = load_table(data, pol.columns)
    intent = t.columns["intent"]
    assert len(t) == 6 and not t.skipped
    assert np.isnan(intent[[0, 2, 4, 5]]).all() and intent[1] == 50 and intent[3] == -20
    orders = tmp_path / "orders.csv"
    code, out, err = cli(capsys, "backtest", files["intent"], "--data", data, "--orders", orders)
    assert code == 0, err
    rows = list(csv.DictReader(orders.open()))
    assert [(r["decision_ts"][:10], r["qty"]) for r in rows] == [("2024-01-03", "50"), ("2024-01-05", "-70")]
    # a non-number in the intent column is still an error
    data.write_text("Date,Close,intent\n2024-01-02,100,abc\n2024-01-03,101,\n")
    code, _, err = cli(capsys, "backtest", files["intent"], "--data", data)
    assert code == 1 and f"error: {data}:2: `intent` is not a number: `abc`" in err.splitlines()


def test_an_input_beyond_the_largest_magnitude_is_a_bad_row_of_its_own_kind(capsys, files, tmp_path):
    from policyc.compiler.layout import MAX_MAGNITUDE

    data = tmp_path / "intents.csv"
    data.write_text(f"Date,Close,intent\n2024-01-02,100,{MAX_MAGNITUDE:.0f}\n2024-01-03,101,-1e16\n"
                    "2024-01-04,102,inf\n2024-01-05,103,5\n")
    code, _, err = cli(capsys, "backtest", files["intent"], "--data", data)
    assert code == 1 and (f"error: {data}:3: `intent` is -1e+16; values must be at most 1e+15 in magnitude "
                          "(1 more problem rows; --skip-bad-rows skips them and reports each kind)") in err.splitlines()
    t = load_table(data, compile_policy(str(files["intent"])).columns, skip_bad_rows=True)
    assert list(t.columns["intent"]) == [MAX_MAGNITUDE, 5.0] and t.skipped == {"value too large": 2}


def test_missing_column_names_the_column_and_lists_the_columns_found(capsys, files, tmp_path):
    data = tmp_path / "no_intent.csv"
    data.write_text("Date,Close\n2024-01-02,100\n")
    code, _, err = cli(capsys, "backtest", files["intent"], "--data", data)
    assert code == 1 and "`intent`" in err and "found: Date, Close" in err and str(data) in err


# =====================================================================================
# Broken CSVs
# =====================================================================================
H = "Date,Open,High,Low,Close,Volume\n"
GOOD = "2024-01-02,1,20,0.5,10,5\n"

# name -> (text, line, phrases in the message, skipped kind, rows left after skipping)
ROW_PROBLEMS = {
    "non_numeric": (H + GOOD + "2024-01-03,1,20,0.5,abc,5\n2024-01-04,1,20,0.5,11,5\n", 3,
                    ["`Close` is not a number: `abc`"], "not a number", 2),
    "empty_price_cell": (H + GOOD + "2024-01-03,1,20,0.5,,5\n2024-01-04,1,20,0.5,11,5\n", 3,
                         ["`Close`", "not a number"], "not a number", 2),
    "nan_price": (H + GOOD + "2024-01-03,1,20,0.5,NaN,5\n2024-01-04,1,20,0.5,11,5\n", 3,
                  ["`Close`", "nan", "positive"], "non-positive, NaN or infinite price", 2),
    "zero_price": (H + GOOD + "2024-01-03,1,20,0.5,0,5\n2024-01-04,1,20,0.5,11,5\n", 3,
                   ["`Close` is 0", "positive"], "non-positive, NaN or infinite price", 2),
    "negative_price": (H + GOOD + "2024-01-03,1,20,0.5,11,5\n2024-01-04,1,20,0.5,-2.5,5\n", 4,
                       ["`Close` is -2.5", "positive"], "non-positive, NaN or infinite price", 2),
    "time_goes_back": (H + GOOD + "2024-01-05,1,20,0.5,11,5\n2024-01-05,1,20,0.5,11,5\n2024-01-04,1,20,0.5,12,5\n"
                       "2024-01-06,1,20,0.5,12,5\n", 5, ["earlier than the row before"], "timestamp out of order", 4),
    "bad_timestamp": (H + GOOD + "2024-13-45,1,20,0.5,11,5\n2024-01-06,1,20,0.5,12,5\n", 3,
                      ["timestamp `2024-13-45` is not a real date: there is no month 13"], "bad timestamp", 2),
    # finite, but sums and products of it would overflow the account's arithmetic (issue 9, case 1)
    "huge_price": (H + GOOD + "2024-01-03,1,20,0.5,1e308,5\n2024-01-04,1,20,0.5,11,5\n", 3,
                   ["`Close` is 1e+308; values must be at most 1e+15 in magnitude"], "value too large", 2),
}


@pytest.mark.parametrize("name", sorted(ROW_PROBLEMS))
def test_broken_row_is_an_error_naming_file_line_and_problem(capsys, files, tmp_path, name):
    text, line, phrases, _, _ = ROW_PROBLEMS[name]
    path = tmp_path / f"{name}.csv"
    path.write_text(text)
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1
    assert f"error: {path}:{line}: " in err, err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    with pytest.raises(DataError):
        load_table(path, ["price", "close"])


@pytest.mark.parametrize("name", sorted(ROW_PROBLEMS))
def test_broken_row_is_skipped_and_reported_with_skip_bad_rows(capsys, files, tmp_path, name):
    text, line, _, kind, left = ROW_PROBLEMS[name]
    path = tmp_path / f"{name}.csv"
    path.write_text(text)
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", path, "--skip-bad-rows", "--format", "json")
    assert code == 0, err
    assert f"warning: {path}: skipped 1 row(s): {kind} (lines {line})" in err, err
    s = json.loads(out)
    assert s["events"] == left and s["skipped_rows"] == {kind: 1}


def test_equal_timestamps_are_fine(closer, tmp_path):
    path = tmp_path / "ties.csv"
    path.write_text("Datetime,Close\n2024-01-02T10:00:00,1\n2024-01-02T10:00:00,2\n2024-01-02T10:00:00,3\n")
    t = load_table(path, closer.columns)
    assert len(t) == 3 and len(set(t.ts)) == 1 and not t.skipped


def test_skip_bad_rows_counts_each_kind(capsys, files, tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(H + GOOD
                    + "2024-01-03,1,20,0.5,x,5\n"        # 3 not a number
                    + "2024-01-04,1,20,0.5,11,5\n"       # 4 ok
                    + "2024-01-05,1,20,0.5,,5\n"         # 5 not a number (empty)
                    + "2024-01-06,1,20,0.5,nan,5\n"      # 6 NaN
                    + "2024-01-07,1,20,0.5,0,5\n"        # 7 zero
                    + "2024-01-08,1,20,0.5,-1,5\n"       # 8 negative
                    + "2024-01-09,1,20,0.5,12,5\n"       # 9 ok
                    + "2024-01-01,1,20,0.5,12,5\n"       # 10 back in time
                    + "2024-01-10,1,20,0.5,13,5\n")      # 11 ok
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", path, "--skip-bad-rows", "--format", "json")
    assert code == 0, err
    assert "skipped 2 row(s): not a number (lines 3, 5)" in err
    assert "skipped 3 row(s): non-positive, NaN or infinite price (lines 6, 7, 8)" in err
    assert "skipped 1 row(s): timestamp out of order (lines 10)" in err
    s = json.loads(out)
    assert s["events"] == 4
    assert s["skipped_rows"] == {"not a number": 2, "non-positive, NaN or infinite price": 3, "timestamp out of order": 1}


# file-level problems: an error without --skip-bad-rows and with it
def _junk(path: Path):
    path.write_bytes(bytes(np.random.default_rng(7).integers(0, 256, 400, dtype=np.uint8)))


FILE_PROBLEMS = {
    "missing_column": (lambda p: p.write_text("Date,Open,High,Low,Volume\n2024-01-02,1,20,0.5,5\n"),
                       ["no such column", "found: Date, Open, High, Low, Volume"]),
    "missing_timestamp_column": (lambda p: p.write_text("Open,High,Low,Close\n1,1,1,10\n"),
                                 ["no timestamp column", "found: Open, High, Low, Close"]),
    "binary_junk": (_junk, ["not a UTF-8 text file"]),
    "png_bytes": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), ["not a UTF-8 text file"]),
    "nul_bytes": (lambda p: p.write_bytes(b"Date,Close\n2024-01-02,1\x00\n"), ["NUL bytes"]),
    "empty_file": (lambda p: p.write_bytes(b""), ["empty file"]),
    "header_only": (lambda p: p.write_text(H), ["no rows"]),
}


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("name", sorted(FILE_PROBLEMS))
def test_broken_file_is_an_error_naming_file_and_problem(capsys, files, tmp_path, name, skip):
    make, phrases = FILE_PROBLEMS[name]
    path = tmp_path / f"{name}.csv"
    make(path)
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", path, *(["--skip-bad-rows"] if skip else []))
    assert code == 1
    assert f"error: {path}" in err
    for phrase in phrases:
        assert phrase in err, (phrase, err)


def test_missing_close_column_is_named_close(capsys, files, tmp_path):
    path = tmp_path / "no_close.csv"
    path.write_text("Date,Open,High,Low,Volume\n2024-01-02,1,20,0.5,5\n")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1 and "`close`" in err, err


# ---- loader edge cases
def test_wrong_number_of_fields(capsys, files, tmp_path):
    path = tmp_path / "fields.csv"
    path.write_text(H + GOOD + "2024-01-03,1,20,0.5,10\n2024-01-04,1,20,0.5,11,5,7\n2024-01-05,1,20,0.5,12,5\n")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1
    assert f"error: {path}:3: has 5 fields, the header has 6" in err, err
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", path, "--skip-bad-rows", "--format", "json")
    assert code == 0
    assert "skipped 2 row(s): wrong number of fields (lines 3, 4)" in err, err
    assert json.loads(out)["skipped_rows"] == {"wrong number of fields": 2}


@pytest.mark.parametrize("text, line, message", [
    ("Date,Close\n,10\n2024-01-03,11\n", 2, "timestamp is empty"),
    ("Date,Close\n2024-01-02,10\n,11\n2024-01-04,12\n", 3, "timestamp is empty"),
    ("Date,Close\n2024-01-02,10\nNaT,11\n2024-01-04,12\n", 3, "timestamp `NaT` is not a date/time: "
     "use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.fff], or give its strptime format with --date-format"),
])
def test_empty_timestamp_cell_is_a_bad_timestamp(capsys, files, tmp_path, text, line, message):
    path = tmp_path / "empty_ts.csv"
    path.write_text(text)
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1
    assert err.splitlines() == [f"error: {path}:{line}: {message}"], err


def test_infinite_price_is_rejected(capsys, files, tmp_path):
    path = tmp_path / "inf.csv"
    path.write_text("Date,Close\n2024-01-02,10\n2024-01-03,inf\n2024-01-04,11\n")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1 and f"{path}:3:" in err, err


def test_more_problem_rows_counts_rows(capsys, files, tmp_path):
    path = tmp_path / "two_bad.csv"
    path.write_text(H + GOOD + "2024-01-03,1,20,0.5,0,5\n2024-01-04,1,20,0.5,-3,5\n")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1 and "(1 more problem rows" in err, err


def test_line_numbers_after_a_multiline_quoted_field(capsys, files, tmp_path):
    path = tmp_path / "multiline.csv"
    path.write_text('Date,Close,Note\n2024-01-02,10,"two\nlines"\n2024-01-03,-1,x\n')
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1 and f"{path}:4:" in err, err


def test_to_date_is_inclusive(capsys, files):
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", DATA / "orcl-1995-2014.csv",
                         "--from", "2000-01-03", "--to", "2000-12-29", "--format", "json")
    assert code == 0, err
    s = json.loads(out)
    assert s["start"].startswith("2000-01-03") and s["end"].startswith("2000-12-29")


def test_from_to_select_a_range(capsys, files):
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", DATA / "index-2006-5min.csv",
                         "--from", "2006-01-10T10:00:00", "--to", "2006-01-11", "--format", "json")
    assert code == 0, err
    s = json.loads(out)
    assert s["start"] == "2006-01-10T10:00:00.000000000Z" and s["end"].startswith("2006-01-11T")  # --to DATE includes that day
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", DATA / "orcl-1995-2014.csv",
                       "--from", "yesterday")
    assert code == 2  # a usage error, as every option value that is not one of its kind
    assert err.splitlines()[-1] == ("policyc: error: argument --from: not a date: `yesterday`; "
                                    "use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.fff]")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", DATA / "orcl-1995-2014.csv", "--to", "")
    assert code == 2 and err.splitlines()[-1].startswith("policyc: error: argument --to: not a date: ``;")  # NumPy: NaT
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", DATA / "orcl-1995-2014.csv",
                       "--from", "2030-01-01")
    assert code == 1 and "no rows" in err


# =====================================================================================
# Data mistakes name the value and the fix
# =====================================================================================
US = "Date,Close\n01/03/1995,10\n01/04/1995,11\n01/05/1995,12\n"


def test_a_timestamp_that_does_not_parse_shows_the_text_its_line_and_the_formats(capsys, files, tmp_path):
    path = tmp_path / "us_row.csv"
    path.write_text("Date,Close\n1995-01-03,10\n01/04/1995,11\n1995-01-05,12\n")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1
    assert err.splitlines() == [f"error: {path}:3: timestamp `01/04/1995` is not ISO 8601: "
                                "use --date-format %m/%d/%Y (month first) or %d/%m/%Y (day first)"]


def test_a_file_whose_every_timestamp_fails_counts_them_instead_of_suggesting_skip_bad_rows(capsys, files, tmp_path):
    path = tmp_path / "us.csv"
    path.write_text(US)
    expected = (f"error: {path}:2: timestamp `01/03/1995` is not ISO 8601: use --date-format %m/%d/%Y (month first) "
                "or %d/%m/%Y (day first) (every row is bad; bad timestamp: 3)")
    for skip in ([], ["--skip-bad-rows"]):
        code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, *skip)
        assert code == 1 and err.splitlines() == [expected], err


def test_skip_bad_rows_that_skips_every_row_reports_the_count_per_kind(capsys, files, tmp_path):
    path = tmp_path / "all_bad.csv"
    path.write_text("Date,Close\n2024-01-02,abc\n,10\n2024-01-04,-1\n2024-01-05,x\n")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, "--skip-bad-rows")
    assert code == 1
    assert err.splitlines() == [f"error: {path}:2: `Close` is not a number: `abc` (every row is bad; not a number: 2, "
                                "bad timestamp: 1, non-positive, NaN or infinite price: 1)"]


def test_date_format_reads_the_file(capsys, files, tmp_path):
    path = tmp_path / "us.csv"
    path.write_text(US)
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", path, "--date-format", "%m/%d/%Y",
                         "--format", "json")
    assert code == 0, err
    s = json.loads(out)
    assert s["events"] == 3 and s["start"].startswith("1995-01-03T00:00") and s["end"].startswith("1995-01-05T00:00")
    code, out, err = cli(capsys, "sweep", files["closer"], "--data", path, "--date-format", "%m/%d/%Y", "--jobs", "1")
    assert code == 0, err


def test_a_timestamp_that_does_not_match_date_format_names_both(capsys, files, tmp_path):
    path = tmp_path / "iso.csv"
    path.write_text("Date,Close\n1995-01-03,10\n1995-01-04,11\n")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, "--date-format", "%m/%d/%Y")
    assert code == 1
    assert err.splitlines() == [f"error: {path}:2: timestamp `1995-01-03` does not match --date-format `%m/%d/%Y`: "
                                "it is ISO 8601, which is read without --date-format (every row is bad; bad timestamp: 2)"]


def test_date_format_covers_date_and_time_columns_and_converts_a_zone_to_utc(closer, tmp_path):
    path = tmp_path / "eu.csv"
    path.write_text("Date,Time,Close\n03.01.1995,09:30,10\n")
    assert list(load_table(path, closer.columns, date_format="%d.%m.%Y %H:%M").ts) == [ns("1995-01-03T09:30")]
    path.write_text("Datetime,Close\n2024-01-02 09:30:00+0100,1\n")
    assert list(load_table(path, closer.columns, date_format="%Y-%m-%d %H:%M:%S%z").ts) == [ns("2024-01-02T08:30")]
    path.write_text("Date,Close\n19950103,10\n")  # digits are a date when a format says so, not ns since 1970
    assert list(load_table(path, closer.columns, date_format="%Y%m%d").ts) == [ns("1995-01-03")]


def test_replay_feed_takes_date_format(tmp_path):
    from policyc.cli import build_parser
    from policyc.runtime.live.replay import load_recording

    path = tmp_path / "us.csv"
    path.write_text(US)
    args = build_parser().parse_args(["replay-feed", "--data", str(path), "--listen", "127.0.0.1:9",
                                      "--date-format", "%m/%d/%Y"])
    rec = load_recording(args.data, args.date_format)
    assert rec.instruments == ["US"] and list(rec.ts) == [ns("1995-01-03"), ns("1995-01-04"), ns("1995-01-05")]


def test_a_date_format_without_directives_is_a_usage_error(capsys, files):
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", DATA / "orcl-1995-2014.csv",
                       "--date-format", "dd/mm/yyyy")
    assert code == 2
    assert err.splitlines()[-1] == ("policyc: error: argument --date-format: `dd/mm/yyyy` is not a strptime format; "
                                    "write it as %d/%m/%Y")


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_file_delimited_by_semicolon_tab_or_bar_is_read(capsys, files, closer, tmp_path, delimiter):
    rows = [line.split(",") for line in (DATA / "orcl-1995-2014.csv").read_text().splitlines()]
    path = tmp_path / "orcl.csv"
    path.write_text("\n".join(delimiter.join(row) for row in rows) + "\n")
    t, c = load_table(path, closer.columns), load_table(DATA / "orcl-1995-2014.csv", closer.columns)
    np.testing.assert_array_equal(t.ts, c.ts)
    np.testing.assert_array_equal(t.columns["close"], c.columns["close"])
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", path, "--format", "json")
    assert code == 0 and json.loads(out)["events"] == 5036, err


def test_a_european_excel_file_reads_with_decimal_commas(closer, tmp_path):
    path = tmp_path / "eu.csv"
    path.write_text("Date;Open;Close;Volume\n03.01.1995;2,1;2,117284;100\n04.01.1995;2,2;2,25;200\n")
    t = load_table(path, [*closer.columns, "open", "volume"], date_format="%d.%m.%Y")
    assert list(t.ts) == [ns("1995-01-03"), ns("1995-01-04")]
    assert list(t.columns["close"]) == [2.117284, 2.25] and list(t.columns["open"]) == [2.1, 2.2]
    assert list(t.columns["volume"]) == [100, 200]


# =====================================================================================
# Numbers are not dates in another unit, silently
# =====================================================================================
def _with_stamps(path: Path, stamps: list[str]) -> Path:
    path.write_text("Date,Close\n" + "".join(f"{s},{10 + k}\n" for k, s in enumerate(stamps)))
    return path


@pytest.mark.parametrize("stamps, message", [
    (["19950103", "19950104"], "timestamp `19950103` looks like YYYYMMDD; use --date-format %Y%m%d"),
    (["199501030930", "199501031000"], "timestamp `199501030930` looks like YYYYMMDDHHMM; use --date-format %Y%m%d%H%M"),
    (["1443043062", "1443043063"],
     "timestamp `1443043062` looks like seconds since 1970 (2015-09-23T21:17:42Z); use --date-format epoch"),
    (["789091200", "789177600"], "timestamp `789091200` looks like seconds since 1970 (1995-01-03); use --date-format epoch"),
    (["1443043062.5", "1443043063"],
     "timestamp `1443043062.5` looks like seconds since 1970 (2015-09-23T21:17:42.500Z); use --date-format epoch"),
    (["1443043062146", "1443043062147"], "timestamp `1443043062146` looks like milliseconds since 1970 "
                                         "(2015-09-23T21:17:42.146Z); use --date-format epoch-ms"),
    (["1443043062146000", "1443043062147000"], "timestamp `1443043062146000` looks like microseconds since 1970 "
                                               "(2015-09-23T21:17:42.146Z); use --date-format epoch-us"),
    (["1443043062146000000", "1443043062147000000"], "timestamp `1443043062146000000` looks like nanoseconds since "
                                                     "1970 (2015-09-23T21:17:42.146Z); use --date-format epoch-ns"),
    (["12", "13"], "timestamp `12` is not a date/time: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.fff], "
                   "or give its strptime format with --date-format"),
])
def test_a_csv_timestamp_made_of_digits_is_refused_with_the_format_that_reads_it(capsys, files, tmp_path, stamps, message):
    path = _with_stamps(tmp_path / "digits.csv", stamps)
    for skip in ([], ["--skip-bad-rows"]):
        code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, *skip)
        assert code == 1
        assert err.splitlines() == [f"error: {path}:2: {message} (every row is bad; bad timestamp: 2)"]


def test_one_timestamp_of_digits_among_iso_dates_is_a_bad_row_not_the_year_19950104(capsys, files, tmp_path):
    path = _with_stamps(tmp_path / "mixed.csv", ["1995-01-03", "19950104", "1995-01-05", "1995-01-06"])
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1
    assert err.splitlines() == [f"error: {path}:3: timestamp `19950104` looks like YYYYMMDD; use --date-format %Y%m%d"]


@pytest.mark.parametrize("fmt, stamps", [
    ("epoch", ["789091200", "789177600.5"]),
    ("epoch-ms", ["789091200000", "789177600500"]),
    ("epoch-us", ["789091200000000", "789177600500000"]),
    ("epoch-ns", ["789091200000000000", "789177600500000000"]),
])
def test_date_format_epoch_reads_numbers_since_1970(closer, tmp_path, fmt, stamps):
    path = _with_stamps(tmp_path / "epoch.csv", stamps)
    assert list(load_table(path, closer.columns, date_format=fmt).ts) == [ns("1995-01-03"), ns("1995-01-04T00:00:00.5")]


def test_date_format_epoch_refuses_text_that_is_not_a_number(capsys, files, tmp_path):
    path = _with_stamps(tmp_path / "epoch.csv", ["789091200", "1995-01-04", "789264000", "789350400"])
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, "--date-format", "epoch")
    assert code == 1
    assert err.splitlines() == [f"error: {path}:3: timestamp `1995-01-04` is not a number of seconds since 1970 "
                                "(--date-format epoch); it looks like a date: use --date-format %Y-%m-%d"]


def test_integer_timestamps_in_npz_and_parquet_that_are_not_nanoseconds_are_refused(closer, capsys, files, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    seconds = np.array([789091200, 789177600])
    np.savez(tmp_path / "s.npz", ts=seconds, close=[1.0, 2.0])
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", tmp_path / "s.npz")
    assert code == 1
    assert err.splitlines() == [f"error: {tmp_path / 's.npz'}:row 0: timestamp 789091200 read as nanoseconds since "
                                "1970 is 1970-01-01T00:00:00.789091200Z; it looks like seconds since 1970 (1995-01-03); "
                                "use --date-format epoch"]
    assert list(load_table(tmp_path / "s.npz", closer.columns, date_format="epoch").ts) == \
        [ns("1995-01-03"), ns("1995-01-04")]
    pq.write_table(pa.table({"Date": np.array([19950103, 19950104]), "Close": [1.0, 2.0]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match="it looks like YYYYMMDD; use --date-format %Y%m%d"):
        load_table(tmp_path / "d.parquet", closer.columns)
    assert list(load_table(tmp_path / "d.parquet", closer.columns, date_format="%Y%m%d").ts) == \
        [ns("1995-01-03"), ns("1995-01-04")]
    # a timestamp column stays a time whatever --date-format says of numbers
    pq.write_table(pa.table({"Date": pa.array(np.array(["1995-01-03"], "datetime64[ms]")), "Close": [1.0]}),
                   tmp_path / "t.parquet")
    assert list(load_table(tmp_path / "t.parquet", closer.columns, date_format="epoch").ts) == [ns("1995-01-03")]
    np.savez(tmp_path / "small.npz", ts=np.arange(3), close=[1.0, 2.0, 3.0])  # small counts: nanoseconds, as documented
    assert list(load_table(tmp_path / "small.npz", closer.columns).ts) == [0, 1, 2]


def test_date_format_applies_to_parquet_string_columns(closer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"Date": ["03/01/1995", "04/01/1995"], "Close": [1.0, 2.0]}), tmp_path / "s.parquet")
    assert list(load_table(tmp_path / "s.parquet", closer.columns, date_format="%d/%m/%Y").ts) == \
        [ns("1995-01-03"), ns("1995-01-04")]


# =====================================================================================
# A wrong format is not a few bad rows
# =====================================================================================
def _orcl_rows(n: int | None = None) -> tuple[str, list[list[str]]]:
    lines = (DATA / "orcl-1995-2014.csv").read_text().splitlines()
    return lines[0], [line.split(",") for line in lines[1: None if n is None else n + 1]]


def test_skip_bad_rows_refuses_when_most_timestamps_fail(capsys, files, tmp_path):
    header, rows = _orcl_rows(200)
    path = tmp_path / "us.csv"
    path.write_text("\n".join([header] + [",".join([f"{d[5:7]}/{d[8:10]}/{d[:4]}", *rest]) for d, *rest in rows]) + "\n")
    expected = (f"error: {path}:10: timestamp `01/13/1995` does not match --date-format `%d/%m/%Y`: try %m/%d/%Y "
                "(118 of 200 rows have a bad timestamp and 68 more are out of order: too many to skip)")
    for skip in ([], ["--skip-bad-rows"]):
        code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, "--date-format", "%d/%m/%Y", *skip)
        assert code == 1 and err.splitlines() == [expected], err
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", path, "--date-format", "%m/%d/%Y",
                         "--format", "json")
    assert code == 0 and json.loads(out)["events"] == 200, err


def test_a_file_sorted_newest_first_says_so(capsys, files, tmp_path):
    header, rows = _orcl_rows(50)
    path = tmp_path / "newest.csv"
    path.write_text("\n".join([header] + [",".join(r) for r in rows[::-1]]) + "\n")
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, "--skip-bad-rows")
    assert code == 1
    assert err.splitlines() == [f"error: {path}: the rows run newest first (1995-03-14 down to 1995-01-03); "
                                "sort them oldest first"]


@pytest.mark.parametrize("stamps, message", [
    (["03.01.1995", "04.01.1995"], "timestamp `03.01.1995` is not ISO 8601: use --date-format %d.%m.%Y"),
    (["03.01.1995 09:30", "04.01.1995 09:30"],
     "timestamp `03.01.1995 09:30` is not ISO 8601: use --date-format '%d.%m.%Y %H:%M'"),
    (["01/03/1995", "01/04/1995"],
     "timestamp `01/03/1995` is not ISO 8601: use --date-format %m/%d/%Y (month first) or %d/%m/%Y (day first)"),
    (["01/03/1995", "01/13/1995"], "timestamp `01/03/1995` is not ISO 8601: use --date-format %m/%d/%Y"),
    (["13/01/1995", "14/01/1995"], "timestamp `13/01/1995` is not ISO 8601: use --date-format %d/%m/%Y"),
    (["3 Jan 1995", "4 Jan 1995"], "timestamp `3 Jan 1995` is not ISO 8601: use --date-format '%d %b %Y'"),
    (["1995-02-29", "1995-02-30"], "timestamp `1995-02-29` is not a real date: February 1995 has 28 days"),
    (["1995-1-3", "1995-1-4"], "timestamp `1995-1-3` is not ISO 8601: use --date-format %Y-%m-%d"),
    (["today", "now"], "timestamp `today` is not a date/time: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.fff], "
                       "or give its strptime format with --date-format"),
])
def test_the_timestamp_hint_is_guessed_from_the_text(capsys, files, tmp_path, stamps, message):
    path = _with_stamps(tmp_path / "forms.csv", stamps)
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1
    assert err.splitlines()[0].startswith(f"error: {path}:2: {message} ("), err


def test_a_date_that_does_not_exist_with_date_format_says_so(capsys, files, tmp_path):
    path = _with_stamps(tmp_path / "eu.csv", ["28/02/1995", "29/02/1995", "01/03/1995", "02/03/1995"])
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, "--date-format", "%d/%m/%Y")
    assert code == 1
    assert err.splitlines() == [f"error: {path}:3: timestamp `29/02/1995` is not a real date "
                                "(day is out of range for month; --date-format `%d/%m/%Y`)"]


def test_a_utc_offset_in_an_iso_timestamp_is_converted(closer, tmp_path):
    path = tmp_path / "offset.csv"
    path.write_text("Datetime,Close\n2024-01-02T10:00:00+02:00,1\n2024-01-02T10:00:00-0130,2\n")
    assert list(load_table(path, closer.columns).ts) == [ns("2024-01-02T08:00"), ns("2024-01-02T11:30")]


# =====================================================================================
# --from/--to
# =====================================================================================
@pytest.mark.parametrize("bounds, span", [
    (["--from", "2030-01-01"], "from 2030-01-01 on"),
    (["--to", "1990"], "up to 1990-12-31"),
    (["--from", "2020-01-01", "--to", "2020-06-30"], "from 2020-01-01 to 2020-06-30"),
    (["--from", "1995-01-07T10:00"], "from 1995-01-07T10:00:00 on"),
])
def test_a_range_without_rows_names_the_files_first_and_last_dates(capsys, files, tmp_path, bounds, span):
    path = _with_stamps(tmp_path / "week.csv", ["1995-01-03", "1995-01-04", "1995-01-05", "1995-01-06"])
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path, *bounds)
    assert code == 1
    assert err.splitlines() == [f"error: {path}: no rows {span} (--from/--to); the file runs from 1995-01-03 to 1995-01-06"]


def test_a_year_or_a_month_as_from_and_to_means_all_of_it(capsys, files):
    code, out, err = cli(capsys, "backtest", files["closer"], "--data", DATA / "orcl-1995-2014.csv",
                         "--from", "2000", "--to", "2000-02", "--format", "json")
    assert code == 0, err
    s = json.loads(out)
    assert s["start"].startswith("2000-01-03") and s["end"].startswith("2000-02-29")


# =====================================================================================
# Spreadsheet exports
# =====================================================================================
EU_ROWS = [("03.01.1995", "2,179012", "2,117284", "36.301.200"), ("04.01.1995", "2,123457", "2,135803", "1.234.567,5"),
           ("05.01.1995", "2,1", "2,2", "987")]


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_decimal_commas_and_thousands_in_a_file_not_delimited_by_commas(closer, tmp_path, delimiter):
    path = tmp_path / "eu.txt"
    path.write_text("\n".join(delimiter.join(r) for r in [("Date", "Open", "Close", "Volume"), *EU_ROWS]) + "\n")
    t = load_table(path, [*closer.columns, "open", "volume"], date_format="%d.%m.%Y")
    assert list(t.ts) == [ns("1995-01-03"), ns("1995-01-04"), ns("1995-01-05")]
    assert list(t.columns["close"]) == [2.117284, 2.135803, 2.2]
    assert list(t.columns["open"]) == [2.179012, 2.123457, 2.1]
    assert list(t.columns["volume"]) == [36301200, 1234567.5, 987]


@pytest.mark.parametrize("cells, values", [
    (["1,234.5", "2,345,678", "12.25"], [1234.5, 2345678, 12.25]),    # a comma before a point: thousands
    (["1 234,5", "2 345 678", "12,25"], [1234.5, 2345678, 12.25]),    # spaces group thousands
    (["1\u00a0234,5", "12,25", "7"], [1234.5, 12.25, 7]),            # so do no-break spaces
])
def test_thousands_separators_that_cannot_be_mistaken(closer, tmp_path, cells, values):
    path = tmp_path / "tab.txt"
    path.write_text("Date\tClose\n" + "".join(f"1995-01-0{k + 3}\t{c}\n" for k, c in enumerate(cells)))
    assert list(load_table(path, closer.columns).columns["close"]) == values


def test_a_comma_in_a_number_of_a_comma_delimited_file_is_a_thousands_separator_or_a_bad_number(capsys, files, tmp_path):
    path = tmp_path / "us.csv"
    path.write_text('Date,Close\n1995-01-03,"1,234.5"\n1995-01-04,"2,5"\n1995-01-05,12\n')
    code, _, err = cli(capsys, "backtest", files["closer"], "--data", path)
    assert code == 1 and err.splitlines() == [f"error: {path}:3: `Close` is not a number: `2,5`"]


@pytest.mark.parametrize("encoding, bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"), ("utf-16-le", b"")])
def test_a_utf16_unicode_text_export_is_read(closer, tmp_path, encoding, bom):
    path = tmp_path / "unicode.txt"
    text = "\r\n".join("\t".join(r) for r in [("Date", "Open", "Close", "Volume"), *EU_ROWS]) + "\r\n"
    path.write_bytes(bom + text.encode(encoding))
    t = load_table(path, closer.columns, date_format="%d.%m.%Y")
    assert list(t.columns["close"]) == [2.117284, 2.135803, 2.2] and len(t) == 3


# ---- naive timestamps in a time zone ---------------------------------------------------
def _ns(text: str) -> int:
    return int(np.datetime64(text, "ns").astype(np.int64))


def test_naive_timestamps_are_read_in_the_zone_and_zoned_ones_keep_theirs(tmp_path):
    # 2024-03-31 in Berlin: CET (UTC+1) before 02:00, CEST (UTC+2) after
    path = tmp_path / "berlin.csv"
    path.write_text("Datetime,Close\n2024-03-31T01:30:00,10\n2024-03-31 03:30:00,11\n"
                    "2024-03-31T04:00:00Z,12\n2024-03-31T06:00:00+02:00,13\n")
    table = load_table(path, ["close"], zone="Europe/Berlin")
    assert table.ts.tolist() == [_ns("2024-03-31T00:30"), _ns("2024-03-31T01:30"), _ns("2024-03-31T04:00"),
                                 _ns("2024-03-31T04:00")]
    assert load_table(path, ["close"]).ts[0] == _ns("2024-03-31T01:30")  # no zone: UTC


def test_a_strptime_format_reads_naive_text_in_the_zone(tmp_path):
    path = tmp_path / "ny.csv"
    path.write_text("Date,Close\n02/01/2024 09:30,10\n07/02/2024 09:30,11\n")
    table = load_table(path, ["close"], date_format="%m/%d/%Y %H:%M", zone="America/New_York")
    # EST (UTC-5) in February, EDT (UTC-4) in July
    assert table.ts.tolist() == [_ns("2024-02-01T14:30"), _ns("2024-07-02T13:30")]


def test_epoch_numbers_stay_utc_in_a_zone(tmp_path):
    path = tmp_path / "epoch.csv"
    path.write_text("ts,price\n1700000000,10\n")
    table = load_table(path, ["price"], date_format="epoch", zone="Asia/Tokyo")
    assert table.ts.tolist() == [1_700_000_000 * 10**9]


def test_parquet_times_with_a_zone_keep_it_and_naive_ones_take_the_policys(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    stamps = [_ns("2024-01-15T10:00")]
    for tz, want in ((None, _ns("2024-01-15T01:00")), ("UTC", stamps[0])):
        path = tmp_path / f"t{tz}.parquet"
        pq.write_table(pa.table({"ts": pa.array(stamps, pa.timestamp("ns", tz=tz)), "price": [1.0]}), path)
        assert load_table(path, ["price"], zone="Asia/Tokyo").ts.tolist() == [want]


BARS = ("Date,Open,High,Low,Close\n2024-01-02,10,11,9,10.5\n{bad}\n2024-01-04,10,11,9,10.5\n")


@pytest.mark.parametrize("bad, detail", [
    ("2024-01-03,10,9,11,10", "`High` 9 is below `Low` 11"),
    ("2024-01-03,12,11,9,10", "`Open` 12 is outside the bar's low 9 and high 11"),
    ("2024-01-03,10,11,9,8.5", "`Close` 8.5 is outside the bar's low 9 and high 11"),
])
def test_a_bar_whose_prices_do_not_nest_is_a_bad_row(tmp_path, bad, detail):
    """Stops and next-open fills happen between a bar's low and high: a bar that cannot
    exist is named at its line, and --skip-bad-rows counts it."""
    path = tmp_path / "bars.csv"
    path.write_text(BARS.format(bad=bad))
    with pytest.raises(DataError, match=f"bars.csv:3: {detail}"):
        load_table(path, ["open", "high", "low", "close"])
    table = load_table(path, ["open", "high", "low", "close"], skip_bad_rows=True)
    assert len(table.ts) == 2 and table.skipped == {"inconsistent bar": 1}
    assert len(load_table(path, ["close"]).ts) == 3  # a run that reads no bar range does not judge it


@pytest.mark.parametrize("column, value, detail", [("Volume", "-5", "`Volume` is -5; volume must be 0 or more"),
                                                    ("Qty", "0", "`Qty` is 0; a trade size must be above 0")])
def test_a_size_the_live_feed_refuses_is_a_bad_row(tmp_path, column, value, detail):
    """The backtest trades what live would: a size the live feed refuses is a bad row."""
    path = tmp_path / "sizes.csv"
    path.write_text(f"Date,Close,{column}\n2024-01-02,10,5\n2024-01-03,11,{value}\n2024-01-04,12,5\n")
    wanted = ["close", column.lower()]
    with pytest.raises(DataError, match=f"sizes.csv:3: {detail}"):
        load_table(path, wanted)
    assert load_table(path, wanted, skip_bad_rows=True).skipped == {"bad size": 1}


def test_market_faults_are_the_rules_of_a_row_wherever_the_rows_come_from():
    """One rule set for a file's rows (`load_table`) and for events given as arrays
    (`policyc.gym.check_events`): each rule names the rows that break it, in order."""
    nan, inf = np.nan, np.inf
    columns = {"price": np.array([10.0, 0.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]),
               "high": np.array([11.0, 11.0, 11.0, 11.0, 9.0, 11.0, 11.0, 11.0]),
               "low": np.array([9.0, 9.0, 9.0, 9.0, 10.0, 9.0, 9.0, 9.0]),
               "open": np.array([10.0, 10.0, 10.0, 10.0, 9.5, 12.0, 10.0, 10.0]),
               "qty": np.array([1.0, 1.0, 0.0, nan, 1.0, 1.0, 1.0, 1.0]),
               "volume": np.array([0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
               "bid": np.array([9.9, 9.9, 9.9, 9.9, 9.9, 9.9, 10.2, 9.9]),
               "ask": np.array([10.1, 10.1, 10.1, 10.1, 10.1, 10.1, 10.1, 10.1]),
               "score": np.array([nan, 0.5, 2e15, 0.0, 0.0, 0.0, 0.0, -inf])}
    found = [(kind, rows.tolist(), text(rows[0]) if len(rows) and callable(text) else text)
             for rows, kind, text in market_faults(columns, labels={"qty": "Qty"})]
    assert [f for f in found if f[1]] == [
        ("non-positive, NaN or infinite price", [1], "`price` is 0; prices must be positive and finite"),
        ("bad size", [2, 3], "`Qty` is 0; a trade size must be above 0"),
        ("bad size", [2], "`volume` is -1; volume must be 0 or more"),
        ("value too large", [2, 7], "`score` is 2e+15; values must be at most 1e+15 in magnitude"),
        ("crossed quote", [6], "`bid` 10.2 is above `ask` 10.1: a crossed quote"),
        ("inconsistent bar", [4], "`high` 9 is below `low` 10"),
        ("inconsistent bar", [4, 5], "`open` 9.5 is outside the bar's low 10 and high 9")]
    # an open read from another column is not held to the bar; optional columns break no
    # rule, but lose what is no usable price, and a crossed quote, to NaN
    quote = {"bid": np.array([9.9, 0.0, 10.2, inf]), "ask": np.array([10.1, 10.1, 10.1, 10.1]),
             "high": np.array([11.0, 11.0, 11.0, 11.0]), "low": np.array([9.0, 9.0, 9.0, 9.0]),
             "open": np.array([12.0, 10.0, 10.0, 10.0])}
    assert not any(len(rows) for rows, _, _ in market_faults(quote, ("bid", "ask"), stand_ins=("open",)))
    np.testing.assert_array_equal(quote["bid"], [9.9, nan, nan, nan])
    np.testing.assert_array_equal(quote["ask"], [10.1, 10.1, nan, 10.1])
