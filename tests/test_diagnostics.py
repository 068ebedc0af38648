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
from policyc.dsl.risk_keys import ACCOUNT_KEYS, RISK_KEYS
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


def test_directory_is_e001_and_a_usage_error_on_the_command_line(tmp_path, run_cli):
    """Through the API a directory is a file that cannot be read (E001); on the command
    line it is a mistake in the command, answered with how to name its policies."""
    result, diags = diagnose(tmp_path)
    assert result is None and [d.code for d in diags] == ["E001"]
    code, _, err = run_cli("validate", tmp_path)
    assert code == 2
    assert err.splitlines()[-1] == (f"policyc: error: argument FILE: {tmp_path} is a directory; "
                                    f"to check every policy in it, give {tmp_path}/*.yaml")


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
W004_CASES = [
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
    ("risk", "max_leg_imbalance", "20%", "`max_leg_imbalance: 20%` is 0.2: `max_leg_imbalance` is measured in "
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
]


@pytest.mark.parametrize("section, key, value, message, help_", W004_CASES)
def test_percentage_on_a_quantity_warns_w004(tmp_path, run_cli, section, key, value, message, help_):
    risk = f"risk:\n  {key}: {value}\n" if section == "risk" else f"{RISK}account:\n  {key}: {value}\n"
    if key == "volatility_window":
        risk += "  max_volatility: 2%\n"
    text = GOOD.format(extra="", risk=risk)
    if key == "max_leg_imbalance":  # the key limits the legs of multi-leg rules
        text = text.replace("    target: 1\n", "    legs: {ORCL: 1}\n")
    path = write(tmp_path, text)
    result, diags = diagnose(path)
    assert result is not None
    assert [(d.code, d.severity, d.message, d.help) for d in diags] == [("W004", "warning", message, help_)]
    code, out, err = run_cli("validate", path)
    assert code == 0 and f"ok {path}" in out and f"warning[W004]: {message}\n" in err


def test_every_quantity_key_is_covered_by_w004():
    """Every key measured in units, money, orders, events or basis points has a case above."""
    measured = {(section, name) for section, keys in (("risk", RISK_KEYS), ("account", ACCOUNT_KEYS))
                for name, key in keys.items() if key.kind.measure is not None}
    assert {(section, key) for section, key, *_ in W004_CASES} == measured


@pytest.mark.parametrize("limit", ["stop_loss: 3%", "max_margin_usage: 30%", "max_position: 10% * 1000"])
def test_percentage_on_a_fraction_or_in_arithmetic_does_not_warn(limit):
    result, diags = diagnose_text(GOOD.format(extra="", risk=f"risk:\n  {limit}\n"))
    assert result is not None and diags == []


# --------------------------------------------------------------------------- booleans
BOOLEAN_HELP = "booleans are `true` and `false`, not yes/no or on/off"
BOOL_POLICY = GOOD.format(extra="", risk=RISK + "  long_only: {long_only}\n  custom:\n    - name: brake\n"
                                                "      when: {custom}\n      action: block\n").replace(
    "  n: 10\n", "  n: 10\n  flag: {flag}\n").replace("close > m\n", "close > m and {when}\n")


@pytest.mark.parametrize("word, value", [("true", True), ("True", True), ("TRUE", True), ("false", False),
                                         ("False", False), ("FALSE", False)])
def test_true_and_false_in_any_case_are_booleans_everywhere(word, value):
    """docs/language.md section 1: the same spellings in params, risk keys, `when` and custom rules."""
    text = BOOL_POLICY.format(flag=word, long_only=word, custom=word, when=f"flag == {word}")
    result, diags = diagnose_text(text, {"flag": word})
    assert result is not None and diags == [], [d.message for d in diags]
    assert result.checked.params["flag"] is value
    assert result.checked.risk["long_only"] == float(value)
    assert result.checked.parsed.signals[0].when.right.right.value is value
    assert result.checked.parsed.custom[0].when.value is value


@pytest.mark.parametrize("field, word, line, column, code, message", [
    ("long_only", "yes", 14, 14, "E007", "`long_only` must be true or false, not `yes`"),
    ("long_only", "Off", 14, 14, "E007", "`long_only` must be true or false, not `Off`"),
    ("long_only", "ON", 14, 14, "E007", "`long_only` must be true or false, not `ON`"),
    ("flag", "no", 6, 9, "E007", "param `flag` must be a number or true/false, not `no`"),
    ("flag", "On", 6, 9, "E007", "param `flag` must be a number or true/false, not `On`"),
    ("when", "yes", 10, 25, "E201", "unknown name `yes`"),
    ("custom", "off", 17, 13, "E201", "unknown name `off`"),
])
def test_yaml_1_1_boolean_words_are_refused_everywhere_with_help(field, word, line, column, code, message):
    values = {"flag": "true", "long_only": "true", "custom": "false", "when": "flag"} | {field: word}
    _, diags = diagnose_text(BOOL_POLICY.format(**values))
    fix = "true" if word.lower() in ("yes", "on") else "false"
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [(code, line, column, message, f"write `{fix}`: {BOOLEAN_HELP}")]


def test_yaml_1_1_boolean_word_on_the_command_line_is_e301_with_help():
    text = BOOL_POLICY.format(flag="true", long_only="true", custom="false", when="flag")
    _, diags = diagnose_text(text, {"flag": "yes"})
    assert [(d.code, d.message, d.help) for d in diags] == \
        [("E301", "param `flag` must be true or false, not `yes`", f"write `true`: {BOOLEAN_HELP}")]
    _, diags = diagnose_text(text, {"flag": "1"})
    assert [(d.code, d.message, d.help) for d in diags] == \
        [("E301", "param `flag` must be true or false, not `1`", "write `true` or `false`")]


def test_a_param_named_on_is_a_name_not_a_boolean():
    text = BOOL_POLICY.format(flag="true", long_only="on", custom="on", when="on").replace(
        "  flag: true\n", "  flag: true\n  'on': false\n")
    result, diags = diagnose_text(text)
    assert result is not None and diags == [] and result.checked.risk["long_only"] == 0.0


def test_a_param_named_true_clashes_with_the_boolean():
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace("  n: 10\n", "  n: 10\n  'True': 1\n"))
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [("E205", 6, 3, "param `True` clashes with the boolean `true`",
          "rename the param: expressions read `True` as `true`")]


