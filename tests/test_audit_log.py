"""The decision log's hash chain, encryption, signatures and segment files, and
`policyc audit verify`: an untouched log verifies; every kind of tampering is named at
the exact record that shows it (docs/audit.md, "What verify detects")."""
import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from policyc.cli import main
from policyc.runtime import audit_chain
from policyc.runtime.audit_chain import (BAD_SIGNATURE, EDITED, INSERTED, MISSING, REORDERED, TRUNCATED, ZERO_HASH,
                                         LogError, seal)
from policyc.runtime.live import audit
from policyc.runtime.live.audit import CHECKPOINT_EVERY, DecisionLog, read_log, read_log_key, segments, verify_log

EMA = Path(__file__).resolve().parent.parent / "policies" / "ema_cross.yaml"
P, B = "p" * 64, "b" * 64
LOG_KEY = bytes(range(32))


def _write_run(path, n_fills=4, **options) -> DecisionLog:
    """One run: a session, then an order and a fill per step; closed."""
    log = DecisionLog(path, P, B, **options)
    log.write("session", policy="t", params={"fast": 3.0})
    for k in range(1, n_fills + 1):
        oid = f"t-{k:06d}"
        log.write("order", ts=k, client_order_id=oid, instrument="ORCL", qty=100.0, price=10.0 + k, reasons=[])
        log.write("fill", ts=k, client_order_id=oid, instrument="ORCL", qty=100.0, price=10.0 + k, fee=0.1,
                  position=100.0 * k, equity=1e5)
    log.close()
    return log


def _lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _problem(path, **keys):
    _, summary, problem = verify_log(path, **keys)
    return problem


def _at(problem):
    return problem.kind, problem.line, problem.seq


@pytest.fixture
def signer(tmp_path):
    """An Ed25519 key, and its private and public key files (mode 600 for the private one)."""
    key = Ed25519PrivateKey.generate()
    private, public = tmp_path / "sign.pem", tmp_path / "sign.pub"
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key, private, public


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "log.key"
    path.write_text(LOG_KEY.hex() + "\n")
    path.chmod(0o600)
    return path


# ---- the format -------------------------------------------------------------------------
def test_each_hash_is_the_sha256_of_the_line_without_it_and_each_record_names_the_one_before(tmp_path):
    """The recipe of docs/audit.md, with nothing but hashlib and a JSON reader."""
    log = tmp_path / "log.jsonl"
    _write_run(log)
    before = ZERO_HASH
    for line in _lines(log):
        record = orjson.loads(line)
        cut = line.rindex(b',"hash":"')
        assert line.endswith(b'"}\n') and list(record)[-2:] == ["prev_hash", "hash"]
        assert hashlib.sha256(line[:cut] + b"}").hexdigest() == record["hash"]
        assert record["prev_hash"] == before
        before = record["hash"]


def test_a_record_is_in_the_file_when_write_returns(tmp_path):
    """Write-ahead: no buffer of policyc's own between a record and the operating system."""
    log = DecisionLog(tmp_path / "log.jsonl", P, B)
    log.write("session", policy="t")
    hash_ = log.write("order", ts=1, client_order_id="t-000001", qty=1.0)
    assert orjson.loads(_lines(tmp_path / "log.jsonl")[-1]) == log.recent[-1] and log.recent[-1]["hash"] == hash_
    log.close()


