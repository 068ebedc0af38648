"""Start-up: what `policyc validate` loads, the expression parser's cached tables, and
the garbage collector left as it was for a caller of `main`."""
from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyc.cli import main
from policyc.dsl.cache import cache_root

ROOT = Path(__file__).resolve().parent.parent
EMA = ROOT / "policies" / "ema_cross.yaml"


def _validate(cache: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from policyc.cli import main; rc = main(['validate', %r]); "
            "print(sorted(m for m in ('numpy', 'numba', 'pyarrow', 'pydantic', 'lark') if m in sys.modules))"
            % str(EMA))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "POLICYC_CACHE": str(cache)})


def test_validate_loads_no_numeric_or_model_library(tmp_path):
    """Nor Lark, once its stand-alone parser is in the cache folder: the first run makes it."""
    first, warm = _validate(tmp_path), _validate(tmp_path)
    assert first.returncode == 0 and warm.returncode == 0, first.stderr + warm.stderr
    assert first.stdout.splitlines()[-1] == "['lark']"
    assert warm.stdout.splitlines()[-1] == "[]"


def test_parser_tables_are_cached_and_a_broken_file_is_rebuilt(tmp_path):
    first = _validate(tmp_path)
    tables = list((tmp_path / "parsers").glob("expressions-*.code"))
    assert len(tables) == 1 and tables[0].stat().st_size > 1000
    whole = tables[0].read_bytes()
    magic = importlib.util.MAGIC_NUMBER
    other_code = marshal.dumps(compile("x = 1", "other", "exec"))  # sealed as the parser is, but no parser
    damages = [whole[:200],  # cut short, as by a full disk
               whole[:-1] + bytes([whole[-1] ^ 1]),  # a bit flipped
               b"\0\0\r\n" + whole[len(magic):],  # another Python's bytecode, whose code could crash this one
               magic + hashlib.sha256(other_code).digest() + other_code]
    for damaged in damages:
        tables[0].write_bytes(damaged)
        again = _validate(tmp_path)
        assert again.returncode == 0 and again.stdout.splitlines()[0] == first.stdout.splitlines()[0], again.stderr
        made = tables[0].read_bytes()  # made anew, whole (marshal's bytes may differ from one process to the next)
        start = len(magic) + 32
        assert len(made) > 1000 and made[:len(magic)] == magic
        assert hashlib.sha256(made[start:]).digest() == made[len(magic):start]


