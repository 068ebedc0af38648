"""Policy identity: `policy_hash` over a canonical form of the meaning, `build_hash` over
that plus the toolchain that turned it into machine code (spec section 8)."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from policyc.dsl.expressions import canonical

from .check import CheckedPolicy

COMPILER_VERSION = "0.2.0"
LANGUAGE_VERSION = 1


def canonical_form(checked: CheckedPolicy) -> dict:
    """The policy's meaning with params bound: formatting, comments, key order of maps
    and redundant parentheses do not appear in it; rule order does."""
    p = checked.parsed
    form = {
        "language": LANGUAGE_VERSION,
        "policy": p.name,
        "version": p.version,
        "instruments": [i.name for i in p.instruments],
        "inputs": sorted(i.name for i in p.inputs),
        "params": {k: checked.params[k] for k in sorted(checked.params)},
        "features": {k: canonical(p.features[k].expr) for k in sorted(p.features)},
        "signals": [_rule(r, legs, checked.instruments) for r, legs in zip(p.signals, checked.rule_legs)],
        "risk": None if p.risk is None else {k: checked.risk[k] for k in sorted(checked.risk)},
        "custom": [[r.name, canonical(r.when), r.action] for r in p.custom],
        "account": {k: checked.account[k] for k in sorted(checked.account)},
    }
    # only for the map form's names, so a list of symbols hashes as it did before that form
    aliases = {i.alias: i.name for i in p.instruments if i.alias not in (None, i.name)}
    if aliases:
        form["instrument_names"] = aliases
    # only when given, so the hash of a policy without contract settings is what it was before them
    contracts = {i.name: c for i, c in zip(p.instruments, checked.contracts) if c}
    if contracts:
        form["instrument_contracts"] = contracts
    # only when named, so the hash of a policy on UTC days is what it was before these keys
    for key in ("calendar", "timezone"):
        if getattr(p, key) is not None:
            form[key] = getattr(p, key).name
    return form


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def policy_hash(checked: CheckedPolicy) -> str:
    return _digest(canonical_form(checked))


@lru_cache(maxsize=2)
def toolchain_versions(calendar: bool = False) -> dict[str, str]:
    """Versions read from package metadata, so hashing never imports Numba; with
    `calendar` (a policy that names an exchange calendar) also exchange_calendars', whose
    sessions and holidays decide its days."""
    import platform  # here, as metadata: `validate` never needs them
    from importlib import metadata  # (metadata's import is about 9 ms)

    versions = {"policyc": COMPILER_VERSION, "python": platform.python_version()}
    for package in ("numba", "llvmlite", "numpy", *(("exchange_calendars",) if calendar else ())):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def toolchain_of(checked: CheckedPolicy) -> dict[str, str]:
    """The versions a policy's build hash covers: exchange_calendars' among them when it
    names a calendar."""
    return toolchain_versions(checked.parsed.calendar is not None)


def build_hash(policy_hash_hex: str, toolchain: dict[str, str] | None = None) -> str:
    """The SHA-256 of the policy hash and the toolchain's versions (`toolchain_versions`)."""
    return _digest({"policy_hash": policy_hash_hex, "toolchain": toolchain or toolchain_versions()})


def _rule(rule, legs: tuple[int, ...], instruments: list[str]) -> list:
    """A rule's canonical form: [when, target], then its limit when it has one; a
    multi-leg rule's legs by instrument symbol, in the order written (the order its risk
    steps run). A rule without a limit or legs hashes as it did before they existed."""
    if rule.legs is None:
        form = [canonical(rule.when), canonical(rule.target)]
        return form if rule.limit is None else form + [canonical(rule.limit)]
    return [canonical(rule.when), {"legs": [
        [instruments[x], canonical(leg.target)] + ([] if leg.limit is None else [canonical(leg.limit)])
        for x, leg in zip(legs, rule.legs)]}]
