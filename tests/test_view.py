"""The terminal view (runtime/live/view.py) on a terminal of 80 x 24: a live runtime fed
market data and venue answers through the callbacks its sockets call, rendered with 1,
3 and 50 instruments, with and without limits. Every line fits 80 cells, the whole fits
24 rows, and the figures shown are the kernel's, worked by hand for three instruments."""
import io

import numpy as np
import orjson
import pytest
from rich.cells import cell_len
from rich.console import Console

from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.live.runner import LiveRuntime, RunConfig
from policyc.runtime.live.view import FeedRate, account_figures, progress_line, render, runtime_view

from test_live_runner import Venue

T0 = int(np.datetime64("2024-01-02T01:00", "ns").astype(np.int64))
DAY = 86_400 * 10**9
LIMITS = """risk:
  max_orders_per_day: 20
  max_margin_usage: 50%
  max_drawdown: 20%
"""


# Each distinct kernel source costs a Numba compile of seconds. The source depends on the
# number of instruments (1, 3 or 50 here) and on whether the risk limits are there (the
# view shows "no limit" for an absent key: a code path of its own), not on the
# instruments' names, so every test below runs on one of five kernels: 1 instrument with
# LIMITS, and 3 or 50 instruments with or without them.
def policy_text(names: list[str], limits: bool) -> str:
    return f"""
policy: view_case
version: 1
instruments: [{", ".join(names)}]
signals:
  - when: close > 105
    target: 4
  - when: close > 0
    target: 10
{LIMITS if limits else ""}account:
  margin_rate: 50%
"""


class Run:
    """A runtime with its venue and feed connections up and no sockets: market data and
    venue answers go in through `on_feed_messages` and `on_venue_messages`."""

    def __init__(self, tmp_path, names: list[str], limits: bool):
        policy = compile_policy(parse_policy_text(policy_text(names, limits), "view_case.yaml"))
        self.rt = LiveRuntime(policy, RunConfig("ws://127.0.0.1:9001/feed", "ws://127.0.0.1:9002/venue",
                                                log_path=str(tmp_path / "log.jsonl")))
        self.venue = Venue()
        self.rt._venue_connected(self.venue)  # a new run asks the venue's state first: flat, nothing open
        self.rt.on_venue_messages([orjson.dumps({"type": "state", "positions": {}, "open_orders": []})])
        self.rt._link_up("venue")
        self.rt._feed_connected(self.venue)  # a stream stand-in: the feed sends nothing back
        self.rt._link_up("feed")

    def tick(self, name: str, ts: int, price: float) -> str | None:
        """A market event; the id of the order it caused, if any."""
        before = len(self.venue.sent)
        self.rt.on_feed_messages([orjson.dumps({"type": "tick", "instrument": name, "ts": ts, "price": price})])
        sent = [m for m in self.venue.sent[before:] if m["type"] == "order"]
        return sent[0]["client_order_id"] if sent else None

    def answer(self, oid: str, fill: tuple[float, float, float] | None = None) -> None:
        """The venue's ack of `oid` and, given (qty, price, fee), its fill."""
        replies = [{"type": "ack", "client_order_id": oid, "venue_order_id": "V1"}]
        if fill is not None:
            qty, price, fee = fill
            replies.append({"type": "fill", "client_order_id": oid, "qty": qty, "price": price, "fee": fee, "ts": T0})
        self.rt.on_venue_messages([orjson.dumps(r) for r in replies])


