"""The decision log's files. `DecisionLog` appends each record the moment it is written
(one write; inside `batch`, one write for the batch, before any order leaves),
sealed into the hash chain of `runtime/audit_chain.py`, encrypted and
signed when given keys, rotating to numbered segment files; `read_log` and
`verify_log` read a log back; the `read_*_key` functions read key files, which must be
private. docs/audit.md describes the formats and what each fsync mode guarantees."""
from __future__ import annotations

import errno
import os
import re
import stat
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import orjson

from . import DEFAULT_FSYNC, FSYNC_MODES
from ..audit_chain import (JSON_OPTIONS, NONCE_BYTES, SIGNED, ZERO_HASH, Line, LogError, Problem, Summary, check,
                           envelope, is_envelope, key_id, open_envelope, public_key_id, read_record, seal_open)

#: What reached the order core, written before it is handled (a journal that replays it).
INPUT_KINDS = ("market", "input", "intent", "decide", "venue", "control", "link", "timer")
KINDS = ("session", "order", "fill", "reject", "cancel", "overfill", "risk", "halt", "resume", "feed_silent",
         "feed_live", "bad_message", "reconcile", "checkpoint", "access", "auth_failures", *INPUT_KINDS)
#: Written by the runner around the core (the listeners' security), not by the core: replay passes them by.
RUNNER_KINDS = ("access", "auth_failures")
#: The members `write` sets itself (besides its parameters `kind` and `ts`); a record's own fields may not name them.
_RESERVED = frozenset(("seq", "policy_hash", "build_hash", "prev_hash", "hash", "sig"))
# --fsync batch: the log is synced at most this often (s), by a thread of its own. At 5 ms the
# syncs took about a tenth of the runtime's CPU time on a busy feed (each sync's own
# CPU, a few tenths of a ms on a virtual disk, and the time the interpreter is handed to
# the thread and back); at 10 ms about one hundredth (bench/log_cost.py's recording)
BATCH_SYNC_S = 0.010
RECENT = 8  # decision records the status and the terminal view show
CHECKPOINT_EVERY = 1000  # with a signing key: a signed checkpoint after this many records of a run
_NOT_RECENT = frozenset(("session", "checkpoint", *INPUT_KINDS))  # not decisions: the status and view leave them out
_SEGMENT = re.compile(r"(.+?)\.(\d{6,})((?:\.[^.]*)?)")  # decisions.000002.jsonl: name, number, suffix
_sync = getattr(os, "fdatasync", os.fsync)  # the data and the size, which is all a reader needs back
#: A record whose own fields serialise to more than this many bytes (a market batch's events)
#: is written from where they were serialised, through a view; a smaller one is built whole,
#: in fewer steps than the view takes. Each copy of a batch of hundreds of kilobytes is a
#: fresh allocation whose pages the kernel zeroes, read after read.
_BY_VIEW = 1 << 14
_IOV_MAX = 1024  # buffers one os.writev takes (IOV_MAX on Linux)


# ---- key files --------------------------------------------------------------------------
def _private(path: str | Path) -> bytes:
    """The content of a key file only its owner may use (ssh's rule for private keys,
    `security.read_private`); raises LogError instead of SecurityError."""
    from .security import SecurityError, read_private

    try:
        return read_private(path)
    except SecurityError as exc:
        raise LogError(str(exc)) from None


def read_log_key(path: str | Path) -> bytes:
    """The 32 bytes of a log key file: 64 hex digits, whitespace around them ignored.
    Raises LogError for a file that is not one, cannot be read, or is open to group or
    others."""
    text = _private(path).strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise LogError(f"{path} does not hold a log key: 64 hex digits (32 bytes), as `openssl rand -hex 32` writes")
    return key


def read_signing_key(path: str | Path):
    """The Ed25519 private key of a PEM file (cryptography's `Ed25519PrivateKey`).
    Raises LogError as `read_log_key` does, and for a key protected by a password."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _private(path)
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise LogError(f"{path} is protected by a password; give the key without one (chmod 600 keeps it "
                       "private)") from None
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise LogError(f"{path} does not hold an Ed25519 private key in PEM, as `openssl genpkey -algorithm ed25519` "
                       "writes")
    return key


def read_public_key(path: str | Path):
    """The Ed25519 public key of a PEM file (`Ed25519PublicKey`). Raises LogError for a
    file that cannot be read or holds no such key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LogError(f"cannot read {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise LogError(f"{path} holds a private key; give its public key, as `openssl pkey -in {path} -pubout` "
                       "writes it")
    try:
        key = load_pem_public_key(data)
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise LogError(f"{path} does not hold an Ed25519 public key in PEM")
    return key


