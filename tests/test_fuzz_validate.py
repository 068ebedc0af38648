"""Robustness of `validate`: whatever the input, the answer is diagnostics, never a crash.

Property tests (hypothesis) mutate the example policies, feed random bytes and random
text, and drive the CLI; fixed tests cover pathological inputs (10 MB file, expressions
nested 1000 deep, 1000 unary minus signs, huge windows). Large inputs are generated into
tmp_path at run time.
"""
from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyc.cli import main
from policyc.compiler.frontend import diagnose
from policyc.dsl.diagnostics import CODES
from policyc.dsl.source import MAX_FILE_BYTES

POLICIES = sorted((Path(__file__).parent.parent / "policies").glob("*.yaml"))
TEXTS = {p.name: p.read_text() for p in POLICIES}

FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="policyc-fuzz-") as d:
        yield Path(d)


def check_diagnose(path: Path):
    """diagnose() returns; every diagnostic is well formed and positioned at >= 1:1."""
    result, diags = diagnose(path)  # anything escaping diagnose() is a bug
    for d in diags:
        assert d.code in CODES, d
        assert d.severity in ("error", "warning"), d
        assert d.span.line >= 1 and d.span.column >= 1, d
        assert d.span.end_line >= d.span.line, d
        assert isinstance(d.message, str) and d.message, d
        assert d.code != "E002" or d.help, d  # raw PyYAML text never goes out without a help line
        assert d.code != "E101" or d.help, d  # every expression syntax error names its fix
    if result is None:
        assert any(d.severity == "error" for d in diags), "rejected without an error"
    else:
        assert not any(d.severity == "error" for d in diags)
    return result, diags


# ------------------------------------------------------------------- mutations
ALPHABET = string.ascii_letters + string.digits + " _()[],.:-+*/<>=!%&|#'\"{}?@`~^\\\n\t" + "éЖ\u00a0" + \
    "−２％×≥‘€$²٣с\u200b"
TOKENS = [" and ", " or ", "not ", "if ", " then ", " else ", "[1]", "[", "]", "(", ")", ",", "ts", "**",
          "%", "5m", "2s", "-", "true", "false", ": ", "- ", "\n  ", "\n", "  ", "close", "sma(", "&&",
          "==", "=", "&anchor ", "*anchor", "!!str ", "? ", "|\n", ">\n", "---\n", "...\n", "'", '"',
          "1e9", "1e400", "9" * 400, "0", "100%", "intent", "custom:", "{", "}", "#", "True", "FALSE", "yes",
          "off", "1,000", "1_000", "0x1F", "010", "1:30", "$100", "3 %", "5 m", "window=", "+"]

position = st.integers(min_value=0, max_value=10**6)
piece = st.one_of(st.sampled_from(list(ALPHABET)), st.sampled_from(TOKENS))
mutation = st.one_of(
    st.tuples(st.just("delete"), position, st.integers(1, 5)),
    st.tuples(st.just("insert"), position, piece),
    st.tuples(st.just("replace"), position, piece),
    st.tuples(st.just("swap_lines"), position, position),
    st.tuples(st.just("duplicate_line"), position, st.just(None)),
    st.tuples(st.just("delete_line"), position, st.just(None)),
    st.tuples(st.just("truncate"), position, st.just(None)),
)


def apply(text: str, op: str, pos: int, arg) -> str:
    if op in ("swap_lines", "duplicate_line", "delete_line"):
        lines = text.split("\n")
        i = pos % len(lines)
        if op == "swap_lines":
            j = arg % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "duplicate_line":
            lines.insert(i, lines[i])
        else:
            del lines[i]
        return "\n".join(lines)
    i = pos % (len(text) + 1)
    if op == "delete":
        return text[:i] + text[i + arg:]
    if op == "insert":
        return text[:i] + arg + text[i:]
    if op == "replace":
        return text[:i] + arg + text[i + 1:]
    return text[:i]  # truncate


