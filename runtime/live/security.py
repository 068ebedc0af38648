"""The control plane's security, sans-I/O: who may connect to the listeners, what each
may send, the second factor for operators, brute-force limits, TLS contexts, and
keeping secrets out of URLs, logs and the process list.

Three roles hold credentials (bearer tokens): `model` sends intents and inputs on the
intents port; `operator` sends `status`, `halt`, `resume`, `flatten` on the control
port; `viewer` sends `status` only. `halt` needs the operator's token alone, since
stopping must never be hard; every other change of state also needs a TOTP code
(RFC 6238). Everything here is plain state and decisions, with injected clocks, so it
is tested without sockets; `admit` is the one coroutine, the thin adapter a
websockets listener calls. docs/security.md is the threat model this implements.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import os
import re
import ssl
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple

import orjson

ROLES = ("model", "operator", "viewer")
PORT_ROLES = {"intents": frozenset({"model"}), "control": frozenset({"operator", "viewer"})}
READ_ACTIONS = frozenset({"status"})        # change nothing: operator and viewer
FREE_ACTIONS = frozenset({"halt"})          # operator, without a second factor: stopping must never be hard
# Every other control message from an operator needs a TOTP code: `resume`, `flatten`, and
# whatever change of state is added later, so a new message type is guarded by default.

ENV_TOKENS = {role: f"POLICYC_{role.upper()}_TOKEN" for role in ROLES}
MIN_TOKEN_BITS = 128
MIN_TOTP_SECRET_BYTES = 16      # RFC 4226 section 4: a shared secret of at least 128 bits
TOTP_STEP_S = 30                # RFC 6238's time step
TOTP_DIGITS = 6
TOTP_WINDOW = 1                 # steps accepted either side of the current one: clocks a little apart

HANDSHAKE_TIMEOUT_S = 3.0       # a listener closes a connection whose opening handshake (which carries
                                # the token) is not done by then: `serve(..., open_timeout=...)`
FREE_FAILURES = 5               # failed authentications per peer before the back-off starts
FIRST_BACKOFF_S = 1.0           # the first wait after those; each further failure doubles it
MAX_BACKOFF_S = 60.0
FORGET_AFTER_S = 600.0          # a peer's failures are forgotten this long after its latest one
MAX_PEERS = 100_000             # peers remembered at most: many addresses cannot grow memory without bound
SUMMARY_INTERVAL_S = 60.0       # at most one summary of failed authentications per interval
SUMMARY_PEERS = 20              # peers named in one summary, the most failing first; the rest are counted

_HEX = frozenset("0123456789abcdefABCDEF")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII without space: what a header value carries as is
_SECRET_QUERY = re.compile(r"token|secret|pass(word|wd)?|api[_-]?key|auth|signature|credential", re.I)
_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://)[^/?#]*@")     # scheme://USERINFO@ (the last @ before the path)
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#]*)=?([^&;#]*)")


class Identity(NamedTuple):
    """Who an authenticated connection is: its role, and the `fingerprint` of the token
    it presented, which tells one operator's actions from another's in the log."""
    role: str
    credential: str
    halt_only: bool = False   # admitted while its address was in back-off: status and halt only


class SecurityError(Exception):
    """A credential, key, certificate or URL that `run` refuses; the message says why and
    how to fix it, and never contains the secret."""


# ---- secrets at rest ---------------------------------------------------------------
def read_private(path: str | Path) -> bytes:
    """The content of a file only its owner may read or write, as ssh requires of a
    private key. Raises SecurityError when it cannot be read or is open to group or
    others (naming `chmod 600 PATH`)."""
    try:
        mode = os.stat(path).st_mode
        if os.name == "posix" and mode & 0o077:
            raise SecurityError(f"{path} is open to group or others (mode {stat.S_IMODE(mode):04o}); a file of "
                                f"secrets must be private: chmod 600 {path}")
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"cannot read {path}: {exc.strerror}") from None


def token_bits(token: str) -> int:
    """The strength a token's length allows (bits): 4 per character of a hex token, 6 per
    character of any other (base64url's). A length rule, not a test of randomness."""
    return len(token) * (4 if set(token) <= _HEX else 6)


def check_token(token: str, where: str) -> str:
    """`token` if it can be a bearer token of at least MIN_TOKEN_BITS bits; raises
    SecurityError naming `where` (a file or variable, never the token) otherwise."""
    if not _TOKEN_CHARS.fullmatch(token):
        raise SecurityError(f"{where}: a token is printable ASCII without spaces")
    if token_bits(token) < MIN_TOKEN_BITS:
        raise SecurityError(f"{where}: a token of {token_bits(token)} bits is too weak; at least {MIN_TOKEN_BITS} "
                            "bits, as `openssl rand -hex 32` makes")
    return token


def fingerprint(secret: str | bytes) -> str:
    """How the session record and the docs name a secret: the first 16 hex digits of its
    SHA-256, which `printf %s SECRET | sha256sum | cut -c1-16` computes too. From a
    secret of 128 bits or more, it reveals nothing that helps guess it."""
    data = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(data).hexdigest()[:16]


# ---- credentials -------------------------------------------------------------------
class Credentials:
    """The bearer tokens of each role. Only their SHA-256 digests are kept, so neither
    this object nor its repr can leak a token, and every comparison is of 32 bytes."""

    def __init__(self, tokens: Iterable[tuple[str, str, str]]):
        """`tokens`: (role, token, where it came from). Raises SecurityError for an
        unknown role, a weak token, or a token given twice (within a role or across
        roles: a model's token that also opened the control port would make it an
        operator's)."""
        self._entries: list[tuple[Identity, bytes]] = []
        self._fingerprints: dict[str, list[str]] = {role: [] for role in ROLES}
        seen: dict[bytes, str] = {}
        for role, token, where in tokens:
            if role not in ROLES:
                raise SecurityError(f"{where}: unknown role {role!r}; the roles are {', '.join(ROLES)}")
            check_token(token, where)
            digest = hashlib.sha256(token.encode()).digest()
            if digest in seen:
                raise SecurityError(f"{where}: the same token is also given by {seen[digest]}; each credential "
                                    "needs a token of its own")
            seen[digest] = where
            self._entries.append((Identity(role, fingerprint(token)), digest))
            self._fingerprints[role].append(fingerprint(token))

    def __repr__(self) -> str:
        return f"Credentials({self.fingerprints()})"

    def roles(self) -> frozenset[str]:
        """The roles with at least one token."""
        return frozenset(identity.role for identity, _ in self._entries)

    def fingerprints(self) -> dict[str, list[str]]:
        """role -> the `fingerprint` of each of its tokens: what the session record holds."""
        return {role: list(fps) for role, fps in self._fingerprints.items() if fps}

    def authenticate(self, header_value: str | None) -> str | None:
        """The role of `Authorization: Bearer TOKEN` (the scheme's case is free, RFC 7235),
        or None; in constant time, as `identify`."""
        identity = self.identify(header_value)
        return identity.role if identity is not None else None

    def identify(self, header_value: str | None) -> Identity | None:
        """The `Identity` of `Authorization: Bearer TOKEN`, or None. The presented
        token's digest is compared with every stored digest by `hmac.compare_digest`,
        without stopping at a match, so the time taken says nothing about how close a
        guess was or which token it matched."""
        token = b""
        if header_value is not None and header_value[:7].lower() == "bearer ":
            token = header_value[7:].encode("utf-8", "surrogateescape")
        presented = hashlib.sha256(token).digest()
        found = None
        for identity, digest in self._entries:
            if hmac.compare_digest(presented, digest):
                found = identity
        return found


def parse_credentials(text: str, where: str) -> list[tuple[str, str, str]]:
    """The entries of a credentials file: one `ROLE TOKEN` per line, `#` starting a
    comment line, blank lines ignored; a role may have several tokens (one per person
    or tool, or an old and a new one while rotating). Returns (role, token, `where:LINE`)
    for `Credentials`; raises SecurityError for a line that is not one."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:  # the line is not echoed: it may hold a token
            raise SecurityError(f"{where}:{number}: expected `ROLE TOKEN`, a role ({', '.join(ROLES)}) and a token")
        entries.append((parts[0], parts[1], f"{where}:{number}"))
    return entries


def read_token_file(path: str | Path) -> str:
    """The one token of a private file, whitespace around it ignored. Raises
    SecurityError as `read_private` does, and for an empty file or a weak token."""
    try:
        token = read_private(path).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecurityError(f"{path}: a token file holds text") from None
    if not token:
        raise SecurityError(f"{path} is empty")
    return token


def load_credentials(role_files: Mapping[str, str | Path | None] | None = None,
                     credentials_file: str | Path | None = None,
                     environ: Mapping[str, str] | None = None) -> Credentials:
    """Every configured token: `role_files` (role -> a file of one token, as
    `--model-token-file` gives), `credentials_file` (`parse_credentials`), and the
    variables of ENV_TOKENS in `environ` (pass `os.environ`; none when None). Raises
    SecurityError for a file open to group or others, a weak token or a token given
    twice; the message names the file or variable, never the token."""
    entries = []
    for role, path in (role_files or {}).items():
        if path is not None:
            entries.append((role, read_token_file(path), str(path)))
    if credentials_file is not None:
        try:
            text = read_private(credentials_file).decode("utf-8")
        except UnicodeDecodeError:
            raise SecurityError(f"{credentials_file}: a credentials file holds text") from None
        entries += parse_credentials(text, str(credentials_file))
    for role, name in ENV_TOKENS.items():
        value = (environ or {}).get(name, "").strip()
        if value:
            entries.append((role, value, f"the environment variable {name}"))
    return Credentials(entries)


# ---- second factor -------------------------------------------------------------------
def read_totp_secret(path: str | Path) -> str:
    """The base32 TOTP secret of a private file (what an authenticator app is given;
    spaces and case ignored). Raises SecurityError as `read_private` does, and for a
    secret that is not base32 or shorter than MIN_TOTP_SECRET_BYTES bytes."""
    try:
        secret = re.sub(r"\s", "", read_private(path).decode("ascii")).upper()
        key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    except (UnicodeDecodeError, ValueError):
        raise SecurityError(f"{path} does not hold a base32 TOTP secret, as `python -c 'import pyotp; "
                            "print(pyotp.random_base32())'` makes") from None
    if len(key) < MIN_TOTP_SECRET_BYTES:
        raise SecurityError(f"{path}: a TOTP secret of {len(key) * 8} bits is too weak; at least "
                            f"{MIN_TOTP_SECRET_BYTES * 8} bits (26 base32 characters; 32 are usual)")
    return secret


class TotpVerifier:
    """RFC 6238 codes (SHA-1, 6 digits, 30 s steps: what authenticator apps use), with
    the current step and TOTP_WINDOW steps either side accepted. A code is good once:
    after a code of step S is accepted, no code of step S or earlier is (RFC 6238
    section 5.2), so a code seen on the wire or over a shoulder is worth nothing, and
    one secret allows one change of state per step. After `free_failures` wrong or
    replayed codes every code, right or wrong, is refused for a back-off that doubles with
    each further wrong one up to `max_backoff_s` (s): one guess in 5 minutes, about 300 a
    day against 10**6 codes. A good code clears the count; so does a day without a wrong
    one."""

    def __init__(self, secret: str, clock: Callable[[], float] = time.time, free_failures: int = 3,
                 first_backoff_s: float = FIRST_BACKOFF_S, max_backoff_s: float = 300.0):
        import pyotp

        self._totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S)
        self._fingerprint = fingerprint(secret)
        self._clock = clock
        self._last_step = -1
        self._limiter = AuthLimiter(free_failures, first_backoff_s, max_backoff_s, forget_after_s=86_400.0,
                                    clock=clock)

    def __repr__(self) -> str:
        return f"TotpVerifier(secret {self._fingerprint})"

    @property
    def fingerprint(self) -> str:
        """The secret's `fingerprint`, for the session record."""
        return self._fingerprint

    def verify(self, code: object) -> tuple[bool, str]:
        """(True, "ok") for a good, unused code, else (False, why): `missing`, `wrong`,
        `replayed`, or `locked for N s`. A wrong or replayed code counts towards the
        back-off."""
        wait = self._limiter.retry_after("totp")
        if wait > 0:
            return False, f"locked for {math.ceil(wait)} s after wrong codes"
        if not isinstance(code, str) or not code:
            return False, "missing"
        now = self._clock()
        step = int(now // TOTP_STEP_S)
        matched = None
        for candidate in range(step - TOTP_WINDOW, step + TOTP_WINDOW + 1):
            # every candidate is compared, the match or not: the time says nothing of the code
            if hmac.compare_digest(code.encode("utf-8", "surrogateescape"),
                                   self._totp.generate_otp(candidate).encode()):
                matched = candidate
        if matched is None:
            self._limiter.failed("totp")
            return False, "wrong"
        if matched <= self._last_step:
            self._limiter.failed("totp")
            return False, "replayed"
        self._last_step = matched
        self._limiter.forget("totp")  # the second factor is proven: earlier typos are not an attack
        return True, "ok"


# ---- brute force ---------------------------------------------------------------------
def peer_key(address) -> str:
    """The key failures are counted under: the IP address of a `(host, port, ...)` pair,
    an IPv6 one cut to its /64 (one host often has a whole /64 to hop through)."""
    host = address[0] if isinstance(address, (tuple, list)) and address else address
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return str(host)
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack listener
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class AuthLimiter:
    """Failed authentications per peer, with an exponential back-off: after
    `free_failures` failures, the peer must wait `first_backoff_s` (s) from its latest
    failure, doubled with each further failure, at most `max_backoff_s`. While it waits,
    its attempts are refused without looking at the token, however many connections it
    opens at once. A success does not reset the count (a viewer's token must not buy an
    operator's guesses); the count is forgotten `forget_after_s` after the latest
    failure. At most MAX_PEERS peers are remembered, the stalest forgotten first."""

    def __init__(self, free_failures: int = FREE_FAILURES, first_backoff_s: float = FIRST_BACKOFF_S,
                 max_backoff_s: float = MAX_BACKOFF_S, forget_after_s: float = FORGET_AFTER_S,
                 clock: Callable[[], float] = time.monotonic, max_peers: int = MAX_PEERS):
        self.free_failures, self.first_backoff_s, self.max_backoff_s = free_failures, first_backoff_s, max_backoff_s
        self.forget_after_s, self.max_peers, self._clock = forget_after_s, max_peers, clock
        self._peers: OrderedDict[str, tuple[int, float]] = OrderedDict()  # peer -> (failures, latest), stalest first

    def _backoff(self, failures: int) -> float:
        over = failures - self.free_failures
        return 0.0 if over < 0 else min(self.max_backoff_s, self.first_backoff_s * 2.0 ** min(over, 64))

    def retry_after(self, peer: str) -> float:
        """Seconds until `peer` may try again; 0 when it may now."""
        entry = self._peers.get(peer)
        if entry is None:
            return 0.0
        failures, latest = entry
        now = self._clock()
        if now - latest >= self.forget_after_s:
            del self._peers[peer]
            return 0.0
        return max(0.0, latest + self._backoff(failures) - now)

    def failed(self, peer: str) -> None:
        """Count a failed attempt of `peer` (one that was checked, not one refused while
        it waits: a client retrying in a loop would otherwise never get out)."""
        now = self._clock()
        failures, latest = self._peers.pop(peer, (0, now))
        if now - latest >= self.forget_after_s:
            failures = 0
        self._peers[peer] = (failures + 1, now)
        while self._peers:
            oldest, (_, seen) = next(iter(self._peers.items()))
            if len(self._peers) <= self.max_peers and now - seen < self.forget_after_s:
                break
            del self._peers[oldest]

    def forget(self, peer: str) -> None:
        """Clear the failures of `peer`."""
        self._peers.pop(peer, None)


class FailureSummary:
    """Failed authentications, counted per peer and reported as at most one record per
    `interval_s` (s): an unauthenticated peer, or many, cannot grow the log faster than
    that, and a record names at most SUMMARY_PEERS peers. Within an interval at most
    `max_peers` peers are counted one by one; the failures of any more only in the total."""

    def __init__(self, interval_s: float = SUMMARY_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 max_peers: int = MAX_PEERS):
        self.interval_s, self._clock, self.max_peers = interval_s, clock, max_peers
        self._counts: dict[str, int] = {}
        self._uncounted = 0               # failures of peers beyond `max_peers`
        self._since = clock()
        self._last: float | None = None   # when the latest summary was taken

    def add(self, peer: str) -> None:
        if peer in self._counts or len(self._counts) < self.max_peers:
            self._counts[peer] = self._counts.get(peer, 0) + 1
        else:
            self._uncounted += 1

    def take(self, force: bool = False) -> dict | None:
        """The summary of the failures since the previous one, when there are some and
        `interval_s` has passed since the previous one (or `force`: when stopping);
        else None. Fields: `interval_s` (the time it covers), `failures` (all of them),
        `peers` (`[{"peer", "count"}]`, the most failing first), `other_peers` (how many
        more peers were counted). Call it
        after each `add` and on a timer: the first failure after a quiet interval is
        reported at once, the rest of a burst at the interval's end."""
        now = self._clock()
        if not self._counts or (not force and self._last is not None and now - self._last < self.interval_s):
            return None
        ranked = sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))
        record = {"interval_s": round(now - self._since, 3),
                  "failures": sum(self._counts.values()) + self._uncounted,
                  "peers": [{"peer": peer, "count": count} for peer, count in ranked[:SUMMARY_PEERS]],
                  "other_peers": max(0, len(ranked) - SUMMARY_PEERS)}
        self._counts, self._uncounted, self._since, self._last = {}, 0, now, now
        return record


