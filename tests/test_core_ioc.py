"""IOC limit orders through the live order path make the kernel's orders.

`backtest.run_through_order_core` sends a rule's `limit` and a multi-leg rule's legs as
IOC limit orders to a venue that fills them whole or cancels them (`fills.FillBook`),
and the venue's `cancel` goes back into the order core. Against the kernel
(`run_backtest`) every order must be the same to the bit (tests/test_core_backtest.py's
comparison), its limit price included, and so must the equity after every event: fills
at a quote or capped at the limit, cancels (fill event, NaN fill price, no fee), a leg
decided on another instrument's event, and an IOC order decided on a `decide` event,
which under `same` has no quote of its own there and fills against the price.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_core_backtest import assert_same
from test_legs import guarded
from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.backtest import run_backtest, run_through_order_core

MODES = {"next": L.FILL_NEXT, "same": L.FILL_SAME}
NS = 1_000_000_000
T0 = 1_700_000_000 * NS

#: A rule's `limit`: around the mid, so that the ask (or the bid) is now through it, now
#: not (and no price without a bid: the order is blocked); intents (market orders) and
#: `decide` events besides.
LIMITED = """
policy: limited
version: 1
instruments: [A, B]
inputs: [intent]
params: {fast: 3, slow: 8}
features:
  f: ema(price, fast)
  s: sma(price, slow)
signals:
  - when: f > s
    target: 10
    limit: (bid + ask) / 2 * 1.0002
  - when: f < s
    target: -10
    limit: (bid + ask) / 2 * 0.9998
risk:
  max_position: 50
account:
  slippage_bps: 2
  fees_bps: 1
