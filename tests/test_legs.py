"""Multi-leg rules, IOC limit orders and `max_leg_imbalance`: values worked out by hand
event by event, each checked in the kernel and in the reference interpreter; the
checker's located errors; the engine's chained Decisions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.frontend import check_policy
from policyc.compiler.interpret import Interpreter
from policyc.dsl.diagnostics import PolicyError
from policyc.dsl.document import parse_policy_text
from policyc.runtime.backtest import run_backtest, summary
from policyc.runtime.engine import Engine, EngineError

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
NAN = math.nan
BN, CB = 0, 1

ARB = """\
policy: arbitrage
version: 1
instruments: {{bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}}
params: {{edge: 0.1%, units: 0.5, slip: 0.01%}}
signals:
  - when: cb.bid > bn.ask * (1 + edge)
    legs:
      bn: {{target: units, limit: bn.ask * (1 + slip)}}
      cb: {{target: -units, limit: cb.bid * (1 - slip)}}
  - when: abs(cb.bid / bn.ask - 1) < edge / 4
    legs: {{bn: 0, cb: 0}}
risk:
{risk}
account:
  slippage_bps: 2
"""

# (seconds, instrument, price, bid, ask)
OPEN = [(0, BN, 100.0, 99.9, 100.1), (1, CB, 100.0, 99.9, 100.1),
        # cb.bid 100.9 > 100.1 x 1.001 = 100.2001: both legs, bn first as written
        (2, CB, 101.0, 100.9, 101.1)]
BN_LIMIT = 100.1 * (1 + 0.0001)     # bn.ask x (1 + slip), as cb's event reads bn's latest ask
CB_LIMIT = 100.9 * (1 - 0.0001)     # cb.bid x (1 - slip)
SLIP = 2 / 1e4


def arb(risk: str = "  max_position: 2"):
    return compile_policy(parse_policy_text(ARB.format(risk=risk), "arbitrage.yaml"))


#: The policy of the tests of a risk key that acts on legs (`price_collar`,
#: `max_gross_exposure`, `max_leg_imbalance`) and of a limit that is no price: ARB with all
#: three keys present, so that they share one kernel (a key's value is a kernel argument,
#: its presence is code). Each test gives the key it is about a value that binds and the
#: other two values far beyond anything the tapes reach, so they never act. bn's limit is
#: `lim / den` while `fixed` is above 0, else ARB's own: the same number, bit for bit.
#: (The tests of the legs themselves keep ARB's own kernel, with none of these keys.)
GUARDED_RISK = """\
  max_position: 2
  price_collar: {collar}
  max_gross_exposure: {gross}
  max_leg_imbalance: {imbalance}"""
INERT = {"collar": "50%", "gross": "1000000000", "imbalance": "1000000000"}


def guarded(**risk):
    text = ARB.format(risk=GUARDED_RISK.format(**{**INERT, **risk}))
    text = text.replace("params: {", "params: {fixed: 0, lim: 0, den: 1, ").replace(
        "limit: bn.ask * (1 + slip)", "limit: if fixed > 0 then lim / den else bn.ask * (1 + slip)")
    return compile_policy(parse_policy_text(text, "arbitrage.yaml"))


def events(policy, tape) -> Events:
    n = len(tape)
    vals = np.full((n, len(policy.columns)), np.nan)
    for e, (_, _, price, bid, ask) in enumerate(tape):
        row = {"price": price, "bid": bid, "ask": ask}
        for j, c in enumerate(policy.columns):
            vals[e, j] = row[c]
    return Events(np.array([T0 + int(t * NS) for t, *_ in tape], dtype=np.int64), np.zeros(n, dtype=np.int8),
                  np.array([i for _, i, *_ in tape], dtype=np.int32), vals)


def both(policy, tape, mode=L.FILL_NEXT):
    """The order rows of the kernel, and the interpreter's as rows of the same columns:
    they must be the same (NaN where NaN), and the final positions too."""
    ev = events(policy, tape)
    res = run_backtest(policy, ev, mode, progress=False)
    it = Interpreter(policy.program, policy.params, policy.checked.risk, policy.checked.account, 2, mode)
    it.run(ev.ts, ev.kind, ev.inst, ev.vals)
    mine = np.array([[o.event, o.instrument, o.qty, o.price, o.target, o.desired, o.reasons, float(o.exit),
                      o.fill_event, o.fill_price, o.fee, o.limit] for o in it.orders]).reshape(-1, L.ORDER_WIDTH)
    np.testing.assert_array_equal(res.orders, mine)
    assert res.pstate[:, L.P_POS].tolist() == [b.position for b in it.books]
    assert res.pstate[:, L.P_OPEN].tolist() == [b.open for b in it.books]
    return res


def bit(code: str) -> int:
    return 1 << L.R[code]


def test_both_legs_leave_on_one_event_with_their_limit_prices():
    res = both(arb(), OPEN)
    o = res.orders
    assert o[:, L.O_EVENT].tolist() == [2, 2]
    assert o[:, L.O_INST].tolist() == [BN, CB]          # the legs in the order written
    assert o[:, L.O_QTY].tolist() == [0.5, -0.5]
    assert o[:, L.O_PRICE].tolist() == [100.0, 101.0]   # each leg's own last price
    assert o[:, L.O_LIMIT].tolist() == [BN_LIMIT, CB_LIMIT]
    assert o[:, L.O_FILL_EVENT].tolist() == [-1, -1]    # waiting for each one's next event


def test_an_ioc_buy_fills_at_the_ask_moved_by_slippage_capped_at_its_limit():
    # bn's next event asks 100.1: at the limit 100.11001 or below, so it fills; 100.1 x
    # 1.0002 = 100.12002 is above the limit, so the fill is at the limit
    res = both(arb(), OPEN + [(3, BN, 100.1, 100.0, 100.1)])
    fill = res.orders[0]
    assert (fill[L.O_FILL_EVENT], fill[L.O_FILL_PRICE]) == (3, BN_LIMIT)
    assert res.pstate[BN, L.P_POS] == 0.5 and res.pstate[BN, L.P_OPEN] == 0.0
    # a lower ask: 100.05 x 1.0002, under the limit, is the fill price
    res = both(arb(), OPEN + [(3, BN, 100.0, 99.95, 100.05)])
    assert res.orders[0, L.O_FILL_PRICE] == 100.05 * (1 + SLIP)


def test_an_ioc_sell_not_reached_is_cancelled_on_its_fill_event():
    # cb's next bid, 100.15, is below its limit 100.88991: cancelled there, nothing held.
    # No rule fires at 3 (100.15 <= 100.2001, and 100.15 / 100.1 - 1 >= 0.025%): cb's
    # desired target is still -0.5 with its limit, but bn's IOC is still open, so cb does
    # not send it again alone (the legs move together): order_open:blocked
    res = both(arb(), OPEN + [(3, CB, 100.2, 100.15, 100.25)])
    assert len(res.orders) == 2
    cancel = res.orders[1]
    assert cancel[L.O_FILL_EVENT] == 3 and math.isnan(cancel[L.O_FILL_PRICE]) and cancel[L.O_FEE] == 0.0
    assert res.pstate[CB, L.P_POS] == 0.0 and res.pstate[CB, L.P_OPEN] == 0.0
    assert res.pstate[CB, L.P_DESIRED] == -0.5 and res.reasons == {"order_open:blocked": 1}
    assert res.acct[L.A_FILLS] == 0.0
    s = summary(res)
    assert (s["orders"], s["fills"], s["cancels"]) == (2, 0, 1)
    # a bid at or above the limit fills at the bid moved by slippage, or at the limit
    res = both(arb(), OPEN + [(3, CB, 101.0, 100.95, 101.05)])
    assert res.orders[1, L.O_FILL_PRICE] == max(100.95 * (1 - SLIP), CB_LIMIT) == 100.95 * (1 - SLIP)


def test_with_fill_same_each_leg_fills_at_once_against_its_own_latest_quote():
    res = both(arb(), OPEN, L.FILL_SAME)
    # bn's leg is decided on cb's event: it buys at bn's latest ask, 100.1 from bn's event
    # at 0 (not at its price 100, the mid: that would be 100.02), moved by slippage to
    # 100.12002, above the limit 100.11001: the fill is at the limit. cb sells at its own
    # bid 100.9 x 0.9998 = 100.88982, under its limit 100.88991: at the limit too
    assert res.orders[:, L.O_FILL_EVENT].tolist() == [2, 2]
    assert res.orders[:, L.O_FILL_PRICE].tolist() == [BN_LIMIT, CB_LIMIT]
    # without slippage nothing is capped: bn buys at its ask 100.1 itself, cb sells at 100.9
    flat = compile_policy(parse_policy_text(ARB.format(risk="  max_position: 2").replace("slippage_bps: 2",
                                                                                          "slippage_bps: 0")))
    assert both(flat, OPEN, L.FILL_SAME).orders[:, L.O_FILL_PRICE].tolist() == [100.1, 100.9]


def test_a_limit_that_is_no_price_blocks_the_order():
    # bn's limit is lim / den: 0 / 0 is NaN, then -1 and 0 (one kernel, its params re-bound).
    # The invalid limit is caught before the collar looks at it (which, at 50%, would
    # block -1 and 0 as well): the reason is limit_invalid, not price_collar
    base = guarded()
    for lim, den in ((0, 0), (-1, 1), (0, 1)):
        res = both(base.with_params(fixed=1, lim=lim, den=den), OPEN)
        assert res.orders[:, L.O_INST].tolist() == [CB], (lim, den)     # bn's leg blocked, cb's went out
        assert res.reasons["limit_invalid:blocked"] == 1, (lim, den)
        assert "price_collar:blocked" not in res.reasons, (lim, den)


def test_the_price_collar_checks_a_limit_price():
    # bn's limit 100.11001 is 0.11% above its price 100, and bn has no previous price to
    # jump from: only its limit can trip the collar. (cb's price jumped 1%, from 100 to 101.)
    res = both(guarded(collar="0.1%"), OPEN)
    assert res.orders.shape[0] == 0 and res.reasons["price_collar:blocked"] == 2
    res = both(guarded(collar="1.5%"), OPEN)
    assert res.orders.shape[0] == 2 and "price_collar:blocked" not in res.reasons


def test_portfolio_limits_see_the_earlier_leg():
    # bn's 0.5 at 100 uses 50 of the 75; cb's leg has (75 - 50) / 101 units left
    res = both(guarded(gross="75"), OPEN)
    assert res.orders[:, L.O_QTY].tolist() == [0.5, -(75.0 - 50.0) / 101.0]
    assert res.orders[1, L.O_REASONS] == bit("max_gross_exposure:clipped")


def test_one_leg_filled_and_the_other_cancelled_flattens_the_filled_one():
    # event 3: bn fills (0.5 at its limit); event 4: cb's IOC is cancelled (bid 100.15 under
    # its limit), and the imbalance 0.5 x 100.1 = 50.05 is above 20: bn is flattened, an
    # exit of -0.5 with no limit; cb has nothing to flatten
    tape = OPEN + [(3, BN, 100.1, 100.0, 100.1), (4, CB, 100.2, 100.15, 100.25), (5, BN, 100.0, 99.9, 100.1)]
    res = both(guarded(imbalance="20"), tape)
    o = res.orders
    assert o[:, L.O_EVENT].tolist() == [2, 2, 4]
    flat = o[2]
    assert (flat[L.O_INST], flat[L.O_QTY], flat[L.O_EXIT], flat[L.O_REASONS]) == \
        (BN, -0.5, 1.0, bit("max_leg_imbalance:exit"))
    assert math.isnan(flat[L.O_LIMIT]) and flat[L.O_DESIRED] == 0.0
    assert (flat[L.O_FILL_EVENT], flat[L.O_FILL_PRICE]) == (5, 100.0 * (1 - SLIP))  # a market order
    assert res.pstate[:, L.P_POS].tolist() == [0.0, 0.0]
    assert res.pstate[:, L.P_FLATTEN].tolist() == [0.0, 0.0]  # bn's decision at 5 found it flat


def test_a_leg_whose_ioc_is_open_is_flattened_once_the_ioc_ends():
    # a limit of 0.1: at event 3 bn's fill leaves 0.5 x 100.1 - 0.5 x 101 = -0.45 with cb's
    # IOC still open. bn exits at once; cb is held (no order against its IOC) and records
    # the reason. Event 4: cb's IOC fills (bid 100.95), and cb, now -0.5, exits
    tape = OPEN + [(3, BN, 100.1, 100.0, 100.1), (4, CB, 101.0, 100.95, 101.05)]
    res = both(guarded(imbalance="0.1"), tape)
    o = res.orders
    assert [(int(r[L.O_EVENT]), int(r[L.O_INST]), r[L.O_QTY], r[L.O_EXIT]) for r in o] == \
        [(2, BN, 0.5, 0.0), (2, CB, -0.5, 0.0), (3, BN, -0.5, 1.0), (4, CB, 0.5, 1.0)]
    assert o[3, L.O_REASONS] == bit("max_leg_imbalance:exit")
    # decisions that recorded it: bn's exit and cb's hold at 3, bn's hold and cb's exit at 4
    assert res.reasons["max_leg_imbalance:exit"] == 4


def test_rules_and_legs_in_the_policy_hash_and_explain():
    from policyc.compiler.explain import explain
    from policyc.compiler.frontend import check_text

    a, b = arb(), arb("  max_position: 2\n")
    assert a.policy_hash == b.policy_hash
    swapped = ARB.format(risk="  max_position: 2").replace("cb.bid * (1 - slip)", "cb.bid * (1 - 2 * slip)")
    # checked, not compiled: compile_policy's hash is the check's (and needs no kernel of its own)
    assert check_policy(parse_policy_text(swapped)).policy_hash != a.policy_hash
    text = explain(check_text(ARB.format(risk="  max_position: 2")))
    assert "legs, in this order:" in text and "bn: target units (IOC limit bn.ask * (1 + slip))" in text


# ---- the checker ------------------------------------------------------------------------
BASE = """\
policy: p
version: 1
instruments: {bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}
signals:
  - when: cb.bid > bn.ask