# ---- the listeners -----------------------------------------------------------------------
@dataclass(frozen=True)
class Admission:
    """What a listener does with a new connection: `identity` is None when it closes it
    with code 1008 and `reason`."""
    identity: Identity | None
    reason: str = ""


@dataclass(frozen=True)
class ControlCheck:
    """The verdict on one control message. `action` is its `type` (`?` when it has none
    a log may show); `refusal` the error to answer instead of acting, or None to act."""
    identity: Identity
    action: str
    refusal: dict | None

    def record(self, reply: dict) -> dict | None:
        """The fields of the `access` record of this action (`role`, `credential`: the
        token's fingerprint, `action`, `result`: `done`, `refused: WHY` or `error:
        CODE`) given the answer sent; None for a successful `status`, which changes
        nothing and would fill the log at a poller's pace."""
        if self.refusal is not None:
            result = f"refused: {self.refusal['message']}"
        elif reply.get("type") == "error":
            result = f"error: {reply.get('code')}"
        elif self.action in READ_ACTIONS:
            return None
        else:
            result = "done"
        return {"role": self.identity.role, "credential": self.identity.credential, "action": self.action,
                "result": result}


class Guard:
    """The listeners' security in one object: `admit` a connection to a port, `check`
    each control message, `summary` of failed authentications to log, and the session
    record's fingerprints. `totp` None: no change of state but `halt` is possible on
    the control port."""

    def __init__(self, credentials: Credentials, totp: TotpVerifier | None = None,
                 limiter: AuthLimiter | None = None, summary: FailureSummary | None = None):
        self.credentials, self.totp = credentials, totp
        self.limiter = limiter or AuthLimiter()
        self.summary = summary or FailureSummary()

    def admit(self, port: str, peer: str, authorization: list[str]) -> Admission:
        """Judge an opening handshake on `port` (`intents` or `control`) from `peer`
        (`peer_key`), given every `Authorization` header it sent. A peer in its back-off
        is refused, except an operator on the control port, who is admitted for `status`
        and `halt` only: a guesser sharing the operator's address (the same host, an ssh
        tunnel, a NAT) must not be able to keep the kill switch out of reach, and what a
        guess that hits gains is a way to stop trading. A wrong or missing token, two
        headers, or a token whose role may not use the port is a failure for the limiter
        and the summary."""
        identity = self.credentials.identify(authorization[0] if len(authorization) == 1 else None)
        wait = self.limiter.retry_after(peer)
        if wait > 0:
            self.summary.add(peer)
            if identity is not None and identity.role == "operator" and port == "control":
                return Admission(identity._replace(halt_only=True))
            return Admission(None, f"too many failed authentications; retry in {math.ceil(wait)} s")
        if identity is None:
            reason = "wrong or missing token"
        elif identity.role not in PORT_ROLES[port]:
            reason = f"{_a(identity.role)} credential may not use the {port} port"
        else:
            return Admission(identity)
        self.limiter.failed(peer)
        self.summary.add(peer)
        return Admission(None, reason)

    def check(self, identity: Identity, frame: str | bytes) -> ControlCheck:
        """Judge one control frame from a connection admitted as `identity`, before the
        protocol reads it (a frame that is no JSON object is left to the protocol to
        refuse). A viewer may send `status`; an operator `status` and `halt` as they are,
        and anything else only with a good code in the message's `totp`
        (`TotpVerifier.verify`)."""
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        action = kind if isinstance(kind, str) and re.fullmatch(r"[a-z_]{1,32}", kind) else "?"
        if not isinstance(message, dict) or action in READ_ACTIONS:
            return ControlCheck(identity, action, None)
        if identity.role != "operator":
            return ControlCheck(identity, action, _forbidden(f"{_a(identity.role)} may only ask for the status"))
        if action in FREE_ACTIONS:
            return ControlCheck(identity, action, None)
        if identity.halt_only:
            return ControlCheck(identity, action, _forbidden(
                f"`{action}` refused: this connection came while its address was in back-off after failed "
                "logins, and may only ask for the status or halt; connect again once the back-off is over"))
        if self.totp is None:
            return ControlCheck(identity, action, _forbidden(f"`{action}` needs a TOTP code and this run has no "
                                                             "TOTP secret"))
        ok, why = self.totp.verify(message.get("totp"))
        if not ok:
            return ControlCheck(identity, action, _forbidden(f"`{action}` needs a good TOTP code in `totp`: {why}"))
        return ControlCheck(identity, action, None)

    def session_fields(self) -> dict:
        """What the session record says of the configured secrets: fingerprints only."""
        fields = {"credentials": self.credentials.fingerprints()}
        if self.totp is not None:
            fields["totp_secret"] = self.totp.fingerprint
        return fields


