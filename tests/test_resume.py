"""`policyc run` on an existing log: the state the earlier runs left is rebuilt from the
log (positions, open orders, day counters, peak equity, kill switch, rate tokens), then
checked against the venue's before anything new goes out."""
import asyncio
import random

import numpy as np
import pytest

from policyc.compiler import layout as L
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.audit_chain import LogError
from policyc.runtime.journal import replay
from policyc.runtime.live import paper
from policyc.runtime.live import replay as feed
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.protocol import Market, VenueReply
from policyc.runtime.live.runner import LiveRuntime, RunConfig
from policyc.runtime.engine import Engine
from policyc.runtime.orders import RECONCILE_MISMATCH, RECONCILE_PENDING, OrderCore

from loopback import HOST, free_port, until
from test_live import DATA, live
from test_replay import S, T, WALK, JournalRig, drive

#: Trades on intents alone (`crossings: 0`: its rules never fire), long or short at most 500,
#: at most 50 orders a day and 20 a second: tests/test_live.py's kernel, so that nothing
#: compiles twice (its max_order_qty and its stop, 100%: a long's at a price of 0, never bind).
HELD = live(fast=3, slow=8, up=0, down=0, crossings=0, max_position=500, max_orders_per_day=50,
            max_orders_per_second=20)


@pytest.fixture(scope="module")
def walk():
    return compile_policy(parse_policy_text(WALK, "walk.yaml"))


@pytest.fixture(scope="module")
def held():
    return compile_policy(parse_policy_text(HELD, "held.yaml"))


def resumed(rig: JournalRig, policy, prefix="walk-2"):
    """A core rebuilt from the rig's journal, started again as a new run does."""
    replayer, found = replay(rig.records, lambda record: policy)
    assert found == []
    core, sent = replayer.core, []
    core.send = lambda message, _: sent.append(message)
    core.restart(prefix, 5 * S)
    return core, sent


def test_a_restart_asks_the_venue_and_holds_orders_until_the_positions_match(walk):
    rig = JournalRig(walk)
    drive(rig, random.Random(3), 300)
    core, sent = resumed(rig, walk)
    assert core.engine.positions() == rig.engine.positions() and set(core.open) == set(rig.core.open)
    core.venue_connected()
    assert sent[-1] == {"type": "state_request"} and len(sent) == len(core.open) + 1 and core.reconciling
    core.feed_connected()
    decision, added = core.intent("A", 0.0 if core.engine.position("A") else 50.0)
    assert RECONCILE_PENDING in added
    assert not [m for m in sent if m["type"] == "order" and m["client_order_id"].startswith("walk-2")]
    core.venue_state(core.engine.positions(), list(core.open))
    assert not core.reconciling
    assert core.engine.open_quantity("A") == pytest.approx(core.open_quantity("A"), abs=1e-9)


def test_a_venue_that_holds_other_positions_halts_with_reconcile_mismatch(walk):
    rig = JournalRig(walk)
    drive(rig, random.Random(4), 300)
    core, sent = resumed(rig, walk)
    records = []
    core.record = lambda kind, ts=None, **fields: records.append({"kind": kind, **fields})
    core.resume() if core.engine.halted else None
    records.clear()
    core.venue_connected()
    theirs = {"A": core.engine.position("A") + 7.0, "B": core.engine.position("B")}
    core.venue_state(theirs, [])
    (rec,) = [r for r in records if r["kind"] == "reconcile"]
    assert rec["matched"] is False and rec["instruments"] == ["A"] and rec["venue"]["positions"] == theirs
    assert rec["runtime"]["positions"] == core.engine.positions()
    assert core.engine.halted and [r["reason"] for r in records if r["kind"] == "halt"] == [RECONCILE_MISMATCH]


def test_the_monotonic_clock_is_moved_onto_the_new_process(walk):
    """Event time goes on from where the old run's last input left it: the time the
    process was down does not count."""
    rig = JournalRig(walk)
    rig.core.feed_connected()
    rig.core.market([Market("A", T, {"price": 50.0}, None)])
    rig.mono += 2 * S
    rig.core.intent("A", 10.0, "x")
    replayer, _ = replay(rig.records, lambda record: walk)
    core = replayer.core
    core.restart("walk-2", 999 * S)
    assert core.arrived_ns["A"] == 999 * S - 2 * S and core.now_for("A") == T + 2 * S


