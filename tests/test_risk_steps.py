"""Each risk step of spec section 6 acting, with its reason code.

One policy carries every risk key, each bound to a param whose default leaves it
inert; a test switches on the step it is about by a param override, which reuses the
compiled kernel. Every scenario also runs through the reference interpreter.
"""
import math

import numpy as np
import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.interpret import Interpreter
from policyc.dsl.document import parse_policy_text

LAB = """
policy: risk_lab
version: 1
instruments: [A, B]
inputs: [intent]
params:
  dd: 1.0
  sl: 1.0
  tp: 1000
  trail: 1.0
  mdl: 1.0
  mv: 1000
  lo: false
  mp: 1e9
  mpn: 1e15
  mge: 1e15
  mmu: 1000
  lot: 1
  minq: 1e-9
  moq: 1e9
  mon: 1e15
  collar: 1000
  mopd: 1e9
  mops: 1e9
  blk: false
  ro: false
  liq: false
  hlt: false
signals: []
risk:
  max_drawdown: dd
  stop_loss: sl
  take_profit: tp
  trailing_stop: trail
  max_daily_loss: mdl
  max_volatility: mv
  volatility_window: 5
  stale_after: 1d
  long_only: lo
  max_position: mp
  max_position_notional: mpn
  max_gross_exposure: mge
  max_margin_usage: mmu
  lot_size: lot
  min_order_qty: minq
  max_order_qty: moq
  max_order_notional: mon
  price_collar: collar
  max_orders_per_day: mopd
  max_orders_per_second: mops
  custom:
    - {name: no_new_orders, when: blk, action: block}
    - {name: wind_down, when: ro, action: reduce_only}
    - {name: get_out, when: liq, action: liquidate}
    - {name: stop_all, when: hlt, action: halt}
account:
  initial_equity: 100000
"""
DAY = 86_400_000_000_000
SEC = 1_000_000_000
T0 = 1_704_153_600_000_000_000  # 2024-01-02 00:00 UTC


@pytest.fixture(scope="module")
def lab():
    return compile_policy(parse_policy_text(LAB, "risk_lab.yaml"))


def M(price, intent=math.nan, inst=0, t=None):
    return (L.MARKET, inst, price, intent, t)


def I(target, inst=0, t=None):
    return (L.INTENT, inst, target, math.nan, t)


def run(lab, rows, mode=L.FILL_SAME, **params):
    cp = lab.with_params(**params)
    assert cp.kernel is lab.kernel  # a param change never recompiles
    n = len(rows)
    ts = np.array([T0 + k * SEC if r[4] is None else r[4] for k, r in enumerate(rows)], dtype=np.int64)
    kind = np.array([r[0] for r in rows], dtype=np.int8)
    inst = np.array([r[1] for r in rows], dtype=np.int32)
    vals = np.array([[r[2], r[3]] for r in rows], dtype=np.float64)
    ev = Events(ts, kind, inst, vals)
    res = cp.run(ev, mode, trace=True)
    ref = Interpreter(cp.program, cp.params, cp.checked.risk, cp.checked.account, 2, mode).run(ts, kind, inst, vals)
    assert [(int(o[L.O_EVENT]), o[L.O_QTY], int(o[L.O_REASONS])) for o in res.orders] == \
        [(o.event, o.qty, o.reasons) for o in ref.orders]
    return res


def orders(res):
    """[(event, qty, [reasons])] for every order."""
    return [(int(o[L.O_EVENT]), float(o[L.O_QTY]), res.reasons_of(k)) for k, o in enumerate(res.orders)]


def reasons_at(res, e):
    return L.decode_reasons(res.trace[e, L.T_REASONS], res.reason_names)


def test_defaults_are_inert(lab):
    res = run(lab, [M(100, 10), M(101, 20), M(99, -5), M(100, 0)])
    assert orders(res) == [(0, 10, []), (1, 10, []), (2, -25, []), (3, 5, [])]


def test_kill_switch_on_drawdown_liquidates_and_holds_until_resume(lab):
    rows = [M(100, 1000), M(95), M(89), M(90, 1000), (L.RESUME, 0, math.nan, math.nan, None), M(90, 500)]
    res = run(lab, rows, dd=0.1)
    assert orders(res) == [(0, 1000, []), (2, -1000, ["kill_switch:halt", "max_drawdown:halt"]),
                           (5, 500, [])]
    assert reasons_at(res, 3) == ["kill_switch:halt"]
    assert res.orders[1, L.O_EXIT] == 1.0


