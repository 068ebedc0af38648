"""The command line as a trader uses it: exit codes, outputs, artifacts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyc.cli import main

ROOT = Path(__file__).resolve().parent.parent
EMA = ROOT / "policies" / "ema_cross.yaml"
ORCL = ROOT / "data" / "orcl-1995-2014.csv"


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_hash_prints_the_policy_hash_alone(capsys):
    code, out, _ = run(capsys, "hash", str(EMA))
    assert code == 0
    assert len(out.strip()) == 64 and all(c in "0123456789abcdef" for c in out.strip())
    code, out2, _ = run(capsys, "validate", str(EMA))
    assert code == 0 and out2.strip() == f"ok {EMA} {out.strip()}"


def test_param_override_changes_the_hash(capsys):
    _, base, _ = run(capsys, "hash", str(EMA))
    _, changed, _ = run(capsys, "hash", str(EMA), "-p", "fast=10")
    assert base != changed


@pytest.mark.parametrize("param, message", [
    ("fast=abc", "must be a number"),
    ("fats=10", "did you mean `fast`"),
    ("fast=0", "window of `ema` is 0"),
    ("fast=1e12", "must be an integer from 1"),
])
def test_bad_param_overrides_are_diagnostics(capsys, param, message):
    code, out, err = run(capsys, "hash", str(EMA), "-p", param)
    assert code == 1
    assert message in err
    assert "Traceback" not in err + out


def test_usage_errors_exit_2(capsys, tmp_path):
    assert run(capsys, "validate", str(tmp_path / "missing.yaml"))[0] == 2
    assert run(capsys, "validate", "--bogus", str(EMA))[0] == 2
    assert run(capsys, "hash", str(EMA), "-p", "no_equals_sign")[0] == 2
    assert run(capsys)[0] == 2


def test_compile_writes_manifest_and_kernel(capsys, tmp_path):
    out_dir = tmp_path / "artifact"
    code, out, _ = run(capsys, "compile", str(EMA), "-p", "fast=10", "-o", str(out_dir))
    assert code == 0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    for key in ("policy", "version", "policy_hash", "build_hash", "params", "instruments", "market_fields",
                "compiler", "toolchain", "created_at"):
        assert key in manifest
    assert manifest["params"]["fast"] == 10
    assert manifest["market_fields"] == ["price", "close"]
    assert set(manifest["toolchain"]) >= {"numba", "llvmlite", "numpy"}
    assert manifest["policy_hash"] in out and manifest["build_hash"] in out
    kernel = (out_dir / "kernel.py").read_text()
    assert "@njit(cache=True" in kernel and "def run(" in kernel
    compile(kernel, "kernel.py", "exec")  # the artifact is real Python source
    code, out, _ = run(capsys, "compile", str(EMA), "-o", str(out_dir), "--format", "json")
    assert code == 0 and json.loads(out)["params"]["fast"] == 12


def test_explain_shows_features_rules_and_risk(capsys):
    code, out, _ = run(capsys, "explain", str(EMA))
    assert code == 0
    for text in ("fast_ma", "state", "crosses_above", "max_position 500", "stop_loss 3%", "kill switch"):
        assert text in out


def test_validate_does_not_import_numba():
    code = ("import sys; from policyc.cli import main; rc = main(['validate', %r]); "
            "sys.exit(10 if 'numba' in sys.modules else rc)" % str(EMA))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_console_script_runs():
    exe = Path(sys.executable).parent / "policyc"
    result = subprocess.run([str(exe), "validate", str(EMA)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ok ")


@pytest.mark.parametrize("args", [
    ["run", "policies/ema_cross.yaml", "--feed", "notaurl", "--venue", "ws://127.0.0.1:9"],
    ["run", "policies/ema_cross.yaml", "--feed", "ws://127.0.0.1:9", "--venue", "http://127.0.0.1:9"],
    ["paper-venue", "--listen", "127.0.0.1:9", "--feed", "127.0.0.1:9"],
])
def test_a_url_that_is_not_a_websocket_url_is_a_usage_error(args):
    out = subprocess.run([sys.executable, "-m", "policyc.cli", *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "expected a ws:// or wss:// URL" in out.stderr and "Traceback" not in out.stderr


def test_version_prints_the_package_and_the_toolchain_that_enters_build_hash(capsys):
    import platform
    from importlib.metadata import version

    from policyc import __version__
    from policyc.compiler.hashing import COMPILER_VERSION

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.splitlines() == [
        f"policyc {__version__}",
        f"build_hash toolchain: compiler {COMPILER_VERSION}, python {platform.python_version()}, "
        f"numba {version('numba')}, llvmlite {version('llvmlite')}, numpy {version('numpy')}"]


def test_version_does_not_import_numba():
    code = ("import sys; from policyc.cli import main; rc = main(['--version']); "
            "sys.exit(10 if 'numba' in sys.modules else rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# ---- command-line mistakes get a fix: the last line of stderr, exactly, and exit 2
def usage_error(capsys, *argv) -> str:
    code, out, err = run(capsys, *map(str, argv))
    assert code == 2 and "Traceback" not in out + err, err
    return err.splitlines()[-1]


@pytest.mark.parametrize("argv, line", [
    (["bactest", EMA], "unknown command `bactest`; did you mean `backtest`?"),
    (["frobnicate"], "unknown command `frobnicate`; choose from validate, compile, hash, explain, backtest, sweep, "
                     "run, replay-feed, paper-venue, replay, audit"),
    (["backtest", EMA, "--data", ORCL, "--report-html", "x.html"],
     "unknown option `--report-html`; did you mean `--report`?"),
    (["backtest", EMA, "--data-file", ORCL], "unknown option `--data-file`; did you mean `--data`?"),
    (["backtest", EMA, f"--data-file={ORCL}"], "unknown option `--data-file`; did you mean `--data`?"),
    (["sweep", EMA, "--data", ORCL, "--skip-bad-lines", "-p", "fast=5,6"],
     "unknown option `--skip-bad-lines`; did you mean `--skip-bad-rows`?"),
    (["validate", EMA, "--zzz"], "unknown option `--zzz`; see `policyc validate --help`"),
    (["--verbose", "validate", EMA], "unknown option `--verbose`; see `policyc --help`"),
    (["hash", EMA, EMA], f"unexpected argument `{EMA}`"),
    (["backtest", EMA, "--data", ORCL, "--fill", "nxt"], "argument --fill: unknown value `nxt`; did you mean `next`?"),
    (["validate", EMA, "--format", "xml"], "argument --format: unknown value `xml`; choose from text, json"),
    (["replay-feed", "--data", ORCL, "--listen", "127.0.0.1:9", "--format", "binanse"],
     "argument --format: unknown value `binanse`; did you mean `binance`?"),
    (["sweep", EMA, "--data", ORCL, "-p", "fast=5,6", "--sort", "sharp"],
     "argument --sort: unknown value `sharp`; did you mean `sharpe`?"),
    (["sweep", EMA, "--data", ORCL, "-p", "fast=5-15"],
     "-p fast=5-15: a range is start:stop:step; did you mean `5:15:1`?"),
    (["sweep", EMA, "--data", ORCL, "-p", "fast=5:15"],
     "-p fast=5:15: a range is start:stop:step; did you mean `5:15:1`?"),
])
def test_a_mistake_names_the_wrong_word_and_the_fix(capsys, argv, line):
    assert usage_error(capsys, *argv) == f"policyc: error: {line}"


def test_a_mistake_in_a_command_shows_that_commands_usage(capsys):
    _, _, err = run(capsys, "backtest", str(EMA), "--data", str(ORCL), "--report-html", "x.html")
    assert err.startswith("usage: policyc backtest ")
    _, _, err = run(capsys, "sweep", str(EMA), "--data", str(ORCL), "-p", "fast=5-15")  # found after parsing
    assert err.startswith("usage: policyc sweep ")


@pytest.mark.parametrize("argv, option", [
    (["validate", EMA, "{missing}"], "FILE"),
    (["hash", "{missing}"], "FILE"),
    (["backtest", "{missing}", "--data", ORCL], "FILE"),
    (["backtest", EMA, "--data", "{missing}"], "--data"),
    (["backtest", EMA, "--data", "ORCL={missing}"], "--data"),
    (["sweep", EMA, "--data", "{missing}", "-p", "fast=5,6"], "--data"),
    (["replay-feed", "--data", "{missing}", "--listen", "127.0.0.1:9"], "--data"),
    (["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--token-file", "{missing}"],
     "--model-token-file/--token-file"),
])
def test_a_missing_file_is_the_same_usage_error_for_every_option(capsys, tmp_path, argv, option):
    missing = tmp_path / "missing.txt"
    line = usage_error(capsys, *(str(a).format(missing=missing) for a in argv))
    assert line == f"policyc: error: argument {option}: no such file: {missing}"


# ---- words other tools use, and near misses only when they are near
@pytest.mark.parametrize("argv, line", [
    (["backtest", EMA, "--data", ORCL, "--html", "x.html"], "unknown option `--html`; did you mean `--report`?"),
    (["backtest", EMA, "--data", ORCL, "--start", "2010-01-01"], "unknown option `--start`; did you mean `--from`?"),
    (["backtest", EMA, "--data", ORCL, "--end", "2010-01-01"], "unknown option `--end`; did you mean `--to`?"),
    (["backtest", EMA, "--data", ORCL, "--json"], "unknown option `--json`; did you mean `--format json`?"),
    (["backtest", EMA, "--data", ORCL, "--out", "x.csv"],
     "unknown option `--out`; did you mean `--orders`, `--report` or `--trace`?"),
    (["backtest", EMA, "--data", ORCL, "-o", "x.csv"],
     "unknown option `-o`; did you mean `--orders`, `--report` or `--trace`?"),
    (["sweep", EMA, "--data", ORCL, "-o", "x.csv"], "unknown option `-o`; did you mean `--out`?"),
    (["sweep", EMA, "--data", ORCL, "--workers", "2"], "unknown option `--workers`; did you mean `--jobs`?"),
    (["hash", EMA, "--json"], "unknown option `--json`; see `policyc hash --help`"),  # hash has no --format
    (["validate", EMA, "--verbose"], "unknown option `--verbose`; see `policyc validate --help`"),
    (["validate", EMA, "--hlep"], "unknown option `--hlep`; did you mean `--help`?"),
    (["backtest", EMA, "--data", ORCL, "--date_format", "%Y"], "unknown option `--date_format`; did you mean `--date-format`?"),
    (["--versoin"], "unknown option `--versoin`; did you mean `--version`?"),
    (["-V"], "unknown option `-V`; did you mean `--version`?"),
    (["version"], "unknown command `version`; did you mean `policyc --version`?"),
    (["help"], "unknown command `help`; did you mean `policyc --help`?"),
    (["help", "backtest"], "unknown command `help`; did you mean `policyc backtest --help`?"),
    (["test", EMA], "unknown command `test`; did you mean `backtest`?"),
    (["--data", ORCL, "backtest", EMA], "unknown option `--data` before the command; it is an option of backtest, "
                                        "sweep and replay-feed: write it after the command, as in "
                                        "`policyc backtest --data ...`"),
])
def test_a_synonym_or_a_near_miss_is_suggested_and_nothing_else(capsys, argv, line):
    assert usage_error(capsys, *argv) == f"policyc: error: {line}"


def test_policyc_alone_prints_the_help(capsys):
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: policyc ") and "arguments are required" not in err
    for command in ("validate", "backtest", "sweep", "run", "replay-feed", "paper-venue"):
        assert f"    {command} " in err


# ---- files on the command line that are not files
@pytest.mark.parametrize("argv, line", [
    (["backtest", EMA, "--data", ROOT / "data"],
     f"argument --data: {ROOT / 'data'} is a directory; give one data file in it, such as "
     f"{ROOT / 'data' / 'index-2006-5min.csv'}"),
    (["backtest", EMA, "--data", "/dev/null"], "argument --data: /dev/null is not a regular file"),
    (["backtest", "/dev/null", "--data", ORCL], "argument FILE: /dev/null is not a regular file"),
    (["validate", ROOT / "policies"],
     f"argument FILE: {ROOT / 'policies'} is a directory; to check every policy in it, give {ROOT / 'policies'}/*.yaml"),
    (["hash", ROOT / "policies"],
     f"argument FILE: {ROOT / 'policies'} is a directory; give one policy file in it, such as "
     f"{ROOT / 'policies' / 'ai_guard.yaml'}"),
])
def test_a_directory_or_a_device_is_a_usage_error_with_a_fix(capsys, argv, line):
    assert usage_error(capsys, *argv) == f"policyc: error: {line}"


def test_a_data_file_with_an_equals_sign_in_its_name_is_that_file(capsys, tmp_path):
    path = tmp_path / "run=1.csv"
    path.write_text(ORCL.read_text())
    code, out, err = run(capsys, "backtest", str(EMA), "--data", str(path), "--to", "1995-12-31", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["data"] == [str(path)]
    assert usage_error(capsys, "backtest", EMA, "--data", "=x.csv") == \
        "policyc: error: argument --data: expected SYMBOL=PATH or PATH, got `=x.csv`"


# ---- an option given twice is refused, never the last silently winning
@pytest.mark.parametrize("command", [["validate", EMA], ["compile", EMA], ["hash", EMA], ["explain", EMA],
                                     ["backtest", EMA, "--data", ORCL], ["sweep", EMA, "--data", ORCL],
                                     ["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9"]])
def test_a_param_given_twice_is_a_usage_error_for_every_command(capsys, command):
    assert usage_error(capsys, *command, "-p", "fast=10", "-p", "fast=11") == (
        "policyc: error: argument -p/--param: `fast` is given twice (fast=10, then fast=11); give each param once")


def test_a_data_file_given_twice_is_a_usage_error(capsys, tmp_path):
    assert usage_error(capsys, "backtest", EMA, "--data", f"ORCL={ORCL}", "--data", f"ORCL={ORCL}") == (
        f"policyc: error: argument --data: `ORCL` is given twice (ORCL={ORCL}, then ORCL={ORCL}); "
        "give one file per instrument")
    assert usage_error(capsys, "backtest", EMA, "--data", ORCL, "--data", ORCL) == \
        f"policyc: error: argument --data: {ORCL} is given twice"
    other = tmp_path / "orcl-copy.csv"
    other.write_text("Date,Close\n2024-01-02,1\n")
    assert usage_error(capsys, "replay-feed", "--data", ORCL, "--data", other, "--listen", "127.0.0.1:9") == (
        f"policyc: error: argument --data: {ORCL} and {other} are both served as `ORCL`; name them with SYMBOL=PATH")


# ---- values of options
@pytest.mark.parametrize("argv, line", [
    (["backtest", EMA, "--data", ORCL, "--from", "2012-01-01", "--to", "2010-01-01"],
     "--from 2012-01-01 is after --to 2010-01-01; swap them"),
    (["backtest", EMA, "--data", ORCL, "--from", "20100101"], "argument --from: not a date: `20100101`; write it as 2010-01-01"),
    (["backtest", EMA, "--data", ORCL, "--to", "2010-02-30"], "argument --to: not a real date: `2010-02-30`"),
    (["backtest", EMA, "--data", ORCL, "--fees-bps", "20000"],
     "--fees-bps must be a number 0 or more and at most 10000, not 20000"),
    (["backtest", EMA, "--data", ORCL, "--slippage-bps", "nan"], "--slippage-bps must be a number 0 or more and at most 9999, not nan"),
    (["backtest", EMA, "--data", ORCL, "--initial-equity", "0"], "--initial-equity must be a number above 0, not 0"),
    (["sweep", EMA, "--data", ORCL, "--jobs", "0"], "argument --jobs: must be at least 1, not 0"),
    (["sweep", EMA, "--data", ORCL, "--jobs", "-1"], "argument --jobs: must be at least 1, not -1"),
    (["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--duration", "2x"],
     "argument --duration: expected a duration such as 90 (seconds), 30s, 5m or 1h30m, got `2x`"),
    (["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--duration", "0s"],
     "argument --duration: a duration must be above 0, got `0s`"),
    (["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--max-clock-skew", "0"],
     "argument --max-clock-skew: a duration must be above 0, got `0`"),
    (["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--max-clock-skew", "1e300"],
     "argument --max-clock-skew: a duration must be at most 9,223,372,036 s (292 years), got `1e300`"),
    (["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--max-feed-silence", "300y"],
     "argument --max-feed-silence: expected a duration such as 90 (seconds), 30s, 5m or 1h30m, got `300y`"),
    (["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--duration", "9999999999999h"],
     "argument --duration: a duration must be at most 9,223,372,036 s (292 years), got `9999999999999h`"),
    (["run", EMA, "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--max-feed-silence", "5 sec"],
     "argument --max-feed-silence: expected a duration such as 90 (seconds), 30s, 5m or 1h30m, got `5 sec`"),
    (["replay-feed", "--data", ORCL, "--listen", "127.0.0.1:9", "--rate", "0"], "argument --rate: must be above 0, not 0"),
    (["replay-feed", "--data", ORCL, "--listen", "127.0.0.1:9", "--clients", "0"],
     "argument --clients: must be at least 1, not 0"),
    (["paper-venue", "--listen", "127.0.0.1:9", "--feed", "ws://127.0.0.1:9", "--fees-bps", "10001"],
     "argument --fees-bps: must be a number 0 or more and at most 10000, not 10001"),
    (["paper-venue", "--listen", "127.0.0.1:9", "--feed", "ws://127.0.0.1:9", "--latency", "-5"],
     "argument --latency: must be 0 or more, not -5"),
    (["paper-venue", "--listen", "127.0.0.1:9", "--feed", "ws://127.0.0.1:9", "--multiplier", "CME:ES=50",
      "--multiplier", "CME:NQ=20", "--multiplier", "CME:ES=5"],
     "argument --multiplier: CME:ES given more than once"),
    (["backtest", EMA, "--data", ORCL, "--date-format", "%s"],
     "argument --date-format: for seconds since 1970 write epoch, not `%s` (strptime has no %s)"),
    (["backtest", EMA, "--data", ORCL, "--date-format", "%d/%q"],
     "argument --date-format: `%d/%q` is not a strptime format: 'q' is a bad directive in format '%d/%q'"),
    (["backtest", EMA, "--data", ORCL, "--date-format", "dd.mm.yyyy hh:mm"],
     "argument --date-format: `dd.mm.yyyy hh:mm` is not a strptime format; write it as %d.%m.%Y %H:%M"),
])
def test_an_option_value_out_of_its_range_is_a_usage_error(capsys, argv, line):
    assert usage_error(capsys, *argv) == f"policyc: error: {line}"


@pytest.mark.parametrize("text, seconds", [("2", 2.0), ("2.5", 2.5), ("2s", 2.0), ("500ms", 0.5), ("5m", 300.0),
                                           ("2h", 7200.0), ("1h30m", 5400.0), (" 90 ", 90.0)])
def test_run_duration_takes_a_unit(text, seconds):
    from policyc.cli import build_parser

    args = build_parser().parse_args(["run", str(EMA), "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9",
                                      "--duration", text])
    assert args.duration == seconds


def test_run_passes_its_clock_skew_and_feed_silence_to_the_runtime_and_says_their_defaults(capsys, monkeypatch):
    from policyc.cli import build_parser, main
    from policyc.runtime.live import runner
    from policyc.runtime.orders import MAX_CLOCK_SKEW_S, MAX_FEED_SILENCE_S

    configs = []

    class Made(Exception):
        pass

    def runtime(policy, config):
        configs.append(config)
        raise Made

    monkeypatch.setattr(runner, "LiveRuntime", runtime)
    base = ["run", str(EMA), "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9", "--log", os.devnull]
    assert main(base + ["--max-clock-skew", "250ms", "--max-feed-silence", "1m"]) == 3  # Made: an internal error
    assert main(base) == 3
    assert [(c.max_clock_skew, c.max_feed_silence) for c in configs] == [(0.25, 60.0),
                                                                        (MAX_CLOCK_SKEW_S, MAX_FEED_SILENCE_S)]
    run = build_parser().commands["run"].format_help()
    assert f"(default {MAX_CLOCK_SKEW_S:g}s)" in run and f"(default {MAX_FEED_SILENCE_S:g}s)" in " ".join(run.split())


# ---- output files: parents created, problems found before the run
def test_output_files_in_missing_directories_are_created(capsys, tmp_path):
    outs = {"--orders": tmp_path / "a" / "b" / "orders.csv", "--trace": tmp_path / "a" / "trace.csv",
            "--report": tmp_path / "c" / "report.html"}
    code, out, err = run(capsys, "backtest", str(EMA), "--data", str(ORCL), "--to", "1996-12-31",
                         *(str(x) for pair in outs.items() for x in pair))
    assert code == 0, err
    assert all(path.is_file() and path.stat().st_size > 0 for path in outs.values())
    sweep_out = tmp_path / "d" / "sweep.csv"
    code, _, err = run(capsys, "sweep", str(EMA), "--data", str(ORCL), "--to", "1996-12-31", "-p", "fast=5,10",
                       "--jobs", "1", "--out", str(sweep_out))
    assert code == 0 and sweep_out.is_file(), err


def test_an_output_file_that_cannot_be_written_is_refused_before_the_run(capsys, tmp_path):
    assert usage_error(capsys, "backtest", EMA, "--data", ORCL, "--orders", tmp_path) == \
        f"policyc: error: argument --orders: {tmp_path} is a directory; name a file in it"
    assert usage_error(capsys, "backtest", EMA, "--data", ORCL, "--report", f"{ORCL}/r.html") == \
        f"policyc: error: argument --report: cannot write {ORCL}/r.html: {ORCL} is a file, not a directory"
    assert usage_error(capsys, "sweep", EMA, "--data", ORCL, "--out", f"{ORCL}/x/s.csv") == \
        f"policyc: error: argument --out: cannot write {ORCL}/x/s.csv: {ORCL} is a file, not a directory"
    assert usage_error(capsys, "backtest", EMA, "--data", ORCL, "--orders", ORCL) == \
        f"policyc: error: argument --orders: {ORCL} is a --data file; writing it would overwrite it"
    same = tmp_path / "x.csv"
    assert usage_error(capsys, "backtest", EMA, "--data", ORCL, "--orders", same, "--trace", same) == \
        f"policyc: error: --orders and --trace name the same file: {same}"
    assert usage_error(capsys, "compile", EMA, "-o", ORCL) == f"policyc: error: argument -o/--out: {ORCL} is a file, not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_directory_without_write_permission_is_refused_before_the_run(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert usage_error(capsys, "backtest", EMA, "--data", ORCL, "--orders", locked / "new" / "o.csv") == \
        f"policyc: error: argument --orders: cannot write {locked}/new/o.csv: {locked} is not writable"


# ---- sweep: processes and param values
def test_sweep_uses_no_more_processes_than_combinations_and_writes_whole_numbers_as_integers(capsys, tmp_path):
    out = tmp_path / "s.csv"
    code, _, err = run(capsys, "sweep", str(EMA), "--data", str(ORCL), "--to", "1996-12-31", "-p", "fast=5,10",
                       "--jobs", "64", "--out", str(out))
    assert code == 0, err
    assert err.splitlines()[-1].endswith("on 2 process(es)")
    assert sorted(r.split(",")[0] for r in out.read_text().splitlines()[1:]) == ["10", "5"]


# ---- --format json: data errors are JSON on stdout too
def test_a_data_error_with_format_json_is_json_on_stdout(capsys, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("Date,Close\n2024-01-02,10\n2024-01-03,abc\n2024-01-04,12\n")
    code, out, err = run(capsys, "backtest", str(EMA), "--data", str(path), "--format", "json")
    assert code == 1 and err == ""
    assert json.loads(out) == [{"file": str(path), "line": 3, "column": None, "end_line": None, "end_column": None,
                                "severity": "error", "code": None, "message": "`Close` is not a number: `abc`",
                                "help": None}]
    code, out, _ = run(capsys, "backtest", str(EMA), "--data", str(ORCL), "--from", "2030-01-01", "--format", "json")
    assert code == 1
    assert json.loads(out)[0]["line"] is None and json.loads(out)[0]["message"] == (
        "no rows from 2030-01-01 on (--from/--to); the file runs from 1995-01-03 to 2014-12-31")


@pytest.mark.parametrize("value, message", [
    ("latency=-5ms", "latency must not be negative: latency=-5ms"),
    ("latency=5", "unknown value `latency=5`"),
    ("latency=99999d", "latency 99999d is too long"),
    ("nextopen", "did you mean `next-open`"),
])
def test_a_bad_fill_model_is_a_usage_error_that_says_why(capsys, value, message):
    code, _, err = run(capsys, "backtest", str(EMA), "--data", str(ORCL),
                       "--fill", value)
    assert code == 2 and message in err


def test_the_paper_venue_takes_the_backtests_fill_models(capsys):
    """`paper-venue --fill` reads a model as `backtest --fill` does, errors included."""
    code, _, err = run(capsys, "paper-venue", "--listen", "127.0.0.1:9", "--feed", "ws://127.0.0.1:1",
                       "--fill", "latency=-1s")
    assert code == 2 and "latency must not be negative" in err
