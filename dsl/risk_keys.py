"""Risk and account keys: every fact about one, written once.

`RISK_STEPS` are the ten steps of docs/language.md section 6, in the order a decision
runs them, each with the reason codes it records, in bit order (section 7). `RISK_KEYS`
are the limits a policy sets under `risk:`, each with its kind of value, its bounds,
its step and the line a trader reads about it; its reason codes are the codes of its
step named after it (`stop_loss:exit`). `ACCOUNT_KEYS` are the settings under
`account:`, with their defaults. `CONTRACT_KEYS` are the optional settings of one
instrument in the map form of `instruments` (its contract: point value and tick size).

Everything else reads these tables: the document model and its W004 warning
(dsl/document.py), the checker's bounds and messages (compiler/check.py), the kernel's
config slots, reason bits and exits (compiler/layout.py, and through it the kernel
template and the interpreter), `policyc explain`, the tables of docs/language.md
(docs/gen_risk_keys.py) and the tests' random policies. A new key is added here, and
only its behaviour is then written in the kernel template and the interpreter.

This module is the lowest layer's: it imports nothing of policyc.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """What a key's value is and how a policy writes it.

    `noun` names the value in the docs' tables. `measure` is what a number of this kind
    counts (`currency units`): a `%` on such a value is almost always a slip (W004), so
    it is None for fractions, where `%` is what a policy writes, and for durations and
    booleans, which a `%` cannot be. `notation` is how a bound value is written back:
    `percent` (0.03 as `3%`), `seconds` (2.0 as `2s`), `boolean` (1.0 as `true`) or
    `plain` (`500`)."""

    noun: str
    measure: str | None = None
    notation: str = "plain"

    def written(self, value: float) -> str:
        """A bound value as a policy would write it: `3%`, `2s`, `true`, `500`."""
        if self.notation == "percent":
            return "0" if value == 0 else f"{value * 100:g}%"
        if self.notation == "seconds":
            return f"{value:g}s"
        if self.notation == "boolean":
            return "true" if value else "false"
        return f"{value:g}"


#: A share of something: of a price, of equity, of notional. `3%` is 0.03.
FRACTION = Kind("fraction", notation="percent")
#: Units of the instrument, as a target or an order counts them.
UNITS = Kind("units", "units")
#: Currency units of the account (a notional, an exposure, cash).
MONEY = Kind("money", "currency units")
#: Orders sent (a budget of them).
ORDERS = Kind("orders", "orders")
#: Orders per second of event time.
ORDER_RATE = Kind("rate", "orders per second")
#: Market events of one instrument.
EVENTS = Kind("events", "events")
#: Seconds, written as a duration (`500ms`, `2s`, `5m`, `1h`, `1d`).
DURATION = Kind("duration", notation="seconds")
BOOLEAN = Kind("`true` / `false`", notation="boolean")
#: Hundredths of a percent of notional: 1 basis point is 0.0001.
BASIS_POINTS = Kind("basis points", "basis points")
#: Money per point of price per unit held: a contract's point value.
POINT_VALUE = Kind("money per point", "currency units per point of price")
#: A price step, in the instrument's price units.
PRICE_STEP = Kind("price", "price units")


@dataclass(frozen=True)
class Bounds:
    """The numbers a key accepts: finite, above `lowest` (or equal to it when
    `lowest_included`), at most `highest` when there is one, and whole when `whole`."""

    lowest: float = 0.0
    lowest_included: bool = False
    highest: float | None = None
    whole: bool = False

    def admit(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if value < self.lowest or (value == self.lowest and not self.lowest_included):
            return False
        if self.highest is not None and value > self.highest:
            return False
        return not self.whole or value == int(value)


@dataclass(frozen=True)
class Key:
    """One risk or account key.

    `bounds` is None for a true/false key. `meaning` is the one line a trader reads
    about the key (the docs' tables). `example` is a value as a policy writes it, for
    the docs; `samples` are valid values as a policy writes them, for the tests' random
    policies, chosen so that each limit sometimes binds at prices near 100 and targets of
    1 to 1,000 units. `default` is the value when the key is absent (None: the check is
    off). `step` is the risk step it acts in (None for an account key); `setting_of`
    names the key whose check this one only tunes (`volatility_window` tunes
    `max_volatility`): it records no reason of its own."""

    name: str
    kind: Kind
    bounds: Bounds | None
    meaning: str
    example: str
    samples: tuple[str, ...]
    step: int | None = None
    default: float | None = None
    setting_of: str | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        """The reason codes this key records, in bit order: the codes of its step named
        after it."""
        return tuple(r.code for s in RISK_STEPS for r in s.reasons if r.code.partition(":")[0] == self.name)

    def reason(self, outcome: str) -> str | None:
        """This key's code with that outcome (`exit`, `blocked`, `clipped`, `halt`), or None."""
        code = f"{self.name}:{outcome}"
        return code if code in self.reasons else None

    @property
    def rule(self) -> str:
        """What a valid value is, as error E007 says it: `a fraction above 0 and at most 100%`."""
        b = self.bounds
        if b is None:
            return "true or false"
        lo = "0" if b.lowest == 0 else self.kind.written(b.lowest)
        if b.whole and b.highest is not None and b.lowest_included:
            return f"a whole number from {lo} to {b.highest:,g}"
        noun = "a whole number" if b.whole else "a fraction" if self.kind is FRACTION else \
            "a duration" if self.kind is DURATION else "a number"
        text = f"{noun} {lo} or more" if b.lowest_included else f"{noun} above {lo}"
        if b.highest is not None:
            return f"{text} and at most {self.kind.written(b.highest)}"
        if self.kind in (FRACTION, DURATION):  # easy to write wrong (`3` for 3%, `2` for 2s): show one
            return f"{text} such as `{self.example}`"
        return text


@dataclass(frozen=True)
class Reason:
    """A reason code and when a decision records it (docs/language.md section 7).

    A code is `<key>:<outcome>` when one key's check records it, and `<condition>:<outcome>`
    when the step records it for a condition no single key owns: a halted account, a
    value a check needs that is not a finite number (the step fails closed), no price yet. The
    outcome says what happened to the target or the order: `halt` (the kill switch),
    `exit` (a protective exit), `blocked` (refused, or held where it was), `clipped`."""

    code: str
    when: str


@dataclass(frozen=True)
class Step:
    """A risk step: its number in docs/language.md section 6 (None for the check before
    them), its title as `policyc explain` prints it, and its reason codes in bit order."""

    number: int | None
    title: str
    reasons: tuple[Reason, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The risk keys of this step, in the order it checks them; none for a later
        continuation of a step (a second `Step` of the same number)."""
        if self.number is None or next(s for s in RISK_STEPS if s.number == self.number) is not self:
            return ()
        return tuple(name for name, key in RISK_KEYS.items() if key.step == self.number)

    @property
    def all_reasons(self) -> tuple[Reason, ...]:
        """The reason codes of this step and of its continuations, in bit order."""
        return tuple(r for s in RISK_STEPS if s.number == self.number for r in s.reasons)


#: The step whose checks are the policy's custom rules (`risk.custom`); their reason codes
#: follow the fixed ones, one per rule.
CUSTOM_STEP = 5

#: The steps in the order a decision runs them. Bit i of a reason mask is the i-th code
#: listed here, custom rules' codes after them; a compiled policy lists its codes in its
#: manifest (`reasons`), which is how a mask it recorded is read.
RISK_STEPS = (
    Step(1, "kill switch", (
        Reason("kill_switch:halt", "the account is halted and the desired target was not 0"),
        Reason("max_drawdown:halt", "the drawdown trips the kill switch (once, on that decision), also when it is "
                                    "undefined"),
        Reason("equity_invalid:halt", "equity or peak equity is not a finite number: the kill switch trips (once, on "
                                      "that decision)"),
    )),
    Step(2, "protective exits", (
        Reason("stop_loss:exit", "the stop loss triggers, and while its exit is still closing the position"),
        Reason("take_profit:exit", "the take profit triggers, and while its exit is still closing"),
        Reason("trailing_stop:exit", "the trailing stop triggers, and while its exit is still closing"),
        Reason("stop_loss:blocked", "flat after a stop loss, a target on the locked side is held at 0"),
        Reason("take_profit:blocked", "flat after a take profit, a target on the locked side is held at 0"),
        Reason("trailing_stop:blocked", "flat after a trailing stop, a target on the locked side is held at 0"),
    )),
    Step(3, "day limits", (
        Reason("max_daily_loss:blocked", "an increase was clipped by the daily loss limit"),
    )),
    Step(4, "reduce-only conditions", (
        Reason("max_volatility:blocked", "an increase was clipped by the volatility brake"),
        Reason("volatility_unknown:blocked", "an increase was clipped because the volatility is not known yet (or "
                                             "not a number)"),
        Reason("stale_after:blocked", "an increase was clipped because the instrument's data is stale"),
        Reason("long_only:clipped", "a short target became 0"),
    )),
    Step(CUSTOM_STEP, "custom rules"),
    Step(6, "position limits", (
        Reason("max_position:clipped", "the target was clipped to `max_position`"),
        Reason("max_position_notional:clipped", "the target was clipped to `max_position_notional`"),
    )),
    Step(7, "portfolio limits", (
        Reason("max_gross_exposure:clipped", "the target was clipped to fit `max_gross_exposure`"),
        Reason("max_margin_usage:clipped", "the target was clipped to fit `max_margin_usage`"),
        Reason("exposure_invalid:blocked", "an increase was refused because the gross exposure is not a finite "
                                           "number"),
    )),
    Step(8, "order rounding", (
        Reason("lot_size:clipped", "the order was rounded to the lot size"),
        Reason("min_order_qty:blocked", "the order was below `min_order_qty`"),
    )),
    Step(9, "order limits", (
        Reason("max_order_qty:clipped", "the order was clipped to `max_order_qty`"),
        Reason("max_order_notional:clipped", "the order was clipped to `max_order_notional`"),
        Reason("price_collar:blocked", "the price jumped more than the collar"),
        Reason("notional_invalid:blocked", "the order's quantity or notional is not a finite number: not sent"),
    )),
    Step(10, "rate limits", (
        Reason("max_orders_per_day:blocked", "the day's order budget is spent"),
        Reason("max_orders_per_second:blocked", "the order rate bucket is empty"),
    )),
    # Checked before step 1, listed last: its code was added after the others, and
    # moving it would renumber the bits of every code after it.
    Step(None, "no price yet", (
        Reason("no_price:blocked", "a decision for an instrument that has had no valid price yet, when its desired "
                                   "target differs from q"),
    )),
    # Parts of steps 2 and 9, listed after the others for the same reason; each is a
    # continuation of the step of its number (`Step.keys` lists a step's keys once).
    Step(2, "leg imbalance", (
        Reason("max_leg_imbalance:exit", "the legs' net notional is beyond `max_leg_imbalance` (or not a finite "
                                         "number): each leg is flattened as an exit; recorded on each decision of a "
                                         "flagged leg that holds a position or an open order, and when the breach "
                                         "set a flat leg's target to 0"),
    )),
    Step(9, "limit price", (
        Reason("limit_invalid:blocked", "an order's limit price is NaN, infinite or at most 0: not sent"),
    )),
    Step(2, "leg hold", (
        Reason("order_open:blocked", "a leg of a multi-leg rule with an order open (an IOC that may still be "
                                     "cancelled) sends nothing until that order is filled, cancelled or rejected: "
                                     "its target (after the kill switch and the protective exits) differs from q "
                                     "and is held; or another leg of its rules was busy (an order open, a position to "
                                     "flatten) as the event began, and its target (not an exit) is held; or its rule "
                                     "(or an intent for it) would have moved its target then, and set none: the "
                                     "legs move together"),
    )),
)

_ABOVE_0 = Bounds()
_AT_MOST_ALL = Bounds(highest=1.0)  # a loss, drawdown or adverse move of more than 100% cannot happen

#: The keys of `risk:`, in the order of their steps and, within a step, the order it
#: checks them (the protective exits: stop loss, take profit, trailing stop).
RISK_KEYS = {key.name: key for key in (
    Key("max_drawdown", FRACTION, _AT_MOST_ALL, step=1, example="10%", samples=("1%", "3%", "8%"),
        meaning="halt when equity is this far below its peak (or the drawdown is undefined); while halted every "
                "target is 0"),
    Key("stop_loss", FRACTION, _AT_MOST_ALL, step=2, example="3%", samples=("0.5%", "2%", "5%"),
        meaning="exit when price moves this far against the average entry price"),
    Key("take_profit", FRACTION, _ABOVE_0, step=2, example="6%", samples=("0.5%", "3%", "8%"),
        meaning="exit when price moves this far in favour of the entry price"),
    Key("trailing_stop", FRACTION, _AT_MOST_ALL, step=2, example="1.5%", samples=("0.5%", "1.5%", "4%"),
        meaning="exit on this adverse move from the best price since entry"),
    Key("max_leg_imbalance", MONEY, _ABOVE_0, step=2, example="20000", samples=("200", "3000", "50000"),
        meaning="while |sum over the legs of multi-leg rules of (position + open) x price x multiplier| is above "
                "this (or not a finite number), a decision of a leg flattens every leg"),
    Key("max_daily_loss", FRACTION, _AT_MOST_ALL, step=3, example="3%", samples=("0.5%", "1%", "5%"),
        meaning="reduce-only until the next day (UTC, or the policy's session day) once equity is this far below "
                "the day's opening equity"),
    Key("max_volatility", FRACTION, _ABOVE_0, step=4, example="2%", samples=("0.3%", "1%", "3%"),
        meaning="reduce-only while the population stdev of `returns(price)` over `volatility_window` events "
                "exceeds it, or is not known yet"),
    # the window of a stdev, bounded like every function's window (compiler/builtins.py MAX_WINDOW)
    Key("volatility_window", EVENTS, Bounds(2.0, lowest_included=True, highest=100_000.0, whole=True), step=4,
        default=20.0, setting_of="max_volatility", example="50", samples=("2", "3", "5", "8", "15"),
        meaning="the window of `max_volatility`"),
    Key("stale_after", DURATION, _ABOVE_0, step=4, example="2s", samples=("500ms", "2s", "1h"),
        meaning="reduce-only while the instrument has had no market event for this long"),
    Key("long_only", BOOLEAN, None, step=4, example="true", samples=("true", "false"),
        meaning="a short target becomes 0"),
    Key("max_position", UNITS, _ABOVE_0, step=6, example="500", samples=("1", "10", "75", "200", "1000"),
        meaning="|target| at most this"),
    Key("max_position_notional", MONEY, _ABOVE_0, step=6, example="150000",
        samples=("500", "5000", "20000", "100000"), meaning="|target| x price x multiplier at most this"),
    Key("max_gross_exposure", MONEY, _ABOVE_0, step=7, example="200000", samples=("1000", "15000", "60000"),
        meaning="on increases, sum of |(position + open) x price x multiplier| over instruments at most this"),
    Key("max_margin_usage", FRACTION, _ABOVE_0, step=7, example="30%", samples=("5%", "30%", "80%", "150%"),
        meaning="on increases, gross exposure x `margin_rate` / equity at most this"),
    Key("lot_size", UNITS, _ABOVE_0, step=8, example="10", samples=("1", "5", "10", "0.5"),
        meaning="the order is rounded toward zero to a multiple of this"),
    Key("min_order_qty", UNITS, _ABOVE_0, step=8, example="10", samples=("1", "3", "20", "0.5"),
        meaning="an order smaller than this is not sent (unless it closes the position)"),
    Key("max_order_qty", UNITS, _ABOVE_0, step=9, example="200", samples=("1", "7", "40", "150"),
        meaning="|order| at most this; a larger exit goes out over several events"),
    Key("max_order_notional", MONEY, _ABOVE_0, step=9, example="50000", samples=("300", "2500", "15000"),
        meaning="|order| x price x multiplier at most this"),
    Key("price_collar", FRACTION, _ABOVE_0, step=9, example="5%", samples=("1%", "5%", "12%"),
        meaning="no order on an event whose price jumped more than this from the previous price"),
    Key("max_orders_per_day", ORDERS, Bounds(lowest_included=True, whole=True), step=10, example="50",
        samples=("0", "1", "5", "40"), meaning="at most this many orders per day (UTC, or the policy's session day; 0: only exits)"),
    Key("max_orders_per_second", ORDER_RATE, _ABOVE_0, step=10, example="2", samples=("0.5", "1", "3", "100"),
        meaning="token bucket on event time"),
)}

#: The keys of `account:`; each has a default.
ACCOUNT_KEYS = {key.name: key for key in (
    Key("initial_equity", MONEY, _ABOVE_0, default=100000.0, example="100000",
        samples=("5000", "100000", "1000000"), meaning="cash at the start, and so the first equity and peak equity"),
    Key("margin_rate", FRACTION, _ABOVE_0, default=1.0, example="50%", samples=("25%", "50%", "100%"),
        meaning="initial margin as a fraction of notional, for `margin_usage` and `max_margin_usage`"),
    # At most 10,000 bp: a fee above the fill's notional, or a sell filled at a price of
    # 0 or less, is no market's.
    Key("fees_bps", BASIS_POINTS, Bounds(lowest_included=True, highest=10_000.0), default=0.0, example="1",
        samples=("0", "0.5", "1", "7"), meaning="the fee of a fill, in basis points of its notional"),
    Key("slippage_bps", BASIS_POINTS, Bounds(lowest_included=True, highest=9_999.0), default=0.0, example="2",
        samples=("0", "1", "2.5"), meaning="a buy fills this many basis points above the price, a sell below"),
)}

#: The settings of one instrument's contract, written in the map form of `instruments`
#: (`es: {symbol: "CME:ES", multiplier: 50, tick_size: 0.25}`). A missing `multiplier` is
#: 1 (a notional is quantity x price); a missing `tick_size` rounds no price.
CONTRACT_KEYS = {key.name: key for key in (
    Key("multiplier", POINT_VALUE, _ABOVE_0, default=1.0, example="50", samples=("0.5", "5", "50"),
        meaning="money per point of price per unit held: notional, P&L, fees, exposure and margin are "
                "quantity x price x this"),
    Key("tick_size", PRICE_STEP, _ABOVE_0, example="0.25", samples=("0.01", "0.25", "1"),
        meaning="the price step: a simulated fill price is rounded to a multiple of it, against the trader"),
)}
