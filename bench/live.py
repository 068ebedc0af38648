"""Live runtime figures for `make bench`, each next to a bare websockets baseline measured
in the same run:

- tick-to-order latency at the paper venue vs an echo round trip to a server in its own
  process (both cross a process boundary twice, both paced like the feed), and, to show
  what the feed -> runtime -> venue path costs by itself, a bare relay in the runtime's
  place on the runtime's own transport (`_bare_relay`: decode, order, nothing else);
- market-data throughput through the runtime vs a bare client, in the runtime's place,
  decoding the same frames, both fed faster than they can take them;
- the same at scale: 1,000 instruments on one feed, and 100 intent clients at once;
- the 1-instrument tick-to-order and EMA throughput runs again with `--fsync always` (the
  log on disk before each order leaves), and with TLS on the feed and the venue (wss, a
  certificate of a throwaway authority for 127.0.0.1), next to the plain ones.

`bench_live` ends with the section's targets as dicts (`_target`), which bench/run.py moves
into its PASS/MISS table: throughput at least 0.8 of the bare client on the EMA crossover
and 0.6 with 1,000 instruments, tick-to-order p50 at most 1.5x the echo, the chained,
write-ahead decision log at most 10% of the EMA run's throughput against the same run with
the log as it was before the chain (`_LogBeforeTheChain`); its cost against no log at all is
shown too, and its share of the runtime's CPU time per event on the same recording in one
process without sockets, every fill taken (bench/log_cost.py: an upper bound).

Every asyncio part runs on the loop the runtime uses (uvloop when installed). The feed,
the venue, the echo server and the intent clients are processes of their own; the
runtime runs in this one, so its counters can be read directly.

Internal: `live.py --worker echo|burst|intents ...` are those child processes.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

from log_cost import log_cost_rows

HOST = "127.0.0.1"
RATE = 500.0            # events (and echo messages) per second wherever a latency is measured
LATENCY_EVENTS = 2_500  # 5 s at RATE
THROUGHPUT_EVENTS = 200_000
THROUGHPUT_PAIRS = 3    # bare client and runtime interleaved, so drift on the shared machine hits both
LOG_COST_PAIRS = 7      # the EMA run, whose log cost is a target: its runs vary by several percent each
NOISE = 0.05           # a log cost below -NOISE (the chained log measured faster) is this run's noise, not a figure
INSTRUMENTS = 1_000
INTENT_CLIENTS = 100
INTENTS_PER_SECOND = 20.0  # per client
INTENT_SECONDS = 6.0       # the feed's length in the intents run, at RATE
TLS_THROUGHPUT_RUNS = 3    # the EMA throughput run with TLS: median of this many


# ---------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------
def _run(main):
    """Run a coroutine on the loop the runtime uses, so baselines pay the same loop costs."""
    from policyc.runtime.live.eventloop import run

    return run(main)


def _port() -> int:
    from policyc.runtime.live.demo import free_port

    return free_port()


def _pct(xs_ns) -> tuple[float, float]:
    """p50 and p99 in microseconds."""
    import numpy as np

    xs = np.asarray(xs_ns, dtype=float) / 1e3
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 99))


def _spawn(*argv) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _policyc(*args) -> subprocess.Popen:
    return _spawn(Path(sys.executable).parent / "policyc", *args)


def _worker_argv(kind: str, *args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *map(str, args)]


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _stop(proc) -> str:
    """SIGINT, then the process's stderr (the venue prints its latency report there)."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def _authority(folder: Path) -> Path:
    """A throwaway certificate authority and a server certificate it signs for 127.0.0.1,
    as `folder`/ca.pem, cert.pem, key.pem (the key private): what the TLS rows serve."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bench CA")).issuer_name(name("bench CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name(HOST)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    os.chmod(folder / "key.pem", 0o600)
    return folder


def _tls_options(tls: Path | None) -> list[str]:
    """replay-feed's and paper-venue's options that put them on wss, verifying with the CA."""
    return [] if tls is None else ["--tls-cert", str(tls / "cert.pem"), "--tls-key", str(tls / "key.pem")]


# ---------------------------------------------------------------------------------------
# data and policies
# ---------------------------------------------------------------------------------------
def _recording(path: Path, n: int, seed: int) -> Path:
    """A Datetime,Close random walk, one row per second."""
    import numpy as np

    rng = np.random.default_rng(seed)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    stamps = np.datetime_as_string(np.datetime64("2024-01-02T00:00") + np.arange(n).astype("timedelta64[s]"))
    path.write_text("Datetime,Close\n" + "".join(f"{t},{p:.5f}\n" for t, p in zip(stamps, price)))
    return path


def _many_recordings(tmp: Path) -> dict[str, Path]:
    """INSTRUMENTS short recordings (30-60 rows each) for one feed."""
    import numpy as np

    lengths = np.random.default_rng(5).integers(30, 61, INSTRUMENTS)
    return {f"S{k:04d}": _recording(tmp / f"s{k:04d}.csv", int(n), seed=100 + k) for k, n in enumerate(lengths)}


def _flip(instruments, intents: bool = False):
    """Long on an up-tick, short otherwise: an order on about every other event (the
    order path under stress). With `intents`, a model's intents set the target too."""
    return _policy("flip", instruments, "up: close > close[1]", "up", "not up", intents)