def test_a_record_the_disk_refuses_leaves_no_partial_line_and_no_gap(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    log = DecisionLog(path, P, B, fsync="never")
    log.write("session", policy="t")
    real, inode = os.write, path.stat().st_ino

    def full_disk(fd, data):  # part of the line, then no space
        if os.fstat(fd).st_ino != inode:
            return real(fd, data)
        real(fd, data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        log.write("order", ts=1, qty=1.0)
    monkeypatch.undo()
    log.write("order", ts=2, qty=2.0)
    log.close()
    assert [(r["seq"], r.get("qty")) for r in read_log(path)] == [(1, None), (2, 2.0)]
    assert _problem(path) is None


def _market_batch(n: int) -> orjson.Fragment:
    """A market record's events as the order core journals them: JSON already made."""
    return orjson.Fragment(orjson.dumps([["ORCL", 10 + k, {"price": 50.0 + k / 7}, None] for k in range(n)]))


@pytest.mark.parametrize("options", [{}, {"log_key": LOG_KEY}, {"max_bytes": 60_000}])
def test_a_large_record_is_written_from_its_own_bytes_as_seal_would_make_it(tmp_path, monkeypatch, key_file,
                                                                           options):
    """A read whose market batch is over 16 KiB: one os.writev, no joined copy; every line is
    the one `seal` makes, in clear, encrypted or cut into segment files."""
    path = tmp_path / "log.jsonl"
    log = DecisionLog(path, P, B, fsync="never", **options)
    log.write("session", policy="t")
    calls = []
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, buffers: calls.append(len(buffers)) or real(fd, buffers))
    with log.batch():
        log.write("market", ts=5, mono_ns=7, events=_market_batch(2_000))
        log.write("order", ts=5, client_order_id="t-000001", qty=1.0)
        log.write("market", ts=6, mono_ns=8, events=_market_batch(1_000))
    monkeypatch.undo()
    log.close()
    records = read_log(path, options.get("log_key"))
    assert [r["kind"] for r in records] == ["session", "market", "order", "market"]
    assert _problem(path, **({"log_key_file": key_file} if "log_key" in options else {})) is None
    assert calls == ([] if options else [5])  # encrypted lines and segment cuts are written whole
    for record in records[1:]:
        assert seal({k: v for k, v in record.items() if k != "hash"})[1] == record["hash"]


def test_a_large_record_the_disk_refuses_leaves_no_partial_line_and_no_gap(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    log = DecisionLog(path, P, B, fsync="never")
    log.write("session", policy="t")
    real = os.writev

    def full_disk(fd, buffers):  # the first buffer, then no space
        os.write(fd, buffers[0])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "writev", full_disk)
    with pytest.raises(OSError), log.batch():
        log.write("market", ts=1, mono_ns=1, events=_market_batch(2_000))
        log.write("order", ts=1, qty=1.0)
    monkeypatch.setattr(os, "writev", real)
    log.write("order", ts=2, qty=2.0)
    log.close()
    assert [(r["seq"], r.get("qty")) for r in read_log(path)] == [(1, None), (2, 2.0)]
    assert _problem(path) is None


def test_a_second_run_continues_the_chain_of_the_first(tmp_path):
    log = tmp_path / "log.jsonl"
    first = _write_run(log)
    _write_run(log)
    records = read_log(log)
    second = [r for r in records if r["kind"] == "session"][1]
    assert second["prev_hash"] == first.head and second["seq"] == 1
    files, summary, problem = verify_log(log)
    assert problem is None and summary.runs == 2 and summary.records == 18 and summary.head == records[-1]["hash"]


@pytest.mark.parametrize("mode", ["always", "batch", "never"])
def test_every_fsync_mode_writes_the_same_log(tmp_path, mode, monkeypatch):
    """`always` syncs in the writing thread after each record; `batch` only in its own
    thread (and once at close); `never` not at all."""
    synced = []
    real = audit._sync
    monkeypatch.setattr(audit, "_sync", lambda fd: (synced.append(threading.current_thread().name), real(fd)))
    log = DecisionLog(tmp_path / "log.jsonl", P, B, fsync=mode)
    log.write("session", policy="t")
    for k in range(50):
        log.write("order", ts=k, qty=1.0)
    writer = list(synced)
    log.close()
    assert _problem(tmp_path / "log.jsonl") is None
    main_thread = threading.current_thread().name
    if mode == "always":
        assert writer == [main_thread] * 51
    elif mode == "batch":
        assert main_thread not in writer and synced[-1] == main_thread
        assert "decision-log-sync" not in {t.name for t in threading.enumerate()}
    else:
        assert synced == []


def test_batch_mode_wakes_its_sync_thread_once_the_block_is_out(tmp_path, monkeypatch):
    """Inside a batch block a flush (the write-ahead before orders leave) hands the
    records to the operating system but leaves the sync thread asleep, since a thread
    woken then would take the interpreter from the orders being written to the socket;
    the block's end wakes it. A failed sync is still raised by that flush, before any
    order leaves."""
    log = DecisionLog(tmp_path / "log.jsonl", P, B, fsync="batch")
    log.write("session", policy="t")
    woken = _asleep_sync_thread(log, monkeypatch)
    with log.batch():
        log.write("order", ts=1, qty=1.0)
        log.flush()
        assert len(read_log(tmp_path / "log.jsonl")) == 2 and woken == []
        log.write("order", ts=2, qty=1.0)
        log.flush()
    assert woken == [1]
    syncer = log._syncer
    syncer.error = OSError(5, "Input/output error")
    with pytest.raises(OSError, match="Input/output"), log.batch():
        log.write("order", ts=3, qty=1.0)
        log.flush()
        pytest.fail("the flush went on past a failed sync")
    syncer.error = None
    log.close()
    assert _problem(tmp_path / "log.jsonl") is None


def _asleep_sync_thread(log, monkeypatch) -> list:
    """The sync thread of a --fsync batch log once idle, its wake-ups counted in the list.
    Each wake-up still wakes it: a thread back at its wait when `close` stops it would
    otherwise never end, and `close` would wait for it forever."""
    syncer = log._syncer
    deadline = time.monotonic() + 10
    while syncer._pending and time.monotonic() < deadline:
        time.sleep(0.001)
    woken, wake = [], syncer._wake.set
    monkeypatch.setattr(syncer._wake, "set", lambda: (woken.append(1), wake()))
    return woken


def test_a_batch_whose_last_write_fails_still_wakes_the_sync_thread(tmp_path, monkeypatch):
    """An order that left inside the block has its record written; a failed write at the
    block's end must not keep that record from the disk."""
    log = DecisionLog(tmp_path / "log.jsonl", P, B, fsync="batch")
    log.write("session", policy="t")
    woken = _asleep_sync_thread(log, monkeypatch)

    def full_disk(parts, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"), log.batch():
        log.write("order", ts=1, qty=1.0)
        log.flush()  # the order leaves
        log.write("fill", ts=2, qty=1.0)
        monkeypatch.setattr(log, "_append", full_disk)
    assert woken == [1] and [r["kind"] for r in read_log(tmp_path / "log.jsonl")] == ["session", "order"]
    monkeypatch.undo()
    log.close()


def test_a_new_segment_inside_a_batch_waits_for_the_block_to_wake_the_sync_thread(tmp_path, monkeypatch):
    log = DecisionLog(tmp_path / "log.jsonl", P, B, fsync="batch", max_bytes=700)
    log.write("session", policy="t")
    woken = _asleep_sync_thread(log, monkeypatch)
    with log.batch():
        for k in range(6):
            log.write("order", ts=k, qty=1.0)
            log.flush()
        assert len(segments(tmp_path / "log.jsonl")) > 2 and woken == []
    assert woken == [1]
    monkeypatch.undo()
    log.close()
    assert _problem(tmp_path / "log.jsonl") is None


def _closed_within(log, seconds: float = 10.0) -> bool:
    """Close `log` in a thread of its own: whether it returned within `seconds` (a close
    that waits forever for the sync thread fails the test instead of hanging the run)."""
    done = threading.Thread(target=log.close, daemon=True)
    done.start()
    done.join(seconds)
    return not done.is_alive()


def test_closing_an_idle_batch_log_ends_its_sync_thread(tmp_path):
    """The thread asleep at its wait for a write, long after its last sync: `close`
    wakes it to end it, and syncs what is left itself."""
    log = DecisionLog(tmp_path / "log.jsonl", P, B, fsync="batch")
    log.write("session", policy="t")
    thread = log._syncer._thread
    time.sleep(20 * audit.BATCH_SYNC_S)  # its sync done and its pause after it over: waiting for a write
    assert _closed_within(log) and not thread.is_alive()


def _failing_sync(monkeypatch, error: Exception) -> list:
    """The next sync in the sync thread raises `error`; any later one (the caller's, in
    `close`) succeeds, as a write-back error is reported once. Returns the threads that synced."""
    real, failed = audit._sync, []

    def sync(fd):
        if threading.current_thread().name == "decision-log-sync" and not failed:
            failed.append(fd)
            raise error
        real(fd)
    monkeypatch.setattr(audit, "_sync", sync)
    return failed


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), RuntimeError("a defect")],
                         ids=["EIO", "not an OSError"])
