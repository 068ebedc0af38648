"""`make bench`: how fast policyc validates, compiles and runs, each target next to its
measured figure with PASS or MISS, and every figure as JSON in reports/bench.json.

1. validate time per policy (compiler.frontend.check_policy) in a process without Numba
2. cold compile of ema_cross in a fresh process with an empty POLICYC_CACHE (JIT)
3. cached compile in a second fresh process with the same cache (machine code loaded)
4. the kernel against a bare hand-written @njit loop (bench/handwritten.py) on 1,000,000
   events: the reference job (bench/ema_stop.yaml) and a trend job (ema_cross.yaml)
5. per-event cost at 1, 10, 100 and 1,000 instruments, the same number of events in all
6. what a sweep combination costs against its kernel time; data loading and the sweep
   rate (bench/data_and_sweep.py)
7. the live runtime on loopback: tick-to-order latency, throughput, 1,000 instruments on
   one feed and 100 intent clients, each next to a bare websockets baseline (bench/live.py)
8. the Gymnasium environment's steps/s, one env and a vector of 64, next to a bare env that
   does only the NumPy work of the observation and reward (bench/gym.py)
9. the cross-venue arbitrage example (policies/arbitrage.yaml on examples/arbitrage/'s
   quotes) against the same arbitrage hand-written in Numba (bench/arb.py), and live, the
   time from a dislocating quote to both legs at their venues next to the echo round trip
   (bench/legs_live.py)

`run.py --sections kernel,instruments` runs only the named ones (SECTIONS).

A target row is a dict {"section", "target", "measured", "limit", "unit", "pass"}: the
measured figure must be at most `limit` (in `unit`) to pass, unless the row says
otherwise in "pass". Sections made elsewhere (bench/data_and_sweep.py, bench/live.py)
return such dicts among their table rows, and they join the targets table. A MISS is
reported, never an error: the only hard failure is a parity mismatch between the
generated kernel and a hand-written loop, because then the speed comparison would be
meaningless.

Internal: `run.py --worker validate|compile|breakdown` are the fresh child processes.
Only the standard library is imported at module level, so the workers' import timings
are their own.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from timing import KernelTimings, now  # noqa: E402  (bench/, this script's folder, is on the path)
POLICIES = ROOT / "policies"
EMA = POLICIES / "ema_cross.yaml"
BENCH_EMA_STOP = ROOT / "bench" / "ema_stop.yaml"
REPORT = ROOT / "reports" / "bench.json"

VALIDATE_RUNS = 10      # per policy, in one process; the first call is reported separately
COMPILE_REPEATS = 3     # cold/cached process pairs
KERNEL_REPS_1M = 11
INSTRUMENT_COUNTS = (1, 10, 100, 1_000)
INSTRUMENT_REPS = 7
SWEEP_REPS = 5
T0_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
MINUTE_NS = 60_000_000_000

CREATED_DIRS: list[str] = []   # temp caches made by this run, removed at the end
TARGETS: list[dict] = []       # target rows, in the order measured
RESULTS: dict = {}             # raw figures per section, for reports/bench.json


def target(section: str, what: str, measured: float | None, limit: float, unit: str) -> dict:
    """Record a target row: passes when `measured` is at most `limit`."""
    row = {"section": section, "target": what, "measured": measured, "limit": limit, "unit": unit,
           "pass": measured is not None and measured <= limit}
    TARGETS.append(row)
    return row


def split_rows(rows: list) -> list[list]:
    """Table rows of a section made elsewhere, its target rows (dicts) moved to TARGETS."""
    TARGETS.extend(r for r in rows if isinstance(r, dict))
    return [r for r in rows if not isinstance(r, dict)]


def print_targets() -> None:
    print()
    print("Targets (ratios measured in the same run; PASS when measured <= limit)")
    table(["section", "target", "limit", "measured", ""],
          [[t["section"], t["target"], f"{t['limit']:g} {t['unit']}",
            "n/a" if t["measured"] is None else f"{t['measured']:.3g} {t['unit']}", "PASS" if t["pass"] else "MISS"]
           for t in TARGETS])


def write_json(path: Path, started: float) -> None:
    import numpy  # noqa: F401  (its version is in the record)

    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": now() - started,
              "machine": {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
                          "python": platform.python_version(), "numba": version("numba"),
                          "numpy": version("numpy")},
              "targets": TARGETS, "results": RESULTS}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"figures written to {path.relative_to(ROOT)}")


# ---------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------
def worker_validate() -> dict:
    t0 = now()
    from policyc.compiler.frontend import check_policy
    from policyc.dsl.diagnostics import PolicyError
    t_import = now() - t0
    numba_before = "numba" in sys.modules
    rows = []
    for path in sorted(POLICIES.glob("*.yaml")):
        times, error = [], None
        for _ in range(VALIDATE_RUNS):
            a = now()
            try:
                check_policy(path)
            except PolicyError as exc:
                error = str(exc)[:60]
            times.append(now() - a)
        rows.append({"policy": path.name, "times": times, "error": error})
    return {"import_s": t_import, "numba_before": numba_before, "numba_after": "numba" in sys.modules,
            "rows": rows}


def worker_compile() -> dict:
    t0 = now()
    import numpy  # noqa: F401  (timed apart so "import numba" is Numba's own cost)
    t1 = now()
    import numba  # noqa: F401
    t2 = now()
    from policyc.compiler.build import compile_policy
    t3 = now()
    policy = compile_policy(EMA)
    t4 = now()
    stats = policy.kernel.run.stats
    return {"numpy_s": t1 - t0, "numba_s": t2 - t1, "compiler_import_s": t3 - t2, "compile_s": t4 - t3,
            "cache_hits": sum(stats.cache_hits.values()), "cache_misses": sum(stats.cache_misses.values())}


def worker_breakdown() -> dict:
    """The steps of compiler.build.compile_checked, timed one by one (cached case)."""
    import numpy as np
    import numba  # noqa: F401
    from policyc.compiler.build import CompiledPolicy, Events
    from policyc.compiler.emit import emit_cached
    from policyc.compiler.frontend import check_policy
    from policyc.compiler.jit import load_kernel
    from policyc.compiler.lower import lower
    from policyc.compiler.passes import optimise

    t = [now()]
    result = check_policy(EMA)
    t.append(now())
    program = optimise(lower(result.checked))
    t.append(now())
    source = emit_cached(program, result.checked)
    t.append(now())
    module, path = load_kernel(source)
    t.append(now())
    compiled = CompiledPolicy(result.checked, program, source, path, module, result.policy_hash,
                              result.build_hash, dict(result.checked.params))
    empty = Events(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int32),
                   np.zeros((0, len(program.columns))))
    compiled.run(empty, trace=True)
    t.append(now())
    compiled.run(empty, trace=True)
    t.append(now())
    names = ["check_policy", "lower + optimise", "emit_cached (the rendered source, from the cache)",
             "load_kernel (import module)", "first kernel call (Numba cache load)", "second kernel call"]
    return {"steps": [[n, t[i + 1] - t[i]] for i, n in enumerate(names)]}


def run_worker(kind: str, env: dict | None = None) -> tuple[dict | None, float, str]:
    """Run a worker in a fresh interpreter; returns (result, process wall seconds, stderr)."""
    a = now()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", kind], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    wall = now() - a
    if proc.returncode != 0:
        return None, wall, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall, ""


# ---------------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list], indent: str = "  ") -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    print(line(cells[0]))
    print(indent + "  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def median(xs):
    return statistics.median(xs) if xs else None


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_facts() -> None:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print("policyc benchmark (bench/run.py)")
    print(f"  CPU      {model}, {os.cpu_count()} logical cores ({usable} usable by this process)")
    print(f"  system   {platform.system()} {platform.release()} {platform.machine()}, load average {load}")
    print(f"  Python   {platform.python_version()} ({platform.python_implementation()})")
    print(f"  numba {version('numba')}, llvmlite {version('llvmlite')}, numpy {version('numpy')}")
    print("  NOTE: absolute times are noisy on a shared machine; targets are ratios measured in the same")
    print("        run (interleaved, medians). A MISS is reported, not an error.")


# ---------------------------------------------------------------------------------------
# 1. validate
# ---------------------------------------------------------------------------------------
def bench_validate() -> None:
    print()
    print(f"1. Validate: compiler.frontend.check_policy(path), {VALIDATE_RUNS} runs per policy in one fresh "
          "process that never imports Numba")
    res, wall, err = run_worker("validate")
    if res is None:
        print(f"  worker failed: {err}")
        return
    rows = []
    for r in res["rows"]:
        warm = r["times"][1:]
        m = median(warm)
        rows.append([r["policy"], ms(r["times"][0]), ms(m), ms(min(warm)), "ERROR: " + r["error"] if r["error"] else ""])
    table(["policy", "first call", "median", "best", ""], rows)
    target("validate", "slowest policy's check_policy, median", max(median(r["times"][1:]) for r in res["rows"]) * 1e3,
           100.0, "ms")
    print(f"  median = runs 2..{VALIDATE_RUNS}; the first call of the first policy also pays one-time set-up.")
    print(f"  import compiler.frontend: {ms(res['import_s'])}; worker process wall {ms(wall)}")
    print(f"  'numba' in sys.modules: after import = {res['numba_before']}, after all checks = {res['numba_after']}")


# ---------------------------------------------------------------------------------------
# 2-3. compile, cold and cached
# ---------------------------------------------------------------------------------------
def bench_compile() -> str:
    """Returns a POLICYC_CACHE directory that holds the compiled ema_cross kernel."""
    print()
    print(f"2-3. Compile policies/ema_cross.yaml in fresh processes; {COMPILE_REPEATS} pairs of "
          "(cold: new empty POLICYC_CACHE, then cached: same POLICYC_CACHE); median")
    cold, warm, walls_cold, walls_warm, errors = [], [], [], [], []
    cache = None
    for _ in range(COMPILE_REPEATS):
        cache = tempfile.mkdtemp(prefix="policyc-bench-cache-")
        CREATED_DIRS.append(cache)
        assert not os.listdir(cache)
        env = {**os.environ, "POLICYC_CACHE": cache}
        for into, walls in ((cold, walls_cold), (warm, walls_warm)):
            res, wall, err = run_worker("compile", env)
            if res is None:
                errors.append(err)
            else:
                into.append(res)
                walls.append(wall)
    if errors:
        print(f"  worker failures: {errors}")
    if not cold or not warm:
        return cache

    def med(results, key):
        return median([r[key] for r in results])

    def total(r, numba=True):
        return (r["numba_s"] if numba else 0.0) + r["compiler_import_s"] + r["compile_s"]

    rows = [
        ["import numpy", ms(med(cold, "numpy_s")), ms(med(warm, "numpy_s"))],
        ["import numba (numpy already loaded)", ms(med(cold, "numba_s")), ms(med(warm, "numba_s"))],
        ["import compiler.build", ms(med(cold, "compiler_import_s")), ms(med(warm, "compiler_import_s"))],
        ["compile_policy(ema_cross.yaml)", ms(med(cold, "compile_s")), ms(med(warm, "compile_s"))],
        ["  without numba import (compiler import + call)", ms(median([total(r, False) for r in cold])),
         ms(median([total(r, False) for r in warm]))],
        ["  with numba import (numba + compiler + call)", ms(median([total(r) for r in cold])),
         ms(median([total(r) for r in warm]))],
        ["process wall (interpreter start to exit)", ms(median(walls_cold)), ms(median(walls_warm))],
        ["kernel.run Numba cache hits / misses", f"{cold[-1]['cache_hits']} / {cold[-1]['cache_misses']}",
         f"{warm[-1]['cache_hits']} / {warm[-1]['cache_misses']}"],
    ]
    table(["phase (fresh process)", "cold (JIT)", "cached"], rows)
    best_warm = min(r["compile_s"] for r in warm)
    c = med(warm, "compile_s")
    print(f"  cached compile_policy(): median {ms(c)}, best {ms(best_warm)} (call alone); with compiler import "
          f"{ms(median([total(r, False) for r in warm]))}, with numba import too {ms(median([total(r) for r in warm]))}")
    target("compile", "cached compile_policy(ema_cross), median", c * 1e3, 300.0, "ms")

    res, _, err = run_worker("breakdown", {**os.environ, "POLICYC_CACHE": cache})
    if res is not None:
        print("  where a cached compile_policy() goes (one more fresh process, same cache, numba already imported,")
        print("  the steps of compile_checked run one by one):")
        table(["step", "time"], [[n, ms(s)] for n, s in res["steps"]], indent="    ")
        print(f"    all but the second call: {ms(sum(s for n, s in res['steps'][:-1]))}")
    else:
        print(f"  breakdown worker failed: {err}")
    return cache


# ---------------------------------------------------------------------------------------
# 4-6. kernel speed, instruments, sweep cost
# ---------------------------------------------------------------------------------------
def synthetic(n: int, seed: int, p0: float = 100.0, sigma: float = 0.001, momentum: float = 0.5,
              high_sigma: float = 0.02, high_share: float = 0.05):
    """Seeded random walk of log(close), one event a minute (the UTC day rolls every 1440 events).

    Increments are AR(1) with coefficient `momentum` (long-run step stdev `sigma`), so trends
    exist and the EMA strategy trades through the whole run instead of bleeding fees into its
    drawdown kill switch; the walk is reflected into [p0/2, 2*p0] so prices stay sane over
    10M events. On a `high_share` of whole days every event also gets independent jitter of
    stdev `high_sigma`, so the 2% volatility brake engages."""
    import numpy as np

    rng = np.random.default_rng(seed)
    days = n // 1440 + 1
    jittery = np.repeat(rng.random(days) < high_share, 1440)[:n]
    kernel = momentum ** np.arange(40.0)   # AR(1) impulse response, truncated at phi^40
    steps = (1.0 - momentum) * sigma * np.convolve(rng.standard_normal(n), kernel)[:n]
    lo, hi = np.log(p0 / 2), np.log(p0 * 2)
    x = np.mod(np.log(p0) + np.cumsum(steps) - lo, 2 * (hi - lo))
    log_close = lo + np.where(x > hi - lo, 2 * (hi - lo) - x, x)
    log_close += np.where(jittery, high_sigma * rng.standard_normal(n), 0.0)
    ts = T0_NS + np.arange(n, dtype=np.int64) * MINUTE_NS
    vals = np.empty((n, 2))
    vals[:, 0] = np.exp(log_close)   # price (bars: price = close)
    vals[:, 1] = vals[:, 0]          # close
    return ts, vals


def time_interleaved(fns: dict, reps: int) -> dict:
    """{name: [seconds per rep]}: each round runs every fn once, in turn, so drift on the
    shared machine hits all of them alike."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(fn())
    return times