def test_long_only_given_a_number_says_write_true():
    _, diags = diagnose(BROKEN / "e007_long_only_number.yaml")
    assert [(d.message, d.help) for d in diags] == [("`long_only` must be true or false, not 1", "write `true` or `false`")]


def test_symbols_yaml_reads_as_booleans_or_numbers_are_taken_as_written():
    result, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace("[ORCL]", "[ON, 'NO', 7203, TRUE]"))
    assert result is not None and diags == []
    assert result.checked.instruments == ["ON", "NO", "7203", "TRUE"]


def test_text_field_yaml_reads_as_a_boolean_says_quote_it():
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace("policy: demo", "policy: yes"))
    assert [(d.code, d.message, d.help) for d in diags] == \
        [("E007", "`policy` must be text, not `yes`", 'YAML reads `yes` as true/false: put it in quotes, `"yes"`')]


# --------------------------------------------------------------------------- expression help
@pytest.mark.parametrize("old, new, line, column, message, help_", [
    # `if` inside an operation
    ("target: 1", "target: 1 + if close > m then 2 else 0", 10, 17, "unexpected `if`",
     "an `if` inside an operation needs parentheses: write `1 + (if close > m then 2 else 0)`"),
    ("close > m", "close > m or if n > 1 then true else false", 9, 24, "unexpected `if`",
     "an `if` inside an operation needs parentheses: write `close > m or (if n > 1 then true else false)`"),
    ("target: 1", "target: 1 + if", 10, 17, "unexpected `if`",
     "an `if` inside an operation needs parentheses: write `(if c then a else b)`"),
    ("close > m", "close > m and true == not false", 9, 33, "unexpected `not`",
     "a `not` after an operator needs parentheses: write `close > m and true == (not false)`"),
    ("close > m", "close > m then 1", 9, 21, "unexpected `then`",
     "`then` belongs to `if CONDITION then A else B`, and there is no `if` before it"),
    # functions
    ("sma(close, n)", "ema(close, window=n)", 7, 23, "unexpected character `=`",
     "functions take arguments by position only: write `ema(close, n)`"),
    ("close > m", "clip(close, lo=1, hi = 2) > m", 9, 25, "unexpected character `=`",
     "functions take arguments by position only: write `clip(close, 1, 2) > m`"),
    ("close > m", "close = m", 9, 17, "unexpected character `=`", "use `==` to compare"),
    ("close > m", "close.shift(1) > m", 9, 22, "unexpected `(`",
     "values have no methods: call a function, `f(x)`, or look back with `x[1]`; "
     "`INSTRUMENT.name` reads another instrument's value, as in `ORCL.close`"),
    ("close > m", "close. shift > m", 9, 16, "unexpected character `.`",
     "`INSTRUMENT.name` reads another instrument's value, with no spaces, as in `ORCL.close`; "
     "values have no methods: call a function, `f(x)`, or look back with `x[1]`"),
    # numbers
    ("max_position: 10", "stop_loss: 3 %", 12, 16, "unexpected character `%`", "write `3%`, with no space before `%`"),
    ("close > m", "close % 2 > m", 9, 17, "unexpected character `%`",
     "`%` only ends a percentage, as in `3%`: there is no remainder operator"),
    ("max_position: 10", "stop_loss: 3 percent", 12, 16, "unexpected name `percent`", "write `3%`"),
    ("max_position: 10", "max_position: 100,000", 12, 20, "unexpected `,`",
     "write `100000`: numbers have no thousands separators"),
    ("max_position: 10", "max_position: 1,000,000.5", 12, 18, "unexpected `,`",
     "write `1000000.5`: numbers have no thousands separators"),
    ("target: 1", "target: 2,5", 10, 14, "unexpected `,`", "write `2.5`: the decimal point is `.`"),
    ("close > m", "close > m, close < 1", 9, 20, "unexpected `,`",
     "a `,` only separates the arguments of a call, as in `max(a, b)`"),
    ("max_position: 10", "max_position: 10 000", 12, 20, "unexpected number `000`",
     "if this is one number, write `10000`: numbers have no thousands separators; otherwise an operator is missing"),
    ("max_position: 10", "max_position: 100_000", 12, 20, "unexpected name `_000`",
     "write `100000`: numbers have no `_` separators"),
    ("max_position: 10", "max_position: $100000", 12, 17, "unexpected character `$`",
     "write `100000`: numbers have no currency symbol (`$`)"),
    ("max_position: 10", "max_position: 100000 €", 12, 24, "unexpected character `€`",
     "write `100000`: numbers have no currency symbol (`€`)"),
    ("target: 1", "target: 0x1F", 10, 14, "unexpected name `x1F`", "numbers are decimal: write `31`"),
    ("target: 1", "target: +5", 10, 13, "unexpected `+`", "there is no unary `+`: remove it"),
    ("  n: 10\n", "  n: 1:30\n", 5, 7, "unexpected character `:`",
     "numbers have no `:` (YAML 1.1 reads `1:30` as 90, in base 60): write the number you mean"),
    # durations
    ("max_position: 10", "stale_after: 5 m", 12, 18, "unexpected name `m`", "write `5m`, with no space before the unit"),
    ("max_position: 10", "stale_after: 5min", 12, 17, "unexpected name `min`",
     "write `5m`: the duration units are ms, s, m, h and d"),
    ("max_position: 10", "stale_after: 5 seconds", 12, 18, "unexpected name `seconds`",
     "write `5s`: the duration units are ms, s, m, h and d"),
    # lookalike and other non-ASCII characters
    ("target: 1", "target: −100", 10, 13, "unexpected character `−`",
     "write the ASCII `-` instead of `−` (U+2212 MINUS SIGN)"),
    ("max_position: 10", "stop_loss: ２％", 12, 14, "unexpected character `２`", "write the ASCII `2%` instead of `２％`"),
    ("target: 1", "target: 10 × 2", 10, 16, "unexpected character `×`",
     "write the ASCII `*` instead of `×` (U+00D7 MULTIPLICATION SIGN)"),
    ("close > m", "close ≥ m", 9, 17, "unexpected character `≥`",
     "write the ASCII `>=` instead of `≥` (U+2265 GREATER-THAN OR EQUAL TO)"),
    ("close > m", "close > m and n < ٣", 9, 29, "unexpected character `٣`",
     "write the ASCII `3` instead of `٣` (U+0663 ARABIC-INDIC DIGIT THREE)"),
    ("close > m", "сlose > m", 9, 11, "unexpected character `с`",
     "write the ASCII `c` instead of `с` (U+0441 CYRILLIC SMALL LETTER ES)"),
    ("close > m", "close > m and x == ‘a’", 9, 30, "unexpected character `‘`",
     "write the ASCII `'` instead of `‘` (U+2018 LEFT SINGLE QUOTATION MARK)"),
    ("target: 1", "target: close²", 10, 18, "unexpected character `²`",
     "write `** 2` for a power: `²` (U+00B2 SUPERSCRIPT TWO) is not ASCII"),
    ("close > m", "close\u00a0> m", 9, 16, "unexpected character `\u00a0`",
     "write an ordinary space instead of `\u00a0` (U+00A0 NO-BREAK SPACE)"),
    ("close > m", "close\u200b > m", 9, 16, "unexpected character `\u200b`",
     "remove the invisible character `\u200b` (U+200B ZERO WIDTH SPACE)"),
    ("close > m", "clôse > m", 9, 13, "unexpected character `ô`",
     "names use ASCII letters, digits and `_` only; `ô` (U+00F4 LATIN SMALL LETTER O WITH CIRCUMFLEX) is not one"),
    # other operators and brackets
    ("close > m", "close ^ 2 > m", 9, 17, "unexpected character `^`", "use `**` for a power"),
    ("close > m", "close > m ? 1", 9, 21, "unexpected character `?`", "write a choice as `if c then a else b`"),
    ("close > m", "~(close > m)", 9, 11, "unexpected character `~`", "use `not`"),
    ("close > m", "close > m; close < 1", 9, 20, "unexpected character `;`",
     "an expression is made of numbers, names, `( ) [ ] ,`, the operators `+ - * / ** < <= > >= == !=` and the words "
     "`and or not if then else`"),
    ("close > m", "close > m)", 9, 20, "unexpected `)`", "`)` closes no `(`: remove it"),
    ("close > m", "close + [1] > m", 9, 19, "unexpected `[`",
     "a lookback `[k]` follows a name, a call or `( )`, as in `close[1]`; there are no lists"),
    ("close > m", "close > m Or close < 1", 9, 21, "unexpected name `Or`", "keywords are lower case: `or`"),
    ("close > m", "close > m THEN", 9, 21, "unexpected name `THEN`", "keywords are lower case: `then`"),
    ("close > m", "close > m yes", 9, 21, "unexpected name `yes`", f"write `true`: {BOOLEAN_HELP}"),
    ("close > m", "close m", 9, 17, "unexpected name `m`", "an operator is missing between two values"),
    ("sma(close, n)", "sma(close,, n)", 7, 16, "unexpected `,`", "a value is missing before this `,`"),
    ("close > m", "close >", 9, 17, "expression ends too early", "expected a value: a number, a name, a call or `(`"),
])
def test_expression_syntax_errors_name_the_fix(old, new, line, column, message, help_):
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace(old, new, 1))
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [("E101", line, column, message, help_)]