def test_a_failed_background_sync_is_raised_by_close_when_no_write_follows(tmp_path, monkeypatch, error):
    """The run's last records may not be on disk: its close says so, though the sync
    close makes itself succeeds. A failure that is not an OSError stops the syncing
    too, and is raised as one (the runtime halts on OSError from the log)."""
    failed = _failing_sync(monkeypatch, error)
    log = DecisionLog(tmp_path / "log.jsonl", P, B, fsync="batch")
    log.write("session", policy="t")
    deadline = time.monotonic() + 10
    while log._syncer.error is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert failed and not log._syncer._thread.is_alive()
    with pytest.raises(OSError, match="sync to disk failed") as raised:
        log.close()
    assert raised.value.errno == errno.EIO
    log.close()  # closed all the same: a second close does nothing
    assert [r["kind"] for r in read_log(tmp_path / "log.jsonl")] == ["session"]


def test_a_write_after_a_failed_background_sync_raises_it(tmp_path, monkeypatch):
    failed = _failing_sync(monkeypatch, RuntimeError("a defect"))
    log = DecisionLog(tmp_path / "log.jsonl", P, B, fsync="batch")
    log.write("session", policy="t")
    deadline = time.monotonic() + 10
    while log._syncer.error is None and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(OSError, match=r"sync to disk failed: RuntimeError\('a defect'\)"):
        log.write("order", ts=1, qty=1.0)
    assert failed
    with pytest.raises(OSError):
        log.close()


