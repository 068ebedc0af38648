"""A backtest fills an IOC limit order at the data's quote whenever the data has one.

A policy with a `limit` that reads neither `bid` nor `ask` still has both among its event
columns, as optional columns: a data file with them is read and checked as for any
column, and a buy fills at the ask (a sell at the bid) when that is at or through the
limit, else it is cancelled, whatever the price; a file without them fills at the price,
as before. Worked by hand on two-row files (the order decided on the first row fills or
is cancelled on the second, under `--fill next`), and the same in the reference
interpreter and through the live order path. One kernel: the limit and the size are
params, bound again with `with_params` (a second policy, the same with an `intent`
input, is the environment's of policyc.gym).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from test_core_backtest import assert_same as assert_core_same
from test_differential import differences
from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.frontend import check_policy
from policyc.compiler.lower import lower
from policyc.compiler.passes import optimise
from policyc.dsl.document import parse_policy_text
from policyc.gym import PolicyEnv, check_events
from policyc.runtime.backtest import load_events, run_backtest, run_through_order_core
from policyc.runtime.data import DataError, load_table, merge
from policyc.runtime.engine import VECTOR_MIN, Engine, EngineError

NS = 1_000_000_000
T0 = 1_700_000_000 * NS

#: Buys (sells with a negative size) `size` at the limit `lim` whenever it holds nothing;
#: reads `close` and no quote.
QUOTED = """
policy: quoted
version: 1
instruments: [A]
params: {lim: 100.5, size: 10}
signals:
  - when: position == 0 and close > 0
    target: size
    limit: lim
