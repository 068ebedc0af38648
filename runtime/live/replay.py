"""`policyc replay-feed`: serve recorded market data over WebSocket, as a live feed would.

Every client gets the whole stream from the start, paced by the data's own clock
(`speed`: 1 is real time, 60 a minute per second) or at a fixed `rate` of events per
second, or as fast as the socket takes it. Each message is stamped with `sent_ns` so
the far end can measure latency end to end.
"""
from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policyc.compiler.layout import QUOTE_SIDES
from policyc.runtime.data import DataError, load_table

from .protocol import encode

BAR = ("open", "high", "low", "close")
SIZES = ("bid_size", "ask_size")


@dataclass
class Recording:
    """Events of one or more instruments merged by time: (instrument, ts, fields)."""

    instruments: list[str]
    ts: np.ndarray
    inst: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ts)


def instrument_name(symbol: str | None, path: str) -> str:
    """The instrument a --data file is served as: its SYMBOL, or the file name up to its
    first `-`, upper-cased (`orcl-1995-2014.csv` is ORCL)."""
    return symbol or Path(path).stem.split("-")[0].upper()


def duplicate_names(data: list[tuple[str | None, str]]) -> str | None:
    """What is wrong when two (symbol or None, path) files would be served as one
    instrument, or None."""
    seen: dict[str, str] = {}
    for symbol, path in data:
        name = instrument_name(symbol, path)
        if name in seen:
            return (f"{seen[name]} and {symbol + '=' if symbol else ''}{path} are both served as `{name}`; "
                    "name them with SYMBOL=PATH")
        seen[name] = f"{symbol + '=' if symbol else ''}{path}"
    return None


def load_recording(data: list[tuple[str | None, str]], date_format: str | None = None,
                   zone: str | None = None) -> Recording:
    """Bars, quotes (`bid` and `ask`, with `bid_size` and `ask_size` when the file has
    both; its `price` column as the last trade's price, else their midpoint) or prices of each (symbol or None, path) file, the
    first of these it has, served as `instrument_name`. `date_format` and `zone` (the
    IANA zone of timestamps without one; None: UTC) are those of `load_table`. Raises DataError for a file that cannot be
    used, or two of one name."""
    clash = duplicate_names(data)
    if clash:
        raise DataError(f"--data: {clash}")
    tables, names = [], []
    for symbol, path in data:
        name = instrument_name(symbol, path)
        quote = list(QUOTE_SIDES)
        for wanted in ([*BAR, "volume"], [*quote, *SIZES, "price"], [*quote, *SIZES], [*quote, "price"], quote):
            try:
                table = load_table(path, wanted, date_format=date_format, zone=zone)
                break
            except DataError:
                continue
        else:
            table = load_table(path, ["price"], date_format=date_format, zone=zone)
        if "bid" in table.columns and "price" not in table.columns:  # a quote file and a price file served
            table.columns["price"] = (table.columns["bid"] + table.columns["ask"]) / 2  # together are both ticks
        tables.append(table)
        names.append(name)
    fields = set.intersection(*(set(t.columns) for t in tables))
    ts = np.concatenate([t.ts for t in tables])
    inst = np.concatenate([np.full(len(t), k) for k, t in enumerate(tables)])
    columns = {f: np.concatenate([t.columns[f] for t in tables]) for f in sorted(fields)}
    order = np.argsort(ts, kind="stable")
    return Recording(names, ts[order], inst[order], {f: v[order] for f, v in columns.items()})


def message(rec: Recording, k: int, fmt: str, sent_ns: int, shift_ns: int = 0) -> dict:
    """Event k of the recording as a feed message, its time moved on by `shift_ns`: with
    `bid` and `ask` columns a quote (native `quote`, binance `bookTicker`, coinbase
    `ticker` with `best_bid` and `best_ask`, each with the sizes when there are), with
    bars a bar (binance and coinbase: a trade or ticker at its close), else a tick."""
    name = rec.instruments[rec.inst[k]]
    ts = int(rec.ts[k]) + shift_ns
    c = rec.columns
    if "bid" in c and "ask" in c:
        return _quote(name, k, ts, fmt, sent_ns, float(c["bid"][k]), float(c["ask"][k]),
                      *(float(c[f][k]) if f in c else None for f in SIZES), float(c["price"][k]))
    price = float(c["close"][k] if "close" in c else c["price"][k])
    if fmt == "binance":
        ms = ts // 1_000_000
        qty = float(c["volume"][k]) if "volume" in c and c["volume"][k] > 0 else 1.0
        return {"e": "trade", "E": ms, "s": name.removeprefix("binance:"), "t": k, "p": repr(price),
                "q": repr(qty), "T": ms, "m": False, "M": True}
    if fmt == "coinbase":
        stamp = np.datetime_as_string(np.datetime64(ts, "ns"), unit="ms") + "Z"
        return {"type": "ticker", "sequence": k, "product_id": name.removeprefix("coinbase:"), "price": repr(price),
                "time": stamp}
    if all(f in c for f in BAR):
        msg = {"type": "bar", "instrument": name, "ts": ts, **{f: float(c[f][k]) for f in BAR}}
        if "volume" in c:
            msg["volume"] = float(c["volume"][k])
    else:
        msg = {"type": "tick", "instrument": name, "ts": ts, "price": price}
    msg["sent_ns"] = sent_ns
    return msg


