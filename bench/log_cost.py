"""The decision log's cost with the sockets taken out, for `make bench`'s live section.

On the live EMA run the runtime shares two cores with the feed and the venue, and one
run's throughput differs from the next by more than the log costs. Here the runtime
(`LiveRuntime`, its `on_feed_messages` and `on_venue_messages`, the core, the kernel and
the log with its sync thread) takes the EMA run's recording in one process: each read of
`READ_EVENTS` feed frames goes to the paper venue's book (`PaperVenue`, sans-I/O) and then
to the runtime, whose orders reach the venue as they are sent, and the venue's answers
come back as the next venue read, every fill among them (the venue has seen the whole
read when an order reaches it, so fills are at a later price than in a live run). What
the transport would add (the websocket's framing, the event loop, the socket calls) is
not measured, so the log's share of the runtime's work here is larger than its share of
a live run's: an upper bound, shown next to the live target, not a target itself. The
log goes to the bench's temporary folder: where that is a tmpfs, its syncs cost nothing.

The figure is CPU time per event of the runtime (its thread inside its calls, and the
log's sync thread), each run starting as a live command does, its process's objects
collected and frozen (`eventloop.freeze_start_up_heap`; without it the earlier runs'
garbage made a full pass of 70 to 90 ms land in one run or another), over `RUNS`
rounds of the three logs (chained, as it was before the chain, none) in an order that
rotates, after one round that is not counted; a cost is 1 - before / chained of the
medians. A round whose runs did not all trade alike (the
same orders and fills, no bad message, reconciled, not halted) stops the bench.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from pathlib import Path

READ_EVENTS = 256  # feed frames a read: the live EMA run's reads hold thousands, so per-read records weigh more here
RUNS = 7


class _VenueConnection:
    """The runtime's venue connection, in this process: an order frame reaches the paper
    venue as it is sent, and its answers wait for the runtime's next venue read. The
    venue's work happens inside the runtime's call: `venue_ns` is its CPU time, which is
    not the runtime's."""

    def __init__(self, venue):
        self.venue, self.inbox, self.venue_ns = venue, [], 0

    def send(self, frame: bytes) -> None:
        from policyc.runtime.live.protocol import encode

        t = time.thread_time_ns()
        self.inbox += [encode(reply) for reply in self.venue.on_order(frame)]
        self.venue_ns += time.thread_time_ns() - t

    def corked(self):
        return nullcontext()


def _frames(instrument: str, csv: Path) -> list[bytes]:
    """The recording, as `instrument`'s, as the replay feed sends it (native ticks)."""
    from policyc.runtime.live.protocol import encode
    from policyc.runtime.live.replay import load_recording, message

    rec = load_recording([(instrument, str(csv))])
    now = time.time_ns()
    return [encode(message(rec, k, "native", now)) for k in range(len(rec.ts))]


def _one_run(policy, frames: list[bytes], log: Path, no_log: bool, before: bool) -> tuple[float, tuple]:
    """CPU ns per event of the runtime over every frame, and what it did (events, orders,
    fills, bad messages, reconciling, halted). The runtime's time is this thread's inside
    its calls, less the paper venue's work on the orders sent during them (the venue's
    reading of the feed runs between them), and all the time of the other threads (the
    log's sync thread)."""
    from live import _swap_log
    from policyc.runtime.live.paper import PaperVenue
    from policyc.runtime.live.protocol import encode
    from policyc.runtime.live.eventloop import freeze_start_up_heap
    from policyc.runtime.live.runner import LiveRuntime, RunConfig

    log.unlink(missing_ok=True)
    rt = LiveRuntime(policy, RunConfig("ws://feed.invalid", "ws://venue.invalid", log_path=str(log)))
    _swap_log(rt, log, no_log, before)
    venue = PaperVenue()
    connection = _VenueConnection(venue)
    rt._venue_connected(connection)
    inside = [0]  # this thread's CPU ns inside the runtime's calls

    def runtime(handle, messages) -> None:
        t = time.thread_time_ns()
        handle(messages)
        inside[0] += time.thread_time_ns() - t

    def venue_read() -> None:
        if connection.inbox:
            replies, connection.inbox = connection.inbox, []
            runtime(rt.on_venue_messages, replies)

    venue_read()  # the venue's state, which the runtime asked for as it connected: it trades once they agree
    inside[0], connection.venue_ns = 0, 0
    freeze_start_up_heap()  # as a live command starts
    process, thread = time.process_time_ns(), time.thread_time_ns()
    for k in range(0, len(frames), READ_EVENTS):
        read = frames[k:k + READ_EVENTS]
        connection.inbox += [encode(reply) for reply in venue.on_feed(read)]
        runtime(rt.on_feed_messages, read)
        venue_read()
    runtime(lambda _: rt.log.close(), None)  # the chained log's last sync is its work too
    others = (time.process_time_ns() - process) - (time.thread_time_ns() - thread)
    c = rt.counters
    did = (c.events, c.orders, c.fills, c.bad_messages, rt.core.reconciling, rt.engine.halted)
    return (inside[0] - connection.venue_ns + others) / len(frames), did


def log_cost_rows(policy, instrument: str, csv: Path, log: Path) -> tuple[list[list], dict[str, float]]:
    """The table's rows and the figures: CPU ns per event with each log (medians) and the
    chained log's cost against the log before the chain (`chain_cost`) and against none
    (`log_cost`), as shares of the runtime's CPU time per event. Raises RuntimeError when
    the runs did not trade alike, or did not trade (the figures would mean nothing)."""
    frames = _frames(instrument, csv)
    variants = {"chained": (False, False), "before": (False, True), "none": (True, False)}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    did = None
    for round_ in range(RUNS + 1):  # round 0 warms every path and is not counted
        for name in names[round_ % 3:] + names[:round_ % 3]:
            ns, done = _one_run(policy, frames, log, *variants[name])
            events, orders, fills, bad, reconciling, halted = done
            if did is None:
                did = done
            if done != did or events != len(frames) or orders == 0 or fills != orders or bad or reconciling \
                    or halted:
                raise RuntimeError(f"the {name} log's run did not trade, or not as the first run did (events, "
                                   f"orders, fills, bad messages, reconciling, halted: {done}, the first run's "
                                   f"{did}): its CPU time means nothing")
            if round_:
                cpu[name].append(ns)
    med = {name: statistics.median(values) for name, values in cpu.items()}
    figures = {"chained_ns": med["chained"], "before_ns": med["before"], "unlogged_ns": med["none"],
               "chain_cost": 1 - med["before"] / med["chained"], "log_cost": 1 - med["none"] / med["chained"]}
    what = (f"EMA run in one process, no sockets, every fill taken ({len(frames):,} events in reads of {READ_EVENTS}, "
            f"{did[1]:,} orders, median of {RUNS}): an upper bound on the log's share")
    return [[f"{what}: runtime with the chained, write-ahead log (--fsync batch, inputs journaled)",
             f"{med['chained']:,.0f} CPU ns/ev", "", "1.00"],
            [f"  the same with the log as it was before the chain: the chained log costs {figures['chain_cost']:.1%} "
             "of the runtime's CPU time per event", f"{med['before']:,.0f} CPU ns/ev", "",
             f"{med['before'] / med['chained']:.2f}"],
            [f"  the same without a log: the chained log costs {figures['log_cost']:.1%}",
             f"{med['none']:,.0f} CPU ns/ev", "", f"{med['none'] / med['chained']:.2f}"]], figures