def _cross(instruments):
    """An EMA crossover: orders at crossings only, as a trend policy sends them."""
    return _policy("cross", instruments, "fast: ema(close, 5)\n  slow: ema(close, 20)",
                   "crosses_above(fast, slow)", "crosses_below(fast, slow)")


def _policy(name: str, instruments, features: str, long_when: str, short_when: str, intents: bool = False):
    from policyc.compiler.build import compile_policy
    from policyc.dsl.document import parse_policy_text

    text = f"""
policy: {name}
version: 1
instruments: [{", ".join(instruments)}]
{"inputs: [intent]" if intents else ""}
features:
  {features}
signals:
  - when: {long_when}
    target: 10
  - when: {short_when}
    target: -10
risk:
  max_position: 10
"""
    return compile_policy(parse_policy_text(text, f"{name}.yaml"))


# ---------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------
async def _echo(ws) -> None:
    async for frame in ws:
        await ws.send(frame)


async def _serve_echo(port: int) -> None:
    from websockets.asyncio.server import serve

    async with serve(_echo, HOST, port, compression=None):
        await asyncio.Future()


async def _echo_client(port: int, n: int) -> list[int]:
    """Round trips of tick-shaped frames, paced at RATE like the feed, each reply decoded."""
    import orjson
    from websockets.asyncio.client import connect

    out = []
    async with connect(f"ws://{HOST}:{port}", compression=None) as ws:
        start = time.perf_counter()
        for k in range(n):
            await asyncio.sleep(max(0.0, start + k / RATE - time.perf_counter()))
            t0 = time.time_ns()
            await ws.send(orjson.dumps({"type": "tick", "instrument": "SYN", "ts": k, "price": 1.0,
                                        "sent_ns": t0}).decode())
            orjson.loads(await ws.recv())
            out.append(time.time_ns() - t0)
    return out


def _echo_cross_process(n: int) -> list[int]:
    """The echo server in a process of its own, as the feed and the venue are."""
    port = _port()
    server = _spawn(*_worker_argv("echo", port))
    try:
        _wait_port(port)
        return _run(_echo_client(port, n))
    finally:
        _stop(server)


async def _echo_in_process(n: int) -> list[int]:
    from websockets.asyncio.server import serve

    port = _port()
    async with serve(_echo, HOST, port, compression=None):
        return await _echo_client(port, n)


async def _bare_client(port: int, n: int) -> float:
    """Events per second received and decoded with orjson (the runtime's decoder), from
    the first event to the n-th."""
    import orjson
    from websockets.asyncio.client import connect

    got = 0
    async with connect(f"ws://{HOST}:{port}", max_size=1 << 20, compression=None) as ws:
        async for frame in ws:
            orjson.loads(frame)
            if got == 0:
                t0 = time.perf_counter()
            got += 1
            if got == n:
                break
    return (got - 1) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------