# ---- tampering: each found at its record, with its kind ---------------------------------
def _tampered(tmp_path, change, n_fills=4, **options):
    log = tmp_path / "log.jsonl"
    _write_run(log, n_fills, **options)
    lines = _lines(log)
    log.write_bytes(b"".join(change(lines)))
    return log


def _edit(k, old, new):
    def change(lines):
        assert old in lines[k]
        lines[k] = lines[k].replace(old, new)
        return lines
    return change


@pytest.mark.parametrize("field", [(b'"qty":100.0', b'"qty":1000.0'), (b'"price":13.0', b'"price":12.0')])
def test_an_edited_fill_is_named(tmp_path, field):
    log = _tampered(tmp_path, _edit(5, *field))  # line 6: the fill of the third order
    assert _at(_problem(log)) == (EDITED, 6, 6)


def test_a_deleted_record_is_named_at_the_record_after_it(tmp_path):
    log = _tampered(tmp_path, lambda lines: lines[:3] + lines[4:])
    problem = _problem(log)
    assert _at(problem) == (MISSING, 4, 5) and problem.detail == "seq 4 is missing"


def test_a_deleted_record_with_the_seqs_renumbered_is_missing_not_edited(tmp_path):
    def delete_and_renumber(lines):
        out = lines[:3]
        for line in lines[4:]:
            seq = orjson.loads(line)["seq"]
            out.append(line.replace(b'{"seq":%d,' % seq, b'{"seq":%d,' % (seq - 1), 1))
        return out

    problem = _problem(_tampered(tmp_path, delete_and_renumber))
    assert _at(problem) == (MISSING, 4, 4)
    assert "the record it follows is not in the log" in problem.detail


def test_two_swapped_records_are_reordered(tmp_path):
    def swap(lines):
        lines[3], lines[4] = lines[4], lines[3]
        return lines

    problem = _problem(_tampered(tmp_path, swap))
    assert _at(problem) == (REORDERED, 4, 5) and "line 5" in problem.detail


def test_a_forged_record_sealed_into_the_chain_is_inserted(tmp_path):
    """Its own hash is right and it follows the record before it: the record after it
    still follows that one."""
    def forge(lines):
        before = orjson.loads(lines[4])
        forged, _ = seal({"seq": 6, "ts": 3, "kind": "fill", "policy_hash": P, "build_hash": B,
                          "client_order_id": "t-000003", "instrument": "ORCL", "qty": 100.0, "price": 1.0,
                          "prev_hash": before["hash"]})
        return lines[:5] + [forged + b"\n"] + lines[5:]

    assert _at(_problem(_tampered(tmp_path, forge))) == (INSERTED, 6, 6)


def test_a_copied_record_is_inserted(tmp_path):
    problem = _problem(_tampered(tmp_path, lambda lines: lines[:7] + [lines[2]] + lines[7:]))
    assert _at(problem) == (INSERTED, 8, 3) and "a copy of" in problem.detail and "line 3" in problem.detail


def test_a_partial_last_line_is_truncated(tmp_path):
    log = _tampered(tmp_path, lambda lines: lines[:-1] + [lines[-1][:40]])
    assert _at(_problem(log)) == (TRUNCATED, 9, None)


