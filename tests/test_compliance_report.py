"""`policyc audit report`: per-day counts, peaks against limits, control coverage."""
from __future__ import annotations

import math

from policyc.dsl.document import RISK_KEYS
from policyc.runtime.audit_report import CONTROLS, build_report, coverage, render_html, render_text

DAY1 = 1_700_000_000_000_000_000      # 2023-11-14T22:13:20Z
DAY2 = DAY1 + 86_400 * 10**9


def rec(seq, kind, ts, **fields):
    return {"seq": seq, "kind": kind, "ts": ts, **fields}


RECORDS = [
    rec(1, "session", DAY1, policy="p", policy_hash="ab" * 32, order_prefix="p-1"),
    rec(2, "order", DAY1, instrument="A", qty=10.0, price=100.0, reasons=[], exit=False),
    rec(3, "fill", DAY1 + 1, instrument="A", qty=10.0, price=100.0, position=10.0),
    rec(4, "order", DAY1 + 2, instrument="B", qty=-5.0, price=50.0, reasons=["max_position:clipped"], exit=False),
    rec(5, "fill", DAY1 + 3, instrument="B", qty=-5.0, price=50.0, position=-5.0),
    rec(6, "risk", DAY1 + 4, instrument="A", reasons=["max_orders_per_day:blocked"]),
    rec(7, "halt", DAY1 + 5, reason="kill_switch:halt,max_drawdown:halt"),
    rec(8, "order", DAY1 + 6, instrument="A", qty=-10.0, price=90.0, reasons=["kill_switch:halt"], exit=True),
    rec(9, "reject", DAY1 + 7, instrument="A", qty=-10.0, reason="venue down"),
    rec(10, "resume", DAY2),
    rec(11, "order", DAY2 + 1, instrument="A", qty=30.0, price=110.0, reasons=[], exit=False),
    rec(12, "fill", DAY2 + 2, instrument="A", qty=30.0, price=110.0, position=40.0),
    rec(13, "halt", DAY2 + 3, reason="operator halt"),
]


def test_per_day_counts_trips_and_resumes():
    rep = build_report(RECORDS, {})
    d1, d2 = rep.days
    assert (d1.date, d1.orders, d1.exits, d1.fills, d1.rejects) == ("2023-11-14", 3, 1, 2, 1)
    assert d1.hits == {"max_position:clipped": 1, "max_orders_per_day:blocked": 1, "kill_switch:halt": 1}
    assert [(t["by"], t["reason"]) for t in d1.trips] == [("policy", "kill_switch:halt,max_drawdown:halt")]
    assert (d2.date, d2.orders, d2.fills) == ("2023-11-15", 1, 1)
    assert [r["by"] for r in d2.resumes] == ["operator"] and [t["by"] for t in d2.trips] == ["operator"]
    assert len(rep.runs) == 1


def test_peaks_against_limits():
    limits = {"max_position": 25.0, "max_gross_exposure": 4000.0, "max_order_qty": 30.0, "max_orders_per_day": 3.0}
    figures = {f.key: f for f in build_report(RECORDS, limits).limits}
    assert figures["max_position"].peak == 40.0 and figures["max_position"].breached
    # after the last fill: |40| * 110 + |-5| * 50
    assert figures["max_gross_exposure"].peak == 40 * 110 + 5 * 50 and figures["max_gross_exposure"].breached
    assert figures["max_order_qty"].peak == 30.0 and not figures["max_order_qty"].breached
    # the exit at 90 is left out of the order notional: the largest entry is 30 at 110
    assert figures["max_order_notional"].peak == 3300.0 and figures["max_order_notional"].limit is None
    # day 1 has 3 orders, one of them the kill switch's exit, which the limit never blocks
    assert figures["max_orders_per_day"].peak == 2.0 and not figures["max_orders_per_day"].breached


def test_an_empty_log_has_no_peaks():
    rep = build_report([], {"max_position": 1.0})
    assert rep.days == [] and math.isnan(rep.limits[0].peak) and not rep.limits[0].breached


def test_coverage_marks_what_is_missing():
    full = {k: 1.0 for k in ("price_collar", "max_order_notional", "max_order_qty", "max_orders_per_second",
                             "max_gross_exposure", "max_drawdown")}
    assert all(c.status == "met" for c in coverage(full))
    by = {(c.control.rule, c.control.provision): c for c in coverage({"max_order_qty": 5.0})}
    assert by[("RTS 6", "Art. 15(1)(c)")].status == "met"
    assert by[("RTS 6", "Art. 15(1)(a)")].status == "missing"
    assert by[("RTS 6", "Art. 12")].status == "met"          # the operator halt is always there
    ii = by[("SEC 15c3-5", "(c)(1)(ii)")]
    assert ii.status == "partial" and ii.met_by == ["max_order_qty"] and len(ii.missing) == 2


def test_every_key_a_control_names_is_a_risk_key():
    for control in CONTROLS:
        for _, keys in control.requirements:
            assert set(keys) <= set(RISK_KEYS), control


def test_pages_show_breaches_and_gaps():
    rep = build_report(RECORDS, {"max_position": 25.0})
    text = render_text(rep)
    assert "BREACH" in text and "MISSING" in text and "2023-11-15" in text
    page = render_html(rep, "audit <p>")
    assert "<script" not in page and "audit &lt;p&gt;" in page and "class='bad'>BREACH" in page


