"""A paper venue on a feed it cannot read fills nothing: it counts each frame it skips
and says so on stderr, at the first and each time the count passes a power of ten, with
the reason."""
from __future__ import annotations

import asyncio

from loopback import HOST, free_port, until
from policyc.runtime.live import paper
from policyc.runtime.live.protocol import encode

NS = 1_000_000_000


def native_tick(k: int) -> bytes:
    return encode({"type": "tick", "instrument": "BTCUSDT", "ts": 1_700_000_000 * NS + k * NS, "price": 100.0 + k})


def test_frames_of_another_format_are_counted_with_the_first_reason():
    venue = paper.PaperVenue(feed_format="binance")
    assert venue.on_feed([native_tick(0), native_tick(1)]) == []
    assert venue.bad_feed == 2 and venue.last_price == {}
    assert venue.bad_feed_reason and "binance" in venue.bad_feed_reason
    right = paper.PaperVenue()   # native: the same frames are prices
    right.on_feed([native_tick(0), native_tick(1)])
    assert right.bad_feed == 0 and right.last_price == {"BTCUSDT": 101.0}


def test_the_venue_warns_at_the_first_unreadable_frame_and_at_each_tenfold_count():
    from websockets.asyncio.server import serve

    said = []

    async def scenario():
        sent = asyncio.Event()

        async def feed(ws):
            for k in range(120):
                await ws.send(native_tick(k).decode())
            sent.set()
            await ws.wait_closed()

        port, venue_port, stop, ready = free_port(), free_port(), asyncio.Event(), asyncio.Event()
        venue = paper.PaperVenue(feed_format="coinbase")
        async with serve(feed, HOST, port):
            task = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"ws://{HOST}:{port}", ready=ready,
                                                   stop=stop, warn=said.append))
            await sent.wait()
            await until(lambda: venue.bad_feed == 120)
            stop.set()
            await task

    asyncio.run(scenario())
    # a read may bring many frames: one warning at the first, then one each time the count
    # passes a power of ten, whatever the reads' sizes
    counts = [int(m.split(" feed message")[0].removeprefix("paper venue: ").replace(",", "")) for m in said]
    digits = [len(str(c)) for c in counts]
    assert counts[-1] == 120 and digits == sorted(set(digits)) and counts == sorted(counts)
    assert all("not readable as --feed-format coinbase (the first: " in m for m in said)
