"""The decision log's hash chain, its encryption envelope and its signatures, and the
check that finds the first record breaking them: bytes in, lines and verdicts out, no
files and no clock.

A record is sealed into one line: its JSON with `prev_hash` (the previous record's
`hash`) as its last member, then `hash`, the SHA-256 of everything before it (the
line's canonical bytes), and on a signed record `sig`, an Ed25519 signature of that
hash. With a log key, every record but the `session` one is written as an envelope:
`{"seq":N,"enc":BASE64}`, AES-256-GCM of the sealed line with the seq as associated
data. docs/audit.md defines the same formats for an auditor with other tools;
`runtime/live/audit.py` keeps the files.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import orjson

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY  # numpy values as numbers; NaN and infinity are written as null
ZERO_HASH = "0" * 64  # the `prev_hash` of a log's first record
SIGNED = ("session", "checkpoint")  # the kinds a signing key signs
NONCE_BYTES = 12  # AES-GCM's standard nonce
_HASH = b',"hash":"'  # the `hash` member: after it come only the hash, `sig` on a signed record, and `}`
#: All a sealed line may hold after `,"hash":"`; anything more (a member appended after the
#: hash, which a JSON reader would take over the sealed one) is an edit.
_TAIL = re.compile(rb'[0-9a-f]{64}"(?:,"sig":"[0-9a-f]{128}")?\}\Z')
#: SHA-256 with nothing hashed yet: a copy of it is a fresh hash at about half the cost of
#: `hashlib.sha256()`, whose set-up (OpenSSL looking the algorithm up) dominates a small record.
_SHA256 = hashlib.sha256()
_ENVELOPE = re.compile(rb'\{"seq":(?:0|[1-9][0-9]*),"enc":"[^"\\]*"\}\Z')  # what `enc` holds, decryption judges

EDITED, MISSING, REORDERED, INSERTED, TRUNCATED, BAD_SIGNATURE = (
    "edited", "missing", "reordered", "inserted", "truncated", "bad signature")


class LogError(Exception):
    """The input cannot be checked or appended to: not a decision log, a key file that
    is not a key or not private, a key that is needed and missing or not the log's."""


def key_id(material: bytes) -> str:
    """A key's public name: the first 16 hex digits of the SHA-256 of `material` (the
    32 bytes of a log key, or of an Ed25519 public key). It names a key, never reveals it."""
    return hashlib.sha256(material).hexdigest()[:16]