def test_an_unwritable_cache_folder_only_costs_time(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = _validate(blocker / "cache")
    assert done.returncode == 0, done.stderr


def test_main_called_with_arguments_leaves_the_collector_alone(capsys):
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    assert main(["validate", str(EMA)]) == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() <= frozen  # main froze nothing (frozen objects may be freed meanwhile)


def _python(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_policyc_program_sets_numba_up_without_scipy_linear_algebra(tmp_path):
    """Numba, setting up, imports scipy.linalg (some 150 ms of a warm backtest) only to
    see whether np.convolve and np.correlate may use BLAS. The `policyc` program, whose
    process runs no Numba code but its kernels, sets it up without; np.dot in Numba and
    scipy.linalg itself still work afterwards, importing it then."""
    pytest.importorskip("scipy")
    code = ("import sys; from policyc.cli import main; sys.argv = ['policyc', 'compile', %r, '--out', %r]; "
            "rc = main(); print(rc, 'scipy.linalg' in sys.modules); import numba, numpy as np; "
            "print(numba.njit(lambda a: np.dot(a, a))(np.arange(3.0))); import scipy.linalg; "
            "print(scipy.linalg.det(np.eye(2)))")
    assert _python(code % (str(EMA), str(tmp_path)))[-4:] == ["0", "False", "5.0", "1.0"]


def test_a_warm_policyc_program_runs_cached_machine_code_without_setting_numba_up(capsys):
    """A warm `policyc backtest` loads its kernel's machine code before Numba's CPU target
    is set up, and never sets it up: Numba's implementations of Python and NumPy (some
    100 ms of start-up) are not imported, and the result is the library's, to the bit."""
    orcl = ROOT / "data" / "orcl-1995-2014.csv"
    assert main(["backtest", str(EMA), "--data", str(orcl), "--format", "json"]) == 0  # compiles if the cache has none
    expected = json.loads(capsys.readouterr().out)
    code = ("import sys; from policyc.cli import main; sys.argv = ['policyc', 'backtest', %r, '--data', %r, "
            "'--format', 'json']; rc = main(); print(rc, 'numba.np.arraymath' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code % (str(EMA), str(orcl))], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0 and done.stderr.split() == ["0", "False"], done.stderr
    got = json.loads(done.stdout)
    for run in (expected, got):
        del run["elapsed_s"], run["events_per_s"]
    assert got == expected


def test_a_numba_extension_that_compiles_as_it_loads_is_no_compile_of_a_warm_kernel(tmp_path, capsys):
    """Numba loads its extensions (`numba_extensions` entry points) before its first call;
    one may compile as it loads. A warm `policyc backtest` loads them before it runs its
    kernel, so that compile is not taken for the kernel's: no `compiling ...` line, and the
    compile-time estimate stays as it was."""
    info = tmp_path / "compiles_at_init-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: compiles-at-init\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[numba_extensions]\ninit = compiles_at_init:init\n")
    (tmp_path / "compiles_at_init.py").write_text(
        "def init():\n    from numba import njit\n    njit(lambda x: x * 2.0)(2.0)\n")
    orcl = ROOT / "data" / "orcl-1995-2014.csv"
    assert main(["backtest", str(EMA), "--data", str(orcl)]) == 0  # compiles if the cache has none
    capsys.readouterr()
    factor = cache_root() / "compile-seconds-per-line-squared"
    before = factor.read_text() if factor.exists() else None
    code = ("import sys; from policyc.cli import main; sys.argv = ['policyc', 'backtest', %r, '--data', %r]; "
            "sys.exit(main())")
    done = subprocess.run([sys.executable, "-c", code % (str(EMA), str(orcl))], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "compiling" not in done.stderr
    assert (factor.read_text() if factor.exists() else None) == before


def test_a_cached_kernel_loads_in_a_users_process_without_setting_numba_up(tmp_path):
    """A cached compile_policy in a process of a user's own loads the kernel's machine code
    without Numba's implementations of Python and NumPy (some 250 ms) and gives this
    process's backtest to the bit; the user's own Numba functions, cached and compiled
    afterwards, load and compile as Numba does and give their own results."""
    from policyc.compiler.build import compile_policy
    from policyc.runtime.backtest import load_events, run_backtest

    (tmp_path / "own.py").write_text("import numpy as np\nfrom numba import njit\n\n\n@njit(cache=True)\n"
                                     "def own(a):\n    return np.convolve(a, a).sum() + np.sort(a)[0]\n")
    orcl = str(ROOT / "data" / "orcl-1995-2014.csv")
    policy = compile_policy(EMA)  # fills the kernel cache
    here = run_backtest(policy, load_events(policy, [(None, orcl)])[0], progress=False)
    code = ("import sys, hashlib; sys.path.insert(0, %r); import numpy as np, numba; "
            "from policyc.compiler.build import compile_policy; "
            "from policyc.runtime.backtest import load_events, run_backtest; policy = compile_policy(%r); "
            "run = run_backtest(policy, load_events(policy, [(None, %r)])[0], progress=False); "
            "print(hashlib.sha256(run.orders.tobytes() + run.equity.tobytes()).hexdigest()); "
            "print('numba.np.arraymath' in sys.modules); from own import own; print(own(np.arange(5.0))); "
            "print(numba.njit(lambda a: np.dot(a, a) + np.linalg.det(2.0 * np.eye(2)))(np.arange(3.0)))")
    digest = hashlib.sha256(here.orders.tobytes() + here.equity.tobytes()).hexdigest()
    for _ in range(2):  # the second loads the user's function from Numba's cache
        assert _python(code % (str(tmp_path), str(EMA), orcl)) == [digest, "False", "100.0", "9.0"]


def test_a_process_of_ones_own_keeps_numba_as_it_sets_itself_up():
    """A kernel loaded in a user's process (the library, the gym) leaves Numba's set-up
    alone: the user's own np.convolve keeps its BLAS, with the same bits."""
    pytest.importorskip("scipy")
    code = ("from policyc.compiler.build import compile_policy; compile_policy(%r); "
            "import numba.np.arraymath as am; print(am._HAVE_BLAS)")
    assert _python(code % str(EMA)) == ["True"]


def test_another_thread_may_import_scipy_linear_algebra_while_numba_sets_up():
    pytest.importorskip("scipy")
    code = """
import sys, threading
from numba.core.registry import cpu_target
from policyc.compiler import jit
context = type(cpu_target.target_context)
refresh, got = context.refresh, []
def importer():
    try:
        import scipy.linalg
        got.append("ok")
    except ImportError as exc:
        got.append(type(exc).__name__)
def refresh_with_a_thread(self):  # the moment the setting-up thread refuses scipy.linalg
    thread = threading.Thread(target=importer)
    thread.start()
    thread.join()
    refresh(self)
context.refresh = refresh_with_a_thread
jit.set_up_numba_without_scipy_blas()
print(got[0], "numba.np.arraymath" in sys.modules)
"""
    assert _python(code) == ["ok", "True"]
