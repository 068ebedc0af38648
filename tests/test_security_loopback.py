"""The control plane's security over loopback sockets, without the runner: a listener
made as `run`'s is (websockets `serve` with `open_timeout=HANDSHAKE_TIMEOUT_S`, the
listeners' TLS context, `security.admit` and `Guard.check` before each control
message) shows roles, the second factor, TLS in both directions, the handshake
timeout, the brute-force back-off, and that no secret reaches what is written."""
import asyncio
import datetime
import ipaddress
import json
import math
import os
import secrets
import ssl
import time

import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from policyc.runtime.live import security as S
from policyc.runtime.live import transport

HOST = "127.0.0.1"


# ---- a certificate authority of the test's own -----------------------------------------------
def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_authority(folder, label: str):
    """A CA and a server certificate it signs for 127.0.0.1 and localhost, as PEM files
    in `folder`: (ca.pem, cert.pem, key.pem); the keys are private (mode 600)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(_name(f"{label} test CA")).issuer_name(_name(f"{label} test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(HOST))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(paths[2], 0o600)
    return tuple(str(p) for p in paths)


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("trusted"), "trusted")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """Another authority, which nobody here trusts."""
    return make_authority(tmp_path_factory.mktemp("stranger"), "stranger")


# ---- a listener as run makes one ---------------------------------------------------------------
MODEL, OPERATOR, VIEWER = (secrets.token_hex(16) for _ in range(3))
TOTP_SECRET = pyotp.random_base32()


class Listener:
    """One port guarded as `run` guards it. Control messages change `halted`; `log` gets
    what the decision log would: an `access` record per control action and the summaries of
    failed authentications, as (kind, fields)."""

    def __init__(self, guard: S.Guard, port: str, tls: ssl.SSLContext | None = None):
        self.guard, self.port, self.tls = guard, port, tls
        self.halted, self.log = False, []

    def _summary(self, force: bool = False) -> None:
        record = self.guard.summary.take(force)
        if record is not None:
            self.log.append(("auth_failures", record))

    async def handler(self, ws):
        identity = await S.admit(ws, self.guard, self.port)
        self._summary()
        if identity is None:
            return
        async for frame in ws:
            if self.port == "intents":
                reply = {"type": "ack", "id": json.loads(frame).get("id")}
            else:
                check = self.guard.check(identity, frame)
                reply = check.refusal or self.control(json.loads(frame))
                record = check.record(reply)
                if record is not None:
                    self.log.append(("access", record))
            await ws.send(json.dumps(reply))

    def control(self, msg: dict) -> dict:
        if msg["type"] == "halt":
            self.halted = True
        elif msg["type"] == "resume":
            self.halted = False
        return {"type": "status", "halted": self.halted}

    async def __aenter__(self):
        self.server = await serve(self.handler, HOST, 0, ssl=self.tls, open_timeout=S.HANDSHAKE_TIMEOUT_S,
                                  compression=None)
        self.url = f"{'wss' if self.tls else 'ws'}://{HOST}:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()
        self._summary(force=True)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def ask(url: str, token: str, *messages: dict, **kwargs) -> list[dict]:
    async with ws_connect(url, additional_headers=bearer(token), **kwargs) as ws:
        answers = []
        for msg in messages:
            await ws.send(json.dumps(msg))
            answers.append(json.loads(await ws.recv()))
        return answers


async def closed_with(url: str, token: str, **kwargs) -> tuple[int, str]:
    """The close code and reason a connection with `token` gets before any message."""
    async with ws_connect(url, additional_headers=bearer(token), **kwargs) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    return closed.value.rcvd.code, closed.value.rcvd.reason


def guard(totp_clock=time.time) -> S.Guard:
    creds = S.Credentials([("model", MODEL, "m"), ("operator", OPERATOR, "o"), ("viewer", VIEWER, "v")])
    return S.Guard(creds, S.TotpVerifier(TOTP_SECRET, totp_clock))


# ---- roles and the second factor -------------------------------------------------------------
def test_a_model_credential_is_refused_on_control_and_a_viewer_cannot_halt():
    async def main():
        async with Listener(guard(), "control") as control, Listener(guard(), "intents") as intents:
            refused = await closed_with(control.url, MODEL)
            viewer = await ask(control.url, VIEWER, {"type": "status"}, {"type": "halt"})
            operator_on_intents = await closed_with(intents.url, OPERATOR)
            model = await ask(intents.url, MODEL, {"type": "intent", "id": "a1"})
            return refused, viewer, operator_on_intents, model, control.halted, control.log

    refused, viewer, operator_on_intents, model, halted, log = asyncio.run(main())
    assert refused == (1008, "a model credential may not use the control port")
    assert viewer[0] == {"type": "status", "halted": False}
    assert viewer[1] == {"type": "error", "code": "forbidden", "message": "a viewer may only ask for the status"}
    assert operator_on_intents == (1008, "an operator credential may not use the intents port")
    assert model == [{"type": "ack", "id": "a1"}] and halted is False
    assert ("access", {"role": "viewer", "credential": S.fingerprint(VIEWER), "action": "halt",
                        "result": "refused: a viewer may only ask for the status"}) in log


def test_resume_needs_a_fresh_totp_code_and_halt_does_not():
    codes = pyotp.TOTP(TOTP_SECRET)

    async def main():
        async with Listener(guard(), "control") as control:
            code = codes.now()
            wrong = str((int(code) + 1) % 10**6).zfill(6)
            answers = await ask(control.url, OPERATOR, {"type": "halt"}, {"type": "resume"},
                                {"type": "resume", "totp": wrong}, {"type": "resume", "totp": code},
                                {"type": "halt"}, {"type": "resume", "totp": code})
            return answers, control.log

    (halt, missing, wrong, right, halt_again, replayed), log = asyncio.run(main())
    assert halt["halted"] is True and halt_again["halted"] is True
    assert missing["message"] == "`resume` needs a good TOTP code in `totp`: missing"
    assert wrong["message"] == "`resume` needs a good TOTP code in `totp`: wrong"
    assert right == {"type": "status", "halted": False}
    assert replayed["code"] == "forbidden" and replayed["message"].endswith(": replayed")
    assert [(r["action"], r["result"].split(":")[0]) for kind, r in log if kind == "access"] == [
        ("halt", "done"), ("resume", "refused"), ("resume", "refused"), ("resume", "done"), ("halt", "done"),
        ("resume", "refused")]
    assert {r["role"] for _, r in log} == {"operator"}


# ---- TLS ----------------------------------------------------------------------------------
def test_a_wss_listener_serves_a_client_that_trusts_its_authority(authority, stranger):
    ca, cert, key = authority

    async def main():
        async with Listener(guard(), "control", S.server_context(cert, key)) as control:
            trusted = await ask(control.url, VIEWER, {"type": "status"}, ssl=S.client_context(ca))
            failures = []
            for context in (S.client_context(), S.client_context(stranger[0])):  # the system's CAs; another CA
                with pytest.raises(ssl.SSLCertVerificationError) as err:
                    await ask(control.url, VIEWER, {"type": "status"}, ssl=context)
                failures.append(err.value.verify_message)
            with pytest.raises(Exception):  # plain WebSocket to a TLS port: no handshake
                await ask(control.url.replace("wss://", "ws://"), VIEWER, {"type": "status"}, open_timeout=2)
            return control.url, trusted, failures

    url, trusted, failures = asyncio.run(main())
    assert url.startswith("wss://") and trusted == [{"type": "status", "halted": False}]
    assert failures == ["unable to get local issuer certificate"] * 2


async def _tls_echo_server(cert, key):
    """A wss feed or venue: sends one message to each client."""
    async def hello(ws):
        await ws.send('{"hello": 1}')
        await ws.wait_closed()

    return await serve(hello, HOST, 0, ssl=S.server_context(cert, key))


def test_the_feed_and_venue_client_verifies_the_certificate_with_the_ca_file(authority, stranger):
    ca, cert, key = authority

    async def main():
        server = await _tls_echo_server(cert, key)
        url = f"wss://{HOST}:{server.sockets[0].getsockname()[1]}"
        got = asyncio.get_running_loop().create_future()
        stream = await transport.connect(url, lambda m: got.done() or got.set_result(m), lambda why: None, ca_file=ca)
        received = await asyncio.wait_for(got, 5)
        stream.close()
        errors = []
        for ca_file in (None, stranger[0]):  # verification is on without --ca-file; another CA is not trusted
            with pytest.raises(ConnectionError) as err:
                await transport.connect(url, lambda m: None, lambda why: None, ca_file=ca_file)
            errors.append(str(err.value))
        plain = await serve(lambda ws: ws.wait_closed(), HOST, 0)
        with pytest.raises(ConnectionError) as err:
            await transport.connect(f"wss://{HOST}:{plain.sockets[0].getsockname()[1]}", lambda m: None,
                                    lambda why: None)
        errors.append(str(err.value))
        for s in (server, plain):
            s.close()
        return received, errors, int(url.rsplit(":", 1)[1])

    received, errors, port = asyncio.run(main())
    assert received == [b'{"hello": 1}']
    assert errors[0] == errors[1] == (f"the TLS certificate of {HOST}:{port} is not trusted (unable to get local "
                                      "issuer certificate); give its certificate authority with --ca-file")
    assert errors[2].startswith(f"TLS handshake with {HOST}:") and "failed (" in errors[2]


def test_the_client_checks_the_host_name_too(authority):
    """A certificate of a trusted authority, for another name: refused."""
    ca, cert, key = authority

    async def main():
        server = await serve(lambda ws: ws.wait_closed(), "127.0.0.2", 0, ssl=S.server_context(cert, key))
        with pytest.raises(ConnectionError) as err:
            await transport.connect(f"wss://127.0.0.2:{server.sockets[0].getsockname()[1]}", lambda m: None,
                                    lambda why: None, ca_file=ca)
        server.close()
        return str(err.value)

    assert "is not trusted (IP address mismatch" in asyncio.run(main())


def test_the_feed_credential_goes_in_a_header_not_the_url():
    seen = []

    async def main():
        async def record(ws):
            seen.append(ws.request.headers.get_all("Authorization"))
            await ws.wait_closed()

        server = await serve(record, HOST, 0)
        stream = await transport.connect(f"ws://{HOST}:{server.sockets[0].getsockname()[1]}", lambda m: None,
                                         lambda why: None, headers=[("Authorization", "Bearer feed-token-1")])
        stream.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert seen == [["Bearer feed-token-1"]]


# ---- brute force --------------------------------------------------------------------------------
def test_a_connection_that_does_not_authenticate_in_time_is_closed():
    """A TCP connection that sends nothing (or its handshake byte by byte) holds no
    listener slot past HANDSHAKE_TIMEOUT_S."""
    async def main():
        async with Listener(guard(), "control") as control:
            port = int(control.url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET / HTTP/1.1\r\n")  # and then nothing
            start = time.monotonic()
            data = await asyncio.wait_for(reader.read(), S.HANDSHAKE_TIMEOUT_S + 5)
            writer.close()
            return time.monotonic() - start, data

    took, data = asyncio.run(main())
    assert S.HANDSHAKE_TIMEOUT_S - 0.5 < took < S.HANDSHAKE_TIMEOUT_S + 2
    assert not data.startswith(b"HTTP/1.1 101")


def test_a_thousand_wrong_tokens_from_one_address_are_slowed(capsys, authority):
    """1,000 wrong tokens as fast as one client can send them over wss: the first
    FREE_FAILURES are checked at loopback speed; after that, the tokens checked per
    second fall to what the doubling back-off allows (all other attempts are refused
    unchecked), while another address is still served. The log gets a few summaries,
    not 1,000 records."""
    ca, cert, key = authority

    async def main():
        async with Listener(guard(), "control", S.server_context(cert, key)) as control:
            context = S.client_context(ca)
            checked, refused = [], 0
            start = time.monotonic()
            for k in range(1000):
                code, reason = await closed_with(control.url, secrets.token_hex(16), ssl=context)
                if reason == "wrong or missing token":
                    checked.append(time.monotonic())
                else:
                    assert reason.startswith("too many failed authentications; retry in ")
                    refused += 1
            total = time.monotonic() - start
            other = await ask(control.url, VIEWER, {"type": "status"}, ssl=context,
                              local_addr=("127.0.0.2", 0))  # another peer
            from_attacker = await closed_with(control.url, VIEWER, ssl=context)  # the right token, the blocked peer
        return checked, refused, total, start, other, from_attacker, control.log

    checked, refused, total, start, other, from_attacker, log = asyncio.run(main())
    free = S.FREE_FAILURES
    backoff_s = total - (checked[free - 1] - start)  # from the last free failure to the end
    before = free / (checked[free - 1] - start)
    after = (len(checked) - free) / backoff_s
    with capsys.disabled():
        print(f"\n1,000 wrong tokens in {total:.2f} s ({1000 / total:,.0f} attempts/s): {free} checked at "
              f"{before:,.0f} tokens/s before the back-off, {len(checked) - free} checked in the {backoff_s:.2f} s "
              f"after it ({after:.2f} tokens/s); {refused} refused unchecked")
    assert refused + len(checked) == 1000
    # waits of 1, 2, 4, ... s after the free failures: k more checks take 2**k - 1 s at least
    assert len(checked) - free <= math.log2(backoff_s / S.FIRST_BACKOFF_S + 1)
    assert before > 20 * after
    assert other == [{"type": "status", "halted": False}]
    assert from_attacker == (1008, from_attacker[1]) and from_attacker[1].startswith("too many failed")
    summaries = [fields for kind, fields in log if kind == "auth_failures"]
    assert len(summaries) <= 2 + total // S.SUMMARY_INTERVAL_S  # the first at once, the rest when the port closes
    assert sum(s["failures"] for s in summaries) == 1001
    assert {p["peer"] for s in summaries for p in s["peers"]} == {HOST}


# ---- secrets stay secret ----------------------------------------------------------------------------
def test_no_secret_reaches_the_log_the_answers_the_errors_or_the_process_list(tmp_path, capfd, authority):
    """Every secret of a session (tokens, the TOTP secret, the TLS key, a password in a
    feed URL) is looked for in everything written: the log as a file, the answers, the
    refusals, the reprs, stdout and stderr, and this process's command line."""
    ca, cert, key = authority
    creds_file = tmp_path / "credentials"
    creds_file.write_text(f"model {MODEL}\noperator {OPERATOR}\nviewer {VIEWER}\n")
    os.chmod(creds_file, 0o600)
    totp_file = tmp_path / "totp"
    totp_file.write_text(TOTP_SECRET)
    os.chmod(totp_file, 0o600)
    url_password = secrets.token_hex(16)
    written = []

    async def main():
        g = S.Guard(S.load_credentials(credentials_file=creds_file), S.TotpVerifier(S.read_totp_secret(totp_file)))
        written.append(json.dumps({"kind": "session", **g.session_fields(), "tls_cert": S.cert_fingerprint(cert)}))
        async with Listener(g, "control", S.server_context(cert, key)) as control:
            context = S.client_context(ca)
            written.extend(json.dumps(a) for a in await ask(
                control.url, OPERATOR, {"type": "status"}, {"type": "halt"},
                {"type": "resume", "totp": pyotp.TOTP(TOTP_SECRET).now()}, ssl=context))
            for token in (MODEL, OPERATOR[:-1], "x"):
                written.append(repr(await closed_with(control.url, token, ssl=context)))
        return control.log, g

    log, g = asyncio.run(main())
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"kind": k, **f}) + "\n" for k, f in log))
    try:
        S.check_url(f"wss://trader:{url_password}@venue.example/ws")
    except S.SecurityError as exc:
        written.append(str(exc))
    written += [repr(g), repr(g.credentials), repr(g.totp), (tmp_path / "log.jsonl").read_text()]
    out, err = capfd.readouterr()
    with open("/proc/self/cmdline", "rb") if os.path.exists("/proc/self/cmdline") else open(os.devnull, "rb") as f:
        written += [out, err, f.read().decode(errors="replace")]
    text = "\n".join(written)
    key_body = "".join(open(key).read().splitlines()[1:-1])
    for name, secret in {"model token": MODEL, "operator token": OPERATOR, "viewer token": VIEWER,
                         "TOTP secret": TOTP_SECRET, "URL password": url_password, "TLS key": key_body[:40]}.items():
        assert secret not in text, f"the {name} was written"
    assert S.fingerprint(OPERATOR) in text and S.fingerprint(TOTP_SECRET) in text  # named by fingerprint
    assert [r["result"] for k, r in log if k == "access"] == ["done", "done"]
