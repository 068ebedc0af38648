"""The control plane's security wired into `policyc run` (docs/security.md): the same
checks as tests/test_security_loopback.py, through the real runner (`LiveRuntime`) and
the real command line: roles, the second factor, `access` and `auth_failures` records
(which replay passes by), the back-off, TLS on the listeners and on the feed, secrets
refused in URLs and kept out of everything `run` writes."""
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyotp
import pytest
from websockets.asyncio.server import serve

from policyc.runtime.journal import replay, session_policy
from policyc.runtime.live import security as S
from policyc.runtime.live.audit import read_log
from policyc.runtime.live.runner import LiveRuntime, RunConfig
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text

from loopback import FAILSAFE_S, HOST, free_port, until, wait_port
from test_live_faults import limits
from test_security_loopback import ask, closed_with, make_authority

#: Long or short at most 100, in orders of at most 100, on intents alone: tests/test_live_faults.py's
#: `LIMITS` template (its other keys where they never bind), so the runner here and `policyc run`
#: load the kernel those tests compile (the same source: limits' values are not code) instead
#: of compiling one of their own. The tests here are about the listeners, not the limits.
POLICY = limits(max_position=100, max_order_qty=100)
MODEL, OPERATOR, VIEWER = (secrets.token_hex(16) for _ in range(3))
TOTP_SECRET = pyotp.random_base32()


@pytest.fixture(scope="module")
def policy():
    return compile_policy(parse_policy_text(POLICY, "guarded.yaml"))


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("trusted"), "trusted")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("stranger"), "stranger")


def guard() -> S.Guard:
    creds = S.Credentials([("model", MODEL, "m"), ("operator", OPERATOR, "o"), ("viewer", VIEWER, "v")])
    return S.Guard(creds, S.TotpVerifier(TOTP_SECRET))


async def _runtime(policy, log, **config):
    """A runtime whose feed and venue are nowhere (they retry): the listeners are what is tested."""
    dead = f"ws://{HOST}:{free_port()}"
    rt = LiveRuntime(policy, RunConfig(dead, dead, log_path=str(log), intents=(HOST, free_port()),
                                       control=(HOST, free_port()), guard=guard(), **config))
    task = asyncio.create_task(rt.run())
    await until(lambda: rt.links["venue"].state != "connecting")  # run() is past its listeners
    return rt, task


