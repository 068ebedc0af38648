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
from policyc.compiler.frontend import check_text, diagnose
from policyc.dsl.diagnostics import CODES, PolicyError
from policyc.dsl.document import ACCOUNT_KEYS, QUANTITY_KEYS, RISK_KEYS
from policyc.dsl.source import SourceFile, _yaml_help

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


def diagnose_text(text: str, params: dict | None = None):
    """Like `diagnose`, for a policy given as text."""
    try:
        result = check_text(text, params)
    except PolicyError as exc:
        return None, exc.diagnostics
    return result, result.warnings


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


# --------------------------------------------------------------------------- YAML errors
INDENT_HELP = ("check the indentation: the keys of one mapping, and the `- ` items of one list, must start in the "
               "same column")
ANCHOR_HELP = ("`&` starts a YAML anchor and `*` an alias, which a policy does not need: put a value that starts "
               "with `&` or `*` in quotes")
DIRECTIVE_HELP = "a line starting with `%` is a YAML directive, which a policy does not need: remove it"
TAG_HELP = "`!` starts a YAML tag, which a policy does not need: put a value that starts with `!` in quotes"
BLOCK_HELP = "`|` and `>` start a block of text on the next lines: put a value that starts with `|` or `>` in quotes"
ESCAPE_HELP = "in double quotes `\\` starts an escape: write `\\\\` for a backslash, or use single quotes"
DOCUMENT_HELP = ("the YAML document ended before this line: top-level keys must start in column 1, with no `...` "
                 "or `%` line before them")


@pytest.mark.parametrize("name, message, help_", [
    ("e002_bad_indent.yaml", "YAML: expected <block end>, but found '<block mapping start>'", INDENT_HELP),
    ("e002_over_indented_key.yaml", "YAML: mapping values are not allowed here",
     "check the indentation: this line is indented deeper than the key above, so YAML reads it as part of "
     "that key's value"),
    ("e002_indented_first_key.yaml", "YAML: expected '<document start>', but found '<block mapping start>'",
     DOCUMENT_HELP),
    ("e002_missing_colon.yaml", "YAML: could not find expected ':'",
     "line 4 is read as a key but has no `:` after it: add the `:`, or indent the line if it continues the "
     "value above"),
    ("e002_tab_indent.yaml", "YAML: found character '\\t' that cannot start any token",
     "replace the tab with spaces: YAML indentation must use spaces, not tabs"),
    ("e002_colon_in_value.yaml", "YAML: mapping values are not allowed here", "a value containing `: ` must be quoted"),
    ("e002_control_character.yaml", "YAML: character 0x07 is not allowed in a policy file",
     "remove the control character"),
    ("e002_unclosed_flow.yaml", "YAML: expected ',' or ']', but got ':'",
     "the `[` on line 4 is not closed: end the list with `]` and separate items with `,`"),
    ("e002_unclosed_brace.yaml", "YAML: expected ',' or '}', but got ':'",
     "the `{` on line 12 is not closed: end it with `}` and separate entries with `,`"),
    ("e002_unclosed_quote.yaml", "YAML: found unexpected end of stream", "the quote opened on line 4 is never closed"),
    ("e002_stray_bracket.yaml", "YAML: expected <block end>, but found ']'",
     "`]` closes no open bracket: remove it, or put the value in quotes"),
    ("e002_inline_list_item.yaml", "YAML: sequence entries are not allowed here",
     "a `- ` list item must start its own line, indented under its key"),
    ("e002_question_after_value.yaml", "YAML: mapping keys are not allowed here",
     "`?` cannot follow a value on its line: put the whole value in quotes"),
    ("e002_bad_escape.yaml", "YAML: found unknown escape character 'd'", ESCAPE_HELP),
    ("e002_value_starts_with_at.yaml", "YAML: found character '@' that cannot start any token",
     "a YAML value cannot start with `@`: put the value in quotes"),
    ("e002_undefined_alias.yaml", "YAML: found undefined alias '2'", ANCHOR_HELP),
    ("e002_pipe_abs.yaml", "YAML: expected chomping or indentation indicators, but found 'c'", BLOCK_HELP),
    ("e002_tag.yaml", "YAML: expected '>', but found ' '", TAG_HELP),
    ("e002_second_document.yaml", "YAML: expected a single document in the stream",
     "a policy file holds one YAML document: remove the `---` line"),
    ("e002_directive.yaml", "YAML: found incompatible YAML document (version 1.* is required)", DIRECTIVE_HELP),
])
def test_yaml_error_corpus_has_help(name, message, help_, run_cli):
    _, diags = diagnose(BROKEN / name)
    assert [(d.message, d.help) for d in diags] == [(message, help_)]
    _, _, err = run_cli("validate", BROKEN / name)
    assert f"error[E002]: {message}\n" in err and err.endswith(f"  = help: {help_}\n")