def paired_ratio(times: dict, a: str, b: str) -> float:
    """Median over rounds of time[a] / time[b] (both measured in the same round)."""
    return median([x / y for x, y in zip(times[a], times[b])])


def market_events(policy, ts, vals, inst=None):
    """Events of `policy` from a price series: every market column of the policy (price,
    close, high, low, open, volume) is filled from the price, so any bar policy runs."""
    import numpy as np
    from policyc.compiler.build import Events

    price = vals[:, 0]
    fill = {"high": price * 1.001, "low": price * 0.999, "volume": np.ones(len(price))}
    cols = np.column_stack([fill.get(c, price) for c in policy.columns])
    return Events.market(ts, cols, inst)


class Job(KernelTimings):
    """One policy over one event batch, three ways: the bare hand-written loop, the
    generated kernel alone (Session.feed over a pre-sized order buffer, one call), and
    `run_backtest` as `policyc backtest` and `sweep` run it (no equity curve recorded).
    The orders of all three must agree before any timing counts."""

    def __init__(self, policy, events, bare, bare_args, bare_out, fields=(0, 1, 2, 3, 4)):
        """`bare(ts, vals, *bare_args, *bare_out)` writes its orders into the arrays of
        `bare_out`; `fields` are the positions there of the event, quantity, fill event,
        fill price and fee columns."""
        self.policy, self.events, self.n = policy, events, len(events)
        self.bare, self.bare_args, self.bare_out, self.fields = bare, bare_args, bare_out, fields

    def time_bare(self):
        ev = self.events
        a = now()
        self.bare_result = self.bare(ev.ts, ev.vals, *self.bare_args, *self.bare_out)
        return now() - a



    def check(self) -> str:
        """Warm every path and compare their orders (raises SystemExit on a mismatch)."""
        import numpy as np
        from policyc.compiler import layout as L

        self.time_bare(), self.time_kernel(), self.time_backtest()
        n_bare = self.bare_result[1]
        o = self.backtest_result.orders
        k = self.kernel_session.orders[: self.kernel_session.n_orders]
        ev_idx, qty, fill_ev, fill_px, fee = (self.bare_out[f][:n_bare] for f in self.fields)
        problems = []
        if self.bare_result[0] != self.n:
            problems.append(f"bare loop stopped at event {self.bare_result[0]} of {self.n}")
        if not (len(o) == len(k) == n_bare):
            problems.append(f"order count: backtest {len(o)}, kernel {len(k)}, bare {n_bare}")
        else:
            for name, col, theirs in (("event", L.O_EVENT, ev_idx), ("quantity", L.O_QTY, qty),
                                      ("fill event", L.O_FILL_EVENT, fill_ev), ("fill price", L.O_FILL_PRICE, fill_px),
                                      ("fee", L.O_FEE, fee)):
                if not (np.array_equal(o[:, col], theirs, equal_nan=True) and np.array_equal(k[:, col], o[:, col],
                                                                                             equal_nan=True)):
                    problems.append(f"{name} differs")
        if problems:
            print("  PARITY FAILED -- kernel and bare loop disagree; the speed comparison is meaningless:")
            for p in problems:
                print("    " + p)
            raise SystemExit(1)
        return f"parity: ok ({len(o):,} orders, same events, quantities, fill events, fill prices and fees)"


