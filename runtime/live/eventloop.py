"""How the live commands run: on uvloop where it is installed, and stopped cleanly by
SIGINT or SIGTERM (servers close, logs flush, the process exits 0)."""
from __future__ import annotations

import asyncio
import gc
import signal
from typing import Awaitable, Callable


def freeze_start_up_heap() -> None:
    """Everything alive at the start of a live command (modules, the compiled policy,
    Numba's internals) lives for the whole run: `gc.freeze` takes it out of the
    collector's scans, which otherwise walk it again and again while messages churn
    through short-lived objects (a full pass over it took 7 to 19 ms over a cached
    kernel, 52 to 119 ms after a compile in the process). One collection comes first,
    so that what is frozen is alive: a compile leaves about 100,000 objects of garbage
    in cycles, which a freeze alone would keep for the whole run. That collection takes
    about 110 to 170 ms after a compile, a few ms over a cached kernel, once, before
    anything connects."""
    gc.collect()
    gc.freeze()


def run(main: Awaitable):
    """uvloop roughly halves the event loop's share of each message's cost; the start-up
    heap is out of the collector's scans (`freeze_start_up_heap`)."""
    freeze_start_up_heap()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def until_signal(serve: Callable[[asyncio.Event], Awaitable]):
    """Run `serve(stop)` with `stop` set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # Windows: Ctrl-C still ends the process
            pass
    return await serve(stop)
