"""The order core over the kernel against the order core over the reference interpreter.

Two `OrderCore`s, one over an `Engine` running the compiled kernel and one over an
`Engine` running `compiler.interpret.Interpreter` (tests/core_rig.py), get the same
random steps: market events (time going forwards and backwards, leaps past the clock
skew, bursts of several in one read, prices from 5e-324 to 1.7e308, NaN, zero, negative
and infinite ones), intents (NaN and infinite targets among them), and the venue's
answers: acks, fills, partial fills, overfills, a fill answered again, rejects, the
answers to the kill switch's cancels, reconnections after which the venue answers every
order again with all it said; operator halts and resumes, a feed connection lost and
opened again, time passing (feed silence). After every step, every message each core
sent and every record it wrote must agree to the bit, and so must positions, open
quantities, equity and the kill switch.

Derandomized, EXAMPLES sequences of up to STEPS steps per policy;
POLICYC_CORE_DIFF_EXAMPLES and POLICYC_CORE_DIFF_RANDOM=1 for a longer or a new run.
"""
from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_differential as td
from core_rig import CoreRig, interpreter_engine, kernel_engine
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.engine import EngineError
from policyc.runtime.live.protocol import Market, VenueReply

EXAMPLES = int(os.environ.get("POLICYC_CORE_DIFF_EXAMPLES", "500"))
RANDOM = bool(os.environ.get("POLICYC_CORE_DIFF_RANDOM"))
STEPS = 40
S = 1_000_000_000                       # one second, ns
DAY = 86_400 * S
T = 1_699_963_200 * S                   # 2023-11-14T12:00:00Z, the first market event's time

#: `every_key`: every risk step (tests/test_differential.py): targets through intents;
#: protective exits, trailing stops, drawdown, daily loss, margin and custom rules, some
#: switched on by volume codes. `intents`: few limits, so more orders reach the venue.
POLICIES = {"every_key": td.EVERY_KEY, "intents": """
policy: intents
version: 1
instruments: [A, B]
inputs: [intent]
signals: []
risk:
  max_position: 100
  max_order_qty: 60
  stop_loss: 5%
  max_drawdown: 15%
account:
  initial_equity: 10000
  fees_bps: 1
"""}
CODES = (1000.0,) * 12 + (1111.0, 2222.0, 7000.0, 8000.0, 9000.0, 9999.0)  # mostly no rule
PRICES = (5e-324, 1e-300, 1.7e308, 1e308, math.nan, 0.0, -1.0, math.inf)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each as often as its weight (`one_of` would take each once)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(pool) - 1).flatmap(pool.__getitem__)


#: A market event's time: on from the latest (kept), or once back in time or ahead past the clock skew
dt = weighted((8, st.integers(0, 90 * S).map(lambda d: ("on", d))),
              (1, st.one_of(st.integers(-DAY, -1), st.sampled_from([2 * DAY, 10**18, 2**63 - 1])).map(
                  lambda d: ("once", d))))
#: Its price: a step of a random walk (log return), or one of PRICES
price = weighted((9, st.floats(-0.08, 0.08).map(lambda r: ("walk", r))),
                 (1, st.sampled_from(PRICES).map(lambda p: ("at", p))))
tick = st.tuples(st.just("tick"), st.integers(0, 1), dt, price, st.sampled_from(CODES))
intent = st.tuples(st.just("intent"), st.integers(0, 1),
                   st.sampled_from([0.0, 10.0, -10.0, 55.0, 333.3, -700.0, 5000.0, 1e15, math.nan, math.inf]))
#: A fill of an open order (or of one done, when none is open): a share of its size, at a price, with a fee
fill = st.tuples(st.just("fill"), st.integers(0, 30), st.sampled_from([0.25, 0.5, 1.0, 1.0, 1.5, 3.0]),
                 st.sampled_from([40.0, 100.0, 101.5]), st.sampled_from([0.0, 0.75]))


def about_an_order(kind: str) -> st.SearchStrategy:
    """A step about one of the orders sent (`again`, `reject`, `ack`), picked by index."""
    return st.tuples(st.just(kind), st.integers(0, 30))


def plain(kind: str) -> st.SearchStrategy:
    """A step with nothing to it but its kind (`cancelled`, `reconnect`, `halt`, ...)."""
    return st.tuples(st.just(kind),)