RULE
risk:
  max_position: 2
"""


@pytest.mark.parametrize("rule, code, line, column, message", [
    ("    target: 1\n    legs: {bn: 1}", "E214", 7, 5, "a rule has both `target` and `legs`"),
    ("    legs: {bn: 1}\n    limit: 100", "E214", 7, 5, "a rule with `legs` has no `limit` of its own"),
    ("    legs: {}", "E214", 6, 11, "`legs` names no instrument"),
    ("    legs: {bnn: 1}", "E215", 6, 12, "leg `bnn` is not an instrument of the policy"),
    ("    legs: {bn: 1, \"binance:BTCUSDT\": 2}", "E215", 6, 19,
     "leg `binance:BTCUSDT` names instrument `binance:BTCUSDT` a second time"),
    ("    legs: {bn: cb.bid > 1}", "E204", 6, 16, None),
    ("    legs: {bn: {target: 1, limit: cb.bid > 1}}", "E204", 6, 35, None),
    ("    target: 1\n    limit: bn.bid > 0", "E204", 7, 12, None),
    ("    legs: {bn: {limit: 1}}", "E006", 6, 16, "missing required key `target` in `signals.0.legs.bn`"),
    ("    legs:", "E007", 6, 10, "`signals.0.legs` must be a mapping, not nothing (null)"),
])
def test_a_bad_rule_is_a_located_error(rule, code, line, column, message):
    with pytest.raises(PolicyError) as err:
        compile_policy(parse_policy_text(BASE.replace("RULE", rule), "p.yaml"))
    d = err.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.column) == (code, line, column), d.message
    assert message is None or d.message == message
    assert d.help or code == "E204"


def test_a_leg_named_by_its_symbol_is_that_instrument():
    """The checker's legs, and the generated kernel source (not Numba-compiled, which
    would cost a kernel of its own): the same as the policy's with the leg named `cb`."""
    from policyc.compiler.emit import emit
    from policyc.compiler.lower import lower
    from policyc.compiler.passes import optimise

    sources = []
    for legs in ('{"coinbase:BTC-USD": -1, bn: 1}', "{cb: -1, bn: 1}"):
        checked = check_policy(parse_policy_text(BASE.replace("RULE", f"    legs: {legs}"))).checked
        assert checked.rule_legs == [(CB, BN)] and checked.leg_set == (BN, CB), legs
        sources.append(emit(optimise(lower(checked)), checked))
    assert sources[0] == sources[1]


