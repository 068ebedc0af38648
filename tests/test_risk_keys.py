"""The table of risk and account keys (dsl/risk_keys.py) is whole, and everything reads it.

Its shape: every reason code belongs to exactly one step, every key's codes are in its
own step, every key records a code or tunes a key that does. What reads it: the
document model, the checker's bounds and messages, the kernel's config slots, reason
bits and exits, `policyc explain`, the tests' random policies; and a key added to the
table (in a fresh process) reaches all of them without another edit.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyc.compiler import layout as L
from policyc.compiler.builtins import MAX_WINDOW
from policyc.compiler.check import MAX_CUSTOM_RULES
from policyc.compiler.explain import explain
from policyc.compiler.frontend import check_text
from policyc.compiler.interpret import Book, _exit_hit
from policyc.dsl.diagnostics import PolicyError
from policyc.dsl.document import AccountModel, RiskModel, parse_policy_text
from policyc.dsl.risk_keys import (ACCOUNT_KEYS, BOOLEAN, CUSTOM_STEP, DURATION, FRACTION, RISK_KEYS, RISK_STEPS,
                                   Key)

ROOT = Path(__file__).resolve().parent.parent
OUTCOMES = {"halt", "exit", "blocked", "clipped"}
HEAD = ("policy: demo\nversion: 1\ninstruments: [ORCL]\nsignals:\n  - when: close > 1\n    target: 1\n"
        "  - when: close < 1\n    legs: {ORCL: 0}\n")  # a leg, for max_leg_imbalance
ALL_KEYS = [("risk", name, key) for name, key in RISK_KEYS.items()] + \
           [("account", name, key) for name, key in ACCOUNT_KEYS.items()]
ids = [f"{section}.{name}" for section, name, _ in ALL_KEYS]


def policy(section: str, name: str, written: str) -> str:
    """A policy that sets one key (with the key it tunes, if any) and nothing else."""
    key = (RISK_KEYS if section == "risk" else ACCOUNT_KEYS)[name]
    lines = [f"  {name}: {written}"]
    if key.setting_of:
        lines.append(f"  {key.setting_of}: {RISK_KEYS[key.setting_of].example}")
    if section == "risk":
        return HEAD + "risk:\n" + "\n".join(lines) + "\n"
    return HEAD + "risk:\n  max_position: 10\naccount:\n" + "\n".join(lines) + "\n"


def diagnostics(text: str):
    try:
        result = check_text(text)
    except PolicyError as exc:
        return None, exc.diagnostics
    return result, result.warnings


# ---- the table's shape -------------------------------------------------------------------
def test_every_reason_code_belongs_to_exactly_one_step():
    codes = [r.code for step in RISK_STEPS for r in step.reasons]
    assert len(codes) == len(set(codes))
    assert tuple(codes) == L.REASONS
    for code in codes:
        name, _, outcome = code.partition(":")
        assert re.fullmatch(r"[a-z][a-z_]*", name) and outcome in OUTCOMES, code


def test_the_steps_are_numbered_1_to_10_in_order_and_custom_rules_have_a_step_of_their_own():
    # a step listed again later (codes added after the others keep every earlier bit) is a
    # continuation of the step of its number, with no keys of its own
    firsts = [s for k, s in enumerate(RISK_STEPS) if s.number is not None
              and all(t.number != s.number for t in RISK_STEPS[:k])]
    assert [s.number for s in firsts] == list(range(1, 11))
    assert RISK_STEPS[:len(firsts)] == tuple(firsts)
    assert all(s.keys == () for s in RISK_STEPS[len(firsts):])
    custom = next(s for s in RISK_STEPS if s.number == CUSTOM_STEP)
    assert custom.keys == () and custom.reasons == ()
    assert all(s.keys == () for s in RISK_STEPS if s.number is None)


def test_every_key_records_its_codes_in_its_own_step():
    for name, key in RISK_KEYS.items():
        step = next(s for s in RISK_STEPS if s.number == key.step)
        assert name in step.keys
        assert set(key.reasons) <= {r.code for r in step.all_reasons}, name
        if key.setting_of is None:
            assert key.reasons, f"`{name}` records no reason code"
        else:
            assert key.reasons == () and RISK_KEYS[key.setting_of].step == key.step, name
    # a step's own codes (not named after a key) are named after no key at all
    for step in RISK_STEPS:
        first = next(s for s in RISK_STEPS if s.number == step.number)
        for r in step.reasons:
            owner = r.code.partition(":")[0]
            assert owner in first.keys or owner not in RISK_KEYS | ACCOUNT_KEYS, r.code


def test_every_protective_exit_has_a_lock():
    assert list(L.EXITS) == [name for name, key in RISK_KEYS.items() if key.reason("exit") and key.reason("blocked")]
    for name, bits in L.EXITS.items():
        assert L.REASONS[bits.exit] == f"{name}:exit" and L.REASONS[bits.blocked] == f"{name}:blocked"
        assert RISK_KEYS[name].step == 2


def test_keys_are_named_once_and_account_keys_have_defaults():
    assert not set(RISK_KEYS) & set(ACCOUNT_KEYS)
    assert all(name == key.name for name, key in (RISK_KEYS | ACCOUNT_KEYS).items())
    assert all(key.default is not None and key.step is None for key in ACCOUNT_KEYS.values())
    assert all(key.step is not None for key in RISK_KEYS.values())


@pytest.mark.parametrize("section, name, key", ALL_KEYS, ids=ids)
def test_every_kind_either_has_a_measure_or_is_written_with_its_own_notation(section, name, key):
    """W004 warns about `%` on every key measured in a count of something; the others are
    fractions (where `%` is right), durations and true/false."""
    assert (key.kind.measure is None) == (key.kind in (FRACTION, DURATION, BOOLEAN))
    assert (key.bounds is None) == (key.kind is BOOLEAN)


def test_the_volatility_window_is_bounded_like_every_window():
    assert RISK_KEYS["volatility_window"].bounds.highest == MAX_WINDOW


def test_the_reason_mask_holds_the_fixed_codes_and_the_custom_rules():
    assert len(L.REASONS) + MAX_CUSTOM_RULES == L.MASK_BITS
    language = " ".join((ROOT / "docs" / "language.md").read_text(encoding="utf-8").split())
    assert f"the fixed codes take {len(L.REASONS)}" in language
    assert f"at most {MAX_CUSTOM_RULES} custom rules" in language


# ---- what reads it -----------------------------------------------------------------------
def test_the_document_model_has_every_key():
    assert set(RiskModel.model_fields) == {"custom"} | set(RISK_KEYS)
    assert list(AccountModel.model_fields) == list(ACCOUNT_KEYS)


def test_every_key_has_a_config_slot():
    assert L.CONFIG_KEYS == tuple(RISK_KEYS) + tuple(ACCOUNT_KEYS)


@pytest.mark.parametrize("section, name, key", ALL_KEYS, ids=ids)
def test_every_example_and_sample_is_valid_and_the_default_in_bounds(section, name, key):
    for written in (key.example, *key.samples):
        result, diags = diagnostics(policy(section, name, written))
        assert result is not None and diags == [], (written, [d.message for d in diags])
        bound = (result.checked.risk if section == "risk" else result.checked.account)[name]
        assert key.bounds is None or key.bounds.admit(bound)
    if key.default is not None:
        assert key.bounds.admit(key.default)


def _outside(key: Key) -> list[float]:
    """Values just outside the key's bounds: at or below its lowest, above its highest, not whole."""
    b = key.bounds
    out = [b.lowest - 1 if b.lowest_included else b.lowest]
    if b.highest is not None:
        out.append(b.highest * 2)
    if b.whole:
        out.append(b.lowest + 1.5)
    return out