def test_stop_loss_exits_and_locks_until_the_strategy_goes_flat(lab):
    rows = [M(100, 100), M(98), M(96.9), M(97), M(97, 0), M(97, 100)]
    res = run(lab, rows, sl=0.03)
    assert orders(res) == [(0, 100, []), (2, -100, ["stop_loss:exit"]), (5, 100, [])]
    assert reasons_at(res, 3) == ["stop_loss:blocked"]


def test_take_profit(lab):
    res = run(lab, [M(100, 100), M(104), M(105.1)], tp=0.05)
    assert orders(res)[-1] == (2, -100, ["take_profit:exit"])


def test_trailing_stop_follows_the_best_price(lab):
    res = run(lab, [M(100, 100), M(110), M(120), M(115), M(113.9)], trail=0.05)
    assert orders(res)[-1] == (4, -100, ["trailing_stop:exit"])


def test_short_stop_loss(lab):
    res = run(lab, [M(100, -100), M(102), M(103.5)], sl=0.03)
    assert orders(res)[-1] == (2, 100, ["stop_loss:exit"])


def test_daily_loss_is_reduce_only_until_the_next_utc_day(lab):
    rows = [M(100, 1000, t=T0), M(94, t=T0 + SEC), M(94, 1500, t=T0 + 2 * SEC), M(94, 500, t=T0 + 3 * SEC),
            M(94, 800, t=T0 + DAY)]
    res = run(lab, rows, mdl=0.05)
    assert reasons_at(res, 2) == ["max_daily_loss:blocked"]
    assert orders(res) == [(0, 1000, []), (3, -500, []), (4, 300, [])]


def test_volatility_brake_blocks_increases_only(lab):
    calm = [M(100 + 0.01 * k) for k in range(6)]
    wild = [M(p) for p in (110, 95, 112, 90, 115)]
    rows = [M(100, 50)] + calm + wild + [M(110, 80), M(110, 20)]
    res = run(lab, rows, mv=0.02)
    n = len(rows)
    assert reasons_at(res, n - 2) == ["max_volatility:blocked"]
    assert orders(res) == [(0, 50, []), (n - 1, -30, [])]


def test_stale_instrument_is_reduce_only(lab):
    res = run(lab, [M(100, 10, t=T0), I(20, t=T0 + 2 * DAY)])
    assert reasons_at(res, 1) == ["stale_after:blocked"]
    assert orders(res) == [(0, 10, [])]


def test_long_only_forbids_short_targets(lab):
    res = run(lab, [M(100, 10), M(100, -50)], lo=True)
    assert orders(res) == [(0, 10, []), (1, -10, ["long_only:clipped"])]


def test_custom_rules(lab):
    assert orders(run(lab, [M(100, 10), M(100, 20)], blk=True)) == []
    res = run(lab, [M(100, 10), M(100, 20)], blk=True)
    assert reasons_at(res, 0) == ["no_new_orders:blocked"]
    res = run(lab, [M(100, 10)], ro=True)
    assert reasons_at(res, 0) == ["wind_down:blocked"]
    res = run(lab, [M(100, 10), M(100, 10)], liq=True)
    assert orders(res) == []
    assert reasons_at(res, 0) == ["get_out:exit"]
    res = run(lab, [M(100, 10)], hlt=True)
    assert orders(res) == [] and reasons_at(res, 0) == ["stop_all:halt"]
    assert res.trace[0, L.T_TARGET] == 0


def test_custom_block_never_blocks_a_protective_exit(lab):
    res = run(lab, [M(100, 100), M(90)], sl=0.05)
    assert orders(res)[-1] == (1, -100, ["stop_loss:exit"])


def test_position_limits_clip_the_target(lab):
    assert orders(run(lab, [M(100, 100)], mp=50)) == [(0, 50, ["max_position:clipped"])]
    assert orders(run(lab, [M(100, -100)], mp=50)) == [(0, -50, ["max_position:clipped"])]
    assert orders(run(lab, [M(100, 100)], mpn=1000)) == [(0, 10, ["max_position_notional:clipped"])]


def test_gross_exposure_counts_every_instrument(lab):
    res = run(lab, [M(100, 100, inst=0), M(100, 100, inst=1)], mge=15000)
    assert orders(res) == [(0, 100, []), (1, 50, ["max_gross_exposure:clipped"])]


