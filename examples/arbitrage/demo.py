"""The cross-venue arbitrage example end to end: backtest policies/arbitrage.yaml on the
bundled quotes, then trade the same quotes live on one machine and compare the two.

    .venv/bin/python examples/arbitrage/demo.py [--minutes 10] [--speed 5] [--no-live] [--policy FILE]

1. Backtest over the two hours of examples/arbitrage/ (fill `next`, as `policyc backtest`
   runs by default): orders, IOC legs cancelled, equity, fees, reason codes.
2. Live, over the first `--minutes` of the data: two feeds, binance's quotes in Binance's
   message format (`bookTicker`) and coinbase's in Coinbase's (`ticker`), as
   `policyc replay-feed --format binance|coinbase` sends them; two `policyc paper-venue`s,
   each pricing orders from its own venue's feed; and one `policyc run` connected to both
   feeds and both venues (`--feed binance=URL --feed coinbase=URL --venue binance=URL
   --venue coinbase=URL`), all over loopback.
3. The live orders (from the run's decision log) against a backtest of the same minutes
   with `--fill same`, which fills as a paper venue does (at the latest quote it has
   seen): orders matched by decision time, instrument and quantity, and where they differ.

The two feeds are served by this script, from one clock: every quote leaves at its time
in the data divided by `--speed`, in the order the backtest merges them. Two
`policyc replay-feed` processes would each start when their own clients connect and
keep time on their own, so at 5 times the data's clock a tenth of a second between
their starts puts one venue half a second of data ahead of the other, more than the
lag the arbitrage lives on. Even from one clock, quotes a few microseconds apart on two
sockets may reach the runtime in either order, and a venue may see the next quote
before an order decided on this one arrives; a paper venue also fills an IOC order no
further than the size shown at the quote, where the backtest fills it whole. Each of
these changes a fill, and the policy trades on from another position: the comparison
lists every order that does not match, and every matched order filled otherwise,
rather than hiding them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
POLICY = ROOT / "policies" / "arbitrage.yaml"
DATA = {"bn": HERE / "binance-BTCUSDT.csv", "cb": HERE / "coinbase-BTC-USD.csv"}
VENUES = {"bn": "binance", "cb": "coinbase"}   # the policy's name of each leg -> its feed and venue
HOST = "127.0.0.1"
PORT_WAIT_S = 60.0   # how long the feeds wait for the venues and the runtime to connect


def backtest(path: Path, mode_name: str, data: dict):
    """(compiled policy, backtest result) of the policy at `path` over `data` ({name:
    path}) in fill mode `mode_name` (`next` or `same`)."""
    from policyc.compiler import layout as L
    from policyc.compiler.build import compile_policy
    from policyc.runtime.backtest import load_events, run_backtest

    policy = compile_policy(path)
    events, _ = load_events(policy, [(name, str(path)) for name, path in data.items()])
    return policy, run_backtest(policy, events, L.FILL_MODES[mode_name], progress=False)


def show_backtest(policy, result) -> None:
    from policyc.compiler import layout as L
    from policyc.runtime.backtest import summary

    s = summary(result)
    o = result.orders
    filled = ~np.isnan(o[:, L.O_FILL_PRICE])
    limit = ~np.isnan(o[:, L.O_LIMIT])
    print(f"  events {s['events']:,}; orders {len(o)}: {int(limit.sum())} IOC limit legs "
          f"({int((limit & ~filled).sum())} cancelled unfilled), {int((~limit).sum())} at market")
    print(f"  final equity {s['final_equity']:,.2f} from {s['initial_equity']:,.2f} "
          f"({s['total_return']:.2%}), fees {s['fees']:,.2f}, max drawdown {s['max_drawdown']:.2%}")
    reasons = {k: v for k, v in s.get("reasons", {}).items() if v}
    if reasons:
        print("  reason codes: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _slice(minutes: float, work: Path) -> dict:
    """The first `minutes` of each venue's file, as files in `work` ({name: path})."""
    out = {}
    for name, path in DATA.items():
        lines = path.read_text().splitlines(keepends=True)
        t0 = np.datetime64(lines[1].split(",", 1)[0].rstrip("Z"), "ms")
        stop = t0 + np.timedelta64(int(minutes * 60_000), "ms")
        kept = [ln for ln in lines[1:] if np.datetime64(ln.split(",", 1)[0].rstrip("Z"), "ms") < stop]
        out[name] = work / path.name
        out[name].write_text(lines[0] + "".join(kept))
    return out


