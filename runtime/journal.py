"""The decision log read back as a journal: its input records fed again, in order, through
an order core over a fresh engine, and what the core decides compared with what the log
says it decided. Sans-I/O: records in, state and divergences out.

`policyc replay` (an auditor's check that every logged decision follows from the logged
inputs under the exact policy) and `policyc run` on an existing log (rebuilding the
state a stopped or killed run left) both use `Replayer`.

Every input of the order core is logged before it is handled, with the readings of both
clocks it uses (`OrderCore._begin`); the records the core writes while handling it
follow it. So each input record is followed by exactly the output records the core
makes of it, and a replay makes them again bit for bit: same kinds, same fields, same
`ts`. Three things sit between inputs without being made by one: the `session` record
that opens a run, a signed log's `checkpoint`s, and a `bad_message` for a message
refused before it reached the core (it did not parse); the replay counts the last as
the core counts it.

A run killed while writing the outputs of an input leaves them cut short. The next run
on the log writes what is missing right after its `session` record (`Replayer.pending`),
so those outputs, and the orders among them, are in the log before anything is sent.
"""
from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

import orjson

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy

from .audit_chain import JSON_OPTIONS
from .engine import Engine
from .live.audit import INPUT_KINDS, RUNNER_KINDS
from .live.protocol import Market, ProtocolError, VenueReply, parse_feed, parse_venue
from .orders import OrderCore

#: Members of a record that are not the core's: its place in the log and the chain.
NOT_COMPARED = frozenset(("seq", "policy_hash", "build_hash", "prev_hash", "hash", "sig"))
_INPUTS = frozenset(INPUT_KINDS)
_BETWEEN = frozenset(("session", "checkpoint"))


class ReplayError(Exception):
    """A log that cannot be replayed: a run without input records (a log of a policyc
    without the journal), a session record without what the replay needs."""


@dataclass
class Divergence:
    """Where a replayed decision differs from the logged one. `seq` is the logged
    record's (or, when the log has no record where the replay made one, the seq of the
    input it was made on); `logged` and `replayed` are the records as compared, either
    None when that side has none."""

    run: int
    seq: int
    logged: dict | None
    replayed: dict | None


def comparable(record: dict) -> dict:
    """A record as a replay compares it: without its place in the log and the chain,
    every value as the log's JSON holds it (NaN as None, tuples as lists)."""
    return orjson.loads(orjson.dumps({k: v for k, v in record.items() if k not in NOT_COMPARED},
                                     option=JSON_OPTIONS))


def carry_over(old: Engine, policy: CompiledPolicy) -> Engine:
    """An engine for `policy` that takes over `old`'s account and positions: per
    instrument its position, open quantity, entry, best and last prices, desired target
    and locks; the account's cash, peak equity, kill switch, day, opening equity,
    daily-loss state, orders today, rate-limit tokens and fees. Features start afresh
    (another policy may compute others); the tick sizes are the new policy's. Raises
    ReplayError when the instruments or their multipliers differ (a position's value would
    change under it)."""
    if tuple(policy.instruments) != tuple(old.policy.instruments):
        raise ReplayError(f"the instruments changed ({', '.join(old.policy.instruments)} -> "
                          f"{', '.join(policy.instruments)}): positions cannot be carried over; start a new log")
    before = [m for m, _ in old.policy.checked.contract_table]
    after = [m for m, _ in policy.checked.contract_table]
    if before != after:
        changed = ", ".join(f"{s} {a:g} -> {b:g}" for s, a, b in zip(policy.instruments, before, after) if a != b)
        raise ReplayError(f"the multipliers changed ({changed}): positions cannot be carried over; start a new log")
    new = Engine(policy, L.LIVE)
    new.session.pstate[:, :L.P_MULT] = old.session.pstate[:, :L.P_MULT]
    new.session.acct[:L.A_REASON_COUNTS] = old.session.acct[:L.A_REASON_COUNTS]
    return new


