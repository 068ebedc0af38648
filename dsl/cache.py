"""Where policyc keeps what it derives once and reuses in every later process: the
expression parser's tables (`policyc.dsl.expressions`) and compiled kernels
(`policyc.compiler.jit`). The folder is the user's own, and what is in it is run."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """`$POLICYC_CACHE`, else `$XDG_CACHE_HOME/policyc`, else `~/.cache/policyc`."""
    env = os.environ.get("POLICYC_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "policyc"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in its folder, so that another
    process reading it at the same time sees the old file or the new one, never half.
    Raises OSError."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
