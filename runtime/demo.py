"""`make demo`: compile every example policy, backtest the EMA crossover on the bundled
ORCL daily bars (summary, HTML report, orders), and trade it live against a replayed
feed and a paper venue on loopback. Each step starts with a line `== STEP: what`, so a
person can tell where the time goes; the Makefile's install step is the first."""
from __future__ import annotations

import sys
from pathlib import Path

from policyc.compiler.build import CompiledPolicy, compile_policy
from policyc.compiler.layout import FILL_NEXT
from policyc.dsl.diagnostics import PolicyError, render_text

from .backtest import BacktestResult, format_summary, load_events, run_backtest, summary, write_orders
from .report import write_report

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "orcl-1995-2014.csv"
EXAMPLE = ROOT / "policies" / "ema_cross.yaml"
OUT = ROOT / "reports"


def step(name: str, what: str) -> None:
    print(f"\n== {name}: {what}")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def backtest(policy: CompiledPolicy) -> BacktestResult:
    """The demo's backtest: `policy` on the ORCL bars, orders filled at the next event."""
    events, tables = load_events(policy, [(None, str(DATA))])
    result = run_backtest(policy, events, FILL_NEXT)
    result.data_files = [t.path for t in tables]
    return result


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keeps stdout in order with the messages on stderr
    step("compile", "every example policy in policies/")
    compiled, status = {}, 0
    for path in sorted((ROOT / "policies").glob("*.yaml")):
        try:
            compiled[path] = compile_policy(path, on_compile=say)
        except PolicyError as exc:
            for d in exc.diagnostics:
                say(render_text(d, path.read_text().split("\n")))
            status = 1
            continue
        print(f"compiled {path.name:<20} policy_hash {compiled[path].policy_hash}")
    if EXAMPLE not in compiled:
        return 1
    policy = compiled[EXAMPLE]

    step("backtest", f"policies/{EXAMPLE.name} on data/{DATA.name}")
    result = backtest(policy)
    print(format_summary(summary(result)))

    step("report", "the HTML report and the orders")
    OUT.mkdir(exist_ok=True)
    write_report(result, OUT / "ema_cross.html")
    write_orders(result, OUT / "ema_cross-orders.csv")
    print(f"report: {OUT / 'ema_cross.html'}\norders: {OUT / 'ema_cross-orders.csv'}")

    from .live.demo import run_live_demo
    from .live.view import percentiles_text

    step("live", "replay feed -> policyc run -> paper venue on 127.0.0.1 (ORCL, 2,000 events/s)")
    live = run_live_demo(policy, DATA, OUT / "ema_cross-decisions.jsonl", rate=2000.0)
    print(f"live summary: {live['events']:,} events, {live['orders']} orders, {live['fills']} fills, "
          f"equity {live['equity']:,.2f}, rejected messages {live['bad_messages']}, "
          f"tick-to-order p50/p99 {percentiles_text(live['latency'])} in the runtime, "
          f"{percentiles_text(live['venue_latency'])} at the venue, in {live['elapsed_s']:.1f}s")
    print(f"decision log: {OUT / 'ema_cross-decisions.jsonl'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