"""

#: The two rows: the decision on the first, the fill or the cancel on the second, whose
#: quote is bid 99.8, ask 100.2 around a price of 100.
WITH_QUOTE = "Date,Close,Bid,Ask\n2024-01-02,100,99.9,100.1\n2024-01-03,100,99.8,100.2\n"
WITHOUT_QUOTE = "Date,Close\n2024-01-02,100\n2024-01-03,100\n"


@pytest.fixture(scope="module")
def quoted():
    return compile_policy(parse_policy_text(QUOTED, "quoted.yaml"))


@pytest.fixture(scope="module")
def steered():
    """QUOTED with an `intent` input, as policyc.gym steers a policy."""
    return compile_policy(parse_policy_text(QUOTED.replace("params:", "inputs: [intent]\nparams:"), "steered.yaml"))


def program_of(text: str):
    """The optimised program of a policy text, without a kernel (no Numba compile)."""
    return optimise(lower(check_policy(parse_policy_text(text, "p.yaml")).checked))


def backtest(cp, tmp_path, text: str):
    path = tmp_path / "a.csv"
    path.write_text(text)
    events, _ = load_events(cp, [(None, str(path))])
    return events, run_backtest(cp, events, L.FILL_NEXT, progress=False)


def test_a_limit_policy_has_the_quote_as_optional_columns(quoted):
    assert quoted.columns == ["price", "close", "bid", "ask"]
    assert quoted.optional_columns == ("bid", "ask")
    assert quoted.manifest()["optional_columns"] == ["bid", "ask"]


def test_the_quote_goes_among_the_market_fields_and_only_for_limit_orders():
    # a side the policy reads is required as before; the other is optional, in MARKET_FIELDS order
    reads_bid = program_of(QUOTED.replace("params:", "inputs: [score]\nparams:").replace("limit: lim",
                                                                                    "limit: bid + score"))
    assert reads_bid.columns == ["price", "close", "bid", "ask", "score"] and reads_bid.optional_columns == ("ask",)
    assert reads_bid.ops[reads_bid.rules[0][2]].kind == "arith"
    fields = {reads_bid.ops[k].attr[0] for k in range(len(reads_bid.ops)) if reads_bid.ops[k].kind == "field"}
    assert fields == {1, 2, 4}  # `close`, `bid` and `score`, at their columns once `ask` is in
    # an intent's limit price comes with an intent event, never from a data file
    intents = program_of("policy: i\nversion: 1\ninstruments: [A]\ninputs: [intent]\nsignals: []\n")
    assert intents.columns == ["price", "intent"] and intents.optional_columns == ()
    market = program_of(QUOTED.replace("    limit: lim\n", ""))
    assert market.columns == ["price", "close"] and market.optional_columns == ()


@pytest.mark.parametrize("size, lim, fill", [
    (10, 100.5, 100.2),       # a buy fills at the ask, not at the price
    (10, 100.2, 100.2),       # at the limit
    (10, 100.1, None),        # the ask is above the limit, the price is not: cancelled
    (-10, 99.5, 99.8),        # a sell fills at the bid
    (-10, 99.8, 99.8),
    (-10, 99.9, None),        # the bid is below the limit, the price is not: cancelled
])
def test_an_ioc_order_fills_at_the_quote_of_the_data(quoted, tmp_path, size, lim, fill):
    cp = quoted.with_params(size=size, lim=lim)
    events, run = backtest(cp, tmp_path, WITH_QUOTE)
    np.testing.assert_array_equal(events.vals[:, cp.columns.index("ask")], [100.1, 100.2])
    first = run.orders[0]
    assert (first[L.O_EVENT], first[L.O_FILL_EVENT], first[L.O_QTY], first[L.O_LIMIT]) == (0, 1, size, lim)
    if fill is None:
        assert math.isnan(first[L.O_FILL_PRICE]) and first[L.O_FEE] == 0.0
        assert len(run.orders) == 2 and run.orders[1][L.O_FILL_EVENT] == -1  # decided again, still open
        assert run.pstate[0, L.P_POS] == 0.0
    else:
        assert first[L.O_FILL_PRICE] == fill and len(run.orders) == 1
        assert run.pstate[0, L.P_POS] == size
    assert not differences(cp, events, L.FILL_NEXT)
    assert not differences(cp, events, L.FILL_SAME)
    assert_core_same(cp, events, L.FILL_NEXT, f"size {size}, limit {lim}")
    core = run_through_order_core(cp, events, L.FILL_NEXT)
    np.testing.assert_array_equal(core.orders, run.orders)


@pytest.mark.parametrize("size, lim", [(10, 100.1), (-10, 99.9)])
def test_without_a_quote_in_the_data_it_fills_at_the_price(quoted, tmp_path, size, lim):
    cp = quoted.with_params(size=size, lim=lim)
    events, run = backtest(cp, tmp_path, WITHOUT_QUOTE)
    assert np.isnan(events.vals[:, 2:]).all()  # bid and ask: NaN
    assert len(run.orders) == 1 and run.orders[0][L.O_FILL_PRICE] == 100.0
    assert not differences(cp, events, L.FILL_NEXT)
    assert_core_same(cp, events, L.FILL_NEXT)


@pytest.mark.parametrize("cell", ["", "oops", "0", "-1", "inf"])
def test_a_quote_cell_with_no_price_leaves_its_row_without_a_quote(quoted, tmp_path, cell):
    """A column the policy does not read never makes a bad row: the row is kept, with no
    quote, and its order fills against the price, as with a file without the column."""
    cp = quoted.with_params(size=10, lim=100.5)
    events, run = backtest(cp, tmp_path, f"Date,Close,Bid,Ask\n2024-01-02,100,99.9,100.1\n2024-01-03,100,99.8,{cell}\n")
    assert len(events) == 2 and math.isnan(events.vals[1, cp.columns.index("ask")])
    assert events.vals[1, cp.columns.index("bid")] == 99.8
    assert run.orders[0][L.O_FILL_PRICE] == 100.0
    assert not differences(cp, events, L.FILL_NEXT)


def test_a_crossed_quote_is_left_out_when_unread_and_a_bad_row_when_read(quoted, tmp_path):
    cp = quoted.with_params(size=10, lim=100.5)
    crossed = "Date,Close,Bid,Ask\n2024-01-02,100,99.9,100.1\n2024-01-03,100,100.3,100.2\n"
    events, run = backtest(cp, tmp_path, crossed)
    assert np.isnan(events.vals[1, [cp.columns.index("bid"), cp.columns.index("ask")]]).all()
    assert run.orders[0][L.O_FILL_PRICE] == 100.0  # not the crossed ask's better price
    path = tmp_path / "a.csv"
    with pytest.raises(DataError, match=r"a\.csv:3: `Bid` 100\.3 is above `Ask` 100\.2: a crossed quote") as err:
        load_table(path, ["close", "bid"], optional=["ask"])
    assert err.value.line == 3
    table = load_table(path, ["close", "bid"], skip_bad_rows=True, optional=["ask"])
    assert len(table) == 1 and table.skipped == {"crossed quote": 1}


def test_an_order_filled_at_a_bars_open_meets_the_open_not_the_bars_quote(quoted, tmp_path):
    """next-open: the order decided on the first bar fills at the second bar's open. That
    bar opens at 110, through the limit of 100.5: cancelled, though the quote at the bar's
    end (ask 100.2) is inside the limit; as the interpreter and the order path's book do."""
    from policyc.runtime.fills import FillBook, FillModel

    cp = quoted.with_params(size=10, lim=100.5)
    path = tmp_path / "a.csv"
    path.write_text("Date,Open,High,Low,Close,Bid,Ask\n2024-01-02,100,101,99,100,99.9,100.1\n"
                    "2024-01-03,110,111,99,100,99.8,100.2\n")
    events, _ = load_events(cp, [(None, str(path))], bars=True)
    for mode in (L.FILL_NEXT_OPEN, L.FILL_LATENCY):
        run = run_backtest(cp, events, mode, progress=False)
        assert math.isnan(run.orders[0][L.O_FILL_PRICE]) and run.orders[0][L.O_FILL_EVENT] == 1
        assert not differences(cp, events, mode)
    # a bar opening inside the limit fills at the open, not at the bar's ask
    path.write_text(path.read_text().replace("2024-01-03,110,111", "2024-01-03,100.4,111"))
    events, _ = load_events(cp, [(None, str(path))], bars=True)
    run = run_backtest(cp, events, L.FILL_NEXT_OPEN, progress=False)
    assert run.orders[0][L.O_FILL_PRICE] == 100.4
    assert not differences(cp, events, L.FILL_NEXT_OPEN)
    with pytest.raises(ValueError, match="fills `next` or `same`"):
        run_through_order_core(cp, events, L.FILL_NEXT_OPEN)
    book = FillBook(FillModel(), L.FILL_NEXT_OPEN)
    book.market("A", T0, 100.0, bar_open=100.0, fields={"bid": 99.9, "ask": 100.1})
    assert book.order("x", "A", 10.0, event_ts=T0, limit_price=100.5) is None
    (fill,) = book.market("A", T0 + NS, 100.0, bar_open=110.0, fields={"bid": 99.8, "ask": 100.2})
    assert fill.qty == 0.0 and fill.unfilled == 10.0