def _a(role: str) -> str:
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


def _forbidden(message: str) -> dict:
    return {"type": "error", "code": "forbidden", "message": message}


async def admit(ws, guard: Guard, port: str) -> Identity | None:
    """Admit a websockets server connection (`ws.request`, `ws.remote_address`) to
    `port`: its `Identity`, or None once it is closed with code 1008 and the reason."""
    admission = guard.admit(port, peer_key(ws.remote_address), ws.request.headers.get_all("Authorization"))
    if admission.identity is None:
        await ws.close(1008, admission.reason)
    return admission.identity


# ---- URLs ----------------------------------------------------------------------------------
def check_url(url: str) -> str:
    """`url` if it carries no credential; raises SecurityError for a user name or
    password (`wss://user:secret@host`) or a query parameter named like one (`token`,
    `secret`, `password`, `api_key`, `auth`, `signature`, `credential`): on a command
    line they are in the process list and the shell's history. The message shows the URL
    with them masked (`redact_url`). Read from the text itself, not a URL parser, so
    that a URL too malformed to parse is refused, not echoed, when it holds one."""
    names = [m.group(2) for m in _QUERY_PARAM.finditer(url) if _SECRET_QUERY.search(m.group(2))]
    if _USERINFO.match(url) or names:
        where = f"the query parameter {names[0]!r}" if names else "a user name or password"
        raise SecurityError(f"{redact_url(url)} carries {where}; a URL on the command line is seen in the process "
                            "list: give the credential in a file or an environment variable (docs/security.md)")
    return url