async def _serve_feeds(recordings: dict, ports: dict, speed: float, clients: int) -> int:
    """Both venues' feeds, one WebSocket server each (`ports`: {venue: port}), in that
    venue's message format; streaming starts once each has `clients` clients, and one
    clock paces the two: every quote leaves at its time in the data divided by `speed`,
    in the merged order a backtest reads them. Returns the number of quotes sent."""
    from websockets.asyncio.server import broadcast, serve

    from policyc.runtime.live.protocol import encode
    from policyc.runtime.live.replay import message

    connected = {venue: set() for venue in recordings}
    ready = asyncio.Event()

    def handler_of(venue):
        async def handler(websocket):
            connected[venue].add(websocket)
            if all(len(c) >= clients for c in connected.values()):
                ready.set()
            try:
                await websocket.wait_closed()
            finally:
                connected[venue].discard(websocket)
        return handler

    venues = list(recordings)
    ts = np.concatenate([recordings[v].ts for v in venues])
    which = np.concatenate([np.full(len(recordings[v]), n) for n, v in enumerate(venues)])
    row = np.concatenate([np.arange(len(recordings[v])) for v in venues])
    order = np.argsort(ts, kind="stable")   # ties: binance's quote first, as the backtest merges them
    async with AsyncExitStack() as stack:
        for venue in venues:
            await stack.enter_async_context(serve(handler_of(venue), HOST, ports[venue], compression=None))
        await asyncio.wait_for(ready.wait(), PORT_WAIT_S)
        start, t0 = time.perf_counter(), ts[order[0]]
        for e in order:
            venue = venues[which[e]]
            delay = start + (ts[e] - t0) / 1e9 / speed - time.perf_counter()
            await asyncio.sleep(max(delay, 0.0))
            broadcast(connected[venue], encode(message(recordings[venue], int(row[e]), venue, time.time_ns())).decode())
        await asyncio.sleep(1.0)   # the last orders' fills
        for ws in [w for c in connected.values() for w in c]:
            await ws.close()
    return len(order)


def run_live(path: Path, policy, data: dict, speed: float, work: Path) -> Path:
    """The feeds (served here), two `policyc paper-venue`s and `policyc run` of the policy
    at `path` (compiled: `policy`) on loopback over `data`; returns the decision log."""
    from policyc.runtime.live.replay import load_recording

    policyc = [str(Path(sys.executable).parent / "policyc")]
    venues = list(VENUES.values())
    feeds = {venue: _free_port() for venue in venues}
    books = {venue: _free_port() for venue in venues}
    # each feed names the symbol as its exchange does (BTCUSDT, BTC-USD); run and the
    # paper venue read it as the instrument of the feed's name (binance:BTCUSDT)
    recordings = {venue: load_recording([(policy.symbol(name).partition(":")[2], str(data[name]))])
                  for name, venue in VENUES.items()}
    fees = str(policy.checked.account["fees_bps"])
    log = work / "decisions.jsonl"
    errors = open(work / "stderr.txt", "w")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": errors}
    procs = []
    try:
        for venue in venues:
            procs.append(subprocess.Popen(policyc + [
                "paper-venue", "--listen", f"{HOST}:{books[venue]}", "--feed", f"ws://{HOST}:{feeds[venue]}",
                "--feed-format", venue, "--fees-bps", fees], **quiet))
        run = [*policyc, "run", str(path), "--log", str(log)]
        for venue in venues:
            run += ["--feed", f"{venue}=ws://{HOST}:{feeds[venue]}", "--venue", f"{venue}=ws://{HOST}:{books[venue]}"]
        procs.append(subprocess.Popen(run, **quiet))
        try:
            sent = asyncio.run(_serve_feeds(recordings, feeds, speed, clients=2))
        except TimeoutError:
            raise SystemExit("the venues and the runtime did not all connect:\n"
                             + (work / "stderr.txt").read_text()[-3000:]) from None
        if procs[-1].poll() is not None:
            raise SystemExit("policyc run stopped early:\n" + (work / "stderr.txt").read_text()[-3000:])
        print(f"  sent {sent:,} quotes")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        errors.close()
    return log


