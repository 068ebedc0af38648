"""Contract sizes: an instrument's `multiplier` (money per point per unit held) and
`tick_size` (the grid of simulated fill prices), given in the map form of `instruments`.
Figures worked by hand for an ES-like contract (50 per point, ticks of 0.25), checked in
the kernel and in the reference interpreter; the checker's located errors; the hash."""
from __future__ import annotations

import math

import numpy as np
import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.emit import emit
from policyc.compiler.frontend import check_text
from policyc.compiler.interpret import Interpreter
from policyc.compiler.lower import lower
from policyc.compiler.passes import optimise
from policyc.compiler.semantics import on_tick
from policyc.dsl.diagnostics import PolicyError
from policyc.dsl.document import parse_policy_text

NS_S = 1_000_000_000
T0 = 1_700_000_000 * NS_S


def es_policy(risk: str = "  max_position: 5", target: str = "2", account: str = "  slippage_bps: 1\n  fees_bps: 1",
              instruments: str = '{es: {symbol: "CME:ES", multiplier: 50, tick_size: 0.25}}') -> str:
    return (f"policy: es_test\nversion: 1\ninstruments: {instruments}\nsignals:\n  - when: true\n"
            f"    target: {target}\nrisk:\n{risk}\naccount:\n{account}\n")


# Every case on the ES contract runs on one kernel: a distinct kernel source costs a Numba
# compile of seconds, and the source depends on which risk keys and features a policy has,
# not on their values, the target's (a param) or the account's. So `es_case` always has
# the four limits and the two features any case reads, and each case gives its own
# values; a limit it is not about is set where it never binds (`NO_LIMIT` money, 500
# contracts, a margin usage of 1,000,000%, 10,000 times equity: far above the 400% of 2
# contracts at 4,000 on 100,000 with a margin rate of 100%).
NO_LIMIT = 1e12
ES = '{es: {symbol: "CME:ES", multiplier: 50, tick_size: 0.25}}'


def es_case(target: float = 2, max_position: float = 5, max_position_notional: float = NO_LIMIT,
            max_order_notional: float = NO_LIMIT, max_margin_usage: str = "1000000%",
            account: str = "  slippage_bps: 1\n  fees_bps: 1") -> str:
    """`es_policy`'s case (target `t`, the same account and contract) on the shared kernel."""
    return (f"policy: es_test\nversion: 1\ninstruments: {ES}\nparams:\n  t: {target}\n"
            "features:\n  mu: margin_usage\n  up: unrealized_pnl\n"
            "signals:\n  - when: true\n    target: t\n"
            f"risk:\n  max_position: {max_position}\n  max_position_notional: {max_position_notional}\n"
            f"  max_order_notional: {max_order_notional}\n  max_margin_usage: {max_margin_usage}\n"
            f"account:\n{account}\n")


def generated_source(text: str) -> str:
    """The kernel source code generation gives a policy, without a Numba compile (the
    way test_cross_refs and test_risk_keys read it); test_the_cases_share_one_kernel
    checks it is the source `compile_policy` loads."""
    checked = check_text(text, name="es.yaml").checked
    return emit(optimise(lower(checked)), checked)


def run_both(text: str, prices: list[float], mode: int = L.FILL_NEXT):
    """The kernel's and the interpreter's orders and equity curve on one instrument."""
    cp = compile_policy(parse_policy_text(text, "es.yaml"))
    ts = T0 + np.arange(len(prices), dtype=np.int64) * 60 * NS_S
    ev = Events.market(ts, np.array(prices).reshape(-1, 1))
    res = cp.run(ev, mode)
    it = Interpreter(cp.program, cp.params, cp.checked.risk, cp.checked.account, 1, mode,
                     contracts=cp.checked.contract_table)
    it.run(ev.ts, ev.kind, ev.inst, ev.vals)
    np.testing.assert_array_equal(res.orders[:, [L.O_QTY, L.O_FILL_PRICE]],
                                  np.array([(o.qty, o.fill_price) for o in it.orders]).reshape(-1, 2))
    # the fee as each back end writes bps / 1e4 (the differential tests' tolerance)
    assert res.orders[:, L.O_FEE] == pytest.approx([o.fee for o in it.orders], rel=1e-12, nan_ok=True)
    assert res.equity == pytest.approx(it.equity_curve, rel=1e-12)
    return cp, res


def test_es_fill_pnl_and_fees_worked_by_hand():
    # buy 2 at 4000.10 with 1 bp slippage: 4000.50001, up to the tick: 4000.75
    cp, res = run_both(es_case(), [4000.10, 4000.10, 4010.10, 4010.10])
    (qty, price, fee), = [(o[L.O_QTY], o[L.O_FILL_PRICE], o[L.O_FEE]) for o in res.orders]
    assert (qty, price) == (2.0, 4000.75)
    assert fee == pytest.approx(2 * 4000.75 * 50 * 1e-4)        # 40.0075: 1 bp of 400,075 notional
    # filled at event 1, marked at 4000.10: 2 x (4000.10 - 4000.75) x 50 = -65, less the fee
    assert res.equity[1] == pytest.approx(100_000 - 65 - 40.0075)
    # a 10-point move: 2 x 10 x 50 = 1,000
    assert res.equity[2] - res.equity[1] == pytest.approx(1000.0)