# the runtime between a feed and a paper venue
# ---------------------------------------------------------------------------------------
async def _burst_feed(port: int, clients: int, specs: list[str], tls: str | None = None) -> None:
    """replay-feed's frames for `specs` (SYMBOL=PATH), framed up front and written to each
    client in one write once `clients` are connected, then served until SIGINT. The feed
    process then only flushes its buffers: the consumers read a full socket at their own
    capacity, and do not share the 2 cores with a feed still encoding. `tls`: the folder of
    `_authority`, to serve on wss (the blob is then encrypted as it is written)."""
    from websockets.asyncio.server import serve

    from policyc.runtime.live.security import server_context
    from websockets.frames import Frame, Opcode

    from policyc.runtime.live.protocol import encode
    from policyc.runtime.live.replay import load_recording, message

    rec = load_recording([tuple(spec.split("=", 1)) for spec in specs])
    blob = b"".join(Frame(Opcode.TEXT, encode(message(rec, k, "native", time.time_ns()))).serialize(mask=False)
                    for k in range(len(rec)))
    connected: list = []
    enough = asyncio.Event()

    async def handler(ws):
        connected.append(ws)
        if len(connected) >= clients:
            enough.set()
        await ws.wait_closed()

    context = server_context(Path(tls) / "cert.pem", Path(tls) / "key.pem") if tls else None
    async with serve(handler, HOST, port, max_size=1 << 20, compression=None, ssl=context):
        await enough.wait()
        for ws in connected:
            ws.transport.write(blob)  # what a broadcast of each frame would write, byte for byte
        await asyncio.Future()


@contextmanager
def _feed_and_venue(data: dict[str, Path], rate: float | None, clients: int = 2, tls: Path | None = None):
    """A feed and paper-venue as processes of their own; the feed starts once `clients`
    (the venue included) are connected. Paced, the feed is `policyc replay-feed --rate`.
    Unpaced, it is the burst worker: unpaced replay-feed is CPU-bound below what a bare
    client takes, so a throughput measured behind it would be the feed's. Yields (feed
    port, venue port, report); `report` gets the venue's closing figures when the block
    ends. `tls`: the folder of `_authority`, to put the feed and the venue on wss."""
    feed_port, venue_port = _port(), _port()
    specs = [f"{name}={path}" for name, path in data.items()]
    if rate:
        feed = _policyc("replay-feed", *(a for spec in specs for a in ("--data", spec)), "--listen",
                        f"{HOST}:{feed_port}", "--clients", clients, "--rate", rate, *_tls_options(tls))
    else:
        feed = _spawn(*_worker_argv("burst", feed_port, clients, tls or "-", *specs))
    venue = None
    report: dict = {}
    try:
        _wait_port(feed_port)
        scheme = "wss" if tls else "ws"
        venue = _policyc("paper-venue", "--listen", f"{HOST}:{venue_port}", "--feed", f"{scheme}://{HOST}:{feed_port}",
                         *_tls_options(tls), *(["--ca-file", str(tls / "ca.pem")] if tls else []))
        _wait_port(venue_port)
        yield feed_port, venue_port, report
    finally:
        if venue is not None:
            lines = [l for l in _stop(venue).splitlines() if l.startswith("{")]
            report.update(json.loads(lines[-1]) if lines else {})
        _stop(feed)


class _LogBeforeTheChain:
    """The decision log as `run` wrote it before the hash chain, the write-ahead rule and
    the journal of inputs: each decision record a dict with the policy's hashes, written
    as orjson's JSON line into a buffered file flushed every 64 records (the runtime's
    `flush_every`). The baseline the issue asks the chained log to be measured against;
    no run can use it."""

    FLUSH_EVERY = 64

    def __init__(self, path: Path, policy_hash: str, build_hash: str):
        from collections import deque

        self.policy_hash, self.build_hash, self.seq = policy_hash, build_hash, 0
        self.recent: deque = deque(maxlen=8)
        self._file = open(path, "wb")

    def write(self, kind: str, ts: int | None = None, **fields) -> dict:
        import orjson

        self.seq += 1
        record = {"seq": self.seq, "ts": ts if ts is not None else time.time_ns(), "kind": kind,
                  "policy_hash": self.policy_hash, "build_hash": self.build_hash, **fields}
        self._file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY))
        if kind != "session":
            self.recent.append(record)
        if self.seq % self.FLUSH_EVERY == 0:
            self._file.flush()
        return record

    def batch(self):
        from contextlib import nullcontext

        return nullcontext()

    def flush(self) -> None:  # it had no write-ahead: orders left with their records still buffered
        pass

    def close(self) -> None:
        self._file.close()


def _swap_log(rt, log: Path, no_log: bool, log_before_the_chain: bool) -> None:
    """A new runtime's decision log, as `_running` describes its flags: the chained log
    it opened, none, or `_LogBeforeTheChain` in its place."""
    if no_log:
        rt.core.journal, rt.core.record = False, lambda kind, ts=None, **fields: None
    elif log_before_the_chain:
        rt.log.close()
        rt.log = _LogBeforeTheChain(log, rt.policy.policy_hash, rt.policy.build_hash)
        rt.core.journal, rt.core.record = False, rt.log.write


