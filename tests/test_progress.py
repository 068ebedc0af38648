"""Progress where a person waits: a real Numba compile is announced with an estimate
measured on this machine; a kernel from memory or from the cache is not."""
from __future__ import annotations

import pickle
import re
import sys

import pytest

from policyc.compiler import emit, jit
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text

# Its own name, so its kernel source (and module name) is no other test's.
POLICY = """\
policy: progress_probe
version: 1
instruments: [X]
features:
  fast: ema(close, 5)
signals:
  - when: close > fast
    target: 1
  - when: close < fast
    target: 0
"""


def test_first_compile_is_announced_and_cached_ones_are_not(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYC_CACHE", str(tmp_path))
    parsed = parse_policy_text(POLICY, "progress_probe.yaml")
    messages: list[str] = []

    first = compile_policy(parsed, on_compile=messages.append)
    assert len(messages) == 1
    seconds = re.fullmatch(r"compiling progress_probe \(first run; about (\d+) s\)\.\.\.", messages[0])
    assert seconds and int(seconds[1]) >= 1
    measured = float((tmp_path / jit.FACTOR_FILE).read_text())
    assert measured > 0 and jit.compile_estimate(first.source) > 0

    compile_policy(parsed, on_compile=messages.append)  # the kernel is in memory
    # A new module object has no machine code in memory: Numba loads it from its cache
    # beside the kernel file, as a fresh process would.
    del sys.modules[f"policyc_kernel_{first.kernel_path.parent.name}"]
    compile_policy(parsed, on_compile=messages.append)
    assert len(messages) == 1
    assert float((tmp_path / jit.FACTOR_FILE).read_text()) == measured  # nothing compiled, nothing measured


def test_cache_files_cut_short_or_altered_are_made_again(tmp_path, monkeypatch):
    """The rendered source kept in the cache folder, and Numba's index and machine code of
    the kernel, each cut short or altered on disk as by a failing disk: the next process
    renders or compiles them again (told as a compile) and runs as before, never an error."""
    import numpy as np

    from policyc.compiler.build import Events

    monkeypatch.setenv("POLICYC_CACHE", str(tmp_path))
    # its own kernel: another test's module of the same source would hold the machine code in memory
    parsed = parse_policy_text(POLICY.replace("progress_probe", "damaged_probe"), "damaged_probe.yaml")
    first = compile_policy(parsed)
    rng = np.random.default_rng(4)
    n = 500
    events = Events(np.arange(n, dtype=np.int64) * 60 * 10**9, np.zeros(n, np.int8), np.zeros(n, np.int32),
                    np.repeat(100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))[:, None], len(first.columns), 1))
    expected = first.run(events).orders
    assert len(expected) > 10
    (source_file,) = (tmp_path / "sources").glob("*.py")
    machine_code = first.kernel_path.parent / "__pycache__"
    key = source_file.stem

    def another_policys(text: bytes) -> bytes:  # sealed well, but for another key
        other = text.decode().partition("\n")[2].replace("def run(", "def run_(", 1)
        return f"{emit._sealed('another key', other)}\n{other}".encode()

    decide_code = next(machine_code.glob("kernel.decide-*.nbc")).read_bytes()

    def a_bit_flipped(sealed: bytes) -> bytes:  # inside the object code, where the pickle still reads
        start = len(jit.SEAL) + 32 if sealed.startswith(jit.SEAL) else 0
        at = sealed.index(b"\x7fELF") + 2000
        flipped = sealed[:at] + bytes([sealed[at] ^ 0x10]) + sealed[at + 1:]
        assert pickle.loads(flipped[start:]) != pickle.loads(sealed[start:])  # unsealed, Numba would run it
        return flipped

    damages = [("the rendered source altered", source_file, lambda b: b.replace(b"def run(", b"def run_(", 1), False),
               ("another policy's rendered source", source_file, another_policys, False),
               ("the kernel file not UTF-8", first.kernel_path, lambda b: b"\xff\xfe" + b, False),  # written again
               ("Numba's index of run cut short", next(machine_code.glob("kernel.run-*.nbi")), lambda b: b[:100], True),
               ("run's machine code replaced", next(machine_code.glob("kernel.run-*.nbc")), lambda b: b"junk" * 50,
                True),
               ("a bit of run's machine code flipped", next(machine_code.glob("kernel.run-*.nbc")), a_bit_flipped,
                True),
               ("decide's machine code in run's place", next(machine_code.glob("kernel.run-*.nbc")),
                lambda b: decide_code, True)]
    for what, path, damage, compiles in damages:
        path.write_bytes(damage(path.read_bytes()))
        del sys.modules[f"policyc_kernel_{first.kernel_path.parent.name}"]  # as a fresh process: no code in memory
        messages: list[str] = []
        again = compile_policy(parsed, on_compile=messages.append)
        assert np.array_equal(again.run(events).orders, expected, equal_nan=True), what
        assert len(messages) == (1 if compiles else 0), what  # a source is rendered, code compiled
    # a folder where run's machine code should be: compiled, run, and compiled again by the next process
    run_code = next(machine_code.glob("kernel.run-*.nbc"))
    run_code.unlink()
    run_code.mkdir()
    for _ in range(2):
        del sys.modules[f"policyc_kernel_{first.kernel_path.parent.name}"]
        messages = []
        again = compile_policy(parsed, on_compile=messages.append)
        assert np.array_equal(again.run(events).orders, expected, equal_nan=True) and len(messages) == 1
    # a link to a device that reads forever: not read, compiled again (and the link replaced by the file)
    run_code.rmdir()
    run_code.symlink_to("/dev/zero")
    del sys.modules[f"policyc_kernel_{first.kernel_path.parent.name}"]
    messages = []
    again = compile_policy(parsed, on_compile=messages.append)
    assert np.array_equal(again.run(events).orders, expected, equal_nan=True) and len(messages) == 1
    assert not run_code.is_symlink() and run_code.read_bytes().startswith(jit.SEAL)
    digest, _, source = source_file.read_text().partition("\n")
    assert digest == emit._sealed(key, source) and source == first.source
    assert first.kernel_path.read_text() == first.source


