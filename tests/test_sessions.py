"""Trading days and sessions: a policy's `calendar` or `timezone` decides when its day
counters roll and what the session functions return, in the kernel and the interpreter
alike. The cases are worked by hand in the comments."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_checked
from policyc.compiler.frontend import check_text
from policyc.compiler.interpret import Interpreter
from policyc.compiler.sessions import K_CLOSE, K_DAY, K_IN, K_OFFSET, K_OPEN, Clock
from policyc.dsl.diagnostics import PolicyError


def ns(text: str) -> int:
    """ns since the epoch of a UTC time written as text."""
    return pd.Timestamp(text, tz="UTC").value


def epoch_day(text: str) -> int:
    return (pd.Timestamp(text) - pd.Timestamp("1970-01-01")).days


def compile_text(text: str):
    return compile_checked(check_text(text, name="policy.yaml"))


def policy(clock: str, risk: str, features: str = "") -> str:
    return f"""policy: days
version: 1
{clock}
instruments: [X]
inputs: [intent]
{features}
signals: []
risk:
{risk}
  max_position: 1000
  max_order_qty: 1000
account:
  initial_equity: 10000
"""


# Each distinct kernel source costs a Numba compile of seconds, and a calendar's or zone's
# name is not part of the source, only whether the policy has a clock at all. So every
# case below runs on one of two kernels with both day-counting limits and the session
# functions: `clocked` (any `calendar:` or `timezone:`) and `utc_days` (no clock: the
# default UTC-day code path, kept on a kernel of its own). The limit a case is not about
# is set where it never binds (1,000 orders a day; a daily loss of 50% on prices that
# move 3% at most), and its values are per case: risk values are kernel arguments, so a
# text differing only in them loads the same machine code.
INERT_LOSS = "50%"
INERT_ORDERS = 1000
SESSION_FEATURES = """features:
  since_open: minutes_since_open()
  to_close: minutes_to_close()
  open_now: if in_session() then 1 else 0
  wall_hour: hour(ts)"""


def clocked(clock: str, max_daily_loss: str = INERT_LOSS, max_orders_per_day: int = INERT_ORDERS):
    """The kernel of every case with a clock; traces SESSION_FEATURES (in that order)."""
    assert clock, "a clock: the no-clock path is `utc_days`"
    return compile_text(policy(clock, f"  max_daily_loss: {max_daily_loss}\n"
                                      f"  max_orders_per_day: {max_orders_per_day}", SESSION_FEATURES))


def utc_days(max_daily_loss: str = INERT_LOSS, max_orders_per_day: int = INERT_ORDERS):
    """The kernel of the cases without a clock (days are UTC days); no session functions."""
    return compile_text(policy("", f"  max_daily_loss: {max_daily_loss}\n"
                                   f"  max_orders_per_day: {max_orders_per_day}"))


def run_both(cp, times: list[str], prices: list[float], intents: list[float]):
    """The kernel's run and the interpreter's, fill `same`, over market events with an intent."""
    ev = Events.market(np.array([ns(t) for t in times]), np.column_stack([prices, intents]).astype(float))
    res = cp.run(ev, L.FILL_SAME, trace=True)
    it = Interpreter(cp.program, cp.params, cp.checked.risk, cp.checked.account, 1, L.FILL_SAME)
    it.run(ev.ts, ev.kind, ev.inst, ev.vals)
    kernel = [(int(o[L.O_EVENT]), float(o[L.O_QTY])) for o in res.orders]
    reference = [(o.event, o.qty) for o in it.orders]
    assert kernel == reference
    return res, it


# ---- the daily loss limit on an exchange calendar ------------------------------------
# XASX (Sydney) in January runs on AEDT, UTC+11: the session of Monday 2024-01-15 opens
# at 10:00 local = 2024-01-14 23:00 UTC and closes at 16:00 = 2024-01-15 05:00 UTC, so
# UTC midnight falls inside it. The next session opens 2024-01-15 23:00 UTC.
#
#  e  time (UTC)         price intent  with XASX                         on UTC days
#  0  01-14 23:30        100   100     day 01-15 opens at 10,000;        (UTC day 01-14)
#                                      buy 100 at 100
#  1  01-14 23:50         97   100     equity 9,700: loss 3% >= 2%,      same
#                                      the day's limit trips
#  2  01-15 00:10         97     0     reducing is allowed: sell 100     new UTC day, opens at
#                                                                        9,700: sell 100
#  3  01-15 00:30         97    50     same session: blocked             loss 0: buy 50
#  4  01-15 06:00         97    50     after the close, still the        (held at 50)
#                                      01-15 session: blocked
#  5  01-15 23:05         97    50     session 01-16 opens at 9,700:     (held at 50)
#                                      buy 50
TIMES = ["2024-01-14 23:30", "2024-01-14 23:50", "2024-01-15 00:10", "2024-01-15 00:30",
         "2024-01-15 06:00", "2024-01-15 23:05"]
PRICES = [100.0, 97.0, 97.0, 97.0, 97.0, 97.0]
INTENTS = [100.0, 100.0, 0.0, 50.0, 50.0, 50.0]
LOSS = "  max_daily_loss: 2%"   # for the checker's cases


def test_daily_loss_resets_at_the_session_open_not_at_utc_midnight():
    cp = clocked("calendar: XASX", max_daily_loss="2%")
    res, it = run_both(cp, TIMES, PRICES, INTENTS)
    assert [(int(o[L.O_EVENT]), o[L.O_QTY]) for o in res.orders] == [(0, 100.0), (2, -100.0), (5, 50.0)]
    # the trace's reasons say why events 3 and 4 made no order (and that 1 to 4 were reduce-only)
    bit = 1 << cp.reason_names.index("max_daily_loss:blocked")
    reasons = res.trace[:, L.T_REASONS].astype(np.int64)
    assert [bool(r & bit) for r in reasons[3:]] == [True, True, False]
    # the day-order limit (1,000) never bound: no event carries its reason
    orders_bit = 1 << cp.reason_names.index("max_orders_per_day:blocked")
    assert not any(r & orders_bit for r in reasons)


def test_the_same_events_on_utc_days_reset_at_midnight():
    res, _ = run_both(utc_days(max_daily_loss="2%"), TIMES, PRICES, INTENTS)
    assert [(int(o[L.O_EVENT]), o[L.O_QTY]) for o in res.orders] == [(0, 100.0), (2, -100.0), (3, 50.0)]


def test_clock_rows_of_the_asx_case():
    rows = Clock("XASX", None).columns(np.array([ns(t) for t in TIMES]))
    assert list(rows[:, K_DAY]) == [epoch_day("2024-01-15")] * 5 + [epoch_day("2024-01-16")]
    assert list(rows[:, K_OPEN]) == [ns("2024-01-14 23:00")] * 5 + [ns("2024-01-15 23:00")]
    assert list(rows[:, K_CLOSE]) == [ns("2024-01-15 05:00")] * 5 + [ns("2024-01-16 05:00")]
    assert list(rows[:, K_IN]) == [1, 1, 1, 1, 0, 1]
    assert set(rows[:, K_OFFSET]) == {11 * 3600 * 10**9}


def test_session_functions_in_kernel_and_interpreter():
    # e0 23:30 UTC is 10:30 AEDT: 30 minutes after the open, 330 before the close;
    # e4 06:00 UTC is an hour after the close: outside the session, -60 minutes to it
    cp = clocked("calendar: XASX", max_daily_loss="2%")
    res, it = run_both(cp, TIMES, PRICES, INTENTS)
    traced = res.trace[:, L.TRACE_FIXED:]
    assert traced[:, 0].tolist() == [30, 50, 70, 90, 420, 5]
    assert traced[:, 1].tolist() == [330, 310, 290, 270, -60, 355]
    assert traced[:, 2].tolist() == [1, 1, 1, 1, 0, 1]
    assert traced[:, 3].tolist() == [10, 10, 11, 11, 17, 10]  # wall-clock hours in Sydney
    reference = [d["features"] for d in it.trace]
    assert np.array_equal(traced, np.array(reference, dtype=float))


def test_a_lunch_break_is_outside_the_session():
    # XTKS: 09:00 to 15:00 JST with a break from 11:30 to 12:30 (in 2024; 00:00-06:00 UTC)
    rows = Clock("XTKS", None).columns(np.array([ns("2024-01-15 02:00"), ns("2024-01-15 02:45"),
                                                 ns("2024-01-15 03:30")]))
    assert list(rows[:, K_IN]) == [1, 0, 1]
    assert len(set(rows[:, K_DAY])) == 1


def test_a_half_day_closes_early():
    # XNYS closes at 13:00 ET (18:00 UTC) the day after Thanksgiving 2024
    rows = Clock("XNYS", None).columns(np.array([ns("2024-11-29 17:30"), ns("2024-11-29 18:30")]))
    assert list(rows[:, K_CLOSE]) == [ns("2024-11-29 18:00")] * 2
    assert list(rows[:, K_IN]) == [1, 0]


# ---- a time zone across a DST change -------------------------------------------------
# Europe/Berlin turns the clocks forward on 2024-03-31 at 02:00 CET: that local day runs
# from 2024-03-30 23:00 UTC to 2024-03-31 22:00 UTC, 23 hours. One order a day:
#
#  e  time (UTC)         Berlin            Berlin day: order?      UTC day: order?
#  0  03-30 22:30        23:30 CET 03-30   03-30: yes              03-30: yes
#  1  03-30 22:50        23:50 CET 03-30   03-30: no (second)      03-30: no
#  2  03-30 23:10        00:10 CET 03-31   03-31: yes              03-30: no
#  3  03-31 21:50        23:50 CEST 03-31  03-31: no               03-31: yes
#  4  03-31 22:10        00:10 CEST 04-01  04-01: yes              03-31: no
# With a fixed UTC+1 instead of the zone, event 4 would be 23:10 on 03-31 and get no order.
DST_TIMES = ["2024-03-30 22:30", "2024-03-30 22:50", "2024-03-30 23:10", "2024-03-31 21:50", "2024-03-31 22:10"]
DST_INTENTS = [10.0, 20.0, 20.0, 30.0, 30.0]
# Each case gives `max_orders_per_day: 1`; prices stay at 100, so the daily loss limit
# its kernel also carries never binds.


def test_a_timezone_day_across_a_dst_change():
    cp = clocked("timezone: Europe/Berlin", max_orders_per_day=1)
    res, _ = run_both(cp, DST_TIMES, [100.0] * 5, DST_INTENTS)
    assert [int(o[L.O_EVENT]) for o in res.orders] == [0, 2, 4]
    traced = res.trace[:, L.TRACE_FIXED:]
    # the 03-31 day starts at 23:00 UTC and is 23 hours (1,380 minutes) long
    assert traced[2, 0] == 10 and traced[3, 0] == 22 * 60 + 50 and traced[3, 1] == 10
    assert traced[:, 3].tolist() == [23, 23, 0, 23, 0]
    rows = Clock(None, "Europe/Berlin").columns(np.array([ns(t) for t in DST_TIMES]))
    assert rows[3, K_CLOSE] - rows[3, K_OPEN] == 23 * 3600 * 10**9
    assert list(rows[:, K_OFFSET] // 3600 // 10**9) == [1, 1, 1, 2, 2]


def test_the_same_events_on_utc_days():
    res, _ = run_both(utc_days(max_orders_per_day=1), DST_TIMES, [100.0] * 5, DST_INTENTS)
    assert [int(o[L.O_EVENT]) for o in res.orders] == [0, 3]


def test_live_one_event_at_a_time_gives_the_backtests_days():
    cp = clocked("calendar: XASX", max_daily_loss="2%")
    ev = Events.market(np.array([ns(t) for t in TIMES]), np.column_stack([PRICES, INTENTS]).astype(float))
    whole = cp.run(ev, L.FILL_SAME)
    s = cp.session(L.FILL_SAME)
    for e in range(len(ev)):
        s.feed(ev, start=e, stop=e + 1)
    assert np.array_equal(s.orders[: s.n_orders], whole.orders, equal_nan=True)  # a market order's limit is NaN


# ---- the checker ---------------------------------------------------------------------
def diagnostics(text: str):
    with pytest.raises(PolicyError) as info:
        check_text(text, name="policy.yaml")
    return info.value.diagnostics


def test_a_session_function_without_a_clock_is_located():
    text = policy("", LOSS, "features:\n  late: minutes_to_close() < 15")
    [d] = diagnostics(text)
    assert d.code == "E211" and (d.span.line, d.span.column) == (7, 9)
    assert "calendar: XNYS" in d.help


def test_unknown_calendar_and_zone_are_located_with_a_suggestion():
    [d] = diagnostics(policy("calendar: XNYZ", LOSS))
    assert d.code == "E007" and d.span.line == 3 and "did you mean" in d.help
    [d] = diagnostics(policy("timezone: Europe/Berln", LOSS))
    assert d.code == "E007" and d.span.line == 3 and "Europe/Berlin" in d.help


def test_every_clock_shares_one_kernel_and_no_clock_has_its_own():
    """What keeps this file at two compiles (see `clocked`): a calendar, a zone and the
    limits' values change the policy, not its kernel; having a clock or not does."""
    one = clocked("calendar: XASX", max_daily_loss="2%")
    assert all(cp.kernel is one.kernel and cp.policy_hash != one.policy_hash
               for cp in (clocked("timezone: Asia/Tokyo"), clocked("calendar: XNYS", max_orders_per_day=1)))
    assert utc_days().kernel is not one.kernel and utc_days().source != one.source