def test_a_sell_rounds_down():
    # sell 1 at 4000.10 with 1 bp slippage: 3999.69999, down to the tick: 3999.50
    cp, res = run_both(es_case(target=-1), [4000.10, 4000.10])
    assert res.orders[0, L.O_FILL_PRICE] == 3999.5


def test_tick_rounding_against_the_trader():
    assert on_tick(4000.50001, 0.25, True) == 4000.75
    assert on_tick(3999.69999, 0.25, False) == 3999.5
    assert on_tick(4000.25, 0.25, True) == 4000.25 and on_tick(4000.25, 0.25, False) == 4000.25
    assert on_tick(100.07, 0.01, True) == 100.07 and on_tick(100.07, 0.01, False) == 100.07  # on the grid
    assert on_tick(100.071, 0.01, True) == 100.08 and on_tick(100.079, 0.01, False) == 100.07
    assert on_tick(37.0, 5.0, True) == 40.0 and on_tick(37.0, 5.0, False) == 35.0
    assert on_tick(123.456, math.nan, True) == 123.456           # no tick size: as it is
    assert on_tick(0.2, 0.25, False) == 0.25 and on_tick(0.0001, 5.0, False) == 5.0  # never below one tick


def test_a_sell_below_one_tick_fills_at_one_tick_not_at_zero():
    # sell 1 at 0.20 (below ES's tick of 0.25): down to the grid would be 0, a sale for
    # nothing; it fills at the lowest price on the grid, in the kernel and the interpreter
    cp, res = run_both(es_case(target=-1), [0.20, 0.20])
    assert res.orders[0, L.O_FILL_PRICE] == 0.25


def test_max_position_notional_clips_with_the_multiplier():
    # 10 contracts at 4000 x 50 = 2,000,000; the limit of 500,000 allows 500,000 / 200,000 = 2.5
    cp, res = run_both(es_case(target=10, max_position=500, max_position_notional=500000, account="  fees_bps: 0"),
                       [4000.0, 4000.0])
    assert res.orders[0, L.O_QTY] == 2.5
    assert res.reasons_of(0) == ["max_position_notional:clipped"]   # and no other limit bound


def test_max_order_notional_and_margin_usage_with_the_multiplier():
    # margin: 50% of notional; 30% of 100,000 equity allows 60,000 of notional = 0.3 contracts
    cp, res = run_both(es_case(target=3, max_position=500, max_margin_usage="30%",
                               account="  margin_rate: 50%\n  initial_equity: 100000"), [4000.0, 4000.0])
    assert res.orders[0, L.O_QTY] == pytest.approx(0.3)
    assert res.reasons_of(0) == ["max_margin_usage:clipped"]
    cp, res = run_both(es_case(target=3, max_position=500, max_order_notional=100000, account="  fees_bps: 0"),
                       [4000.0, 4000.0])
    assert res.orders[0, L.O_QTY] == 0.5                        # 100,000 / (4,000 x 50)
    assert res.reasons_of(0) == ["max_order_notional:clipped"]


def test_margin_usage_and_unrealized_pnl_read_the_multiplier():
    cp = compile_policy(parse_policy_text(es_case(account="  margin_rate: 10%"), "es.yaml"))
    assert cp.feature_names[:2] == ["mu", "up"]
    ev = Events.market(T0 + np.arange(3, dtype=np.int64) * NS_S, np.array([[4000.0], [4000.0], [4001.0]]))
    res = cp.run(ev, L.FILL_NEXT, trace=True)
    mu, up = res.trace[2, L.TRACE_FIXED], res.trace[2, L.TRACE_FIXED + 1]
    assert up == 2 * (4001.0 - 4000.0) * 50                    # 100: entry at 4000 (no slippage)
    assert mu == pytest.approx(2 * 4001.0 * 50 * 0.1 / res.equity[2])  # 400,100 x 10% / equity


