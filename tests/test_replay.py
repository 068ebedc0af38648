"""`policyc replay`: a log's inputs fed through the policy again make its decisions bit for
bit; another policy is refused, or under --what-if shows where it would have decided
otherwise; a log that does not verify is refused before anything is replayed."""
import random

import numpy as np
import orjson
import pytest

from policyc.cli import main
from policyc.compiler import layout as L
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.audit_chain import JSON_OPTIONS, ZERO_HASH, seal
from policyc.runtime.engine import Engine
from policyc.runtime.journal import Replayer, replay, session_policy
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.demo import run_live_demo
from policyc.runtime.live.protocol import Market, VenueReply
from policyc.runtime.orders import OrderCore

from test_live import DATA

ROOT = DATA.parent.parent
EMA = ROOT / "policies" / "ema_cross.yaml"
S = 1_000_000_000
T = 1_699_963_200 * S
WALK = """
policy: walk
version: 1
instruments: [A, B]
inputs: [intent]
signals: []
risk:
  max_position: 100
  max_order_qty: 60
  max_orders_per_day: 12
  max_drawdown: 5%
"""


class JournalRig:
    """An order core writing its journal into a list of records, as the decision log
    would (seq, and the session record a run opens with)."""

    def __init__(self, policy, prefix="walk-1"):
        self.wall, self.mono = 1_800_000_000 * S, 10 * S
        self.records, self.sent = [], []
        self.engine = Engine(policy, L.LIVE)
        self.core = OrderCore(self.engine, prefix, lambda m, _: self.sent.append(m), self.record,
                              wall_ns=lambda: self.wall, monotonic_ns=lambda: self.mono, journal=True)
        self.record("session", policy=policy.name, params=policy.params, order_prefix=prefix, mono_ns=self.mono,
                    max_clock_skew_s=5.0, max_feed_silence_s=5.0, policy_source=WALK, policy_hash=policy.policy_hash)

    def record(self, kind, ts=None, **fields):  # through JSON, as a record is read back from the log
        self.records.append(orjson.loads(orjson.dumps({"seq": len(self.records) + 1, "kind": kind,
                                                       "ts": self.wall if ts is None else ts, **fields},
                                                      option=JSON_OPTIONS)))


def drive(rig: JournalRig, rng: random.Random, steps: int) -> None:
    """Random traffic: ticks (a day boundary among them), intents, fills, partial fills,
    rejects, reconnects, feed drops and silences, halts and resumes."""
    core, ts, answered = rig.core, T, set()
    core.feed_connected()
    core.venue_connected()
    for _ in range(steps):
        rig.mono += rng.randrange(1, 3 * S)
        rig.wall += rng.randrange(1, 3 * S)
        roll = rng.random()
        if roll < 0.35:
            ts += rng.choice((S, S, 3600 * S, 86_400 * S))
            core.market([Market(rng.choice("AB"), ts, {"price": rng.uniform(40, 60)}, None)])
        elif roll < 0.55:
            core.intent(rng.choice("AB"), rng.choice((-100, -40, 0, 30, 100)), f"i{rng.random()}")
        elif roll < 0.8 and core.open:
            oid = rng.choice(sorted(core.open))
            if oid not in answered:
                core.venue_reply(VenueReply("ack", oid))
                answered.add(oid)
            left = abs(core.open[oid].left)
            if rng.random() < 0.8:
                core.venue_reply(VenueReply("fill", oid, qty=left * rng.choice((0.5, 1.0)), price=50.0, fee=0.01,
                                            ts=rig.wall))
            else:
                core.venue_reply(VenueReply("reject", oid, reason="cancelled"))
        elif roll < 0.84:
            core.venue_lost()
            core.venue_connected()
        elif roll < 0.88:
            core.feed_lost()
            core.feed_connected()
        elif roll < 0.92:
            rig.mono += 6 * S
            core.feed_live()
        elif roll < 0.96:
            core.halt("operator halt")
        elif core.engine.halted:
            core.resume()


@pytest.fixture(scope="module")
def walk():
    return compile_policy(parse_policy_text(WALK, "walk.yaml"))


