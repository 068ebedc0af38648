"""`make bench`: how fast policyc validates, compiles and runs, printed as plain tables.

1. validate time per policy (compiler.frontend.check_policy) in a process without Numba
2. cold compile of ema_cross in a fresh process with an empty POLICYC_CACHE (JIT)
3. cached compile in a second fresh process with the same cache (machine code loaded)
4. kernel speed on 1,000,000 synthetic events against a hand-written @njit loop
5. the same at 10,000,000 events
6. data loading (CSV and Parquet) and the sweep rate
7. the live runtime on loopback: tick-to-order latency, throughput, 1,000 instruments on
   one feed and 100 intent clients, each next to a bare websockets baseline (bench/live.py)

Benchmarks report; they never fail on timing. The only hard failure is a parity
mismatch between the generated kernel and the hand-written loop, because then the
speed comparison would be meaningless.

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
POLICIES = ROOT / "policies"
EMA = POLICIES / "ema_cross.yaml"

VALIDATE_RUNS = 10      # per policy, in one process; the first call is reported separately
COMPILE_REPEATS = 3     # cold/cached process pairs
KERNEL_REPS_1M = 11
KERNEL_REPS_10M = 5
T0_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
MINUTE_NS = 60_000_000_000

now = time.perf_counter
CREATED_DIRS: list[str] = []   # temp caches made by this run, removed at the end


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
    from policyc.compiler.emit import emit
    from policyc.compiler.frontend import check_policy
    from policyc.compiler.jit import load_kernel
    from policyc.compiler.lower import lower
    from policyc.compiler.passes import optimise

    t = [now()]
    # What any first @njit dispatch in a process pays once: Numba loads its typing and
    # lowering registries lazily (about 80 modules). Timed apart from policyc's own work.
    from numba.core.registry import cpu_target
    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()
    t.append(now())
    result = check_policy(EMA)
    t.append(now())
    program = optimise(lower(result.checked))
    t.append(now())
    source = emit(program, result.checked)
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
    names = ["Numba one-time registry init (any first @njit call)", "check_policy", "lower + optimise", "emit (jinja2)", "load_kernel (import module)",
             "first kernel call (Numba cache load)", "second kernel call"]
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
    print("  NOTE: figures come from a shared 2-core machine; absolute times are noisy and only")
    print("        ratios measured in the same run (kernel / hand-written) are comparable.")
    print("        Benchmarks report; no timing is asserted.")


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


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
        rows.append([r["policy"], ms(r["times"][0]), ms(m), ms(min(warm)),
                     "ERROR: " + r["error"] if r["error"] else f"{verdict(m < 0.100)} (<100 ms)"])
    table(["policy", "first call", "median", "best", "target"], rows)
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
    print(f"  cached compile_policy(): median {ms(c)}, best {ms(best_warm)} -> {verdict(c < 0.300)} target <300 ms "
          f"(call alone); with compiler import {ms(median([total(r, False) for r in warm]))}, "
          f"with numba import too {ms(median([total(r) for r in warm]))}")

    res, _, err = run_worker("breakdown", {**os.environ, "POLICYC_CACHE": cache})
    if res is not None:
        print("  where a cached compile_policy() goes (one more fresh process, same cache, numba already imported,")
        print("  the steps of compile_checked run one by one):")
        table(["step", "time"], [[n, ms(s)] for n, s in res["steps"]], indent="    ")
        own = sum(s for n, s in res["steps"][1:-1])
        print(f"    policyc's own share (all but the Numba init and the second call): {ms(own)}")
    else:
        print(f"  breakdown worker failed: {err}")
    return cache


# ---------------------------------------------------------------------------------------
# 4-5. kernel speed
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


class Bench:
    """The three ways to run ema_cross over one event batch, with parity checking."""

    def __init__(self, policy, events, layout_mod, hand):
        import numpy as np

        self.np, self.L, self.hand_fn = np, layout_mod, hand
        self.policy, self.events = policy, events
        self.n = len(events)
        ck = policy.checked
        risk, acct = ck.risk, ck.account
        p = policy.params
        self.hand_args = (int(p["fast"]), int(p["slow"]), 20, float(p["size"]),
                          bool(risk["long_only"]), risk["max_drawdown"], risk["stop_loss"], risk["max_position"],
                          risk["max_order_qty"], risk["max_orders_per_day"],
                          acct["fees_bps"], acct["slippage_bps"], acct["initial_equity"])
        self.capacity = 1024
        self._alloc()

    def _alloc(self):
        np, cap = self.np, self.capacity
        self.h_out = (np.empty(cap, np.int64), np.empty(cap), np.empty(cap), np.empty(cap, np.int64),
                      np.empty(cap), np.empty(cap))

    def kernel_call(self):
        """Session.feed over all events from a fresh account: one kernel.run call, because the
        order buffer is pre-sized (session set-up is outside the timing); returns seconds."""
        session = self.policy.session(self.L.FILL_NEXT)
        session.orders = self.np.empty((self.capacity, self.L.ORDER_WIDTH))
        a = now()
        session.feed(self.events)
        dt = now() - a
        self.k_session = session
        return dt

    def hand_call(self):
        ev = self.events
        a = now()
        r = self.hand_fn(ev.ts, ev.vals, *self.hand_args, *self.h_out)
        dt = now() - a
        self.h_result = r
        return dt

    def api_call(self):
        a = now()
        self.api_result = self.policy.run(self.events, self.L.FILL_NEXT, record_equity=False)
        return now() - a

    def warm_and_check(self) -> str:
        """Warm all three paths, size the order buffers, and check parity (raises on mismatch)."""
        np, L = self.np, self.L
        ref = self.policy.run(self.events, L.FILL_NEXT, record_equity=True)   # warm-up + reference
        self.capacity = max(1024, 2 * len(ref.orders) + 1024)
        self._alloc()
        self.kernel_call()
        self.hand_call()
        self.api_call()
        k_orders, k_acct = self.k_session.n_orders, self.k_session.acct
        h_e, h_orders, h_equity, _, _, h_halted, h_halt_event = self.h_result
        o = ref.orders
        problems = []
        if h_e != self.n:
            problems.append(f"events processed: hand {h_e}, expected {self.n}")
        if not (len(o) == k_orders == h_orders == len(self.api_result.orders)):
            problems.append(f"order count: run() {len(o)}, kernel {k_orders}, hand {h_orders}, "
                            f"run(record_equity=False) {len(self.api_result.orders)}")
        else:
            ev_idx, qty, fill_ev, fill_px, fee = (self.h_out[0][:h_orders], self.h_out[1][:h_orders],
                                                  self.h_out[3][:h_orders], self.h_out[4][:h_orders],
                                                  self.h_out[5][:h_orders])
            checks = [("event index", o[:, L.O_EVENT], ev_idx), ("quantity", o[:, L.O_QTY], qty),
                      ("fill event", o[:, L.O_FILL_EVENT], fill_ev), ("fill price", o[:, L.O_FILL_PRICE], fill_px),
                      ("fee", o[:, L.O_FEE], fee), ("Session.feed orders", self.k_session.orders[:k_orders, :], o)]
            for name, a, b in checks:
                if not np.allclose(a, b, rtol=0.0, atol=1e-9, equal_nan=True):
                    bad = np.flatnonzero(~np.isclose(a, b, rtol=0.0, atol=1e-9, equal_nan=True)) if a.ndim == 1 else []
                    problems.append(f"{name} differs" + (f" first at order {bad[0]}: {a[bad[0]]} vs {b[bad[0]]}"
                                                         if len(bad) else ""))
        k_equity = ref.equity[-1]
        diff = max(abs(k_equity - h_equity), abs(k_acct[L.A_EQUITY] - h_equity))
        if not diff <= 1e-9:
            problems.append(f"final equity: kernel {k_equity!r}, hand {h_equity!r}, |diff| {diff:g}")
        if bool(k_acct[L.A_HALTED]) != bool(h_halted):
            problems.append(f"halted: kernel {k_acct[L.A_HALTED]}, hand {h_halted}")
        if problems:
            print("  PARITY FAILED -- kernel and hand-written loop disagree; the speed comparison is meaningless:")
            for p in problems:
                print("    " + p)
            raise SystemExit(1)
        halt = f"tripped at event {h_halt_event:,} in both" if h_halted else "not tripped"
        return (f"parity: ok ({len(o)} orders: same count, event indices, quantities, fill events, fill prices "
                f"and fees;\n    final equity {k_equity:.9f} vs {h_equity:.9f}, |diff| {diff:g}; kill switch {halt})")


def coverage(policy, events, layout_mod, label: str) -> str:
    """Which risk steps and branches a dataset exercises (from the kernel's trace)."""
    import numpy as np

    r = policy.run(events, layout_mod.FILL_NEXT, record_equity=False, trace=True)
    tr = r.trace
    masks = tr[:, layout_mod.T_REASONS]
    masks = masks[masks == masks].astype(np.int64)
    names = r.reason_names
    counts = {names[b]: int(np.count_nonzero(masks >> b & 1)) for b in range(len(names))}
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    f, s, vol = tr[:, layout_mod.TRACE_FIXED], tr[:, layout_mod.TRACE_FIXED + 1], tr[:, layout_mod.TRACE_FIXED + 2]
    up = (f[1:] > s[1:]) & (f[:-1] <= s[:-1])
    braked = int(np.count_nonzero(up & ~(vol[1:] < 0.02)))
    return (f"  {label}: {len(r.orders)} orders; decisions by reason: {shown or 'none'}; "
            f"crosses_above blocked by the vol brake: {braked} of {int(np.count_nonzero(up))}")


def bench_kernel(cache: str | None) -> None:
    if cache:
        os.environ["POLICYC_CACHE"] = cache
    import numpy as np

    from policyc.compiler import layout as L
    from policyc.compiler.build import Events, compile_policy
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from handwritten import ema_cross_hand

    policy = compile_policy(EMA)

    # Parity on a stress set first: high prices and volatility, size 1000, so the kill
    # switch, stop loss, max_position and max_order_qty (exits split over events) all act.
    print()
    print("4. Kernel speed: ema_cross over synthetic minute bars (seeded random walk), fill next, "
          "record_equity=False")
    stress_policy = policy.with_params(size=1000)
    ts, vals = synthetic(200_000, seed=7, momentum=0.0, high_sigma=0.03, high_share=0.10)
    stress = Bench(stress_policy, Events.market(ts, vals), L, ema_cross_hand)
    print("  parity on a stress set: 200,000 events, size=1000, no momentum (the strategy bleeds until the")
    print("  kill switch trips), 10% of days with 3% jitter:")
    print("  " + stress.warm_and_check())
    print(coverage(stress_policy, stress.events, L, "stress coverage"))
    del stress

    for n, reps, seed in ((1_000_000, KERNEL_REPS_1M, 1), (10_000_000, KERNEL_REPS_10M, 2)):
        ts, vals = synthetic(n, seed=seed)
        events = Events.market(ts, vals)
        del ts, vals
        b = Bench(policy, events, L, ema_cross_hand)
        if n == 10_000_000:
            print()
            print(f"5. Kernel speed at {n:,} events (arrays held in memory: {events.vals.nbytes / 1e6:.0f} MB vals, "
                  f"{events.ts.nbytes / 1e6:.0f} MB ts)")
        print(f"  benchmark set: {n:,} events, default params, momentum 0.5, 5% of days with 2% jitter:")
        print("  " + b.warm_and_check())
        if n == 1_000_000:
            print(coverage(policy, events, L, "coverage"))
        times = {"hand": [], "kernel": [], "api": []}
        for _ in range(reps):   # interleaved, so drift on the shared machine hits all three alike
            times["hand"].append(b.hand_call())
            times["kernel"].append(b.kernel_call())
            times["api"].append(b.api_call())
        hand_med = median(times["hand"])
        rows = []
        for key, label in (("hand", "hand-written @njit loop (bench/handwritten.py)"),
                           ("kernel", "generated kernel: Session.feed (one kernel.run call)"),
                           ("api", "CompiledPolicy.run(events, FILL_NEXT, record_equity=False)")):
            t = times[key]
            m, best = median(t), min(t)
            rows.append([label, f"{m * 1e3:.1f}", f"{m / n * 1e9:.2f}", f"{n / m / 1e6:.1f}", f"{best / n * 1e9:.2f}",
                         f"{n / best / 1e6:.1f}", f"{m / hand_med:.2f}x"])
        print(f"  {reps} interleaved repetitions each, after a warm-up run:")
        table(["variant", "median ms", "ns/event", "M events/s", "best ns/ev", "best M ev/s", "vs hand"], rows)
        ratio = median([k / h for k, h in zip(times["kernel"], times["hand"])])
        ratio_best = min(times["kernel"]) / min(times["hand"])
        kernel_rate = n / median(times["kernel"]) / 1e6
        line = (f"  ratio kernel/hand-written: {ratio:.2f} (median of paired runs), {ratio_best:.2f} (best/best) -> "
                f"{verdict(ratio <= 1.5)} target <= 1.5")
        if n == 10_000_000:
            best_rate = n / min(times["kernel"]) / 1e6
            line += (f"\n  kernel {kernel_rate:.1f} M events/s median, {best_rate:.1f} best -> {verdict(best_rate >= 50)} "
                     f"milestone >= 50 M events/s (hand-written: {n / hand_med / 1e6:.1f} median)")
        print(line)
        del b, events


def bench_data_and_sweep() -> None:
    from data_and_sweep import bench_loading, bench_sweep

    print()
    print("6. Data loading (synthetic minute bars; the loader validates every row) and sweep rate")
    table(["what", "time", "rows/s or rate"], bench_loading() + bench_sweep())


def bench_live_runtime() -> None:
    from live import bench_live

    start = now()
    print()
    print("7. Live runtime on loopback (replay feed -> runtime -> paper venue), against bare websockets in the same")
    print("   run; targets: tick-to-order p50 <= 1.5x the cross-process echo, throughput >= 0.7x the bare client")
    table(["what", "figure", "", "ratio to baseline"], bench_live())
    print(f"  section 7 took {now() - start:.0f} s")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        kind = sys.argv[2]
        fn = {"validate": worker_validate, "compile": worker_compile, "breakdown": worker_breakdown}[kind]
        print(json.dumps(fn()))
        return 0
    start = now()
    machine_facts()
    bench_validate()
    cache = bench_compile()
    try:
        bench_kernel(cache)
        bench_data_and_sweep()
        bench_live_runtime()
    finally:
        for d in CREATED_DIRS:
            shutil.rmtree(d, ignore_errors=True)
    print()
    print(f"bench finished in {now() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
