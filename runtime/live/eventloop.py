"""How the live commands run: on uvloop where it is installed, and stopped cleanly by
SIGINT or SIGTERM (servers close, logs flush, the process exits 0)."""
from __future__ import annotations

import asyncio
import gc
import signal
from typing import Awaitable, Callable


def run(main: Awaitable):
    """uvloop roughly halves the event loop's share of each message's cost. Everything
    alive at the start (modules, the compiled policy, Numba's internals) lives for the
    whole run: `gc.freeze` takes it out of the collector's scans, which otherwise walk
    it again and again while messages churn through short-lived objects."""
    gc.freeze()
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
