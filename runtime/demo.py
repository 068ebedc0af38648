"""`make demo`: compile every example policy, backtest the EMA crossover on the bundled
ORCL daily bars (summary, HTML report, orders), trade it live against a replayed feed
and a paper venue on loopback, and set the two results side by side. Each step starts
with a line `== STEP: what`, so a person can tell where the time goes; the Makefile's
install step is the first.

The backtest fills as a live run against the paper venue does (`--fill same`: at the
price of the event an order was decided on) and the live feed runs in lockstep with the
runtime and the venue, so the two runs send the same orders at the same prices; the
comparison says where they differ, if anywhere, and why."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy, compile_policy
from policyc.compiler.layout import FILL_SAME
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


def backtest(policy: CompiledPolicy, mode: int = FILL_SAME, latency_ns: int = 0) -> BacktestResult:
    """The demo's backtest: `policy` on the ORCL bars, each order filled at the price of
    the event it was decided on (`--fill same`; `mode` and `latency_ns` choose another
    fill model, as `run_backtest`), the equity recorded for the report."""
    events, tables = load_events(policy, [(None, str(DATA))], bars=mode in (L.FILL_NEXT_OPEN, L.FILL_LATENCY))
    result = run_backtest(policy, events, mode, record_equity=True, latency_ns=latency_ns)
    result.data_files = [t.path for t in tables]
    return result


def compare(result: BacktestResult, records: list[dict], status: dict) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The backtest `result` and a live run (its decision log `records` and final
    `status`) side by side: (rows of (figure, backtest, live), lines that say where and
    why they differ). Orders are compared one by one: decision time, instrument,
    quantity, fill price and fee."""
    ts, names = result.events.ts, result.policy.instruments
    # an IOC order cancelled unfilled (fill price NaN, fee 0) is unfilled, as live
    expected = [(int(ts[int(o[L.O_EVENT])]), names[int(o[L.O_INST])], float(o[L.O_QTY]), float(o[L.O_FILL_PRICE]),
                 float(o[L.O_FEE]) if o[L.O_FILL_PRICE] == o[L.O_FILL_PRICE] else math.nan) for o in result.orders]
    fills = {r["client_order_id"]: r for r in records if r["kind"] == "fill"}
    got = [(r["ts"], r["instrument"], float(r["qty"]),
            float(fills[r["client_order_id"]]["price"]) if r["client_order_id"] in fills else math.nan,
            float(fills[r["client_order_id"]]["fee"]) if r["client_order_id"] in fills else math.nan)
           for r in records if r["kind"] == "order"]
    s = summary(result)
    position_bt = {n: float(p) for n, p in zip(names, result.pstate[:, L.P_POS])}
    live_fees = sum(float(f["fee"]) for f in fills.values())
    rows = [("events", f"{s['events']:,}", f"{status['events']:,}"),
            ("orders", f"{s['orders']:,}", f"{status['orders']:,}"),
            ("fills", f"{s['fills']:,}", f"{status['fills']:,}"),
            ("fees", f"{s['fees']:,.2f}", f"{live_fees:,.2f}"),
            *((f"{n} position at the end", f"{position_bt[n]:+,g}", f"{status['positions'].get(n, 0.0):+,g}")
              for n in names),
            ("final equity", f"{s['final_equity']:,.2f}", f"{status['equity']:,.2f}")]
    why = []
    # an order unfilled in both (decided on the last event, under a model that fills later) is the same
    first = next((k for k, (a, b) in enumerate(zip(expected, got)) if _unfilled_as_none(a) != _unfilled_as_none(b)),
                 None)
    if first is None and len(expected) == len(got):
        why.append(f"orders: all {len(got):,} the same, one by one (decision time, instrument, quantity, "
                   "fill price and fee).")
    else:
        k = first if first is not None else min(len(expected), len(got))

        def show(orders: list) -> str:
            if k >= len(orders):
                return "no such order"
            at, name, qty, price, fee = orders[k]
            when = str(np.datetime64(at, "ns").astype("datetime64[s]")).replace("T", " ")
            if math.isnan(price):
                return f"{when} {name} {qty:+g} unfilled"
            return f"{when} {name} {qty:+g} filled at {price:.6g}, fee {fee:.4f}"

        why.append(f"orders: the first difference is order {k + 1}: backtest {show(expected)}; live {show(got)}.")
        if status.get("stalls"):
            why.append(f"the lockstep feed gave up waiting on {status['stalls']:,} event(s) (the runtime or the venue "
                       "did not answer within 5 s), so the venue may have filled orders at a later price.")
    equity_gap = status["equity"] - s["final_equity"]
    if abs(equity_gap) > 1e-6 * max(1.0, abs(s["final_equity"])):
        why.append(f"final equity differs by {equity_gap:+,.2f}" + (
            ": it follows from the orders' differences." if len(why) > 1 or first is not None else
            " with the same orders: the positions were marked at different last prices."))
    else:
        why.append("final equity: the same (open positions marked at the last price in both).")
    slippage = float(result.policy.checked.account.get("slippage_bps", 0.0) or 0.0)
    if slippage:
        why.append(f"the paper venue fills at the feed's price: the policy's slippage_bps of {slippage:g}, which the "
                   "backtest charges, is not charged live.")
    return rows, why


def _unfilled_as_none(order: tuple) -> tuple:
    """An order (decision time, instrument, quantity, fill price, fee) with the NaN fill
    price and fee of an unfilled order as None, so that two unfilled orders compare equal."""
    return tuple(None if isinstance(x, float) and math.isnan(x) else x for x in order)


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

    step("backtest", f"policies/{EXAMPLE.name} on data/{DATA.name}, --fill same (each order at the price of "
                     "the event that decided it, as the paper venue fills)")
    result = backtest(policy)
    print(format_summary(summary(result)))

    step("report", "the HTML report and the orders")
    OUT.mkdir(exist_ok=True)
    write_report(result, OUT / "ema_cross.html")
    write_orders(result, OUT / "ema_cross-orders.csv")
    print(f"report: {OUT / 'ema_cross.html'}\norders: {OUT / 'ema_cross-orders.csv'}")

    from .live.audit import read_log
    from .live.demo import run_live_demo
    from .live.view import percentiles_text

    log = OUT / "ema_cross-decisions.jsonl"
    step("live", "replay feed -> policyc run -> paper venue on 127.0.0.1 (ORCL), the feed in lockstep: each event "
                 "goes to the venue, then to the runtime, and the next once every order it caused is filled")
    live = run_live_demo(policy, DATA, log)
    print(f"live: {live['events']:,} events in {live['elapsed_s']:.1f}s, rejected messages {live['bad_messages']}, "
          f"tick-to-order p50/p99 {percentiles_text(live['latency'])} in the runtime, "
          f"{percentiles_text(live['venue_latency'])} at the venue")
    print(f"decision log: {log}")

    step("compare", "the backtest and the live run, side by side")
    rows, why = compare(result, read_log(log), live)
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'backtest':>14}  {'live':>14}")
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:>14}  {b:>14}{'' if a == b else '  <- differs'}")
    for line in why:
        print(f"- {line}")
    print("- a live run paced by the clock instead (`replay-feed --rate`) can differ: when the machine stalls, the "
          "venue may read the next event before an order decided on this one arrives, and fill it at that later "
          "price. `backtest --fill same` and a lockstep run do not race.")
    return status


if __name__ == "__main__":
    sys.exit(main())
