"""Cross-instrument references (`X.name`, `X.name[k]`, `age(X)`) and the map form of
`instruments`: values worked out by hand event by event, checked in the kernel and in
the reference interpreter; the checker's located errors; the command line."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from policyc.cli import main
from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.emit import emit
from policyc.compiler.frontend import check_text
from policyc.compiler.interpret import Interpreter
from policyc.compiler.lower import lower
from policyc.compiler.passes import optimise
from policyc.dsl.diagnostics import PolicyError
from policyc.dsl.document import parse_policy_text

NS_S = 1_000_000_000
T0 = 1_700_000_000 * NS_S
NAN = math.nan

VENUES = """\
policy: venues
version: 1
instruments: {bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}
params:
  k: 2
features:
  mid: (bid + ask) / 2
  spread: cb.bid - bn.ask
  cb_mid: cb.mid
  cb_prev: cb.close[1]
  cb_age: age(cb)
  cb_smooth: sma(cb.close, 2)
  wide: spread > 1
  cb_wide: if cb.wide then 1 else 0
  cb_pos: cb.position
  back: cb.close[k]
  own: bn.close[1]
signals:
  - when: wide
    target: 1
risk:
  max_position: 10
"""

# (seconds after T0, instrument, price (= close), bid, ask); bn is 0, cb is 1
TAPE = [(0.0, 0, 100.0, 99.0, 101.0), (1.0, 0, 102.0, 101.0, 103.0), (2.0, 1, 105.0, 104.0, 106.0),
        (4.0, 0, 103.0, 102.0, 104.0), (5.0, 1, 107.0, 106.0, 108.0), (5.5, 1, 108.0, 107.0, 109.0),
        (7.0, 0, 101.0, 100.0, 102.0)]

# Worked by hand. spread = cb's latest bid - bn's latest ask; cb_mid, cb_prev (cb's close
# one cb event before its latest) and cb_age (seconds since cb's latest event) are NaN
# until cb's first event; cb_smooth is the mean of the last two values of cb's latest
# close as this instrument's own events saw it (a NaN, before cb's first event, is
# skipped); cb_wide is false (0) before cb's first event; cb_pos: cb's order of event 4
# (spread 2 > 1: target 1) fills at cb's next event, 5. (`back` and `own`, lookbacks of
# one instrument's close on the other's events, have a tape of their own below: they
# are in this policy to share its kernel.)
EXPECTED = {
    #          spread  cb_mid  cb_prev  cb_age  cb_smooth  wide  cb_wide  cb_pos
    0: (NAN, NAN, NAN, NAN, NAN, 0, 0, 0),
    1: (NAN, NAN, NAN, NAN, NAN, 0, 0, 0),
    2: (1.0, 105.0, NAN, 0.0, NAN, 0, 0, 0),      # cb's own event: 104 - 103; its own mid
    3: (0.0, 105.0, NAN, 2.0, NAN, 0, 0, 0),      # bn: 104 - 104; cb has one event, so no cb_prev
    4: (2.0, 107.0, 105.0, 0.0, 106.0, 1, 1, 0),  # cb: 106 - 104; sma(105, 107)
    5: (3.0, 108.0, 107.0, 0.0, 107.5, 1, 1, 1),  # cb: 107 - 104; its order filled here
    6: (5.0, 108.0, 107.0, 1.5, 106.5, 1, 1, 1),  # bn: 107 - 102; bn's sma(105 at event 3, 108)
}


def tape_events(columns: list[str]) -> Events:
    n = len(TAPE)
    vals = np.full((n, len(columns)), np.nan)
    for e, (_, _, price, bid, ask) in enumerate(TAPE):
        row = {"price": price, "close": price, "bid": bid, "ask": ask}
        for j, c in enumerate(columns):
            vals[e, j] = row[c]
    return Events(np.array([T0 + int(t * NS_S) for t, *_ in TAPE], dtype=np.int64), np.zeros(n, dtype=np.int8),
                  np.array([i for _, i, *_ in TAPE], dtype=np.int32), vals)


def same(a: float, b: float) -> bool:
    return (a != a and b != b) or a == b


@pytest.fixture(scope="module")
def venues():
    return compile_policy(parse_policy_text(VENUES, "venues.yaml"))


def test_references_worked_by_hand_in_the_kernel_and_the_interpreter(venues):
    ev = tape_events(venues.columns)
    res = venues.run(ev, L.FILL_NEXT, trace=True)
    it = Interpreter(venues.program, venues.params, venues.checked.risk, venues.checked.account, 2, L.FILL_NEXT)
    it.run(ev.ts, ev.kind, ev.inst, ev.vals)
    names = ["spread", "cb_mid", "cb_prev", "cb_age", "cb_smooth", "wide", "cb_wide", "cb_pos"]
    columns = [L.TRACE_FIXED + venues.feature_names.index(n) for n in names]
    for e, want in EXPECTED.items():
        kernel = [float(res.trace[e, c]) for c in columns]
        interpreter = it.trace[e]["features"]
        interpreted = [float(interpreter[venues.feature_names.index(n)]) for n in names]
        assert all(same(k, w) for k, w in zip(kernel, want)), (e, kernel, want)
        assert all(same(k, i) for k, i in zip(kernel, interpreted)), (e, kernel, interpreted)
    # cb's order (decided at event 4) and bn's (event 6: spread 5)
    assert [(int(o[L.O_EVENT]), int(o[L.O_INST]), float(o[L.O_QTY])) for o in res.orders] == [(4, 1, 1.0), (6, 0, 1.0)]


def test_a_lookback_on_a_reference_counts_the_other_instruments_events(venues):
    """`cb.close[k]` (`back`, k = 2) on an event of bn is cb's close two of cb's events
    before cb's latest; on cb's own events it is cb's `close[2]`. (VENUES's features `back`
    and `own`, on a tape of closes alone: its other features, of bid and ask, are NaN here.)"""
    cp = venues
    # bn: 10 (e0); cb: 20, 21, 22 (e1-e3); bn: 11 (e4); cb: 23 (e5); bn: 12 (e6)
    tape = [(0, 10.0), (1, 20.0), (1, 21.0), (1, 22.0), (0, 11.0), (1, 23.0), (0, 12.0)]
    ev = Events(T0 + np.arange(len(tape), dtype=np.int64) * NS_S, np.zeros(len(tape), dtype=np.int8),
                np.array([i for i, _ in tape], dtype=np.int32),
                np.array([[p if c in ("price", "close") else NAN for c in cp.columns] for _, p in tape]))
    back = [NAN, NAN, NAN, 20.0, 20.0, 21.0, 21.0]
    own = [NAN, NAN, NAN, NAN, 10.0, 10.0, 11.0]   # bn has no event before its latest until event 4
    for bound in ({}, {"k": 0}):
        run = cp.with_params(**bound).run(ev, trace=True).trace
        want = back if not bound else [NAN, 20.0, 21.0, 22.0, 22.0, 23.0, 23.0]
        got = [float(x) for x in run[:, L.TRACE_FIXED + cp.feature_names.index("back")]]
        assert all(same(g, w) for g, w in zip(got, want)), (bound, got, want)
    got = [float(x) for x in cp.run(ev, trace=True).trace[:, L.TRACE_FIXED + cp.feature_names.index("own")]]
    assert all(same(g, w) for g, w in zip(got, own)), got


def test_one_instrument_reading_itself_compiles_to_the_same_kernel_as_without_the_reference():
    plain = "policy: p\nversion: 1\ninstruments: [ORCL]\nfeatures:\n  m: ema(close, 3)\n  p: m[1]\n" \
            "signals:\n  - when: close > m\n    target: 1\n"
    referred = plain.replace("ema(close, 3)", "ema(ORCL.close, 3)").replace("m[1]", "ORCL.m[1]")
    sources = []
    for text in (plain, referred):
        checked = check_text(text).checked
        sources.append(emit(optimise(lower(checked)), checked))
    assert sources[0] == sources[1]


def test_the_map_form_names_instruments_in_expressions_and_the_hash():
    listed = check_text(VENUES.replace('{bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}', "[bn, cb]"))
    mapped = check_text(VENUES)
    renamed = check_text(VENUES.replace("bn", "bx"))
    assert mapped.checked.instruments == ["binance:BTCUSDT", "coinbase:BTC-USD"]
    assert mapped.checked.aliases == {"bn": 0, "cb": 1}
    assert listed.checked.instruments == ["bn", "cb"]
    assert len({listed.policy_hash, mapped.policy_hash, renamed.policy_hash}) == 3
    same_names = check_text(VENUES.replace('{bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}', "{bn: bn, cb: cb}"))
    assert same_names.policy_hash == listed.policy_hash


def diagnostics(text: str) -> list[tuple]:
    with pytest.raises(PolicyError) as caught:
        check_text(text, name="x.yaml")
    return [(d.code, d.span.line, d.span.column, d.message, d.help) for d in caught.value.diagnostics]


BASE = """\
policy: x
version: 1
instruments: {bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}
params:
  size: 2