def screen(renderable, width: int = 80, height: int = 24) -> list[str]:
    """The lines a terminal of `width` x `height` shows, checked to fit it."""
    console = Console(width=width, height=height, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    lines = console.export_text().splitlines()
    assert len(lines) <= height, "\n".join(lines)
    assert all(cell_len(line) <= width for line in lines), "\n".join(lines)
    return lines


def row(lines: list[str], label: str) -> str:
    """The figure after `label` in the account or the risk column (38 cells each)."""
    [cell] = [line[start:start + 38] for line in lines for start in (0, 40) if line[start:].startswith(label + " ")]
    return cell[len(label):].strip()


@pytest.fixture
def three(tmp_path):
    """The hand-worked case: three instruments over two UTC days, fills with fees given
    by the venue.

    Day 1: AAA at 100 buys 10 (filled at 100, fee 1.00); BBB at 50 buys 10 (filled at 50,
    fee 0.50); CCC at 20 buys 10 (acknowledged, never filled); AAA at 110 sells 6 to the
    target of 4 (filled at 110, fee 0.66); BBB at 45. Day 2: AAA at 112 and 115; BBB at
    106 sells 6 (acknowledged, not filled).

    Realised: AAA -1.00 + 6 x (110 - 100) - 0.66 = 58.34, BBB -0.50: 57.84.
    Unrealised: AAA 4 x (115 - 100) = 60, BBB 10 x (106 - 50) = 560: 620.00.
    Cash: 100,000 - 1,001 - 500.50 + 659.34 = 99,157.84; equity 99,157.84 + 4 x 115 +
    10 x 106 = 100,677.84 = 100,000 + 57.84 + 620.
    Day 2 opened at the equity after its first event (AAA at 112): 100,047.84 + 4 x 2 =
    100,055.84, so today's P&L is 622.00; orders today: 1 (BBB's sell).
    Gross exposure: 4 x 115 + |10 - 6| x 106 + 10 x 20 = 1,084; margin usage 1,084 x 50%
    / 100,677.84 = 0.5384%."""
    run = Run(tmp_path, ["AAA", "BBB", "CCC"], limits=True)
    run.answer(run.tick("AAA", T0, 100.0), (10, 100.0, 1.0))
    run.answer(run.tick("BBB", T0 + 1, 50.0), (10, 50.0, 0.5))
    run.answer(run.tick("CCC", T0 + 2, 20.0))
    run.answer(run.tick("AAA", T0 + 3, 110.0), (6, 110.0, 0.66))
    assert run.tick("BBB", T0 + 4, 45.0) is None
    assert run.tick("AAA", T0 + DAY, 112.0) is None and run.tick("AAA", T0 + DAY + 1, 115.0) is None
    run.answer(run.tick("BBB", T0 + DAY + 2, 106.0))
    yield run
    run.rt.log.close()


def test_the_figures_are_the_kernels_worked_by_hand(three):
    f = account_figures(three.rt.engine)
    assert f["realised_pnl"] == pytest.approx(57.84, abs=1e-9)
    assert f["unrealised_pnl"] == pytest.approx(620.0, abs=1e-9)
    assert three.rt.engine.equity == pytest.approx(100_677.84, abs=1e-9)
    assert f["realised_pnl"] + f["unrealised_pnl"] == pytest.approx(three.rt.engine.equity - 100_000, abs=1e-9)
    assert f["today_pnl"] == pytest.approx(622.0, abs=1e-9)
    assert (f["orders_today"], f["max_orders_per_day"]) == (1, 20.0)
    assert f["margin_usage"] == pytest.approx(1084 * 0.5 / 100_677.84, rel=1e-12)
    assert (f["max_margin_usage"], f["max_drawdown"]) == (0.5, 0.2)
    assert f["instruments"] == {"AAA": (pytest.approx(60.0), 460.0), "BBB": (pytest.approx(560.0), 424.0),
                                "CCC": (0.0, 200.0)}


def test_the_view_of_three_instruments_shows_those_figures_in_80_by_24(three):
    rate = FeedRate()
    rate.update(0, 100.0)
    lines = screen(runtime_view(three.rt, rate=rate, total=5_036, now=102.0))
    assert lines[0].startswith("view_case  trading  policy_hash ")
    assert lines[1] == "feed  ws://127.0.0.1:9001/feed  connected"
    assert lines[2] == "venue ws://127.0.0.1:9002/venue  connected"
    # 8 market events of 5,036, the last on 2024-01-03 01:00 UTC, 8 events in 2 s
    assert lines[3].startswith("progress  8/5,036 events   0.2% ") and lines[3].endswith("2024-01-03 01:00  4 ev/s")
    assert row(lines, "equity") == "100,677.84"
    assert row(lines, "realised P&L") == "+57.84"
    assert row(lines, "unrealised P&L") == "+620.00"
    assert row(lines, "today's P&L") == "+622.00"
    assert row(lines, "cash") == "99,157.84"
    assert row(lines, "kill switch") == "off"
    assert row(lines, "orders today") == "1 / 20"
    assert row(lines, "margin usage") == "0.54% / 50.00%"
    assert row(lines, "drawdown") == "0.00% / 20.00%"
    table = lines[lines.index(next(line for line in lines if "instrument" in line and "exposure" in line)) + 1:][:3]
    assert [line.split() for line in table] == [["AAA", "+4", "+0", "115.0000", "+60.00", "460"],
                                                ["BBB", "+10", "-6", "106.0000", "+560.00", "424"],
                                                ["CCC", "+0", "+10", "20.0000", "+0.00", "200"]]
    assert any(line.startswith("events 8  orders 5  fills 3  rejects 0  cancels 0  unacked 0  bad 0") for line in lines)


def test_the_kill_switch_shows_in_the_first_line_and_the_risk_column(three):
    three.rt.halt("operator halt")
    lines = screen(runtime_view(three.rt))
    assert "KILL SWITCH ON: flattening" in lines[0] and row(lines, "kill switch") == "ON"
    assert lines[3] == "progress  8 events  2024-01-03 01:00"  # no total, no rate yet: the count and the time


# Five of the six kernels cover every branch below: 1, 3 and 50 instruments (all of them
# listed, and a table cut to 6 with a "more" line), with limits and without (their rows,
# and at 50 the orders past the day's limit of 20 not sent, so 50 runs both ways). One
# instrument runs with limits only: test_a_peers_text_cannot_move_the_cursor... compiles
# that kernel anyway, and the rows without limits are those checked with 3 and with 50.
@pytest.mark.parametrize("n, limits", [(1, True), (3, True), (3, False), (50, True), (50, False)])
def test_any_number_of_instruments_fits_80_by_24(tmp_path, n, limits):
    names = [f"I{k:02d}" for k in range(n)]
    run = Run(tmp_path, names, limits)
    try:
        for k, name in enumerate(names):  # the later an instrument, the larger its exposure: 10 x (50 + k)
            oid = run.tick(name, T0 + k, 50.0 + k)
            assert (oid is None) == (limits and k >= 20)  # max_orders_per_day: 20
            if oid is not None:
                run.answer(oid, (10, 50.0 + k, 0.0))
        lines = screen(runtime_view(run.rt, total=n))
        if limits:
            assert row(lines, "orders today") == f"{min(n, 20)} / 20"
            assert row(lines, "margin usage").endswith(" / 50.00%")
        else:
            assert row(lines, "orders today") == f"{n} (no limit)"
            assert "/" not in row(lines, "margin usage") and "/" not in row(lines, "drawdown")
        header = next(k for k, line in enumerate(lines) if "instrument" in line and "exposure" in line)
        shown = [line.split()[0] for line in lines[header + 1:] if line.startswith(("I", "+"))]
        if n <= 6:
            assert shown == names  # all of them, in the policy's order
        else:
            filled = min(n, 20) if limits else n  # orders past the day's limit are not sent
            assert shown[:6] == [f"I{k:02d}" for k in range(filled - 1, filled - 7, -1)]
            assert lines[header + 7].strip() == f"+{n - 6} more"
    finally:
        run.rt.log.close()


def test_long_names_numbers_and_reasons_are_cut_not_wrapped(tmp_path):
    # three instruments, not two: the kernel depends on the number of instruments (not
    # their names), so this shares the compile of the three-instrument case without limits
    names = ["binance:" + "X" * 30, "B", "C"]
    run = Run(tmp_path, names, limits=False)
    try:
        run.rt.links["feed"].url = "wss://" + "feed." * 40 + "example"
        run.answer(run.tick(names[0], T0, 123_456_789.0), (4, 123_456_789.0, 0.0))  # bought on credit
        status = run.rt.status()
        status["recent"] = [{"seq": 10**9, "kind": "risk", "instrument": names[0],
                             "reasons": ["max_position:clipped", "max_margin_usage:clipped", "stop_loss:exit"]}] * 8
        lines = screen(render(status, {"p50_us": 1e9, "p99_us": 1e10}, run.rt.links,
                              figures=account_figures(run.rt.engine), total=10**9, rate=1e7, event_ts=T0))
        assert lines[1].startswith("feed  wss://feed.") and lines[1].endswith("…")
        assert row(lines, "equity") == "100,000.00" and row(lines, "cash") == "-493,727,156.00"
        assert [line.split() for line in lines if line.startswith("binance:")] == [
            ["binance:XXXXXXX…", "+4", "+0", "1.235e+08", "+0.00", "493,827,156"]]
        decisions = [line for line in lines if "max_position:clipped" in line]
        assert decisions and all(line.split()[:3] == ["1000000000", "risk", "binance:XXXXXXX…"] and
                                 line.rstrip().endswith("…") for line in decisions)
    finally:
        run.rt.log.close()


def test_a_taller_and_wider_terminal_shows_more_instruments_and_decisions(tmp_path):
    names = [f"I{k:02d}" for k in range(50)]
    run = Run(tmp_path, names, limits=False)
    try:
        for k, name in enumerate(names):
            run.answer(run.tick(name, T0 + k, 50.0 + k), (10, 50.0 + k, 0.0))
        small = screen(runtime_view(run.rt))
        large = screen(runtime_view(run.rt, width=120, height=40), width=120, height=40)
        assert len(large) == 40 and "+28 more" in "\n".join(large) and "+44 more" in "\n".join(small)
    finally:
        run.rt.log.close()


def test_progress_with_and_without_the_feeds_length():
    assert str(progress_line(2_345, 5_036, 812.4, None, 80)) == (
        "progress  2,345/5,036 events  46.6% " + "━" * 20 + "  812 ev/s")
    assert str(progress_line(2_345, None, 812.4, T0, 80)) == "progress  2,345 events  2024-01-02 01:00  812 ev/s"
    assert str(progress_line(10, 0, None, None, 80)).startswith("progress  10/0 events 100.0% ")


def test_the_feed_rate_is_over_the_last_five_seconds():
    rate = FeedRate()
    assert rate.update(0, 10.0) is None
    assert rate.update(100, 11.0) == 100.0
    assert rate.update(1_100, 16.0) == 200.0                     # 11 s to 16 s: the sample at 10 s dropped
    assert rate.update(1_200, 17.0) == pytest.approx(1_100 / 6)  # 11 s to 17 s: at least 5 s of history


def test_a_peers_text_cannot_move_the_cursor_and_large_counts_do_not_wrap(tmp_path):
    """A feed names an unknown instrument `ESC[2J` and newlines: the bad message's reason
    reaches the latest decisions, shown with `?` for each such character, on one row.
    Counts in the millions stay on their line, cut at 80 columns, not wrapped."""
    run = Run(tmp_path, ["ORCL"], limits=True)
    try:
        run.rt.on_feed_messages([orjson.dumps({"type": "tick", "instrument": "\x1b[2J\nY\nZ\u202e", "ts": T0,
                                               "price": 1.0})])
        status = run.rt.status()
        assert "\x1b[2J" in str(status["recent"][-1]["reason"])  # the record keeps what came, the view does not
        status.update(events=12_345_678, orders=123_456, fills=123_456, rejects=1_234, bad_messages=1_234,
                      reconnects=17, unacknowledged=12_345)
        console = Console(width=80, height=24, record=True, file=io.StringIO(), color_system=None)
        console.print(render(status, {"p50_us": 95.0, "p99_us": 410.0}, run.rt.links,
                             figures=account_figures(run.rt.engine)))
        text = console.export_text()
        assert "\x1b" not in text
        assert "\u202e" not in text
        assert "unknown instrument `?[2" in text  # on one row, cut to its column
        assert len(screen(render(status, {"p50_us": 95.0, "p99_us": 410.0}, run.rt.links,
                                 figures=account_figures(run.rt.engine)))) <= 24
        (counts,) = [line for line in text.splitlines() if line.startswith("events 12,345,678")]
        assert counts.endswith("…")
    finally:
        run.rt.log.close()
