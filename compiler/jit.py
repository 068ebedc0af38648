"""Kernel loading: generated source -> a file in a content-addressed cache -> Numba.

Numba caches only functions defined in real files, so each kernel is written to
`<cache>/<sha256 of source>/kernel.py` and imported from there; `cache=True` then keeps
the machine code beside it, and a fresh process loads it without recompiling.
A real compile takes seconds, so `watch_compile` tells the caller when one starts and
measures it, for the next estimate.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FunctionType, MethodType, ModuleType

from policyc.dsl.cache import cache_root, write_atomic

# Numba's compile time of a kernel grows with about the square of its source's lines: the
# example policies (910 to 1,850 lines, 5 to 10 s) took 2.8 to 5.7 us per line squared on
# a 2-core x86-64 VM. That is the factor until one is measured in the cache.
FACTOR_FILE = "compile-seconds-per-line-squared"
DEFAULT_FACTOR = 4e-6


def source_digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def kernel_path(source: str) -> Path:
    return cache_root() / "kernels" / source_digest(source)[:32] / "kernel.py"


#: True when the `policyc` program owns the process (`policyc.cli.main` called without
#: arguments): a kernel's cache miss then sets Numba up without scipy.linalg
#: (`load_machine_code_first`).
OWN_PROCESS = False


class _Refused:
    """A finder (`sys.meta_path` asks only for `find_spec`) that refuses one module to one
    thread, as if it were not installed. Not an importlib.abc.MetaPathFinder: importing
    that module costs `policyc validate` some 10 ms of its start-up."""

    def __init__(self, name: str):
        self.name, self.thread = name, threading.get_ident()

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"{fullname} is not loaded while Numba sets up its CPU target", name=fullname)
        return None


def set_up_numba_without_scipy_blas() -> None:
    """Set up Numba's CPU target (its implementations of Python and NumPy) without
    importing scipy.linalg, which it does when SciPy is installed only to decide whether
    its np.convolve and np.correlate may take their inner products from BLAS
    (numba.np.arraymath's `_HAVE_BLAS`): some 150 ms of a warm `policyc backtest`'s 0.6 s.

    For the `policyc` program's own process only (`policyc.cli.main` without arguments):
    the choice holds for the rest of the process, and there no code but the kernels,
    which never call either function, compiles with Numba; in a process of a user's own,
    their np.convolve would give other bits. Numba's extensions are loaded first, with
    SciPy whole, and other threads may import scipy.linalg meanwhile. np.dot and
    numba.np.linalg import it themselves when first compiled, and scipy.linalg imports as
    ever afterwards. Does nothing once Numba's target is set up."""
    if "numba.np.arraymath" in sys.modules:
        return
    from numba.core import entrypoints
    from numba.core.registry import cpu_target

    entrypoints.init_all()
    refused = _Refused("scipy.linalg")
    sys.meta_path.insert(0, refused)
    try:
        cpu_target.target_context.refresh()
    finally:
        sys.meta_path.remove(refused)


def load_machine_code_first(functions) -> None:
    """Have these Numba functions (dispatchers made with `cache=True`) load their cached
    machine code without first setting up Numba's CPU target, and set it up only when
    their cache misses, just before Numba compiles.

    Numba's `Cache.load_overload` sets the whole target up (it imports Numba's
    implementations of Python and NumPy: some 250 ms of a cached `compile_policy` in a
    fresh process, 100 ms of a warm `policyc backtest`) before it reads the cache, though
    machine code needs only Numba's runtime (NRT) and the C helpers its context installs
    when made. On a miss the target is set up as Numba sets it up, or in the `policyc`
    program's own process without scipy.linalg (`set_up_numba_without_scipy_blas`).

    Only these functions' caches change (an attribute of each cache object), so any other
    Numba function, a user's own among them, loads as ever, and the compiler sets the
    target up for itself, so every compile is as before. Does nothing with a Numba whose
    Cache class lacks the methods this relies on (one whose cache works otherwise)."""
    from numba.core import caching, entrypoints

    if not all(hasattr(caching.Cache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors")):
        return
    # Numba's extensions first, as Numba loads them before its first call anyway: here an
    # extension that compiles as it loads is not taken for a compile of the kernel
    entrypoints.init_all()
    for function in functions:
        cache = getattr(function, "_cache", None)
        if isinstance(cache, caching.Cache):
            cache.load_overload = MethodType(_load_overload_first, cache)


def _load_overload_first(cache, sig, target_context):
    """`Cache.load_overload` with the target set up only on a miss (`load_machine_code_first`)."""
    from numba.core.runtime import nrt

    nrt.rtsys.initialize(target_context)
    result = None
    with cache._guard_against_spurious_io_errors():  # as Numba's: an I/O error is a miss
        result = cache._load_overload(sig, target_context)
    if result is None:
        if OWN_PROCESS:
            set_up_numba_without_scipy_blas()
        else:
            target_context.refresh()
    return result


#: How a kernel function's machine-code file (Numba's `.nbc`) starts: this, then the SHA-256
#: of the rest, which is Numba's own file (`seal_machine_code`).
SEAL = b"policyc sha256\n"


def seal_machine_code(functions) -> None:
    """Have Numba write these functions' machine-code files sealed with the SHA-256 of their
    bytes, and take a file whose seal does not match (a bit flipped on disk, a file cut
    short or from before the seal) as a cache miss: Numba then compiles and writes it again.

    Numba reads a machine-code file by unpickling it, and one altered where the pickle
    still reads runs altered code, which can crash the process. The seal guards against
    damage, not against someone who may write the cache folder (they could seal what
    they write). Only these functions' cache files change (attributes of each one's
    Numba cache file object); does nothing with a Numba whose cache file lacks the
    methods this relies on."""
    from numba.core import caching

    for function in functions:
        files = getattr(getattr(function, "_cache", None), "_cache_file", None)
        if isinstance(files, caching.IndexDataCacheFile) and all(
                hasattr(files, name) for name in ("_save_data", "_load_data", "_dump", "_open_for_write", "_data_path")):
            files._save_data = MethodType(_save_sealed, files)
            files._load_data = MethodType(_load_sealed, files)


def _save_sealed(files, name: str, data) -> None:
    """Numba's `_save_data`, sealed. Machine code that cannot be kept (a folder where its
    file should be, a full disk) only costs the next process a compile, as elsewhere in
    the cache: Numba would fail the call that compiled it."""
    data = files._dump(data)
    try:
        with files._open_for_write(files._data_path(name)) as f:  # Numba's: a temporary file, then a rename
            f.write(SEAL + hashlib.sha256(data).digest() + data)
    except OSError:
        pass


def _load_sealed(files, name: str):
    """Numba's `_load_data` of a sealed file; None (a miss) when the seal does not match,
    or the path is not a regular file (a link to a device that reads forever)."""
    import pickle
    import stat

    with open(files._data_path(name), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read()
    start = len(SEAL) + 32
    if data[:len(SEAL)] != SEAL or hashlib.sha256(data[start:]).digest() != data[len(SEAL):start]:
        return None
    return pickle.loads(data[start:])


# One thread at a time imports a kernel module: another would find it in sys.modules
# half-built (and the first import of Numba is not safe from two threads at once).
_LOADING = threading.Lock()


def load_kernel(source: str, fresh: bool = False) -> tuple[ModuleType, Path]:
    """Write (once) and import the kernel module for this source. Safe to call from
    several threads at once. `fresh`: import it anew, and have Numba forget the machine
    code it keeps for it (a first call that failed: its cache files may be damaged), in
    whatever folder Numba keeps it.

    Where the kernel file cannot be written (a read-only cache), or Numba finds no folder
    it may write machine code to, the kernel's functions are made without Numba's cache
    and compile in this process."""
    with _LOADING:
        path = kernel_path(source)
        name = f"policyc_kernel_{path.parent.name}"
        if fresh:
            sys.modules.pop(name, None)
        module = sys.modules.get(name)
        if module is not None:
            return module, path
        try:
            if path.read_bytes() != source.encode():  # also a file that is not UTF-8
                write_atomic(path, source)
            cached = True
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, source)
                cached = True
            except OSError:
                cached = False
        except OSError:  # a kernel folder that cannot be written, a folder where the file should be
            cached = False
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            sys.modules[name] = module
            if cached:
                try:
                    spec.loader.exec_module(module)
                    functions = list(vars(module).values())
                    seal_machine_code(functions)
                    load_machine_code_first(functions)
                    if fresh:
                        for function in functions:
                            forget = getattr(getattr(function, "_cache", None), "flush", None)
                            if forget is not None:
                                forget()  # Numba's own: an empty index, so the next call compiles
                except RuntimeError as exc:  # Numba: "cannot cache function ...": no folder for it
                    if "cannot cache function" not in str(exc):
                        raise
                    cached = False
                except OSError:  # its index could not be emptied (a read-only folder)
                    cached = False
            if not cached:
                code = compile(source.replace("@njit(cache=True", "@njit(cache=False"), str(path), "exec")
                exec(code, module.__dict__)
        except BaseException:
            del sys.modules[name]  # a module that failed to load is not left for the next call
            raise
        return module, path


def _measured_factor() -> float | None:
    try:
        return float((cache_root() / FACTOR_FILE).read_text())
    except (OSError, ValueError):
        return None


def compile_estimate(source: str) -> float:
    """Seconds (s) a Numba compile of this kernel source should take on this machine: its
    lines squared times the factor measured by the compiles in this cache."""
    return (_measured_factor() or DEFAULT_FACTOR) * source.count("\n") ** 2


def _call(fn: Callable[..., object], args: tuple, kwargs: dict) -> object:
    return fn(*args, **kwargs)


# CPython 3.11 and 3.12 keep a thread's Python frames in chunks of 16 KiB and free a
# chunk as soon as the frame at its base returns, so code that calls in and out across a
# chunk's edge maps and unmaps memory on every call (python/cpython#142183: 3.13.0 still
# does, the fix is in later 3.13 releases and in 3.14). Numba's compiler recurses
# deeply, and where the caller's stack depth put an edge in its path, a compile took 1.3
# to 2 times as long, with 3 to 20 times the page faults (policies/ema_cross.yaml at a
# few depths; `make test` ran in 448 s instead of 582, its system time 32 CPU-s instead
# of 196). `with_stack_headroom` calls from a frame that reserves 2**17 words (1 MiB,
# never used) for its value stack: it does not fit the chunk in use, so CPython gives it
# a new one of 2 MiB (the first doubling of 16 KiB that holds it and 1,000 words more),
# and the frames of what it calls fit in the MiB above it.
_HEADROOM_WORDS = 1 << 17
_headroom = FunctionType(_call.__code__.replace(co_stacksize=_call.__code__.co_stacksize + _HEADROOM_WORDS), {})


def with_stack_headroom(fn: Callable[..., object], *args, **kwargs) -> object:
    """fn(*args, **kwargs), its Python frames kept off the edges of the chunks of CPython's
    frame stack (see above): what fn returns or raises. Costs about 10 us (a chunk mapped
    and unmapped), nothing beside a compile."""
    return _headroom(fn, args, kwargs)


#: How long a process waits for another's compile lock before it says it is waiting: a
#: kernel whose machine code is cached loads in a fraction of this, a compile takes seconds.
QUIET_WAIT_S = 1.0


@contextmanager
def _compiling_alone(source: str, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold the kernel's compile lock (`compile.lock` beside it, an flock) for the block,
    so that processes that first call the same kernel at once compile it once: the others
    wait, then load Numba's cached machine code. `on_wait()` is called when the wait
    lasts more than QUIET_WAIT_S (another process is compiling). The lock file is opened
    for reading, so a lock file another user made serves as well; where it can be neither
    made nor opened (a read-only cache), or the system has no flock, the block runs
    without it and each process compiles for itself. fcntl rather than the filelock
    package: this runs in every warm `policyc backtest`, and importing filelock cost
    more (about 8 ms) than the rest of the lock."""
    try:
        import fcntl

        fd = os.open(kernel_path(source).with_name("compile.lock"),
                     os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except (ImportError, OSError):
        fd = None
    if fd is None:
        yield
        return
    try:
        deadline = time.monotonic() + QUIET_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    on_wait()
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # and with it the lock, as a process that dies releases it


@contextmanager
def watch_compile(source: str, on_compile: Callable[[float], None]) -> Iterator[None]:
    """Run the block that first calls the kernel of `source`, holding its compile lock
    (`_compiling_alone`). When Numba compiles in it, or the block waits for another
    process compiling it, call `on_compile(estimate_s)` once, as the compile or the wait
    starts, and store what a compile took for the next estimate (a read-only cache keeps
    the old factor).

    Numba broadcasts `numba:compile` only when neither memory nor its cache holds the
    machine code, so a kernel loaded from the cache calls nothing."""
    from numba.core import event  # here: the CLI imports this module, and `validate` never imports Numba

    started: list[float] = []
    told: list[bool] = []

    def tell() -> None:
        if not told:
            told.append(True)
            on_compile(compile_estimate(source))

    class Watch(event.Listener):
        def on_start(self, ev):
            if not started:  # the first event: a kernel may compile helpers inside
                started.append(time.perf_counter())
                tell()

        def on_end(self, ev):
            pass

    with _compiling_alone(source, tell), event.install_listener("numba:compile", Watch()):
        yield
    if started:
        factor = (time.perf_counter() - started[0]) / source.count("\n") ** 2
        previous = _measured_factor()
        if previous is not None:  # a running mean: one compile on a busy machine is noisy
            factor = (previous + factor) / 2
        try:
            write_atomic(cache_root() / FACTOR_FILE, f"{factor:.6g}\n")
        except OSError:
            pass
