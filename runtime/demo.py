"""`make demo`: backtest the EMA crossover on the bundled ORCL daily bars (summary and
HTML report), trade it live against a replayed feed and a paper venue on loopback, and
check that every example policy compiles."""
from __future__ import annotations

import sys
from pathlib import Path

from policyc.compiler.build import compile_policy
from policyc.compiler.layout import FILL_NEXT
from policyc.dsl.diagnostics import PolicyError, render_text

from .backtest import format_summary, load_events, run_backtest, summary, write_orders
from .report import write_report

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "orcl-1995-2014.csv"
OUT = ROOT / "reports"


def main() -> int:
    policy = compile_policy(ROOT / "policies" / "ema_cross.yaml")
    events, tables = load_events(policy, [(None, str(DATA))])
    result = run_backtest(policy, events, FILL_NEXT)
    result.data_files = [t.path for t in tables]
    OUT.mkdir(exist_ok=True)
    write_report(result, OUT / "ema_cross.html")
    write_orders(result, OUT / "ema_cross-orders.csv")
    print(f"Backtest of policies/ema_cross.yaml on {DATA.name}\n")
    print(format_summary(summary(result)))
    print(f"\nreport: {OUT / 'ema_cross.html'}\norders: {OUT / 'ema_cross-orders.csv'}\n")
    from .live.demo import run_live_demo
    from .live.view import percentiles_text

    print("Live: replay feed -> policyc run -> paper venue on 127.0.0.1 (ORCL, 2,000 events/s)")
    live = run_live_demo(policy, DATA, OUT / "ema_cross-decisions.jsonl", rate=2000.0)
    print(f"live summary: {live['events']:,} events, {live['orders']} orders, {live['fills']} fills, "
          f"equity {live['equity']:,.2f}, rejected messages {live['bad_messages']}, "
          f"tick-to-order p50/p99 {percentiles_text(live['latency'])} in the runtime, "
          f"{percentiles_text(live['venue_latency'])} at the venue, in {live['elapsed_s']:.1f}s")
    print(f"decision log: {OUT / 'ema_cross-decisions.jsonl'}\n")
    status = 0
    for path in sorted((ROOT / "policies").glob("*.yaml")):
        try:
            compiled = compile_policy(path)
        except PolicyError as exc:
            for d in exc.diagnostics:
                print(render_text(d, path.read_text().split("\n")), file=sys.stderr)
            status = 1
            continue
        print(f"compiled {path.name:<20} policy_hash {compiled.policy_hash}")
    return status


if __name__ == "__main__":
    sys.exit(main())