def redact_url(url: str) -> str:
    """`url` with any user name and password, and the value of any credential-like query
    parameter, replaced by `***`."""
    url = _USERINFO.sub(r"\1***@", url)
    return _QUERY_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}=***" if _SECRET_QUERY.search(m.group(2))
                            else m.group(0), url)


def read_client_authorization(path: str | Path | None = None, variable: str | None = None,
                              environ: Mapping[str, str] | None = None) -> str | None:
    """The `Authorization` header value for the feed or the venue (`Bearer TOKEN`,
    `Basic BASE64`): the content of the private file `path`, else the variable
    `variable` of `environ`; None when neither is given. Raises SecurityError as
    `read_private` does, or for a value that is not one header line."""
    if path is not None:
        value, where = read_private(path).decode("utf-8", "replace").strip(), str(path)
    elif variable is not None and (environ or {}).get(variable, "").strip():
        value, where = environ[variable].strip(), f"the environment variable {variable}"
    else:
        return None
    if not re.fullmatch(r"[A-Za-z][\w.-]* [\x20-\x7e]+", value):
        raise SecurityError(f"{where}: expected one Authorization header value such as `Bearer TOKEN`")
    return value


# ---- TLS -------------------------------------------------------------------------------------
def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """The TLS context of the listeners (wss): the certificate chain of `cert_file` (PEM,
    the server's certificate first) and the private key of `key_file`, which must be
    private (`read_private`); TLS 1.2 at least. Raises SecurityError for a file that
    cannot be read or a key that does not match the certificate."""
    read_private(key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise SecurityError(f"{cert_file} and {key_file} are not a PEM certificate and its private key "
                            f"({exc.reason or exc})") from None
    except OSError as exc:
        raise SecurityError(f"cannot read {exc.filename or cert_file}: {exc.strerror}") from None
    return context


def client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """The TLS context of the feed and venue connections (wss): the peer's certificate
    and host name are verified, always; against the certificate authorities of
    `ca_file` (PEM) alone when it is given, the system's otherwise. TLS 1.2 at least.
    Raises SecurityError for a CA file that cannot be read or holds no certificate."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except ssl.SSLError as exc:
        raise SecurityError(f"{ca_file} holds no PEM certificate ({exc.reason or exc})") from None
    except OSError as exc:
        raise SecurityError(f"cannot read {ca_file}: {exc.strerror}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def cert_fingerprint(cert_file: str | Path) -> str:
    """The SHA-256 of the first certificate of a PEM file, in hex, as `openssl x509
    -noout -fingerprint -sha256` shows it (without colons): a public name for the
    listeners' certificate in the session record. Raises SecurityError when there is none."""
    try:
        pem = Path(cert_file).read_text("ascii")
        start = pem.index("-----BEGIN CERTIFICATE-----")
        end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem[start:end])).hexdigest()
    except (OSError, UnicodeDecodeError, ValueError):
        raise SecurityError(f"{cert_file} holds no PEM certificate") from None


def describe_tls_error(exc: OSError, host: str, port: int) -> str:
    """A failed TLS handshake (an `ssl.SSLError`, or the peer closing the connection) in
    words a person can act on: an untrusted certificate names what the verification
    found and the fix; anything else, OpenSSL's reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the TLS certificate of {host}:{port} is not trusted ({exc.verify_message}); give its certificate "
                "authority with --ca-file")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {host}:{port} failed ({exc.reason or exc})"
    return f"TLS handshake with {host}:{port} failed (the peer closed the connection: does it speak TLS?)"
