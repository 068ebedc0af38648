"""Kernel loading: generated source -> a file in a content-addressed cache -> Numba.

Numba caches only functions defined in real files, so each kernel is written to
`<cache>/<sha256 of source>/kernel.py` and imported from there; `cache=True` then keeps
the machine code beside it, and a fresh process loads it without recompiling.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType


def cache_root() -> Path:
    env = os.environ.get("POLICYC_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "policyc"


def source_digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def kernel_path(source: str) -> Path:
    return cache_root() / "kernels" / source_digest(source)[:32] / "kernel.py"


def load_kernel(source: str) -> tuple[ModuleType, Path]:
    """Write (once) and import the kernel module for this source."""
    path = kernel_path(source)
    if not path.exists() or path.read_text() != source:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)  # atomic: concurrent compilers never see half a file
    name = f"policyc_kernel_{path.parent.name}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module, path
