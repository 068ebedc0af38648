"""Each risk step of spec section 6 acting, with its reason code.

One policy carries every risk key but the volatility brake, each bound to a param whose
default leaves it inert; a test switches on the step it is about by a param override,
which reuses the compiled kernel. Its custom rules on the hour of the day (a block from
`block_from`, a liquidation from `close_at`; 24 never fires) and its initial equity are
params too, so the scenarios of exits that always leave share that kernel. (The brake
cannot be inert: while volatility is still unknown it refuses increases, so it has its
own policy. The overflowing tick's reasons must be those of max_drawdown alone, without
the lab's keys on notional and exposure: it runs on tests/test_live_faults.py's intent-only
policy, whose other limits never bind.) Every scenario also runs through the reference
interpreter.
"""
import math

import numpy as np
import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.interpret import Interpreter
from policyc.dsl.document import parse_policy_text
from test_live_faults import limits

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
  slip: 0
  block_from: 24
  close_at: 24
  eq: 100000
signals: []
risk:
  max_drawdown: dd
  stop_loss: sl
  take_profit: tp
  trailing_stop: trail
  max_daily_loss: mdl
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
    - {name: afternoon, when: hour(ts) >= block_from, action: block}
    - {name: session_end, when: hour(ts) >= close_at, action: liquidate}
account:
  initial_equity: eq
  slippage_bps: slip
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


def F(qty, price, inst=0, t=None):
    """A venue's fill (live mode), without fee."""
    return (L.FILL, inst, qty, price, t, 0.0)


def C(kind, t=None):
    """A control event: L.HALT or L.RESUME."""
    return (kind, 0, math.nan, math.nan, t)


def run(lab, rows, mode=L.FILL_SAME, **params):
    cp = lab.with_params(**params)
    assert cp.kernel is lab.kernel  # a param change never recompiles
    n = len(rows)
    ts = np.array([T0 + k * SEC if r[4] is None else r[4] for k, r in enumerate(rows)], dtype=np.int64)
    kind = np.array([r[0] for r in rows], dtype=np.int8)
    inst = np.array([r[1] for r in rows], dtype=np.int32)
    vals = np.array([[r[2], r[3], r[5] if len(r) > 5 else math.nan] for r in rows], dtype=np.float64)
    ev = Events(ts, kind, inst, vals)
    res = cp.run(ev, mode, trace=True)
    ref = Interpreter(cp.program, cp.params, cp.checked.risk, cp.checked.account, len(cp.instruments),
                      mode).run(ts, kind, inst, vals)
    assert [(int(o[L.O_EVENT]), o[L.O_QTY], int(o[L.O_REASONS]), bool(o[L.O_EXIT])) for o in res.orders] == \
        [(o.event, o.qty, o.reasons, o.exit) for o in ref.orders]
    decided = np.flatnonzero(res.trace[:, L.T_DESIRED] == res.trace[:, L.T_DESIRED])
    assert [(e, int(res.trace[e, L.T_REASONS])) for e in decided] == [(d["event"], d["reasons"]) for d in ref.trace]
    np.testing.assert_array_equal(res.equity, ref.equity_curve)
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
    rows = [M(100, 1000), M(95), M(89), M(90, 1000), C(L.RESUME), M(90, 500)]
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


VOL = """
policy: vol_lab
version: 1
instruments: [A]
inputs: [intent]
params:
  mv: 2%
signals: []
risk:
  max_volatility: mv
  volatility_window: 5
"""


@pytest.fixture(scope="module")
def vol_lab():
    return compile_policy(parse_policy_text(VOL, "vol_lab.yaml"))


def test_volatility_brake_blocks_increases_only(vol_lab):
    # the volatility of 5 returns is known from the 6th price on; until then it is unknown,
    # and an unknown volatility refuses increases like one over the limit
    calm = [M(100 + 0.01 * k) for k in range(1, 6)]
    wild = [M(p) for p in (110, 95, 112, 90, 115)]
    rows = [M(100, 50)] + calm + wild + [M(110, 80), M(110, 20)]
    res = run(vol_lab, rows)
    n = len(rows)
    assert [reasons_at(res, e) for e in range(5)] == [["volatility_unknown:blocked"]] * 5
    assert reasons_at(res, n - 2) == ["max_volatility:blocked"]
    assert orders(res) == [(5, 50, []), (n - 1, -30, [])]


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

    assert MAX_CUSTOM_RULES == L.MASK_BITS - len(L.REASONS)


# =====================================================================================
# Fail closed: a value a check needs that is not a finite number is a breach
# =====================================================================================
#: A drawdown limit of 10% on intents, on 10,000: tests/test_live_faults.py's intent-only
#: policy (`limits`), as tests/test_engine.py's live case of this tick, so the three share
#: one kernel (a key's value is a kernel argument, not code). Its other limits are where
#: they never bind (a million units and orders, no fees).
HUGE_TICK = limits("X", max_drawdown="10%", initial_equity=10000)