def ema_stop_job(n: int):
    import numpy as np
    from policyc.compiler.build import compile_policy
    from handwritten import ema_stop_bare

    policy = compile_policy(BENCH_EMA_STOP)
    ts, vals = synthetic(n, seed=1)
    p, acct = policy.params, policy.checked.account
    cap = n // 2 + 2
    out = (np.empty(cap, np.int64), np.empty(cap), np.empty(cap, np.int64), np.empty(cap), np.empty(cap))
    args = (int(p["fast"]), int(p["slow"]), float(p["size"]), policy.checked.risk["stop_loss"], acct["fees_bps"],
            acct["slippage_bps"], acct["initial_equity"])
    return Job(policy, market_events(policy, ts, vals), ema_stop_bare, args, out)


def trend_job(n: int):
    import numpy as np
    from policyc.compiler.build import compile_policy
    from handwritten import ema_cross_hand

    policy = compile_policy(EMA)
    ts, vals = synthetic(n, seed=1)
    p, risk, acct = policy.params, policy.checked.risk, policy.checked.account
    cap = n // 2 + 2
    out = (np.empty(cap, np.int64), np.empty(cap), np.empty(cap, np.int64), np.empty(cap), np.empty(cap),
           np.empty(cap))
    args = (int(p["fast"]), int(p["slow"]), 20, float(p["size"]), bool(risk["long_only"]), risk["max_drawdown"],
            risk["stop_loss"], risk["max_position"], risk["max_order_qty"], risk["max_orders_per_day"],
            acct["fees_bps"], acct["slippage_bps"], acct["initial_equity"])
    # ema_cross_hand's order arrays: event, qty, price, fill event, fill price, fee
    return Job(policy, market_events(policy, ts, vals), ema_cross_hand, args, out, (0, 1, 3, 4, 5))


