"""Several feeds and venues over loopback: a binance-format replay feed and a coinbase
one, each followed by a paper venue of its own, and `run` between them with named
feeds and venues. Orders reach the venue their instrument names; dropping one venue's
connection while its orders are in flight neither loses nor doubles an order on either
venue, as both venues' own records show."""
import asyncio
import json

import numpy as np
import pytest

from loopback import HOST, feeds_and_venues, named_urls, until
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.live import paper, replay
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.runner import ConfigError, LiveRuntime, RunConfig

BN, CB = "binance:BTCUSDT", "coinbase:BTC-USD"
#: Intents on two venues, long or short at most 10: tests/test_replay.py's `WALK` (its name
#: and keys; a limit's value is a kernel argument and an instrument's name is not code), so
#: that this file, tests/test_resume_venues.py and tests/test_limit_orders_live.py run on
#: the kernel of test_replay and test_orders. Its other limits are where they never bind
#: (a million units and orders a day, a drawdown of 100%: all of the equity lost).
POLICY = """
policy: walk
version: 1
instruments: {bn: "binance:BTCUSDT", cb: "coinbase:BTC-USD"}
inputs: [intent]
signals: []
risk:
  max_position: 10
  max_order_qty: 1000000
  max_orders_per_day: 1000000
  max_drawdown: 100%
"""
T0 = 1_700_000_000  # s


@pytest.fixture(scope="module")
def policy():
    return compile_policy(parse_policy_text(POLICY, "two_venues.yaml"))


def quotes(path, mid, seed):
    """A quote file: a second apart, bid and ask around a random walk, with sizes."""
    rng = np.random.default_rng(seed)
    mids = mid + np.cumsum(rng.normal(0, 1, 40))
    rows = [f"{np.datetime64(T0 + k, 's')},{m - 0.5:.2f},{m + 0.5:.2f},{1 + k % 3},{2 + k % 2}"
            for k, m in enumerate(mids)]
    path.write_text("timestamp,bid,ask,bid_size,ask_size\n" + "\n".join(rows) + "\n")
    return str(path)


def test_an_instrument_no_connection_serves_is_refused_before_anything_connects(policy, tmp_path):
    log = tmp_path / "log.jsonl"
    with pytest.raises(ConfigError, match=r"no --venue serves coinbase:BTC-USD: .* for coinbase"):
        LiveRuntime(policy, RunConfig("", "", feeds={"binance": "ws://a", "coinbase": "ws://b"},
                                      venues={"binance": "ws://c"}, log_path=str(log)))
    assert not log.exists()
    # a named feed or venue that serves none of the policy's instruments (a misspelt name) is refused too
    for feeds, venues, what in (({"binance": "ws://a", "coinbase": "ws://b", "kraken": "ws://k"},
                                 {"binance": "ws://c", "coinbase": "ws://d"}, "feed"),
                                ({"binance": "ws://a", "coinbase": "ws://b"},
                                 {"binance": "ws://c", "coinbase": "ws://d", "kraken": "ws://k"}, "venue")):
        with pytest.raises(ConfigError, match=rf"--{what} kraken= serves no instrument of the policy"):
            LiveRuntime(policy, RunConfig("", "", feeds=feeds, venues=venues, log_path=str(log)))
    assert not log.exists()
    # an unnamed venue serves whatever no named one does
    rt = LiveRuntime(policy, RunConfig("ws://f", "ws://v", venues={"binance": "ws://c"}, log_path=str(log)))
    assert rt.core.venue_of == {BN: "binance", CB: ""} and set(rt.links) == {"feed", "venue", "venue binance"}
    rt.log.close()


