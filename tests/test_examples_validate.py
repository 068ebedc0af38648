"""The example policies in policies/ are valid, warning-free and together use the whole language."""
from __future__ import annotations

from pathlib import Path

import pytest

from policyc.compiler.builtins import FUNCTIONS
from policyc.cli import main
from policyc.compiler.frontend import diagnose
from policyc.dsl import expressions as ex
from policyc.dsl.document import CUSTOM_ACTIONS, RISK_KEYS

POLICIES = sorted((Path(__file__).parent.parent / "policies").glob("*.yaml"))
NAMES = [p.name for p in POLICIES]


def test_the_five_examples_exist():
    assert {"ema_cross.yaml", "rsi_reversion.yaml", "vol_sized.yaml", "ai_guard.yaml", "pairs.yaml"} <= set(NAMES)


@pytest.mark.parametrize("path", POLICIES, ids=NAMES)
def test_example_validates(path, capsys):
    result, diags = diagnose(path)
    assert result is not None, [f"{d.code} {d.span.line}:{d.span.column} {d.message}" for d in diags]
    assert diags == [], "examples must be free of warnings too"
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"ok {path} {result.policy_hash}"
    assert err == ""
    assert path.read_text().startswith("#"), "each example starts with a comment saying what it does"


def test_all_examples_in_one_call(capsys):
    assert main(["validate", *map(str, POLICIES)]) == 0
    out = capsys.readouterr().out
    assert out.count("\nok ") + out.startswith("ok ") == len(POLICIES)


def _checked():
    out = {}
    for path in POLICIES:
        result, _ = diagnose(path)
        assert result is not None, path
        out[path.name] = result.checked
    return out


def _nodes(parsed):
    exprs = [f.expr for f in parsed.features.values()]
    exprs += [r.when for r in parsed.signals] + [r.target for r in parsed.signals if r.legs is None]
    exprs += [r.limit for r in parsed.signals if r.limit is not None]
    exprs += [n for r in parsed.signals for leg in r.legs or () for n in (leg.target, leg.limit) if n is not None]
    exprs += [c.when for c in parsed.custom]
    exprs += [v.expr for v in (parsed.risk or {}).values()] + [v.expr for v in parsed.account.values()]
    for e in exprs:
        yield from ex.walk(e)


def test_examples_cover_the_language():
    checked = _checked()
    calls, arities, lookbacks, conds, percents, bool_params = set(), set(), 0, 0, 0, 0
    risk_keys, actions, account, ops = set(), set(), set(), set()
    for c in checked.values():
        p = c.parsed
        for n in _nodes(p):
            if isinstance(n, ex.Call):
                calls.add(n.func)
                arities.add((n.func, len(n.args)))
            lookbacks += isinstance(n, ex.Lookback)
            conds += isinstance(n, ex.Cond)
            percents += isinstance(n, ex.Number) and n.text.endswith("%")
            if isinstance(n, (ex.Binary, ex.Unary)):
                ops.add(n.op)
        bool_params += sum(isinstance(v, bool) for v in c.params.values())
        risk_keys |= set(p.risk or {})
        if p.custom:
            risk_keys.add("custom")
        actions |= {r.action for r in p.custom}
        account |= set(p.account)
    assert set(FUNCTIONS) - calls == set(), "every built-in function is used"
    assert {("change", 2), ("returns", 2), ("returns", 1)} <= arities
    assert lookbacks and conds and percents and bool_params
    assert set(RISK_KEYS) | {"custom"} == risk_keys, "every risk key is used"
    assert set(CUSTOM_ACTIONS) == actions
    assert {"initial_equity", "margin_rate", "fees_bps", "slippage_bps"} == account
    assert {"+", "-", "*", "/", "**", "<", "<=", ">", ">=", "==", "!=", "and", "or", "not"} <= ops


def test_example_shapes():
    checked = _checked()
    ai = checked["ai_guard.yaml"]
    assert "intent" in ai.inputs and ai.parsed.signals == []
    assert ai.risk["max_margin_usage"] == pytest.approx(0.30)
    assert ai.risk["max_volatility"] == pytest.approx(0.02)
    assert ai.risk["stale_after"] == pytest.approx(2.0)
    assert checked["pairs.yaml"].instruments == ["ORCL", "NVDA"]
    assert {"max_gross_exposure", "max_margin_usage"} <= set(checked["pairs.yaml"].risk)
    ema = checked["ema_cross.yaml"]
    assert ema.instruments == ["ORCL"]
    assert set(ema.risk) == {"long_only", "max_position", "max_order_qty", "stop_loss", "max_drawdown",
                             "max_orders_per_day"}
    assert {"take_profit", "trailing_stop"} <= set(checked["rsi_reversion.yaml"].risk)
