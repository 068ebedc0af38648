"""The package's shape: one import name, and imports that point one way.

`policyc.dsl` <- `policyc.compiler` <- `policyc.runtime` <- `policyc.cli`: a stage may
import the stages before it, never one after it. The top-level folders dsl/, compiler/
and runtime/ are only ever imported as parts of `policyc`.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("policyc.dsl", "policyc.compiler", "policyc.runtime", "policyc.cli")
FOLDERS = {"policyc.dsl": "dsl", "policyc.compiler": "compiler", "policyc.runtime": "runtime",
           "policyc": "policyc"}


def _modules():
    """(dotted module name, path) of every Python file the wheel installs."""
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def _imports(module: str, path: Path):
    """Absolute names of everything `path` imports, with their line numbers."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield name, node.lineno


def _layer(name: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            return i
    return None


def test_imports_point_one_way():
    """No stage imports a later one (lazy imports inside functions included)."""
    wrong = []
    for module, path in _modules():
        own = _layer(module)
        for name, line in _imports(module, path):
            target = _layer(name)
            if own is not None and target is not None and target > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_stages_are_imported_only_through_policyc():
    """`import compiler` would load a second copy of a stage (and its exception classes)."""
    bare = {"dsl", "compiler", "runtime"}
    wrong = []
    files = [p for _, p in _modules()] + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    for path in files:
        for name, line in _imports("tests.x", path):
            if name and name.split(".")[0] in bare:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_wheel_installs_one_top_level_name():
    """Every package setuptools installs is `policyc` or inside it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.split(".")[0] for p in config["packages"]} == {"policyc"}
    assert set(config["package-dir"]) <= set(config["packages"])
    # every folder that holds Python code is listed, so none is left out of the wheel
    listed = set(config["packages"])
    for module, path in _modules():
        if path.name == "__init__.py":
            assert module in listed, f"{module} ({path.parent.relative_to(ROOT)}) is not in pyproject's packages"


def test_the_package_imports_from_anywhere(tmp_path):
    """Importing from outside the source tree finds every stage under `policyc`."""
    code = ("import policyc.dsl, policyc.compiler, policyc.runtime, policyc.cli, sys; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dsl', 'compiler', 'runtime'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_fresh_compile_from_outside_the_source_tree(tmp_path):
    """Templates and grammar are found through the package, not the working directory:
    an empty kernel cache and a directory far from the repository still compile."""
    env = {**os.environ, "POLICYC_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "policyc", "compile", str(ROOT / "policies" / "ema_cross.yaml"),
                          "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "kernel.py").is_file()
    # a person waiting on the first compile is told why; stdout stays the result
    assert out.stderr.startswith("compiling ema_cross (first run; about "), out.stderr
    assert "compiling" not in out.stdout


def test_a_python_without_policyc_installed_gets_a_fix_not_a_traceback():
    """From the source tree, a Python that never installed policyc finds the `policyc/`
    folder but not the stages mapped into it: one clear message, exit 2."""
    out = subprocess.run([sys.executable, "-S", "-m", "policyc", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        f"policyc: error: policyc is not installed in {sys.executable} (only its source folder was found)",
        "policyc: run `make demo` and use .venv/bin/policyc, or `pip install .`"]