@asynccontextmanager
async def _running(policy, feed_port: int, venue_port: int, log: Path, no_log: bool = False,
                   log_before_the_chain: bool = False, **config):
    """The runtime in this process, on this loop, stopped when the block ends; on a new
    log each time (a log that exists would be resumed). With `ca_file` in `config`, the
    feed and the venue are on wss. `no_log`: the core's records are dropped unwritten and
    its inputs not journaled; `log_before_the_chain`: they go to `_LogBeforeTheChain`,
    inputs not journaled (no run can do either; they measure what the log costs)."""
    from policyc.runtime.live.runner import LiveRuntime, RunConfig

    log.unlink(missing_ok=True)
    scheme = "wss" if config.get("ca_file") else "ws"
    rt = LiveRuntime(policy, RunConfig(f"{scheme}://{HOST}:{feed_port}", f"{scheme}://{HOST}:{venue_port}",
                                       log_path=str(log), **config))
    _swap_log(rt, log, no_log, log_before_the_chain)
    task = asyncio.create_task(rt.run())
    try:
        yield rt
    finally:
        rt.stop.set()
        await task


class LiveRun(NamedTuple):
    """One run of the runtime: it, its events per second from its first event on, the
    venue's tick-to-order report, and the CPU time this process spent per event over the
    same span (ns; the runtime and its log's sync thread, the only work of this process
    then), which the feed and the venue sharing the cores disturb far less than the rate."""
    rt: object
    rate: float
    latency: dict
    cpu_ns: float


async def _runtime_until(policy, feed_port: int, venue_port: int, n: int, log: Path,
                         **config) -> tuple[object, float, float]:
    """Run until the runtime has taken n events; returns it, its events per second and
    the CPU ns per event of this process, both from the first event on."""
    async with _running(policy, feed_port, venue_port, log, **config) as rt, asyncio.timeout(120):
        while rt.counters.events == 0:
            await asyncio.sleep(0.001)
        # the first read may hold many events
        t0, c0, start = time.perf_counter(), time.process_time_ns(), rt.counters.events
        while rt.counters.events < n:
            await asyncio.sleep(0.002)
        elapsed, cpu, taken = time.perf_counter() - t0, time.process_time_ns() - c0, rt.counters.events - start
    return rt, taken / elapsed, cpu / taken


def _live_run(policy, data: dict[str, Path], n: int, rate: float | None, log: Path, tls: Path | None = None,
              **config) -> LiveRun:
    if tls is not None:
        config["ca_file"] = str(tls / "ca.pem")
    with _feed_and_venue(data, rate, tls=tls) as (feed_port, venue_port, venue):
        rt, got, cpu_ns = _run(_runtime_until(policy, feed_port, venue_port, n, log, **config))
    return LiveRun(rt, got, venue.get("latency", {}), cpu_ns)


async def _bare_relay(feed_port: int, venue_port: int, n: int) -> None:
    """A bare relay in the runtime's place, on the runtime's own transport both ways
    (`transport.Stream`: a socket read's messages in one call, a frame written at once):
    each of the feed's first n messages decoded with orjson, and every other one answered
    at once with a market order carrying its `sent_ns` (the flip policy orders on about
    every other event); no kernel, no checks, no log. The venue's answers are dropped.
    Its tick-to-order is what the feed -> runtime -> venue path costs with nothing done
    in the middle."""
    import orjson

    from policyc.runtime.live import transport

    done = asyncio.get_running_loop().create_future()
    seen = [0]
    venue = await transport.connect(f"ws://{HOST}:{venue_port}", lambda frames: None, lambda why: None)

    def on_feed(frames) -> None:
        for frame in frames:
            k = seen[0]
            seen[0] += 1
            if k == n:
                if not done.done():
                    done.set_result(None)
                return
            message = orjson.loads(frame)
            if k % 2 == 0:
                venue.send(orjson.dumps({
                    "type": "order", "client_order_id": f"relay-{k:06d}", "instrument": message.get("instrument"),
                    "side": "buy" if k % 4 == 0 else "sell", "qty": 10.0, "order_type": "market",
                    "ts": message.get("ts"), "event_sent_ns": message.get("sent_ns"), "event_ts": message.get("ts")}))

    feed = await transport.connect(f"ws://{HOST}:{feed_port}", on_feed, lambda why: None)
    try:
        await done
    finally:
        feed.close()
        venue.close()