def test_a_non_ascii_digit_is_not_a_number():
    """`\\d` matches `２`, and float("２") is 2.0: a lookalike digit never passes as a number."""
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace("target: 1", "target: ２"))
    assert [(d.code, d.message) for d in diags] == [("E101", "unexpected character `２`")]


@pytest.mark.parametrize("name, message, help_", [
    ("e101_if_in_arithmetic.yaml", "unexpected `if`",
     "an `if` inside an operation needs parentheses: write `1 + (if vol < 1% then size else 0)`"),
    ("e101_keyword_argument.yaml", "unexpected character `=`",
     "functions take arguments by position only: write `ema(close, fast)`"),
    ("e101_space_before_percent.yaml", "unexpected character `%`", "write `3%`, with no space before `%`"),
    ("e101_thousands_separator.yaml", "unexpected `,`", "write `100000`: numbers have no thousands separators"),
    ("e101_unicode_minus.yaml", "unexpected character `−`", "write the ASCII `-` instead of `−` (U+2212 MINUS SIGN)"),
    ("e101_stray_comma.yaml", "unexpected `,`", "a value is missing before this `,`"),
    ("e101_unbalanced_close.yaml", "unexpected `)`", "`)` closes no `(`: remove it"),
    ("e101_empty_expression.yaml", "empty expression",
     "write a value or a formula here, e.g. `close > sma(close, 20)` or `100`"),
    ("e007_long_only_yes.yaml", "`long_only` must be true or false, not `yes`", f"write `true`: {BOOLEAN_HELP}"),
    ("e007_stop_loss_without_percent.yaml", "`stop_loss` must be a fraction above 0 and at most 100%, not 5",
     "write `5%`: `stop_loss` is a fraction, so `5` is 500%"),
])
def test_corpus_help_lines(name, message, help_, run_cli):
    _, diags = diagnose(BROKEN / name)
    assert [(d.message, d.help) for d in diags] == [(message, help_)]
    _, _, err = run_cli("validate", BROKEN / name)
    assert f"]: {message}\n" in err and err.endswith(f"  = help: {help_}\n")