def test_whole_records_cut_off_a_signed_log_are_truncated(tmp_path, signer):
    key, _, public = signer
    log = _tampered(tmp_path, lambda lines: lines[:-3], sign_key=key)  # the closing checkpoint and two records
    problem = _problem(log, public_key_file=public)
    assert _at(problem) == (TRUNCATED, 8, 8) and "closing checkpoint" in problem.detail


def test_whole_records_cut_off_an_unsigned_log_show_only_when_a_later_run_follows(tmp_path):
    """Without signatures the end of the log is wherever the file ends (docs/audit.md);
    a run appended later names the hash it follows, so a cut before it shows."""
    log = _tampered(tmp_path, lambda lines: lines[:-2])
    assert _problem(log) is None
    _write_run(log)  # continues from the shortened log: consistent again
    lines = _lines(log)
    log.write_bytes(b"".join(lines[:6] + lines[7:]))  # the first run's last record, before the second session
    problem = _problem(log)
    assert _at(problem) == (MISSING, 7, 1) and "previous run" in problem.detail


def test_a_flipped_byte_of_an_encrypted_record_is_named(tmp_path, key_file):
    def flip(lines):
        middle = len(lines[4]) // 2
        lines[4] = lines[4][:middle] + bytes([lines[4][middle] ^ 1]) + lines[4][middle + 1:]
        return lines

    log = _tampered(tmp_path, flip, log_key=LOG_KEY)
    problem = _problem(log, log_key_file=key_file)
    assert _at(problem) == (EDITED, 5, 5) and "does not decrypt" in problem.detail


def test_a_truncated_ciphertext_is_named(tmp_path, key_file):
    def cut(lines):
        lines[3] = lines[3][:60] + b'"}\n'
        return lines

    assert _at(_problem(_tampered(tmp_path, cut, log_key=LOG_KEY), log_key_file=key_file)) == (EDITED, 4, 4)


def test_encrypted_records_swapped_are_reordered(tmp_path, key_file):
    """The seq in clear is the associated data: each still decrypts where it was moved,
    and the chain inside tells the order."""
    def swap(lines):
        lines[5], lines[6] = lines[6], lines[5]
        return lines

    assert _at(_problem(_tampered(tmp_path, swap, log_key=LOG_KEY), log_key_file=key_file)) == (REORDERED, 6, 7)


def test_an_edit_with_every_hash_recomputed_fails_at_the_next_signature(tmp_path, signer):
    """Whoever edits a record and seals the rest of the chain again without the signing
    key is caught by the closing checkpoint's signature."""
    key, _, public = signer
    log = tmp_path / "log.jsonl"
    _write_run(log, sign_key=key)
    records = read_log(log)
    records[4]["qty"] = 1000.0
    head, out = ZERO_HASH, []
    for record in records:
        sig = record.pop("sig", None)
        record.pop("hash")
        record["prev_hash"] = head
        line, head = seal(record, (lambda digest: bytes.fromhex(sig)) if sig else None)
        out.append(line + b"\n")
    log.write_bytes(b"".join(out))
    assert _at(_problem(log, public_key_file=public)) == (BAD_SIGNATURE, 10, 10)


# ---- signatures --------------------------------------------------------------------------
def test_a_signed_log_has_a_checkpoint_every_so_often_and_one_at_close(tmp_path, signer, monkeypatch):
    key, _, public = signer
    monkeypatch.setattr(audit, "CHECKPOINT_EVERY", 3)
    log = tmp_path / "log.jsonl"
    _write_run(log, sign_key=key)
    records = read_log(log)
    assert [r["seq"] for r in records if r["kind"] == "checkpoint"] == [5, 9, 12]  # after 3 records, and at close
    assert [r["closing"] for r in records if r["kind"] == "checkpoint"] == [False, False, True]
    assert all(("sig" in r) == (r["kind"] in ("session", "checkpoint")) for r in records)
    files, summary, problem = verify_log(log, public_key_file=public)
    assert problem is None and summary.signatures_checked == 4 and summary.closed
    assert CHECKPOINT_EVERY == 1000  # the default the docs state