def public_key_id(public_key) -> str:
    """`key_id` of an Ed25519 public key (cryptography's `Ed25519PublicKey`)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key_id(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))


# ---- writing ---------------------------------------------------------------------------
def seal(record: dict, sign: Callable[[bytes], bytes] | None = None) -> tuple[bytes, str]:
    """The line of `record` (without its newline) and its hash (64 hex digits).
    `record` must end with its `prev_hash`; `sign(digest)` (the hash's 32 bytes -> a
    64-byte Ed25519 signature) adds `sig`. Raises orjson.JSONEncodeError for a value
    JSON cannot hold."""
    return seal_canonical(orjson.dumps(record, option=JSON_OPTIONS), sign)


def seal_canonical(canonical: bytes, sign: Callable[[bytes], bytes] | None = None) -> tuple[bytes, str]:
    """`seal` of a record already serialised: `canonical` is its compact JSON object,
    ending with its `prev_hash` member (what `orjson.dumps` gives for the record)."""
    sha = hashlib.sha256(canonical)
    hex_hash = sha.hexdigest()
    tail = b'"}' if sign is None else b'","sig":"' + sign(sha.digest()).hex().encode() + b'"}'
    return b"".join((canonical[:-1], _HASH, hex_hash.encode(), tail)), hex_hash


def seal_open(body: tuple, sign: Callable[[bytes], bytes] | None = None) -> tuple[bytes, str]:
    """The end of the line of a record given in `body`, buffers that hold its canonical
    bytes but their final `}` in order (a view among them spares a large record a copy):
    the `hash` member, `sig` when `sign` is given, the closing `}` and the newline; and the
    hash (64 hex digits). `body` joined, then that end, is the line `seal_canonical` makes
    and its newline."""
    sha = _SHA256.copy()
    for part in body:
        sha.update(part)
    sha.update(b"}")
    hex_hash = sha.hexdigest()
    tail = b'"}\n' if sign is None else b'","sig":"' + sign(sha.digest()).hex().encode() + b'"}\n'
    return _HASH + hex_hash.encode() + tail, hex_hash


def envelope(aead, nonce: bytes, seq: int, line: bytes) -> bytes:
    """A sealed line encrypted: `{"seq":N,"enc":BASE64}`, BASE64 being the nonce (12
    bytes, never used twice with one key) then the AES-256-GCM ciphertext and tag of
    `line`, with the seq's decimal digits as associated data. `aead` is cryptography's
    `AESGCM`."""
    aad = b"%d" % seq
    return b'{"seq":%d,"enc":"%s"}' % (seq, base64.b64encode(nonce + aead.encrypt(nonce, line, aad)))


def open_envelope(aead, obj: dict) -> bytes:
    """The sealed line inside an envelope (`obj`, the envelope's JSON object). Raises
    ValueError when it does not decrypt with `aead`: the ciphertext, the tag or the seq
    changed or cut, or another key."""
    from cryptography.exceptions import InvalidTag

    seq = obj.get("seq")
    if not isinstance(seq, int) or not isinstance(obj.get("enc"), str):
        raise ValueError("not an envelope")
    try:
        blob = base64.b64decode(obj["enc"], validate=True)
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], b"%d" % seq)
    except (InvalidTag, binascii.Error) as exc:
        raise ValueError("does not decrypt") from exc


def is_envelope(line: bytes) -> bool:
    """Whether `line` (without its newline) is an encrypted record as `envelope` writes it,
    judged by its whole form: a record in clear may hold `"enc":"` in text it carries."""
    return _ENVELOPE.match(line) is not None


def canonical_bytes(line: bytes) -> bytes | None:
    """What a sealed line's `hash` is the SHA-256 of: the line up to its `hash` member,
    closed with `}`; None for a line without one. (Inside a JSON string a quote is
    escaped, so `,"hash":"` only ever starts the member.)"""
    cut = line.rfind(_HASH)
    return line[:cut] + b"}" if cut > 0 else None


# ---- reading ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Line:
    """One line of a log file as read: `data` without its newline; `complete` is False
    for a last line the writer did not finish."""

    file: str      # the file's name as reports show it
    number: int    # from 1 in its file
    data: bytes
    complete: bool = True


@dataclass(slots=True)
class Rec:
    """A line read as a record (decrypted when it was an envelope)."""

    line: Line
    record: dict
    seq: int
    kind: str
    prev: str
    hash: str
    sound: bool      # `hash` is the SHA-256 of the canonical bytes
    encrypted: bool


@dataclass(frozen=True)
class Problem:
    """The first bad record: where it is, which of the kinds above, and what is wrong."""

    kind: str
    file: str
    line: int
    seq: int | None
    detail: str


@dataclass
class Summary:
    """What a check went through: records by kind, runs (one per session record),
    signatures checked against the public key or present but not checked, encrypted
    runs, whether the log ends with a closing checkpoint, and the chain's last hash."""

    kinds: Counter = field(default_factory=Counter)
    runs: int = 0
    signatures_checked: int = 0
    signatures_unchecked: int = 0
    encrypted_runs: int = 0
    closed: bool = False      # the last run ends with its signed closing checkpoint
    head: str = ZERO_HASH

    @property
    def records(self) -> int:
        return sum(self.kinds.values())


def _problem(line: Line, kind: str, detail: str, seq: int | None = None) -> Problem:
    return Problem(kind, line.file, line.number, seq, detail)


def read_record(line: Line, aead=None) -> Rec | Problem:
    """`line` as a record, or the problem that makes it none: cut off (`truncated`),
    not JSON, lacking a chain member, or an envelope that does not decrypt with `aead`
    (`edited`). An envelope without `aead` is a problem too; `check` asks for the key
    first wherever a run says it is encrypted."""
    if not line.complete:
        return _problem(line, TRUNCATED, "the line is cut off: the log ends in the middle of a record")
    try:
        obj = orjson.loads(line.data)
    except orjson.JSONDecodeError:
        return _problem(line, EDITED if line.data.strip() else INSERTED,
                        "not JSON" if line.data.strip() else "an empty line")
    if not isinstance(obj, dict):
        return _problem(line, EDITED, "not a JSON object")
    encrypted = "enc" in obj
    data = line.data
    if encrypted:
        seq = obj.get("seq")
        if not _ENVELOPE.match(data):
            return _problem(line, EDITED, "not an envelope as written: text was added to or changed in it",
                            seq if isinstance(seq, int) else None)
        if aead is None:
            return _problem(line, EDITED, "an encrypted record in a run whose session says it is in clear", seq)
        try:
            data = open_envelope(aead, obj)
            obj = orjson.loads(data)
        except ValueError:
            return _problem(line, EDITED, "does not decrypt: its ciphertext or its seq was changed or cut",
                            seq if isinstance(seq, int) else None)
    if not isinstance(obj, dict):
        return _problem(line, EDITED, "not a JSON object")
    seq, kind, prev, hash_ = obj.get("seq"), obj.get("kind"), obj.get("prev_hash"), obj.get("hash")
    missing = [name for name, value, kind_of in (("seq", seq, int), ("kind", kind, str), ("prev_hash", prev, str),
                                                 ("hash", hash_, str)) if not isinstance(value, kind_of)]
    if missing:
        return _problem(line, EDITED, f"lacks {', '.join(missing)}", seq if isinstance(seq, int) else None)
    canonical = canonical_bytes(data)
    if canonical is not None and not _TAIL.match(data, data.rfind(_HASH) + len(_HASH)):
        return _problem(line, EDITED, "text after its hash: a record ends with `hash` (and `sig`), as written", seq)
    sound = canonical is not None and hashlib.sha256(canonical).hexdigest() == hash_
    return Rec(line, obj, seq, kind, prev, hash_, sound, encrypted)


# ---- checking --------------------------------------------------------------------------
def check(lines: Callable[[], Iterable[Line]], aead=None, aead_key_id: str | None = None,
          public_key=None, open_end: bool = False) -> tuple[Summary, Problem | None]:
    """Check a whole log, its files' lines in order: `lines()` gives them, and is called
    once more only when something is wrong, to tell what. `aead` (cryptography's
    `AESGCM`, named `aead_key_id`) reads encrypted runs; `public_key`
    (`Ed25519PublicKey`) makes every run's session and checkpoints need a valid
    signature by it. `open_end`: the last run, if signed, may end without its closing
    checkpoint (a run killed before it could close the log, which a resuming run is about
    to follow with its own signed session record). Returns what was checked and the first
    bad record, or None.

    Raises LogError when the input cannot be checked: empty, a first line that is not
    a decision log record (or one written without a hash chain), or a run encrypted
    with no `aead` or another key."""
    summary = Summary()
    head, last, run = ZERO_HASH, None, None  # run: the current run's session record
    for position, line in enumerate(lines()):
        if position == 0:
            _first(line, aead)
        rec = read_record(line, aead)
        if isinstance(rec, Problem):
            return summary, rec
        expected = 1 if rec.kind == "session" else (last.seq + 1 if last is not None else 1)
        if not rec.sound or rec.prev != head or rec.seq != expected:
            return summary, _classify(list(_records(lines(), aead)), position, head, expected)
        if rec.kind == "session":
            run = rec.record
            _key_for(run, line, aead, aead_key_id)
            summary.runs += 1
            summary.encrypted_runs += "log_key_id" in run
        elif run is None:
            return summary, _problem(line, MISSING, "the log does not start with a session record", rec.seq)
        elif rec.encrypted != ("log_key_id" in run):
            return summary, _problem(line, EDITED, "in clear in an encrypted run" if not rec.encrypted else
                                     "encrypted in a run in clear", rec.seq)
        elif last.kind == "checkpoint" and last.record.get("closing"):
            return summary, _problem(line, INSERTED, "after its run's closing checkpoint", rec.seq)
        bad = _signature(rec, run, public_key, summary)
        if bad:
            return summary, _problem(line, BAD_SIGNATURE, bad, rec.seq)
        summary.kinds[rec.kind] += 1
        head, last = rec.hash, rec
    if last is None:
        raise LogError("empty")
    summary.head = head
    summary.closed = last.kind == "checkpoint" and bool(last.record.get("closing"))
    if "sign_key_id" in run and not summary.closed and not open_end:
        return summary, Problem(TRUNCATED, last.line.file, last.line.number + 1, last.seq + 1,
                                f"the log ends at seq {last.seq} without its run's signed closing checkpoint: "
                                "records after its last checkpoint may have been cut off (or the run was killed "
                                "before it could close the log)")
    return summary, None


def _first(line: Line, aead) -> None:
    """A log's first line must look like one of its records, and be readable."""
    if not line.data.startswith(b'{"seq":'):
        raise LogError("not a decision log (its first line is not a record)")
    if b'"enc":"' in line.data:
        if aead is None:
            raise LogError("its first line is encrypted, and no session record before it names the key: "
                           "give --key-file")
    elif line.complete and _HASH not in line.data:
        raise LogError("written without a hash chain (its first record has no `hash`)")


def _key_for(session: dict, line: Line, aead, aead_key_id: str | None) -> None:
    """An encrypted run is read with its key only."""
    wanted = session.get("log_key_id")
    if wanted is None:
        return
    if aead is None:
        raise LogError(f"the run at {line.file} line {line.number} is encrypted (key id {wanted}): give its key "
                       "with --key-file")
    if aead_key_id != wanted:
        raise LogError(f"wrong key: the run at {line.file} line {line.number} is encrypted with key id {wanted}, "
                       f"--key-file holds key id {aead_key_id}")


def _signature(rec: Rec, run: dict, public_key, summary: Summary) -> str | None:
    """What is wrong with the signature of a record of a signed kind, or None; counts
    the signatures checked and the ones left unchecked without a public key."""
    if rec.kind not in SIGNED:
        return None
    signer = run.get("sign_key_id")
    sig = rec.record.get("sig")
    if signer is None:
        return "the run is not signed, and --public-key asks for signatures" if public_key is not None else None
    if not isinstance(sig, str):
        return f"no signature, though its run is signed (key id {signer})"
    if public_key is None:
        summary.signatures_unchecked += 1
        return None
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(bytes.fromhex(sig), bytes.fromhex(rec.hash))
    except (InvalidSignature, ValueError):
        given = public_key_id(public_key)
        whose = f"the run names key id {signer}" + (", the same key" if given == signer else "")
        return f"the signature does not verify with --public-key (key id {given}; {whose})"
    summary.signatures_checked += 1
    return None


def _records(lines: Iterable[Line], aead) -> Iterable[Rec | Problem]:
    return (read_record(line, aead) for line in lines)


def _classify(recs: list[Rec | Problem], i: int, head: str, expected: int) -> Problem:
    """Why record `i` breaks the chain, which held up to it (`head` is the hash it
    should follow, `expected` its seq): `recs` is the whole log, so a record can be
    found wherever it went."""
    rec = recs[i]
    at = rec.line
    later = recs[i + 1] if i + 1 < len(recs) and isinstance(recs[i + 1], Rec) else None
    skipped = later is not None and later.prev == head  # the chain goes on around this record
    if rec.prev == head:
        if not rec.sound:
            return _problem(at, EDITED, "its content does not match its hash", rec.seq)
        if skipped:
            return _problem(at, INSERTED, "it is not in the chain: the record after it follows the one before it",
                            rec.seq)
        if rec.seq > expected:
            return _problem(at, MISSING, _seqs_missing(expected, rec.seq), rec.seq)
        return _problem(at, EDITED, f"seq {rec.seq} where {expected} was expected", rec.seq)
    where = {}
    for j, other in enumerate(recs):
        if isinstance(other, Rec):
            where.setdefault(other.hash, j)
    if rec.sound and where[rec.hash] < i:
        copy = recs[where[rec.hash]].line
        return _problem(at, INSERTED, f"a copy of {copy.file} line {copy.number}", rec.seq)
    j = where.get(rec.prev)
    if j is not None and j > i:
        after = recs[j]
        return _problem(at, REORDERED, f"it follows seq {after.seq} ({after.line.file} line {after.line.number}), "
                                       "which the log has after it", rec.seq)
    if j is not None:  # it follows an earlier record: the ones in between are not in the chain
        first = recs[j + 1]
        return _problem(first.line, INSERTED, f"it is not in the chain: {at.file} line {at.number} follows "
                                              f"{recs[j].line.file} line {recs[j].line.number} directly", first.seq)
    if skipped:
        return _problem(at, INSERTED, "it is not in the chain: the record after it follows the one before it",
                        rec.seq)
    edited = "" if rec.sound else "; its own content does not match its hash either (renumbered?)"
    if rec.kind == "session":
        return _problem(at, MISSING, "the previous run's last records are missing: this session follows a record "
                                     f"the log does not have{edited}", rec.seq)
    if rec.seq > expected:
        return _problem(at, MISSING, _seqs_missing(expected, rec.seq) + edited, rec.seq)
    return _problem(at, MISSING, "the record it follows is not in the log: removed (the seqs after it renumbered), "
                                 f"or the record before it was changed and its hash recomputed{edited}", rec.seq)


def _seqs_missing(expected: int, seq: int) -> str:
    return f"seq {expected} is missing" if seq == expected + 1 else f"seq {expected} to {seq - 1} are missing"