# --------------------------------------------------------------------------- param numbers
@pytest.mark.parametrize("written, value", [("10", 10.0), ("010", 10.0), ("-5", -5.0), ("2.5", 2.5), ("1e3", 1000.0),
                                            ("2%", 0.02), ('"7"', 7.0), ("1.5e+2", 150.0)])
def test_param_numbers_are_read_as_expressions_read_them(written, value):
    """YAML 1.1 reads `010` as 8; the expression `010` is 10, and so is the param."""
    result, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace("  n: 10\n", f"  n: 10\n  x: {written}\n"))
    assert result is not None and result.checked.params["x"] == value


@pytest.mark.parametrize("written, column, message, help_", [
    ("1_000", 7, "unexpected name `_000`", "write `1000`: numbers have no `_` separators"),
    ("0x1F", 7, "unexpected name `x1F`", "numbers are decimal: write `31`"),
    ("+5", 6, "unexpected `+`", "there is no unary `+`: remove it"),
])
def test_param_numbers_yaml_1_1_reads_differently_are_e101(written, column, message, help_):
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace("  n: 10\n", f"  n: {written}\n"))
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [("E101", 5, column, message, help_)]


@pytest.mark.parametrize("value, help_", [
    ("1_000", "write `1000`: numbers have no `_` separators"),
    ("１０", "write the ASCII `10` instead of `１０`"),
    ("$5", "write `5`: numbers have no currency symbol (`$`)"),
    ("ten", "write a number such as `10`, `2.5` or `2%`"),
])
def test_param_override_written_as_no_policy_number_is_e301_with_help(value, help_):
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK), {"n": value})
    assert [(d.code, d.message, d.help) for d in diags] == [("E301", f"param `n` must be a number, not `{value}`", help_)]