def _quote(name: str, k: int, ts: int, fmt: str, sent_ns: int, bid: float, ask: float, bid_size: float | None,
           ask_size: float | None, price: float) -> dict:
    """A best bid and offer as a message of `fmt`; sizes left out when None. `price`, the
    last trade's, goes in a coinbase ticker only: the others' price is the midpoint."""
    if fmt == "binance":
        ms = ts // 1_000_000
        msg = {"e": "bookTicker", "u": k, "s": name.removeprefix("binance:"), "b": repr(bid), "a": repr(ask),
               "T": ms, "E": ms}
        if bid_size is not None:
            msg.update(B=repr(bid_size), A=repr(ask_size))
        return msg
    if fmt == "coinbase":
        stamp = np.datetime_as_string(np.datetime64(ts, "ns"), unit="ms") + "Z"
        msg = {"type": "ticker", "sequence": k, "product_id": name.removeprefix("coinbase:"),
               "price": repr(price), "best_bid": repr(bid), "best_ask": repr(ask), "time": stamp}
        if bid_size is not None:
            msg.update(best_bid_size=repr(bid_size), best_ask_size=repr(ask_size))
        return msg
    msg = {"type": "quote", "instrument": name, "ts": ts, "bid": bid, "ask": ask}
    if bid_size is not None:
        msg.update(bid_size=bid_size, ask_size=ask_size)
    msg["sent_ns"] = sent_ns
    return msg


async def broadcast(rec: Recording, clients: set, sent: list[int], fmt: str = "native", speed: float | None = None,
                    rate: float | None = None, loop: bool = False) -> None:
    """Send the recording to every connected client at once, as a live feed does,
    counting messages in `sent[0]` (so a feed stopped midway still knows its count).
    With `loop`, each pass is dated after the one before (by the recording's span and
    one mean step), because time going backwards is refused downstream."""
    from websockets.asyncio.server import broadcast as ws_broadcast

    span = int(rec.ts[-1] - rec.ts[0]) if len(rec) else 0
    shift, per_pass = 0, span + max(1, span // max(1, len(rec) - 1))
    while True:
        start_wall = time.perf_counter()
        for k in range(len(rec)):
            if rate:
                due = start_wall + k / rate
            elif speed:
                due = start_wall + (rec.ts[k] - rec.ts[0]) / 1e9 / speed
            else:
                due = None
            delay = due - time.perf_counter() if due is not None else 0.0
            await asyncio.sleep(max(delay, 0.0))  # also lets the clients' sockets drain
            ws_broadcast(clients, encode(message(rec, k, fmt, time.time_ns(), shift)).decode())
            sent[0] += 1
        if not loop:
            return
        shift += per_pass


async def serve(rec: Recording, host: str, port: int, fmt: str = "native", speed: float | None = None,
                rate: float | None = None, loop: bool = False, clients_needed: int = 1,
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                tls: ssl.SSLContext | None = None) -> int:
    """Serve until the recording ends (or `stop`); streaming starts once
    `clients_needed` clients are connected, and later clients join mid-stream. With
    `tls` (a server context, as `security.server_context` makes) the feed is on wss."""
    from websockets.asyncio.server import serve as ws_serve

    clients: set = set()
    enough = asyncio.Event()

    async def handler(websocket):
        clients.add(websocket)
        if len(clients) >= clients_needed:
            enough.set()
        try:
            await websocket.wait_closed()
        finally:
            clients.discard(websocket)

    async with ws_serve(handler, host, port, max_size=1 << 20, compression=None, ssl=tls) as server:
        if ready is not None:
            ready.set()
        waiting = [asyncio.create_task(enough.wait())]
        if stop is not None:
            waiting.append(asyncio.create_task(stop.wait()))
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        sent = [0]
        if enough.is_set() and not (stop is not None and stop.is_set()):
            feed = asyncio.create_task(broadcast(rec, clients, sent, fmt, speed, rate, loop))
            stopper = [asyncio.create_task(stop.wait())] if stop is not None else []
            await asyncio.wait([feed, *stopper], return_when=asyncio.FIRST_COMPLETED)
            if not feed.done():
                feed.cancel()
        for task in waiting:
            task.cancel()
        for ws in list(clients):
            await ws.close()
        server.close()
    return sent[0]