@FAST
@given(name=st.sampled_from(sorted(TEXTS)), mutations=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_examples_never_crash(workdir, name, mutations):
    text = TEXTS[name]
    for op, pos, arg in mutations:
        text = apply(text, op, pos, arg)
    path = workdir / "mutated.yaml"
    path.write_text(text, encoding="utf-8")
    check_diagnose(path)


# ------------------------------------------------------------------- random input
@settings(max_examples=150, deadline=None, database=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_never_crash(workdir, data):
    path = workdir / "bytes.yaml"
    path.write_bytes(data)
    check_diagnose(path)


@settings(max_examples=150, deadline=None, database=None)
@given(text=st.text(alphabet=string.printable, max_size=400))
def test_random_printable_text_never_crashes(workdir, text):
    path = workdir / "text.yaml"
    path.write_text(text)
    check_diagnose(path)


KEYS = ["policy: p", "version: 1", "instruments: [ORCL]", "inputs: [intent]", "params:", "  k: 3",
        "  flag: true", "features:", "  f: ", "  g: ", "signals:", "signals: []", "  - when: ", "    target: ",
        "risk:", "  max_position: ", "  stale_after: ", "  max_drawdown: ", "  custom:", "    - name: r",
        "      when: ", "      action: halt", "account:", "  fees_bps: "]
EXPR_TOKENS = ["close", "f", "g", "k", "flag", "ts", "position", "1", "2.5", "3%", "2s", "1e400", "true", "sma(close, k)",
               "ema(f, 3)", "hour(ts)", "f[1]", "g[k]", "+", "-", "*", "/", "**", ">", "==", "and", "or", "not",
               "if", "then", "else", "(", ")", ",", "crosses_above(f, g)", "bars_since(", "nz(", "max(", "x",
               "True", "yes", "on", "−1", "２％", "100,000", "1_000", "$5", "3 %", "5 m", "n=", "If", "[", "]", "=",
               "%", "^", "?", ".", ";", "²", "\u00a0", "€", "size", "50%"]
expression = st.lists(st.sampled_from(EXPR_TOKENS), min_size=1, max_size=7).map(" ".join)
yaml_line = st.one_of(st.sampled_from(KEYS),
                      st.tuples(st.sampled_from([k for k in KEYS if k.endswith(": ")]), expression).map("".join))


@settings(max_examples=200, deadline=None, database=None)
@given(lines=st.lists(yaml_line, min_size=1, max_size=20))
def test_random_policy_shaped_text_never_crashes(workdir, lines):
    path = workdir / "shaped.yaml"
    path.write_text("\n".join(lines) + "\n")
    check_diagnose(path)


EXPRESSION_CHARACTERS = string.printable + "−２％×≥‘’€£²٣сé\u00a0\u200b…"


@settings(max_examples=400, deadline=None, database=None)
@given(text=st.one_of(expression, st.text(alphabet=EXPRESSION_CHARACTERS, min_size=1, max_size=40)))
def test_every_expression_syntax_error_has_a_help_line(text):
    """Whatever the expression, a syntax error says how to fix it (never a bare E101)."""
    from policyc.dsl.diagnostics import PolicyError, Span
    from policyc.dsl.expressions import parse_expression

    try:
        parse_expression(text, lambda lo, hi: Span("<x>", 1, lo + 1, 1, hi + 1))
    except PolicyError as exc:
        for d in exc.diagnostics:
            assert d.code in ("E101", "E102", "E007"), d
            assert d.help and "\n" not in d.help, d


# ------------------------------------------------------------------- the CLI
@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(TEXTS)), mutations=st.lists(mutation, min_size=0, max_size=4),
       fmt=st.sampled_from(["text", "json"]))
def test_cli_returns_0_or_1(workdir, capsys, name, mutations, fmt):
    text = TEXTS[name]
    for op, pos, arg in mutations:
        text = apply(text, op, pos, arg)
    path = workdir / "cli.yaml"
    path.write_text(text, encoding="utf-8")
    code = main(["validate", str(path), "--format", fmt])
    out, err = capsys.readouterr()
    assert code in (0, 1)
    assert "Traceback" not in out + err
    if code == 0:
        assert f"ok {path} " in out or fmt == "json"


