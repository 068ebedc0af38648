"""The whole stack on wss: a replay feed and a paper venue served with a test authority's
certificate for 127.0.0.1 (`replay.serve(..., tls=)`, `paper.serve(..., tls=, ca_file=)`),
and a runtime trading through both, verifying them against that authority
(`RunConfig(ca_file=)`); without the authority it does not connect, and says why. Also
`policyc replay-feed` and `policyc paper-venue` with `--tls-cert` and `--tls-key`."""
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text
from policyc.runtime.live import paper, replay, security
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.runner import LiveRuntime, RunConfig

from loopback import FAILSAFE_S, FLIP, HOST, free_port, until, wait_port
from test_security_loopback import make_authority

DATA = Path(__file__).resolve().parent.parent / "data" / "orcl-1995-2014.csv"
#: Any policy that trades often on the feed does here (the tests are about the links, not the
#: rules): tests/loopback.py's FLIP, a kernel the other live tests compile too.
POLICY = FLIP


@pytest.fixture(scope="module")
def policy():
    return compile_policy(parse_policy_text(POLICY, "flip.yaml"))


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("trusted"), "trusted")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("stranger"), "stranger")


@pytest.fixture(scope="module")
def short_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("tls") / "orcl-head.csv"
    path.write_text("\n".join(DATA.read_text().splitlines()[:241]) + "\n")
    return path


async def _wss_stack(policy, data, log, authority, ca_file, until_done):
    """Feed and venue on wss with `authority`'s certificate (the venue follows the feed
    verifying it against `authority`'s CA); a runtime verifying both against `ca_file`.
    Returns what `until_done(runtime, venue, feed)` returns."""
    ca, cert, key = authority
    tls = security.server_context(cert, key)
    rec = replay.load_recording([("ORCL", str(data))])
    feed_port, venue_port = free_port(), free_port()
    venue = paper.PaperVenue()
    feed_ready, venue_ready, stop_venue, stop_feed = (asyncio.Event() for _ in range(4))
    feed = asyncio.create_task(replay.serve(rec, HOST, feed_port, rate=400.0, clients_needed=2, ready=feed_ready,
                                            stop=stop_feed, tls=tls))
    await feed_ready.wait()
    venue_task = asyncio.create_task(paper.serve(venue, HOST, venue_port, f"wss://{HOST}:{feed_port}",
                                                 ready=venue_ready, stop=stop_venue, ca_file=ca, tls=tls))
    await venue_ready.wait()
    runtime = LiveRuntime(policy, RunConfig(f"wss://{HOST}:{feed_port}", f"wss://{HOST}:{venue_port}",
                                            log_path=str(log), ca_file=ca_file))
    run = asyncio.create_task(runtime.run())
    try:
        return await until_done(runtime, venue, feed), feed_port, venue_port
    finally:
        runtime.stop.set()
        await run
        stop_venue.set()
        await venue_task
        stop_feed.set()
        await feed


def test_a_runtime_trades_through_a_wss_feed_and_a_wss_venue(policy, short_data, tmp_path, authority):
    """Every event arrives over TLS, the orders reach the wss venue and are filled, and
    the log holds each order's fill."""
    log = tmp_path / "d.jsonl"

    async def done(runtime, venue, feed):
        sent = await asyncio.wait_for(feed, FAILSAFE_S)
        await until(lambda: runtime.counters.events == sent and not runtime.open)
        return sent

    sent, _, _ = asyncio.run(_wss_stack(policy, short_data, log, authority, authority[0], done))
    assert sent == 240
    records = read_log(log)
    orders = [r for r in records if r["kind"] == "order"]
    fills = {r["client_order_id"] for r in records if r["kind"] == "fill"}
    assert len(orders) > 5
    assert {r["client_order_id"] for r in orders} <= fills