def bench_kernel(cache: str | None) -> None:
    if cache:
        os.environ["POLICYC_CACHE"] = cache
    n = 1_000_000
    print()
    print("4. Kernel against the bare hand-written loop (1,000,000 synthetic minute bars, fill next, no equity "
          "curve)")
    for label, make, section in (("reference job: EMA 12/26 crossover, 2% stop, one unit (bench/ema_stop.yaml)",
                                  ema_stop_job, "kernel: reference job"),
                                 ("trend job: ema_cross.yaml (20-return stdev brake, stop, kill switch, order limits)",
                                  trend_job, "kernel: trend job")):
        job = make(n)
        print(f"  {label}")
        print("    " + job.check())
        times = time_interleaved({"bare": job.time_bare, "kernel": job.time_kernel, "backtest": job.time_backtest},
                                 KERNEL_REPS_1M)
        rows = []
        for key, what in (("bare", "bare @njit loop (bench/handwritten.py)"),
                          ("kernel", "generated kernel: Session.feed, one call"),
                          ("backtest", "run_backtest(record_equity=False): what backtest and sweep run")):
            m = median(times[key])
            rows.append([what, f"{m * 1e3:.1f}", f"{m / n * 1e9:.2f}", f"{n / m / 1e6:.1f}",
                         f"{paired_ratio(times, key, 'bare'):.2f}x"])
        table(["variant", "median ms", "ns/event", "M events/s", "vs bare"], rows, indent="    ")
        RESULTS[section] = {k: [t / n * 1e9 for t in v] for k, v in times.items()}
        target(section, "run_backtest / bare loop, events/s", paired_ratio(times, "backtest", "bare"), 1.2, "x")
        del job