def test_the_clock_is_part_of_the_policy_hash():
    hashes = {check_text(policy(clock, LOSS)).policy_hash
              for clock in ("", "calendar: XASX", "timezone: Australia/Sydney")}
    assert len(hashes) == 3



def test_calendar_names_are_kept_so_validate_does_not_import_exchange_calendars(tmp_path):
    """The first process reads the names from exchange_calendars and keeps them in the
    cache folder, per version of the package; the next checks a `calendar:` without
    importing it (and pandas)."""
    import subprocess
    import sys

    import exchange_calendars

    code = ("import sys; from policyc.compiler.sessions import calendar_names; names = calendar_names(); "
            "print('XNYS' in names, 'exchange_calendars' in sys.modules)")
    env = {**os.environ, "POLICYC_CACHE": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs == ["True True\n", "True False\n"]
    (kept,) = tmp_path.glob("calendars-*.json")
    assert set(json.loads(kept.read_text())) == set(exchange_calendars.get_calendar_names(include_aliases=True))


@pytest.mark.parametrize("utc, tz, session, inside, minutes_since_open", [
    # XNYS in January: 09:30-16:00 New York = 14:30-21:00 UTC; 1 January 2024 is a holiday.
    ("2024-01-02 05:00", None, "2024-01-02", 0, -570),     # midnight New York: a daily bar of 2 January
    ("2024-01-03 13:00", None, "2024-01-03", 0, -90),      # 08:00 pre-market: the coming session
    ("2024-01-03 15:00", None, "2024-01-03", 1, 30),       # 10:00: inside
    ("2024-01-03 23:00", None, "2024-01-03", 0, 510),      # 18:00 after the close: the session that closed
    ("2024-01-06 15:00", None, "2024-01-05", 0, 1470),     # Saturday 10:00: Friday's session
    ("2024-01-01 15:00", None, "2023-12-29", 0, 4350),     # the holiday: the session before it
    # with `timezone:` too, session dates stay New York dates: 03:00 London on 2 January is
    # 22:00 New York on the 1st, a holiday, so the session before it
    ("2024-01-02 03:00", "Europe/London", "2023-12-29", 0, 5070),
])
def test_between_sessions_an_event_on_a_sessions_date_is_that_sessions(utc, tz, session, inside,
                                                                      minutes_since_open):
    row = Clock("XNYS", tz).columns(np.array([ns(utc)]))[0]
    assert (int(row[K_DAY]), int(row[K_IN])) == (epoch_day(session), inside)
    assert (ns(utc) - int(row[K_OPEN])) // 60_000_000_000 == minutes_since_open


def test_a_session_that_opens_the_evening_before_its_date_rolls_at_its_open():
    """CME equity futures (CMES): Monday 8 January's session opens Sunday 17:00 Chicago
    (23:00 UTC), before its date; Sunday 16:00 Chicago still belongs to Friday's session."""
    clock = Clock("CMES", None)
    rows = clock.columns(np.array([ns("2024-01-07 22:00"), ns("2024-01-07 23:30")]))
    assert [int(d) for d in rows[:, K_DAY]] == [epoch_day("2024-01-05"), epoch_day("2024-01-08")]
    assert [int(i) for i in rows[:, K_IN]] == [0, 1]


def test_daily_bars_at_midnight_each_count_on_their_own_session():
    """Daily bars stamped at New York midnight under XNYS: each bar's day is its own date,
    so `max_orders_per_day: 1` allows one order per bar and the day rolls on every bar
    (2 January to 5 January 2024). Intents flip the target each day, so every bar orders."""
    cp = clocked("calendar: XNYS", max_orders_per_day=1)
    days = ["2024-01-02 05:00", "2024-01-03 05:00", "2024-01-04 05:00", "2024-01-05 05:00"]
    res, _ = run_both(cp, days, [10.0, 11.0, 12.0, 13.0], [1.0, -1.0, 1.0, -1.0])
    assert [(int(o[L.O_EVENT]), o[L.O_QTY]) for o in res.orders] == [(0, 1.0), (1, -2.0), (2, 2.0), (3, -2.0)]


def test_times_outside_the_clocks_range_read_utc():
    """Under `timezone: Asia/Tokyo` (UTC+9), 03:00 UTC is noon in 2020, but in 1850 (before
    1900, where zone rules mean little) the hour reads UTC: 3. Kernel and interpreter
    (`hour(ts)` is SESSION_FEATURES' `wall_hour`, the fourth traced feature)."""
    cp = clocked("timezone: Asia/Tokyo")
    hour = cp.feature_names.index("wall_hour")
    res, it = run_both(cp, ["1850-06-01 03:00", "2020-06-01 03:00"], [10.0, 10.0], [0.0, 0.0])
    assert res.trace[:, L.TRACE_FIXED + hour].tolist() == [3.0, 12.0]
    assert [d["features"][hour] for d in it.trace] == [3.0, 12.0]