def test_orders_reach_their_own_venue_and_a_dropped_venue_loses_or_doubles_none(policy, tmp_path):
    log = tmp_path / "log.jsonl"
    recordings = {"binance": replay.load_recording([(BN, quotes(tmp_path / "bn.csv", 30_000, 1))]),
                  "coinbase": replay.load_recording([(CB, quotes(tmp_path / "cb.csv", 30_010, 2))])}
    # the binance venue holds each order 0.2 s before it fills: orders are in flight when its connection drops
    venues = {"binance": paper.PaperVenue(latency_ms=200, feed_format="binance"),
              "coinbase": paper.PaperVenue(feed_format="coinbase")}

    async def scenario():
        stop = asyncio.Event()
        feed_ports, venue_ports, servers = await feeds_and_venues(recordings, venues, stop)
        rt = LiveRuntime(policy, RunConfig("", "", feeds=named_urls(feed_ports), venues=named_urls(venue_ports),
                                           log_path=str(log), max_feed_silence=60.0))
        run = asyncio.create_task(rt.run())
        await until(lambda: not rt.core.reduce_only and all(rt.engine.last_prices()[i] for i in (BN, CB)))

        def intent(instrument, target, k):
            answer = rt.on_intent_frame(json.dumps({"type": "intent", "id": f"i{k}", "instrument": instrument,
                                                    "target": target}))
            assert answer["type"] == "decision" and answer["order_qty"], answer

        for k, target in enumerate([2.0, 5.0, 1.0, 4.0, -3.0, 0.0]):
            intent(BN, target, 2 * k)
            intent(CB, -target, 2 * k + 1)
            if k == 2:  # the binance order just sent, and maybe the one before, have not filled yet
                assert any(rt.core.open[oid].venue == "binance" for oid in rt.core.open)
                dropped = rt.venue_streams["binance"]
                dropped.transport.abort()
                await until(lambda: rt.venue_streams["binance"] not in (None, dropped))
            await until(lambda: not rt.open)
        status = {"positions": rt.engine.positions(), "links": {key: link.state for key, link in rt.links.items()},
                  "reconnects": rt.counters.reconnects}
        rt.stop.set()
        await run
        stop.set()
        await asyncio.gather(*servers)
        return status

    status = asyncio.run(scenario())
    orders = [r for r in read_log(log) if r["kind"] == "order"]
    assert len(orders) == 12
    for name, venue in venues.items():
        mine = [r for r in orders if r["venue"] == name]
        assert len(mine) == 6 and all(r["instrument"].startswith(f"{name}:") for r in mine)
        received = [m["client_order_id"] for m in venue.received]  # each order the first time it arrived
        assert received == [r["client_order_id"] for r in mine]  # none lost, none doubled, none from the other
        filled = [f["client_order_id"] for f in venue.fills]
        assert sorted(filled) == sorted(received)  # each executed once
        assert venue.positions == {f"{name}:" + ("BTCUSDT" if name == "binance" else "BTC-USD"): pytest.approx(
            status["positions"][BN if name == "binance" else CB])}
    assert status["positions"] == {BN: 0.0, CB: 0.0}
    assert set(status["links"]) == {"feed binance", "feed coinbase", "venue binance", "venue coinbase"}
    drops = [(r.get("venue"), r["up"]) for r in read_log(log) if r["kind"] == "link" and r["link"] == "venue"]
    assert drops.count(("binance", False)) == 1 and drops.count(("binance", True)) == 2 and status["reconnects"] >= 1
    assert drops.count(("coinbase", True)) == 1
    session = next(r for r in read_log(log) if r["kind"] == "session")
    assert session["venue_of"] == {BN: "binance", CB: "coinbase"}