def bench_instruments(cache: str | None) -> None:
    """Per-event cost at 1, 10, 100 and 1,000 instruments over the same number of events."""
    import numpy as np
    from policyc.compiler.build import compile_policy

    if cache:
        os.environ["POLICYC_CACHE"] = cache
    n = 1_000_000
    print()
    print(f"5. Instruments: an EMA crossover with a stop and a gross exposure limit on every instrument, {n:,} "
          "events in all,")
    print("   instruments in turn (kernel alone: Session.feed, one call)")
    text = BENCH_EMA_STOP.read_text()
    ts, vals = synthetic(n, seed=3)
    policies, events = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in INSTRUMENT_COUNTS:
            names = ", ".join(f"I{k}" for k in range(count))
            path = Path(tmp) / f"ema_{count}.yaml"
            path.write_text(text.replace("instruments: [X]", f"instruments: [{names}]")
                            .replace("risk:\n", "risk:\n  max_gross_exposure: 1e9\n"))
            policies[count] = compile_policy(path)
            events[count] = market_events(policies[count], ts, vals, np.arange(n, dtype=np.int32) % count)

    def timer(count):
        def run():
            session = policies[count].session()
            session.reserve_orders(n)
            a = now()
            session.feed(events[count])
            return now() - a
        return run

    times = time_interleaved({c: timer(c) for c in INSTRUMENT_COUNTS}, INSTRUMENT_REPS)
    rows = [[f"{c:,}", f"{median(times[c]) / n * 1e9:.2f}", f"{paired_ratio(times, c, 1):.2f}x"]
            for c in INSTRUMENT_COUNTS]
    table(["instruments", "ns/event", "vs 1 instrument"], rows)
    RESULTS["instruments"] = {str(c): [t / n * 1e9 for t in v] for c, v in times.items()}
    top = INSTRUMENT_COUNTS[-1]
    target("instruments", f"ns/event at {top:,} instruments / at 1", paired_ratio(times, top, 1), 1.5, "x")