@dataclass
class Replayer:
    """Feeds a log's records, in order, through one order core and compares.

    `policy_for(session_record)` gives the policy a run is replayed with (the one it was
    written with, or the one under audit). Within a log, runs go on from the state the
    run before left (as `policyc run` resumes); a run whose policy differs from the run
    before takes its account and positions over (`carry_over`). A run on several venues
    routes as its `session` record's `venue_of` says, and each venue's `link` and `venue`
    records go to the venue they name (`venue`; "" for the unnamed one). `feed` returns the
    divergences each record shows; `stop_at_first` stops comparing after the first."""

    policy_for: Callable[[dict], CompiledPolicy]
    engine: Engine | None = None
    core: OrderCore | None = None
    runs: int = 0
    inputs: int = 0
    outputs: int = 0
    pending: deque = field(default_factory=deque)  # outputs the replay made that the log has not shown yet
    _clock: list = field(default_factory=lambda: [0, 0])  # the input's wall and monotonic readings (ns)
    _input_seq: int = 0
    _instruments: frozenset = frozenset()
    _inputs_this_run: int = 0
    _outputs_this_run: int = 0

    def feed(self, record: dict) -> list[Divergence]:
        """One record of the log. Raises ReplayError for a log that cannot be replayed."""
        kind = record.get("kind")
        if kind == "session":
            self._check_run()
            self._session(record)
            return []
        if self.core is None:
            raise ReplayError(f"record {record.get('seq')} comes before any session record")
        if kind == "checkpoint" or kind in RUNNER_KINDS:  # not the core's: the listeners' security
            return []
        if kind in _INPUTS:
            found = self._leftover()
            self.inputs += 1
            self._inputs_this_run += 1
            self._input_seq = record["seq"]
            self._apply(record)
            return found
        self._outputs_this_run += 1
        logged = comparable(record)
        if self.pending and logged == self.pending[0]:
            self.pending.popleft()
            self.outputs += 1
            return []
        if kind == "bad_message":  # refused before it reached the core: counted as the core counts it
            self.core.counters.bad_messages += 1
            return []
        replayed = self.pending.popleft() if self.pending else None
        return [Divergence(self.runs, record["seq"], logged, replayed)]

    def finish(self) -> list[Divergence]:
        """After the log's last record: the run must have inputs. The outputs the replay
        made that the log does not have stay in `pending` (a run cut short while writing
        them: `policyc run` writes them when it resumes)."""
        self._check_run()
        return []

    def _leftover(self) -> list[Divergence]:
        """Before an input: every output of the input before must have been in the log."""
        found = [Divergence(self.runs, self._input_seq, None, extra) for extra in self.pending]
        self.pending.clear()
        return found

    def _check_run(self) -> None:
        if self.core is not None and self._outputs_this_run and not self._inputs_this_run:
            raise ReplayError(f"run {self.runs} has decisions but no input records (it was written by a policyc "
                              "without the journal): it cannot be replayed")

    def _session(self, record: dict) -> None:
        missing = [key for key in ("order_prefix", "mono_ns") if key not in record]
        if missing:
            raise ReplayError(f"the session record at seq {record.get('seq')} has no {', '.join(missing)} (a log of a "
                              "policyc without the journal): it cannot be replayed")
        policy = self.policy_for(record)
        skew, silence = record["max_clock_skew_s"], record["max_feed_silence_s"]
        self.runs += 1
        self._inputs_this_run = self._outputs_this_run = 0
        venues = _venues(record)
        try:
            if self.core is None:
                self.engine = Engine(policy, L.LIVE)
                self._instruments = frozenset(policy.instruments)  # a run that follows keeps them (`carry_over`)
                self.core = OrderCore(self.engine, record["order_prefix"], lambda message, sent_ns: None,
                                      self._record, max_clock_skew_s=skew, max_feed_silence_s=silence,
                                      wall_ns=lambda: self._clock[0], monotonic_ns=lambda: self._clock[1],
                                      reconcile=record.get("reconcile_at_start", False), venues=venues)
                return
            if policy.policy_hash != self.engine.policy.policy_hash:
                self.engine = carry_over(self.engine, policy)
                self.core.use_engine(self.engine)
            self.core.set_venues(venues)  # before `restart`, which asks each of this run's venues for its state
        except ValueError as exc:  # `OrderCore.set_venues`: a venue_of that misses or adds an instrument
            raise ReplayError(f"the session record at seq {record.get('seq')}: {exc}") from None
        self.core.restart(record["order_prefix"], record["mono_ns"], max_clock_skew_s=skew,
                          max_feed_silence_s=silence)

    def _record(self, kind: str, ts: int | None = None, **fields) -> None:
        self.pending.append(comparable({"ts": ts, "kind": kind, **fields}))

    def _apply(self, rec: dict) -> None:
        """One input through the core with the clock readings it had. An input the core
        refuses raises as it did in the live run, whose owner logged it (a `bad_message`
        the replay then counts)."""
        self._clock[0], self._clock[1] = rec["ts"], rec["mono_ns"]
        core, kind = self.core, rec["kind"]
        venue = rec.get("venue", "")  # the venue an answer or a link is of: "" for the only one
        read = _read(rec, self._instruments) if "frames" in rec else None
        try:
            if kind == "market" and read is not None:
                core.market(read)
            elif kind == "market":
                core.market([Market(*event) for event in rec["events"]])  # sent_ns, the 4th, since it is logged
            elif kind == "input":
                core.set_input(rec["instrument"], rec["name"], rec["value"])
            elif kind == "intent":
                core.intent(rec["instrument"], rec["target"], rec["id"], rec.get("limit_price", math.nan))
            elif kind == "decide":
                core.decide(rec["instrument"])
            elif kind == "venue" and rec.get("type") == "state":
                core.venue_state(rec["positions"], rec["open_orders"], venue)
            elif kind == "venue" and read is not None:
                core.venue_replies(read, venue)
            elif kind == "venue":  # a read's answers; a log of an earlier build has one answer a record
                core.venue_replies([_reply(one) for one in rec["replies"]] if "replies" in rec else [_reply(rec)],
                                   venue)
            elif kind == "control" and rec["action"] == "halt":
                core.halt(rec["reason"])
            elif kind == "control":
                core.resume()
            elif kind == "link" and rec["link"] == "venue":
                (core.venue_connected if rec["up"] else core.venue_lost)(venue)
            elif kind == "link":
                (core.feed_connected if rec["up"] else core.feed_lost)()
            else:  # timer
                core.feed_live()
        except Exception:  # noqa: BLE001 - the live run met the same and logged it; its records say what followed
            pass