# One sample of every error PyYAML's reader, scanner, parser and composer raise that the
# corpus above does not show.
@pytest.mark.parametrize("text, line, column, message, help_", [
    ("a: 1\nb:\t2\n", 2, 3, "YAML: found character '\\t' that cannot start any token",
     "replace the tab with spaces: YAML indentation must use spaces, not tabs"),
    ("a: `x`\n", 1, 4, "YAML: found character '`' that cannot start any token",
     "a YAML value cannot start with `` ` ``: put the value in quotes"),
    ("a: %x\n", 1, 4, "YAML: found character '%' that cannot start any token",
     "a YAML value cannot start with `%`: put the value in quotes"),
    ("a:\n  - b: 1\n    c: 2\n    - d\n", 4, 5, "YAML: expected <block end>, but found '-'", INDENT_HELP),
    ("a:\n  - b\n c\n", 3, 2, "YAML: expected <block end>, but found '<scalar>'", INDENT_HELP),
    ("a: b:\n", 1, 5, "YAML: mapping values are not allowed here", "a value containing `: ` must be quoted"),
    ("a: x\nb\nc: 1\n", 3, 1, "YAML: could not find expected ':'",
     "line 2 is read as a key but has no `:` after it: add the `:`, or indent the line if it continues the value "
     "above"),
    ('a: "x\\x4"\n', 1, 8, "YAML: expected escape sequence of 2 hexadecimal numbers, but found '\"'", ESCAPE_HELP),
    ("a: 'x\n---\n'\n", 2, 1, "YAML: found unexpected document separator",
     "the quote opened on line 1 is never closed"),
    ("a: [b, }]\n", 1, 8, "YAML: expected the node content, but found '}'",
     "`}` closes no open bracket: remove it, or put the value in quotes"),
    ("a: ,\n", 1, 4, "YAML: expected the node content, but found ','",
     "a value is missing before this `,`: put a value that contains `,` in quotes"),
    ("a: [- b]\n", 1, 5, "YAML: expected the node content, but found '-'",
     "put a value that starts with `-` in quotes"),
    ("...\n", 1, 1, "YAML: expected the node content, but found '<document end>'",
     "a `...` line ends the YAML document: remove it"),
    ("a: !t [\n", 2, 1, "YAML: expected the node content, but found '<stream end>'",
     "the file ends where a value is expected"),
    ("a: 1\n... b\n", 2, 5, "YAML: expected '<document start>', but found '<scalar>'", DOCUMENT_HELP),
    ("a: & b\n", 1, 5, "YAML: expected alphabetic or numeric character, but found ' '", ANCHOR_HELP),
    ("a: * b\n", 1, 5, "YAML: expected alphabetic or numeric character, but found ' '", ANCHOR_HELP),
    ("a: &x 1\nb: &x 2\n", 2, 4, "YAML: found duplicate anchor 'x'", ANCHOR_HELP),
    ("a: !e!x b\n", 1, 4, "YAML: found undefined tag handle '!e!'", TAG_HELP),
    ("a: !x%zz b\n", 1, 7, "YAML: expected URI escape sequence of 2 hexadecimal numbers, but found 'z'", TAG_HELP),
    ("a: |0\n  b\n", 1, 5, "YAML: expected indentation indicator in the range 1-9, but found 0", BLOCK_HELP),
    ("a: > b\n", 1, 6, "YAML: expected a comment or a line break, but found 'b'", BLOCK_HELP),
    ("%YAML 1.1\n%YAML 1.1\n---\na: 1\n", 2, 1, "YAML: found duplicate YAML directive", DIRECTIVE_HELP),
    ("%TAG ! a\n%TAG ! b\n---\na: 1\n", 2, 1, "YAML: duplicate tag handle '!'", DIRECTIVE_HELP),
    ("%YAML x\n---\na: 1\n", 1, 7, "YAML: expected a digit, but found 'x'", DIRECTIVE_HELP),
    ("%YAML 1.1\na: 1\n", 2, 1, "YAML: expected '<document start>', but found '<scalar>'", DOCUMENT_HELP),
])
def test_every_kind_of_yaml_error_has_help(text, line, column, message, help_):
    _, diags = diagnose_text(text)
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [("E002", line, column, message, help_)]


def test_an_unforeseen_yaml_error_still_has_help():
    """A message this PyYAML does not raise still gets a help line, never raw text alone."""
    exc = yaml.scanner.ScannerError(None, None, "something new", None)
    assert _yaml_help(exc, SourceFile("<policy>", "a: 1\n")) == \
        "check the YAML syntax here; a value with special characters may need quotes"