def bench_sweep_cost(cache: str | None) -> None:
    """What one sweep combination costs (re-bind, run, summary) against its kernel time."""
    from policyc.compiler.build import compile_policy
    from policyc.runtime.backtest import run_backtest, summary

    if cache:
        os.environ["POLICYC_CACHE"] = cache
    n = 1_000_000
    base = compile_policy(EMA)
    ts, vals = synthetic(n, seed=1)
    events = market_events(base, ts, vals)
    combos = [{"fast": f, "slow": s} for f in (5, 12) for s in (26, 50)]
    bound = [base.with_params(**c) for c in combos]

    def kernel():
        dt = 0.0
        for policy in bound:
            session = policy.session()
            session.reserve_orders(n)
            a = now()
            session.feed(events)
            dt += now() - a
        return dt

    def combination():
        a = now()
        for c in combos:
            summary(run_backtest(base.with_params(**c), events, progress=False, record_equity=False))
        return now() - a

    combination()
    times = time_interleaved({"kernel": kernel, "combination": combination}, SWEEP_REPS)
    print()
    print(f"6. Sweep combination cost: ema_cross over {n:,} events, {len(combos)} combinations (fast x slow)")
    table(["what", "ms per combination"],
          [["kernel alone (Session.feed)", f"{median(times['kernel']) / len(combos) * 1e3:.1f}"],
           ["with_params + run_backtest + summary", f"{median(times['combination']) / len(combos) * 1e3:.1f}"]])
    RESULTS["sweep combination"] = {k: [t / len(combos) for t in v] for k, v in times.items()}
    target("sweep", "a combination / its kernel time", paired_ratio(times, "combination", "kernel"), 1.5, "x")


