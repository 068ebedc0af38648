"""policy_hash follows meaning, not formatting; build_hash follows the toolchain."""
from pathlib import Path

import pytest

from policyc.compiler.frontend import check_text
from policyc.compiler.hashing import build_hash, policy_hash

BASE = """\
policy: h
version: 1
instruments: [ORCL]
params:
  fast: 12
  slow: 26
features:
  f: ema(close, fast)
  s: ema(close, slow)
signals:
  - when: crosses_above(f, s)
    target: 100
  - when: crosses_below(f, s)
    target: 0
risk:
  max_position: 500
  stop_loss: 3%
"""


def h(text: str, **params) -> str:
    return check_text(text, params or None).policy_hash


def test_formatting_comments_key_order_and_parentheses_keep_the_hash():
    variants = [
        BASE.replace("features:", "# a comment\nfeatures:  # another"),
        BASE.replace("ema(close, fast)", "ema( close ,fast )").replace("crosses_above(f, s)", "(crosses_above(f, s))"),
        BASE.replace("  fast: 12\n  slow: 26\n", "  slow: 26\n  fast: 12\n"),
        BASE.replace("  max_position: 500\n  stop_loss: 3%\n", "  stop_loss: 0.03\n  max_position: 500.0\n"),
        BASE.replace("instruments: [ORCL]", "instruments:\n  - ORCL"),
        BASE.replace("  - when: crosses_above(f, s)\n    target: 100",
                     "  - target: 100\n    when: \"crosses_above(f, s)\""),
        "risk:\n  stop_loss: 3%\n  max_position: 500\n" + BASE.split("risk:")[0],
        BASE.replace("target: 100", "target: (100)"),
    ]
    for text in variants:
        assert h(text) == h(BASE), text


@pytest.mark.parametrize("change", [
    ("ema(close, fast)", "sma(close, fast)"),           # an expression
    ("fast: 12", "fast: 13"),                           # a param value
    ("max_position: 500", "max_position: 400"),         # a limit
    ("stop_loss: 3%", "stop_loss: 3.5%"),
    ("target: 100", "target: 101"),
    ("version: 1", "version: 2"),
    ("instruments: [ORCL]", "instruments: [NVDA]"),
    ("risk:\n", "risk:\n  long_only: true\n"),          # a new limit
])
def test_any_change_of_meaning_changes_the_hash(change):
    old, new = change
    assert old in BASE
    assert h(BASE.replace(old, new)) != h(BASE)


def test_rule_order_changes_the_hash():
    rules = BASE.split("signals:\n")[1].split("risk:")[0]
    first, second = rules.split("  - when: crosses_below")
    swapped = BASE.replace(rules, "  - when: crosses_below" + second + first)
    assert h(swapped) != h(BASE)


def test_param_override_is_part_of_the_hash():
    assert h(BASE, fast=13) == h(BASE.replace("fast: 12", "fast: 13"))
    assert h(BASE, fast=12) == h(BASE)


def test_build_hash_changes_with_toolchain_versions():
    ph = h(BASE)
    base = {"policyc": "0.1.0", "python": "3.11.7", "numba": "0.60.0", "llvmlite": "0.43.0", "numpy": "2.0.0"}
    seen = {build_hash(ph, base)}
    for key in ("policyc", "numba", "llvmlite", "numpy"):
        seen.add(build_hash(ph, {**base, key: "9.9.9"}))
    assert len(seen) == 5
    assert build_hash(ph, base) == build_hash(ph, dict(base))
    assert check_text(BASE).build_hash == build_hash(ph)


def test_examples_have_distinct_hashes():
    root = Path(__file__).resolve().parent.parent / "policies"
    hashes = [check_text(p.read_text(), name=str(p)).policy_hash for p in sorted(root.glob("*.yaml"))]
    assert len(hashes) >= 5 and len(set(hashes)) == len(hashes)
