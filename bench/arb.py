"""`make bench` section `arb`: the compiled policies/arbitrage.yaml over the bundled
two-venue quotes (examples/arbitrage/) against the same arbitrage hand-written in Numba.

`arb_hand` is the loop a quant writes for it: per event, update that venue's quote;
check the dislocation; send both legs as immediate-or-cancel limit orders; fill each at
its venue's next quote under the IOC rule; track positions and cash. Its orders (event,
instrument, quantity, limit price, fill event, fill price, fee) must equal the generated
kernel's before any timing counts. The target: `run_backtest` at most 1.3x the loop's
time per event, the median of interleaved runs.

`rows()` gives the printed table's rows and, among them, the target row (a dict
{"section", "target", "measured", "limit", "unit", "pass"}) and the raw figures for
reports/bench.json; `python bench/arb.py` prints them. Numba is imported here, so only
the bench process imports this module.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's own modules, also when loaded by path
from timing import KernelTimings, now  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "arbitrage.yaml"
EXAMPLE = ROOT / "examples" / "arbitrage"
DATA = {"bn": EXAMPLE / "binance-BTCUSDT.csv", "cb": EXAMPLE / "coinbase-BTC-USD.csv"}
SECTION = "arb"
LIMIT = 1.3      # run_backtest / hand loop, time per event
REPS = 31        # interleaved rounds; the run is a few ms, so many rounds for a stable median
BN, CB = 0, 1    # instrument indices, in the policy's order
NS_PER_DAY = 86_400_000_000_000


# Same compile options as the generated kernel (error_model="numpy": no ZeroDivision checks).
@njit(error_model="numpy", nogil=True, cache=False)
def arb_hand(ts, inst, vals, c_bid, c_ask, edge, units, slip, max_position, max_leg_imbalance, collar,
             max_drawdown, max_orders_per_day, fees_bps, slippage_bps, initial_equity,
             o_event, o_inst, o_qty, o_limit, o_fill_event, o_fill_price, o_fee):
    """Two venues of one symbol, binance (instrument 0) and coinbase (1), over merged
    events: inst[e] the venue, vals[e, 0] its mid (`price`), vals[e, c_bid] and
    vals[e, c_ask] its quote. Rules, the first that holds sets both legs' targets:

    coinbase bid > binance ask x (1 + edge)   -> long `units` on binance, short on coinbase
    binance bid > coinbase ask x (1 + edge)   -> the mirror image
    |coinbase mid / binance mid - 1| < edge/4 -> both flat, market orders

    When a rule holds, both venues decide (binance first); else only the event's venue,
    toward its last target. A rule sets no target while either leg has an order open or a
    position still to close after an imbalance (the legs move together). Each leg of an entry is an IOC limit `slip` beyond the quote
    seen; it fills whole at its venue's next quote when that quote's ask (a buy; the bid
    for a sell) is at or inside the limit, at that price moved by `slippage_bps` and
    capped at the limit, and is cancelled otherwise. A market order fills at the next
    quote's mid moved by the slippage. Risk: a drawdown of `max_drawdown` from peak
    equity halts (every decision then closes, at market); when the legs' net signed
    notional, sum of (position + open) x last mid, is beyond `max_leg_imbalance` (money),
    both legs are closed at market once no order of theirs is open; a venue with an order
    open sends nothing until it fills or is cancelled (the halt's liquidation waits too);
    targets are clipped
    to +-max_position; an entry is blocked when its limit is more than `collar` from its
    venue's mid, or when that mid moved more than `collar` since the venue's previous
    quote; orders that are not exits stop at max_orders_per_day a UTC day. Fees are fees_bps of each
    fill's notional.

    Orders go to the o_* arrays (sized by the caller; an unfilled IOC order gets its
    fill event, a NaN fill price and fee 0). Returns (events processed, number of
    orders, cash, binance position, coinbase position)."""
    n = ts.shape[0]
    capacity = o_event.shape[0]
    nan = np.nan
    inf = np.inf
    fee_rate = fees_bps / 1e4
    slip_fill = slippage_bps / 1e4
    cash = initial_equity
    equity = initial_equity
    peak = initial_equity
    halted = False
    day = -1
    orders_today = 0
    pos = np.zeros(2)
    open_qty = np.zeros(2)
    desired = np.zeros(2)
    leg_limit = np.full(2, nan)       # the limit of the target's orders; NaN: market orders
    flatten = np.zeros(2, np.bool_)   # closing a leg after the legs came apart
    last = np.full(2, nan)
    prev = np.full(2, nan)
    bid = np.full(2, nan)
    ask = np.full(2, nan)
    first = np.full(2, -1, np.int64)  # the range of order rows that may wait for a venue's next quote
    final = np.full(2, -1, np.int64)
    deciding = np.zeros(2, np.bool_)
    n_orders = 0
    e = 0
    while e < n:
        if n_orders + 2 > capacity:
            break
        i = inst[e]
        price = vals[e, 0]
        if not (price > 0.0 and price < inf):
            e += 1
            continue
        b = vals[e, c_bid]
        a = vals[e, c_ask]
        # 1. this venue's waiting orders: IOC at this quote, market at its mid
        if first[i] >= 0:
            for row in range(first[i], final[i] + 1):
                if o_inst[row] != i or o_fill_event[row] >= 0:
                    continue
                qty = o_qty[row]
                limit = o_limit[row]
                open_qty[i] -= qty
                o_fill_event[row] = e
                if limit == limit:
                    at = a if qty > 0.0 else b
                    if not (at > 0.0 and at < inf):
                        at = price
                    if not (at <= limit if qty > 0.0 else at >= limit):
                        o_fill_price[row] = nan     # cancelled
                        o_fee[row] = 0.0
                        continue
                    px = min(at * (1.0 + slip_fill), limit) if qty > 0.0 else max(at * (1.0 - slip_fill), limit)
                else:
                    px = price * (1.0 + slip_fill) if qty > 0.0 else price * (1.0 - slip_fill)
                fee = abs(qty) * px * fee_rate
                o_fill_price[row] = px
                o_fee[row] = fee
                cash -= qty * px + fee
                pos[i] += qty
            first[i] = -1
            final[i] = -1
        # 2. the venue's quote, the account
        prev[i] = last[i]
        last[i] = price
        bid[i] = b
        ask[i] = a
        equity = cash
        for k in range(2):
            if pos[k] != 0.0:
                equity += pos[k] * last[k]
        if equity > peak:
            peak = equity
        d = ts[e] // NS_PER_DAY
        if d > day:
            day = d
            orders_today = 0
        # 3. the rules; they set no target while a leg has an order open or a position to
        # flatten (the legs move together)
        fired = True
        settled = True
        for k in range(2):
            if open_qty[k] != 0.0 or (flatten[k] and pos[k] != 0.0):
                settled = False
        if bid[CB] > ask[BN] * (1.0 + edge):
            if settled:
                desired[BN] = units
                desired[CB] = -units
                leg_limit[BN] = ask[BN] * (1.0 + slip)
                leg_limit[CB] = bid[CB] * (1.0 - slip)
        elif bid[BN] > ask[CB] * (1.0 + edge):
            if settled:
                desired[BN] = -units
                desired[CB] = units
                leg_limit[BN] = bid[BN] * (1.0 - slip)
                leg_limit[CB] = ask[CB] * (1.0 + slip)
        elif abs(last[CB] / last[BN] - 1.0) < edge / 4.0:
            if settled:
                desired[BN] = 0.0
                desired[CB] = 0.0
                leg_limit[BN] = nan
                leg_limit[CB] = nan
        else:
            fired = False
        deciding[BN] = fired or i == BN
        deciding[CB] = fired or i == CB
        # the legs apart: both close, and both decide
        net = 0.0
        for k in range(2):
            if pos[k] + open_qty[k] != 0.0:
                net += (pos[k] + open_qty[k]) * last[k]
        if not abs(net) <= max_leg_imbalance:
            for k in range(2):
                flatten[k] = True
                desired[k] = 0.0
                leg_limit[k] = nan
                deciding[k] = True
        # 4. each deciding venue's order
        for k in range(2):
            if not deciding[k] or last[k] != last[k]:
                continue
            held = pos[k] + open_qty[k]
            target = desired[k]
            exit_ = False
            if not halted and not (peak > 0.0 and (peak - equity) / peak < max_drawdown):
                halted = True
            if open_qty[k] != 0.0:  # never netted against an IOC that may be cancelled, halted or not
                target = held
                exit_ = flatten[k] or halted
            elif halted:
                target = 0.0
                exit_ = True
            elif flatten[k]:
                if pos[k] != 0.0:
                    target = 0.0
                    exit_ = True
                else:
                    flatten[k] = False
            if abs(target) > max_position:
                target = max_position if target > 0.0 else -max_position
            order = target - held
            if order != 0.0 and prev[k] == prev[k] and abs(last[k] - prev[k]) > collar * prev[k]:
                order = 0.0
            limit = leg_limit[k]
            if order != 0.0 and limit == limit and not exit_:
                if not (limit > 0.0 and limit < inf) or abs(limit - last[k]) > collar * last[k]:
                    order = 0.0
            if order != 0.0 and not exit_ and orders_today >= max_orders_per_day:
                order = 0.0
            if order == 0.0:
                continue
            o_event[n_orders] = e
            o_inst[n_orders] = k
            o_qty[n_orders] = order
            o_limit[n_orders] = nan if exit_ else limit
            o_fill_event[n_orders] = -1
            o_fill_price[n_orders] = nan
            o_fee[n_orders] = 0.0
            if first[k] < 0:
                first[k] = n_orders
            final[k] = n_orders
            open_qty[k] += order
            orders_today += 1
            n_orders += 1
        e += 1
    return e, n_orders, cash, pos[0], pos[1]


def load(policy=None):
    """(compiled policy, events) of policies/arbitrage.yaml over the bundled data."""
    from policyc.compiler.build import compile_policy
    from policyc.runtime.backtest import load_events

    policy = policy or compile_policy(POLICY)
    events, _ = load_events(policy, [(name, str(path)) for name, path in DATA.items()])
    return policy, events


class ArbJob(KernelTimings):
    """The example three ways over one event batch: the hand loop, the generated kernel
    alone (Session.feed, one call) and run_backtest as `policyc backtest` runs it."""

    def __init__(self, policy, events):
        self.policy, self.events, self.n = policy, events, len(events)
        p, risk, acct = policy.params, policy.checked.risk, policy.checked.account
        cols = list(policy.columns)
        self.args = (cols.index("bid"), cols.index("ask"), float(p["edge"]), float(p["units"]), float(p["slip"]),
                     float(risk["max_position"]), float(risk["max_leg_imbalance"]), float(risk["price_collar"]),
                     float(risk["max_drawdown"]), int(risk["max_orders_per_day"]), float(acct["fees_bps"]),
                     float(acct["slippage_bps"]), float(acct["initial_equity"]))
        cap = self.n + 2
        self.out = (np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap), np.empty(cap),
                    np.empty(cap, np.int64), np.empty(cap), np.empty(cap))

    def time_hand(self) -> float:
        ev = self.events
        a = now()
        self.hand_result = arb_hand(ev.ts, ev.inst, ev.vals, *self.args, *self.out)
        return now() - a



    def check(self) -> list[str]:
        """Warm every path and compare their orders; returns the problems (none: parity)."""
        from policyc.compiler import layout as L

        self.time_hand(), self.time_kernel(), self.time_backtest()
        processed, count = self.hand_result[0], self.hand_result[1]
        o = self.backtest_result.orders
        k = self.kernel_session.orders[: self.kernel_session.n_orders]
        problems = []
        if processed != self.n:
            problems.append(f"hand loop stopped at event {processed} of {self.n}")
        if not (len(o) == len(k) == count):
            return problems + [f"order count: backtest {len(o)}, kernel {len(k)}, hand loop {count}"]
        for name, col, theirs in (("event", L.O_EVENT, self.out[0]), ("instrument", L.O_INST, self.out[1]),
                                  ("quantity", L.O_QTY, self.out[2]), ("limit price", L.O_LIMIT, self.out[3]),
                                  ("fill event", L.O_FILL_EVENT, self.out[4]),
                                  ("fill price", L.O_FILL_PRICE, self.out[5]), ("fee", L.O_FEE, self.out[6])):
            mine = theirs[:count]
            if not (np.array_equal(o[:, col], mine, equal_nan=True) and np.array_equal(k[:, col], o[:, col],
                                                                                       equal_nan=True)):
                bad = np.flatnonzero(~((o[:, col] == mine) | (np.isnan(o[:, col]) & np.isnan(mine.astype(float)))))
                problems.append(f"{name} differs, first at order {bad[0] if len(bad) else '?'}")
        return problems


def rows(reps: int = REPS) -> tuple[list, dict]:
    """(table rows with the target row among them, raw figures) of the section."""
    job = ArbJob(*load())
    problems = job.check()
    if problems:
        print("  PARITY FAILED -- kernel and hand loop disagree; the speed comparison is meaningless:")
        for p in problems:
            print("    " + p)
        raise SystemExit(1)
    n, count = job.n, len(job.backtest_result.orders)
    times = {"hand": [], "kernel": [], "backtest": []}
    for _ in range(reps):
        times["hand"].append(job.time_hand())
        times["kernel"].append(job.time_kernel())
        times["backtest"].append(job.time_backtest())
    print(f"  parity: ok ({count:,} orders: same events, instruments, quantities, limit prices, fill events, "
          "fill prices and fees)")
    out = []
    for key, what in (("hand", "hand-written @njit loop (bench/arb.py)"),
                      ("kernel", "generated kernel: Session.feed, one call"),
                      ("backtest", "run_backtest(record_equity=False): what backtest runs")):
        m = statistics.median(times[key])
        ratio = statistics.median([x / y for x, y in zip(times[key], times["hand"])])
        out.append([what, f"{m / n * 1e9:.1f}", f"{n / m / 1e6:.1f}", f"{ratio:.2f}x"])
    ratio = statistics.median([x / y for x, y in zip(times["backtest"], times["hand"])])
    out.append({"section": SECTION, "target": "run_backtest / hand loop, time per event", "measured": ratio,
                "limit": LIMIT, "unit": "x", "pass": ratio <= LIMIT})
    return out, {"events": n, "orders": count, **{k: [t / n * 1e9 for t in v] for k, v in times.items()}}


def main() -> int:
    figures, _ = rows()
    for r in figures:
        if isinstance(r, dict):
            print(f"{'PASS' if r['pass'] else 'MISS'}  {r['target']}: {r['measured']:.2f}{r['unit']} "
                  f"(limit {r['limit']}{r['unit']})")
        else:
            print("  ".join(str(c) for c in r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