#: A wait of the feed's silence timer, in ns
wait = st.tuples(st.just("wait"), st.sampled_from([S // 10, 3 * S, 6 * S, 3600 * S]))
STEP = weighted(
    (6, tick), (1, st.tuples(st.just("burst"), st.lists(tick, min_size=2, max_size=5))), (5, intent), (5, fill),
    (1, about_an_order("again")), (1, about_an_order("reject")), (1, about_an_order("ack")),
    (1, plain("cancelled")), (1, plain("reconnect")), (1, plain("halt")), (1, plain("resume")),
    (1, st.tuples(st.just("decide"), st.integers(0, 1))),
    (1, plain("feed_lost")), (1, plain("feed_connected")), (1, wait),
)


@pytest.fixture(scope="module", params=sorted(POLICIES))
def policy(request):
    return compile_policy(parse_policy_text(POLICIES[request.param], f"{request.param}.yaml"))


def agree(a, b) -> bool:
    """Equal to the bit (NaN to NaN), containers element by element and of one type."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and (a == b or a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(agree, a, b))
    return a == b


class Pair:
    """Both cores, moved by the same steps; `venue` keeps what the venue said about each
    order, so a reconnection can answer every order again with all of it."""

    labels = ("kernel's core", "interpreter")  # the two cores, as a failure names them

    def __init__(self, policy):
        self.names = policy.instruments
        self.rigs = (CoreRig(kernel_engine(policy)), CoreRig(interpreter_engine(policy)))
        self.venue: dict[str, list] = {}
        self.ts = T
        self.price = [100.0, 50.0]

    def both(self, act) -> None:
        """`act(rig)` on each core; an EngineError must be raised by both, alike."""
        outcomes = []
        for rig in self.rigs:
            try:
                act(rig)
                outcomes.append(None)
            except EngineError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], outcomes

    def reply(self, reply: VenueReply) -> None:
        self.venue.setdefault(reply.client_order_id, []).append(reply)
        self.both(lambda rig: rig.core.venue_reply(reply))

    def market(self, ticks) -> list:
        events = []
        for _, inst, (how, step), (kind, value), code in ticks:
            ts = min(max(self.ts + step, 0), 2**63 - 1)
            if how == "on":
                self.ts = ts
            if kind == "at":
                price = value
            else:
                price = self.price[inst] = self.price[inst] * math.exp(value)
            events.append(Market(self.names[inst], ts, {"price": price, "close": price, "high": price,
                                                           "low": price, "volume": code}, None))
        return events

    def step(self, step) -> None:
        kind, sent = step[0], self.rigs[0].orders()
        ids = list(self.rigs[0].core.open) or [m["client_order_id"] for m in sent]
        oid = ids[step[1] % len(ids)] if ids and kind in ("fill", "again", "reject", "ack") else None
        if kind in ("tick", "burst"):
            batch = self.market([step] if kind == "tick" else step[1])
            self.both(lambda rig: rig.core.market(list(batch)))
        elif kind == "intent":
            self.both(lambda rig: rig.core.intent(self.names[step[1]], step[2]))
        elif kind == "decide":
            self.both(lambda rig: rig.core.decide(self.names[step[1]]))
        elif kind == "fill" and oid:
            size = next(m["qty"] for m in sent if m["client_order_id"] == oid)
            self.reply(VenueReply("fill", oid, qty=size * step[2], price=step[3], fee=step[4]))
        elif kind == "again" and oid and self.venue.get(oid):
            said = self.venue[oid][-1]  # answered again without a reconnection: a duplicate
            self.both(lambda rig: rig.core.venue_reply(said))
        elif kind in ("reject", "ack") and oid:
            self.reply(VenueReply(kind, oid, reason="refused" if kind == "reject" else ""))
        elif kind == "cancelled":
            cancels = {m["client_order_id"] for m in self.rigs[0].sent if m["type"] == "cancel"}
            for oid in sorted(cancels & set(self.rigs[0].core.open)):
                self.reply(VenueReply("reject", oid, reason="cancelled"))
        elif kind == "reconnect":
            resent = len(self.rigs[0].sent)
            self.both(lambda rig: rig.core.venue_connected())
            for message in self.rigs[0].sent[resent:]:
                for said in self.venue.get(message["client_order_id"], []):
                    self.both(lambda rig: rig.core.venue_reply(said))
        elif kind == "halt":
            self.both(lambda rig: rig.core.halt("operator halt"))
        elif kind == "resume":
            self.both(lambda rig: rig.core.resume())
        elif kind == "feed_lost":
            self.both(lambda rig: rig.core.feed_lost())
        elif kind == "feed_connected":
            self.both(lambda rig: rig.core.feed_connected())
        elif kind == "wait":
            for rig in self.rigs:
                rig.wall += step[1]
                rig.mono += step[1]
            self.both(lambda rig: rig.core.feed_live())  # the owner's timer

    def check(self, step, seen: tuple[int, int]) -> tuple[int, int]:
        kernel, interpreter = self.rigs
        sent, records = seen
        for what, a, b in (("sent", kernel.sent[sent:], interpreter.sent[sent:]),
                           ("recorded", kernel.records[records:], interpreter.records[records:])):
            assert agree(a, b), f"after {step}, the {self.labels[0]} {what}\n{a}\nthe {self.labels[1]}'s\n{b}"
        for name in self.names:
            for value in ("position", "open_quantity"):
                k, i = getattr(kernel.engine, value)(name), getattr(interpreter.engine, value)(name)
                assert agree(k, i), f"after {step}, {value} of {name}: kernel {k!r}, interpreter {i!r}"
        assert agree(kernel.engine.equity, interpreter.engine.equity) and \
            kernel.engine.halted == interpreter.engine.halted, step
        return len(kernel.sent), len(kernel.records)


RAN = dict.fromkeys(("steps", "order", "fill", "overfill", "reject", "halt", "resume", "feed_silent", "bad_message"), 0)


@settings(max_examples=EXAMPLES, derandomize=not RANDOM, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=STEPS // 2, max_size=STEPS))
def _cores_agree(policy, steps):
    pair = Pair(policy)
    seen = (0, 0)
    for k in range(12):  # both instruments have a price, and a volatility (max_volatility) once warmed up
        pair.step(("tick", k % 2, ("on", S), ("walk", 0.01 * (-1) ** (k // 2)), 1000.0))
    for step in steps:
        pair.step(step)
        seen = pair.check(step, seen)
    RAN["steps"] += len(steps)
    for record in pair.rigs[0].records:
        if record["kind"] in RAN:
            RAN[record["kind"]] += 1


def test_the_core_over_the_kernel_and_over_the_interpreter_agree(policy):
    """Every message and every record, after every step (module docstring); and the
    sequences did reach every kind of record that tells of order management: orders,
    fills, overfills, rejects, halts, resumes, feed silences and refused events."""
    RAN.update(dict.fromkeys(RAN, 0))
    _cores_agree(policy)
    assert RAN["steps"] >= EXAMPLES * STEPS // 2 and min(RAN.values()) > EXAMPLES // 20, RAN