# --------------------------------------------------------------------------- numbers
TOO_LARGE_HELP = "numbers are 64-bit floats: at most about 1.8e308"
DIGITS = "9" * 400


@pytest.mark.parametrize("old, new, line, column, shown", [
    ("  n: 10\n", f"  n: {DIGITS}\n", 5, 6, "`999999999999...` (400 characters)"),          # YAML int
    ("  n: 10\n", f"  n: -{DIGITS}\n", 5, 6, "`-99999999999...` (401 characters)"),
    ("  n: 10\n", "  n: 1.0e+400\n", 5, 6, "`1.0e+400`"),                                   # YAML float
    ("  n: 10\n", "  n: 1e400\n", 5, 6, "`1e400`"),                                         # expression
    ("  n: 10\n", f"  n: {DIGITS}%\n", 5, 6, "`999999999999...` (401 characters)"),
    ("sma(close, n)", "sma(close, 1e400)", 7, 17, "`1e400`"),                               # window
    ("sma(close, n)", "close[1e400]", 7, 12, "`1e400`"),                                     # lookback
    ("sma(close, n)", f"change(close, {DIGITS})", 7, 20, "`999999999999...` (400 characters)"),  # lag
    ("close > m", "close > 1e400 * m", 9, 19, "`1e400`"),                                   # expression
    ("target: 1", f"target: {DIGITS}", 10, 13, "`999999999999...` (400 characters)"),
    ("max_position: 10", "max_position: 1e400", 12, 17, "`1e400`"),                         # risk
    ("max_position: 10", f"max_position: 2 * {DIGITS}", 12, 21, "`999999999999...` (400 characters)"),
    ("max_position: 10", f"stale_after: {DIGITS}s", 12, 16, "`999999999999...` (401 characters)"),
    ("max_position: 10\n", "max_position: 10\naccount:\n  initial_equity: 1e400\n", 14, 19, "`1e400`"),
])
def test_number_beyond_float64_is_located_error(old, new, line, column, shown):
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace(old, new, 1))
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [("E007", line, column, f"the number {shown} is too large", TOO_LARGE_HELP)]


@pytest.mark.parametrize("value, message, help_", [
    ("1e400", "param `n`: the number `1e400` is too large", TOO_LARGE_HELP),
    (DIGITS, "param `n`: the number `999999999999...` (400 characters) is too large", TOO_LARGE_HELP),
    (10 ** 400, "param `n`: the number `100000000000...` (401 characters) is too large", TOO_LARGE_HELP),
    ("inf", "param `n` must be a finite number, not `inf`", None),
    (float("inf"), "param `n` must be a finite number, not `inf`", None),
    ("nan", "param `n` must be a finite number, not `nan`", None),
])
def test_param_override_beyond_float64_is_e301(value, message, help_):
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK), {"n": value})
    assert [(d.code, d.span.file, d.message, d.help) for d in diags] == [("E301", "<command line>", message, help_)]


def test_param_override_beyond_float64_on_the_command_line(tmp_path, run_cli):
    path = write(tmp_path, GOOD.format(extra="", risk=RISK))
    code, out, err = run_cli("validate", path, "-p", "n=1e400")
    assert code == 1 and "Traceback" not in out + err
    assert err == ("<command line>:1:1: error[E301]: param `n`: the number `1e400` is too large\n"
                   f"  = help: {TOO_LARGE_HELP}\n")


def test_infinite_param_default_is_not_called_too_large():
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace("  n: 10\n", "  n: .inf\n"))
    assert [(d.code, d.message, d.help) for d in diags] == [("E007", "param `n` must be a finite number, not inf", None)]


def test_volatility_window_of_two_is_accepted():
    """docs/language.md: `volatility_window` is a whole number 2..100,000."""
    result, diags = diagnose_text(GOOD.format(extra="", risk=RISK + "  max_volatility: 2%\n  volatility_window: 2\n"))
    assert result is not None and diags == []


# --------------------------------------------------------------------------- durations
DURATION_MESSAGE = "a duration is only allowed as a risk value such as `stale_after`"


@pytest.mark.parametrize("old, new, line, column, seconds", [
    ("sma(close, n)", "sma(close, 5m)", 7, 17, "300"),          # window
    ("sma(close, n)", "close[5m]", 7, 12, "300"),                # lookback
    ("sma(close, n)", "change(close, 2s)", 7, 20, "2"),         # lag
    ("sma(close, n)", "returns(close, 500ms)", 7, 21, "0.5"),
    ("close > m", "bars_since(close > m) > 5m", 9, 35, "300"),  # the example of docs/language.md
    ("  n: 10\n", "  n: 5m\n", 5, 6, "300"),                    # param
    ("  n: 10\n", "  n: -1h\n", 5, 7, "3600"),
])
def test_duration_where_a_number_is_expected(old, new, line, column, seconds):
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace(old, new, 1))
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [("E103", line, column, DURATION_MESSAGE, f"write the number of seconds, {seconds}, if you meant a number")]