def live_orders(log: Path) -> list[dict]:
    """The run's orders from its decision log: decision time (ns), instrument, quantity,
    and the price and fee of their fills (None: not filled)."""
    orders, by_id = [], {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "order":
            o = {"ts": rec["ts"], "instrument": rec["instrument"], "qty": rec["qty"], "fill_price": None,
                 "fee": 0.0}
            orders.append(o)
            by_id[rec["client_order_id"]] = o
        elif rec.get("kind") == "fill" and rec.get("client_order_id") in by_id:
            o = by_id[rec["client_order_id"]]
            o["fill_price"], o["fee"] = rec["price"], o["fee"] + rec["fee"]
    return orders


def compare(policy, result, orders: list[dict]) -> None:
    """Backtest orders against live ones, matched by decision time, instrument and quantity."""
    from policyc.compiler import layout as L

    o = result.orders
    symbols = list(policy.instruments)
    back = [{"ts": int(result.events.ts[int(r[L.O_EVENT])]), "instrument": symbols[int(r[L.O_INST])],
             "qty": float(r[L.O_QTY]), "fill_price": None if np.isnan(r[L.O_FILL_PRICE]) else float(r[L.O_FILL_PRICE])}
            for r in o]
    key = lambda x: (x["ts"], x["instrument"], round(x["qty"], 9))
    live_by = {}
    for x in orders:
        live_by.setdefault(key(x), []).append(x)
    matched, filled_otherwise, only_back = 0, [], []
    for x in back:
        twins = live_by.get(key(x))
        if twins:
            y = twins.pop(0)
            matched += 1
            if (x["fill_price"] is None) != (y["fill_price"] is None) or (
                    x["fill_price"] is not None and abs(x["fill_price"] - y["fill_price"]) > 1e-6):
                filled_otherwise.append({**x, "live_price": y["fill_price"]})
        else:
            only_back.append(x)
    only_live = [y for ys in live_by.values() for y in ys]
    print(f"  backtest --fill same: {len(back)} orders; live: {len(orders)} orders")
    print(f"  matched (same decision time, instrument and quantity): {matched}, of which {len(filled_otherwise)} "
          "filled otherwise")

    def show(x):
        return f"{np.datetime_as_string(np.datetime64(x['ts'], 'ns'), unit='ms')} {x['instrument']} {x['qty']:+g}"

    if filled_otherwise:
        print("    filled otherwise (backtest's fill price, live's; None: not filled):")
    for x in filled_otherwise[:5]:
        print(f"      {show(x)}: {x['fill_price']}, {x['live_price']}")
    if len(filled_otherwise) > 5:
        print(f"      ... {len(filled_otherwise) - 5} more")
    for what, rows in (("backtest only", only_back), ("live only", only_live)):
        for x in rows[:5]:
            print(f"    {what}: {show(x)}")
        if len(rows) > 5:
            print(f"    {what}: ... {len(rows) - 5} more")
    if filled_otherwise or only_back or only_live:
        print("  where they differ, a paper venue filled at another quote than the backtest (one that arrived before "
              "the order),\n  filled part of an order (a paper venue fills no more than the quote's size; the "
              "backtest fills whole),\n  or cancelled a leg the backtest filled; the policy then trades on from "
              "another position")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of the data to trade live (default 10)")
    parser.add_argument("--speed", type=float, default=5.0,
                        help="the live feeds' pace, times the data's own clock (default 5)")
    parser.add_argument("--no-live", action="store_true", help="the backtest only")
    parser.add_argument("--policy", type=Path, default=POLICY,
                        help="another policy of the instruments bn and cb (default policies/arbitrage.yaml)")
    args = parser.parse_args(argv)
    print(f"1. backtest: {args.policy} on {', '.join(str(p.relative_to(ROOT)) for p in DATA.values())} (fill next)")
    policy, result = backtest(args.policy, "next", DATA)
    show_backtest(policy, result)
    if args.no_live:
        return 0
    with tempfile.TemporaryDirectory(prefix="policyc-arb-") as tmp:
        work = Path(tmp)
        data = _slice(args.minutes, work)
        print(f"2. live: the first {args.minutes:g} minutes, two feeds at {args.speed:g}x the data's clock, two "
              "paper venues, one policyc run")
        log = run_live(args.policy, policy, data, args.speed, work)
        orders = live_orders(log)
        print(f"3. live against the backtest of the same {args.minutes:g} minutes")
        _, same = backtest(args.policy, "same", data)
        compare(policy, same, orders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