@pytest.mark.parametrize("seed", range(6))
def test_a_cores_journal_replays_to_the_same_records_and_state(walk, seed):
    """Whatever the traffic, the inputs a core journaled, fed to a fresh core with the
    clock readings they carry, make the same output records, and leave the engine's
    state arrays and the open-order table exactly as they were."""
    rig = JournalRig(walk)
    drive(rig, random.Random(seed), 400)
    assert {r["kind"] for r in rig.records} >= {"market", "intent", "venue", "order", "fill", "halt"}
    replayer, found = replay(rig.records, lambda record: walk)
    assert found == [] and not replayer.pending
    assert replayer.outputs == sum(1 for r in rig.records if r["kind"] not in
                                   ("session", "market", "input", "intent", "decide", "venue", "control", "link",
                                    "timer"))
    assert np.array_equal(replayer.engine.session.acct, rig.engine.session.acct, equal_nan=True)
    assert np.array_equal(replayer.engine.session.pstate, rig.engine.session.pstate, equal_nan=True)
    assert np.array_equal(replayer.engine.session.fs, rig.engine.session.fs, equal_nan=True)
    assert {k: (o.left, o.cancelling, o.fills_applied) for k, o in replayer.core.open.items()} == \
        {k: (o.left, o.cancelling, o.fills_applied) for k, o in rig.core.open.items()}


def test_an_altered_decision_is_the_first_divergence(walk):
    """A logged order whose quantity was changed (the log re-sealed by whoever changed
    it) does not follow from the inputs: the replay names its seq and both sides."""
    rig = JournalRig(walk)
    drive(rig, random.Random(1), 200)
    first = next(r for r in rig.records if r["kind"] == "order")
    first["qty"] += 1
    _, found = replay(rig.records, lambda record: walk)
    assert [(d.seq, d.logged["qty"], d.replayed["qty"]) for d in found] == \
        [(first["seq"], first["qty"], first["qty"] - 1)]


def test_an_input_removed_from_the_journal_shows(walk):
    rig = JournalRig(walk)
    drive(rig, random.Random(2), 200)
    fill_input = next(r for r in rig.records if r["kind"] == "venue" and [a["type"] for a in r["replies"]] == ["fill"])
    records = [r for r in rig.records if r is not fill_input]
    _, found = replay(records, lambda record: walk)
    assert found and found[0].logged["kind"] == "fill" and found[0].replayed is None


# ---- the command, on the log of a live loopback run ------------------------------------------------------

@pytest.fixture(scope="module")
def demo_log(tmp_path_factory):
    """The log of `make demo`'s live part (the same function, the same policy and data)."""
    log = tmp_path_factory.mktemp("replay") / "ema_cross-decisions.jsonl"
    policy = compile_policy(EMA)
    status = run_live_demo(policy, DATA, log, rate=4000.0)
    assert status["orders"] > 20
    return log


def replay_cli(capsys, *argv):
    try:
        code = main(["replay", *map(str, argv)])
    except SystemExit as exc:  # a usage error
        code = exc.code
    out, err = capsys.readouterr()
    return code, out + err


def test_the_demo_log_replays_with_zero_divergences(demo_log, capsys):
    code, out = replay_cli(capsys, demo_log)
    assert code == 0 and out.startswith(f"OK {demo_log}:") and "bit for bit" in out, out
    code, out = replay_cli(capsys, demo_log, EMA)  # the policy file under audit: the same
    assert code == 0 and out.startswith("OK"), out
    records = read_log(demo_log)
    orders = sum(r["kind"] == "order" for r in records)
    assert f"{orders}" and orders > 20


def test_a_policy_with_one_changed_param_is_refused_and_what_if_shows_its_decisions(demo_log, capsys):
    code, out = replay_cli(capsys, demo_log, EMA, "-p", "fast=13")
    assert code == 2 and out.splitlines()[-1].endswith("refused; --what-if replays it anyway"), out
    code, out = replay_cli(capsys, demo_log, EMA, "-p", "fast=13", "--what-if", "--show", "3")
    head = out.splitlines()[0]
    assert code == 0 and head.startswith("what-if") and " 0 decisions differ" not in head, out
    assert out.count("\n  logged:   ") == 3 and out.count("\n  what-if:  ") == 3


