"""Every risk limit holds after every step: a hypothesis state machine drives the live
runtime (no sockets) with random market data, intents, venue answers, halts, resumes and
reconnections, and checks the policy's limits after each step (issue 9, "What must be
shown").

How it drives the runtime. Only through what the sockets call (`on_feed_messages`,
`on_venue_messages`, `on_intent_frame`, `on_control_frame`, and the connection callbacks
`_venue_connected`, `_venue_lost`, `_feed_connected`, `_feed_lost`, as
tests/test_live_runner.py does), plus direct `Engine` calls for the values the wire cannot
carry (NaN and infinite prices and targets, timestamps outside int64), which must be
refused without changing anything. What the runtime sends goes to a fake venue that keeps
a book as a venue would: it acks, fills (in full, in part, or for more than was open),
rejects and cancels the orders it received, answers a resent order or a first cancel on a
new connection with every answer it has sent about it so far (docs/live.md, "Orders"),
loses what was in flight when its connection drops, and also sends bogus answers. The
decision log (`order`, `risk` and `halt` records, docs/audit.md) tells each order's
decision price, whether it is an exit, and its reasons.

The steps: ticks, bars and quotes whose time goes forwards and backwards, by nanoseconds
or days, or leaps to 0 or near 2**63-1, at prices from 5e-324 to 1.8e308; bursts (several
market events in one read of the feed); frames the protocol must refuse (NaN, Infinity,
1e400, non-positive prices, out-of-range times, a batch with one bad event); intents from
-1.7e308 to 1e300 (and trades: an intent whose orders the venue fills at once); operator
halts and resumes; venue acks, fills, partial fills, overfills, rejects, cancels, bogus
answers, a lost venue connection and a new one (what was in flight lost), a lost feed and
a new one; time passing (the test owns the clocks the runtime reads, `time.time_ns` and
`time.monotonic_ns`, so every example replays exactly).

The invariants, checked after every step. "q" is an instrument's position plus its open
orders, as docs/language.md section 6 counts it: position is the sum of the fills the
venue sent (each clamped to what was open: a venue's overfill cannot be prevented by the
runtime, so every invariant is about what the runtime sends and counts), open orders are
the orders sent and not yet done, except those the kill switch is cancelling while it is
on (docs/live.md, "Halts"). This q is kept by the test from the log and the venue's
answers, not read from the engine.

1. Every order has a valid decision price, `|qty| <= max_order_qty` and
   `|qty| x price <= max_order_notional` (exits included: step 9 clips them too).
2. An order that increases exposure (|q| grows, or q crosses zero) is not an exit and:
   `|q| <= max_position` after it; gross exposure, the sum of |q x last price| over the
   instruments at the decision's prices, is finite and `<= max_gross_exposure`; equity is
   finite and positive and `gross x margin_rate / equity <= max_margin_usage`. A
   non-finite value is a breach: the limit must fail closed. (Limits never force a
   reduction, so these bind increases only.)
3. An exit only reduces exposure; while the kill switch is on every order is an exit;
   while the feed is down an intent does not increase exposure.
4. Orders per UTC day: a non-exit order is sent only while fewer than
   `max_orders_per_day` orders (exits included) were sent in its day. Event time is
   forward-only (issue 9, "Day counters roll forward only"), so the day is that of the
   account's clock: the latest event time of a decision so far, that is of an accepted
   market event, an order, an intent or a halt (an intent or a halt is dated its
   instrument's last event time plus the time elapsed since that event arrived,
   docs/live.md "Event time"; the test owns the clocks the runtime reads, so it knows).
5. Orders per second: over the non-exit orders, each timed by the latest non-exit order
   time so far (the bucket's forward-only clock), any run of k consecutive orders spans
   at least (k / rate - 1) s: the token bucket starts full at `rate` tokens and refills
   at `rate` per second of event time.
6. The kill switch is on after every step that made a decision (an accepted market
   event, an answered intent) when the drawdown, (peak - equity) / peak, is at or past
   `max_drawdown`, or undefined: NaN or infinite, or a peak that is not a positive finite
   number (a `resume` at zero or negative equity: a drawdown from a peak that is not
   positive means nothing, so it fails closed). Peak is the highest equity seen since the
   start or the last `resume` (which resets it to equity); within a burst only the equity
   after the whole read is seen, which can only make this check more lenient.
7. Exits always leave (issue 9, case 3): a decision that records a protective exit
   (`stop_loss:exit`, `take_profit:exit`, `trailing_stop:exit`) and sends no order leaves
   q flat or on the other side of the filled position; one that sends a non-exit order
   does so only once q (with the exit sent before it) no longer holds the position.
8. Bookkeeping: the engine's position and open quantity equal the test's (fills applied
   once each however often the venue answers them again, rejects releasing what was
   open, the kill switch's withdraw and restore).

`make test` runs EXAMPLES derandomized examples (POLICYC_FUZZ_EXAMPLES, default 1,000) of
up to STEPS steps (POLICYC_FUZZ_STEPS) and fails if fewer ran; `make fuzz` runs 50,000
and prints how many ran. POLICYC_FUZZ_RANDOM=1 draws new examples instead.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from unittest import mock

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from policyc.compiler.build import compile_policy
from policyc.compiler.layout import MAX_MAGNITUDE
from policyc.dsl.document import parse_policy_text
from policyc.dsl.risk_keys import RISK_KEYS
from policyc.runtime.engine import EngineError
from policyc.runtime.live.runner import LiveRuntime, RunConfig

POLICY = """
policy: invariants
version: 1
description: every limit the invariants check, driven by intents
instruments: [A, B]
inputs: [intent]
signals: []
risk:
  max_drawdown: 20%
  stop_loss: 5%
  max_position: 100
  max_order_qty: 60
  max_order_notional: 50000
  max_gross_exposure: 100000
  max_margin_usage: 60%
  max_orders_per_day: 3
  max_orders_per_second: 2
  custom:
    - name: late
      when: hour(ts) >= 22
      action: block