def _relay_latency(data: dict[str, Path], n: int) -> dict:
    """`_bare_relay` between a paced feed and a paper venue: the venue's tick-to-order report."""
    with _feed_and_venue(data, RATE) as (feed_port, venue_port, venue):
        _run(_bare_relay(feed_port, venue_port, n))
    return venue.get("latency", {})


def _bare_receive(data: dict[str, Path], n: int, client=None) -> float:
    """A bare client in the runtime's place: same feed, same venue also subscribed."""
    with _feed_and_venue(data, None) as (feed_port, _, _):
        return _run((client or _bare_client)(feed_port, n))


async def _bare_stream_client(port: int, n: int) -> float:
    """The runtime's own transport (batched reads) with nothing behind it but orjson:
    how much of the gap to the bare client is the transport and how much the runtime."""
    import orjson

    from policyc.runtime.live import transport

    done = asyncio.get_running_loop().create_future()
    got, t0, start = [0], [0.0], [0]

    def on_messages(frames):
        for frame in frames:
            orjson.loads(frame)
        if got[0] == 0:
            t0[0], start[0] = time.perf_counter(), len(frames)
        got[0] += len(frames)
        if got[0] >= n and not done.done():
            done.set_result((got[0] - start[0]) / (time.perf_counter() - t0[0]))

    stream = await transport.connect(f"ws://{HOST}:{port}", on_messages, lambda why: None)
    try:
        return await done
    finally:
        stream.close()


async def _runtime_with_intents(policy, feed_port: int, venue_port: int, log: Path):
    """The runtime with an intents listener; the worker's clients load it for as long as
    the feed plays. Returns the worker's report."""
    from policyc.runtime.live import security

    token, port = secrets.token_hex(16), _port()
    guard = security.Guard(security.Credentials([("model", token, "bench")]))
    async with _running(policy, feed_port, venue_port, log, intents=(HOST, port), guard=guard) as rt:
        await asyncio.wait_for(rt.venue_up.wait(), 30)  # the intents listener is up before the venue connects
        proc = await asyncio.create_subprocess_exec(  # the token in the environment, not on the command line
            *_worker_argv("intents", port, feed_port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "POLICYC_MODEL_TOKEN": token})
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"intent clients failed: {err.decode().strip()[-500:]}")
    return json.loads(out)


# ---------------------------------------------------------------------------------------
# intent clients (a worker process)
# ---------------------------------------------------------------------------------------
async def _intent_clients(port: int, token: str, feed_port: int) -> dict:
    """INTENT_CLIENTS connections sending intents, INTENTS_PER_SECOND each, every one
    awaiting its decision, from the feed's first event to its end. This process also
    subscribes to the feed (as a model would), so the feed starts once all are connected."""
    import orjson
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    headers = {"Authorization": f"Bearer {token}"}
    conns = [await connect(f"ws://{HOST}:{port}", additional_headers=headers, compression=None)
             for _ in range(INTENT_CLIENTS)]
    rtts: list[int] = []
    errors: list[str] = []
    done = asyncio.Event()

    async def client(c: int, ws) -> None:
        start = time.perf_counter() + c / INTENT_CLIENTS / INTENTS_PER_SECOND  # spread the clients' phases
        k = 0
        while not done.is_set():
            await asyncio.sleep(max(0.0, start + k / INTENTS_PER_SECOND - time.perf_counter()))
            ident = f"{c}-{k}"
            t0 = time.perf_counter_ns()
            target = (k % 5 - 2) * 10  # -20..20, so max_position clips some
            try:
                await ws.send(orjson.dumps({"type": "intent", "id": ident, "instrument": "SYN",
                                            "target": target}).decode())
                reply = orjson.loads(await ws.recv())
            except ConnectionClosed as exc:
                errors.append(f"client {c}: {exc}")
                return
            rtts.append(time.perf_counter_ns() - t0)
            if reply.get("type") != "decision" or reply.get("id") != ident:
                errors.append(str(reply)[:200])
            k += 1

    async with connect(f"ws://{HOST}:{feed_port}", max_size=1 << 20, compression=None) as feed:
        await feed.recv()
        tasks = [asyncio.create_task(client(c, ws)) for c, ws in enumerate(conns)]
        async for _ in feed:
            pass
    done.set()
    await asyncio.gather(*tasks)
    for ws in conns:
        await ws.close()
    return {"rtt_ns": rtts, "errors": len(errors), "first_errors": errors[:3]}