def test_optional_columns_of_load_table(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(WITHOUT_QUOTE)
    table = load_table(path, ["close", "bid"], optional=["bid", "ask"])
    assert list(table.columns) == ["close"]
    with pytest.raises(KeyError):
        merge([table], ["close", "bid", "ask"])
    events = merge([table], ["close", "bid", "ask"], optional=["bid", "ask"])
    assert events.vals[:, 0].tolist() == [100.0, 100.0] and np.isnan(events.vals[:, 1:]).all()
    with pytest.raises(DataError, match="the policy reads `bid` but the file has no such column"):
        load_table(path, ["close", "bid"], optional=["ask"])
    path.write_text(WITH_QUOTE)  # the slow reader (a date format) reads them as the clean one does
    for date_format in (None, "%Y-%m-%d"):
        table = load_table(path, ["close"], date_format=date_format, optional=["ask", "bid"])
        assert list(table.columns) == ["close", "ask", "bid"] and table.columns["bid"].tolist() == [99.9, 99.8]


def test_bars_are_optional_columns_too(quoted, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("Date,Open,High,Low,Close,Ask\n2024-01-02,99,101,98,100,100.1\n2024-01-03,99,101,98,100,100.2\n")
    events, tables = load_events(quoted, [(None, str(path))], bars=True)
    assert events.bars.tolist() == [[99.0, 101.0, 98.0], [99.0, 101.0, 98.0]]
    assert np.isnan(events.vals[:, quoted.columns.index("bid")]).all()
    path.write_text("Date,Open,High,Low,Close\n2024-01-02,99,101,98,100\n2024-01-03,99,97,98,100\n")
    with pytest.raises(DataError, match=r"a\.csv:3: `High` 97 is below `Low` 98"):
        load_events(quoted, [(None, str(path))], bars=True)
    path.write_text(WITHOUT_QUOTE)
    events, _ = load_events(quoted, [(None, str(path))], bars=True)
    assert events.bars is None


def test_the_engine_takes_market_events_with_or_without_a_quote(quoted):
    engine = Engine(quoted.with_params(size=10, lim=100.5), L.FILL_NEXT)
    decision = engine.market("A", T0, {"price": 100.0})  # a tick: no quote, NaN there
    assert decision.order_qty == 10 and decision.limit_price == 100.5
    engine.market("A", T0 + NS, {"price": 100.0, "bid": 99.8, "ask": 100.2})
    order = engine.session.orders[0]
    assert order[L.O_FILL_PRICE] == 100.2 and engine.position("A") == 10
    # without a quote, at the price
    engine = Engine(quoted.with_params(size=10, lim=100.5), L.FILL_NEXT)
    engine.market("A", T0, {"price": 100.0, "bid": 99.8, "ask": 100.2})
    engine.market("A", T0 + NS, {"price": 100.0})
    assert engine.session.orders[0][L.O_FILL_PRICE] == 100.0
    # a batch written column by column (VECTOR_MIN events or more) without a quote
    engine = Engine(quoted.with_params(size=10, lim=100.5), L.FILL_NEXT)
    results = engine.market_many([("A", T0 + k * NS, {"price": 100.0}) for k in range(VECTOR_MIN)])
    assert not any(isinstance(r, EngineError) for r in results) and results[0].order_qty == 10
    assert engine.session.orders[0][L.O_FILL_PRICE] == 100.0 and engine.position("A") == 10


def test_the_environment_takes_data_with_or_without_a_quote(steered, tmp_path):
    assert steered.columns == ["price", "close", "bid", "ask", "intent"]
    bid = steered.columns.index("bid")
    for text, quote in ((WITHOUT_QUOTE, [math.nan, math.nan]), (WITH_QUOTE, [99.9, 99.8])):
        path = tmp_path / "a.csv"
        path.write_text(text)
        env = PolicyEnv(steered, str(path), warmup=0, random_start=False, max_target=10.0)
        np.testing.assert_array_equal(env.events.vals[:, bid], quote)
    # events given as data, as the same rows of a file: in the quote the policy does not read,
    # a value that is no usable price, and both sides of a crossed quote, leave no quote
    ask = steered.columns.index("ask")
    vals = np.column_stack([np.full(5, 100.0), np.full(5, 100.0), [99.9, 0.0, 100.3, -1.0, np.inf],
                            [100.1, 100.1, 100.2, 100.1, 100.1], np.full(5, np.nan)])
    checked = check_events(steered, Events.market(np.arange(5) * NS, vals)).vals
    np.testing.assert_array_equal(checked[:, bid], [99.9, np.nan, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(checked[:, ask], [100.1, 100.1, np.nan, 100.1, 100.1])
    assert vals[1, bid] == 0.0  # the events given are left as they are
    vals[3, 1] = 0.0  # a price the policy reads is still refused
    with pytest.raises(ValueError, match="event 3: `close` is 0; prices must be positive and finite"):
        check_events(steered, Events.market(np.arange(5) * NS, vals))