def _inside(key: Key) -> list[float]:
    b = key.bounds
    return ([b.lowest] if b.lowest_included else []) + ([b.highest] if b.highest is not None else [])


#: The rule of each shape of bounds, as error E007 words it (every key is checked against
#: its own rule below; these pin the wording).
RULES = {
    "max_drawdown": "a fraction above 0 and at most 100%",
    "take_profit": "a fraction above 0 such as `6%`",
    "volatility_window": "a whole number from 2 to 100,000",
    "stale_after": "a duration above 0 such as `2s`",
    "max_position": "a number above 0",
    "max_orders_per_day": "a whole number 0 or more",
    "fees_bps": "a number 0 or more and at most 10000",
    "long_only": "true or false",
}


@pytest.mark.parametrize("section, name, key", [k for k in ALL_KEYS if k[2].bounds is not None], ids=[
    i for i, k in zip(ids, ALL_KEYS) if k[2].bounds is not None])
def test_the_checker_bounds_every_key_with_its_rule(section, name, key):
    label = name if section == "risk" else f"account.{name}"
    suffix = "s" if key.kind is DURATION else ""
    for v in _outside(key):
        _, diags = diagnostics(policy(section, name, f"{v:g}{suffix}"))
        assert [(d.code, d.message) for d in diags] == [("E007", f"`{label}` must be {key.rule}, not {v:g}")]
    for v in _inside(key):
        result, diags = diagnostics(policy(section, name, f"{v:g}{suffix}"))
        assert result is not None and [d.code for d in diags if d.severity == "error"] == []
    if name in RULES:
        assert key.rule == RULES[name]


def test_a_true_false_key_refuses_a_number():
    _, diags = diagnostics(policy("risk", "long_only", "1"))
    assert [(d.code, d.message) for d in diags] == [("E007", f"`long_only` must be {RULES['long_only']}, not 1")]