# --------------------------------------------------------------------------- fractions without %
@pytest.mark.parametrize("limit, message, help_", [
    ("stop_loss: 5", "`stop_loss` must be a fraction above 0 and at most 100%, not 5",
     "write `5%`: `stop_loss` is a fraction, so `5` is 500%"),
    ("max_drawdown: 10", "`max_drawdown` must be a fraction above 0 and at most 100%, not 10",
     "write `10%`: `max_drawdown` is a fraction, so `10` is 1000%"),
    ("trailing_stop: 1.5", "`trailing_stop` must be a fraction above 0 and at most 100%, not 1.5",
     "write `1.5%`: `trailing_stop` is a fraction, so `1.5` is 150%"),
    ("max_daily_loss: stop", "`max_daily_loss` must be a fraction above 0 and at most 100%, not 3",
     "`max_daily_loss` is a fraction, so param `stop` = 3 is 300%: set it to `3%`"),
    ("max_drawdown: 150%", "`max_drawdown` must be a fraction above 0 and at most 100%, not 1.5", None),
    ("stop_loss: 500", "`stop_loss` must be a fraction above 0 and at most 100%, not 500", None),
])
def test_fraction_key_given_a_number_of_percent_says_write_percent(limit, message, help_):
    text = GOOD.format(extra="", risk=f"{RISK}  {limit}\n").replace("  n: 10\n", "  n: 10\n  stop: 3\n")
    _, diags = diagnose_text(text)
    assert [(d.code, d.message, d.help) for d in diags] == [("E007", message, help_)]