# ---- segment files ----------------------------------------------------------------------
def segment_path(first: Path, number: int) -> Path:
    """File `number` of the log whose first file is `first` (number 0):
    decisions.jsonl, decisions.000001.jsonl, decisions.000002.jsonl, ..."""
    return first if number == 0 else first.with_name(f"{first.stem}.{number:06d}{first.suffix}")


def segments(first: Path) -> list[tuple[int, Path]]:
    """The files of the log whose first file is `first` that exist, in order, numbered."""
    pattern = re.compile(re.escape(first.stem) + r"\.(\d{6,})" + re.escape(first.suffix))
    try:
        names = os.listdir(first.parent)
    except OSError:
        names = []
    numbered = sorted((int(m.group(1)), first.parent / name) for name in names if (m := pattern.fullmatch(name)))
    return ([(0, first)] if first.exists() else []) + numbered


def _first_file_of(path: Path) -> Path | None:
    """The first file of the log `path` is a later segment of, if that file exists."""
    m = _SEGMENT.fullmatch(path.name)
    first = path.with_name(m.group(1) + m.group(3)) if m else None
    return first if first is not None and first.is_file() else None


def log_files(path: str | Path) -> list[Path]:
    """The files of a log, given its first file or the folder that holds it. Raises
    LogError for a later segment, or a folder with no log or several."""
    path = Path(path)
    if path.is_dir():
        firsts = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")
                  and _first_file_of(p) is None and _starts_like_a_log(p)]
        if len(firsts) != 1:
            raise LogError(f"{path} holds no decision log" if not firsts else
                           f"{path} holds {len(firsts)} decision logs ({', '.join(p.name for p in firsts)}); give "
                           "the first file of one")
        path = firsts[0]
    elif (first := _first_file_of(path)) is not None:
        raise LogError(f"{path} is a later file of the log {first}: give its first file or its folder")
    return [p for _, p in segments(path)]