"""


@pytest.fixture(scope="module")
def limited():
    return compile_policy(parse_policy_text(LIMITED, "limited.yaml"))


@pytest.fixture(scope="module")
def legs():
    """test_legs's arbitrage with max_leg_imbalance 60, in the kernel test_legs compiles
    for its risk keys of legs: price_collar and max_gross_exposure are there too, at values
    these quotes never reach (the kernel's orders and reasons on every seed and mode are
    those of the policy with max_leg_imbalance alone), so the suite compiles it once."""
    return guarded(imbalance="60")


def quotes(cp, seed: int, n: int = 400) -> Events:
    """Market events of both instruments a second apart: a random walk with a bid and an
    ask around it (now and then a bid that is no price), with intents (market orders) and
    `decide` events among them when the policy takes intents."""
    rng = np.random.default_rng(seed)
    mids = np.array([100.0, 100.0])
    takes_intents = "intent" in cp.columns
    kind, inst, vals = [], [], []
    for _ in range(n):
        i = int(rng.integers(2))
        roll = rng.random()
        row = dict.fromkeys(cp.columns, np.nan)
        if takes_intents and roll < 0.04:
            kind.append(L.INTENT)
            row[cp.columns[0]] = float(rng.choice([-20.0, 0.0, 5.0, 30.0]))  # vals[:, 0]: the target
        elif takes_intents and roll < 0.1:
            kind.append(L.DECIDE)
        else:
            kind.append(L.MARKET)
            mids[i] *= np.exp(rng.normal(0.0, 0.004))
            half = rng.uniform(0.0, 0.001) * mids[i]
            row.update(price=mids[i], bid=mids[i] - half + rng.normal(0.0, 0.0005) * mids[i],
                       ask=mids[i] + half + rng.normal(0.0, 0.0005) * mids[i])
            if rng.random() < 0.05:
                row["bid"] = np.nan
        inst.append(i)
        vals.append([row[c] for c in cp.columns])
    first = kind.index(L.MARKET)  # before a market event the live path's intents are reduce-only
    return Events(np.arange(n, dtype=np.int64)[first:] * NS + T0, np.array(kind[first:], np.int8),
                  np.array(inst[first:], np.int32), np.array(vals[first:]))


@pytest.mark.parametrize("label", MODES)
@pytest.mark.parametrize("name", ["limited", "legs"])
def test_ioc_orders_through_the_order_core_are_the_kernels(name, label, request):
    cp, mode = request.getfixturevalue(name), MODES[label]
    seen = dict.fromkeys(("orders", "limit orders", "fills", "cancels", "legs of another event", "on decide"), 0)
    for seed in range(6):
        ev = quotes(cp, seed)
        out = assert_same(cp, ev, mode, f"on seed {seed}")
        kernel, core = run_backtest(cp, ev, mode, progress=False), run_through_order_core(cp, ev, mode)
        np.testing.assert_array_equal(kernel.orders[:, L.O_LIMIT], core.orders[:, L.O_LIMIT])  # NaN where NaN
        assert len(core.cancels) == len(kernel.cancels) and len(core.fills) == len(kernel.fills)
        limit = core.orders[~np.isnan(core.orders[:, L.O_LIMIT])]
        seen["orders"] += len(out.compared)
        seen["limit orders"] += len(limit)
        seen["fills"] += len(core.fills)
        seen["cancels"] += len(core.cancels)
        seen["legs of another event"] += int(np.sum(ev.inst[limit[:, L.O_EVENT].astype(int)] != limit[:, L.O_INST]))
        seen["on decide"] += int(np.sum(ev.kind[limit[:, L.O_EVENT].astype(int)] == L.DECIDE))
        assert np.all(core.cancels[:, L.O_FEE] == 0.0) and np.all(~np.isnan(core.cancels[:, L.O_LIMIT]))
    assert seen["limit orders"] >= 20 and seen["fills"] >= 10, seen
    if name == "legs":
        assert seen["legs of another event"] >= 5, seen
    elif label == "same":  # one cancelled at once, sent again on a `decide`
        assert seen["on decide"] >= 3, seen
    if label == "next" or name == "limited":  # under `same` the legs' limits are at or through the quote
        assert seen["cancels"] >= 5, seen


def test_a_cancelled_ioc_order_releases_its_quantity_in_the_core(limited):
    """After the venue cancels an IOC order the core holds it open no longer: its open
    quantity and positions are the kernel's, and what is still open at the end is only
    orders decided on their instrument's last market event (no later event to fill or
    cancel them)."""
    ev = quotes(limited, 1)
    kernel, core = run_backtest(limited, ev, L.FILL_NEXT, progress=False), run_through_order_core(limited, ev)
    assert len(core.cancels)
    assert core.pstate[:, L.P_OPEN].tolist() == kernel.pstate[:, L.P_OPEN].tolist()
    assert core.pstate[:, L.P_POS].tolist() == kernel.pstate[:, L.P_POS].tolist()
    # the last event fills or cancels what is still open under FILL_NEXT only if the
    # instrument trades again: what stays open is an order of the last event of its instrument
    last_event = {int(i): e for e, i in enumerate(ev.inst) if ev.kind[e] == L.MARKET}
    open_rows = core.orders[np.isnan(core.orders[:, L.O_FILL_EVENT]) | (core.orders[:, L.O_FILL_EVENT] < 0)]
    for row in open_rows:
        assert int(row[L.O_EVENT]) >= last_event[int(row[L.O_INST])], "an order left open before its instrument's last event"


def test_intents_with_a_limit_price_are_the_kernels(limited):
    """An intent's limit price (its second value column) goes with it through the order
    core, as the intent message's `limit_price`: near the price (filled or cancelled),
    or not a price (`limit_invalid:blocked`), as in the kernel."""
    for label, mode in MODES.items():
        cancels = invalid = 0
        for seed in range(4):
            ev = quotes(limited, seed)
            rng = np.random.default_rng(seed)
            for e in np.flatnonzero(ev.kind == L.INTENT):
                last = ev.vals[:e][(ev.kind[:e] == L.MARKET) & (ev.inst[:e] == ev.inst[e]), 0]
                near = last[-1] if len(last) else 100.0
                ev.vals[e, 1] = rng.choice([np.nan, near * 1.0005, near * 0.9995, -1.0])
            out = assert_same(limited, ev, mode, f"on seed {seed}")
            core = run_through_order_core(limited, ev, mode)
            from_intents = core.orders[ev.kind[core.orders[:, L.O_EVENT].astype(int)] == L.INTENT]
            cancels += int(np.sum(np.isnan(from_intents[:, L.O_FILL_PRICE]) & (from_intents[:, L.O_FILL_EVENT] >= 0)))
            invalid += core.reasons.get("limit_invalid:blocked", 0)
            assert len(out.compared) == len(core.orders)
        assert cancels >= 1 and invalid >= 1, (label, cancels, invalid)