# ---- roles and the second factor, through the runner --------------------------------------------
def test_roles_and_the_second_factor_through_the_runner(policy, tmp_path, capfd):
    """A model credential is refused on control (1008), an operator's on intents; a
    viewer's halt is `forbidden`; an operator's halt works without a code; a resume
    without a code, with a wrong one, or with one already used is refused, with a good
    one it works. Each control action but a status is an `access` record, and the log
    still replays with no divergence."""
    log = tmp_path / "log.jsonl"
    codes = pyotp.TOTP(TOTP_SECRET)

    async def main():
        rt, task = await _runtime(policy, log)
        control, intents = f"ws://{HOST}:{rt.config.control[1]}", f"ws://{HOST}:{rt.config.intents[1]}"
        out = {"model_on_control": await closed_with(control, MODEL),
               "operator_on_intents": await closed_with(intents, OPERATOR),
               "viewer": await ask(control, VIEWER, {"type": "status"}, {"type": "halt", "reason": "v"})}
        code = codes.now()
        wrong = str((int(code) + 1) % 10**6).zfill(6)
        out["operator"] = await ask(control, OPERATOR, {"type": "halt", "reason": "op"}, {"type": "resume"},
                                    {"type": "resume", "totp": wrong}, {"type": "resume", "totp": code},
                                    {"type": "halt", "reason": "again"}, {"type": "resume", "totp": code})
        out["halted"] = rt.engine.halted
        rt.stop.set()
        await task
        return out

    out = asyncio.run(main())
    assert out["model_on_control"] == (1008, "a model credential may not use the control port")
    assert out["operator_on_intents"] == (1008, "an operator credential may not use the intents port")
    status, viewer_halt = out["viewer"]
    assert status["type"] == "status" and status["halted"] is False
    assert viewer_halt == {"type": "error", "code": "forbidden", "message": "a viewer may only ask for the status"}
    halt, missing, wrong, right, halt_again, replayed = out["operator"]
    assert halt["type"] == "status" and halt["halted"] is True
    assert missing["code"] == wrong["code"] == replayed["code"] == "forbidden"
    assert missing["message"].endswith(": missing") and wrong["message"].endswith(": wrong")
    assert replayed["message"].endswith(": replayed")
    assert right["type"] == "status" and right["halted"] is False
    assert halt_again["halted"] is True and out["halted"] is True

    records = read_log(log)
    access = [(r["role"], r["credential"], r["action"], r["result"].split(":")[0])
              for r in records if r["kind"] == "access"]
    v, o = S.fingerprint(VIEWER), S.fingerprint(OPERATOR)
    assert access == [("viewer", v, "halt", "refused"), ("operator", o, "halt", "done"),
                      ("operator", o, "resume", "refused"), ("operator", o, "resume", "refused"),
                      ("operator", o, "resume", "done"), ("operator", o, "halt", "done"),
                      ("operator", o, "resume", "refused")]
    assert [r["action"] for r in records if r["kind"] == "control"] == ["halt", "resume", "halt"]  # the core's inputs
    failures = [r for r in records if r["kind"] == "auth_failures"]
    assert sum(r["failures"] for r in failures) == 2 and failures[0]["peers"] == [{"peer": HOST, "count": 1}]
    session = records[0]
    assert session["credentials"] == {"model": [S.fingerprint(MODEL)], "operator": [o], "viewer": [v]}
    assert session["totp_secret"] == S.fingerprint(TOTP_SECRET)
    _, found = replay(records, session_policy)
    assert found == []
    text = log.read_text() + "".join(capfd.readouterr())
    for secret in (MODEL, OPERATOR, VIEWER, TOTP_SECRET):
        assert secret not in text


def test_a_thousand_wrong_tokens_through_the_runner_are_slowed_and_the_log_stays_small(policy, tmp_path, capsys):
    """1,000 wrong tokens as fast as one client can send them, to the runner's intents
    port: the first FREE_FAILURES are checked at loopback speed, later ones at what the
    back-off allows; the log gets a few `auth_failures` records, not 1,000."""
    log = tmp_path / "log.jsonl"

    async def main():
        rt, task = await _runtime(policy, log)
        url = f"ws://{HOST}:{rt.config.intents[1]}"
        records_before = rt.log.seq
        checked, start = [], time.monotonic()
        for _ in range(1000):
            code, reason = await closed_with(url, secrets.token_hex(16))
            assert code == 1008
            if reason == "wrong or missing token":
                checked.append(time.monotonic())
        total = time.monotonic() - start
        grown = rt.log.seq - records_before
        model = await closed_with(url, MODEL)  # the right token, from the peer in its back-off
        rt.stop.set()
        await task
        return checked, total, start, grown, model

    checked, total, start, grown, model = asyncio.run(main())
    free = S.FREE_FAILURES
    before = free / (checked[free - 1] - start)
    after_s = total - (checked[free - 1] - start)
    after = (len(checked) - free) / after_s
    with capsys.disabled():
        print(f"\nrunner: 1,000 wrong tokens in {total:.2f} s ({1000 / total:,.0f} attempts/s); {free} checked at "
              f"{before:,.0f} tokens/s, then {len(checked) - free} in {after_s:.2f} s ({after:.2f} tokens/s); "
              f"the log grew by {grown} records")
    assert before > 20 * after
    assert grown <= 2 + total // S.SUMMARY_INTERVAL_S
    failures = [r for r in read_log(log) if r["kind"] == "auth_failures"]
    assert sum(r["failures"] for r in failures) == 1001 and len(failures) <= 3
    assert not any(r["kind"] == "bad_message" and r.get("source") == "auth" for r in read_log(log))
    assert model[0] == 1008 and model[1].startswith("too many failed authentications")  # refused unchecked