def test_margin_usage_limit(lab):
    res = run(lab, [M(100, 1000)], mmu=0.3)
    assert orders(res) == [(0, 300, ["max_margin_usage:clipped"])]


def test_portfolio_limits_never_force_a_reduction(lab):
    res = run(lab, [M(100, 300), M(50, 300), M(200, 400)], mmu=0.3)
    assert orders(res) == [(0, 300, [])]
    assert reasons_at(res, 2) == ["max_margin_usage:clipped"]


def test_lot_size_rounds_toward_zero(lab):
    assert orders(run(lab, [M(100, 25), M(100, -7)], lot=10)) == [
        (0, 20, ["lot_size:clipped"]), (1, -20, ["lot_size:clipped"])]


def test_min_order_qty_blocks_dust_but_not_a_full_close(lab):
    res = run(lab, [M(100, 3), M(100, 10), M(100, 12), M(100, 0)], minq=5)
    assert orders(res) == [(1, 10, []), (3, -10, [])]
    assert reasons_at(res, 0) == ["min_order_qty:blocked"] and reasons_at(res, 2) == ["min_order_qty:blocked"]


def test_max_order_qty_splits_an_exit_over_events(lab):
    res = run(lab, [M(100, 100), M(100), M(100), M(100, 0), M(100), M(100)], moq=40)
    assert [q for _, q, _ in orders(res)] == [40, 40, 20, -40, -40, -20]
    assert orders(res)[0][2] == ["max_order_qty:clipped"]


def test_max_order_notional(lab):
    assert orders(run(lab, [M(100, 100)], mon=1000)) == [(0, 10, ["max_order_notional:clipped"])]


def test_price_collar_blocks_orders_on_a_price_jump(lab):
    res = run(lab, [M(100), M(110, 10), M(111, 10)], collar=0.05)
    assert reasons_at(res, 1) == ["price_collar:blocked"]
    assert orders(res) == [(2, 10, [])]


def test_orders_per_day(lab):
    rows = [M(100, q, t=T0 + k * SEC) for k, q in enumerate((1, 2, 3, 4))] + [M(100, 5, t=T0 + DAY)]
    res = run(lab, rows, mopd=2)
    assert [e for e, _, _ in orders(res)] == [0, 1, 4]
    assert reasons_at(res, 2) == ["max_orders_per_day:blocked"]


def test_orders_per_second_token_bucket(lab):
    rows = [M(100, 1, t=T0), M(100, 2, t=T0 + SEC // 10), M(100, 3, t=T0 + SEC // 5), M(100, 4, t=T0 + 2 * SEC)]
    res = run(lab, rows, mops=1)
    assert [e for e, _, _ in orders(res)] == [0, 3]
    assert reasons_at(res, 1) == ["max_orders_per_second:blocked"]


def test_rate_limits_never_block_a_protective_exit(lab):
    res = run(lab, [M(100, 100), M(100, 150), M(90)], mopd=1, sl=0.05)
    assert reasons_at(res, 1) == ["max_orders_per_day:blocked"]
    assert orders(res)[-1] == (2, -100, ["stop_loss:exit"])


def test_no_price_yet_blocks(lab):
    res = run(lab, [I(10), M(100)])
    assert reasons_at(res, 0) == ["no_price:blocked"]
    assert orders(res) == [(1, 10, [])]


def test_fill_next_fills_at_the_next_event_of_the_same_instrument(lab):
    res = run(lab, [M(100, 10, inst=0), M(50, inst=1), M(101, inst=0)], mode=L.FILL_NEXT)
    o = res.orders[0]
    assert o[L.O_FILL_EVENT] == 2 and o[L.O_FILL_PRICE] == 101


def test_orders_decided_between_two_events_all_fill_at_the_next_one(lab):
    res = run(lab, [M(100, 10), I(60), I(100), M(101)], mode=L.FILL_NEXT)
    assert [(int(o[L.O_EVENT]), o[L.O_QTY], int(o[L.O_FILL_EVENT])) for o in res.orders] == \
        [(0, 10, 3), (1, 50, 3), (2, 40, 3)]


def test_custom_rule_limit_matches_the_reason_mask():
    from policyc.compiler.check import MAX_CUSTOM_RULES

    assert MAX_CUSTOM_RULES == 53 - len(L.REASONS)
