"""Where policyc keeps what it derives once and reuses in every later process: the
expression parser (`policyc.dsl.expressions`) and compiled kernels
(`policyc.compiler.jit`). The folder is the user's own, and what is in it is run."""
from __future__ import annotations

import os
import threading
from pathlib import Path


def cache_root() -> Path:
    """`$POLICYC_CACHE`, else `$XDG_CACHE_HOME/policyc`, else `~/.cache/policyc`."""
    env = os.environ.get("POLICYC_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "policyc"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` (text, or bytes as they are) to `path` through a temporary file in its
    folder, so that another process reading it at the same time sees the old file or the
    new one, never half. The file gets the permissions the umask leaves (as any new file:
    a cache shared by several users stays readable by them). Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # this writer's own
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
