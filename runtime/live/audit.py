"""The decision log: JSON Lines, one record per line, numbered without gaps, each
stamped with the policy's hashes so any order can be tied to the exact policy that
sent it. The `session` record opens every run with its provenance."""
from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path

import orjson

JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY  # NaN is written as null
KINDS = ("session", "order", "fill", "reject", "overfill", "risk", "halt", "resume", "feed_silent", "feed_live",
         "bad_message")


class DecisionLog:
    """Records are flushed every `flush_every` lines and on close (SIGINT and SIGTERM
    close it), so a crash loses at most that many buffered lines."""

    def __init__(self, path: str | Path, policy_hash: str, build_hash: str, flush_every: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.policy_hash, self.build_hash = policy_hash, build_hash
        self.seq = 0
        self.flush_every = flush_every
        self.recent: deque = deque(maxlen=8)  # the latest records after the session one, for the terminal view
        self._file = open(self.path, "ab")

    def write(self, kind: str, ts: int | None = None, **fields) -> dict:
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        self.seq += 1
        record = {"seq": self.seq, "ts": ts if ts is not None else time.time_ns(), "kind": kind,
                  "policy_hash": self.policy_hash, "build_hash": self.build_hash, **fields}
        self._file.write(orjson.dumps(record, option=JSON_OPTIONS))
        if kind != "session":
            self.recent.append(record)
        if self.seq % self.flush_every == 0:
            self._file.flush()
        return record

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def read_log(path: str | Path) -> list[dict]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]