def test_a_wrong_public_key_is_a_bad_signature_at_the_session(tmp_path, signer):
    key, _, _ = signer
    log = tmp_path / "log.jsonl"
    _write_run(log, sign_key=key)
    other = tmp_path / "other.pub"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM,
                                                                             PublicFormat.SubjectPublicKeyInfo))
    problem = _problem(log, public_key_file=other)
    assert _at(problem) == (BAD_SIGNATURE, 1, 1) and "does not verify" in problem.detail


def test_an_unsigned_log_fails_when_signatures_are_asked_for(tmp_path, signer):
    _, _, public = signer
    log = tmp_path / "log.jsonl"
    _write_run(log)
    problem = _problem(log, public_key_file=public)
    assert _at(problem) == (BAD_SIGNATURE, 1, 1) and "not signed" in problem.detail


# ---- encryption ---------------------------------------------------------------------------
def test_an_encrypted_log_shows_only_its_session_and_reads_back_with_its_key(tmp_path, key_file):
    log = tmp_path / "log.jsonl"
    _write_run(log, log_key=LOG_KEY)
    lines = _lines(log)
    session = orjson.loads(lines[0])
    assert session["log_key_id"] == hashlib.sha256(LOG_KEY).hexdigest()[:16]
    assert LOG_KEY.hex().encode() not in log.read_bytes()
    assert all(list(orjson.loads(line)) == ["seq", "enc"] for line in lines[1:])
    assert b"ORCL" not in b"".join(lines[1:])
    records = read_log(log, LOG_KEY)
    assert [r["seq"] for r in records] == list(range(1, 10)) and records[2]["kind"] == "fill"
    files, summary, problem = verify_log(log, log_key_file=key_file)
    assert problem is None and summary.encrypted_runs == 1


def test_an_encrypted_log_needs_its_key(tmp_path, key_file):
    log = tmp_path / "log.jsonl"
    _write_run(log, log_key=bytes(32))
    with pytest.raises(LogError, match="wrong key: .* encrypted with key id "):
        verify_log(log, log_key_file=key_file)
    with pytest.raises(LogError, match="give its key with --key-file"):
        verify_log(log)


def test_a_log_is_continued_only_with_its_own_key(tmp_path):
    log = tmp_path / "log.jsonl"
    _write_run(log, log_key=LOG_KEY)
    with pytest.raises(LogError, match="is encrypted: give its key with --log-key-file"):
        DecisionLog(log, P, B)
    with pytest.raises(LogError, match="does not decrypt with this --log-key-file"):
        DecisionLog(log, P, B, log_key=bytes(32))
    _write_run(log, log_key=LOG_KEY)
    assert [r["seq"] for r in read_log(log, LOG_KEY)].count(1) == 2


def test_a_log_that_ends_mid_record_is_not_continued(tmp_path):
    log = tmp_path / "log.jsonl"
    _write_run(log)
    log.write_bytes(log.read_bytes()[:-10])
    with pytest.raises(LogError, match="ends in the middle of a record"):
        DecisionLog(log, P, B)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_open_to_others_is_refused(tmp_path, mode):
    path = tmp_path / "log.key"
    path.write_text(LOG_KEY.hex())
    path.chmod(mode)
    with pytest.raises(LogError, match=f"mode {mode:04o}.*chmod 600 {path}"):
        read_log_key(path)


# ---- segment files ----------------------------------------------------------------------
def test_a_rotated_log_continues_its_chain_across_numbered_files(tmp_path, signer):
    key, _, public = signer
    folder = tmp_path / "logs"
    log = folder / "decisions.jsonl"
    _write_run(log, n_fills=20, max_bytes=1500, sign_key=key)
    _write_run(log, n_fills=5, max_bytes=1500, sign_key=key)  # a second run goes on in the last file
    names = sorted(p.name for p in folder.iterdir())
    assert names[-1] == "decisions.jsonl" and names[0] == "decisions.000001.jsonl" and len(names) > 5
    assert all(p.stat().st_size <= 1500 for p in folder.iterdir())
    records = read_log(log)
    assert len(records) == 2 + 40 + 10 + 2  # sessions, orders and fills, closing checkpoints
    for given in (log, folder):
        files, summary, problem = verify_log(given, public_key_file=public)
        assert problem is None and len(files) == len(names) and summary.runs == 2
    with pytest.raises(LogError, match="is a later file of the log .*decisions.jsonl"):
        verify_log(folder / "decisions.000002.jsonl")


