"""Multi-leg rules through the live engine and the order core: every order a read of
the feed makes reaches the caller, also a leg's order on an event whose own instrument
decides nothing; over the kernel and over the reference interpreter alike."""
from __future__ import annotations

import pytest

from core_rig import CoreRig, interpreter_engine, kernel_engine
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.engine import VECTOR_MIN
from policyc.runtime.live.protocol import Market, VenueReply
from test_legs import ARB as ARB_TEMPLATE

NS = 1_000_000_000
T0 = 1_800_000_000 * NS - 60 * NS   # before the rig's wall clock: the core accepts these times
BN, CB = "binance:BTCUSDT", "coinbase:BTC-USD"

#: test_legs's arbitrage, so that the suite compiles its kernel once: besides the entry
#: rule it has an exit rule (both legs flat when the venues are within edge / 4), which no
#: quote here meets (QUIET's cb.bid / bn.ask is 0.2% off, WIDE's 0.8%), and slippage, which
#: moves simulated fills only (live, the venue reports the fills)
ARB = ARB_TEMPLATE.format(risk="  max_position: 2")
QUIET = {"price": 100.0, "bid": 99.9, "ask": 100.1}
WIDE = {"price": 101.0, "bid": 100.9, "ask": 101.1}   # cb.bid 100.9 > 100.1 x 1.001: the rule fires
BN_LIMIT = 100.1 * (1 + 0.0001)


def arb():
    return compile_policy(parse_policy_text(ARB, "arbitrage.yaml"))


def chain(decision):
    out = []
    while decision is not None:
        out.append((decision.instrument, decision.order_qty))
        decision = decision.then
    return out


@pytest.fixture(params=[kernel_engine, interpreter_engine], ids=["kernel", "interpreter"])
def engine(request):
    return request.param(arb())


def opened_then_bn_rejected(engine):
    """Both legs sent on cb's quote, then bn's IOC rejected and cb's filled: cb's target is
    met, bn's is not. The next quote of cb fires the rule again, and only bn orders (while
    cb's IOC was open, bn would have waited: the legs move together)."""
    engine.market(BN, T0, QUIET)
    engine.market(CB, T0 + NS, QUIET)
    first = engine.market(CB, T0 + 2 * NS, WIDE)
    assert chain(first) == [(BN, 0.5), (CB, -0.5)]
    engine.reject(BN, T0 + 3 * NS, 0.5)
    engine.fill(CB, T0 + 3 * NS, -0.5, 100.9)


@pytest.mark.parametrize("size", [1, VECTOR_MIN], ids=["one", "batch"])
def test_a_legs_order_on_an_event_whose_own_decision_makes_none_reaches_the_caller(engine, size):
    opened_then_bn_rejected(engine)
    events = [(CB, T0 + (4 + k) * NS, WIDE) for k in range(size)]
    lean = engine.market_many(events, actionable_only=True)
    d = lean[0]
    assert d is not None, "bn's order was made but not returned"
    assert chain(d) == [(CB, 0.0), (BN, 0.5)]
    assert (d.reasons, d.then.approved_target) == ((), 0.5)
    assert lean[1:] == [None] * (size - 1)   # bn's order is open: nothing more to do
    assert engine.open_orders() == {BN: 0.5, CB: 0.0}


def test_the_legs_order_carries_its_limit_price():
    engine = kernel_engine(arb())
    opened_then_bn_rejected(engine)
    d = engine.market_many([(CB, T0 + 4 * NS, WIDE)], actionable_only=True)[0]
    assert (d.then.instrument, d.then.limit_price) == (BN, BN_LIMIT)
    assert engine.open_orders() == {BN: 0.5, CB: 0.0}


def test_actionable_only_keeps_exactly_the_decisions_with_an_order_or_a_reason_anywhere_in_the_chain():
    """The same reads through two engines, one returning every decision: the lean one
    returns each decision whose chain makes an order or records a reason, and None for
    the others."""
    full, lean = kernel_engine(arb()), kernel_engine(arb())
    reads = [[(BN, T0, QUIET), (CB, T0 + NS, QUIET)], [(CB, T0 + 2 * NS, WIDE)], "reject",
             [(CB, T0 + (4 + k) * NS, WIDE if k % 3 else QUIET) for k in range(VECTOR_MIN + 1)]]
    for read in reads:
        if read == "reject":
            for engine in (full, lean):
                engine.reject(BN, T0 + 3 * NS, 0.5)
            continue
        every, kept = full.market_many(read), lean.market_many(read, actionable_only=True)
        for d, k in zip(every, kept):
            links, x = [], d
            while x is not None:
                links.append(x)
                x = x.then
            assert k == (d if any(x.order_qty or x.reasons for x in links) else None)


def test_the_order_core_sends_the_legs_order(engine):
    rig = CoreRig(engine)
    rig.core.market([Market(BN, T0, QUIET, None), Market(CB, T0 + NS, QUIET, None)])
    rig.core.market([Market(CB, T0 + 2 * NS, WIDE, None)])
    sent = rig.orders()
    assert [(m["instrument"], m["side"], m["qty"]) for m in sent] == [(BN, "buy", 0.5), (CB, "sell", 0.5)]
    rig.core.venue_reply(VenueReply("reject", sent[0]["client_order_id"]))
    assert engine.open_orders() == {BN: 0.0, CB: -0.5}
    rig.core.market([Market(CB, T0 + 3 * NS, WIDE, None)])
    assert rig.orders()[2:] == [], "bn retried alone while cb's IOC was open"
    rig.core.venue_reply(VenueReply("fill", sent[1]["client_order_id"], qty=0.5, price=100.9))
    rig.core.market([Market(CB, T0 + 4 * NS, WIDE, None)])
    again = rig.orders()[2:]
    assert [(m["instrument"], m["side"], m["qty"]) for m in again] == [(BN, "buy", 0.5)], \
        "the venue never received bn's order"
    assert engine.open_orders() == {BN: 0.5, CB: 0.0}