def bench_data_and_sweep(cache: str | None) -> None:
    from data_and_sweep import bench_loading, bench_sweep

    print()
    print("6, continued. Data loading (synthetic minute bars; the loader validates every row) and sweep rate")
    table(["what", "time", "rows/s or rate"], split_rows(bench_loading() + bench_sweep()))


def bench_live_runtime(cache: str | None) -> None:
    from live import bench_live

    start = now()
    print()
    print("7. Live runtime on loopback (replay feed -> runtime -> paper venue), against bare websockets in the same")
    print("   run; targets: tick-to-order p50 <= 1.5x the cross-process echo, throughput >= 0.8x the bare client")
    print("   (>= 0.6x with 1,000 instruments), the decision log <= 10% of throughput")
    table(["what", "figure", "", "ratio to baseline"], split_rows(bench_live()))
    print(f"  section 7 took {now() - start:.0f} s")


def bench_gym(cache: str | None) -> None:
    """bench/gym.py: environment steps per second against a bare gymnasium.Env doing only
    the NumPy work of the observation and reward (loaded by path: a module named `gym`
    on sys.path would stand in for the package of that name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("policyc_bench_gym", Path(__file__).resolve().parent / "gym.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print()
    print("8. Gymnasium environment: steps/s of the policy's environment against a bare one, same run")
    figures = []
    for row in module.rows():
        figures.append([row["section"], f"{row['measured']:,.2f} {row['unit']}"])
        if row["limit"] is not None and row["unit"] == "x":
            TARGETS.append({**row, "section": "gym"} | {"target": f"{row['section'].removeprefix('gym: ')} "
                                                                  f"{row['target']}"})
    table(["what", "figure"], figures)


def bench_arb(cache: str | None) -> None:
    """bench/arb.py: the two-venue arbitrage example's events/s, kernel and run_backtest,
    against its hand-written @njit loop, after checking that their orders agree."""
    from arb import rows

    if cache:
        os.environ["POLICYC_CACHE"] = cache
    print()
    print("9. Cross-venue arbitrage: policies/arbitrage.yaml over examples/arbitrage/ (two venues' quotes, IOC limit")
    print("   legs, fill next) against the same logic hand-written (bench/arb.py); interleaved, medians")
    figures, raw = rows()
    table(["variant", "ns/event", "M events/s", "vs hand loop"], split_rows(figures))
    RESULTS["arb"] = raw
    from legs_live import bench_legs_latency

    print()
    print("   live: two feeds (native quotes, paced) and two venues over loopback, the runtime in this process "
          "(bench/legs_live.py)")
    latency, figures = bench_legs_latency()
    table(["what", "p50", "p99", "ratio to baseline"], latency)
    RESULTS["arb"]["detection_to_both_legs"] = figures


SECTIONS = {"kernel": bench_kernel, "instruments": bench_instruments, "sweep-cost": bench_sweep_cost,
            "data": bench_data_and_sweep, "live": bench_live_runtime, "gym": bench_gym, "arb": bench_arb}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        kind = sys.argv[2]
        fn = {"validate": worker_validate, "compile": worker_compile, "breakdown": worker_breakdown}[kind]
        print(json.dumps(fn()))
        return 0
    chosen = ["validate", "compile", *SECTIONS]
    if len(sys.argv) == 3 and sys.argv[1] == "--sections":
        chosen = sys.argv[2].split(",")
        unknown = [c for c in chosen if c not in ("validate", "compile", *SECTIONS)]
        if unknown:
            print(f"unknown section {unknown[0]}; sections: validate, compile, {', '.join(SECTIONS)}", file=sys.stderr)
            return 2
    elif len(sys.argv) > 1:
        print("usage: run.py [--sections NAME,NAME...]", file=sys.stderr)
        return 2
    start = now()
    machine_facts()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    cache = None
    try:
        if "validate" in chosen:
            bench_validate()
        if "compile" in chosen:
            cache = bench_compile()
        for name, fn in SECTIONS.items():
            if name in chosen:
                fn(cache)
    finally:
        for d in CREATED_DIRS:
            shutil.rmtree(d, ignore_errors=True)
    print_targets()
    write_json(REPORT, start)
    print(f"bench finished in {now() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