def test_a_missing_segment_file_is_missing_records(tmp_path):
    log = tmp_path / "decisions.jsonl"
    _write_run(log, n_fills=20, max_bytes=1000)
    (tmp_path / "decisions.000002.jsonl").unlink()
    problem = _problem(log)
    assert problem.kind == MISSING and problem.file.endswith("decisions.000003.jsonl") and problem.line == 1


# ---- the command ------------------------------------------------------------------------
def _audit(capsys, *argv):
    try:
        code = main(["audit", "verify", *map(str, argv)])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_verify_says_ok_with_counts(tmp_path, capsys, signer, key_file):
    key, _, public = signer
    log = tmp_path / "log.jsonl"
    _write_run(log, sign_key=key, log_key=LOG_KEY)
    code, out, err = _audit(capsys, log, "--public-key", public, "--key-file", key_file)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"OK {log}: 10 records in 1 run, 1 file (order 4, fill 4, session 1, checkpoint 1)"
    assert lines[1] == f"chain head: {read_log(log, LOG_KEY)[-1]['hash']}"
    assert lines[2:] == ["signatures: 2 verified with --public-key; the log ends with its closing checkpoint",
                         "encrypted: 1 of 1 runs"]


def test_verify_names_the_first_bad_record_and_exits_1(tmp_path, capsys):
    log = _tampered(tmp_path, _edit(5, b'"qty":100.0', b'"qty":1000.0'))
    assert _audit(capsys, log) == (1, f"BAD {log} line 6 (seq 6): edited: its content does not match its hash\n", "")


@pytest.mark.parametrize("make, line", [
    (lambda p: p.write_text("Date,Close\n2024-01-02,1\n"), "{log}: not a decision log (its first line is not a record)"),
    (lambda p: p.write_bytes(b""), "{log}: empty"),
    (lambda p: p.write_text('{"seq":1,"ts":5,"kind":"session"}\n'),
     "{log}: written without a hash chain (its first record has no `hash`)"),
])
def test_what_is_not_a_log_is_a_usage_error(tmp_path, capsys, make, line):
    log = tmp_path / "log.jsonl"
    make(log)
    code, out, err = _audit(capsys, log)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == "policyc: error: " + line.format(log=log)


def test_bad_inputs_of_verify_are_one_line_usage_errors(tmp_path, capsys, key_file):
    log = tmp_path / "log.jsonl"
    _write_run(log, log_key=LOG_KEY)
    open_key = tmp_path / "open.key"
    open_key.write_text(LOG_KEY.hex())
    open_key.chmod(0o644)
    not_a_key = tmp_path / "bad.key"
    not_a_key.write_text("hunter2")
    not_a_key.chmod(0o600)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [([tmp_path / "missing.jsonl"], f"argument LOG: no such file: {tmp_path / 'missing.jsonl'}"),
             ([empty], f"{empty} holds no decision log"),
             ([log], f"{log}: the run at {log} line 1 is encrypted (key id {audit_chain.key_id(LOG_KEY)}): give its "
                     "key with --key-file"),
             ([log, "--key-file", open_key],
              f"argument --key-file: {open_key} is open to group or others (mode 0644); a file of secrets must be private: "
              f"chmod 600 {open_key}"),
             ([log, "--key-file", not_a_key],
              f"argument --key-file: {not_a_key} does not hold a log key: 64 hex digits (32 bytes), as `openssl rand "
              "-hex 32` writes"),
             ([log, "--public-key", key_file], f"argument --public-key: {key_file} does not hold an Ed25519 public key "
                                              "in PEM")]
    for argv, line in cases:
        code, out, err = _audit(capsys, *argv)
        assert (code, out) == (2, ""), (argv, err)
        assert err.splitlines()[-1] == f"policyc: error: {line}" and "Traceback" not in err


def test_run_refuses_a_key_file_open_to_others_before_compiling(tmp_path, capsys):
    key = tmp_path / "log.key"
    key.write_text(LOG_KEY.hex())
    key.chmod(0o644)
    try:
        code = main(["run", str(EMA), "--feed", "ws://127.0.0.1:9", "--venue", "ws://127.0.0.1:9",
                     "--log", str(tmp_path / "log.jsonl"), "--log-key-file", str(key)])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1] == (
        f"policyc: error: argument --log-key-file: {key} is open to group or others (mode 0644); a file of secrets must "
        f"be private: chmod 600 {key}")
    assert not (tmp_path / "log.jsonl").exists()


