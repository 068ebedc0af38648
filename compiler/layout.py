"""The kernel's data contract: event kinds, state columns, reason codes, config slots,
and the per-instrument feature-state layout for bound params.

Both back ends (the Numba kernel and the reference interpreter) and the runtime read
these tables, so an account or a decision means the same thing everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from policyc.dsl.risk_keys import ACCOUNT_KEYS, RISK_KEYS, RISK_STEPS

from .ir import Program, resolve_int

# ---- events ------------------------------------------------------------------------
MARKET, INTENT, FILL, REJECT, HALT, RESUME, DECIDE = range(7)
EVENT_KINDS = ("market", "intent", "fill", "reject", "halt", "resume", "decide")
#: For intent events vals[e, 0] is the proposed target and vals[e, 1] (when the events
#: have a second column) its limit price: NaN for market orders, else the IOC limit price
#: its orders carry (read by kernels that keep limits: a policy with a `limit`, `legs` or an
#: `intent` input); for fill events vals[e, 0..2] are qty (signed), price, fee; for reject
#: events vals[e, 0] is the rejected signed qty (an IOC's cancelled remainder is one too).

#: The largest magnitude a price, quantity, intent target or input value may have. Far
#: above any real market (prices and quantities both below 1e15 keep a notional under
#: 1e30 and an account sum of thousands of them finite), and far below float64's 1.8e308,
#: so no sum or product of accepted values can overflow and turn a limit off. Values
#: beyond it are refused where they enter: data files, feed messages and intents.
MAX_MAGNITUDE = 1e15

# ---- fill modes ----------------------------------------------------------------------
#: How a backtest fills an order (docs/language.md section 8): at the instrument's next
#: market event's price (FILL_NEXT), at once at the deciding event's price (FILL_SAME),
#: at the next bar's open with protective exits inside each bar (FILL_NEXT_OPEN), or at
#: the first market event at or after the decision time plus a latency (FILL_LATENCY);
#: LIVE takes fills from a venue.
FILL_NEXT, FILL_SAME, LIVE, FILL_NEXT_OPEN, FILL_LATENCY = range(5)
FILL_MODES = {"next": FILL_NEXT, "same": FILL_SAME, "live": LIVE, "next-open": FILL_NEXT_OPEN,
              "latency": FILL_LATENCY}

# ---- bars (bars[event, column]): a market event's open, high and low ------------------
BAR_OPEN, BAR_HIGH, BAR_LOW = range(3)
BAR_WIDTH = 3
BAR_FIELDS = ("open", "high", "low")

# ---- quotes: the market fields an IOC limit order fills against -----------------------
QUOTE_SIDES = ("bid", "ask")  # a buy at the ask, a sell at the bid

# ---- per-instrument account and risk state (pstate[inst, column]) -------------------
P_POS, P_OPEN, P_ENTRY, P_BEST, P_LAST, P_PREV, P_LAST_TS, P_DESIRED, P_LOCK, P_LOCK_CODE, \
    P_VOL, P_PENDING, P_PENDING_LAST, P_TRADE_PNL, P_MARK, P_GROSS, P_MULT, P_TICK, P_LIMIT, P_FLATTEN, \
    P_BID, P_ASK, P_HOLD, P_CUSTOM = range(24)
#: P_PENDING and P_PENDING_LAST: the first and the last order row of the instrument that
#: waits for a simulated fill (-1 when none), so its next market event looks at those rows
#: only, not at every order the other instruments sent since.
#: P_MARK and P_GROSS: the instrument's terms in the account's running totals (kernels of
#: several instruments only): position x last price (0 when flat) and
#: |(position + open quantity) x last price| (0 when both are flat), as last added; each
#: x the multiplier when the policy gives contracts one.
#: P_MULT and P_TICK: the instrument's contract (dsl/risk_keys.py CONTRACT_KEYS), constant
#: for the run: the multiplier (1 when not given) and the tick size (NaN: none).
#: P_LIMIT: the limit price of the desired target's orders (IOC limit orders): NaN when
#: they are market orders; a limit that is not a number is kept as -inf, as invalid (its
#: orders are blocked, `limit_invalid:blocked`). P_FLATTEN: 1.0 while `max_leg_imbalance`
#: flattens this leg (until it is flat with no open order), else 0.0.
#: P_BID and P_ASK: the bid and ask of the instrument's latest market event (NaN before
#: one, or where it had none), kept by kernels with multi-leg rules whose events carry a
#: quote: with --fill same, a leg's IOC order decided on another instrument's event fills
#: against them. P_HOLD: 1.0 when a multi-leg rule fired on this event but held its targets
#: (a leg of it had an order open or a position to flatten) and its target for this leg
#: differed from the leg's q: the leg's next decision records `order_open:blocked`.
P_NAMES = ("position", "open_qty", "entry_price", "best_price", "last_price", "prev_price", "last_ts",
           "desired", "lock", "lock_code", "volatility", "pending_order", "last_pending_order", "trade_pnl",
           "mark_term", "gross_term", "multiplier", "tick_size", "limit_price", "flatten", "last_bid", "last_ask",
           "rule_held")
#: |position| above this counts as holding one (a position summed back from fills may
#: leave dust of a few ulps).
HELD_EPSILON = 1e-12

# ---- account-wide state (acct[column]) ----------------------------------------------
A_CASH, A_PEAK, A_HALTED, A_DAY, A_DAY_OPEN, A_DAY_LOSS, A_ORDERS_TODAY, A_TOKENS, A_TOKEN_TS, \
    A_FEES, A_EQUITY, A_FILLS = range(12)
#: Statistics of the run, kept by the kernel as it goes (no per-event array is needed):
#: the equity curve's running peak, its lowest point since that peak and the largest
#: drawdown (fraction of the peak) of the equity after each event; daily returns of the
#: equity at the last event of each day, UTC or the policy clock's trading day (Welford's
#: running mean and sum of squared deviations, and the sum of squared negative returns),
#: the current day and the equity at the close of the one before; events after which a position was open, and
#: how many instruments hold one; closed round trips (flat to flat, a reversal closes
#: one), how many made money, and the summed P&L (after fees) of winners and of losers.
A_CURVE_PEAK, A_CURVE_TROUGH, A_MAX_DRAWDOWN, A_STAT_DAY, A_DAY_CLOSE, A_RET_N, A_RET_MEAN, A_RET_M2, \
    A_RET_DOWN2, A_EXPOSED, A_HELD, A_TRADES, A_WINS, A_WIN_PNL, A_LOSS_PNL = range(12, 27)
#: The running totals of a kernel of several instruments (docs/architecture.md, "Running
#: totals"): equity's terms (cash and every P_MARK) and gross exposure's terms (every
#: P_GROSS), each as an unevaluated sum hi + lo of its finite terms, a bound on what that
#: sum has dropped (err), and how many terms are not finite (bad).
A_MARK_HI, A_MARK_LO, A_MARK_ERR, A_MARK_BAD, A_GROSS_HI, A_GROSS_LO, A_GROSS_ERR, A_GROSS_BAD = range(27, 35)
A_NAMES = ("cash", "peak_equity", "halted", "day", "day_open_equity", "daily_loss_tripped", "orders_today",
           "tokens", "token_ts", "fees", "equity", "fills",
           "curve_peak", "curve_trough", "max_drawdown", "stat_day", "day_close", "returns", "return_mean",
           "return_m2", "return_down2", "exposed_events", "held", "trades", "winning_trades", "win_pnl",
           "loss_pnl", "mark_hi", "mark_lo", "mark_err", "mark_bad", "gross_hi", "gross_lo", "gross_err", "gross_bad")
A_REASON_COUNTS = len(A_NAMES)   # then one counter per reason bit: decisions that recorded it
MASK_BITS = 53                   # reason masks travel in float64 columns: 53 exact bits
ACCT_WIDTH = A_REASON_COUNTS + MASK_BITS

# ---- order records (orders[row, column]) --------------------------------------------
O_EVENT, O_INST, O_QTY, O_PRICE, O_TARGET, O_DESIRED, O_REASONS, O_EXIT, O_FILL_EVENT, O_FILL_PRICE, \
    O_FEE, O_LIMIT = range(12)
#: O_LIMIT: an immediate-or-cancel limit order's limit price (money per unit); NaN for a
#: market order. A filled order has O_FILL_EVENT >= 0 and a fill price; an IOC order
#: cancelled unfilled (a backtest's fill event found no price at or through its limit)
#: has O_FILL_EVENT = that event, O_FILL_PRICE NaN and O_FEE 0: a cancel, not a fill.
ORDER_WIDTH = 12

# ---- trace (trace[event, column]); named features follow ---------------------------
#: T_EQUITY and T_CASH are the account's as the decision began (money).
T_DESIRED, T_POSITION, T_TARGET, T_ORDER, T_REASONS, T_EQUITY, T_CASH = range(7)
TRACE_FIXED = 7

# ---- config: risk limits then account settings; NaN where a key is absent -----------
CONFIG_KEYS = tuple(RISK_KEYS) + tuple(ACCOUNT_KEYS)
C = {key: i for i, key in enumerate(CONFIG_KEYS)}

# ---- reason codes: bit i of a decision's reason mask --------------------------------
#: Every fixed code of the risk steps, in the steps' order (dsl/risk_keys.py RISK_STEPS);
#: the custom rules' codes follow, from CUSTOM_BASE.
REASONS = tuple(reason.code for step in RISK_STEPS for reason in step.reasons)
R = {code: i for i, code in enumerate(REASONS)}
CUSTOM_BASE = len(REASONS)


class ExitBits(NamedTuple):
    """The reason bits of a protective exit: `exit` while it closes the position, `blocked`
    once flat while its lock holds a target on that side at 0."""

    exit: int
    blocked: int


#: The protective exits (the keys with an `:exit` and a `:blocked` code: an exit that
#: locks its side), in the order step 2 checks them. A lock keeps its exit's bit in
#: P_LOCK_CODE; each back end maps it to the blocked bit.
EXITS = {name: ExitBits(R[key.reason("exit")], R[key.reason("blocked")])
         for name, key in RISK_KEYS.items() if key.reason("exit") and key.reason("blocked")}

CUSTOM_SUFFIX = {"block": "blocked", "reduce_only": "blocked", "liquidate": "exit", "halt": "halt"}


def reason_names(program: Program) -> list[str]:
    return list(REASONS) + [f"{name}:{CUSTOM_SUFFIX[action]}" for name, action, _ in program.custom]


def decode_reasons(mask: float | int, names: list[str]) -> list[str]:
    m = int(mask)
    out = []
    while m:
        low = m & -m
        out.append(names[low.bit_length() - 1])
        m ^= low
    return out


def config_vector(risk: dict[str, float], account: dict[str, float]) -> np.ndarray:
    cfg = np.full(len(CONFIG_KEYS), np.nan)
    for key, value in {**risk, **account}.items():
        cfg[C[key]] = value
    return cfg


# ---- feature state -----------------------------------------------------------------
#: Scalar state of each moving statistic (counters, sums, ring position); the buffered
#: ones keep their window after it.
MOVING_SCALARS = {"sma": 3, "sum": 3, "ema": 3, "rma": 3, "wma": 5, "stdev": 6, "variance": 6,
                  "highest": 4, "lowest": 4, "rsi": 4}
MOVING_BUFFERED = {"sma", "sum", "wma", "stdev", "variance", "highest", "lowest"}


@dataclass(frozen=True)
class Slot:
    """State kept per instrument for one op: its moving window, counter or history ring."""

    op: int
    kind: str        # "moving", "bars_since", "history" or "publish" (the latest value, for other instruments)
    size_spec: tuple  # ("const", n) / ("param", i) window, or a tuple of lag specs for history


def slots(program: Program) -> list[Slot]:
    out = []
    history = program.history_sources()
    published = set(program.published_sources())
    for i, op in enumerate(program.ops):
        if op.kind == "moving":
            out.append(Slot(i, "moving", op.attr[1]))
        elif op.kind == "bars_since":
            out.append(Slot(i, "bars_since", ("const", 1)))
        if i in history:
            out.append(Slot(i, "history", tuple(history[i])))
        if i in published:
            out.append(Slot(i, "publish", ("const", 1)))
    return out


def slot_size(program: Program, slot: Slot, params: list) -> tuple[int, int]:
    """(window or ring length, state width) of a slot under bound params."""
    if slot.kind in ("bars_since", "publish"):
        return 1, 1
    if slot.kind == "history":
        k = max(resolve_int(spec, params) for spec in slot.size_spec)
        k = max(k, 1)
        return k, 2 + k
    name = program.ops[slot.op].attr[0]
    n = resolve_int(slot.size_spec, params)
    return n, MOVING_SCALARS[name] + (n if name in MOVING_BUFFERED else 0)


@dataclass
class StateLayout:
    slots: list[Slot]
    windows: np.ndarray   # int64 per slot: the window or ring length
    offsets: np.ndarray   # int64 per slot: first column in the feature-state row
    width: int

    def size_of(self, i: int) -> int:
        end = self.offsets[i + 1] if i + 1 < len(self.slots) else self.width
        return int(end - self.offsets[i])


def state_layout(program: Program, params: list) -> StateLayout:
    ss = slots(program)
    windows, offsets, at = [], [], 0
    for s in ss:
        n, width = slot_size(program, s, params)
        windows.append(n)
        offsets.append(at)
        at += width
    return StateLayout(ss, np.array(windows, dtype=np.int64), np.array(offsets, dtype=np.int64), max(at, 1))


def param_vector(program: Program, params: dict) -> np.ndarray:
    return np.array([float(params[name]) for name in program.params], dtype=np.float64)


def initial_account(n_instruments: int, n_custom: int, account: dict[str, float],
                    contracts: list[tuple[float, float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fresh account arrays: cash = initial equity, flat, no prices seen. `contracts`:
    per instrument (multiplier, tick size) (CheckedPolicy.contract_table); None: a
    multiplier of 1 and no tick size for each."""
    acct = np.zeros(ACCT_WIDTH)
    equity = account["initial_equity"]
    acct[[A_CASH, A_PEAK, A_DAY_OPEN, A_EQUITY, A_CURVE_PEAK, A_CURVE_TROUGH, A_DAY_CLOSE, A_MARK_HI]] = equity
    acct[A_DAY] = np.nan
    acct[A_STAT_DAY] = np.nan
    acct[A_TOKENS] = np.nan
    acct[A_TOKEN_TS] = np.nan
    pstate = np.zeros((n_instruments, P_CUSTOM + n_custom))
    pstate[:, [P_ENTRY, P_BEST, P_LAST, P_PREV, P_LAST_TS, P_VOL]] = np.nan
    pstate[:, [P_PENDING, P_PENDING_LAST]] = -1.0
    pstate[:, P_MULT] = 1.0
    pstate[:, P_TICK] = np.nan
    pstate[:, [P_LIMIT, P_BID, P_ASK]] = np.nan
    if contracts is not None:
        pstate[:, [P_MULT, P_TICK]] = np.array(contracts, dtype=np.float64).reshape(n_instruments, 2)
    return acct, pstate
