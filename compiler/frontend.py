"""The checking half of the pipeline (no Numba): file -> parsed -> checked -> hashes.

`validate` and `hash` stop here; `compile` continues in `compiler.build`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from policyc.dsl.diagnostics import Diagnostic, PolicyError
from policyc.dsl.document import ParsedPolicy, load_policy, parse_policy_text

from .check import CheckedPolicy, check
from .hashing import build_hash, policy_hash, toolchain_of


@dataclass
class Checked:
    checked: CheckedPolicy
    policy_hash: str

    @cached_property
    def build_hash(self) -> str:
        """`policy_hash` with the toolchain's versions (`toolchain_of`), read from package
        metadata when first asked for (`validate` and `hash` never ask)."""
        return build_hash(self.policy_hash, toolchain_of(self.checked))

    @property
    def warnings(self) -> list[Diagnostic]:
        return self.checked.warnings


def check_policy(source: str | Path | ParsedPolicy, params: dict | None = None) -> Checked:
    """Load (if given a path) and check a policy, binding `params` over its defaults."""
    parsed = source if isinstance(source, ParsedPolicy) else load_policy(source)
    checked = check(parsed, params)
    return Checked(checked, policy_hash(checked))


def check_text(text: str, params: dict | None = None, name: str = "<policy>") -> Checked:
    return check_policy(parse_policy_text(text, name), params)


def diagnose(path: str | Path, params: dict | None = None) -> tuple[Checked | None, list[Diagnostic]]:
    """Every diagnostic for one file (errors and warnings); never raises for bad input."""
    try:
        result = check_policy(path, params)
    except PolicyError as exc:
        return None, exc.diagnostics
    return result, list(result.warnings)