# ------------------------------------------------------------------- pathological inputs
TEMPLATE = """\
policy: demo
version: 1
instruments: [ORCL]
params:
  n: 10
features:
  m: {feature}
signals:
  - when: close > m
    target: {target}
risk:
  max_position: 10
"""


def expect_error(path: Path, code: str, capsys, line: int | None = None, cli: bool = True):
    result, diags = check_diagnose(path)
    assert result is None
    assert code in [d.code for d in diags], [(d.code, d.message) for d in diags]
    if line is not None:
        assert [d.span.line for d in diags if d.code == code][0] == line
    if not cli:
        return
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"error[{code}]" in err and "Traceback" not in err


def test_ten_megabyte_file(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    body = TEMPLATE.format(feature="sma(close, n)", target=1)
    with path.open("w") as f:
        f.write(body)
        f.write("# padding\n" * (10 * 1024 * 1024 // 10))
    assert path.stat().st_size > 10 * 1024 * 1024
    expect_error(path, "E001", capsys, line=1)


def test_just_under_the_size_limit_with_many_nodes(tmp_path, capsys):
    """More YAML values than a policy may hold, under the byte limit: refused quickly."""
    params = "".join(f"  p{i}: 1\n" for i in range(20500))
    path = tmp_path / "many.yaml"
    path.write_text(TEMPLATE.format(feature="sma(close, n)", target=1).replace("  n: 10\n", "  n: 10\n" + params))
    assert path.stat().st_size < MAX_FILE_BYTES
    expect_error(path, "E003", capsys, cli=False)


@pytest.mark.parametrize("expr", [
    "(" * 1000 + "close" + ")" * 1000,
    "abs(" * 1000 + "close" + ")" * 1000,
    "close" + "[1]" * 1000,
])
def test_expression_nested_1000_deep(tmp_path, capsys, expr):
    path = tmp_path / "deep.yaml"
    path.write_text(TEMPLATE.format(feature=expr, target=1))
    expect_error(path, "E102", capsys, line=7)


@pytest.mark.parametrize("expr", ["-" * 1000 + "1", "- " * 1000 + "close", "not " * 1000 + "true"])
def test_thousand_unary_operators(tmp_path, capsys, expr):
    path = tmp_path / "unary.yaml"
    text = TEMPLATE.format(feature="sma(close, n)", target="0").replace("target: 0", f'target: "{expr}"')
    if expr.startswith("not"):
        text = text.replace("when: close > m", f"when: {expr}").replace(f'target: "{expr}"', "target: 1")
        line = 9
    else:
        line = 10
    path.write_text(text)
    expect_error(path, "E102", capsys, line=line)


def test_expression_too_long(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(TEMPLATE.format(feature=" + ".join(["close"] * 1000), target=1))
    expect_error(path, "E102", capsys, line=7)


def test_yaml_nested_1000_deep(tmp_path, capsys):
    path = tmp_path / "yamldeep.yaml"
    path.write_text(TEMPLATE.format(feature="sma(close, n)", target=1) + "description: " + "[" * 1000 + "]" * 1000 + "\n")
    result, diags = check_diagnose(path)
    assert result is None and {d.code for d in diags} <= {"E002", "E003"}
    assert main(["validate", str(path)]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("window", ["0", str(10**12), "100001", "2.5"])
def test_window_out_of_range(tmp_path, capsys, window):
    path = tmp_path / "window.yaml"
    path.write_text(TEMPLATE.format(feature=f"sma(close, {window})", target=1))
    expect_error(path, "E207", capsys, line=7)


@pytest.mark.parametrize("lookback", ["10001", str(10**12)])
def test_lookback_out_of_range(tmp_path, capsys, lookback):
    path = tmp_path / "lookback.yaml"
    path.write_text(TEMPLATE.format(feature=f"close[{lookback}]", target=1))
    expect_error(path, "E207", capsys, line=7)


def test_window_limits_are_accepted(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text(TEMPLATE.format(feature="sma(close, 100000) + close[10000] + sma(close, 1)", target=1))
    result, diags = check_diagnose(path)
    assert result is not None, [d.message for d in diags]
