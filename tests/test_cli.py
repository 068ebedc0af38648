"""The command line as a trader uses it: exit codes, outputs, artifacts."""
import json
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
                     "run, replay-feed, paper-venue"),
    (["backtest", EMA, "--data", ORCL, "--report-html", "x.html"],
     "unknown option `--report-html`; did you mean `--report`?"),
    (["backtest", EMA, "--data-file", ORCL], "unknown option `--data-file`; did you mean `--data`?"),
    (["backtest", EMA, f"--data-file={ORCL}"], "unknown option `--data-file`; did you mean `--data`?"),
    (["sweep", EMA, "--data", ORCL, "--skip-bad-lines", "-p", "fast=5,6"],
     "unknown option `--skip-bad-lines`; did you mean `--skip-bad-rows`?"),
    (["validate", EMA, "--zzz"], "unknown option `--zzz`; see `policyc validate --help`"),
    (["--verbose", "validate", EMA], "unknown option `--verbose`; did you mean `--version`?"),
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
     "--token-file"),
])
def test_a_missing_file_is_the_same_usage_error_for_every_option(capsys, tmp_path, argv, option):
    missing = tmp_path / "missing.txt"
    line = usage_error(capsys, *(str(a).format(missing=missing) for a in argv))
    assert line == f"policyc: error: argument {option}: no such file: {missing}"