@pytest.mark.parametrize("section, limit, column, message, help_", [
    ("risk", "take_profit: 5", 16, "`take_profit: 5` is 500%: `take_profit` is a fraction, not a number of percent",
     "write `5%` for 5 percent, or `500%` if you mean it"),
    ("risk", "max_volatility: 2", 19, "`max_volatility: 2` is 200%: `max_volatility` is a fraction, not a number of "
     "percent", "write `2%` for 2 percent, or `200%` if you mean it"),
    ("risk", "price_collar: 5", 17, "`price_collar: 5` is 500%: `price_collar` is a fraction, not a number of percent",
     "write `5%` for 5 percent, or `500%` if you mean it"),
    ("risk", "max_margin_usage: 30", 21, "`max_margin_usage: 30` is 3000%: `max_margin_usage` is a fraction, not a "
     "number of percent", "write `30%` for 30 percent, or `3000%` if you mean it"),
    ("risk", "take_profit: stop", 16, "`take_profit: stop` is 300% (param `stop` is 3): `take_profit` is a fraction, "
     "not a number of percent", "set `stop` to `3%` for 3 percent, or to `300%` if you mean it"),
    ("account", "margin_rate: 50", 16, "`margin_rate: 50` is 5000%: `margin_rate` is a fraction, not a number of "
     "percent", "write `50%` for 50 percent, or `5000%` if you mean it"),
])
def test_unbounded_fraction_key_given_a_number_of_percent_warns_w005(tmp_path, run_cli, section, limit, column,
                                                                      message, help_):
    risk = f"{RISK}  {limit}\n" if section == "risk" else f"{RISK}account:\n  {limit}\n"
    path = write(tmp_path, GOOD.format(extra="", risk=risk).replace("  n: 10\n", "  n: 10\n  stop: 3\n"))
    result, diags = diagnose(path)
    assert result is not None
    line = 14 if section == "risk" else 15
    assert [(d.code, d.severity, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [("W005", "warning", line, column, message, help_)]
    code, out, err = run_cli("validate", path)
    assert code == 0 and f"warning[W005]: {message}\n" in err and f"  = help: {help_}\n" in err


@pytest.mark.parametrize("limit", ["take_profit: 500%", "take_profit: 1", "take_profit: 0.5", "take_profit: 2 * 3",
                                   "max_margin_usage: 1", "stop_loss: 1"])
def test_fraction_key_with_percent_or_at_most_one_does_not_warn(limit):
    result, diags = diagnose_text(GOOD.format(extra="", risk=f"{RISK}  {limit}\n"))
    assert result is not None and diags == []


# --------------------------------------------------------------------------- percentage params as quantities
PCT = GOOD.format(extra="", risk=RISK).replace("  n: 10\n", "  n: 10\n  size: 100%\n")


@pytest.mark.parametrize("old, new, line, column, message, help_", [
    ("target: 1", "target: size", 12, 13, "param `size` is `100%`, which is 1: a rule's `target` is measured in units, "
     "not as a fraction", "`%` divides by 100; set `size` to the number of units"),
    ("target: 1", "target: if close > m then size else 0", 12, 31, "param `size` is `100%`, which is 1: a rule's "
     "`target` is measured in units, not as a fraction", "`%` divides by 100; set `size` to the number of units"),
    ("target: 1", "target: -min(size, 5)", 12, 18, "param `size` is `100%`, which is 1: a rule's `target` is measured "
     "in units, not as a fraction", "`%` divides by 100; set `size` to the number of units"),
    ("target: 1", "target: units", 9, 10, "param `size` is `100%`, which is 1: a rule's `target` (through feature `units`) "
     "is measured in units, not as a fraction", "`%` divides by 100; set `size` to the number of units"),
    ("target: 1", "target: 50%", 12, 13, "`target: 50%` is 0.5: a rule's `target` is measured in units, not as a "
     "fraction", "`%` divides by 100; write the number of units"),
    ("target: 1", "target: if close > m then 50% else 0", 12, 31, "`50%` is 0.5: a rule's `target` is measured in "
     "units, not as a fraction", "`%` divides by 100; write the number of units"),
    ("max_position: 10", "max_position: size", 14, 17, "param `size` is `100%`, which is 1: `max_position` is measured "
     "in units, not as a fraction", "`%` divides by 100; set `size` to the number of units"),
    ("max_position: 10", "max_position: 10\n  max_order_notional: size", 15, 23, "param `size` is `100%`, which is 1: "
     "`max_order_notional` is measured in currency units, not as a fraction",
     "`%` divides by 100; set `size` to the number of currency units"),
    ("max_position: 10\n", "max_position: 10\naccount:\n  fees_bps: size\n", 16, 13, "param `size` is `100%`, which is "
     "1: `fees_bps` is measured in basis points, not as a fraction",
     "`%` divides by 100; set `size` to the number of basis points"),
])
def test_percentage_param_used_as_a_quantity_warns_w004(old, new, line, column, message, help_):
    text = PCT.replace(old, new, 1).replace("  m: sma(close, n)\n", "  m: sma(close, n)\n  units: size\n")
    result, diags = diagnose_text(text)
    assert result is not None
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags if d.code != "W002"] == \
        [("W004", line, column, message, help_)]


@pytest.mark.parametrize("old, new", [
    ("max_position: 10", "max_position: 10\n  stop_loss: size"),        # a fraction key: what % is for
    ("target: 1", "target: floor(equity * size / close)"),              # arithmetic: a fraction of something
    ("close > m", "close > m * (1 + size)"),                            # a condition, not a quantity
    ("max_position: 10", "max_position: 1000 * size"),
])
def test_percentage_param_used_as_a_fraction_does_not_warn(old, new):
    result, diags = diagnose_text(PCT.replace(old, new, 1))
    assert result is not None and diags == []


def test_percentage_param_warning_follows_the_bound_value(run_cli, tmp_path):
    """An override without `%` silences W004; an override with `%` raises it."""
    result, diags = diagnose_text(PCT.replace("target: 1", "target: size"), {"size": "50"})
    assert result is not None and diags == []
    text = GOOD.format(extra="", risk=RISK).replace("  n: 10\n", "  n: 10\n  k: 5\n").replace("target: 1", "target: k")
    result, diags = diagnose_text(text, {"k": "50%"})
    assert [(d.code, d.message) for d in diags] == \
        [("W004", "param `k` is `50%`, which is 0.5: a rule's `target` is measured in units, not as a fraction")]
    path = write(tmp_path, PCT.replace("target: 1", "target: size"))
    code, out, err = run_cli("validate", path)
    assert code == 0 and err == (
        f"{path}:11:13: warning[W004]: param `size` is `100%`, which is 1: a rule's `target` is measured in units, "
        "not as a fraction\n"
        "  11 |     target: size\n"
        "     |             ^^^^\n"
        "  = help: `%` divides by 100; set `size` to the number of units\n")


@pytest.mark.parametrize("old, new, line, column, code, message, help_", [
    ("sma(close, n)", "sma(close, 20%)", 7, 17, "E207", "the window of `sma` is 0.2 (literal); it must be an integer "
     "from 1 to 100,000", "`%` divides by 100: write `20`"),
    ("  n: 10\n", "  n: 20%\n", 7, 17, "E207", "the window of `sma` is 0.2 (param `n`); it must be an integer from 1 "
     "to 100,000", "param `n` is `20%`; `%` divides by 100: set it to `20`"),
    ("max_position: 10", "max_orders_per_day: 50%", 12, 23, "E007", "`max_orders_per_day` must be a whole number 0 "
     "or more, not 0.5", "`%` divides by 100: write `50`"),
])
def test_percentage_where_a_count_is_expected_says_what_percent_does(old, new, line, column, code, message, help_):
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace(old, new, 1))
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diags] == \
        [(code, line, column, message, help_)]


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


@pytest.mark.parametrize("word", ["time", "timestamp", "now", "Date"])
def test_a_name_for_the_time_points_to_ts(word):
    _, diags = diagnose_text(GOOD.format(extra="", risk=RISK).replace("close > m", f"hour({word}) > 9", 1))
    assert [(d.code, d.message, d.help) for d in diags] == \
        [("E201", f"unknown name `{word}`", "the event's time is `ts` (ns since the epoch, UTC), as in `hour(ts)`")]