# ---- live, over loopback -----------------------------------------------------------------------------------

async def session(policy, log, venue, data, *, intents=(), halt=False, resume=False, allow_change=False, **config):
    """A feed of `data`, `venue` (kept across sessions by the caller) and a runtime on
    `log`; the runtime trades `intents` (target per instrument) once it is trading, is
    halted if asked, and stops without flattening: its last state stays in the log."""
    rec = feed.load_recording([("ORCL", str(data))])
    feed_port, venue_port = free_port(), free_port()
    ready, venue_ready, stop_venue = asyncio.Event(), asyncio.Event(), asyncio.Event()
    feed_task = asyncio.create_task(feed.serve(rec, HOST, feed_port, rate=2000.0, clients_needed=2, ready=ready))
    await ready.wait()
    venue_task = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{feed_port}",
                                                 ready=venue_ready, stop=stop_venue))
    await venue_ready.wait()
    runtime = LiveRuntime(policy, RunConfig(f"ws://{HOST}:{feed_port}", f"ws://{HOST}:{venue_port}",
                                            log_path=str(log), resume=resume, allow_policy_change=allow_change,
                                            **config))
    run = asyncio.create_task(runtime.run())
    try:
        await until(lambda: runtime.counters.events >= 5)
        for target in intents:
            runtime.on_intent_frame(f'{{"type":"intent","id":"t","instrument":"ORCL","target":{target}}}')
            await until(lambda: not runtime.open)
        if halt:
            runtime.halt("operator halt")
            await until(lambda: not runtime.open)
    finally:
        runtime.stop.set()
        await run
        stop_venue.set()
        await venue_task
        feed_task.cancel()
    return runtime


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "orcl.csv"
    path.write_text("\n".join(DATA.read_text().splitlines()[:400]) + "\n")
    return path


def test_a_restarted_runtime_goes_on_from_the_logged_state(held, short, tmp_path):
    log, venue = tmp_path / "decisions.jsonl", paper.PaperVenue()
    first = asyncio.run(session(held, log, venue, short, intents=(300, 120)))
    assert first.engine.position("ORCL") == 120
    restored = LiveRuntime(held, RunConfig("ws://127.0.0.1:9", "ws://127.0.0.1:9", log_path=str(log)))
    restored.log.close()
    for name in ("acct", "pstate", "fs"):  # every account, risk and feature state, bit for bit
        assert np.array_equal(getattr(restored.engine.session, name), getattr(first.engine.session, name),
                              equal_nan=True), name
    assert restored.core.last_ts == first.core.last_ts and restored.core.reconcile_due
    second = asyncio.run(session(held, log, venue, short, resume=True))
    records = read_log(log)
    sessions = [r for r in records if r["kind"] == "session"]
    assert [s["resumed_runs"] for s in sessions] == [0, 1, 2]
    first_run, rec = [r for r in records if r["kind"] == "reconcile"]  # each run compares before trading
    assert first_run["matched"] is True and first_run["venue"]["positions"] == {}
    assert rec["matched"] is True and rec["venue"]["positions"] == {"ORCL": 120.0}
    assert second.engine.position("ORCL") == 120 == venue.positions["ORCL"]
    _, found = replay(records, lambda record: held)
    assert found == []


def test_the_kill_switch_survives_a_restart_and_a_flat_venue_is_a_mismatch(held, short, tmp_path, capsys):
    log = tmp_path / "decisions.jsonl"
    asyncio.run(session(held, log, paper.PaperVenue(), short, intents=(200,), halt=True))
    second = asyncio.run(session(held, log, paper.PaperVenue(), short))  # another venue: flat
    assert second.engine.halted
    records = read_log(log)
    rec = [r for r in records if r["kind"] == "reconcile"][-1]
    assert rec["matched"] is True  # the halt flattened before the first run stopped
    third_venue = paper.PaperVenue()
    third_venue.positions["ORCL"] = 40.0
    third = asyncio.run(session(held, log, third_venue, short))
    recs = [r for r in read_log(log) if r["kind"] == "reconcile"]
    assert recs[-1]["matched"] is False and recs[-1]["venue"]["positions"] == {"ORCL": 40.0}
    assert third.engine.halted
    # the resumed run says so on stderr, as a new one does
    (said,) = [line for line in capsys.readouterr().err.splitlines() if "differ from this run's" in line]
    assert "(ORCL)" in said and "halted (reconcile_mismatch)" in said


