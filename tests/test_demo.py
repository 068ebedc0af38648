"""`make demo`'s live run against its backtest: with the feed in lockstep, the live run
over loopback sends the backtest's orders (`--fill same`) one by one and ends at its
equity; `demo.compare` says so, and names the first order that differs when one does."""
from __future__ import annotations

import copy

import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import compile_policy
from policyc.runtime import demo
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.demo import run_live_demo


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(backtest result, live decision log records, live status) of the demo."""
    policy = compile_policy(demo.EXAMPLE)
    log = tmp_path_factory.mktemp("demo") / "decisions.jsonl"
    status = run_live_demo(policy, demo.DATA, log)
    return demo.backtest(policy), read_log(log), status


def test_the_lockstep_live_run_agrees_with_the_backtest(both):
    result, records, status = both
    assert status["stalls"] == 0 and status["bad_messages"] == 0
    rows, why = demo.compare(result, records, status)
    assert all(backtest == live for _, backtest, live in rows), rows
    assert dict((name, b) for name, b, _ in rows)["orders"] == "105"
    assert why[0] == "orders: all 105 the same, one by one (decision time, instrument, quantity, fill price and fee)."
    assert why[1].startswith("final equity: the same")
    assert status["equity"] == pytest.approx(float(result.acct[L.A_EQUITY]), rel=1e-12)


def test_a_different_fill_is_named(both):
    result, records, status = both
    records = copy.deepcopy(records)
    fill = [r for r in records if r["kind"] == "fill"][9]
    fill["price"] += 1.0
    qty = next(r["qty"] for r in records if r.get("client_order_id") == fill["client_order_id"] and r["kind"] == "order")
    changed = {**status, "equity": status["equity"] - qty * 1.0}
    rows, why = demo.compare(result, records, changed)
    assert why[0].startswith("orders: the first difference is order 10: backtest ")
    assert f"filled at {fill['price']:.6g}" in why[0]
    assert why[1].startswith(f"final equity differs by {-qty:+,.2f}")
    assert dict((name, live) for name, _, live in rows)["final equity"] != dict(
        (name, b) for name, b, _ in rows)["final equity"]