@pytest.mark.parametrize("text, size", [("4096", 4096), ("64k", 65536), ("64M", 64 << 20), ("1G", 1 << 30)])
def test_log_max_bytes_takes_a_unit(text, size):
    from policyc.cli import build_parser

    args = build_parser().parse_args(["run", str(EMA), "--feed", "ws://h:1", "--venue", "ws://h:2",
                                      "--log-max-bytes", text])
    assert (args.log_max_bytes, args.fsync) == (size, "batch")


@pytest.mark.parametrize("value, line", [
    ("0", "argument --log-max-bytes: must be at least 1 byte, not 0"),
    ("1.5M", "argument --log-max-bytes: expected a size in bytes such as 1048576, 512k or 64M, got `1.5M`"),
])
def test_a_log_max_bytes_that_is_not_a_size_is_a_usage_error(capsys, value, line):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(EMA), "--feed", "ws://h:1", "--venue", "ws://h:2", "--log-max-bytes", value])
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"policyc: error: {line}"


# ---- nothing after the hash: a JSON reader keeps the last of two equal keys -----------------------------------------

@pytest.mark.parametrize("tail", [b',"qty":5000.0,"position":5000.0}', b',"policy_hash":"' + b"f" * 64 + b'"}',
                                  b"} ", b"}\r"])
def test_text_after_a_records_hash_is_an_edit(tmp_path, tail):
    """Members appended after `hash` would override the sealed ones for every reader
    (read_log, replay, the report) without touching the hash."""
    log = _tampered(tmp_path, lambda lines: lines[:5] + [lines[5].rstrip(b"\n")[:-1] + tail + b"\n"] + lines[6:])
    problem = _problem(log)
    assert _at(problem) == (EDITED, 6, 6) and "text after its hash" in problem.detail


def test_text_after_a_signature_is_an_edit_even_when_every_signature_verifies(tmp_path, signer):
    key, _, public = signer
    forged = b',"policy_hash":"' + b"f" * 64 + b'"}\n'
    log = _tampered(tmp_path, lambda lines: [lines[0].rstrip(b"\n")[:-1] + forged] + lines[1:], sign_key=key)
    assert _at(_problem(log, public_key_file=public)) == (EDITED, 1, 1)


def test_a_member_added_to_an_envelope_is_an_edit(tmp_path, key_file):
    log = _tampered(tmp_path, lambda lines: lines[:4] + [lines[4].rstrip(b"\n")[:-1] + b',"kind":"fill"}\n']
                    + lines[5:], log_key=LOG_KEY)
    problem = _problem(log, log_key_file=key_file)
    assert _at(problem) == (EDITED, 5, 5) and "envelope" in problem.detail


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.text(max_size=12).filter(lambda k: k not in {*audit._RESERVED, "kind", "ts"}), _JSON_VALUES,
                              max_size=6),
       ts=st.integers(-2**63, 2**63 - 1) | st.none(), kind=st.sampled_from(["order", "fill", "market", "risk"]))
def test_a_record_is_sealed_as_seal_seals_the_whole_record(tmp_path_factory, fields, ts, kind):
    """`write` serialises only a record's own fields and splices in the members every
    record repeats: the line must be byte for byte the one `seal` makes of the whole
    record (what verify and any other reader recompute)."""
    path = tmp_path_factory.mktemp("seal") / "log.jsonl"
    log = DecisionLog(path, P, B, fsync="never")
    written = log.write(kind, ts=ts, **fields)
    log.close()
    record = orjson.loads(_lines(path)[-1])
    line, hash_ = seal({key: value for key, value in record.items() if key != "hash"})
    assert _lines(path)[-1] == line + b"\n" and hash_ == written == record["hash"]


@pytest.mark.parametrize("name", sorted(audit._RESERVED))
def test_a_field_may_not_name_a_member_the_log_sets(tmp_path, name):
    """A field named like a member the log sets would make a second, contradicting member
    (a record claiming another policy's hash): refused, and nothing written."""
    log = DecisionLog(tmp_path / "log.jsonl", P, B, fsync="never")
    with pytest.raises(ValueError, match="the log's own members"):
        log.write("order", **{name: 1})
    assert log.seq == 0
    log.close()