def test_a_log_of_another_policy_is_refused_unless_allowed(held, short, tmp_path):
    log = tmp_path / "decisions.jsonl"
    asyncio.run(session(held, log, paper.PaperVenue(), short, intents=(100,)))
    other = compile_policy(parse_policy_text(HELD.replace("max_position: 500", "max_position: 400"), "held.yaml"))
    with pytest.raises(LogError, match=f"policy hash {held.policy_hash}.*{other.policy_hash}.*refused"):
        LiveRuntime(other, RunConfig("ws://127.0.0.1:9", "ws://127.0.0.1:9", log_path=str(log)))
    venue = paper.PaperVenue()
    venue.positions["ORCL"] = 100.0
    changed = asyncio.run(session(other, log, venue, short, allow_change=True))
    assert changed.engine.position("ORCL") == 100.0 and not changed.engine.halted


def test_resume_needs_a_log(held, tmp_path):
    with pytest.raises(LogError, match="no log"):
        LiveRuntime(held, RunConfig("ws://127.0.0.1:9", "ws://127.0.0.1:9", log_path=str(tmp_path / "x.jsonl"),
                                    resume=True))


def test_an_encrypted_signed_run_that_was_killed_resumes(held, short, tmp_path):
    """A killed signed run has no closing checkpoint, which a resuming run's signed session
    record follows; an encrypted log is read with its key file (and no key is ever shown)."""
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key, sign = tmp_path / "log.key", tmp_path / "sign.pem"
    key.write_text(os.urandom(32).hex())
    sign.write_bytes(Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key.chmod(0o600)
    sign.chmod(0o600)
    keys = dict(log_key_file=str(key), sign_key_file=str(sign))
    log, venue = tmp_path / "decisions.jsonl", paper.PaperVenue()
    first = asyncio.run(session(held, log, venue, short, intents=(150,), **keys))
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))            # as if killed: no closing checkpoint
    second = asyncio.run(session(held, log, venue, short, **keys))
    assert second.engine.position("ORCL") == first.engine.position("ORCL") == 150 == venue.positions["ORCL"]
    records = read_log(log, bytes.fromhex(key.read_text()))
    assert [r["matched"] for r in records if r["kind"] == "reconcile"] == [True, True]  # the new run, then the resumed


def _fresh(policy, venue_positions: dict, venue_open: list):
    """A new core (no log behind it) that reconciles, connected to a venue holding
    `venue_positions` and `venue_open`; returns the core, what it sent and its records."""
    sent, records, clock = [], [], [1_800_000_000 * S, 10 * S]
    core = OrderCore(Engine(policy, L.LIVE), "walk-1", lambda m, _: sent.append(m),
                     lambda kind, ts=None, **fields: records.append({"kind": kind, **fields}),
                     wall_ns=lambda: clock[0], monotonic_ns=lambda: clock[1], reconcile=True)
    core.feed_connected()
    core.market([Market("A", T, {"price": 50.0}, None), Market("B", T, {"price": 20.0}, None)])
    core.venue_connected()
    assert sent == [{"type": "state_request"}] and core.reconciling
    decision, added = core.intent("A", 40.0)
    assert RECONCILE_PENDING in added and not [m for m in sent if m["type"] == "order"]
    core.venue_state(venue_positions, venue_open)
    return core, sent, records


def test_a_new_run_trades_once_the_venue_is_flat(walk):
    """A new run expects a flat venue; it holds its first order until the venue says so."""
    core, sent, records = _fresh(walk, {}, [])
    (rec,) = [r for r in records if r["kind"] == "reconcile"]
    assert rec["matched"] and not core.engine.halted
    assert [(m["instrument"], m["qty"]) for m in sent if m["type"] == "order"] == [("A", 40.0)]


