"""The order core (`runtime/orders.py`) over either back end, for the tests.

`InterpreterSession` puts the reference interpreter (`compiler/interpret.py`) behind the
interface of `compiler.build.Session`, so an `Engine` (and an `OrderCore` over it) runs
the interpreter exactly where it would run the kernel: the same event arrays in, the same
trace rows, equity and order rows out. `CoreRig` is an order core with the test's clocks
that keeps everything it sent and recorded."""
from __future__ import annotations

import numpy as np

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy, Events
from policyc.compiler.interpret import Interpreter
from policyc.runtime.engine import Engine
from policyc.runtime.live.audit import KINDS
from policyc.runtime.orders import OrderCore

WALL = 1_800_000_000_000_000_000        # the rig's wall clock at the start (2027-01-15T08:00:00Z), ns


class InterpreterSession:
    """A `Session` whose events run through `Interpreter`, in layout.LIVE mode only: fills
    come from the venue, so an order row never changes once made (the kernel's
    simulated fills would write into rows already read)."""

    def __init__(self, policy: CompiledPolicy, account: dict | None = None):
        settings = {**policy.checked.account, **(account or {})}
        self.interpreter = Interpreter(policy.program, policy.params, policy.checked.risk, settings,
                                       len(policy.instruments), L.LIVE)
        self._rows: list[list[float]] = []

    def feed(self, events: Events, equity_out=None, trace=None, start: int = 0, stop: int | None = None) -> None:
        it = self.interpreter
        for e in range(start, len(events) if stop is None else stop):
            decided = len(it.trace)
            it.step(e, int(events.ts[e]), int(events.kind[e]), int(events.inst[e]), events.vals[e])
            if trace is not None and len(it.trace) > decided:
                d = it.trace[-1]
                trace[e, :L.TRACE_FIXED] = (d["desired"], d["position"], d["target"], d["order"], d["reasons"],
                                            d["equity"], d["cash"])
                if d["features"] is not None:
                    trace[e, L.TRACE_FIXED:] = [float(v) for v in d["features"]]
            if equity_out is not None:
                equity_out[e] = it.acct.equity

    @property
    def n_orders(self) -> int:
        return len(self.interpreter.orders)

    @property
    def orders(self) -> np.ndarray:
        for o in self.interpreter.orders[len(self._rows):]:
            self._rows.append([o.event, o.instrument, o.qty, o.price, o.target, o.desired, o.reasons, float(o.exit),
                               o.fill_event, o.fill_price, o.fee, o.limit])
        return np.array(self._rows, dtype=np.float64).reshape(-1, L.ORDER_WIDTH)

    @property
    def pstate(self) -> np.ndarray:
        """The columns the Engine reads (position, open quantity, last price); the rest NaN."""
        books = self.interpreter.books
        out = np.full((len(books), L.P_CUSTOM), np.nan)
        out[:, L.P_POS] = [b.position for b in books]
        out[:, L.P_OPEN] = [b.open for b in books]
        out[:, L.P_LAST] = [b.last for b in books]
        return out

    @property
    def acct(self) -> np.ndarray:
        """The columns the Engine reads (cash, peak, kill switch, equity); the rest NaN."""
        a = self.interpreter.acct
        out = np.full(L.ACCT_WIDTH, np.nan)
        out[[L.A_CASH, L.A_PEAK, L.A_HALTED, L.A_EQUITY]] = a.cash, a.peak, float(a.halted), a.equity
        return out


def kernel_engine(policy: CompiledPolicy) -> Engine:
    return Engine(policy, L.LIVE)


def interpreter_engine(policy: CompiledPolicy) -> Engine:
    return Engine(policy, L.LIVE, session=InterpreterSession(policy))


class CoreRig:
    """An order core (`core`: OrderCore or a subclass) over `engine` whose clocks the test
    moves (`wall`, `mono`, ns), with every message it sent (`sent`) and record it wrote
    (`records`, each a dict with its `kind` and `ts`)."""

    def __init__(self, engine: Engine, core: type[OrderCore] = OrderCore, **limits):
        self.engine = engine
        self.wall, self.mono = WALL, 0
        self.sent: list[dict] = []
        self.records: list[dict] = []
        self.core = core(engine, "p-1", lambda message, sent_ns: self.sent.append(dict(message)), self.record,
                              wall_ns=lambda: self.wall, monotonic_ns=lambda: self.mono, **limits)
        self.core.feed_connected()

    def record(self, kind, ts=None, **fields):
        assert kind in KINDS, kind  # a kind the decision log knows
        self.records.append({"kind": kind, "ts": ts, **fields})

    def kinds(self, kind: str) -> list[dict]:
        return [r for r in self.records if r["kind"] == kind]

    def orders(self) -> list[dict]:
        return [m for m in self.sent if m["type"] == "order"]