def test_several_instruments_keep_exact_totals_with_multipliers():
    text = ("policy: two\nversion: 1\n"
            'instruments: {es: {symbol: "CME:ES", multiplier: 50, tick_size: 0.25}, nq: "CME:NQ"}\n'
            "signals:\n  - when: true\n    target: 3\nrisk:\n  max_gross_exposure: 630000\n")
    cp = compile_policy(parse_policy_text(text, "two.yaml"))
    ts = T0 + np.arange(6, dtype=np.int64) * NS_S
    ev = Events.market(ts, np.array([[4000.0], [15000.0], [4000.0], [15000.0], [4010.0], [15010.0]]),
                       np.array([0, 1, 0, 1, 0, 1]))
    res = cp.run(ev, L.FILL_NEXT)
    it = Interpreter(cp.program, cp.params, cp.checked.risk, cp.checked.account, 2, L.FILL_NEXT,
                     contracts=cp.checked.contract_table)
    it.run(ev.ts, ev.kind, ev.inst, ev.vals)
    assert res.equity == pytest.approx(it.equity_curve, rel=1e-12)
    # es: 3 x 4000 x 50 = 600,000 fits; nq (multiplier 1) then has 30,000 left: 2 units of 15,000
    assert res.orders[0, L.O_QTY] == 3.0
    assert res.orders[1, L.O_QTY] == 2.0
    assert "max_gross_exposure:clipped" in res.reasons_of(1)
    assert res.equity[-1] == 100_000 + 3 * 10 * 50 + 2 * 10   # both up 10 points


@pytest.mark.parametrize("value, message", [
    ("multiplier: 0", "`instruments.es.multiplier` must be a number above 0, not 0"),
    ("multiplier: -5", "`instruments.es.multiplier` must be a number above 0, not -5"),
    ("tick_size: 0", "`instruments.es.tick_size` must be a number above 0, not 0"),
    ("multiplier: close", "`multiplier` must be a constant; `close` is not a param"),
    ("multiplier: 2s", "`instruments.es.multiplier` is not a duration; give a number"),
    ("multiplier: true", "`instruments.es.multiplier` must be a number, not true/false"),
    ("multiplyer: 50", "unknown key `multiplyer` in `instruments.es`"),
])
def test_bad_contract_values_are_located(value, message):
    text = es_policy(instruments=f'{{es: {{symbol: "CME:ES", {value}}}}}')
    with pytest.raises(PolicyError) as exc:
        check_text(text, name="es.yaml")
    d = exc.value.diagnostics[0]
    assert d.message == message
    assert d.span.line == 3 and d.span.column > 20  # at the value or key, not at `instruments`


def test_a_missing_symbol_is_located():
    with pytest.raises(PolicyError) as exc:
        check_text(es_policy(instruments="{es: {multiplier: 50}}"), name="es.yaml")
    assert [d.message for d in exc.value.diagnostics] == ["missing required key `symbol` in `instruments.es`"]


def test_params_bind_contract_values_and_the_hash_changes_only_when_given():
    plain = check_text(es_policy(instruments='{es: "CME:ES"}'), name="es.yaml")
    table = check_text(es_policy(instruments='{es: {symbol: "CME:ES"}}'), name="es.yaml")
    assert plain.policy_hash == table.policy_hash  # a table without settings means the same
    given = check_text(es_policy(instruments='{es: {symbol: "CME:ES", multiplier: 50}}'), name="es.yaml")
    assert given.policy_hash != plain.policy_hash
    text = es_policy(instruments='{es: {symbol: "CME:ES", multiplier: 2 * k}}').replace(
        "signals:", "params:\n  k: 25\nsignals:")
    (multiplier, tick), = check_text(text, name="es.yaml").checked.contract_table
    assert multiplier == 50.0 and math.isnan(tick)


def test_a_policy_without_contracts_generates_no_contract_code():
    # the generated source alone is the subject: no Numba compile of either kernel.
    # A kernel reads the multiplier as the local `p_mult` or, where it is not a local (in
    # the event loop), as its pstate cell: `"p_mult" not in source` alone holds for the
    # one-instrument kernel even with a multiplier, so the cell is checked too
    mult_cell = f"pstate[i, {L.P_MULT}]"
    source = generated_source(es_policy(instruments='{es: "CME:ES"}'))
    assert "p_mult" not in source and mult_cell not in source and "on_tick" not in source
    source = generated_source(es_policy(instruments='{es: {symbol: "CME:ES", tick_size: 0.25}}'))
    assert "p_mult" not in source and mult_cell not in source and "on_tick" in source
    # the control: the shared ES kernel, given both, reads both
    source = generated_source(es_case())
    assert mult_cell in source and "on_tick" in source


def test_the_cases_share_one_kernel():
    """What keeps this file at two compiles: the ES cases differ in values only, so they
    load one kernel; and `generated_source` is the source `compile_policy` loads."""
    cases = [es_case(), es_case(target=-1), es_case(target=10, max_position=500, max_position_notional=500000,
                                                    account="  fees_bps: 0"),
             es_case(target=3, max_margin_usage="30%", account="  margin_rate: 50%\n  initial_equity: 100000")]
    compiled = [compile_policy(parse_policy_text(text, "es.yaml")) for text in cases]
    assert all(cp.kernel is compiled[0].kernel for cp in compiled)
    assert compiled[0].source == generated_source(cases[0])