def test_without_the_authority_the_runtime_does_not_connect_and_says_why(policy, short_data, tmp_path, authority,
                                                                           stranger, capfd):
    """A runtime trusting another authority: neither link connects, nothing is traded,
    and stderr names the untrusted certificate and --ca-file."""
    async def done(runtime, venue, feed):
        await until(lambda: runtime.links["feed"].state == "down" and runtime.links["venue"].state == "down")
        return runtime.links["feed"].error, runtime.links["venue"].error, runtime.counters.events, len(venue.fills)

    (feed_error, venue_error, events, fills), feed_port, venue_port = asyncio.run(
        _wss_stack(policy, short_data, tmp_path / "d.jsonl", authority, stranger[0], done))
    assert events == 0 and fills == 0
    for port, error in ((feed_port, feed_error), (venue_port, venue_error)):
        assert error == (f"cannot connect (the TLS certificate of {HOST}:{port} is not trusted (unable to get local "
                         "issuer certificate); give its certificate authority with --ca-file)")
    err = capfd.readouterr().err
    assert f"feed wss://{HOST}:{feed_port}: cannot connect (the TLS certificate" in err
    assert f"venue wss://{HOST}:{venue_port}: cannot connect (the TLS certificate" in err


def _policyc(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "policyc", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_replay_feed_and_paper_venue_commands_serve_wss(policy, short_data, tmp_path, authority):
    """`policyc replay-feed` and `policyc paper-venue` with --tls-cert and --tls-key (the
    venue following the feed with --ca-file): a runtime trusting the authority trades
    through them."""
    ca, cert, key = authority
    feed_port, venue_port = free_port(), free_port()
    feed = _policyc("replay-feed", "--data", f"ORCL={short_data}", "--listen", f"{HOST}:{feed_port}", "--clients", 2,
                    "--rate", 400, "--tls-cert", cert, "--tls-key", key)
    venue = None
    try:
        wait_port(feed_port, proc=feed)
        venue = _policyc("paper-venue", "--listen", f"{HOST}:{venue_port}", "--feed", f"wss://{HOST}:{feed_port}",
                         "--ca-file", ca, "--tls-cert", cert, "--tls-key", key)
        wait_port(venue_port, proc=venue)
        log = tmp_path / "d.jsonl"

        async def trade():
            runtime = LiveRuntime(policy, RunConfig(f"wss://{HOST}:{feed_port}", f"wss://{HOST}:{venue_port}",
                                                    log_path=str(log), ca_file=ca))
            run = asyncio.create_task(runtime.run())
            try:
                await until(lambda: runtime.counters.events == 240 and runtime.counters.orders > 5
                            and not runtime.open)
            finally:
                runtime.stop.set()
                await run

        asyncio.run(trade())
        _, feed_err = feed.communicate(timeout=FAILSAFE_S)
        assert f"on wss://{HOST}:{feed_port}" in feed_err and "sent 240 events" in feed_err
        orders = [r for r in read_log(log) if r["kind"] == "order"]
        fills = {r["client_order_id"] for r in read_log(log) if r["kind"] == "fill"}
        assert orders and {r["client_order_id"] for r in orders} <= fills
    finally:
        for proc in (venue, feed):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=FAILSAFE_S)


@pytest.mark.parametrize("command", ["replay-feed", "paper-venue"])
@pytest.mark.parametrize("case", ["cert alone", "key open to others", "not a pair"])
def test_listener_tls_options_are_checked_as_runs(tmp_path, authority, stranger, short_data, command, case):
    """--tls-cert without --tls-key, a key open to group or others, a certificate and a
    key that are not a pair: usage errors (exit 2) with `run`'s messages."""
    _, cert, key = authority
    _, _, other_key = stranger
    loose = tmp_path / "loose.pem"
    loose.write_bytes(Path(key).read_bytes())
    os.chmod(loose, 0o644)
    tls = {"cert alone": ["--tls-cert", cert], "key open to others": ["--tls-cert", cert, "--tls-key", loose],
           "not a pair": ["--tls-cert", cert, "--tls-key", other_key]}[case]
    base = (["--data", f"ORCL={short_data}"] if command == "replay-feed"
            else ["--feed", f"ws://{HOST}:{free_port()}"])
    proc = subprocess.run([sys.executable, "-m", "policyc", command, *base, "--listen", f"{HOST}:{free_port()}",
                           *map(str, tls)], capture_output=True, text=True, timeout=FAILSAFE_S)
    assert proc.returncode == 2, proc.stderr
    expected = {"cert alone": "--tls-cert and --tls-key go together",
                "key open to others": f"{loose} is open to group or others (mode 0644)",
                "not a pair": "are not a PEM certificate and its private key"}[case]
    assert expected in proc.stderr