def worker(kind: str, args: list[str]) -> None:
    if kind == "echo":
        with suppress(KeyboardInterrupt):
            _run(_serve_echo(int(args[0])))
    elif kind == "burst":
        with suppress(KeyboardInterrupt):
            _run(_burst_feed(int(args[0]), int(args[1]), args[3:], None if args[2] == "-" else args[2]))
    elif kind == "intents":
        port, token, feed_port = int(args[0]), os.environ["POLICYC_MODEL_TOKEN"], int(args[1])
        print(json.dumps(_run(_intent_clients(port, token, feed_port))))


# ---------------------------------------------------------------------------------------
# section 7
# ---------------------------------------------------------------------------------------
def _latency_row(what: str, lat: dict, echo_p50: float) -> list:
    if not lat:
        return [what, "no orders reached the venue", "", ""]
    return [f"{what} ({lat['n']:,} orders)", f"p50 {lat['p50_us']:,.0f} us", f"p99 {lat['p99_us']:,.0f} us",
            f"{lat['p50_us'] / echo_p50:.2f} (p50)"]


def _tls_latency_row(lat: dict, plain: dict) -> list:
    """The 1-instrument tick-to-order run with TLS on the feed and the venue; ratio to
    the plain run's p50 and p99."""
    what = "  the same with TLS on the feed and the venue (wss, certificates verified); ratio to the plain run"
    if not lat or not plain:
        return [what, "no orders reached the venue", "", ""]
    return [f"{what} ({lat['n']:,} orders)", f"p50 {lat['p50_us']:,.0f} us", f"p99 {lat['p99_us']:,.0f} us",
            f"{lat['p50_us'] / plain['p50_us']:.2f} (p50), {lat['p99_us'] / plain['p99_us']:.2f} (p99)"]


def _target(what: str, measured: float | None, limit: float, at_least: bool = False) -> dict:
    """A target row for bench/run.py's table: a ratio measured in this run against its
    limit, which it must not exceed (or, `at_least`, not fall below)."""
    ok = measured is not None and (measured >= limit if at_least else measured <= limit)
    return {"section": "live", "target": what + (" (at least the limit)" if at_least else ""), "measured": measured,
            "limit": limit, "unit": "ratio", "pass": ok}


def _throughput_rows(what: str, policy, data: dict[str, Path], n: int, log: Path,
                     pairs: int = THROUGHPUT_PAIRS) -> tuple[list[list], dict[str, float]]:
    """Medians over `pairs` interleaved runs (bare client, runtime, runtime with the log as
    it was before the chain, runtime without a log); a ratio is the median of the ratios of
    the runs made together. Also returns the figures: the bare client's and the runtime's
    medians (ev/s), the runtime's ratio to the bare client, and the log's cost against the
    log before the chain (`chain_cost`, the target) and against no log (`log_cost`), each
    both as a share of throughput and (`*_cpu`) as a share of the runtime's CPU time per
    event: 1 - before / chained, which is the throughput the log costs a runtime that is
    the bottleneck, measured without the feed's and the venue's share of the cores."""
    bare, got, before, unlogged = [], [], [], []
    for _ in range(pairs):
        bare.append(_bare_receive(data, n))
        got.append(_live_run(policy, data, n, None, log))
        before.append(_live_run(policy, data, n, None, log, log_before_the_chain=True))
        unlogged.append(_live_run(policy, data, n, None, log, no_log=True))
    med = statistics.median
    ratio = med(g.rate / b for g, b in zip(got, bare))
    figures = {"bare": med(bare), "runtime": med(g.rate for g in got), "ratio": ratio,
               "chain_cost": med(1 - g.rate / p.rate for g, p in zip(got, before)),
               "log_cost": med(1 - g.rate / u.rate for g, u in zip(got, unlogged)),
               "chain_cost_cpu": med(1 - p.cpu_ns / g.cpu_ns for g, p in zip(got, before)),
               "log_cost_cpu": med(1 - u.cpu_ns / g.cpu_ns for g, u in zip(got, unlogged))}

    def cpu(runs) -> str:
        return f"{med(r.cpu_ns for r in runs):,.0f} CPU ns/ev"

    return [[f"{what}: bare client in the runtime's place, orjson-decoding the feed ({n:,} events, median of "
             f"{pairs})", f"{med(bare):,.0f} ev/s", "", "1.00"],
            [f"{what}: runtime through the kernel, orders flowing ({med(g.rt.counters.orders for g in got):,.0f} "
             "orders), decision log on (chained, write-ahead, --fsync batch, inputs journaled)",
             f"{figures['runtime']:,.0f} ev/s", cpu(got), f"{ratio:.2f}"],
            [f"  the same with the log as it was before the chain (decision records only, buffered, flushed "
             f"every 64); the chained log's cost against it is {figures['chain_cost']:.1%} of throughput, "
             f"{figures['chain_cost_cpu']:.1%} of CPU time per event",
             f"{med(p.rate for p in before):,.0f} ev/s", cpu(before),
             f"{med(p.rate / b for p, b in zip(before, bare)):.2f}"],
            [f"  the same without the decision log (records dropped unwritten); the log's cost is "
             f"{figures['log_cost']:.1%} of throughput, {figures['log_cost_cpu']:.1%} of CPU time per event",
             f"{med(u.rate for u in unlogged):,.0f} ev/s", cpu(unlogged),
             f"{med(u.rate / b for u, b in zip(unlogged, bare)):.2f}"]], figures