account:
  initial_equity: 100000
  margin_rate: 50%
  fees_bps: 1
"""
INSTRUMENTS = ("A", "B")
PROTECTIVE = {key.reason("exit") for key in RISK_KEYS.values() if key.reason("exit")}  # the protective exits

EXAMPLES = int(os.environ.get("POLICYC_FUZZ_EXAMPLES", "1000"))
STEPS = int(os.environ.get("POLICYC_FUZZ_STEPS", "40"))
RANDOM = bool(os.environ.get("POLICYC_FUZZ_RANDOM"))
RAN = {"examples": 0, "steps": 0}  # counted by the machine's teardown: checked after the test

NS = 10**9
DAY = 86_400 * NS
MAX_NS = 2**63 - 1
TS0 = 1_699_948_800 * NS  # 2023-11-14 08:00 UTC: before 22:00, so the `late` block rule is off at the start
LOG_DIR = [tempfile.gettempdir()]  # the test sets a directory of its own
DONE = 1e-12  # an order is done once what is left is within this share of its size (docs/live.md, "Orders")


class Clock:
    """The clocks the runtime reads (`time.time_ns`, `time.monotonic_ns`), frozen but for the
    `wait` rule: an intent's event time is its instrument's last event time plus the time
    elapsed since that event arrived (docs/live.md, "Event time"), and what the runtime
    decides must not depend on how fast the test runs (hypothesis replays every example)."""

    def __init__(self):
        self.wall0, self.mono0, self.elapsed = time.time_ns(), time.monotonic_ns(), 0

    def wall_ns(self) -> int:
        return self.wall0 + self.elapsed

    def monotonic_ns(self) -> int:
        return self.mono0 + self.elapsed


CLOCK = Clock()


@lru_cache(maxsize=1)
def compiled():
    return compile_policy(parse_policy_text(POLICY, "invariants.yaml"))


def limits() -> dict:
    risk = dict(compiled().checked.risk)
    account = dict(compiled().checked.account)
    return {**risk, "margin_rate": account["margin_rate"]}


# ---- strategies ---------------------------------------------------------------------------------------------------

#: How a market event's time moves from the previous one of its instrument.
time_moves = st.one_of(
    st.tuples(st.just("+"), st.integers(0, 5 * NS)),            # on, by up to 5 s
    st.tuples(st.just("-"), st.integers(1, 5 * NS)),            # back, by up to 5 s
    st.tuples(st.just("+"), st.integers(0, 3 * DAY)),           # on, by up to 3 days
    st.tuples(st.just("-"), st.integers(1, 3 * DAY)),           # back, by up to 3 days
    st.tuples(st.just("="), st.sampled_from([0, 1, TS0, 2**62, MAX_NS - DAY, MAX_NS - NS, MAX_NS - 1, MAX_NS])),
)
EXTREME_PRICES = [5e-324, 1e-300, 1e-9, 1e15, 1e16, 1e200, 1e308, 1.7e308, sys.float_info.max]
prices = st.one_of(
    st.tuples(st.just("x"), st.floats(0.5, 1.5)),              # a move from the last price
    st.tuples(st.just("="), st.floats(1.0, 1000.0)),
    st.tuples(st.just("="), st.sampled_from(EXTREME_PRICES)),
)
targets = st.one_of(
    st.integers(-250, 250).map(float),
    st.floats(-250.0, 250.0),
    st.sampled_from([0.0, 5e-324, -1e-9, 1e15, -1e15, 1e300, -1.7e308]),
)
#: A fill's share of what the venue has open; above 1 is an overfill.
fill_parts = st.one_of(st.just(1.0), st.sampled_from([0.5, 0.25, 1 / 3, 0.1, 1e-9, 0.999999999]),
                       st.floats(0.01, 1.0), st.sampled_from([1.5, 2.0, 1e6]))
fill_prices = st.one_of(st.just(("last", 0.0)), st.tuples(st.just("x"), st.floats(0.5, 1.5)),
                        st.tuples(st.just("="), st.sampled_from([5e-324, 1e-6, 1.0, 1e6, 1e15])))
BAD_FEED = ["nan", "infinity", "minus_infinity", "1e400", "zero_price", "negative_price", "negative_ts", "ts_2**63",
            "float_ts", "unknown_instrument", "bool_price", "batch_with_one_bad", "not_json", "crossed_quote"]
BAD_ENGINE = ["nan", "inf", "-inf", "zero", "negative", "ts_negative", "ts_2**63", "intent_nan", "intent_inf"]
BOGUS_VENUE = ["fill_unknown", "fill_ours_not_sent", "ack_unknown", "reject_unknown", "fill_done", "reject_done",
               "fill_zero_qty", "fill_negative_qty", "fill_zero_price", "fill_nan", "fill_bool_qty", "not_json",
               "not_an_object", "missing_id", "unknown_type"]


# ---- the test's own books -----------------------------------------------------------------------------------------

@dataclass
class Order:
    """An order as the runtime must count it (docs/live.md: "Orders", "Halts")."""

    oid: str
    inst: str
    qty: float          # signed
    exit: bool
    left: float         # signed, not filled yet
    fills: int = 0      # distinct venue fills applied
    done: bool = False  # filled (up to DONE) or rejected
    rejected: bool = False
    cancelling: bool = False
    withdrawn: bool = False


@dataclass
class VenueOrder:
    """An order in the fake venue's book."""

    oid: str
    inst: str
    qty: float          # signed
    left: float         # signed, not executed yet
    done: bool = False
    history: list = field(default_factory=list)  # (answer, fill number or None), in the order sent
    nfills: int = 0
    bound: bool = True  # a frame about it came on the current connection: answers go there