def _messages(market: dict) -> list[dict]:
    """The feed messages of a `market` record that holds its read's frames as they came
    (a frame is a message or a batch of them)."""
    return [m for frame in market["frames"] for m in (frame if isinstance(frame, list) else [frame])]


def test_a_tampered_input_is_caught_by_verify_before_the_replay(demo_log, tmp_path, capsys):
    lines = demo_log.read_bytes().splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if b'"kind":"market"' in line)
    rec = orjson.loads(lines[k])
    _messages(rec)[0]["close"] *= 1.01
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"".join([*lines[:k], orjson.dumps(rec) + b"\n", *lines[k + 1:]]))
    code, out = replay_cli(capsys, tampered)
    assert code == 1 and out.startswith("BAD") and "edited" in out and "not replayed" in out, out


def test_a_rewritten_chain_still_does_not_replay(demo_log, tmp_path, capsys):
    """Whoever rewrites the whole chain after changing an input gets past `verify`, not
    past the replay: the decisions no longer follow from the inputs."""
    records = read_log(demo_log)
    k = next(i for i, r in enumerate(records) if r["kind"] == "market" and i + 1 < len(records)
             and records[i + 1]["kind"] == "order")
    bar = _messages(records[k])[-1]
    for key in ("open", "high", "low", "close"):  # still a bar, at half the price
        bar[key] *= 0.5
    head, out_lines = ZERO_HASH, []
    for r in records:
        body = {key: v for key, v in r.items() if key not in ("prev_hash", "hash")}
        line, head = seal({**body, "prev_hash": head})
        out_lines.append(line + b"\n")
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(out_lines))
    assert main(["audit", "verify", str(forged)]) == 0
    capsys.readouterr()
    code, out = replay_cli(capsys, forged)
    assert code == 1 and out.startswith("DIVERGED at seq"), out


@pytest.mark.parametrize("forge", ["a price below 0", "a venue state", "not a list"])
def test_frames_the_run_could_not_have_taken_are_a_replay_error_not_a_skipped_input(demo_log, tmp_path, capsys, forge):
    """A `frames` record holds only frames the run took whole; one that does not parse as
    such (a log rewritten, chain and all) stops the replay at its record."""
    records = read_log(demo_log)
    kind = "venue" if forge == "a venue state" else "market"
    k = next(i for i, r in enumerate(records) if r["kind"] == kind and "frames" in r)
    if forge == "a price below 0":
        _messages(records[k])[0]["close"] = -1.0
    elif forge == "a venue state":
        records[k]["frames"][0] = {"type": "state", "positions": {}, "open_orders": []}
    else:
        records[k]["frames"] = {"type": "tick"}
    head, out_lines = ZERO_HASH, []
    for r in records:
        line, head = seal({**{key: v for key, v in r.items() if key not in ("prev_hash", "hash")}, "prev_hash": head})
        out_lines.append(line + b"\n")
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(out_lines))
    code, out = replay_cli(capsys, forged)
    assert code == 2 and f"the {kind} record at seq {records[k]['seq']} holds frames the run did not take" in out, out
    assert "Traceback" not in out


def test_bad_logs_and_policies_are_one_line_usage_errors(tmp_path, capsys):
    legacy = tmp_path / "old.jsonl"
    line, _ = seal({"seq": 1, "ts": 1, "kind": "session", "policy_hash": "0" * 64, "prev_hash": ZERO_HASH})
    legacy.write_bytes(line + b"\n")
    code, out = replay_cli(capsys, legacy)
    assert code == 2 and "cannot be replayed" in out and "Traceback" not in out, out
    code, out = replay_cli(capsys, tmp_path / "missing.jsonl")
    assert code == 2 and "Traceback" not in out


def test_session_policy_rebuilds_the_logged_policy(demo_log):
    session = read_log(demo_log)[0]
    assert session_policy(session).policy_hash == session["policy_hash"]
    assert isinstance(Replayer(session_policy).feed(session), list)