@pytest.mark.parametrize("fmt", ["native", "binance", "coinbase"])
def test_a_quote_file_is_replayed_as_quotes_that_read_back_the_same_in_each_format(fmt, tmp_path):
    from policyc.runtime.live.protocol import encode, parse_feed

    name = {"native": "ES", "binance": BN, "coinbase": CB}[fmt]
    rec = replay.load_recording([(name, quotes(tmp_path / "q.csv", 100, 3))])
    for k in (0, 1):
        (market,) = parse_feed(encode(replay.message(rec, k, fmt, 0)), {name}, fmt)
        bid, ask = float(rec.columns["bid"][k]), float(rec.columns["ask"][k])
        assert (market.instrument, market.ts) == (name, int(rec.ts[k]))
        assert {key: market.fields[key] for key in ("bid", "ask", "bid_size", "ask_size")} == {
            "bid": bid, "ask": ask, "bid_size": float(1 + k % 3), "ask_size": float(2 + k % 2)}
        assert market.fields["price"] == pytest.approx((bid + ask) / 2)


def test_one_feed_falling_silent_makes_intents_reduce_only_while_the_other_flows(policy, tmp_path):
    from policyc.runtime.live.protocol import encode

    rt = LiveRuntime(policy, RunConfig("", "", feeds={"binance": "ws://a", "coinbase": "ws://b"},
                                       venues={"binance": "ws://c", "coinbase": "ws://d"},
                                       log_path=str(tmp_path / "log.jsonl"), max_feed_silence=5.0))
    clock = [10**12]
    rt._monotonic_ns = rt.core.monotonic_ns = lambda: clock[0]
    rt._feed_connected(object(), "binance")
    assert rt.core.reduce_only  # the coinbase feed is not connected yet
    rt._feed_connected(object(), "coinbase")

    def quotes_at(second):
        ms = (T0 + second) * 1000
        rt.on_feed_messages([encode({"e": "bookTicker", "u": second, "s": "BTCUSDT", "b": "100", "B": "1", "a": "101",
                                     "A": "1", "T": ms, "E": ms})], "binance")

    def coinbase_at(second, bid="100"):
        stamp = f"{np.datetime64(T0 + second, 's')}Z"
        rt.on_feed_messages([encode({"type": "ticker", "product_id": "BTC-USD", "price": "100.5", "best_bid": bid,
                                     "best_ask": "101", "time": stamp})], "coinbase")

    def intent(instrument, target):
        return rt.on_intent_frame(json.dumps({"type": "intent", "id": "x", "instrument": instrument,
                                              "target": target}))

    quotes_at(0)
    coinbase_at(0)
    assert not rt.core.reduce_only and intent(CB, 1.0)["order_qty"] == 1.0
    clock[0] += 6 * 10**9  # six seconds: binance goes on, coinbase says nothing
    quotes_at(6)
    rt._check_silent_feeds()
    assert rt.feeds_silent == {"coinbase"} and rt.core.reduce_only
    answer = intent(CB, 3.0)  # would add exposure on the silent venue's stale prices: held where it is
    assert answer["order_qty"] == 0.0 and answer["reasons"][0] == "stale_after:blocked"
    coinbase_at(7, bid="102")  # a crossed quote, refused: still silent, however often it comes
    quotes_at(7)
    assert rt.feeds_silent == {"coinbase"} and rt.core.reduce_only and intent(CB, 3.0)["order_qty"] == 0.0
    coinbase_at(7)  # an event the core takes: live again
    assert not rt.feeds_silent and not rt.core.reduce_only and intent(CB, 3.0)["order_qty"] == 2.0
    rt.log.close()


def test_run_refuses_an_instrument_no_venue_serves_before_anything_connects(tmp_path):
    import subprocess

    from loopback import policyc_command

    policy_file, log = tmp_path / "two.yaml", tmp_path / "log.jsonl"
    policy_file.write_text(POLICY)
    run = subprocess.run(policyc_command("run", policy_file, "--feed", f"binance=ws://{HOST}:1",
                                         "--feed", f"coinbase=ws://{HOST}:2", "--venue", f"binance=ws://{HOST}:3",
                                         "--log", log), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and not log.exists()
    assert run.stderr.splitlines()[-1] == (
        "policyc: error: no --venue serves coinbase:BTC-USD: give --venue URL, or --venue NAME=URL for coinbase "
        "(an instrument `NAME:SYMBOL` is served by the connection named NAME)")