def test_a_new_run_halts_on_a_venue_that_holds_an_earlier_runs_position(walk):
    """The venue still holds 90 of A from a run whose log is gone: with max_position 100,
    a new run that believed itself flat could buy 60 more, to 150. It halts instead."""
    core, sent, records = _fresh(walk, {"A": 90.0}, [])
    (rec,) = [r for r in records if r["kind"] == "reconcile"]
    assert not rec["matched"] and rec["instruments"] == ["A"] and rec["venue"]["positions"] == {"A": 90.0}
    assert core.engine.halted and [r["reason"] for r in records if r["kind"] == "halt"] == [RECONCILE_MISMATCH]
    assert not [m for m in sent if m["type"] == "order" and m["qty"] > 0]


def test_a_venue_holding_an_order_this_run_does_not_know_is_a_mismatch(walk):
    """An open order nobody here sent would fill into a position no limit has seen."""
    core, sent, records = _fresh(walk, {}, ["other-000007"])
    (rec,) = [r for r in records if r["kind"] == "reconcile"]
    assert not rec["matched"] and rec["unknown_orders"] == ["other-000007"] and rec["instruments"] == []
    assert core.engine.halted


def test_a_new_log_on_a_venue_that_holds_a_position_halts_before_any_order(held, short, tmp_path, capsys):
    """The earlier run's log is elsewhere (or gone) and the venue holds 400 ORCL of it.
    With max_position 500, a new run that believed itself flat would buy 300 more, to
    700: it halts with reconcile_mismatch before sending anything, and says so."""
    venue = paper.PaperVenue()
    venue.positions["ORCL"] = 400.0
    fresh = asyncio.run(session(held, tmp_path / "new.jsonl", venue, short, intents=(300,)))
    records = read_log(tmp_path / "new.jsonl")
    (rec,) = [r for r in records if r["kind"] == "reconcile"]
    assert rec["matched"] is False and rec["venue"]["positions"] == {"ORCL": 400.0}
    assert fresh.engine.halted and [r["reason"] for r in records if r["kind"] == "halt"] == [RECONCILE_MISMATCH]
    assert venue.positions["ORCL"] <= 400.0 and not [r for r in records if r["kind"] == "order" and r["qty"] > 0]
    (said,) = [line for line in capsys.readouterr().err.splitlines() if "differ from this run's" in line]
    assert "(ORCL)" in said and "halted (reconcile_mismatch)" in said


def test_a_mismatch_sends_no_order_not_even_a_liquidation_until_the_venue_agrees(walk):
    """This state holds 40 A; the venue, asked after a restart, holds nothing (another
    venue, or one whose books were reset). Liquidating the 40 would sell what the venue
    does not hold, a short of 40 nobody decided: no order leaves, not even that one.
    The operator's resume asks the venue again; it still says flat, so it halts again;
    once the venue says 40, trading goes on."""
    core, sent, records = _fresh(walk, {}, [])
    (order,) = [m for m in sent if m["type"] == "order"]
    core.venue_reply(VenueReply("fill", order["client_order_id"], qty=40.0, price=50.0, fee=0.0,
                                ts=1_800_000_000 * S))
    assert core.engine.position("A") == 40.0
    core.restart("walk-2", 20 * S)
    sent.clear()
    core.venue_connected()
    core.feed_connected()
    assert sent == [{"type": "state_request"}]
    core.venue_state({}, [])
    assert core.engine.halted and core.mismatched and not [m for m in sent if m["type"] == "order"]
    withheld = [r for r in records if r["kind"] == "risk" and RECONCILE_MISMATCH in r["reasons"]]
    assert [(r["instrument"], r["withdrawn_qty"]) for r in withheld] == [("A", -40.0)]
    core.market([Market("A", T + S, {"price": 51.0}, None)])  # still halted: the liquidation is withheld again
    assert not [m for m in sent if m["type"] == "order"] and core.engine.open_quantity("A") == 0.0
    core.resume()
    assert sent[-1] == {"type": "state_request"} and core.reconciling
    core.venue_state({}, [])
    assert core.engine.halted and not [m for m in sent if m["type"] == "order"]
    core.resume()
    core.venue_state({"A": 40.0}, [])
    assert not core.engine.halted and not core.mismatched and not [m for m in sent if m["type"] == "order"]
    assert [r["matched"] for r in records if r["kind"] == "reconcile"] == [True, False, False, True]
