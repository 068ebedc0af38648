"""Start-up: what `policyc validate` loads, the expression parser's cached tables, and
the garbage collector left as it was for a caller of `main`."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyc.cli import main

ROOT = Path(__file__).resolve().parent.parent
EMA = ROOT / "policies" / "ema_cross.yaml"


def _validate(cache: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from policyc.cli import main; rc = main(['validate', %r]); "
            "print(sorted(m for m in ('numpy', 'numba', 'pyarrow', 'pydantic') if m in sys.modules))" % str(EMA))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "POLICYC_CACHE": str(cache)})


def test_validate_loads_no_numeric_or_model_library(tmp_path):
    done = _validate(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_parser_tables_are_cached_and_a_broken_file_is_rebuilt(tmp_path):
    first = _validate(tmp_path)
    tables = list((tmp_path / "parsers").glob("expressions-*.lark"))
    assert len(tables) == 1 and tables[0].stat().st_size > 1000
    tables[0].write_bytes(tables[0].read_bytes()[:200])  # cut short, as by a full disk
    again = _validate(tmp_path)
    assert again.returncode == 0 and again.stdout.splitlines()[0] == first.stdout.splitlines()[0], again.stderr
    assert tables[0].stat().st_size > 1000  # written anew


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


def test_a_kernel_loads_without_scipy_linear_algebra_which_stays_importable():
    """Numba, setting up, would import scipy.linalg (some 150 ms of a warm backtest) only to
    see whether a BLAS exists; `jit.load_kernel` sets it up without. np.dot in Numba and
    scipy.linalg itself still work afterwards, importing it then."""
    scipy = pytest.importorskip("scipy")
    code = ("import sys; from policyc.compiler.build import compile_policy; compile_policy(%r); "
            "print('scipy.linalg' in sys.modules); import numba, numpy as np; "
            "print(numba.njit(lambda a: np.dot(a, a))(np.arange(3.0))); import scipy.linalg; "
            "print(scipy.linalg.det(np.eye(2)))") % str(EMA)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "5.0", "1.0"], scipy.__version__