def test_explain_shows_every_key_in_its_step():
    text = HEAD + "risk:\n" + "".join(f"  {name}: {key.example}\n" for name, key in RISK_KEYS.items())
    lines = explain(check_text(text)).splitlines()
    for step in RISK_STEPS:
        if not step.keys:
            continue
        line = next(ln for ln in lines if ln.startswith(f"  {step.number} {step.title}: "))
        assert line.split(": ", 1)[1] == ", ".join(f"{name} {RISK_KEYS[name].example}" for name in step.keys)


def test_the_kernel_maps_each_lock_to_its_own_blocked_code():
    from policyc.compiler.emit import emit
    from policyc.compiler.lower import lower
    from policyc.compiler.passes import optimise

    text = HEAD + "risk:\n" + "".join(f"  {name}: {RISK_KEYS[name].example}\n" for name in L.EXITS)
    checked = check_text(text).checked
    source = emit(optimise(lower(checked)), checked)
    for bits in L.EXITS.values():
        assert re.search(rf"code = {bits.exit}\n", source)
        assert re.search(rf"elif code == {bits.exit}:\n\s+reasons \|= {1 << bits.blocked}\n", source)


@pytest.mark.parametrize("key", list(L.EXITS))
def test_the_interpreter_has_a_rule_for_every_protective_exit(key):
    book = Book(entry=100.0, best=100.0)
    assert _exit_hit(key, 0.05, 100.0, book, True) is False
    assert _exit_hit(key, 0.05, 80.0, book, True) != _exit_hit(key, 0.05, 120.0, book, True)


def test_the_random_policies_of_the_differential_tests_use_every_key():
    from test_differential import policies

    seen: set[str] = set()

    @settings(max_examples=300, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def draw(data):
        parsed = parse_policy_text(data.draw(policies()).text)
        seen.update(f"risk.{k}" for k in parsed.risk or {})
        seen.update(f"account.{k}" for k in parsed.account)

    draw()
    assert seen == {f"risk.{k}" for k in RISK_KEYS} | {f"account.{k}" for k in ACCOUNT_KEYS}


# ---- a new key -----------------------------------------------------------------------------
NEW_KEY = textwrap.dedent('''
    import json
    from policyc.dsl import risk_keys as rk

    rk.RISK_KEYS["max_spread"] = rk.Key("max_spread", rk.FRACTION, rk.Bounds(highest=1.0), step=9, example="1%",
                                        samples=("1%",), meaning="no order while the spread is wider than this")
    rk.RISK_STEPS = tuple(
        rk.Step(s.number, s.title, s.reasons + (rk.Reason("max_spread:blocked", "the spread is too wide"),))
        if s is next(t for t in rk.RISK_STEPS if t.number == 9) else s for s in rk.RISK_STEPS)

    from pathlib import Path
    import importlib.util
    from policyc.compiler import layout as L
    from policyc.compiler.explain import explain
    from policyc.compiler.frontend import check_text
    from policyc.dsl.diagnostics import PolicyError

    head = "policy: demo\\nversion: 1\\ninstruments: [ORCL]\\nsignals:\\n  - when: close > 1\\n    target: 1\\n"
    checked = check_text(head + "risk:\\n  max_spread: 2%\\n")
    try:
        check_text(head + "risk:\\n  max_spread: 3\\n")
        refused = None
    except PolicyError as exc:
        refused = [d.message for d in exc.diagnostics]
    spec = importlib.util.spec_from_file_location("gen", Path("docs/gen_risk_keys.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    docs = gen.generate(Path("docs/language.md").read_text(encoding="utf-8"), rk)
    print(json.dumps({
        "value": checked.checked.risk["max_spread"],
        "refused": refused,
        "bit": L.R.get("max_spread:blocked"),
        "slot": "max_spread" in L.CONFIG_KEYS,
        "explain": [ln for ln in explain(checked).splitlines() if ln.startswith("  9 ")],
        "docs": [ln for ln in docs.splitlines() if "max_spread" in ln],
    }))
''')


def test_a_key_added_to_the_table_reaches_the_document_checker_layout_explain_and_docs():
    out = subprocess.run([sys.executable, "-c", NEW_KEY], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["value"] == 0.02
    assert got["refused"] == ["`max_spread` must be a fraction above 0 and at most 100%, not 3"]
    assert got["bit"] == L.R["notional_invalid:blocked"] + 1 and got["slot"]
    assert got["explain"] == ["  9 order limits: max_spread 2%"]
    assert got["docs"] == [
        "| 9 | `max_spread` | fraction > 0 and <= 100% | no order while the spread is wider than this | "
        "`max_spread: 1%` | `max_spread:blocked` |",
        f"| {L.R['notional_invalid:blocked'] + 1} | `max_spread:blocked` | 9 | the spread is too wide |",
    ]
