"""The compiled policy: IR, kernel, bound params and the arrays it runs on.

`compile_policy(path, params)` is the Python API's front door; `CompiledPolicy.run`
drives the kernel over arrays of events (the backtest and the live runtime both call
`kernel.run` through `Session`, so there is one execution path).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import layout as L
from .check import CheckedPolicy
from .emit import emit_cached
from .frontend import Checked, check_policy
from .hashing import COMPILER_VERSION, toolchain_of
from .ir import Program
from .lower import lower
from .passes import optimise
from .sessions import NO_CLOCK, Clock, clock_of


@dataclass
class Events:
    """A batch of events as columns: `vals[:, c]` is `CompiledPolicy.columns[c]`."""

    ts: np.ndarray      # int64 ns since the epoch, UTC
    kind: np.ndarray    # int8, layout.MARKET / INTENT / ...
    inst: np.ndarray    # int32 instrument index
    vals: np.ndarray    # float64 [n, n_columns]
    #: float64 [n, layout.BAR_WIDTH]: each market event's open, high and low when the data
    #: has bars (prices; NaN where a row has none), else None
    bars: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts)

    @staticmethod
    def market(ts, vals, inst=None) -> "Events":
        n = len(ts)
        return Events(np.ascontiguousarray(ts, dtype=np.int64), np.zeros(n, dtype=np.int8),
                      np.zeros(n, dtype=np.int32) if inst is None else np.ascontiguousarray(inst, dtype=np.int32),
                      np.ascontiguousarray(vals, dtype=np.float64).reshape(n, -1))


@dataclass
class RunResult:
    orders: np.ndarray            # [n_orders, layout.ORDER_WIDTH]
    equity: np.ndarray | None     # equity after each event
    trace: np.ndarray | None      # [n_events, TRACE_FIXED + n_features]
    reason_names: list[str]
    feature_names: list[str]

    def reasons_of(self, row: int) -> list[str]:
        return L.decode_reasons(self.orders[row, L.O_REASONS], self.reason_names)


ORDER_ROWS_PER_EVENTS = 8  # a backtest's first order buffer: one row per this many events
ORDER_GROWTH = 4           # a full order buffer is replaced by one this many times larger
_UNUSED_EQUITY, _UNUSED_TRACE = np.zeros(1), np.zeros((1, 1))  # the kernel writes neither when trace_on is 0
_NO_BARS = np.zeros((0, L.BAR_WIDTH))


@dataclass
class Session:
    """Mutable state of one run: feature state, account, orders. Snapshot = copy arrays."""

    policy: "CompiledPolicy"
    mode: int
    config: np.ndarray
    fs: np.ndarray
    pstate: np.ndarray
    acct: np.ndarray
    orders: np.ndarray
    n_orders: int = 0
    latency_ns: int = 0  # of layout.FILL_LATENCY: an order fills at the first event this long after its decision
    #: (param vector, state windows, state offsets): made once, by CompiledPolicy.session (the
    #: per-event live path calls the kernel with one event at a time)
    bound: tuple = field(kw_only=True, repr=False)

    def feed(self, events: Events, equity_out=None, trace=None, start: int = 0, stop: int | None = None) -> None:
        """Run the kernel over events[start:stop]; grows the order buffer as needed.

        `equity_out` and `trace`, when given, are indexed by absolute event number."""
        pol = self.policy
        trace_on = (1 if equity_out is not None else 0) | (2 if trace is not None else 0)
        eq = equity_out if equity_out is not None else _UNUSED_EQUITY
        tr = trace if trace is not None else _UNUSED_TRACE
        n = len(events) if stop is None else stop
        params, windows, offsets = self.bound
        while True:
            clock = NO_CLOCK if pol.clock is None else pol.clock.columns(events.ts[start:n])
            start, self.n_orders = pol.kernel.run(
                events.ts, events.kind, events.inst, events.vals, clock,
                _NO_BARS if events.bars is None else events.bars, start, n, params, windows,
                offsets, self.config, self.fs, self.pstate, self.acct, self.orders, self.n_orders,
                self.mode, self.latency_ns, eq, tr, trace_on)
            if start >= n:
                break
            self._grow_orders(len(self.orders) * ORDER_GROWTH)

    def reserve_orders(self, n_events: int) -> None:
        """Size the order buffer for a batch of `n_events` up front, so the kernel runs it
        in one call: a row per ORDER_ROWS_PER_EVENTS events (policies that trade more
        often grow it by ORDER_GROWTH). Rows are only committed to memory once written."""
        self._grow_orders(n_events // ORDER_ROWS_PER_EVENTS + 2)

    def _grow_orders(self, rows: int) -> None:
        if rows > len(self.orders):
            grown = np.empty((rows, L.ORDER_WIDTH))
            grown[: self.n_orders] = self.orders[: self.n_orders]
            self.orders = grown

    @property
    def reason_counts(self) -> dict[str, int]:
        names = self.policy.reason_names
        counts = self.acct[L.A_REASON_COUNTS: L.A_REASON_COUNTS + len(names)]
        return {name: int(c) for name, c in zip(names, counts) if c}

    def snapshot(self) -> dict:
        return {"fs": self.fs.copy(), "pstate": self.pstate.copy(), "acct": self.acct.copy(),
                "orders": self.orders[: self.n_orders].copy()}

    def restore(self, snap: dict) -> None:
        self.fs, self.pstate, self.acct = snap["fs"].copy(), snap["pstate"].copy(), snap["acct"].copy()
        self.orders = np.empty((max(len(snap["orders"]) * 2, 64), L.ORDER_WIDTH))
        self.orders[: len(snap["orders"])] = snap["orders"]
        self.n_orders = len(snap["orders"])


@dataclass
class CompiledPolicy:
    checked: CheckedPolicy
    program: Program
    source: str
    kernel_path: Path
    kernel: object
    policy_hash: str
    build_hash: str
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.checked.name

    @property
    def instruments(self) -> list[str]:
        return self.checked.instruments

    def symbol(self, name: str) -> str:
        """The symbol of the instrument a policy calls `name` (`bn` in `instruments: {bn:
        "binance:BTCUSDT"}`), or `name` itself when no instrument is called that."""
        k = self.checked.aliases.get(name)
        return name if k is None else self.instruments[k]

    @property
    def columns(self) -> list[str]:
        """The event value columns, in order: the market fields, then the inputs."""
        return self.program.columns

    @property
    def optional_columns(self) -> tuple[str, ...]:
        """The columns of `columns` that data may lack (NaN where it does): the quote
        (`bid`, `ask`) the IOC orders of a rule's or a leg's `limit` fill against, when
        the policy does not read it itself."""
        return self.program.optional_columns

    @property
    def feature_names(self) -> list[str]:
        return list(self.program.features)

    @property
    def reason_names(self) -> list[str]:
        return L.reason_names(self.program)

    @property
    def clock(self) -> Clock | None:
        """The policy's calendar and time zone, or None: days are UTC days."""
        return clock_of(self.program.clock)

    @property
    def param_vector(self) -> np.ndarray:
        return L.param_vector(self.program, self.params)

    @property
    def state(self) -> L.StateLayout:
        return L.state_layout(self.program, [self.params[n] for n in self.program.params])

    def with_params(self, **overrides) -> "CompiledPolicy":
        """The same kernel under new param values: checked and hashed again, never recompiled."""
        result = check_policy(self.checked.parsed, {**self.params, **overrides})
        program = optimise(lower(result.checked))
        if emit_cached(program, result.checked) != self.source:
            return compile_checked(result)
        return CompiledPolicy(result.checked, program, self.source, self.kernel_path, self.kernel,
                              result.policy_hash, result.build_hash, dict(result.checked.params))

    def session(self, mode: int = L.FILL_NEXT, account: dict | None = None, latency_ns: int = 0) -> Session:
        """A fresh session: `mode` a layout fill mode, `latency_ns` the delay of FILL_LATENCY (ns)."""
        settings = {**self.checked.account, **(account or {})}
        acct, pstate = L.initial_account(len(self.instruments), len(self.program.custom), settings,
                                         self.checked.contract_table)
        state = self.state  # (a layout made from the params: once a session)
        fs = np.zeros((len(self.instruments), state.width))
        config = L.config_vector(self.checked.risk, settings)
        return Session(self, mode, config, fs, pstate, acct, np.empty((1024, L.ORDER_WIDTH)), latency_ns=latency_ns,
                       bound=(self.param_vector, state.windows, state.offsets))

    def run(self, events: Events, mode: int = L.FILL_NEXT, *, record_equity: bool = True,
            trace: bool = False, latency_ns: int = 0) -> RunResult:
        """Run a whole batch from a fresh account (a backtest in one call)."""
        s = self.session(mode, latency_ns=latency_ns)
        s.reserve_orders(len(events))
        equity = np.empty(len(events)) if record_equity else None
        tr = np.full((len(events), L.TRACE_FIXED + len(self.program.features)), np.nan) if trace else None
        s.feed(events, equity, tr)
        return RunResult(s.orders[: s.n_orders].copy(), equity, tr, self.reason_names, self.feature_names)

    def manifest(self) -> dict:
        return {
            "policy": self.name,
            "version": self.checked.parsed.version,
            "policy_hash": self.policy_hash,
            "build_hash": self.build_hash,
            "params": self.params,
            "instruments": self.instruments,
            "inputs": self.checked.inputs,
            "market_fields": self.checked.fields,
            "columns": self.columns,
            "optional_columns": list(self.optional_columns),
            "features": self.feature_names,
            "reasons": self.reason_names,
            "compiler": {"policyc": COMPILER_VERSION},
            "toolchain": toolchain_of(self.checked),
            "kernel": {"file": "kernel.py", "cache_path": str(self.kernel_path)},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def compile_checked(result: Checked, on_compile: Callable[[str], None] | None = None) -> CompiledPolicy:
    """Generate, load and compile the kernel of a checked policy: seconds the first time
    (Numba JIT), milliseconds once its machine code is in the cache (`policyc.dsl.cache.cache_root()`).

    `on_compile` is called with one line, `compiling NAME (first run; about N s)...`, as a
    real compile starts, or as this process starts to wait for another one compiling the
    same kernel (`jit.watch_compile`), and never when the machine code comes from the
    cache at once, so a caller can tell a person why they wait."""
    from .jit import with_stack_headroom

    return with_stack_headroom(_compile_checked, result, on_compile)


def _compile_checked(result: Checked, on_compile: Callable[[str], None] | None) -> CompiledPolicy:
    from .jit import load_kernel, watch_compile

    program = optimise(lower(result.checked))
    source = emit_cached(program, result.checked)
    empty = Events(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int32),
                   np.zeros((0, len(program.columns))))

    def starting(estimate_s: float) -> None:
        if on_compile is not None:
            on_compile(f"compiling {result.checked.name} (first run; about {max(1, round(estimate_s))} s)...")

    for fresh in (False, True):
        module, path = load_kernel(source, fresh)
        compiled = CompiledPolicy(result.checked, program, source, path, module, result.policy_hash,
                                  result.build_hash, dict(result.checked.params))
        try:
            with watch_compile(source, starting):
                compiled.run(empty, trace=True)  # JIT-compiles now, or loads the machine code from the cache
        except Exception:
            # A first call on no events fails only when what Numba loaded for it is damaged
            # (a cache file cut short or altered, whatever it raises then): once more, with
            # Numba's cache of the kernel forgotten, and a failure then is the kernel's own
            if fresh:
                raise
            continue
        return compiled


def compile_policy(source, params: dict | None = None,
                   on_compile: Callable[[str], None] | None = None) -> CompiledPolicy:
    """Load, check and compile a policy file (or a ParsedPolicy) with param overrides;
    `on_compile` as in `compile_checked`. Raises PolicyError for a file that cannot be
    read or does not check."""
    from .jit import with_stack_headroom

    return with_stack_headroom(lambda: _compile_checked(check_policy(source, params), on_compile))


def write_artifact(compiled: CompiledPolicy, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel.py").write_text(compiled.source)
    manifest = compiled.manifest()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