def test_a_cache_numba_cannot_write_to_compiles_in_the_process(tmp_path, monkeypatch):
    """Where Numba finds no folder it may write a kernel's machine code to (the kernel's
    folder read-only, no user cache folder), the kernel compiles in the process that runs
    it, told as a compile, rather than fail."""
    from policyc.compiler.emit import emit_cached
    from policyc.compiler.frontend import check_policy
    from policyc.compiler.lower import lower
    from policyc.compiler.passes import optimise

    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("POLICYC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # Numba's user cache folder: cannot be made
    parsed = parse_policy_text(POLICY.replace("progress_probe", "unwritable_probe"), "unwritable_probe.yaml")
    checked = check_policy(parsed).checked
    folder = jit.kernel_path(emit_cached(optimise(lower(checked)), checked)).parent
    folder.mkdir(parents=True)
    (folder / "__pycache__").write_text("")  # where Numba would keep the machine code: cannot be made
    messages: list[str] = []
    compiled = compile_policy(parsed, on_compile=messages.append)
    assert len(messages) == 1 and not (folder / "__pycache__").is_dir()
    assert compiled.kernel.run.signatures  # compiled, in memory only
    # a cache whose kernel file cannot be written at all (its folder is a file here)
    monkeypatch.setenv("POLICYC_CACHE", str(tmp_path / "second"))
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "kernels").write_text("")
    del sys.modules[f"policyc_kernel_{folder.name}"]
    again = compile_policy(parsed, on_compile=messages.append)
    assert len(messages) == 2 and again.kernel.run.signatures


def test_estimate_grows_with_the_square_of_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYC_CACHE", str(tmp_path))
    assert jit.compile_estimate("x\n" * 1000) == jit.DEFAULT_FACTOR * 1000 ** 2  # before any compile
    (tmp_path / jit.FACTOR_FILE).write_text("2e-6\n")
    assert jit.compile_estimate("x\n" * 500) == 2e-6 * 500 ** 2


# A process that compiles the policy in THREADS threads at once when told to on stdin (Numba
# not imported before), and prints how many signatures of the kernel it compiled rather
# than loaded from the cache, then how many lines each thread told the person waiting.
_COMPILER = """\
import sys
import threading
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text

parsed = parse_policy_text(sys.stdin.readline().replace("\\\\n", "\\n"), "progress_probe.yaml")
print("ready", flush=True)
sys.stdin.readline()
told, kernels = [], []

def compile_one():
    messages = []
    kernels.append(compile_policy(parsed, on_compile=messages.append).kernel)
    told.append(len(messages))

threads = [threading.Thread(target=compile_one) for _ in range(int(sys.argv[1]))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert len(kernels) == len(threads) and all(k is kernels[0] for k in kernels)
print(sum(kernels[0].run.stats.cache_misses.values()), *told, flush=True)
"""