def _read(rec: dict, instruments) -> list:
    """The messages of an input record that holds its read's frames as they came (a
    `market` record's market events, a `venue` record's answers), parsed as the run parsed
    them. Raises ReplayError when one does not parse to what the run took from it: the run
    journals only frames it accepted whole, so the record was not written by it."""
    try:
        if not isinstance(rec["frames"], list):
            raise ProtocolError("`frames` is not a list")
        if rec["kind"] == "market":
            read = [item for frame in rec["frames"] for item in parse_feed(orjson.dumps(frame), instruments)]
            if all(item.__class__ is Market for item in read):
                return read
            raise ProtocolError("a frame holds a message other than a market event")
        read = [parse_venue(orjson.dumps(frame)) for frame in rec["frames"]]
        if all(reply.__class__ is VenueReply for reply in read):
            return read
        raise ProtocolError("a frame holds a venue's state")
    except (ProtocolError, orjson.JSONEncodeError) as exc:
        raise ReplayError(f"the {rec['kind']} record at seq {rec.get('seq')} holds frames the run did not take as "
                          f"they are: {exc}") from None


def _venues(record: dict) -> dict | None:
    """A session record's `venue_of` (instrument -> venue name), which a run on named feeds
    or venues writes; None (one venue, named "") without it. Raises ReplayError for one that
    is not such a map."""
    venue_of = record.get("venue_of")
    if venue_of is not None and not (isinstance(venue_of, dict) and all(isinstance(v, str) for v in venue_of.values())):
        raise ReplayError(f"the session record at seq {record.get('seq')} has a venue_of that is not a map of "
                          "instrument to venue name: it cannot be replayed")
    return venue_of


def _reply(said: dict) -> VenueReply:
    """A venue answer as a `venue` record holds it."""
    return VenueReply(said["type"], said["client_order_id"], qty=said.get("qty", 0.0), price=said.get("price", 0.0),
                      fee=said.get("fee", 0.0), ts=said.get("venue_ts"), reason=said.get("reason", ""))