def _starts_like_a_log(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(7) == b'{"seq":'
    except OSError:
        return False


def _lines(files: list[Path]) -> Iterator[Line]:
    for path in files:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                complete = raw.endswith(b"\n")
                yield Line(str(path), number, raw[:-1] if complete else raw, complete)


def _last_line(path: Path) -> bytes | None:
    """The last line of a regular file without its newline, None when it is empty.
    Raises LogError when it does not end with a newline."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        chunk, start = b"", end
        while start > 0 and chunk.count(b"\n") < 2:  # the line's own newline, and the one before it
            step = min(start, 1 << 16)
            start -= step
            f.seek(start)
            chunk = f.read(step) + chunk
    if not chunk.endswith(b"\n"):
        raise LogError(f"{path} ends in the middle of a record (its writer was stopped while writing it); check it "
                       "with `policyc audit verify` and start a new log")
    return chunk[:-1].rsplit(b"\n", 1)[-1]


def _chain_head(files: list[tuple[int, Path]], aead) -> str:
    """The hash a new run continues from: the last record's of the last file that has
    one, the zero hash for a new log. Raises LogError when the log cannot be continued."""
    for _, path in reversed(files):
        data = _last_line(path)
        if data is None:
            continue
        encrypted = is_envelope(data)
        if encrypted and aead is None:
            raise LogError(f"{path} is encrypted: give its key with --log-key-file, or start a new log")
        rec = read_record(Line(str(path), 0, data), aead)
        if isinstance(rec, Problem):
            raise LogError(f"cannot continue the hash chain of {path}: its last line "
                           + ("does not decrypt with this --log-key-file (another key?)" if encrypted else
                              "is not a record with a hash (a log of an older policyc?)") + "; start a new log")
        return rec.hash
    return ZERO_HASH


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)


def _sync_dir(path: Path) -> None:
    """A file's name survives a power loss once its folder is synced."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- writing ----------------------------------------------------------------------------
def _sync_failed(exc: Exception) -> OSError:
    """The error of a sync that failed: an OSError saying so, with the cause's errno (EIO
    for a defect that is not an OSError)."""
    why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else repr(exc)
    return OSError(getattr(exc, "errno", None) or errno.EIO, f"sync to disk failed: {why}")


def _saying(sync: Callable[..., None], *args) -> None:
    """`sync(*args)`; its OSError is raised as `_sync_failed` says it."""
    try:
        sync(*args)
    except OSError as exc:
        raise _sync_failed(exc) from None


class _GroupCommit:
    """--fsync batch: a thread syncs the log when something was written since its last
    sync, at most every BATCH_SYNC_S, so that no write waits for the disk. A failed sync
    ends the thread and is raised by the next write that would have woken it, and by
    `stop` (a run that wrote nothing after it still learns that its records may not be
    on disk)."""

    def __init__(self, fd: int, folder: Path, on_error: Callable[[OSError], None]):
        self._fd, self._folder, self._on_error = fd, folder, on_error
        self._retired: list[int] = []   # files rotated away: synced once more, then closed, here
        self._lock = threading.Lock()   # guards `_fd` and `_retired`, never a sync
        self._pending = False           # a write has asked for a sync not started yet
        self._wake, self._stop = threading.Event(), threading.Event()
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="decision-log-sync", daemon=True)
        self._thread.start()

    def written(self, wake: bool = True) -> None:
        """After each write: raise a failed sync, and with `wake` wake the thread, once per
        sync, not once per record."""
        if self.error is not None:
            raise self.error.with_traceback(None)  # raised again and again: no traceback piling up on it
        if wake and not self._pending:
            self._pending = True
            self._wake.set()

    def rotated(self, fd: int) -> None:
        """The log went on to a new file: the old one is synced and closed here, at the
        next sync (the writer asks for it as for any write)."""
        with self._lock:
            self._retired.append(self._fd)
            self._fd = fd

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            self._pending = False  # before the sync: a write from now on asks for the next one
            try:
                self.sync()
            except Exception as exc:  # an OSError, or a defect: either way syncing has stopped
                self.error = _sync_failed(exc)
                self._on_error(self.error)  # in this thread: the receiver hands it to its own
                return
            if self._stop.wait(BATCH_SYNC_S):
                return

    def sync(self) -> None:
        """Sync the files rotated away (then close them, and sync their folder for the new
        file's name) and the current one. Raises OSError as the sync does."""
        with self._lock:
            retired, self._retired, fd = self._retired, [], self._fd
        for old in retired:
            _sync(old)
            os.close(old)
        if retired:
            _sync_dir(self._folder)
        _sync(fd)

    def stop(self) -> None:
        """End the thread and sync what is left, in the caller's thread. Raises OSError
        as the sync does, or the thread's failed sync: the operating system reports a
        write-back error once, so a later sync succeeding would not mean it is on disk."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        _saying(self.sync)
        if self.error is not None:
            raise self.error.with_traceback(None)


class DecisionLog:
    """Appends records to the log at `path` (docs/audit.md): each is numbered, stamped
    with the policy's hashes, sealed into the hash chain, and handed to the operating
    system before `write` returns. A log that exists is continued: the new run's
    session record follows its last record.

    `fsync`: "always" (each record on disk before `write` returns), "batch" (a thread
    syncs every BATCH_SYNC_S at most) or "never" (the operating system's choice).
    `max_bytes`: the log goes on in a new numbered segment file rather than let one
    grow past this many bytes (unless a single record is larger). `log_key` (32 bytes) encrypts every
    record but the session one with AES-256-GCM; `sign_key` (`Ed25519PrivateKey`) signs
    the session record, a checkpoint every CHECKPOINT_EVERY records and one on `close`.

    Raises LogError when an existing log cannot be continued (its last line cut off,
    another key, no hash chain), OSError when the file cannot be opened."""

    def __init__(self, path: str | Path, policy_hash: str, build_hash: str, *, fsync: str = DEFAULT_FSYNC,
                 max_bytes: int | None = None, log_key: bytes | None = None, sign_key=None):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync is one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.policy_hash, self.build_hash = policy_hash, build_hash
        self.seq = 0
        self._recent: deque = deque(maxlen=RECENT)  # `recent`'s records, as `_record`'s arguments
        self._aead, self._keys = None, {}     # _keys: the key ids the session record names
        if log_key is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead = AESGCM(log_key)
            self._keys["log_key_id"] = key_id(log_key)
        self._sign = None if sign_key is None else sign_key.sign
        if sign_key is not None:
            self._keys["sign_key_id"] = public_key_id(sign_key.public_key())
        self._since_signed = 0
        self._middle = {kind: b',"kind":%s,"policy_hash":%s,"build_hash":%s,' % (  # after "ts"
            orjson.dumps(kind), orjson.dumps(policy_hash), orjson.dumps(build_hash)) for kind in KINDS}
        files = segments(self.path) or [(0, self.path)]
        self.head = _chain_head(files, self._aead)  # the hash the next record follows
        self._number, current = files[-1]
        created = not current.exists()
        self._fd = _open(current)
        info = os.fstat(self._fd)
        regular = stat.S_ISREG(info.st_mode)  # /dev/null is neither synced nor rotated
        self._size = info.st_size
        self._fsync = fsync if regular else "never"
        self._max_bytes = max_bytes if regular else None
        if created and self._fsync != "never":
            _sync_dir(current.parent)
        self._syncer = _GroupCommit(self._fd, current.parent, self._failed) if self._fsync == "batch" else None
        # The sealed lines not yet handed to the operating system, in order: bytearrays of
        # whole lines back to back, and between them a large record's fields as a view of
        # where orjson serialised them (`_BY_VIEW`). One write hands them all over (`_append`).
        self._parts: list = [bytearray()]
        self._ends: list[int] = []   # where each pending line ends, in bytes from the first one's start
        self._pending_size = 0       # bytes pending: where the last one ends
        self._prevs: list[str] = []  # the chain head each of them follows
        self._batches = 0                # open `batch` blocks
        self._sync_due = False           # written inside them, the sync thread not yet woken
        #: Called with the OSError of a write or a sync that failed, before it is raised
        #: (the runtime stops on it: no order may leave without its record); for a sync of
        #: --fsync batch, from the sync thread, as it fails.
        self.on_failure: Callable[[OSError], None] | None = None

    @contextmanager
    def batch(self):
        """Records written inside the block are handed to the operating system together,
        in one write, when the block ends or at `flush` (the runtime flushes before any
        order leaves, so an order's record is still written before its frame is sent).
        One read of a socket is one batch: a record per os.write cost more than the rest
        of the log. Blocks nest; the outermost one writes. Raises OSError as `flush`."""
        self._batches += 1
        try:
            yield self
        finally:
            self._batches -= 1
            if not self._batches:
                try:
                    self.flush()
                finally:  # the block's orders are out: now the sync thread may take the interpreter
                    if self._sync_due:  # (also when this flush failed: what went before it is written)
                        self._sync_due = False
                        self._told(self._syncer.written)

    def write(self, kind: str, ts: int | None = None, **fields) -> str:
        """Append one record and return its `hash`; `ts` is in ns since the epoch, None
        for the wall clock. When this returns, the record is in the operating system's
        hands (inside `batch`: at the batch's end or the next `flush`), and with fsync
        "always" on disk. Raises ValueError for an unknown kind or a field named like a
        member the log sets (`_RESERVED`), OSError when the file cannot be written (a full
        disk) or a background sync failed."""
        middle = self._middle.get(kind)
        if middle is None:
            raise ValueError(f"unknown record kind {kind!r}")
        if not _RESERVED.isdisjoint(fields):
            raise ValueError(f"{kind} record: {', '.join(sorted(_RESERVED.intersection(fields)))} "
                             "are the log's own members")
        seq, prev = self.seq + 1, self.head
        if ts is None:
            ts = time.time_ns()
        sign = self._sign
        if sign is not None and kind not in SIGNED:
            sign = None
        if kind == "session" or type(ts) is not int:
            body = (orjson.dumps(self._record(seq, ts, kind, fields, prev), option=JSON_OPTIONS)[:-1],)
        else:  # the bytes `seal` makes of the whole record, without serialising what every record repeats
            members = orjson.dumps(fields, option=JSON_OPTIONS)
            if len(members) > _BY_VIEW:
                body = (b'{"seq":%d,"ts":%d%s' % (seq, ts, middle), memoryview(members)[1:-1],
                        b',"prev_hash":"%s"' % prev.encode())
            else:
                body = (b'{"seq":%d,"ts":%d%s%s"prev_hash":"%s"' % (
                    seq, ts, middle, members[1:-1] + b"," if len(members) > 2 else b"", prev.encode()),)
        tail, hash_ = seal_open(body, sign)
        run = self._parts[-1]  # the bytearray the lines since the last large record's fields go on
        if self._aead is not None and kind != "session":
            line = envelope(self._aead, os.urandom(NONCE_BYTES), seq, b"".join((*body, tail[:-1]))) + b"\n"
            run += line
            self._pending_size += len(line)
        elif len(body) == 1:
            line = body[0]
            run += line
            run += tail
            self._pending_size += len(line) + len(tail)
        else:
            pending = self._parts
            head, fields_view, close = body
            run += head
            run = bytearray(close)
            run += tail
            pending += (fields_view, run)
            self._pending_size += len(head) + len(fields_view) + len(run)
        self._ends.append(self._pending_size)
        self._prevs.append(prev)
        self.seq, self.head = seq, hash_
        if kind not in _NOT_RECENT:
            self._recent.append((seq, ts, kind, fields, prev, hash_))
        if not self._batches:
            self.flush()
        if self._sign is not None:
            self._since_signed = 0 if sign is not None else self._since_signed + 1
            if self._since_signed >= CHECKPOINT_EVERY:
                self.write("checkpoint", closing=False)
        return hash_

    def _record(self, seq: int, ts: int, kind: str, fields: dict, prev: str, hash_: str | None = None) -> dict:
        """A record as a dict, its members in the order of its line."""
        record = {"seq": seq, "ts": ts, "kind": kind, "policy_hash": self.policy_hash,
                  "build_hash": self.build_hash, **fields}
        if kind == "session":
            record.update(self._keys)
        record["prev_hash"] = prev
        if hash_ is not None:
            record["hash"] = hash_
        return record

    @property
    def recent(self) -> list[dict]:
        """The latest decision records (at most RECENT), oldest first, `hash` included:
        for the status and the terminal view. Built when asked, not on every write."""
        return [self._record(*entry) for entry in self._recent]

    def flush(self) -> None:
        """Hand the pending records to the operating system, in as few writes as the
        segment size allows, then sync as the fsync mode says. Raises OSError when the
        file cannot be written (a full disk) or a background sync failed; then the records
        not written are dropped and the chain goes back to the last one written, so the
        next record follows it with no gap (an order whose record failed is not sent)."""
        if self._ends:
            self._told(self._flush)

    def _told(self, step: Callable[[], None]) -> None:
        """Run `step`; an OSError it raises goes to `on_failure` first."""
        try:
            step()
        except OSError as exc:
            self._failed(exc)
            raise

    def _failed(self, error: OSError) -> None:
        if self.on_failure is not None:
            self.on_failure(error)

    def _flush(self) -> None:
        ends, prevs = self._ends, self._prevs
        if not ends:
            return
        limit, done = self._max_bytes, 0  # done: the lines written
        try:
            if limit is None:
                self._append(self._parts, ends[-1])
                done = len(ends)
            else:  # cut where a segment file is full: at least one line in each, however large
                data, start = memoryview(b"".join(self._parts)), 0
                while done < len(ends):
                    if self._size and self._size + ends[done] - start > limit:
                        self._rotate()
                    take = done + 1
                    while take < len(ends) and self._size + ends[take] - start <= limit:
                        take += 1
                    self._append([data[start:ends[take - 1]]], ends[take - 1] - start)
                    done, start = take, ends[take - 1]
        except OSError:
            self.seq, self.head = self.seq - (len(ends) - done), prevs[done]
            raise
        finally:
            self._parts = [bytearray()]
            self._pending_size = 0
            ends.clear()
            prevs.clear()
        self._synced()

    def _append(self, parts: list, size: int) -> None:
        """`parts` (buffers of whole records, `size` bytes in all) at the end of the log,
        whole or not at all: one os.write for one buffer, one os.writev for several (a
        read with a large record), so that record is never copied into a joined buffer."""
        try:
            joined = parts[0] if len(parts) == 1 else None
            if joined is None and (len(parts) > _IOV_MAX or not hasattr(os, "writev")):
                joined = b"".join(parts)  # more buffers than one writev takes, or a system without it
            written = os.write(self._fd, joined) if joined is not None else os.writev(self._fd, parts)
            while written < size:  # a regular file takes less only when the disk is full: the next call says so
                if joined is None:
                    joined = b"".join(parts)
                written += os.write(self._fd, joined[written:])
        except OSError:
            os.ftruncate(self._fd, self._size)  # no partial line for the next record to follow
            raise
        self._size += size

    def _synced(self) -> None:
        if self._syncer is not None:
            # Inside a batch the thread is woken as the outermost block ends, not here: a
            # flush inside one comes just before orders leave (write-ahead), and a thread
            # woken then would take the interpreter from them as they are written to the socket.
            self._sync_due = self._sync_due or self._batches > 0
            self._syncer.written(wake=not self._batches)
        elif self._fsync == "always":
            _saying(_sync, self._fd)

    def _rotate(self) -> None:
        path = segment_path(self.path, self._number + 1)
        fd = _open(path)
        old, self._fd, self._size, self._number = self._fd, fd, 0, self._number + 1
        if self._syncer is not None:
            self._syncer.rotated(fd)
            self._synced()
            return
        os.close(old)  # with fsync "always" already synced, record by record
        if self._fsync == "always":
            _sync_dir(path.parent)

    def close(self) -> None:
        """Write the signed closing checkpoint (with a signing key), sync the file
        (unless fsync is "never") and close it; a second call does nothing. Raises
        OSError as `write` does."""
        if self._fd < 0:
            return
        try:
            if self._sign is not None:
                self.write("checkpoint", closing=True)
            self.flush()  # what a batch left pending (a stop in the middle of a read)
        finally:
            fd, self._fd = self._fd, -1  # a write after this fails (EBADF), never reaching a reused descriptor
            try:
                if self._syncer is not None:
                    self._told(self._syncer.stop)
                elif self._fsync == "always":
                    self._told(lambda: _saying(_sync, fd))
            finally:
                os.close(fd)


# ---- reading ----------------------------------------------------------------------------
def read_log(path: str | Path, log_key: bytes | None = None) -> list[dict]:
    """The records of a log (all its segment files), decrypted with `log_key` (32
    bytes), without checking the chain (`verify_log` does). Raises LogError for an
    encrypted record without the key or one that does not decrypt, ValueError
    (orjson.JSONDecodeError) for a line that is not JSON."""
    aead = None
    if log_key is not None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = AESGCM(log_key)
    records = []
    for line in _lines([p for _, p in segments(Path(path))]):
        obj = orjson.loads(line.data)
        if "enc" in obj:
            if aead is None:
                raise LogError(f"{line.file} line {line.number} is encrypted: give its log key")
            try:
                obj = orjson.loads(open_envelope(aead, obj))
            except ValueError:
                raise LogError(f"{line.file} line {line.number} does not decrypt with this key") from None
        records.append(obj)
    return records


def verify_log(path: str | Path, public_key_file: str | Path | None = None,
               log_key_file: str | Path | None = None,
               open_end: bool = False) -> tuple[list[Path], Summary, Problem | None]:
    """Check the log at `path` (its first file, or its folder): its files, what was
    checked, and its first bad record or None (`audit_chain.check`; `open_end`: a last
    signed run may lack its closing checkpoint, as a killed run's does, when a new run is
    about to follow it). Raises LogError
    when it cannot be checked: not a log, a key file that is not one, a key missing or
    not the log's, a file that cannot be read."""
    files = log_files(path)
    if not files:
        raise LogError(f"no such file: {path}")
    public_key = read_public_key(public_key_file) if public_key_file is not None else None
    aead = aead_key_id = None
    if log_key_file is not None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = read_log_key(log_key_file)
        aead, aead_key_id = AESGCM(key), key_id(key)
    try:
        summary, problem = check(lambda: _lines(files), aead, aead_key_id, public_key, open_end)
    except LogError as exc:
        raise LogError(f"{files[0]}: {exc}") from None
    except OSError as exc:
        raise LogError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return files, summary, problem