# ---- policyc run, end to end -----------------------------------------------------------------------------------
class Servers:
    """A feed and a venue on 127.0.0.1 in a thread of their own, each recording the
    Authorization headers it was sent; the feed on wss when given a TLS context."""

    def __init__(self, feed_tls=None):
        self.feed_tls, self.headers = feed_tls, []
        self.feed_port, self.venue_port = free_port(), free_port()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        assert self.ready.wait(FAILSAFE_S)

    async def _main(self):
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()

        async def hold(ws):
            self.headers.append(ws.request.headers.get_all("Authorization"))
            await ws.wait_closed()

        async with serve(hold, HOST, self.feed_port, ssl=self.feed_tls), serve(hold, HOST, self.venue_port):
            self.ready.set()
            await self.stop.wait()

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(FAILSAFE_S)


def _private(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def _policy_file(tmp_path) -> str:
    path = tmp_path / "guarded.yaml"
    path.write_text(POLICY)
    return str(path)


def _run(tmp_path, *options, feed=None, venue=None):
    return subprocess.Popen([sys.executable, "-m", "policyc", "run", _policy_file(tmp_path), "--feed", feed,
                             "--venue", venue, *map(str, options)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_policyc_run_with_secrets_writes_none_of_them(tmp_path, authority):
    """`run` with tokens of three roles, a TOTP secret, a feed credential and its
    listeners on wss: a client trusting the test CA halts and resumes (with a code); the
    feed gets its Authorization header; the session record names each secret by its
    fingerprint; no secret is in the log, stdout or stderr; the log replays."""
    ca, cert, key = authority
    feed_auth = f"Bearer {secrets.token_hex(16)}"
    files = {"--model-token-file": _private(tmp_path / "model", MODEL),
             "--credentials-file": _private(tmp_path / "creds", f"# people\noperator {OPERATOR}\nviewer {VIEWER}\n"),
             "--totp-secret-file": _private(tmp_path / "totp", TOTP_SECRET),
             "--feed-auth-file": _private(tmp_path / "feed-auth", feed_auth)}
    log, control, intents = tmp_path / "d.jsonl", free_port(), free_port()
    servers = Servers()
    try:
        proc = _run(tmp_path, *[x for pair in files.items() for x in pair], "--tls-cert", cert, "--tls-key", key,
                    "--control", f"{HOST}:{control}", "--intents", f"{HOST}:{intents}", "--log", log,
                    feed=f"ws://{HOST}:{servers.feed_port}", venue=f"ws://{HOST}:{servers.venue_port}")
        try:
            wait_port(control, proc=proc)
            url, context = f"wss://{HOST}:{control}", S.client_context(ca)

            async def drive():
                answers = await ask(url, OPERATOR, {"type": "halt", "reason": "t"},
                                    {"type": "resume", "totp": pyotp.TOTP(TOTP_SECRET).now()}, ssl=context)
                refused = [await closed_with(url, token, ssl=context) for token in (MODEL, "x" * 32)]
                viewer = await ask(url, VIEWER, {"type": "status"}, ssl=context)
                return answers, refused, viewer

            (halt, resumed), refused, viewer = asyncio.run(drive())
            deadline = time.monotonic() + FAILSAFE_S
            while len(servers.headers) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=FAILSAFE_S)
    finally:
        servers.close()
    assert proc.returncode == 0, err[-2000:]
    assert halt["halted"] is True and resumed["halted"] is False and viewer[0]["type"] == "status"
    assert [code for code, _ in refused] == [1008, 1008]
    assert [feed_auth] in servers.headers and [] in servers.headers  # the feed's header; the venue has none
    records = read_log(log)
    session = records[0]
    assert session["credentials"] == {"model": [S.fingerprint(MODEL)], "operator": [S.fingerprint(OPERATOR)],
                                      "viewer": [S.fingerprint(VIEWER)]}
    assert session["totp_secret"] == S.fingerprint(TOTP_SECRET) and session["tls_cert"] == S.cert_fingerprint(cert)
    assert [(r["action"], r["result"]) for r in records if r["kind"] == "access"] == [("halt", "done"),
                                                                                       ("resume", "done")]
    assert sum(r["failures"] for r in records if r["kind"] == "auth_failures") == 2
    written = log.read_text() + out + err
    key_body = "".join(Path(key).read_text().splitlines()[1:-1])
    for name, secret in {"model token": MODEL, "operator token": OPERATOR, "viewer token": VIEWER,
                         "TOTP secret": TOTP_SECRET, "feed credential": feed_auth.split()[1],
                         "TLS key": key_body[:40]}.items():
        assert secret not in written, f"the {name} was written"
    check = subprocess.run([sys.executable, "-m", "policyc", "replay", str(log)], capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.startswith("OK "), check.stdout + check.stderr


def test_policyc_run_says_clearly_that_a_wss_feed_is_not_trusted(tmp_path, authority, stranger):
    """A wss feed whose certificate the --ca-file authority did not sign: the feed link
    retries and stderr says why, naming --ca-file."""
    ca, _, _ = authority
    _, cert, key = stranger
    servers = Servers(feed_tls=S.server_context(cert, key))
    try:
        proc = _run(tmp_path, "--ca-file", ca, "--duration", "8", "--log", tmp_path / "d.jsonl",
                    feed=f"wss://{HOST}:{servers.feed_port}", venue=f"ws://{HOST}:{servers.venue_port}")
        out, err = proc.communicate(timeout=FAILSAFE_S)
    finally:
        servers.close()
    assert proc.returncode == 0, err[-2000:]
    assert (f"feed wss://{HOST}:{servers.feed_port}: cannot connect (the TLS certificate of {HOST}:"
            f"{servers.feed_port} is not trusted (unable to get local issuer certificate); give its certificate "
            "authority with --ca-file); retrying") in err


@pytest.mark.parametrize("url", ["wss://trader:{secret}@venue.example/ws", "wss://venue.example/ws?api_key={secret}"])
def test_a_secret_in_a_url_is_refused_and_not_echoed(tmp_path, url):
    secret = secrets.token_hex(16)
    proc = _run(tmp_path, feed=url.format(secret=secret), venue=f"ws://{HOST}:9")
    out, err = proc.communicate(timeout=FAILSAFE_S)
    assert proc.returncode == 2
    assert secret not in out + err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith("policyc run: error: argument --feed: ") or "argument --feed" in line
    assert "***" in line and "environment variable" in line


@pytest.mark.parametrize("case, expected", [
    ("control without an operator", "--control needs an operator or viewer credential"),
    ("intents without a model", "--intents needs a model credential"),
    ("open token file", "is open to group or others (mode 0644)"),
    ("weak token", "bits is too weak"),
    ("cert without key", "--tls-cert and --tls-key go together"),
    ("same token twice", "the same token is also given by"),
])
def test_run_refuses_unusable_secrets_as_usage_errors(tmp_path, case, expected):
    model = _private(tmp_path / "model", MODEL)
    options = {"control without an operator": ["--model-token-file", model, "--control", f"{HOST}:9"],
               "intents without a model": ["--operator-token-file", model, "--intents", f"{HOST}:9"],
               "open token file": ["--model-token-file", model],
               "weak token": ["--model-token-file", _private(tmp_path / "weak", "abc123")],
               "cert without key": ["--tls-cert", model],
               "same token twice": ["--model-token-file", model, "--operator-token-file", model]}[case]
    if case == "open token file":
        os.chmod(model, 0o644)
    proc = _run(tmp_path, *options, feed=f"ws://{HOST}:9", venue=f"ws://{HOST}:9")
    out, err = proc.communicate(timeout=FAILSAFE_S)
    assert proc.returncode == 2 and expected in err, err
    assert MODEL not in out + err