features:
  f: close
  g: close
signals:
  - when: f > 0
    target: 1
"""


@pytest.mark.parametrize("old, new, want", [
    ("g: close", "g: cbb.bid", [("E212", 8, 6, "unknown instrument `cbb`", "did you mean `cb`?")]),
    ("g: close", "g: cx.bid", [("E212", 8, 6, "unknown instrument `cx`", "the policy's instruments are `bn`, `cb`")]),
    ("g: close", "g: cb.bidd", [("E201", 8, 9, "unknown name `bidd` of instrument `cb`", "did you mean `bid`?")]),
    ("g: close", "g: cb.equity", [("E213", 8, 9, "`equity` is the account's, not an instrument's",
                                   "write `equity`: one account serves every instrument; an instrument's own are "
                                   "`cb.position`, `cb.entry_price`, `cb.unrealized_pnl`")]),
    ("g: close", "g: cb.size", [("E213", 8, 9, "param `size` is the policy's, not an instrument's", "write `size`")]),
    ("g: close", "g: hour(cb.ts)", [("E204", 8, 11, "`cb.ts`: `ts` can only be passed to hour, minute_of_day or "
                                     "day_of_week, and only as this event's time",
                                     "the seconds since `cb`'s latest market event are `age(cb)`")]),
    ("g: close", "g: cb.f > 0 and 1", [("E204", 8, 19, "`and` needs true/false, but this is a number",
                                        "compare it, e.g. `x > 0`")]),
    ("g: close", "g: cb.f + (cb.f > 0)", [("E204", 8, 14, "`+` needs a number, but this is true/false",
                                           "use `if c then 1 else 0` to turn a condition into a number")]),
    ("g: close", "g: age(close)", [("E212", 8, 10, "unknown instrument `close`",
                                    "`close` is a value, not an instrument; the policy's instruments are `bn`, `cb`")]),
    ("g: close", "g: age(1)", [("E212", 8, 10, "`age` takes the name of an instrument",
                                "write `age(X)` with X one of the policy's instruments: `bn`, `cb`")]),
    ("f: close", "f: cb.f + 1", [("E208", 7, 3, "features depend on each other with no lookback: f -> f",
                                  "break the cycle with a lookback of 1 or more, e.g. `f[1]`")]),
    ("g: close", "g: bn.f\n  h: cb.g", []),  # no cycle: f, then g, then h
])
def test_reference_errors_are_located_with_help(old, new, want):
    text = BASE.replace(old, new)
    if not want:
        check_text(text)
        return
    assert diagnostics(text) == want


def test_a_cycle_through_two_instruments_is_found():
    text = BASE.replace("f: close", "f: cb.g").replace("g: close", "g: bn.f")
    [(code, line, column, message, help_)] = diagnostics(text)
    assert (code, line, column) == ("E208", 7, 3)
    assert message == "features depend on each other with no lookback: f -> g -> f"
    # a lookback of one event breaks it
    check_text(BASE.replace("f: close", "f: nz(cb.g[1], 0)").replace("g: close", "g: bn.f"))


def test_a_symbol_that_is_no_name_needs_the_map_form():
    text = BASE.replace('{bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}', "[ORCL, BTC-USD]").replace(
        "g: close", "g: BTC.close")
    assert diagnostics(text) == [("E212", 8, 6, "unknown instrument `BTC`",
                                  '`BTC-USD` is not a name: write `instruments` as a map of names to symbols, '
                                  'e.g. `instruments: {x: "BTC-USD"}`, and read it as `x.close`')]


def test_map_form_errors():
    bad_name = BASE.replace('{bn: "binance:BTCUSDT"', '{1bn: "binance:BTCUSDT"')
    assert diagnostics(bad_name)[0][:4] == ("E008", 3, 15, "invalid instrument name `1bn`")
    twice = BASE.replace('cb: "coinbase:BTC-USD"', 'cb: "binance:BTCUSDT"')
    assert diagnostics(twice)[0][:4] == ("E205", 3, 42, "`binance:BTCUSDT` is listed twice in `instruments`")


def write_csv(path, rows):
    path.write_text("timestamp,price,bid,ask\n" + "".join(
        f"2024-01-02T00:00:{t:06.3f}Z,{p},{b},{a}\n" for t, _, p, b, a in rows))


def test_backtest_binds_data_by_the_policys_names(tmp_path, capsys):
    policy = tmp_path / "venues.yaml"
    policy.write_text(VENUES)
    bn, cb = tmp_path / "bn.csv", tmp_path / "cb.csv"
    write_csv(bn, [r for r in TAPE if r[1] == 0])
    write_csv(cb, [r for r in TAPE if r[1] == 1])
    orders = tmp_path / "orders.csv"
    assert main(["backtest", str(policy), "--data", f"bn={bn}", "--data", f"cb={cb}", "--fill", "next",
                 "--orders", str(orders)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^events +7$", out, re.M)
    lines = orders.read_text().splitlines()
    assert len(lines) == 3 and "coinbase:BTC-USD" in lines[1] and "binance:BTCUSDT" in lines[2]
    # the symbols work as well, and a name and its symbol together are one instrument twice
    assert main(["backtest", str(policy), "--data", f"binance:BTCUSDT={bn}", "--data", f"cb={cb}"]) == 0
    capsys.readouterr()
    assert main(["backtest", str(policy), "--data", f"binance:BTCUSDT={bn}", "--data", f"bn={cb}"]) == 1
    assert "`binance:BTCUSDT` twice" in capsys.readouterr().err


def test_the_live_engine_reads_references_across_its_one_event_calls(venues):
    """Live, each event is a call of its own, named by symbol: the other instrument's
    latest values and fills carry over between calls, and the decisions are the backtest's."""
    from policyc.runtime.engine import Engine

    engine = Engine(venues, L.FILL_NEXT)
    symbols = venues.instruments
    decided = []
    for t, i, price, bid, ask in TAPE:
        d = engine.market(symbols[i], T0 + int(t * NS_S), {"price": price, "close": price, "bid": bid, "ask": ask})
        decided.append((d.instrument, d.desired_target, d.order_qty))
    assert decided == [("binance:BTCUSDT", 0.0, 0.0), ("binance:BTCUSDT", 0.0, 0.0), ("coinbase:BTC-USD", 0.0, 0.0),
                       ("binance:BTCUSDT", 0.0, 0.0), ("coinbase:BTC-USD", 1.0, 1.0), ("coinbase:BTC-USD", 1.0, 0.0),
                       ("binance:BTCUSDT", 1.0, 1.0)]
    assert engine.positions() == {"binance:BTCUSDT": 0.0, "coinbase:BTC-USD": 1.0}
