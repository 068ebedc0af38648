"""The ema_cross policy written by hand in Numba, as a trader would: one instrument,
plain local variables, no layout arrays. It is the yardstick for the generated kernel.

It implements exactly what policies/ema_cross.yaml means under the compiler's
semantics (spec sections 3-7), in the same arithmetic order as the generated kernel
so the two agree to the last bit:

features   fast = ema(close, fast_n), slow = ema(close, slow_n), both seeded with the SMA
           of the first n values; vol = population stdev of returns(close) over vol_n
           (running sums over a ring); crosses via the previous values.
signals    crosses_above(fast, slow) and vol < 2%  -> desired = size
           crosses_below(fast, slow)               -> desired = 0
risk       kill switch on max_drawdown, stop_loss (with lock until the desired target
           is 0 or reversed), long_only, max_position, max_order_qty, max_orders_per_day
           (protective exits and liquidations are never rate-limited).
account    equity = cash + position x last price, peak equity, UTC day roll, fees and
           slippage in bps of notional, market orders filled at the next event's price.

Numba is imported here, so only the parent bench process imports this module.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

NS_PER_DAY = 86_400_000_000_000


# Same compile options as the generated kernel (error_model="numpy": no ZeroDivision checks).
@njit(error_model="numpy", nogil=True, cache=False)
def ema_cross_hand(ts, vals, fast_n, slow_n, vol_n, size,
                   long_only, max_drawdown, stop_loss, max_position, max_order_qty, max_orders_per_day,
                   fees_bps, slippage_bps, initial_equity,
                   o_event, o_qty, o_price, o_fill_event, o_fill_price, o_fee):
    """Run over events (vals[:, 0] = price, vals[:, 1] = close). Orders go to the o_* arrays.

    Returns (events processed, number of orders, final equity, cash, position, halted,
    event index at which the kill switch tripped or -1).
    """
    n = ts.shape[0]
    capacity = o_event.shape[0]
    kf = 2.0 / (fast_n + 1)
    ks = 2.0 / (slow_n + 1)
    slip = slippage_bps / 1e4
    fee_rate = fees_bps / 1e4
    nan = np.nan

    # feature state
    f_cnt = 0
    f_sum = 0.0
    f_ema = 0.0
    s_cnt = 0
    s_sum = 0.0
    s_ema = 0.0
    prev_close = nan
    prev_fast = nan
    prev_slow = nan
    ring = np.zeros(vol_n)
    r_cnt = 0
    r_k = 0.0
    r_s1 = 0.0
    r_s2 = 0.0
    r_since = 0
    r_pos = 0

    # account and risk state
    cash = initial_equity
    equity = initial_equity
    peak = initial_equity
    halted = False
    halt_event = -1
    day = -1
    orders_today = 0
    pos = 0.0
    open_qty = 0.0
    entry = nan
    desired = 0.0
    lock = 0.0
    pending = -1
    n_orders = 0

    e = 0
    while e < n:
        if n_orders >= capacity:
            break
        price = vals[e, 0]
        if price > 0.0 and price < np.inf:
            # fill the order decided on the previous event, at this event's price
            if pending >= 0:
                qty = o_qty[pending]
                fill_price = price * (1.0 + slip) if qty > 0.0 else price * (1.0 - slip)
                fee = abs(qty) * fill_price * fee_rate
                o_fill_event[pending] = e
                o_fill_price[pending] = fill_price
                o_fee[pending] = fee
                pending = -1
                open_qty -= qty
                new = pos + qty
                cash -= qty * fill_price + fee
                if pos == 0.0 or pos * qty > 0.0:
                    if pos == 0.0:
                        entry = fill_price
                    else:
                        entry = (entry * abs(pos) + fill_price * abs(qty)) / abs(new)
                elif abs(qty) <= abs(pos):
                    if new == 0.0:
                        entry = nan
                else:
                    entry = fill_price
                pos = new

            # mark to market, then the UTC day roll
            equity = cash + pos * price if pos != 0.0 else cash
            if equity > peak:
                peak = equity
            d = ts[e] // NS_PER_DAY
            if d != day:
                day = d
                orders_today = 0

            # features
            close = vals[e, 1]
            if close != close:
                fast = nan
                slow = nan
            else:
                if f_cnt < fast_n:
                    f_cnt += 1
                    f_sum += close
                    if f_cnt == fast_n:
                        f_ema = f_sum / fast_n
                        fast = f_ema
                    else:
                        fast = nan
                else:
                    f_ema = ((close - f_ema) * kf) + f_ema
                    fast = f_ema
                if s_cnt < slow_n:
                    s_cnt += 1
                    s_sum += close
                    if s_cnt == slow_n:
                        s_ema = s_sum / slow_n
                        slow = s_ema
                    else:
                        slow = nan
                else:
                    s_ema = ((close - s_ema) * ks) + s_ema
                    slow = s_ema
            r = close / prev_close - 1.0
            if r != r:
                vol = nan
            else:
                r_cnt += 1
                if r_cnt == 1:
                    r_k = r
                gone = 0.0
                if r_cnt > vol_n:
                    gone = ring[r_pos] - r_k
                    r_s1 -= gone
                    r_s2 -= gone * gone
                ring[r_pos] = r
                r_pos += 1
                if r_pos == vol_n:
                    r_pos = 0
                d = r - r_k
                r_s1 += d
                r_s2 += d * d
                r_since += 1
                if r_cnt >= vol_n and (r_since >= vol_n or gone * gone > 1e3 * r_s2):
                    r_k = r
                    r_s1 = 0.0
                    r_s2 = 0.0
                    for j in range(vol_n):
                        d = ring[j] - r_k
                        r_s1 += d
                        r_s2 += d * d
                    r_since = 0
                if r_cnt >= vol_n:
                    m1 = r_s1 / vol_n
                    var = r_s2 / vol_n - m1 * m1
                    if var < 0.0:
                        var = 0.0
                    vol = math.sqrt(var)
                else:
                    vol = nan
            up = fast > slow and prev_fast <= prev_slow
            down = fast < slow and prev_fast >= prev_slow
            prev_close = close
            prev_fast = fast
            prev_slow = slow

            # signals
            if up and vol < 0.02:
                desired = size
            elif down:
                desired = 0.0

            # risk: desired target -> order
            q = pos + open_qty
            target = desired
            is_exit = False
            if not halted and peak > 0.0 and (peak - equity) / peak >= max_drawdown:
                halted = True
                halt_event = e
            if halted:
                target = 0.0
                is_exit = True
            if lock != 0.0 and (desired == 0.0 or desired * lock < 0.0):
                lock = 0.0
            triggered = False
            if lock == 0.0 and pos != 0.0:
                if (price <= entry * (1.0 - stop_loss)) if pos > 0.0 else (price >= entry * (1.0 + stop_loss)):
                    lock = 1.0 if pos > 0.0 else -1.0
                    triggered = True
            if lock != 0.0 and target * lock > 0.0:
                target = 0.0
                is_exit = True
            if triggered and target == 0.0:
                is_exit = True
            if long_only and target < 0.0:
                target = 0.0
            if abs(target) > max_position:
                target = math.copysign(max_position, target)
            order = target - q
            if abs(order) > max_order_qty:
                order = math.copysign(max_order_qty, order)
            if order != 0.0 and not is_exit and orders_today >= max_orders_per_day:
                order = 0.0
            if order != 0.0:
                o_event[n_orders] = e
                o_qty[n_orders] = order
                o_price[n_orders] = price
                o_fill_event[n_orders] = -1
                o_fill_price[n_orders] = nan
                o_fee[n_orders] = nan
                pending = n_orders
                n_orders += 1
                orders_today += 1
                open_qty += order
        e += 1
    return e, n_orders, equity, cash, pos, halted, halt_event


@njit(error_model="numpy", nogil=True, cache=False)
def ema_stop_bare(ts, vals, fast_n, slow_n, size, stop_loss, fees_bps, slippage_bps, initial_cash,
                  o_event, o_qty, o_fill_event, o_fill_price, o_fee):
    """The reference job as a quant writes it: EMA fast/slow crossover (long `size` on a cross
    above, flat on a cross below), a stop loss that holds the position flat until the next
    cross below, market orders filled at the next event's price. No equity curve, no day
    counters, no risk block beyond the stop: only what the strategy needs.

    vals[:, 0] = price, vals[:, 1] = close; orders go to the o_* arrays (sized by the
    caller). Returns (events processed, number of orders, cash, position, last price).
    """
    n = ts.shape[0]
    capacity = o_event.shape[0]
    kf = 2.0 / (fast_n + 1)
    ks = 2.0 / (slow_n + 1)
    slip = slippage_bps / 1e4
    fee_rate = fees_bps / 1e4
    nan = np.nan
    f_cnt = 0
    f_sum = 0.0
    f_ema = 0.0
    s_cnt = 0
    s_sum = 0.0
    s_ema = 0.0
    prev_fast = nan
    prev_slow = nan
    cash = initial_cash
    pos = 0.0
    entry = nan
    desired = 0.0
    locked = False
    pending = -1
    n_orders = 0
    last = nan
    e = 0
    while e < n:
        if n_orders >= capacity:
            break
        price = vals[e, 0]
        if price > 0.0 and price < np.inf:
            last = price
            if pending >= 0:
                qty = o_qty[pending]
                fill_price = price * (1.0 + slip) if qty > 0.0 else price * (1.0 - slip)
                fee = abs(qty) * fill_price * fee_rate
                o_fill_event[pending] = e
                o_fill_price[pending] = fill_price
                o_fee[pending] = fee
                pending = -1
                cash -= qty * fill_price + fee
                entry = fill_price if pos == 0.0 else (nan if pos + qty == 0.0 else entry)
                pos += qty
            close = vals[e, 1]
            fast = nan
            slow = nan
            if close == close:
                if f_cnt < fast_n:
                    f_cnt += 1
                    f_sum += close
                    if f_cnt == fast_n:
                        f_ema = f_sum / fast_n
                        fast = f_ema
                else:
                    f_ema = ((close - f_ema) * kf) + f_ema
                    fast = f_ema
                if s_cnt < slow_n:
                    s_cnt += 1
                    s_sum += close
                    if s_cnt == slow_n:
                        s_ema = s_sum / slow_n
                        slow = s_ema
                else:
                    s_ema = ((close - s_ema) * ks) + s_ema
                    slow = s_ema
            if fast > slow and prev_fast <= prev_slow:
                desired = size
            elif fast < slow and prev_fast >= prev_slow:
                desired = 0.0
            prev_fast = fast
            prev_slow = slow
            if locked and desired == 0.0:
                locked = False
            if not locked and pos > 0.0 and price <= entry * (1.0 - stop_loss):
                locked = True
            order = (0.0 if locked else desired) - pos
            if order != 0.0:
                o_event[n_orders] = e
                o_qty[n_orders] = order
                o_fill_event[n_orders] = -1
                pending = n_orders
                n_orders += 1
        e += 1
    return e, n_orders, cash, pos, last
