"""Scalar semantics of the language in plain Python: IEEE results, never exceptions.

Constant folding and the reference interpreter use these; the kernel templates emit
the same rules in Numba (error_model='numpy'). Division by zero gives +-inf or NaN,
`log` of a negative number is NaN, every comparison with a NaN operand is false.
"""
from __future__ import annotations

import math

NAN = float("nan")
INF = float("inf")
NS_PER_MINUTE = 60_000_000_000
NS_PER_HOUR = 3_600_000_000_000
NS_PER_DAY = 86_400_000_000_000


def arith(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0.0:
            if a != a or a == 0.0:
                return NAN
            return math.copysign(INF, a) * math.copysign(1.0, b)
        return a / b
    return power(a, b)


def power(a: float, b: float) -> float:
    """C `pow`, as the kernel computes it: (-8) ** 0.5 is NaN, 0 ** -1 is inf, (-inf) ** 0.5 is inf."""
    odd = float(b).is_integer() and abs(b) < 2**53 and int(b) % 2 == 1
    try:
        return math.pow(a, b)
    except ValueError:
        if a == 0.0 and b < 0:
            return math.copysign(INF, a) if odd else INF
        return NAN
    except OverflowError:
        return -INF if a < 0 and odd else INF


def compare(op: str, a, b) -> bool:
    if isinstance(a, float) and a != a or isinstance(b, float) and b != b:
        return False
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    if op == "==":
        return a == b
    return a != b


def _log(x):
    if x != x or x < 0:
        return NAN
    return -INF if x == 0 else math.log(x)


def _sqrt(x):
    return NAN if x != x or x < 0 else math.sqrt(x)


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:
        return INF


def _sign(x):
    """1, -1, or x itself for zeros (keeping -0.0) and NaN."""
    return 1.0 if x > 0 else (-1.0 if x < 0 else x)


def _whole(fn):
    """floor/ceil keeping IEEE signed zeros: ceil(-0.3) is -0.0."""
    def apply(x):
        if x != x or x in (INF, -INF):
            return x
        return math.copysign(float(fn(x)), x)
    return apply


def _round(x):
    """Half away from zero, as traders round: round(2.5) = 3, round(-2.5) = -3. Exact:
    the fraction is compared, never added (0.49999999999999994 rounds to 0)."""
    if x != x or x in (INF, -INF):
        return x
    a = abs(x)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return math.copysign(float(r), x)


def _min(*xs):
    return NAN if any(x != x for x in xs) else min(xs)


def _max(*xs):
    return NAN if any(x != x for x in xs) else max(xs)


def _clip(x, lo, hi):
    if x != x or lo != lo or hi != hi:
        return NAN
    return lo if x < lo else (hi if x > hi else x)


def _nz(x, default):
    return default if x != x else x


def hour(ts: int) -> float:
    return float((ts // NS_PER_HOUR) % 24)


def minute_of_day(ts: int) -> float:
    return float((ts // NS_PER_MINUTE) % 1440)


def day_of_week(ts: int) -> float:
    """Monday = 0; 1970-01-01 was a Thursday."""
    return float((ts // NS_PER_DAY + 3) % 7)


PURE_FUNCTIONS = {
    "abs": lambda x: abs(x), "log": _log, "exp": _exp, "sqrt": _sqrt, "sign": _sign,
    "floor": _whole(math.floor), "ceil": _whole(math.ceil), "round": _round,
    "min": _min, "max": _max, "clip": _clip, "nz": _nz, "is_nan": lambda x: x != x,
}
TIME_FUNCTIONS = {"hour": hour, "minute_of_day": minute_of_day, "day_of_week": day_of_week}


def on_tick(x: float, tick: float, up: bool) -> float:
    """A simulated fill price x on the grid of `tick`, against the trader (docs/language.md
    section 8): the next multiple up for a buy (`up`), down for a sell, but at least one
    tick; a price within a few ulps of a multiple is on it. x itself without a tick size (NaN), or beyond 2**52
    ticks (where doubles are coarser than the grid). The interpreter and the simulated
    venue (runtime/fills.py) call it; the kernel template emits the same steps."""
    if not tick > 0:
        return x
    r = x / tick
    if not abs(r) < 2.0 ** 52:
        return x
    n = float(round(r))  # half to even, as np.rint
    if abs(r - n) > 1e-9 + abs(r) * 2.0 ** -50:
        n = float(math.ceil(r) if up else math.floor(r))
    if n < 1.0:  # a sell below one tick: the lowest price on the grid, never a fill at 0
        n = 1.0
    inv = float(round(1.0 / tick))
    # a tick of 1/inv (0.01, 0.25): n / inv is the double nearest to n ticks, n * tick may not be
    return n / inv if tick < 1.0 and inv * tick == 1.0 else n * tick