def test_max_leg_imbalance_without_a_multi_leg_rule_is_an_error():
    text = BASE.replace("RULE", "    target: 1") + "  max_leg_imbalance: 100\n"
    with pytest.raises(PolicyError) as err:
        compile_policy(parse_policy_text(text))
    d = err.value.diagnostics[0]
    assert (d.code, d.span.line) == ("E216", 9) and d.help


# ---- the engine -------------------------------------------------------------------------
def test_the_engine_chains_the_legs_decisions_on_then():
    policy = arb()
    engine = Engine(policy)
    for t, i, price, bid, ask in OPEN[:2]:
        assert engine.market(policy.instruments[i], T0 + t * NS, {"price": price, "bid": bid, "ask": ask}).then \
            is None
    t, i, price, bid, ask = OPEN[2]
    d = engine.market("coinbase:BTC-USD", T0 + t * NS, {"price": price, "bid": bid, "ask": ask})
    assert (d.instrument, d.order_qty, d.limit_price, d.approved_target) == ("binance:BTCUSDT", 0.5, BN_LIMIT, 0.5)
    assert (d.then.instrument, d.then.order_qty, d.then.limit_price, d.then.price) == \
        ("coinbase:BTC-USD", -0.5, CB_LIMIT, 101.0)
    assert d.then.then is None
    # the venue cancels cb's IOC: the runtime releases it as a reject
    engine.reject("coinbase:BTC-USD", T0 + 3 * NS, -0.5)
    assert engine.open_orders() == {"binance:BTCUSDT": 0.5, "coinbase:BTC-USD": 0.0}