def bench_live() -> list[list | dict]:
    """Section 7's table rows (lists), then its target rows (dicts, `_target`)."""
    one = _flip(["SYN"])  # also pays the compiler's imports
    t = time.perf_counter()
    many = _flip([f"S{k:04d}" for k in range(INSTRUMENTS)])
    rows = [[f"compile_policy of the flip policy over {INSTRUMENTS:,} instruments (JIT, or the kernel cache when "
             "warm)", f"{time.perf_counter() - t:.2f} s", "", ""]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        e50, e99 = _pct(_echo_cross_process(LATENCY_EVENTS))
        rows.append([f"echo round trip, server in its own process ({LATENCY_EVENTS:,} msgs at {RATE:,.0f}/s): "
                     "the latency baseline", f"p50 {e50:,.0f} us", f"p99 {e99:,.0f} us", "1.00"])
        i50, i99 = _pct(_run(_echo_in_process(LATENCY_EVENTS)))
        rows.append(["echo round trip, server in this process (informational)", f"p50 {i50:,.0f} us",
                     f"p99 {i99:,.0f} us", f"{i50 / e50:.2f} (p50)"])

        syn = {"SYN": _recording(tmp / "syn.csv", LATENCY_EVENTS + 500, seed=3)}
        lat = _live_run(one, syn, LATENCY_EVENTS, RATE, tmp / "lat.jsonl").latency
        rows.append(_latency_row(f"1 instrument, feed at {RATE:,.0f} ev/s: tick-to-order at the paper venue; ratio "
                                 "to the cross-process echo", lat, e50))
        targets = [_target("tick-to-order p50 / echo round trip p50 (1 instrument, no --busy-poll)",
                           lat["p50_us"] / e50 if lat else None, 1.5)]
        rows.append(_latency_row("  informational: a bare relay in the runtime's place (the runtime's transport both "
                                 "ways, orjson, an order on every other tick; no kernel, checks or log): the path's "
                                 "own cost",
                                 _relay_latency(syn, LATENCY_EVENTS), e50))
        before_lat = _live_run(one, syn, LATENCY_EVENTS, RATE, tmp / "lat-before.jsonl",
                               log_before_the_chain=True).latency
        rows.append(_latency_row("  the same with the log as it was before the chain (buffered, no write-ahead)",
                                 before_lat, e50))
        tls = _authority(tmp / "tls")
        tls_lat = _live_run(one, syn, LATENCY_EVENTS, RATE, tmp / "lat-tls.jsonl", tls=tls).latency
        rows.append(_tls_latency_row(tls_lat, lat))
        lat = _live_run(one, syn, LATENCY_EVENTS, RATE, tmp / "busy.jsonl", busy_poll=True).latency
        rows.append(_latency_row("  the same with run --busy-poll (the runtime keeps a core busy; p99 suffers when "
                                 "it has none of its own)", lat, e50))
        data = _many_recordings(tmp)
        lat = _live_run(many, data, LATENCY_EVENTS, RATE, tmp / "many-lat.jsonl").latency
        rows.append(_latency_row(f"{INSTRUMENTS:,} instruments on one feed at {RATE:,.0f} ev/s: tick-to-order",
                                 lat, e50))

        big = {"SYN": _recording(tmp / "big.csv", THROUGHPUT_EVENTS, seed=4)}
        rows += _throughput_rows("1 instrument, an order every other event", one, big, THROUGHPUT_EVENTS,
                                 tmp / "tput.jsonl")[0]
        cross, ema = _throughput_rows("1 instrument, EMA crossover", _cross(["SYN"]), big, THROUGHPUT_EVENTS,
                                      tmp / "cross.jsonl", LOG_COST_PAIRS)
        rows += cross
        bare, plain = ema["bare"], ema["runtime"]
        # The chained log does all the work of the one before it and more: a run where it
        # measured more than NOISE faster could not tell the two apart, and says n/a (a MISS)
        chain_cost = ema["chain_cost"] if ema["chain_cost"] >= -NOISE else None
        targets += [_target("EMA crossover throughput / bare websockets client", ema["ratio"], 0.8, at_least=True),
                    _target("decision log's cost on the EMA run: 1 - chained / log before the chain (throughput)"
                            + ("" if chain_cost is not None else
                               f"; n/a: the chained log measured {-ema['chain_cost']:.1%} faster, this run's noise"),
                            chain_cost, 0.10)]
        rows.append([f"  informational: the chained log against no log at all: {ema['log_cost']:.1%} of the EMA "
                     f"run's throughput, {ema['log_cost_cpu']:.1%} of its CPU time per event", "", "", ""])
        rows += log_cost_rows(_cross(["SYN"]), "SYN", big["SYN"], tmp / "alone.jsonl")[0]
        synced = statistics.median(_live_run(_cross(["SYN"]), big, THROUGHPUT_EVENTS, None, tmp / "cross-always.jsonl",
                                             fsync="always").rate for _ in range(TLS_THROUGHPUT_RUNS))
        rows.append([f"  the same EMA run with --fsync always (each write on disk before the order leaves; median of "
                     f"{TLS_THROUGHPUT_RUNS}); ratio to the --fsync batch run above", f"{synced:,.0f} ev/s", "",
                     f"{synced / plain:.2f}"])
        synced_lat = _live_run(one, syn, LATENCY_EVENTS, RATE, tmp / "lat-always.jsonl", fsync="always").latency
        rows.append(_latency_row("  1 instrument, tick-to-order with --fsync always", synced_lat, e50))
        tls_got = statistics.median(_live_run(_cross(["SYN"]), big, THROUGHPUT_EVENTS, None, tmp / "cross-tls.jsonl",
                                              tls=tls).rate for _ in range(TLS_THROUGHPUT_RUNS))
        rows.append([f"  the same EMA run with TLS on the feed and the venue (median of {TLS_THROUGHPUT_RUNS}); ratio "
                     "to the plain runtime above", f"{tls_got:,.0f} ev/s", "", f"{tls_got / plain:.2f}"])
        own = statistics.median(_bare_receive(big, THROUGHPUT_EVENTS, _bare_stream_client)
                                for _ in range(THROUGHPUT_PAIRS))
        rows.append([f"  informational: bare client on the runtime's own batched transport, orjson-decoding "
                     f"(median of {THROUGHPUT_PAIRS}); ratio to the bare websockets client above",
                     f"{own:,.0f} ev/s", "", f"{own / bare:.2f}"])
        total = sum(len(p.read_text().splitlines()) - 1 for p in data.values())
        scale, wide = _throughput_rows(f"{INSTRUMENTS:,} instruments", many, data, total, tmp / "many-tput.jsonl")
        rows += scale
        targets.append(_target(f"{INSTRUMENTS:,} instruments throughput / bare websockets client", wide["ratio"], 0.6,
                               at_least=True))

        paced = {"SYN": _recording(tmp / "intents.csv", int(INTENT_SECONDS * RATE), seed=6)}
        with _feed_and_venue(paced, RATE, clients=3) as (feed_port, venue_port, venue):
            load = _run(_runtime_with_intents(_flip(["SYN"], intents=True), feed_port, venue_port,
                                              tmp / "intents.jsonl"))
        r50, r99 = _pct(load["rtt_ns"])
        rows.append([f"{INTENT_CLIENTS} intent clients x {INTENTS_PER_SECOND:g}/s: intent -> decision round trip "
                     f"({len(load['rtt_ns']):,} intents, {load['errors']} errors)",
                     f"p50 {r50:,.0f} us", f"p99 {r99:,.0f} us", f"{r50 / e50:.2f} (p50)"])
        if load["errors"]:
            rows.append(["  first errors: " + " | ".join(load["first_errors"]), "", "", ""])
        rows.append(_latency_row(f"  tick-to-order during that load, feed at {RATE:,.0f} ev/s",
                                 venue.get("latency", {}), e50))
    return rows + targets


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3:])
