"""The control plane's security without sockets (runtime/live/security.py): credentials
and roles, constant-time comparison, the second factor and its replay protection, the
per-peer back-off, the failure summary, URLs with credentials, and the TLS contexts.
tests/test_security_loopback.py shows the same over loopback."""
import hashlib
import os
import secrets
import ssl

import pyotp
import pytest

from policyc.runtime.live import security as S
from policyc.runtime.live.security import (AuthLimiter, Credentials, FailureSummary, Guard, SecurityError,
                                           TotpVerifier)


class Clock:
    """A clock a test moves (s)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def private(path, text: str, mode: int = 0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


MODEL, OPERATOR, VIEWER = (secrets.token_hex(16) for _ in range(3))
MODEL_ID, OPERATOR_ID, VIEWER_ID = (S.Identity(role, S.fingerprint(token))
                                   for role, token in (("model", MODEL), ("operator", OPERATOR), ("viewer", VIEWER)))


@pytest.fixture
def creds():
    return Credentials([("model", MODEL, "m"), ("operator", OPERATOR, "o"), ("viewer", VIEWER, "v")])


# ---- tokens and files ----------------------------------------------------------------
def test_tokens_need_128_bits_and_the_refusal_never_shows_the_token():
    assert S.check_token("a" * 32, "f") and S.check_token("A_" * 11, "f")  # 32 hex digits, 22 base64url
    for weak in ("a" * 31, "G" * 21, "hunter2"):
        with pytest.raises(SecurityError, match="too weak; at least 128 bits") as err:
            S.check_token(weak, "the file t")
        assert weak not in str(err.value) and "the file t" in str(err.value)
    with pytest.raises(SecurityError, match="printable ASCII without spaces"):
        S.check_token("a" * 20 + " " + "b" * 20, "f")


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_secret_file_open_to_group_or_others_is_refused_with_the_fix(tmp_path, mode):
    path = private(tmp_path / "creds", f"model {MODEL}\n", mode)
    with pytest.raises(SecurityError, match=f"open to group or others .*chmod 600 {path}"):
        S.load_credentials(credentials_file=path)
    os.chmod(path, 0o600)
    assert S.load_credentials(credentials_file=path).roles() == {"model"}
    with pytest.raises(SecurityError, match="cannot read"):
        S.read_private(tmp_path / "missing")


def test_credentials_file_per_role_files_and_environment(tmp_path):
    second_operator = secrets.token_urlsafe(32)
    creds_file = private(tmp_path / "creds", f"# who may do what\n\noperator {OPERATOR}\n  operator {second_operator}  \n")
    model_file = private(tmp_path / "model", f"\n{MODEL}\n")
    creds = S.load_credentials({"model": model_file, "viewer": None}, creds_file,
                               environ={"POLICYC_VIEWER_TOKEN": VIEWER, "PATH": "/bin"})
    assert creds.authenticate(f"Bearer {OPERATOR}") == creds.authenticate(f"Bearer {second_operator}") == "operator"
    assert creds.authenticate(f"Bearer {MODEL}") == "model" and creds.authenticate(f"Bearer {VIEWER}") == "viewer"
    assert creds.fingerprints() == {"model": [S.fingerprint(MODEL)], "viewer": [S.fingerprint(VIEWER)],
                                    "operator": [S.fingerprint(OPERATOR), S.fingerprint(second_operator)]}
    assert S.load_credentials(environ=None).roles() == frozenset()


def test_a_token_given_twice_is_refused_even_across_roles(tmp_path):
    path = private(tmp_path / "creds", f"model {MODEL}\noperator {MODEL}\n")
    with pytest.raises(SecurityError, match=r"creds:2: the same token is also given by .*creds:1") as err:
        S.load_credentials(credentials_file=path)
    assert MODEL not in str(err.value)
    with pytest.raises(SecurityError, match="POLICYC_OPERATOR_TOKEN: the same token"):
        S.load_credentials({"model": private(tmp_path / "m", MODEL)}, environ={"POLICYC_OPERATOR_TOKEN": MODEL})


@pytest.mark.parametrize("text, error", [
    (f"admin {MODEL}\n", "unknown role 'admin'"),
    (f"model {MODEL} extra\n", "expected `ROLE TOKEN`"),
    (f"{MODEL}\n", "expected `ROLE TOKEN`"),
    ("viewer short\n", "too weak"),
], ids=["unknown role", "extra field", "no role", "weak token"])  # ids without the random token: the same in every process
def test_a_bad_credentials_line_is_refused_by_its_number_without_echoing_it(tmp_path, text, error):
    path = private(tmp_path / "creds", "# first\n" + text)
    with pytest.raises(SecurityError, match=error) as err:
        S.load_credentials(credentials_file=path)
    assert f"creds:2" in str(err.value) and MODEL not in str(err.value) and "short" not in str(err.value)


def test_an_empty_token_file_is_refused(tmp_path):
    with pytest.raises(SecurityError, match="is empty"):
        S.load_credentials({"model": private(tmp_path / "m", "  \n")})


# ---- authentication --------------------------------------------------------------------
def test_authenticate_finds_the_role_of_the_exact_token_only(creds):
    assert creds.authenticate(f"Bearer {OPERATOR}") == "operator"
    assert creds.authenticate(f"bearer {VIEWER}") == "viewer"  # the scheme's case is free (RFC 7235)
    for wrong in (None, "", OPERATOR, f"Basic {OPERATOR}", f"Bearer {OPERATOR[:-1]}", f"Bearer {OPERATOR}x",
                  f"Bearer  {OPERATOR}", "Bearer ", f"Bearer {OPERATOR.upper()}"):
        assert creds.authenticate(wrong) is None, wrong


def test_authenticate_compares_with_every_token_whichever_matches(creds, monkeypatch):
    """No early exit: a match on the first token costs what a miss costs, so timing
    tells nothing; and the comparisons are of fixed-length digests, not the tokens."""
    seen = []
    real = S.hmac.compare_digest
    monkeypatch.setattr(S.hmac, "compare_digest", lambda a, b: seen.append((len(a), len(b))) or real(a, b))
    for header in (f"Bearer {MODEL}", f"Bearer {VIEWER}", "Bearer nope", None):
        seen.clear()
        creds.authenticate(header)
        assert seen == [(32, 32)] * 3, header


def test_no_token_is_in_the_repr_of_credentials_or_totp(creds):
    secret = pyotp.random_base32()
    text = repr(creds) + repr(TotpVerifier(secret)) + repr(Guard(creds, TotpVerifier(secret)).session_fields())
    for token in (MODEL, OPERATOR, VIEWER, secret):
        assert token not in text
    assert S.fingerprint(OPERATOR) in text and S.fingerprint(secret) in text


def test_a_fingerprint_is_the_start_of_the_sha256():
    assert S.fingerprint("abc") == hashlib.sha256(b"abc").hexdigest()[:16] == "ba7816bf8f01cfea"


# ---- the second factor -----------------------------------------------------------------
SECRET = pyotp.random_base32()


def test_totp_accepts_a_code_once_and_the_neighbouring_steps():
    clock = Clock()
    totp, codes = TotpVerifier(SECRET, clock, free_failures=10), pyotp.TOTP(SECRET)  # no lock-out here
    assert totp.verify(codes.at(clock.now - 30)) == (True, "ok")   # a step behind: the phone's clock is late
    assert totp.verify(codes.at(clock.now - 30)) == (False, "replayed")
    assert totp.verify(codes.at(clock.now)) == (True, "ok")
    assert totp.verify(codes.at(clock.now)) == (False, "replayed")
    assert totp.verify(codes.at(clock.now - 30)) == (False, "replayed")  # an older step after a newer one
    clock.now += 30
    assert totp.verify(codes.at(clock.now + 30)) == (True, "ok")   # a step ahead
    assert totp.verify(codes.at(clock.now)) == (False, "replayed")  # older than the one just used
    clock.now += 90
    assert totp.verify(codes.at(clock.now - 60)) == (False, "wrong")  # two steps behind: too old
    assert totp.verify(codes.at(clock.now)) == (True, "ok")
    assert totp.verify(None) == totp.verify("") == totp.verify(123456) == (False, "missing")


def test_wrong_codes_lock_the_second_factor_with_a_doubling_backoff():
    clock = Clock()
    totp, codes = TotpVerifier(SECRET, clock), pyotp.TOTP(SECRET)
    wrong = str((int(codes.at(clock.now)) + 1) % 10**6).zfill(6)
    for _ in range(3):
        assert totp.verify(wrong) == (False, "wrong")
    assert totp.verify(codes.at(clock.now)) == (False, "locked for 1 s after wrong codes")  # even the right one
    clock.now += 1
    assert totp.verify(wrong) == (False, "wrong")
    assert totp.verify(codes.at(clock.now))[1] == "locked for 2 s after wrong codes"
    clock.now += 2
    assert totp.verify(codes.at(clock.now)) == (True, "ok")
    assert totp.verify(wrong) == (False, "wrong")  # the good code cleared the count: free failures again
    assert totp.verify(wrong) == (False, "wrong")


def test_a_totp_secret_file_must_be_private_base32_and_128_bits(tmp_path):
    spaced = " ".join(SECRET[i:i + 4] for i in range(0, len(SECRET), 4)).lower()
    assert S.read_totp_secret(private(tmp_path / "t", spaced + "\n")) == SECRET
    with pytest.raises(SecurityError, match="too weak; at least 128 bits"):
        S.read_totp_secret(private(tmp_path / "t", "JBSWY3DPEHPK3PXP"))  # 80 bits
    with pytest.raises(SecurityError, match="does not hold a base32 TOTP secret"):
        S.read_totp_secret(private(tmp_path / "t", "not base32 at all 0189!"))
    if os.name == "posix":
        with pytest.raises(SecurityError, match="chmod 600"):
            S.read_totp_secret(private(tmp_path / "t", SECRET, 0o644))


# ---- brute force -----------------------------------------------------------------------
def test_the_backoff_starts_after_the_free_failures_doubles_and_is_capped():
    clock = Clock(0.0)
    limiter = AuthLimiter(clock=clock)
    for _ in range(S.FREE_FAILURES - 1):
        limiter.failed("10.0.0.1")
        assert limiter.retry_after("10.0.0.1") == 0
    waits = []
    for _ in range(10):
        limiter.failed("10.0.0.1")
        waits.append(limiter.retry_after("10.0.0.1"))
        clock.now += waits[-1]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert limiter.retry_after("10.0.0.2") == 0  # per peer
    clock.now += S.FORGET_AFTER_S
    assert limiter.retry_after("10.0.0.1") == 0
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 0  # forgotten: free failures again


def test_the_limiter_remembers_a_bounded_number_of_peers():
    clock = Clock(0.0)
    limiter = AuthLimiter(free_failures=1, clock=clock, max_peers=3)
    for k in range(10):
        clock.now += 0.001
        limiter.failed(f"10.0.0.{k}")
    assert len(limiter._peers) == 3 and limiter.retry_after("10.0.0.9") > 0 and limiter.retry_after("10.0.0.0") == 0


@pytest.mark.parametrize("address, key", [
    (("192.0.2.7", 5123), "192.0.2.7"),
    (("2001:db8:1:2:aaaa::1", 5123, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:ffff::9", 1), "2001:db8:1:2::/64"),
    (("::ffff:192.0.2.7", 1, 0, 0), "192.0.2.7"),
    (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
    ("unix-socket", "unix-socket"),
])
def test_peers_are_counted_by_address_and_ipv6_by_its_64(address, key):
    assert S.peer_key(address) == key


def test_failures_are_summarised_at_most_once_per_interval():
    clock = Clock(0.0)
    summary, records = FailureSummary(60.0, clock), []
    for k in range(1000):
        clock.now = k * 0.5  # 500 s of failures, from 30 peers
        summary.add(f"10.0.0.{k % 30}")
        records.append(summary.take())
    records = [r for r in records if r is not None]
    assert len(records) == 9  # the first at once, then one per 60 s
    assert records[0] == {"interval_s": 0.0, "failures": 1, "peers": [{"peer": "10.0.0.0", "count": 1}],
                          "other_peers": 0}
    assert records[1]["failures"] == 120 and len(records[1]["peers"]) == S.SUMMARY_PEERS
    assert records[1]["other_peers"] == 10 and records[1]["interval_s"] == 60.0
    last = summary.take(force=True)
    assert sum(r["failures"] for r in records) + last["failures"] == 1000
    assert summary.take(force=True) is None


def test_a_summary_counts_a_bounded_number_of_peers_one_by_one():
    clock = Clock(0.0)
    summary = FailureSummary(60.0, clock, max_peers=50)
    for k in range(1000):
        summary.add(f"10.0.{k // 256}.{k % 256}")
    assert len(summary._counts) == 50  # the memory a flood of addresses can take
    record = summary.take()
    assert record["failures"] == 1000 and record["other_peers"] == 50 - S.SUMMARY_PEERS


# ---- the guard -------------------------------------------------------------------------
def test_each_role_is_admitted_to_its_own_port_only(creds):
    guard = Guard(creds)
    assert guard.admit("intents", "p", [f"Bearer {MODEL}"]).identity == S.Identity("model", S.fingerprint(MODEL))
    assert guard.admit("control", "p", [f"Bearer {OPERATOR}"]).identity.role == "operator"
    assert guard.admit("control", "p", [f"Bearer {VIEWER}"]).identity.role == "viewer"
    assert guard.admit("control", "p", [f"Bearer {MODEL}"]) == S.Admission(None, "a model credential may not use "
                                                                                "the control port")
    assert guard.admit("intents", "p", [f"Bearer {OPERATOR}"]).reason == "an operator credential may not use the " \
                                                                         "intents port"
    assert guard.admit("intents", "q", [f"Bearer {VIEWER}"]).identity is None
    assert guard.admit("intents", "q", [f"Bearer {MODEL}"] * 2) == S.Admission(None, "wrong or missing token")
    assert guard.admit("intents", "q", []).reason == "wrong or missing token"


def test_a_peer_in_its_backoff_is_refused_even_with_the_right_token_but_an_operator_may_still_halt(creds):
    """A guesser on the operator's own address (the same host, an ssh tunnel) must not keep
    the kill switch out of reach: in back-off, an operator's token opens a connection
    that may ask for the status and halt, nothing else; every other token is refused."""
    clock = Clock(0.0)
    guard = Guard(creds, TotpVerifier(SECRET, clock), limiter=AuthLimiter(clock=clock),
                  summary=FailureSummary(clock=clock))
    for _ in range(S.FREE_FAILURES):
        assert guard.admit("control", "evil", ["Bearer x"]).reason == "wrong or missing token"
    refused = guard.admit("control", "evil", [f"Bearer {VIEWER}"])
    assert refused == S.Admission(None, "too many failed authentications; retry in 1 s")
    assert guard.admit("intents", "evil", [f"Bearer {MODEL}"]).identity is None
    restricted = guard.admit("control", "evil", [f"Bearer {OPERATOR}"]).identity
    assert restricted.role == "operator" and restricted.halt_only
    assert guard.check(restricted, '{"type": "halt"}').refusal is None
    assert guard.check(restricted, '{"type": "status"}').refusal is None
    code = pyotp.TOTP(SECRET).at(clock.now)
    refusal = guard.check(restricted, f'{{"type": "resume", "totp": "{code}"}}').refusal
    assert refusal["code"] == "forbidden" and "back-off" in refusal["message"]
    assert guard.admit("control", "good", [f"Bearer {OPERATOR}"]).identity.halt_only is False
    clock.now += 1
    assert guard.admit("control", "evil", [f"Bearer {OPERATOR}"]).identity.halt_only is False
    assert guard.summary.take()["peers"] == [{"peer": "evil", "count": S.FREE_FAILURES + 3}]


def test_what_each_role_may_send_on_the_control_port(creds):
    clock = Clock()
    guard, codes = Guard(creds, TotpVerifier(SECRET, clock)), pyotp.TOTP(SECRET)
    ok = lambda identity, frame: guard.check(identity, frame).refusal is None  # noqa: E731
    assert ok(VIEWER_ID, '{"type": "status"}') and ok(OPERATOR_ID, b'{"type": "status"}')
    assert ok(OPERATOR_ID, '{"type": "halt", "reason": "x"}')  # no second factor to stop
    for kind in ("halt", "resume", "flatten"):
        check = guard.check(VIEWER_ID, f'{{"type": "{kind}"}}')
        assert check.refusal == {"type": "error", "code": "forbidden", "message": "a viewer may only ask for the status"}
    assert not ok(MODEL_ID, '{"type": "halt"}')
    assert guard.check(OPERATOR_ID, '{"type": "resume"}').refusal["message"] == \
        "`resume` needs a good TOTP code in `totp`: missing"
    assert not ok(OPERATOR_ID, '{"type": "launch_rockets"}')  # any other change of state: guarded by default
    assert ok(OPERATOR_ID, f'{{"type": "flatten", "totp": "{codes.at(clock.now)}"}}')
    assert ok(VIEWER_ID, "not json") and ok(VIEWER_ID, "[1]")  # the protocol refuses these, with its own words


def test_without_a_totp_secret_only_halt_changes_state(creds):
    guard = Guard(creds)
    assert guard.check(OPERATOR_ID, '{"type": "halt"}').refusal is None
    assert guard.check(OPERATOR_ID, '{"type": "resume", "totp": "123456"}').refusal["message"] == \
        "`resume` needs a TOTP code and this run has no TOTP secret"


def test_every_control_action_has_a_record_but_a_status_read(creds):
    guard = Guard(creds, TotpVerifier(SECRET, Clock()))
    status = {"type": "status", "halted": True}
    assert guard.check(OPERATOR_ID, '{"type": "halt"}').record(status) == {
        "role": "operator", "credential": S.fingerprint(OPERATOR), "action": "halt", "result": "done"}
    assert guard.check(VIEWER_ID, '{"type": "resume"}').record({}) == {
        "role": "viewer", "credential": S.fingerprint(VIEWER), "action": "resume",
        "result": "refused: a viewer may only ask for the status"}
    assert guard.check(OPERATOR_ID, '{"type": "resume", "totp": "000000"}').record({})["result"] in (
        "refused: `resume` needs a good TOTP code in `totp`: wrong", "refused: `resume` needs a good TOTP code in "
                                                                     "`totp`: replayed")
    assert guard.check(VIEWER_ID, "junk").record({"type": "error", "code": "bad_message"}) == {
        "role": "viewer", "credential": S.fingerprint(VIEWER), "action": "?", "result": "error: bad_message"}
    assert guard.check(VIEWER_ID, '{"type": "status"}').record(status) is None
    assert guard.check(OPERATOR_ID, '{"type": "' + "x" * 200 + '"}').action == "?"  # never a long text into the log


# ---- URLs -------------------------------------------------------------------------------
@pytest.mark.parametrize("url, what", [
    ("wss://user:hunter2secret@feed.example:9443/ws", "a user name or password"),
    ("ws://hunter2secret@127.0.0.1:8765", "a user name or password"),
    ("wss://feed.example/ws?symbol=X&api_key=hunter2secret", "the query parameter 'api_key'"),
    ("wss://feed.example/ws?access_token=hunter2secret", "the query parameter 'access_token'"),
    ("ws://[hunter2secret@127.0.0.1:8765", "a user name or password"),  # too malformed to parse: still refused
])
def test_a_url_with_a_credential_is_refused_and_the_refusal_masks_it(url, what):
    with pytest.raises(SecurityError, match=what) as err:
        S.check_url(url)
    assert "hunter2secret" not in str(err.value) and "***" in str(err.value)
    assert "hunter2secret" not in S.redact_url(url)


def test_a_url_without_a_credential_passes():
    for url in ("ws://127.0.0.1:8765", "wss://stream.example:9443/ws/btcusdt@trade", "wss://h/ws?symbol=BTC&depth=5"):
        assert S.check_url(url) == url


def test_the_feed_and_venue_credential_comes_from_a_file_or_a_variable(tmp_path):
    path = private(tmp_path / "auth", "Bearer abc.def-123\n")
    assert S.read_client_authorization(path) == "Bearer abc.def-123"
    assert S.read_client_authorization(None, "V", {"V": " Basic dXNlcjpwdw== "}) == "Basic dXNlcjpwdw=="
    assert S.read_client_authorization(None, "V", {}) is None and S.read_client_authorization() is None
    with pytest.raises(SecurityError, match="expected one Authorization header value"):
        S.read_client_authorization(private(tmp_path / "auth", "Bearer a\nX-Other: b"))


# ---- TLS contexts -----------------------------------------------------------------------
def test_the_client_context_verifies_by_default_and_says_what_a_bad_ca_file_is(tmp_path):
    context = S.client_context()
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(SecurityError, match="holds no PEM certificate"):
        S.client_context(private(tmp_path / "ca.pem", "nothing here"))
    with pytest.raises(SecurityError, match="cannot read"):
        S.client_context(tmp_path / "missing.pem")


def test_the_server_context_refuses_a_key_open_to_others_or_not_a_key(tmp_path):
    cert, key = private(tmp_path / "c.pem", "x"), private(tmp_path / "k.pem", "y", 0o644)
    if os.name == "posix":
        with pytest.raises(SecurityError, match=f"chmod 600 {key}"):
            S.server_context(cert, key)
    os.chmod(key, 0o600)
    with pytest.raises(SecurityError, match="are not a PEM certificate and its private key"):
        S.server_context(cert, key)
    with pytest.raises(SecurityError, match="holds no PEM certificate"):
        S.cert_fingerprint(cert)


def test_a_tls_error_is_said_in_words():
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate in certificate chain"
    assert S.describe_tls_error(exc, "venue.example", 443) == (
        "the TLS certificate of venue.example:443 is not trusted (self-signed certificate in certificate chain); "
        "give its certificate authority with --ca-file")
    other = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    other.reason = "WRONG_VERSION_NUMBER"
    assert S.describe_tls_error(other, "h", 1) == "TLS handshake with h:1 failed (WRONG_VERSION_NUMBER)"
