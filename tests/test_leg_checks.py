"""What `validate` says of a leg without a target and of a limit price that can never
let an order out (docs/commands.md, E006 and W006)."""
from __future__ import annotations

import pytest

from policyc.compiler.frontend import check_text
from policyc.dsl.diagnostics import PolicyError

HEAD = """\
policy: arb
version: 1
instruments: {bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}
params: {bottom: -1, slip: 0.01%}
risk: {max_position: 2}
signals:
"""


def check(signals: str):
    return check_text(HEAD + signals, name="arb.yaml").checked


def test_a_leg_without_a_target_is_told_how_to_write_one():
    with pytest.raises(PolicyError) as exc:
        check("  - when: cb.bid > bn.ask\n    legs:\n      bn: {limit: bn.ask}\n      cb: -1\n")
    (d,) = exc.value.diagnostics
    assert d.code == "E006" and "`signals.0.legs.bn`" in d.message
    assert d.help == "each leg needs `target: UNITS`, or the target alone: `bn: UNITS`"


@pytest.mark.parametrize("limit, shown", [("0", "0"), ("-5", "-5"), ("bottom", "-1"), ("-slip", "-0.0001")])
def test_a_constant_limit_at_or_below_zero_is_a_warning_on_a_rule_and_on_a_leg(limit, shown):
    checked = check(f"  - when: cb.bid > bn.ask\n    target: 1\n    limit: {limit}\n"
                    f"  - when: bn.bid > cb.ask\n    legs:\n      bn: {{target: -1, limit: {limit}}}\n      cb: 1\n")
    found = [(d.code, d.span.line, d.message) for d in checked.warnings if d.code == "W006"]
    blocked = "is blocked (`limit_invalid:blocked`)"
    assert found == [("W006", 9, f"this limit price is {shown}: every order of the rule {blocked}"),
                     ("W006", 12, f"this limit price is {shown}: every order of leg `bn` {blocked}")]


@pytest.mark.parametrize("limit", ["100", "slip", "bn.ask * (1 + slip)", "-bottom"])
def test_a_positive_or_computed_limit_is_not_warned_of(limit):
    checked = check(f"  - when: cb.bid > bn.ask\n    target: 1\n    limit: {limit}\n")
    assert not [d for d in checked.warnings if d.code == "W006"]


@pytest.mark.parametrize("leg, code, where, says", [
    ("bn: ~", "E007", "`signals.0.legs.bn`", "an expression (the leg's target) or a mapping with `target` (and `limit`), "
                                             "not nothing (null)"),
    ("bn: [1]", "E003", "`signals.0.legs.bn`", "an expression (the leg's target) or a mapping with `target` (and "
                                               "`limit`), not a list"),
    ("bn: {target: ~}", "E007", "`signals.0.legs.bn.target`", "an expression, not nothing (null)"),
])
def test_a_leg_of_the_wrong_kind_is_told_what_a_leg_is(leg, code, where, says):
    with pytest.raises(PolicyError) as exc:
        check(f"  - when: cb.bid > bn.ask\n    legs:\n      {leg}\n      cb: -1\n")
    (d,) = exc.value.diagnostics
    assert (d.code, d.message) == (code, f"{where} must be {says}")
