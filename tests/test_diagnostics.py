"""Diagnostics of `policyc validate` on a corpus of broken policies (tests/broken/).

tests/broken/expected.yaml maps every corpus file to the code, line and column of the
FIRST error (sorted by line, then column) the tool must report. Each file is checked
through the Python API (`diagnose`) and through the CLI (`policyc.cli.main`), in text
and in JSON form.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import policyc.cli as cli_mod
from policyc.compiler.frontend import diagnose
from policyc.dsl.diagnostics import CODES

HERE = Path(__file__).parent
BROKEN = HERE / "broken"
EXPECTED: dict[str, dict] = yaml.safe_load((BROKEN / "expected.yaml").read_text())
JSON_KEYS = {"file", "line", "column", "end_line", "end_column", "severity", "code", "message", "help"}

CASES = [pytest.param(name, id=name) for name in sorted(EXPECTED)]


def first_error(diags):
    errors = [d for d in diags if d.severity == "error"]
    return min(errors, key=lambda d: (d.span.line, d.span.column, d.code)) if errors else None


@pytest.fixture
def run_cli(capsys):
    """Run `policyc ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv):
        capsys.readouterr()
        try:
            code = cli_mod.main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- corpus
def test_corpus_matches_expectations():
    files = {p.name for p in BROKEN.glob("*.yaml") if p.name != "expected.yaml"}
    assert files == set(EXPECTED), "every corpus file needs an entry in expected.yaml and vice versa"
    assert len(files) >= 45
    for name, want in EXPECTED.items():
        assert set(want) == {"code", "line", "column"}, name
        assert want["code"] in CODES, name


def test_corpus_covers_every_file_error_code():
    file_codes = {c for c in CODES if c.startswith("E") and "E001" <= c <= "E210"}
    covered = {e["code"] for name, e in EXPECTED.items()}
    assert file_codes - covered == set()


@pytest.mark.parametrize("name", CASES)
def test_diagnose(name):
    want = EXPECTED[name]
    result, diags = diagnose(BROKEN / name)
    assert result is None
    assert diags, "an invalid policy must produce diagnostics"
    for d in diags:
        assert d.code in CODES and d.severity in ("error", "warning")
        assert d.span.line >= 1 and d.span.column >= 1
        assert (d.span.end_line, d.span.end_column) >= (d.span.line, d.span.column)
        assert d.message and "\n" not in d.message, "a message is one line"
    first = first_error(diags)
    assert (first.code, first.span.line, first.span.column) == (want["code"], want["line"], want["column"]), \
        f"{first.code} {first.span.line}:{first.span.column} {first.message}"


@pytest.mark.parametrize("name", CASES)
def test_cli_text(name, run_cli):
    want = EXPECTED[name]
    path = BROKEN / name
    code, out, err = run_cli("validate", path)
    assert code == 1
    assert "Traceback" not in out + err
    assert f"ok {path}" not in out
    lines = err.split("\n")
    header = f"{path}:{want['line']}:{want['column']}: error[{want['code']}]: "
    assert lines[0].startswith(header), f"first diagnostic is {lines[0]!r}"
    # the source line, then a caret under the offending column
    gutter = f"{want['line']:>4} | "
    source = path.read_bytes().decode("utf-8", "replace").split("\n")[want["line"] - 1].expandtabs(1)
    assert lines[1].startswith(gutter)
    caret = lines[2]
    assert caret.startswith(" " * (len(gutter) - 2) + "| ") and "^" in caret
    if len(source) <= 200:
        assert lines[1].rstrip("\r") == (gutter + source).rstrip("\r")
        assert caret.index("^") == len(gutter) + want["column"] - 1


@pytest.mark.parametrize("name", CASES)
def test_cli_json(name, run_cli):
    want = EXPECTED[name]
    path = BROKEN / name
    code, out, err = run_cli("validate", path, "--format", "json")
    assert code == 1
    data = json.loads(out)
    assert isinstance(data, list) and data
    for item in data:
        assert isinstance(item, dict) and set(item) == JSON_KEYS
        assert item["file"] == str(path)
        assert item["severity"] in ("error", "warning") and item["code"] in CODES
        assert isinstance(item["line"], int) and item["line"] >= 1
        assert isinstance(item["column"], int) and item["column"] >= 1
        assert isinstance(item["message"], str) and item["message"]
        assert item["help"] is None or isinstance(item["help"], str)
    errors = sorted((d for d in data if d["severity"] == "error"), key=lambda d: (d["line"], d["column"], d["code"]))
    assert (errors[0]["code"], errors[0]["line"], errors[0]["column"]) == (want["code"], want["line"], want["column"])


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize("name, code, suggestion", [
    ("e202_misspelled_function.yaml", "E202", "sma"),
    ("e201_misspelled_feature.yaml", "E201", "fast_ma"),
    ("e201_misspelled_param_in_window.yaml", "E201", "n"),
    ("e004_misspelled_top_key.yaml", "E004", "description"),
    ("e004_misspelled_risk_key.yaml", "E004", "max_position"),
    ("e004_account_key.yaml", "E004", "initial_equity"),
    ("e007_custom_bad_action.yaml", "E007", "liquidate"),
])
def test_did_you_mean(name, code, suggestion, run_cli):
    _, diags = diagnose(BROKEN / name)
    helps = [d.help for d in diags if d.code == code]
    assert f"did you mean `{suggestion}`?" in helps
    _, _, err = run_cli("validate", BROKEN / name)
    assert f"= help: did you mean `{suggestion}`?" in err


@pytest.mark.parametrize("name, fragment", [
    ("e101_double_ampersand.yaml", "`and`"),
    ("e101_single_equals.yaml", "`==`"),
    ("e101_chained_comparison.yaml", "cannot be chained"),
    ("e101_uppercase_keyword.yaml", "lower case"),
    ("e101_missing_operator.yaml", "operator is missing"),
    ("e103_number_for_duration.yaml", "5s"),
    ("e204_if_branches.yaml", "both"),
    ("e205_param_named_ema.yaml", "my_ema"),
    ("e208_feature_cycle.yaml", "lookback"),
])
def test_helpful_messages(name, fragment):
    _, diags = diagnose(BROKEN / name)
    first = first_error(diags)
    assert fragment in (first.help or "") + first.message


# --------------------------------------------------------------------------- warnings
GOOD = """\
policy: demo
version: 1
instruments: [ORCL]
params:
  n: 10
features:
  m: sma(close, n)
{extra}signals:
  - when: close > m
    target: 1
{risk}"""
RISK = "risk:\n  max_position: 10\n"


def test_clean_policy_has_no_diagnostics(tmp_path, run_cli):
    path = write(tmp_path, GOOD.format(extra="", risk=RISK))
    result, diags = diagnose(path)
    assert result is not None and diags == []
    code, out, err = run_cli("validate", path)
    assert code == 0 and out.startswith(f"ok {path} ") and err == ""
    assert len(out.split()[-1]) == 64


def test_no_risk_section_warns_w001(tmp_path, run_cli):
    path = write(tmp_path, GOOD.format(extra="", risk=""))
    result, diags = diagnose(path)
    assert result is not None
    assert [d.code for d in diags] == ["W001"] and diags[0].severity == "warning"
    assert diags[0].span.line >= 1 and diags[0].span.column >= 1
    code, out, err = run_cli("validate", path)
    assert code == 0 and f"ok {path}" in out
    assert "warning[W001]" in err
    code, out, _ = run_cli("validate", path, "--format", "json")
    assert code == 0
    assert [d["code"] for d in json.loads(out)] == ["W001"]


def test_unused_feature_warns_w002(tmp_path, run_cli):
    path = write(tmp_path, GOOD.format(extra="", risk=RISK).replace(
        "  m: sma(close, n)\n", "  m: sma(close, n)\n  unused: ema(close, 5)\n"))
    result, diags = diagnose(path)
    assert result is not None
    assert [(d.code, d.span.line, d.span.column) for d in diags] == [("W002", 8, 3)]
    assert "unused" in diags[0].message
    code, out, err = run_cli("validate", path)
    assert code == 0 and f"ok {path}" in out
    assert f"{path}:8:3: warning[W002]" in err


def test_feature_used_only_by_another_feature_is_used(tmp_path):
    path = write(tmp_path, GOOD.format(extra="", risk=RISK).replace(
        "  m: sma(close, n)\n", "  base: ema(close, 5)\n  m: sma(base, n)\n"))
    result, diags = diagnose(path)
    assert result is not None and diags == []


# --------------------------------------------------------------------------- usage
def test_missing_file_is_usage_error(tmp_path, run_cli):
    code, out, err = run_cli("validate", tmp_path / "nope.yaml")
    assert code == 2
    assert "no such file" in err and "Traceback" not in err


def test_unknown_flag_is_usage_error(tmp_path, run_cli):
    path = write(tmp_path, GOOD.format(extra="", risk=RISK))
    code, _, err = run_cli("validate", path, "--frobnicate")
    assert code == 2 and "--frobnicate" in err


@pytest.mark.parametrize("argv", [[], ["validate"], ["frobnicate"], ["validate", "x.yaml", "--format", "xml"]])
def test_bad_command_lines_are_usage_errors(argv, run_cli):
    code, _, err = run_cli(*argv)
    assert code == 2 and "usage:" in err


def test_console_script_usage_error(tmp_path):
    exe = Path(sys.executable).with_name("policyc")
    proc = subprocess.run([str(exe), "validate", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


def test_directory_is_e001(tmp_path, run_cli):
    result, diags = diagnose(tmp_path)
    assert result is None and [d.code for d in diags] == ["E001"]
    code, _, err = run_cli("validate", tmp_path)
    assert code == 1 and "error[E001]" in err


def test_several_files_ok_and_broken(tmp_path, run_cli):
    good = write(tmp_path, GOOD.format(extra="", risk=RISK), "good.yaml")
    bad = BROKEN / "e202_misspelled_function.yaml"
    code, out, err = run_cli("validate", good, bad)
    assert code == 1
    assert f"ok {good} " in out and f"ok {bad}" not in out
    assert f"{bad}:8:6: error[E202]" in err


def test_every_error_is_reported_not_just_the_first(tmp_path):
    path = write(tmp_path, GOOD.format(extra="", risk=RISK).replace("sma(close, n)", "smaa(close, n)")
                 .replace("close > m", "close > mm and vwap > 0"))
    _, diags = diagnose(path)
    assert {d.code for d in diags} == {"E202", "E201"}
    assert len([d for d in diags if d.code == "E201"]) == 2


def test_text_diagnostics_follow_sys_stderr(capsys):
    """Text diagnostics go to the current sys.stderr (capsys, redirect_stderr)."""
    code = cli_mod.main(["validate", str(BROKEN / "e201_unknown_name.yaml")])
    assert code == 1
    assert "error[E201]" in capsys.readouterr().err


# --------------------------------------------------------------------------- known bugs
def test_unexpected_exception_is_internal_error_exit_3(run_cli, monkeypatch):
    """cli.py promises exit 3 for anything unexpected; main() lets the exception escape
    (as a console script: a traceback and exit status 1, the same status as a diagnostic)."""
    import policyc.compiler.frontend as frontend

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(frontend, "diagnose", boom)
    code, _, err = run_cli("validate", BROKEN / "e201_unknown_name.yaml")
    assert code == 3 and "Traceback" not in err


def test_long_feature_chain_does_not_overflow_the_stack(tmp_path):
    """check._Checker.feature_type recurses once per feature: ~200 chained features
    raise RecursionError out of diagnose()."""
    chain = "".join(f"  f{i}: f{i + 1} + 1\n" for i in range(300)) + "  f300: close\n"
    path = write(tmp_path, GOOD.format(extra="", risk=RISK).replace("  m: sma(close, n)\n", chain + "  m: f0\n"))
    result, diags = diagnose(path)
    assert result is not None and not [d for d in diags if d.severity == "error"]


def test_recursive_bool_feature_through_lookback_is_valid(tmp_path):
    """Spec: a cycle through a lookback of 1 or more is fine. A bool feature that reads
    itself (`latch: close > m or latch[1]`) is typed num while in progress -> false E204."""
    path = write(tmp_path, GOOD.format(extra="", risk=RISK).replace(
        "  m: sma(close, n)\n", "  m: sma(close, n)\n  latch: close > m or latch[1]\n").replace("close > m\n", "latch\n"))
    result, diags = diagnose(path)
    assert result is not None, [d.message for d in diags]


@pytest.mark.parametrize("limit", ["stale_after: -2s", "stale_after: 2s + 1s", "max_position: -true",
                                   "max_position: 10 * flag"])
def test_risk_value_is_never_silently_dropped(tmp_path, limit):
    """check._Checker.constant returns None without an error for arithmetic on a bool or a
    duration, so the limit disappears and the policy validates without it."""
    text = GOOD.format(extra="", risk=f"risk:\n  {limit}\n").replace("  n: 10\n", "  n: 10\n  flag: true\n")
    result, diags = diagnose(write(tmp_path, text))
    key = limit.split(":")[0]
    assert result is None or key in result.checked.risk


def test_cr_line_endings_give_the_right_line(tmp_path):
    """PyYAML treats a lone CR (and NEL, U+2028) as a line break; SourceFile counts only
    LF, so every node span of a CR-only file is on line 1."""
    text = GOOD.format(extra="", risk="risk:\n  max_positon: 10\n").replace("\n", "\r")
    path = tmp_path / "cr.yaml"
    path.write_bytes(text.encode())
    _, diags = diagnose(path)
    first = first_error(diags)
    assert (first.code, first.span.line, first.span.column) == ("E004", 12, 3)


def test_tab_indentation_gets_help():
    """source._yaml_help looks for 'tab' but PyYAML says "found character '\\t' ..."."""
    _, diags = diagnose(BROKEN / "e002_tab_indent.yaml")
    assert "tab" in (diags[0].help or "")


def test_feature_value_of_wrong_type_says_expression(tmp_path):
    """A list as a feature value is described as 'must be true or false' (the first
    member of the Scalar union), not as 'must be an expression'."""
    _, diags = diagnose(BROKEN / "e003_feature_list_value.yaml")
    assert "true or false" not in diags[0].message