def _log(path):
    from policyc.runtime.live.audit import DecisionLog

    log = DecisionLog(path, "a" * 64, "b" * 64)
    log.write("session", policy="p", risk={"max_position": 50.0, "max_order_qty": 30.0}, order_prefix="p-1")
    log.write("order", ts=DAY1, client_order_id="p-1-000001", instrument="A", qty=40.0, price=10.0,
              reasons=["max_order_qty:clipped"], exit=False)
    log.write("fill", ts=DAY1 + 1, client_order_id="p-1-000001", instrument="A", qty=40.0, price=10.0, fee=0.0,
              position=60.0, equity=1.0)
    log.close()


def test_the_command_reads_the_limits_from_the_session_record(tmp_path, capsys):
    from policyc.cli import main

    _log(tmp_path / "d.jsonl")
    assert main(["audit", "report", str(tmp_path / "d.jsonl"), "--html", str(tmp_path / "out" / "r.html")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "largest position" in line)
    assert row.split()[0] == "1"
    assert row.split()[-3:] == ["max_position", "50", "BREACH"]
    assert "<h2>Control coverage</h2>" in (tmp_path / "out" / "r.html").read_text()


def test_a_log_that_does_not_verify_gets_no_report(tmp_path, capsys):
    from policyc.cli import main

    path = tmp_path / "d.jsonl"
    _log(path)
    path.write_bytes(path.read_bytes().replace(b'"qty":40.0,"price":10.0,"fee"', b'"qty":4.0,"price":10.0,"fee"'))
    assert main(["audit", "report", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("BAD ") and "edited" in out and "Limits" not in out


def test_each_run_is_judged_by_its_own_limits():
    second = [rec(20, "session", DAY2, policy="p", risk={"max_position": 1000.0}),
              rec(21, "fill", DAY2 + 5, instrument="A", qty=1.0, price=110.0, position=41.0)]
    figures = [f for f in build_report(RECORDS + second, {"max_position": 25.0}).limits if f.key == "max_position"]
    # the first run (no `risk` in its record: the fallback, 25) breached; the second, under 1,000, did not
    assert [(f.run, f.peak, f.limit, f.breached) for f in figures] == [(1, 40.0, 25.0, True), (20, 41.0, 1000.0, False)]


def test_control_characters_in_a_halt_reason_do_not_reach_the_terminal():
    records = [rec(1, "session", DAY1), rec(2, "halt", DAY1, reason="stop\nnow \u202eevil \x1b[2J")]
    text = render_text(build_report(records, {}))
    assert "stop?now ?evil ?[2J" in text and "\x1b" not in text and "\u202e" not in text


def _ns(iso: str) -> int:
    import numpy as np

    return int(np.datetime64(iso, "ns").astype("int64"))


def test_days_are_the_policys_trading_days_under_a_calendar():
    """With `calendar: XNYS` the day counters roll at New York midnight of a session's date
    (or its open, were that earlier), so the report counts orders per session as
    max_orders_per_day does: 18:00 New York on 31 December belongs to the session of
    Friday 29 December (1 January is a holiday), 09:00 (pre-market) and 21:00 New York
    (after the close) on 2 January to the session of 2 January."""
    source = "policy: p\nversion: 1\ncalendar: XNYS\ninstruments: [A]\nsignals:\n  - when: true\n    target: 1\n"
    records = [rec(1, "session", _ns("2024-01-02T13:00"), policy="p", policy_source=source)]
    for seq, at in enumerate(("2023-12-31T23:00", "2024-01-02T14:00", "2024-01-02T15:00", "2024-01-03T02:00"),
                             start=2):
        records.append(rec(seq, "order", _ns(at), instrument="A", qty=1.0, price=10.0, reasons=[], exit=False))
    rep = build_report(records, {"max_orders_per_day": 1.0})
    assert [(d.date, d.orders) for d in rep.days] == [("2023-12-29", 1), ("2024-01-02", 3)]
    assert rep.day_basis == "XNYS sessions" and "Per day (XNYS sessions; times UTC)" in render_text(rep)
    assert {f.key: f.peak for f in rep.limits}["max_orders_per_day"] == 3.0
    utc = build_report([{**records[0], "policy_source": source.replace("calendar: XNYS\n", "")}, *records[1:]], {})
    assert [(d.date, d.orders) for d in utc.days] == [("2023-12-31", 1), ("2024-01-02", 2), ("2024-01-03", 1)]
    assert utc.day_basis == "UTC"


def test_a_fill_counts_on_its_orders_day_not_the_venues_clock():
    """A replay of 1996 data: the order is stamped with its event's time, the venue's fill
    with the venue's wall clock in 2026. The fill belongs to 1996's day, with its order."""
    old_day, wall = _ns("1996-06-03T15:00"), _ns("2026-11-30T03:00")
    records = [rec(1, "session", wall, policy="p"),
               rec(2, "order", old_day, client_order_id="p-1", instrument="A", qty=1.0, price=10.0, reasons=[],
                   exit=False),
               rec(3, "fill", wall, client_order_id="p-1", instrument="A", qty=1.0, price=10.0, position=1.0),
               rec(4, "reject", wall, client_order_id="p-2", instrument="A", qty=1.0, reason="no such order")]
    rep = build_report(records, {})
    assert [(d.date, d.orders, d.fills, d.rejects) for d in rep.days] == [("1996-06-03", 1, 1, 0),
                                                                          ("2026-11-30", 0, 0, 1)]
