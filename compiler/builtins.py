"""Built-in names of the language: market fields, state values and function signatures.

One table drives name resolution, type checking, lowering, the docs and 'did you mean'.
"""
from __future__ import annotations

from dataclasses import dataclass

NUM, BOOL, TIME = "num", "bool", "time"

#: Market fields an event may carry (spec section 2), in the order of kernel columns.
MARKET_FIELDS = ("price", "qty", "open", "high", "low", "close", "volume", "bid", "ask", "bid_size", "ask_size")

#: Read-only account state, as of just before the current decision (spec section 3).
STATE_VALUES = ("position", "entry_price", "unrealized_pnl", "equity", "cash", "drawdown",
                "margin_usage", "orders_today")

#: The state values that are an instrument's own, so `X.position` may read them.
INSTRUMENT_STATE = ("position", "entry_price", "unrealized_pnl")

TIMESTAMP = "ts"

MAX_WINDOW = 100_000
MAX_LOOKBACK = 10_000


@dataclass(frozen=True)
class Signature:
    """`params` lists argument kinds: num, bool, time, window (a positive integer
    literal or param), lag (an integer literal or param >= 0) or instrument (the name of
    one of the policy's instruments)."""

    params: tuple[str, ...]
    result: str
    optional: int = 0          # how many trailing params may be omitted
    variadic: bool = False     # the last kind repeats (min, max)
    stateful: bool = False
    doc: str = ""


_MOVING = ("num", "window")
FUNCTIONS: dict[str, Signature] = {
    "sma": Signature(_MOVING, NUM, stateful=True, doc="mean of the last n values"),
    "ema": Signature(_MOVING, NUM, stateful=True, doc="exponential mean, alpha 2/(n+1), SMA seed"),
    "rma": Signature(_MOVING, NUM, stateful=True, doc="Wilder smoothing, alpha 1/n, SMA seed"),
    "wma": Signature(_MOVING, NUM, stateful=True, doc="linearly weighted mean"),
    "stdev": Signature(_MOVING, NUM, stateful=True, doc="population standard deviation"),
    "variance": Signature(_MOVING, NUM, stateful=True, doc="population variance"),
    "sum": Signature(_MOVING, NUM, stateful=True, doc="sum of the last n values"),
    "highest": Signature(_MOVING, NUM, stateful=True, doc="maximum of the last n values"),
    "lowest": Signature(_MOVING, NUM, stateful=True, doc="minimum of the last n values"),
    "rsi": Signature(_MOVING, NUM, stateful=True, doc="Wilder relative strength index"),
    "atr": Signature(("window",), NUM, stateful=True, doc="Wilder average true range"),
    "zscore": Signature(_MOVING, NUM, stateful=True, doc="(x - sma) / stdev"),
    "change": Signature(("num", "lag"), NUM, optional=1, doc="x - x[k]"),
    "returns": Signature(("num", "lag"), NUM, optional=1, doc="x / x[k] - 1"),
    "log_return": Signature(("num",), NUM, doc="log(x / x[1])"),
    "crosses_above": Signature(("num", "num"), BOOL, doc="a > b and a[1] <= b[1]"),
    "crosses_below": Signature(("num", "num"), BOOL, doc="a < b and a[1] >= b[1]"),
    "bars_since": Signature(("bool",), NUM, stateful=True, doc="events since c was last true"),
    "abs": Signature(("num",), NUM), "log": Signature(("num",), NUM), "exp": Signature(("num",), NUM),
    "sqrt": Signature(("num",), NUM), "sign": Signature(("num",), NUM), "floor": Signature(("num",), NUM),
    "ceil": Signature(("num",), NUM), "round": Signature(("num",), NUM),
    "min": Signature(("num", "num"), NUM, variadic=True), "max": Signature(("num", "num"), NUM, variadic=True),
    "clip": Signature(("num", "num", "num"), NUM), "nz": Signature(("num", "num"), NUM),
    "is_nan": Signature(("num",), BOOL),
    "hour": Signature(("time",), NUM), "minute_of_day": Signature(("time",), NUM),
    "day_of_week": Signature(("time",), NUM),
    "age": Signature(("instrument",), NUM,
                     doc="seconds from the instrument's latest market event to this event; NaN before its first"),
    "in_session": Signature((), BOOL, doc="the event is inside its session: open <= ts < close, not in a break"),
    "minutes_since_open": Signature((), NUM, doc="whole minutes from the session's open to the event"),
    "minutes_to_close": Signature((), NUM, doc="whole minutes from the event to the session's close"),
}

#: Functions of the event's trading session: they need the policy's `calendar` or `timezone`.
SESSION_FUNCTIONS = ("in_session", "minutes_since_open", "minutes_to_close")

#: Every name a policy may not define for itself.
RESERVED = set(MARKET_FIELDS) | set(STATE_VALUES) | {TIMESTAMP} | set(FUNCTIONS) | {
    "if", "then", "else", "and", "or", "not", "true", "false"}
