"""Diagnostics: stable codes, source spans, and rendering as text (with a caret) or JSON.

Every error the front end or the compiler reports is a `Diagnostic`; nothing else may
reach the user. The codes are a contract: tests and tools match on them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

ERROR = "error"
WARNING = "warning"

#: Every code the tool can emit, with a one-line meaning (the table in docs/commands.md is
#: generated from it by docs/gen_codes.py; tests/test_docs.py checks the two agree).
CODES = {
    "E001": "the file cannot be read as text (missing, binary, empty or too large)",
    "E002": "YAML syntax error",
    "E003": "wrong structure: a mapping, list or scalar where another is expected",
    "E004": "unknown key",
    "E005": "duplicate key",
    "E006": "missing required key",
    "E007": "wrong value type or out-of-range value",
    "E008": "invalid identifier",
    "E101": "expression syntax error",
    "E102": "expression too long or too deeply nested",
    "E103": "duration outside a risk key, or a number where a duration is expected",
    "E201": "unknown name",
    "E202": "unknown function",
    "E203": "wrong number of arguments",
    "E204": "type mismatch",
    "E205": "name defined twice",
    "E206": "window or lookback must be an integer literal or param",
    "E207": "window or lookback out of range",
    "E208": "features depend on each other in a cycle with no lookback",
    "E209": "a risk or account value must be a constant",
    "E210": "signals empty without an intent input",
    "E211": "a session function in a policy with no `calendar` or `timezone`",
    "E212": "unknown instrument in a reference (`X.name`) or in `age(X)`",
    "E213": "a reference reads something that is not an instrument's (`X.equity`, `X.size`)",
    "E214": "a rule needs exactly one of `target` and `legs` (a `limit` goes beside `target` or inside a leg)",
    "E215": "a leg names no instrument of the policy, or one instrument twice",
    "E216": "`max_leg_imbalance` in a policy with no multi-leg rule",
    "E301": "bad parameter override",
    "W001": "policy has no risk section",
    "W002": "feature is never used",
    "W003": "rule can never be reached",
    "W004": "a percentage where a quantity is expected: a rule's target, or a risk or account key measured in "
            "units, money, orders or basis points",
    "W005": "a fraction-valued risk or account key given a number above 1 without `%` (`take_profit: 5` is 500%)",
    "W006": "a `limit` that is a constant at or below 0: it blocks every order it prices (`limit_invalid:blocked`)",
}


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns are 1-based, end is exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def point(file: str, line: int, column: int) -> "Span":
        return Span(file, line, column, line, column + 1)


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: str
    span: Span
    message: str
    help: str | None = None

    def to_json(self) -> dict:
        return {
            "file": self.span.file,
            "line": self.span.line,
            "column": self.span.column,
            "end_line": self.span.end_line,
            "end_column": self.span.end_column,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "help": self.help,
        }


class PolicyError(Exception):
    """Raised with one or more diagnostics when a policy cannot be accepted."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("; ".join(d.message for d in self.diagnostics))


def error(code: str, span: Span, message: str, help: str | None = None) -> Diagnostic:
    return Diagnostic(code, ERROR, span, message, help)


def warning(code: str, span: Span, message: str, help: str | None = None) -> Diagnostic:
    return Diagnostic(code, WARNING, span, message, help)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' help line for a misspelled name, if a close candidate exists."""
    import difflib  # here: only a policy with a misspelled name needs it

    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    if not matches and name.lower() != name:
        matches = [c for c in candidates if c.lower() == name.lower()][:1]
    return f"did you mean `{matches[0]}`?" if matches else None


def render_text(diag: Diagnostic, source_lines: Sequence[str] | None) -> str:
    """`FILE:LINE:COL: error[Ennn]: message`, the source line, a caret, then `help:`."""
    s = diag.span
    out = [f"{s.file}:{s.line}:{s.column}: {diag.severity}[{diag.code}]: {diag.message}"]
    if source_lines and 1 <= s.line <= len(source_lines):
        text = source_lines[s.line - 1].rstrip("\n").expandtabs(1)
        if len(text) > 200:  # keep long (or minified) lines readable around the caret
            lo = max(0, s.column - 80)
            text = text[lo : lo + 160]
            col = s.column - lo
        else:
            col = s.column
        gutter = f"{s.line:>4} | "
        width = max(1, (s.end_column - s.column) if s.end_line == s.line else len(text) - col + 1)
        width = min(width, max(1, len(text) - col + 1))
        out.append(gutter + text)
        out.append(" " * (len(gutter) - 2) + "| " + " " * (col - 1) + "^" * width)
    if diag.help:
        out.append(f"  = help: {diag.help}")
    return "\n".join(out)


def render_json(diags: Sequence[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diags], indent=2)


def sort_key(diag: Diagnostic):
    return (diag.span.file, diag.span.line, diag.span.column, diag.code)
