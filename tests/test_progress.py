"""Progress where a person waits: a real Numba compile is announced with an estimate
measured on this machine; a kernel from memory or from the cache is not."""
from __future__ import annotations

import re
import sys

from policyc.compiler import jit
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


def test_estimate_grows_with_the_square_of_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYC_CACHE", str(tmp_path))
    assert jit.compile_estimate("x\n" * 1000) == jit.DEFAULT_FACTOR * 1000 ** 2  # before any compile
    (tmp_path / jit.FACTOR_FILE).write_text("2e-6\n")
    assert jit.compile_estimate("x\n" * 500) == 2e-6 * 500 ** 2


# A process that compiles the policy when told to on stdin, and prints how many Numba
# compiles it ran and what it told the person waiting.
_COMPILER = """\
import sys
from numba.core import event
from policyc.compiler.build import compile_policy
from policyc.dsl.document import parse_policy_text

compiles = []

class Count(event.Listener):
    def on_start(self, ev):
        compiles.append(ev)

    def on_end(self, ev):
        pass

parsed = parse_policy_text(sys.stdin.readline().replace("\\\\n", "\\n"), "progress_probe.yaml")
print("ready", flush=True)
sys.stdin.readline()
messages = []
with event.install_listener("numba:compile", Count()):
    compile_policy(parsed, on_compile=messages.append)
print(len(compiles), len(messages), flush=True)
"""


def test_processes_that_first_run_a_kernel_at_once_compile_it_once(tmp_path):
    import os
    import subprocess

    env = {**os.environ, "POLICYC_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _COMPILER], env=env, text=True, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        proc.stdin.write(POLICY.replace("\n", "\\n") + "\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:  # both are set up: now they call the kernel at the same moment
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = sorted(tuple(map(int, proc.communicate(timeout=240)[0].split())) for proc in procs)
    assert [proc.returncode for proc in procs] == [0, 0]
    (waited, told_waiting), (compiled, told_compiling) = results
    assert waited == 0 and compiled > 0  # the second loaded the first's machine code from the cache
    assert told_waiting == told_compiling == 1  # and each told the person waiting, once