def test_duration_as_account_value():
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK + "account:\n  fees_bps: 5m\n"))
    assert [(d.code, d.span.line, d.span.column, d.message) for d in diags] == \
        [("E103", 14, 13, "`account.fees_bps` is not a duration; give a number")]


# --------------------------------------------------------------------------- percentages
@pytest.mark.parametrize("section, key, value, message, help_", [
    ("risk", "max_position", "50%", "`max_position: 50%` is 0.5: `max_position` is measured in units, not as a fraction",
     "`%` divides by 100; write the number of units"),
    ("risk", "max_order_qty", "20%", "`max_order_qty: 20%` is 0.2: `max_order_qty` is measured in units, not as a "
     "fraction", "`%` divides by 100; write the number of units"),
    ("risk", "min_order_qty", "1%", "`min_order_qty: 1%` is 0.01: `min_order_qty` is measured in units, not as a "
     "fraction", "`%` divides by 100; write the number of units"),
    ("risk", "lot_size", "10%", "`lot_size: 10%` is 0.1: `lot_size` is measured in units, not as a fraction",
     "`%` divides by 100; write the number of units"),
    ("risk", "max_position_notional", "50%", "`max_position_notional: 50%` is 0.5: `max_position_notional` is "
     "measured in currency units, not as a fraction", "`%` divides by 100; write the number of currency units"),
    ("risk", "max_gross_exposure", "150%", "`max_gross_exposure: 150%` is 1.5: `max_gross_exposure` is measured in "
     "currency units, not as a fraction", "`%` divides by 100; write the number of currency units"),
    ("risk", "max_order_notional", "5%", "`max_order_notional: 5%` is 0.05: `max_order_notional` is measured in "
     "currency units, not as a fraction", "`%` divides by 100; write the number of currency units"),
    ("risk", "max_orders_per_day", "100%", "`max_orders_per_day: 100%` is 1: `max_orders_per_day` is measured in "
     "orders, not as a fraction", "`%` divides by 100; write the number of orders"),
    ("risk", "max_orders_per_second", "50%", "`max_orders_per_second: 50%` is 0.5: `max_orders_per_second` is "
     "measured in orders per second, not as a fraction", "`%` divides by 100; write the number of orders per second"),
    ("risk", "volatility_window", "300%", "`volatility_window: 300%` is 3: `volatility_window` is measured in "
     "events, not as a fraction", "`%` divides by 100; write the number of events"),
    ("account", "initial_equity", "50%", "`initial_equity: 50%` is 0.5: `initial_equity` is measured in currency "
     "units, not as a fraction", "`%` divides by 100; write the number of currency units"),
    ("account", "fees_bps", "1%", "`fees_bps: 1%` is 0.01: `fees_bps` is measured in basis points, not as a "
     "fraction", "`%` divides by 100; write the number of basis points"),
    ("account", "slippage_bps", "2%", "`slippage_bps: 2%` is 0.02: `slippage_bps` is measured in basis points, not "
     "as a fraction", "`%` divides by 100; write the number of basis points"),
])
def test_percentage_on_a_quantity_warns_w004(tmp_path, run_cli, section, key, value, message, help_):
    risk = f"risk:\n  {key}: {value}\n" if section == "risk" else f"{RISK}account:\n  {key}: {value}\n"
    if key == "volatility_window":
        risk += "  max_volatility: 2%\n"
    path = write(tmp_path, GOOD.format(extra="", risk=risk))
    result, diags = diagnose(path)
    assert result is not None
    assert [(d.code, d.severity, d.message, d.help) for d in diags] == [("W004", "warning", message, help_)]
    code, out, err = run_cli("validate", path)
    assert code == 0 and f"ok {path}" in out and f"warning[W004]: {message}\n" in err


def test_every_quantity_key_is_covered_by_w004():
    fractions = {k for k, kind in RISK_KEYS.items() if kind in ("fraction", "bool", "duration")} | {"margin_rate"}
    assert set(QUANTITY_KEYS) == (set(RISK_KEYS) | set(ACCOUNT_KEYS)) - fractions


@pytest.mark.parametrize("limit", ["stop_loss: 3%", "max_margin_usage: 30%", "max_position: 10% * 1000"])
def test_percentage_on_a_fraction_or_in_arithmetic_does_not_warn(limit):
    result, diags = diagnose_text(GOOD.format(extra="", risk=f"risk:\n  {limit}\n"))
    assert result is not None and diags == []


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