def test_an_intent_may_carry_a_limit_price():
    # A policy with a rule's `limit` and intents: test_core_ioc's `limited`, so that the
    # suite compiles its kernel once (imported here, not at the top: test_core_ioc imports
    # this file). One market event of A: its sma of 8 prices is not warm, so no rule fires
    from test_core_ioc import LIMITED

    engine = Engine(compile_policy(parse_policy_text(LIMITED, "limited.yaml")))
    engine.market("A", T0, {"price": 100.0, "bid": 99.0, "ask": 101.0})
    d = engine.intent("A", T0 + NS, 1.0, limit_price=100.5)
    assert (d.order_qty, d.limit_price) == (1.0, 100.5)
    d = engine.intent("A", T0 + 2 * NS, 2.0, limit_price=-3.0)
    assert (d.order_qty, d.reasons) == (0.0, ("limit_invalid:blocked",))
    d = engine.intent("A", T0 + 3 * NS, 2.0)
    assert d.order_qty == 1.0 and math.isnan(d.limit_price)  # a market order


def test_a_limit_price_for_a_policy_of_market_orders_only_is_refused():
    # A policy with no `limit`, no `legs` and no intent input: test_cross_refs's `venues`,
    # so that the suite compiles its kernel once
    from test_cross_refs import VENUES

    engine = Engine(compile_policy(parse_policy_text(VENUES, "venues.yaml")))
    engine.market("binance:BTCUSDT", T0, {"price": 100.0, "close": 100.0, "bid": 99.0, "ask": 101.0})
    with pytest.raises(EngineError, match="market orders only"):
        engine.intent("binance:BTCUSDT", T0 + NS, 1.0, limit_price=100.0)


def test_a_backtest_counts_a_cancel_in_its_orders_csv(tmp_path):
    from policyc.runtime.backtest import write_orders

    policy = arb()
    res = run_backtest(policy, events(policy, OPEN + [(3, CB, 100.6, 100.5, 100.7)]), L.FILL_NEXT, progress=False)
    path = tmp_path / "orders.csv"
    write_orders(res, path)
    rows = path.read_text().splitlines()
    assert rows[1].endswith(f",{BN_LIMIT!r},open") and rows[2].endswith(f",{CB_LIMIT!r},cancelled")
    # the cancel's time (that of event 3, which cancelled it) and no fill price; the open order has no time
    cancelled_at = str(np.datetime64(int(res.events.ts[3]), "ns")) + "Z"
    assert int(res.orders[1, L.O_FILL_EVENT]) == 3 and rows[2].split(",")[1] == cancelled_at
    assert rows[2].split(",")[4] == "" and rows[1].split(",")[1] == ""