def test_processes_and_threads_that_first_run_a_kernel_at_once_compile_it_once(tmp_path):
    """Two processes, one of them with two threads, call a new kernel at the same moment:
    one compiles it, the other loads its machine code, and each thread is told once."""
    import os
    import subprocess

    env = {**os.environ, "POLICYC_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _COMPILER, str(threads)], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for threads in (2, 1)]
    for proc in procs:
        proc.stdin.write(POLICY.replace("\n", "\\n") + "\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:  # both are set up: now they call the kernel at the same moment
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [list(map(int, proc.communicate(timeout=240)[0].split())) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    compiled = sorted(misses for misses, *_ in results)
    assert compiled[0] == 0 and compiled[1] > 0  # one loaded the other's machine code from the cache
    assert [told for _, *told in results] == [[1, 1], [1]]  # each thread told the person waiting, once


def test_cache_files_get_the_permissions_the_umask_leaves(tmp_path):
    """A cache shared by several users (kernels, parser, calendars) stays readable by them:
    its files are made as any new file is, not private as a temporary file would be."""
    import os
    import stat

    from policyc.dsl.cache import write_atomic

    before = os.umask(0o022)
    try:
        write_atomic(tmp_path / "kernel.py", "source")
        write_atomic(tmp_path / "parser.code", b"code")
        write_atomic(tmp_path / "kernel.py", "source again")  # replaced whole
    finally:
        os.umask(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernel.py", "parser.code"]  # no temporary file left
    assert (tmp_path / "kernel.py").read_text() == "source again"
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o644}


def _faults_over_depths(call, depths: int = 400, calls: int = 200) -> int:
    """Page faults of this thread while `call` runs `calls` times at each stack depth
    from 0 to `depths`."""
    import resource

    def at_depth(k: int) -> None:
        if k:
            return at_depth(k - 1)
        for _ in range(calls):
            call(k)

    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for depth in range(depths):
        at_depth(depth)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


def test_a_compile_runs_clear_of_the_edges_of_the_frame_stacks_chunks():
    """CPython 3.11 and 3.12 free a chunk of the frame stack as soon as the frame at its
    base returns, so a call at the depth of a chunk's edge maps and unmaps a chunk every
    time (python/cpython#142183): 200 calls there fault 200 pages. `compile_policy` runs
    under `jit.with_stack_headroom`, where calls at any depth find the chunk mapped."""
    def leaf(k):
        return k + 1

    assert jit.with_stack_headroom(leaf, 1) == 2
    inside = jit.with_stack_headroom(_faults_over_depths, leaf)
    assert inside < 100, inside
    if sys.version_info < (3, 13):  # the control: without the headroom, some depth is at an edge
        # (3.13.0 too; the later 3.13 releases and 3.14 keep a chunk, so there it need not be)
        outside = _faults_over_depths(leaf)
        assert outside >= 200, outside


def test_compile_policy_and_compile_checked_run_with_stack_headroom(monkeypatch):
    """Both entry points run their work under `jit.with_stack_headroom`: the check of the
    file too, and a failure passes through it unchanged."""
    from policyc.compiler.build import compile_checked
    from policyc.compiler.frontend import check_policy
    from policyc.dsl.diagnostics import PolicyError

    real, ran = jit.with_stack_headroom, []

    def spy(fn, *args, **kwargs):
        ran.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(jit, "with_stack_headroom", spy)
    broken = POLICY.replace("ema(close, 5)", "ema(closing, 5)")
    assert broken != POLICY
    with pytest.raises(PolicyError, match="closing"):
        compile_policy(parse_policy_text(broken, "progress.yaml"))
    assert len(ran) == 1

    class Stop(Exception):
        pass

    def stop(fn, *args, **kwargs):
        ran.append(fn)
        raise Stop

    monkeypatch.setattr(jit, "with_stack_headroom", stop)
    with pytest.raises(Stop):
        compile_checked(check_policy(parse_policy_text(POLICY, "progress.yaml")))
    assert len(ran) == 2 and ran[1].__name__ == "_compile_checked"