def replay(records: list[dict], policy_for: Callable[[dict], CompiledPolicy],
           stop_at_first: bool = True) -> tuple[Replayer, list[Divergence]]:
    """Replay a whole log (its records in order); returns the replayer (its state, its
    counts, `pending`) and the divergences, only the first with `stop_at_first`.
    Raises ReplayError as `Replayer.feed` does."""
    replayer = Replayer(policy_for)
    found: list[Divergence] = []
    for record in records:
        found += replayer.feed(record)
        if found and stop_at_first:
            return replayer, found[:1]
    found += replayer.finish()
    return replayer, found


_compiled: dict[str, CompiledPolicy] = {}  # policy_hash -> the policy a session record's source compiles to


def session_policy(record: dict) -> CompiledPolicy:
    """The policy a run was written with, rebuilt from its `session` record: its
    `policy_source` checked with its bound `params`, which must hash to its
    `policy_hash`. Raises ReplayError when the record has no source or it does not."""
    key = record.get("policy_hash")
    if key not in _compiled:
        from policyc.compiler.build import compile_checked
        from policyc.compiler.frontend import check_text
        from policyc.dsl.diagnostics import PolicyError

        source = record.get("policy_source")
        if not isinstance(source, str):
            raise ReplayError(f"the session record at seq {record.get('seq')} has no policy_source: give the policy "
                              "file")
        try:
            checked = check_text(source, record.get("params") or {}, f"{record.get('policy')} (from the log)")
        except PolicyError as exc:
            raise ReplayError(f"the policy_source of the session record at seq {record.get('seq')} does not check: "
                              f"{exc}") from None
        if checked.policy_hash != key:
            raise ReplayError(f"the policy_source of the session record at seq {record.get('seq')} hashes to "
                              f"{checked.policy_hash}, not its policy_hash {key}")
        _compiled[key] = compile_checked(checked)
    return _compiled[key]


def resume_state(path, log_key_file: str | None, policy: CompiledPolicy, allow_policy_change: bool = False,
                 required: bool = False) -> Replayer | None:
    """The state the runs of the log at `path` left, for a new run of `policy` to go on
    from: the log verified, then replayed (each run with its own policy); None when there
    is no log yet. The replayer's `pending` holds the outputs its last run did not finish
    writing. Raises LogError when the log is missing and `required`, does not verify or
    replay, or was written by another policy and not `allow_policy_change` (then the
    engine takes the account and positions over: `carry_over`)."""
    from .audit_chain import LogError
    from .live.audit import read_log, read_log_key, segments, verify_log

    if not any(p.stat().st_size for _, p in segments(Path(path))):
        if required:
            raise LogError(f"--resume: there is no log at {path} to resume")
        return None
    _, _, problem = verify_log(path, None, log_key_file, open_end=True)
    if problem is not None:
        raise LogError(f"{problem.file} line {problem.line} does not verify ({problem.kind}: {problem.detail}); "
                       "nothing was resumed: check it with `policyc audit verify`")
    records = read_log(path, read_log_key(log_key_file) if log_key_file else None)
    last = next((r for r in reversed(records) if r.get("kind") == "session"), None)
    if last is None:
        return None
    if last.get("policy_hash") != policy.policy_hash and not allow_policy_change:
        raise LogError(f"{path} was written by policy hash {last.get('policy_hash')}; this policy's is "
                       f"{policy.policy_hash}: refused (--allow-policy-change resumes it anyway, or start a new log)")
    try:
        replayer, found = replay(records, lambda r: policy if r.get("policy_hash") == policy.policy_hash
                                 else session_policy(r))
        if found:
            d = found[0]
            raise LogError(f"{path} does not replay: the decision at seq {d.seq} differs from the one its inputs "
                           "make (`policyc replay` shows it); nothing was resumed")
        if replayer.engine.policy.policy_hash != policy.policy_hash:
            replayer.engine = carry_over(replayer.engine, policy)
            replayer.core.use_engine(replayer.engine)
    except ReplayError as exc:
        raise LogError(f"{path}: {exc}; nothing was resumed") from None
    return replayer