@pytest.fixture(scope="module")
def huge_tick():
    return compile_policy(parse_policy_text(HUGE_TICK, "huge_tick.yaml"))


@pytest.mark.parametrize("mode", [L.FILL_SAME, L.LIVE], ids=["same", "live"])
def test_a_price_that_overflows_equity_trips_the_kill_switch(huge_tick, mode):
    """Long 100 at 50, then a tick at 1e308: equity and peak overflow to inf, and the
    drawdown (inf - x) / inf would be NaN, false against every limit. The kill switch
    trips on that tick (equity_invalid:halt) and stays tripped at 40, 25, 10 and 5; its
    liquidation is not sent at 1e308 (a notional past float64), but at the next sane price."""
    rows = [M(50, 100)] + ([F(100, 50)] if mode == L.LIVE else []) + [M(p) for p in (1e308, 40, 25, 10, 5)]
    res = run(huge_tick, rows, mode)
    tick = len(rows) - 5
    assert reasons_at(res, tick) == ["kill_switch:halt", "equity_invalid:halt", "notional_invalid:blocked"]
    assert [reasons_at(res, e) for e in range(tick + 1, len(rows))] == [["kill_switch:halt"]] * 4
    assert orders(res) == [(0, 100, []), (tick + 1, -100, ["kill_switch:halt"])]
    assert res.orders[1, L.O_EXIT] == 1.0
    session = huge_tick.session(mode)
    ev = Events(np.array([T0 + k * SEC for k in range(len(rows))], np.int64), np.array([r[0] for r in rows], np.int8),
                np.zeros(len(rows), np.int32), np.array([[r[2], r[3], r[5] if len(r) > 5 else math.nan] for r in rows]))
    session.feed(ev)
    assert session.acct[L.A_HALTED] == 1.0                                # tripped, never fails open
    if mode == L.FILL_SAME:
        assert res.equity[-1] == 10000 - 100 * 50 + 100 * 40              # liquidated at 40: 9,000


def test_kill_switch_trips_when_drawdown_is_undefined(lab):
    """Short 1000 at 100, then 300: equity -100,000 trips the kill switch. `resume` makes
    that the peak, and a drawdown from a peak at or below 0 is undefined: it trips again
    at once instead of letting the account trade."""
    rows = [M(100, -1000), M(300), C(L.RESUME), M(300, 10)]
    res = run(lab, rows, dd=1.0)
    assert orders(res) == [(0, -1000, []), (1, 1000, ["kill_switch:halt", "max_drawdown:halt", "stop_loss:exit"])]
    assert reasons_at(res, 3) == ["kill_switch:halt", "max_drawdown:halt"]


def test_an_exposure_that_overflows_refuses_increases(lab):
    """An open order of B marked at 1e303 makes the gross exposure inf (equity is still
    finite: the order is not filled); an increase on A is refused, not sized against inf."""
    rows = [M(100, 1e6, inst=1), M(1e303, inst=1), M(100, 10, inst=0)]
    res = run(lab, rows, L.LIVE)
    assert orders(res) == [(0, 1e6, [])]
    assert reasons_at(res, 2) == ["exposure_invalid:blocked"]


def test_lot_size_rounds_a_huge_order_toward_zero_not_through_int64(lab):
    """An order of 1e300 units rounded to lots of 1 stays 1e300 (rounding through an
    int64 would wrap it into a sell of 9.2e18)."""
    big = dict(mp=1e300, mpn=1e306, mge=1e306, mmu=1e300, moq=1e300, mon=1e306)
    assert orders(run(lab, [M(100, 1e300)], **big)) == [(0, 1e300, [])]