class Stream:
    """Stands in for a feed or venue connection: what the runtime sends goes to `sink`."""

    def __init__(self, sink=None):
        self.sink = sink

    def send(self, frame):
        if self.sink is not None:
            self.sink(orjson.loads(frame))

    def corked(self, enabled=True):
        return nullcontext()

    def close(self):
        pass


@dataclass
class Tick:
    inst: str
    ts: int
    price: float


def _close(a: float, b: float, scale: float) -> bool:
    return a == b or abs(a - b) <= 1e-9 * scale


def _fmt(x) -> str:
    return f"{x:.17g}" if isinstance(x, float) else repr(x)


class LimitsMachine(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self):
        super().__init__()
        self.L = limits()
        self.rt = None
        self.steps = 0

    # ---- set-up and tear-down ----------------------------------------------------------------------------------
    @initialize(pa=st.floats(1.0, 1000.0), pb=st.floats(1.0, 1000.0))
    def start(self, pa, pb):
        fd, self.log_path = tempfile.mkstemp(suffix=".jsonl", dir=LOG_DIR[0])
        os.close(fd)
        self.logf = open(self.log_path, "rb")
        self.rt = LiveRuntime(compiled(), RunConfig("ws://feed", "ws://venue", log_path=self.log_path))
        self.rt.log.flush_every = 1  # each record reaches the file at once: the test reads it after every step
        self.seq = 0
        self.prefix = None
        self.orders: dict[str, Order] = {}
        self.pos = dict.fromkeys(INSTRUMENTS, 0.0)
        self.book: dict[str, VenueOrder] = {}
        self.outbox: list[tuple[dict, int | None]] = []
        self.pending_cancels: list[tuple[str, bool]] = []
        self.venue_up = self.feed_up = False
        self.clock = 0                 # the account's forward-only event clock (invariant 4)
        self.last_ts: dict[str, int] = {}   # instrument -> its latest accepted market event time
        self.arrived: dict[str, int] = {}   # instrument -> CLOCK.elapsed when that event arrived
        self.clock_known = True        # False once a burst was only partly accepted: invariant 4 is then off
        self.day_counts: dict[int, int] = {}
        self.sec_clock = 0
        self.sec_times: list[int] = []  # the bucket clock at each non-exit order (invariant 5)
        self.peak = float(compiled().checked.account["initial_equity"])
        self._read_log()
        self.venue_up, self.state_asked = True, False
        self.rt._venue_connected(Stream(self._venue_receives))
        assert self.state_asked  # a new run compares its (flat) state with the venue's before trading
        self.rt.on_venue_messages([orjson.dumps({"type": "state", "positions": {}, "open_orders": []})])
        self.feed_up = True
        self.rt._feed_connected(Stream())
        for inst, price in zip(INSTRUMENTS, (pa, pb)):
            self._ticks([Tick(inst, TS0, price)], "tick")

    def teardown(self):
        if self.rt is not None:
            self.rt.log.close()
            self.logf.close()
            os.unlink(self.log_path)
        RAN["examples"] += 1
        RAN["steps"] += self.steps

    # ---- the log ----------------------------------------------------------------------------------------------
    def _read_log(self) -> list[dict]:
        records = []
        for line in self.logf.read().splitlines():
            rec = orjson.loads(line)
            if rec["seq"] != self.seq + 1:
                raise RuntimeError(f"test harness: decision log seq {rec['seq']} after {self.seq}")
            self.seq = rec["seq"]
            if rec["kind"] == "session":
                self.prefix = rec["order_prefix"]
            records.append(rec)
        return records

    # ---- the model --------------------------------------------------------------------------------------------
    def _q(self, inst: str) -> float:
        return self.pos[inst] + self._open(inst)

    def _open(self, inst: str) -> float:
        return sum(o.left for o in self.orders.values() if o.inst == inst and not o.done and not o.withdrawn)

    def _scale(self, inst: str) -> float:
        """The sum of the magnitudes of an instrument's quantities: the engine keeps position and
        open quantity as running float sums, so they may differ from the test's by rounding of
        about one unit in the last place of this per order (docs/language.md section 9,
        "Order rounding")."""
        return abs(self.pos[inst]) + sum(abs(o.qty) for o in self.orders.values() if o.inst == inst)

    def _withdraw_for_halt(self):
        """The kill switch cancels every open order that is not an exit; its quantity stops counting."""
        for o in self.orders.values():
            if not o.done and not o.exit and not o.withdrawn:
                o.cancelling = o.withdrawn = True

    def _restore_on_resume(self):
        for o in self.orders.values():
            if o.withdrawn:
                o.withdrawn = False

    def _expect_answer(self, msg: dict, fill_no: int | None) -> None:
        """What the runtime must make of one venue answer."""
        o = self.orders.get(msg.get("client_order_id"))
        if o is None or o.done or msg["type"] == "ack":
            return
        if msg["type"] == "reject":
            o.done = o.rejected = True
            return
        if fill_no is None:
            raise RuntimeError("test harness: a bogus fill for an open order")
        if fill_no < o.fills:
            return  # answered again after a resend: applied already
        if fill_no > o.fills:
            raise RuntimeError(f"test harness: fill {fill_no} of {o.oid} before fill {o.fills}")
        left = o.left
        qty = min(msg["qty"], abs(left)) * (1.0 if left > 0 else -1.0)
        self.pos[o.inst] += qty
        o.left = left - qty
        o.fills += 1
        if abs(o.left) <= DONE * abs(o.qty):
            o.done = True

    # ---- one step ---------------------------------------------------------------------------------------------
    def _step(self, kind: str, action, ticks: list[Tick] | None = None, intent_feed_down: bool = False,
              decides: str | None = None):
        rt = self.rt
        self.steps += 1
        before = rt.status()
        prices_before = rt.engine.last_prices()
        halted_before = rt.engine.halted
        result = action()
        after = rt.status()
        records = self._read_log()
        halted = rt.engine.halted

        accepted: list[Tick] = []
        if ticks:
            n = after["events"] - before["events"]
            if n == len(ticks):
                accepted = ticks
            elif n:
                self.clock_known = False  # which ones were refused is not known: invariant 4 is off from here
                accepted = ticks
            for t in accepted:
                self.clock = max(self.clock, t.ts)
                self.last_ts[t.inst], self.arrived[t.inst] = t.ts, CLOCK.elapsed
        decided = bool(accepted and n) or (kind == "intent" and isinstance(result, dict)
                                           and result.get("type") == "decision")
        if kind == "intent" and decided:
            self.clock = max(self.clock, self._now_for(result["instrument"]))
        elif kind == "halt":
            self.clock = max([self.clock] + [self._now_for(inst) for inst in INSTRUMENTS])
        elif decides is not None:  # a fill that beat its kill-switch cancel: decided again
            self.clock = max(self.clock, self._now_for(decides))
        if halted and not halted_before:  # a decision tripped the kill switch: every instrument decided again
            self.clock = max([self.clock] + [self._now_for(inst) for inst in INSTRUMENTS])

        if kind == "resume":
            self._restore_on_resume()
        if kind == "halt" or (halted and not halted_before) or any(r["kind"] == "halt" for r in records):
            self._withdraw_for_halt()

        equity_after = rt.engine.equity
        for rec in records:
            if rec["kind"] == "order":
                prices, equity = self._decision_state(rec, prices_before, accepted, equity_after)
                try:
                    self._check_order(rec, prices, equity, halted and kind != "resume", intent_feed_down)
                finally:
                    self._book_order(rec)
            elif rec["kind"] == "risk":
                self._check_risk(rec)
        self._check_books()
        if kind == "resume":
            self.peak = equity_after
        elif equity_after > self.peak:
            self.peak = equity_after
        if decided:
            self._check_kill_switch(equity_after, halted)
        return result

    def _check_books(self):
        """8. Bookkeeping."""
        rt = self.rt
        for inst in INSTRUMENTS:
            pos, model_pos = rt.engine.position(inst), self.pos[inst]
            assert _close(pos, model_pos, self._scale(inst)), \
                f"{inst}: the engine's position {_fmt(pos)} is not the sum of the venue's fills {_fmt(model_pos)}"
            held, model_open = rt.engine.open_quantity(inst), self._open(inst)
            assert _close(held, model_open, self._scale(inst)), \
                f"{inst}: the engine's open quantity {_fmt(held)} is not that of the open orders {_fmt(model_open)}"

    def _check_kill_switch(self, equity, halted):
        """6. After a decision."""
        peak = self.peak
        drawdown = (peak - equity) / peak if peak else math.nan
        if not (math.isfinite(equity) and math.isfinite(peak) and math.isfinite(drawdown)):
            assert halted, f"kill switch off with the drawdown undefined (NaN or infinite): equity {_fmt(equity)}, " \
                           f"peak {_fmt(peak)}"
        elif peak <= 0:
            assert halted, f"kill switch off with the drawdown undefined (peak equity not positive): equity " \
                           f"{_fmt(equity)}, peak {_fmt(peak)}"
        else:
            assert drawdown < self.L["max_drawdown"] or halted, \
                f"kill switch off at drawdown {drawdown:.6g} >= {self.L['max_drawdown']:g}"

    def _now_for(self, inst: str) -> int:
        """The event time of a decision no market event carries (docs/live.md, "Event time")."""
        return min(self.last_ts[inst] + CLOCK.elapsed - self.arrived[inst], MAX_NS)

    def _decision_state(self, rec, prices_before, accepted, equity_after):
        """The last prices and the equity the decision of this order saw."""
        prices = dict(prices_before)
        upto = len(accepted)
        for k, t in enumerate(accepted):
            if t.inst == rec["instrument"] and t.ts == rec["ts"]:
                upto = k + 1
        for t in accepted[:upto]:
            prices[t.inst] = t.price
        price = rec["price"]
        prices[rec["instrument"]] = math.nan if price is None else price
        if upto == len(accepted):
            return prices, equity_after
        equity = self.rt.engine.cash  # a decision inside a burst: no fill in between
        for inst in INSTRUMENTS:
            if self.pos[inst]:
                equity += self.pos[inst] * prices[inst]
        return prices, equity

    def _check_order(self, rec, prices, equity, halted, intent_feed_down):
        L = self.L
        oid, inst, qty, price, ts, is_exit = (rec["client_order_id"], rec["instrument"], rec["qty"], rec["price"],
                                              rec["ts"], rec["exit"])
        reasons = set(rec["reasons"])
        q_before = self._q(inst)
        q_after = q_before + qty
        tol = 1e-12 * (self._scale(inst) + abs(qty))  # rounding, not exposure
        increase = abs(q_after) > abs(q_before) + tol or (q_after * q_before < 0 and min(abs(q_after),
                                                                                          abs(q_before)) > tol)
        what = (f"order {oid[-6:]} {inst} {_fmt(qty)} at {_fmt(price)} (exit={is_exit}, reasons {sorted(reasons)}), "
                f"q {_fmt(q_before)} -> {_fmt(q_after)}")

        # 1. every order
        assert price is not None and 0 < price < math.inf, f"an order without a valid price: {what}"
        assert abs(qty) <= L["max_order_qty"] * (1 + 1e-12), f"max_order_qty exceeded: {what}"
        notional = abs(qty) * price
        assert notional <= L["max_order_notional"] * (1 + 1e-9), f"max_order_notional exceeded ({notional:.6g}): {what}"

        # 3. exits, halts, the feed down
        if is_exit:
            assert not increase, f"an exit increases exposure: {what}"
        assert is_exit or not halted, f"a non-exit order while the kill switch is on: {what}"
        assert not (intent_feed_down and increase), f"an intent increases exposure while the feed is down: {what}"

        # 2. increases
        if increase:
            assert abs(q_after) <= L["max_position"] * (1 + 1e-12) + tol, f"max_position exceeded: {what}"
            gross = 0.0
            for other in INSTRUMENTS:
                held = q_after if other == inst else self._q(other)
                if held:
                    gross += abs(held * prices[other])
            assert gross <= L["max_gross_exposure"] * (1 + 1e-9), \
                f"max_gross_exposure exceeded (gross {gross:.6g}, prices {prices}): {what}"
            usage = gross * L["margin_rate"] / equity if math.isfinite(equity) and equity > 0 else math.nan
            assert usage <= L["max_margin_usage"] * (1 + 1e-9), \
                f"max_margin_usage exceeded (usage {usage:.6g}, gross {gross:.6g}, equity {_fmt(equity)}): {what}"

        # 7. a protective exit leaves as its own order
        if reasons & PROTECTIVE and not is_exit:
            assert q_before * math.copysign(1.0, self.pos[inst]) <= tol or not self.pos[inst], \
                f"a protective exit merged into a non-exit order (position {_fmt(self.pos[inst])}): {what}"

        # 4 and 5. rate limits
        if not is_exit:
            day = max(self.clock, ts) // DAY
            sent = self.day_counts.get(day, 0)
            if self.clock_known:
                assert sent < L["max_orders_per_day"], \
                    f"max_orders_per_day: {sent} orders already on UTC day {day} (event time {ts}): {what}"
            rate = L["max_orders_per_second"]
            times = self.sec_times + [max(self.sec_clock, ts)]
            for i in range(len(times) - 1):
                k = len(times) - i
                span = (times[-1] - times[i] + 4096) / NS  # the kernel's float event times round by up to 2 us
                assert k <= rate * (1 + span) + 1e-9, \
                    f"max_orders_per_second: {k} non-exit orders within {span:.9g} s of event time: {what}"

    def _book_order(self, rec):
        oid, inst, qty, ts, is_exit = rec["client_order_id"], rec["instrument"], rec["qty"], rec["ts"], rec["exit"]
        self.clock = max(self.clock, ts)
        day = self.clock // DAY
        self.day_counts[day] = self.day_counts.get(day, 0) + 1
        if not is_exit:
            self.sec_clock = max(self.sec_clock, ts)
            self.sec_times.append(self.sec_clock)
        self.orders[oid] = Order(oid, inst, qty, is_exit, qty)

    def _check_risk(self, rec):
        if "withdrawn_qty" in rec or not set(rec["reasons"]) & PROTECTIVE:
            return
        inst, pos = rec["instrument"], self.pos[rec["instrument"]]
        assert not pos or rec["approved_target"] * math.copysign(1.0, pos) <= 1e-12 * self._scale(inst), \
            (f"a protective exit did not leave: {inst} position {_fmt(self.pos[inst])}, approved target "
             f"{_fmt(rec['approved_target'])}, reasons {rec['reasons']}")

    # ---- the feed ---------------------------------------------------------------------------------------------
    def _ticks(self, ticks: list[Tick], kind: str):
        frames = []
        for t in ticks:
            if kind == "bar":
                msg = {"type": "bar", "instrument": t.inst, "ts": t.ts, "open": t.price, "high": t.price,
                       "low": t.price, "close": t.price}
            elif kind == "quote":
                msg = {"type": "quote", "instrument": t.inst, "ts": t.ts, "bid": t.price, "ask": t.price}
            else:
                msg = {"type": "tick", "instrument": t.inst, "ts": t.ts, "price": t.price}
            frames.append(msg)
        frame = orjson.dumps(frames[0] if len(frames) == 1 else frames)
        if kind == "quote" and any(not math.isfinite((t.price + t.price) / 2) for t in ticks):
            ticks = []  # the midpoint overflows: the runtime must refuse it (no tick of it counts)
        self._step("feed", lambda: self.rt.on_feed_messages([frame]), ticks=ticks)

    def _base_price(self, inst: str) -> float:
        last = self.rt.engine.last_prices()[inst]
        return last if 1e-6 <= last <= 1e12 else 100.0

    @precondition(lambda self: self.feed_up)
    @rule(inst=st.sampled_from(INSTRUMENTS), move=time_moves, price=prices,
          kind=st.sampled_from(["tick", "tick", "bar", "quote"]))
    def market_event(self, inst, move, price, kind):
        """A tick, bar or quote; its time moves from the instrument's latest accepted event."""
        how, amount = move
        base = self.last_ts.get(inst, TS0)
        if how == "=":
            ts = amount
        else:
            ts = base + amount if how == "+" else base - amount
            ts = min(max(ts, 0), MAX_NS)
        p = self._base_price(inst) * price[1] if price[0] == "x" else price[1]
        self._ticks([Tick(inst, ts, p)], kind)

    @precondition(lambda self: self.feed_up)
    @rule(events=st.lists(st.tuples(st.sampled_from(INSTRUMENTS), st.integers(1, 2 * NS), st.floats(0.8, 1.25)),
                          min_size=2, max_size=4))
    def burst(self, events):
        """Several market events in one read, time going on from everything so far."""
        ts = self.clock
        if ts > MAX_NS - 20 * NS:
            return
        ticks, last = [], {}
        for inst, dt, move in events:
            ts += dt
            last[inst] = last.get(inst, self._base_price(inst)) * move
            ticks.append(Tick(inst, ts, last[inst]))
        self._ticks(ticks, "tick")

    @precondition(lambda self: self.feed_up)
    @rule(kind=st.sampled_from(BAD_FEED), inst=st.sampled_from(INSTRUMENTS))
    def bad_feed_frame(self, kind, inst):
        """A frame the protocol refuses: nothing changes but the count of bad messages."""
        ts = self.last_ts.get(inst, TS0)
        good = f'{{"type":"tick","instrument":"{inst}","ts":{ts},"price":'
        frame = {
            "nan": good + "NaN}", "infinity": good + "Infinity}", "minus_infinity": good + "-Infinity}",
            "1e400": good + "1e400}", "zero_price": good + "0}", "negative_price": good + "-5.0}",
            "bool_price": good + "true}",
            "negative_ts": f'{{"type":"tick","instrument":"{inst}","ts":-1,"price":50.0}}',
            "ts_2**63": f'{{"type":"tick","instrument":"{inst}","ts":{2**63},"price":50.0}}',
            "float_ts": f'{{"type":"tick","instrument":"{inst}","ts":{float(ts)!r},"price":50.0}}',
            "unknown_instrument": f'{{"type":"tick","instrument":"C","ts":{ts},"price":50.0}}',
            "batch_with_one_bad": f'[{good}50.0}}, {good}NaN}}]',
            "crossed_quote": f'{{"type":"quote","instrument":"{inst}","ts":{ts},"bid":51.0,"ask":50.0}}',
            "not_json": "tick A 50",
        }[kind].encode()
        self._refused(lambda: self.rt.on_feed_messages([frame]), "feed")

    def _state(self):
        e = self.rt.engine
        return orjson.dumps([e.positions(), e.open_orders(), e.last_prices(), e.equity, e.cash, e.halted,
                             self.rt.status()["events"]], option=orjson.OPT_SERIALIZE_NUMPY)

    def _refused(self, action, source: str):
        before, bad = self._state(), self.rt.status()["bad_messages"]
        self._step(source, action)
        assert self._state() == before, f"a refused {source} message changed the runtime's state"
        assert self.rt.status()["bad_messages"] > bad, f"a bad {source} message was not counted"

    @rule(kind=st.sampled_from(BAD_ENGINE), inst=st.sampled_from(INSTRUMENTS))
    def engine_refuses(self, kind, inst):
        """Values the wire cannot carry, straight into the engine: refused, nothing changes."""
        engine, ts = self.rt.engine, self.last_ts.get(inst, TS0)
        before = self._state()
        try:
            if kind == "intent_nan":
                engine.intent(inst, ts, math.nan)
            elif kind == "intent_inf":
                engine.intent(inst, ts, math.inf)
            elif kind == "ts_negative":
                engine.market(inst, -1, {"price": 50.0})
            elif kind == "ts_2**63":
                engine.market(inst, 2**63, {"price": 50.0})
            else:
                price = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "zero": 0.0, "negative": -5.0}[kind]
                engine.market(inst, ts, {"price": price})
        except EngineError:
            pass
        else:
            raise AssertionError(f"the engine accepted {kind}")
        assert self._state() == before, f"the engine refused {kind} but its state changed"

    # ---- intents and control ----------------------------------------------------------------------------------
    @rule(inst=st.sampled_from(INSTRUMENTS), units=targets)
    def intent(self, inst, units):
        frame = orjson.dumps({"type": "intent", "id": "i", "instrument": inst, "target": units})
        self._step("intent", lambda: self.rt.on_intent_frame(frame), intent_feed_down=not self.feed_up)

    @rule(inst=st.sampled_from(INSTRUMENTS), text=st.sampled_from(["NaN", "Infinity", "1e400", "null", '"10"']))
    def bad_intent(self, inst, text):
        frame = f'{{"type":"intent","id":"i","instrument":"{inst}","target":{text}}}'.encode()
        self._refused(lambda: self.rt.on_intent_frame(frame), "intents")

    @rule()
    def halt(self):
        self._step("halt", lambda: self.rt.on_control_frame(b'{"type":"halt","reason":"fuzz"}'))
        assert self.rt.engine.halted, "an operator halt left the kill switch off"

    @rule()
    def resume(self):
        self._step("resume", lambda: self.rt.on_control_frame(b'{"type":"resume"}'))

    @rule(dt=st.sampled_from([1_000, 1_000_000, 300_000_000, 500_000_000, NS, 6 * NS, 3_600 * NS, DAY]))
    def wait(self, dt):
        """Time passes: intents and halts are dated later, rate buckets refill, a feed goes quiet."""
        CLOCK.elapsed += dt

    # ---- connections ------------------------------------------------------------------------------------------
    @precondition(lambda self: self.venue_up)
    @rule()
    def venue_lost(self):
        """What was in flight is lost; the venue keeps its book."""
        self.venue_up = False
        self.outbox.clear()
        for v in self.book.values():
            v.bound = False
        self._step("connection", self.rt._venue_lost)

    @precondition(lambda self: not self.venue_up)
    @rule()
    def venue_back(self):
        self.venue_up = True
        self._step("connection", lambda: self.rt._venue_connected(Stream(self._venue_receives)))

    @precondition(lambda self: self.feed_up)
    @rule()
    def feed_lost(self):
        self.feed_up = False
        self._step("connection", self.rt._feed_lost)

    @precondition(lambda self: not self.feed_up)
    @rule()
    def feed_back(self):
        self.feed_up = True
        self._step("connection", lambda: self.rt._feed_connected(Stream()))

    # ---- the venue --------------------------------------------------------------------------------------------
    def _venue_receives(self, msg: dict) -> None:
        """An order or a cancel reaches the venue (called inside the runtime: only books it);
        a new run's state request is answered when the machine starts."""
        if msg["type"] == "state_request":
            self.state_asked = True
            return
        oid = msg["client_order_id"]
        v = self.book.get(oid)
        if msg["type"] == "order":
            if v is None:
                sign = 1.0 if msg["side"] == "buy" else -1.0
                self.book[oid] = VenueOrder(oid, msg["instrument"], sign * msg["qty"], sign * msg["qty"])
            else:  # a resend: every answer so far, in order, and nothing executed again
                v.bound = True
                self.outbox.extend(v.history)
        elif msg["type"] == "cancel":
            first = v is None or not v.bound
            if v is not None and first:  # the first word about it on this connection: every answer so far
                v.bound = True
                self.outbox.extend(v.history)
            self.pending_cancels.append((oid, first))
        else:
            raise AssertionError(f"the runtime sent the venue {msg}")

    def _answer(self, v: VenueOrder, msg: dict, fill_no: int | None = None) -> None:
        v.history.append((msg, fill_no))
        if self.venue_up and v.bound:
            self.outbox.append((msg, fill_no))

    def _deliver(self, msg: dict, fill_no: int | None) -> None:
        frame = orjson.dumps(msg)
        o = self.orders.get(msg.get("client_order_id"))
        decides = o.inst if (o is not None and not o.done and o.withdrawn and msg["type"] == "fill"
                             and self.rt.engine.halted) else None
        self._expect_answer(msg, fill_no)
        self._step("venue", lambda: self.rt.on_venue_messages([frame]), decides=decides)

    def _flush(self, now: bool) -> None:
        while now and self.venue_up and self.outbox:
            self._deliver(*self.outbox.pop(0))

    def _live(self) -> list[VenueOrder]:
        return [v for v in self.book.values() if not v.done]

    @precondition(lambda self: any(not v.done for v in self.book.values()))
    @rule(k=st.integers(0, 63), now=st.booleans())
    def venue_ack(self, k, now):
        live = self._live()
        v = live[k % len(live)]
        self._answer(v, {"type": "ack", "client_order_id": v.oid, "venue_order_id": f"V{v.oid[-6:]}"})
        self._flush(now)

    @rule(inst=st.sampled_from(INSTRUMENTS), units=targets)
    def trade(self, inst, units):
        """An intent, and the venue fills every order it holds at once: positions to work with."""
        self.intent(inst, units)
        for v in self._live():
            self._fill(v, 1.0, ("last", 0.0), None, None)
        self._flush(True)

    @precondition(lambda self: any(not v.done for v in self.book.values()))
    @rule(k=st.integers(0, 63), part=fill_parts, price=fill_prices, fee=st.sampled_from([None, 0.0, 0.001, 1.0]),
          when=st.sampled_from([None, "now", 0]), now=st.booleans())
    def venue_fill(self, k, part, price, fee, when, now):
        """A fill of all, part, or more than what the venue has open (it may be disconnected: then the
        answer waits in its book for the order's resend); `fee` is a share of the fill's notional,
        up to all of it (the most a venue may charge) or MAX_MAGNITUDE."""
        live = self._live()
        self._fill(live[k % len(live)], part, price, fee, when)
        self._flush(now)

    def _fill(self, v: VenueOrder, part, price, fee, when) -> None:
        qty = abs(v.left) * part
        if not 0 < qty < math.inf:
            return
        if price[0] == "last":
            p = self._base_price(v.inst)
        elif price[0] == "x":
            p = self._base_price(v.inst) * price[1]
        else:
            p = price[1]
        msg = {"type": "fill", "client_order_id": v.oid, "qty": qty, "price": p}
        if fee is not None:
            msg["fee"] = min(fee * qty * p, MAX_MAGNITUDE)
        if when is not None:
            msg["ts"] = self._now_for(v.inst) if when == "now" else when
        executed = min(qty, abs(v.left)) * (1.0 if v.left > 0 else -1.0)
        v.left -= executed
        if abs(v.left) <= DONE * abs(v.qty):
            v.done = True
        self._answer(v, msg, v.nfills)
        v.nfills += 1

    @precondition(lambda self: any(not v.done for v in self.book.values()))
    @rule(k=st.integers(0, 63), reason=st.sampled_from(["cancelled", "rejected by the venue", "expired"]),
          now=st.booleans())
    def venue_reject(self, k, reason, now):
        live = self._live()
        v = live[k % len(live)]
        v.done, v.left = True, 0.0
        self._answer(v, {"type": "reject", "client_order_id": v.oid, "reason": reason})
        self._flush(now)

    @precondition(lambda self: bool(self.pending_cancels))
    @rule(k=st.integers(0, 63), now=st.booleans())
    def venue_cancel(self, k, now):
        """The venue acts on a cancel the runtime sent: an order not done is cancelled; a cancel of
        an order already done is answered with every answer so far (the paper venue's way; when the
        cancel was the first word about the order on its connection, that was done on arrival)."""
        oid, first = self.pending_cancels.pop(k % len(self.pending_cancels))
        v = self.book.get(oid)
        if v is None:  # sent while the venue was down, then cancelled: the venue never had it
            if self.venue_up:
                self.outbox.append(({"type": "reject", "client_order_id": oid,
                                     "reason": "unknown order: nothing to cancel"}, None))
        else:
            if v.done and not first and self.venue_up and v.bound:
                self.outbox.extend(v.history)
            if not v.done:
                v.done, v.left = True, 0.0
                self._answer(v, {"type": "reject", "client_order_id": oid, "reason": "cancelled"})
        self._flush(now)

    @precondition(lambda self: self.venue_up and bool(self.outbox))
    @rule(n=st.integers(1, 4))
    def venue_delivers(self, n):
        for _ in range(n):
            if self.outbox:
                self._deliver(*self.outbox.pop(0))

    @precondition(lambda self: self.venue_up)
    @rule(kind=st.sampled_from(BOGUS_VENUE), k=st.integers(0, 63))
    def venue_bogus(self, kind, k):
        """Answers about nothing the venue holds, or malformed: nothing changes. Except a
        fill for an order the venue rejected: a break in the venue's own story, which
        trips the kill switch and applies nothing."""
        done = [o for o in self.orders.values() if o.done]
        order = done[k % len(done)] if done else None
        some = order.oid if order else "nobody-000001"
        frame = {
            "fill_unknown": {"type": "fill", "client_order_id": "nobody-000001", "qty": 1.0, "price": 50.0},
            "fill_ours_not_sent": {"type": "fill", "client_order_id": f"{self.prefix}-999999", "qty": 1.0,
                                   "price": 50.0},
            "ack_unknown": {"type": "ack", "client_order_id": "nobody-000002"},
            "reject_unknown": {"type": "reject", "client_order_id": "nobody-000003", "reason": "?"},
            "fill_done": {"type": "fill", "client_order_id": some, "qty": 5.0, "price": 50.0},
            "reject_done": {"type": "reject", "client_order_id": some, "reason": "late"},
            "fill_zero_qty": {"type": "fill", "client_order_id": some, "qty": 0.0, "price": 50.0},
            "fill_negative_qty": {"type": "fill", "client_order_id": some, "qty": -1.0, "price": 50.0},
            "fill_zero_price": {"type": "fill", "client_order_id": some, "qty": 1.0, "price": 0.0},
            "fill_bool_qty": {"type": "fill", "client_order_id": some, "qty": True, "price": 50.0},
            "missing_id": {"type": "fill", "qty": 1.0, "price": 50.0},
            "unknown_type": {"type": "partial", "client_order_id": some},
        }.get(kind)
        if frame is not None:
            raw = orjson.dumps(frame)
        else:
            raw = {"fill_nan": f'{{"type":"fill","client_order_id":"{some}","qty":NaN,"price":50.0}}',
                   "not_json": "fill!", "not_an_object": "[1, 2]"}[kind].encode()
        before, positions = self._state(), self.rt.engine.positions()
        self._step("venue", lambda: self.rt.on_venue_messages([raw]))
        if kind == "fill_done" and order and order.rejected:
            assert self.rt.engine.halted and self.rt.engine.positions() == positions, "a fill after a reject"
        else:
            assert self._state() == before, f"a bogus venue answer ({kind}) changed the runtime's state"


def test_every_limit_holds_after_every_random_step(capsys, tmp_path):
    """EXAMPLES runs of up to STEPS random steps each (derandomized unless POLICYC_FUZZ_RANDOM);
    fails unless every one of them ran. Says how many ran, even under pytest's capture."""
    RAN.update(examples=0, steps=0)
    LOG_DIR[0] = str(tmp_path)
    compiled()
    started = time.perf_counter()
    try:
        with mock.patch.object(time, "time_ns", CLOCK.wall_ns), \
                mock.patch.object(time, "monotonic_ns", CLOCK.monotonic_ns):
            run_state_machine_as_test(LimitsMachine, settings=settings(
                max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=not RANDOM, deadline=None,
                database=None, suppress_health_check=list(HealthCheck), print_blob=RANDOM))
    finally:
        with capsys.disabled():
            print(f"\ntest_invariants: {RAN['examples']:,} examples ran ({EXAMPLES:,} configured), "
                  f"{RAN['steps']:,} steps, {time.perf_counter() - started:.1f} s")
    assert RAN["examples"] >= EXAMPLES, f"only {RAN['examples']} of {EXAMPLES} examples ran"
