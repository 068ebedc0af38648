"""`policyc run` on the log of a run on several venues: the log replays with each
venue's links, answers and states given to its own venue, so the state a stopped run
left (positions, and orders open on either venue) is rebuilt, the next run reconciles
with each venue and goes on, and `policyc replay` finds no divergence."""
import asyncio
import json

import numpy as np
import pytest

from loopback import feeds_and_venues, named_urls, until
from policyc.cli import main
from policyc.runtime.journal import ReplayError, Replayer, replay, resume_state
from policyc.runtime.live import paper
from policyc.runtime.live import replay as feed
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.runner import LiveRuntime, RunConfig
from test_multi_venue import BN, CB, T0, policy  # noqa: F401  (the fixture)

DAY = 86_400  # s: each run's feed starts a day after the one before, so its events are new to the state


def quotes(path, mid, start_s):
    """A quote file of 40 events a second apart from `start_s`, bid and ask around a walk."""
    rng = np.random.default_rng(start_s % 1000)
    mids = mid + np.cumsum(rng.normal(0, 1, 40))
    rows = [f"{np.datetime64(start_s + k, 's')},{m - 0.5:.2f},{m + 0.5:.2f},{1 + k % 3},{2 + k % 2}"
            for k, m in enumerate(mids)]
    path.write_text("timestamp,bid,ask,bid_size,ask_size\n" + "\n".join(rows) + "\n")
    return str(path)


async def session(policy, log, venues, tmp_path, run: int, intents, still_open: int, *, resume=False):  # noqa: F811
    """Each venue's feed, the venues (kept across runs by the caller) and a runtime on
    `log` with named feeds and venues; once it trades, `intents` ((instrument, target),
    each answered before the next) go in, and the run stops once `still_open` orders are
    open and the venues' positions are the runtime's."""
    start = T0 + run * DAY
    recordings = {"binance": feed.load_recording([(BN, quotes(tmp_path / f"bn{run}.csv", 30_000, start))]),
                  "coinbase": feed.load_recording([(CB, quotes(tmp_path / f"cb{run}.csv", 30_010, start))])}
    stop = asyncio.Event()
    feed_ports, venue_ports, servers = await feeds_and_venues(recordings, venues, stop)
    rt = LiveRuntime(policy, RunConfig("", "", feeds=named_urls(feed_ports), venues=named_urls(venue_ports),
                                       log_path=str(log), max_feed_silence=60.0, resume=resume))
    task = asyncio.create_task(rt.run())
    try:
        await until(lambda: not rt.core.reduce_only and not rt.core.reconciling
                    and all(rt.core.last_ts.get(i, 0) >= start * 10**9 for i in (BN, CB)))
        for k, (instrument, target) in enumerate(intents):
            answer = rt.on_intent_frame(json.dumps({"type": "intent", "id": f"r{run}-{k}", "instrument": instrument,
                                                    "target": target}))
            assert answer["type"] == "decision" and answer["order_qty"], answer
            await until(lambda: not rt.core.unacked)
        await until(lambda: len(rt.core.open) == still_open and all(
            venue.positions.get(i, 0.0) == pytest.approx(rt.engine.position(i))
            for venue in venues.values() for i in (BN, CB) if i in venue.positions))
        status = {"positions": rt.engine.positions(),
                  "open": {oid: (order.instrument, order.left, order.venue) for oid, order in rt.core.open.items()}}
    finally:
        rt.stop.set()
        await task
        stop.set()
        await asyncio.gather(*servers)
    return rt, status


def test_a_run_on_two_venues_resumes_from_its_log_and_replays(policy, tmp_path, capsys):  # noqa: F811
    log = tmp_path / "decisions.jsonl"
    # coinbase holds its orders a minute before they fill: one is still open when the first run stops
    venues = {"binance": paper.PaperVenue(feed_format="binance"),
              "coinbase": paper.PaperVenue(latency_ms=60_000, feed_format="coinbase")}
    first, before = asyncio.run(session(policy, log, venues, tmp_path, 0, [(BN, 2.0), (CB, -3.0)], 1))
    assert before["positions"] == {BN: 2.0, CB: 0.0}
    (held,) = before["open"].values()
    assert held == (CB, -3.0, "coinbase")

    restored = resume_state(log, None, policy)  # as `run` rebuilds it, before anything connects
    for name in ("acct", "pstate", "fs"):  # every account, risk and feature state, bit for bit
        assert np.array_equal(getattr(restored.engine.session, name), getattr(first.engine.session, name),
                              equal_nan=True), name
    assert {oid: (o.instrument, o.left, o.venue) for oid, o in restored.core.open.items()} == before["open"]
    assert restored.core.venue_of == {BN: "binance", CB: "coinbase"}
    assert restored.core.engine.open_quantity(CB) == -3.0 and not restored.pending

    venues["coinbase"].latency_ms = 50.0  # the order sent again on the new connection fills now
    _, after = asyncio.run(session(policy, log, venues, tmp_path, 1, [(BN, -1.0), (CB, -4.0)], 0, resume=True))
    assert after["open"] == {} and after["positions"] == {BN: -1.0, CB: -4.0}
    assert venues["binance"].positions == {BN: -1.0} and venues["coinbase"].positions == {CB: -4.0}
    assert [o["client_order_id"] for o in venues["coinbase"].received].count(next(iter(before["open"]))) == 1

    records = read_log(log)
    assert [s["resumed_runs"] for s in records if s["kind"] == "session"] == [0, 1]
    reconciled = [(r["venue"]["name"], r["matched"]) for r in records if r["kind"] == "reconcile"]
    assert sorted(reconciled[:2]) == sorted(reconciled[2:]) == [("binance", True), ("coinbase", True)]  # each run
    assert {r.get("venue") for r in records if r["kind"] == "link" and r["link"] == "venue"} == {"binance",
                                                                                                 "coinbase"}
    replayer, found = replay(records, lambda record: policy)
    assert found == [] and replayer.runs == 2 and replayer.core.open == {}
    assert main(["replay", str(log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {log}:"), out


def test_a_venue_of_that_does_not_name_every_instrument_does_not_replay(policy):  # noqa: F811
    session = {"seq": 1, "kind": "session", "order_prefix": "x-1", "mono_ns": 0, "max_clock_skew_s": 5.0,
               "max_feed_silence_s": 5.0, "venue_of": {BN: "binance"}}
    with pytest.raises(ReplayError, match="seq 1: venues must name the venue of each instrument"):
        Replayer(lambda record: policy).feed(session)
    with pytest.raises(ReplayError, match="venue_of that is not a map"):
        Replayer(lambda record: policy).feed({**session, "venue_of": [BN, CB]})