# =====================================================================================
# Event time: day counters and the rate bucket move forward only; nothing can overflow
# =====================================================================================
def test_an_earlier_day_never_resets_the_day_counters(lab):
    """max_orders_per_day 1: a tick at T, intent 10 (sent), intent 20 (blocked), a tick
    dated a day before T, a tick at T + 1 s: still only the one order that day."""
    rows = [M(100, t=T0), I(10, t=T0 + SEC // 10), I(20, t=T0 + SEC // 5), M(100, t=T0 - DAY), M(100, t=T0 + SEC)]
    res = run(lab, rows, mopd=1)
    assert orders(res) == [(1, 10, [])]
    assert [reasons_at(res, e) for e in (2, 3, 4)] == [["max_orders_per_day:blocked"]] * 3


def test_time_going_backwards_adds_no_tokens(lab):
    rows = [M(100, 1, t=T0), M(100, 2, t=T0 + SEC), M(100, 3, t=T0 - DAY), M(100, 3, t=T0 + 3 * SEC // 2),
            M(100, 3, t=T0 + 2 * SEC)]
    res = run(lab, rows, mops=1)
    assert [e for e, _, _ in orders(res)] == [0, 1, 4]
    assert reasons_at(res, 2) == reasons_at(res, 3) == ["max_orders_per_second:blocked"]


def test_a_leap_to_the_last_int64_nanosecond_raises_nothing_and_holds_the_day(lab):
    """Two orders on the day of int64's last nanosecond (which has no next day), then an
    event back at T: it is not a new day, so max_orders_per_day 2 blocks it."""
    last = np.iinfo(np.int64).max
    rows = [M(100, 1, t=T0), M(100, 2, t=last), M(100, 3, t=last), M(100, 4, t=T0 + SEC)]
    res = run(lab, rows, mopd=2, mops=2)
    assert [e for e, _, _ in orders(res)] == [0, 1, 2]
    assert reasons_at(res, 3) == ["max_orders_per_day:blocked"]


def test_a_decision_dated_before_its_data_is_stale(lab):
    res = run(lab, [M(100, 10, t=T0), I(20, t=T0 - SEC)])
    assert reasons_at(res, 1) == ["stale_after:blocked"]
    assert orders(res) == [(0, 10, [])]


# =====================================================================================
# Exits always leave
# =====================================================================================
HOUR = 3_600_000_000_000


def test_a_stop_that_meets_an_opposite_target_exits_on_its_own(lab):
    """Long 10 at 100 with a 5% stop; at 13:00 the price is 90 and the model asks for -10.
    The exit leaves as its own exempt order; the short re-entry is a separate order, which
    the afternoon block (from 13:00) drops. Exit 10 at 90, final equity 9,900 (of 10,000)."""
    closes = (100, 99, 96, 90, 85, 80)
    intent = (10, math.nan, math.nan, -10, math.nan, math.nan)
    rows = [M(c, x, t=T0 + (10 + k) * HOUR) for k, (c, x) in enumerate(zip(closes, intent))]
    res = run(lab, rows, sl=0.05, block_from=13, eq=10000)
    assert orders(res) == [(0, 10, []), (3, -10, ["stop_loss:exit"])]
    assert res.orders[1, L.O_EXIT] == 1.0 and res.orders[1, L.O_FILL_PRICE] == 90
    assert reasons_at(res, 3) == ["stop_loss:exit", "afternoon:blocked"]
    assert res.equity[-1] == 9900


def test_the_reentry_after_an_exit_is_a_separate_checked_order(lab):
    # long 100; the stop fires as the model asks for -50: exit -100 (exempt), then -50
    res = run(lab, [M(100, 100), M(90, -50)], sl=0.05)
    assert orders(res) == [(0, 100, []), (1, -100, ["stop_loss:exit"]), (1, -50, [])]
    assert res.orders[1:, L.O_EXIT].tolist() == [1.0, 0.0]
    assert res.trace[1, L.T_ORDER] == -150 and res.trace[1, L.T_TARGET] == -50
    # the re-entry meets every check: the day's single order is spent, the exit is not blocked
    res = run(lab, [M(100, 100), M(90, -50)], sl=0.05, mopd=1)
    assert orders(res) == [(0, 100, []), (1, -100, ["stop_loss:exit"])]
    assert reasons_at(res, 1) == ["stop_loss:exit", "max_orders_per_day:blocked"]


def test_a_liquidation_spends_the_desired_target(lab):
    """Bought on the model's 10 at 10:00, liquidated at 20:00 (the session_end rule); at
    the next session's first bar no rule fires and no intent arrives, so nothing re-opens."""
    rows = [M(100, 10, t=T0 + 10 * HOUR), M(101, t=T0 + 20 * HOUR), M(102, t=T0 + DAY + 10 * HOUR)]
    res = run(lab, rows, close_at=20)
    assert orders(res) == [(0, 10, []), (1, -10, ["session_end:exit"])]
    assert res.trace[2, L.T_DESIRED] == 0 and reasons_at(res, 2) == []


def test_resume_after_a_halt_starts_from_no_target(lab):
    rows = [M(100, 10), C(L.HALT), M(100), C(L.RESUME), M(101)]
    res = run(lab, rows)
    assert orders(res) == [(0, 10, []), (2, -10, ["kill_switch:halt"])]
    assert res.trace[4, L.T_DESIRED] == 0


def test_trailing_stop_best_price_starts_at_the_market_price(lab):
    """Bought at 100 with 1% slippage: filled at 101, but the best price starts at 100, so
    100.4 (below the fill, above the market) is not a 0.5% trailing-stop fall."""
    res = run(lab, [M(100, 10), M(100.4), M(99.8)], trail=0.005, slip=100)
    assert res.orders[0, L.O_FILL_PRICE] == 101
    assert orders(res) == [(0, 10, []), (2, -10, ["trailing_stop:exit"])]


def test_a_venue_fill_starts_the_best_price_at_the_market_too(lab):
    res = run(lab, [M(100, 10), F(10, 101), M(100.4), M(99.8)], L.LIVE, trail=0.005)
    assert orders(res) == [(0, 10, []), (3, -10, ["trailing_stop:exit"])]
