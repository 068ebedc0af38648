# `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
INSTALL_LOG := $(VENV)/install.log

.PHONY: demo test bench fuzz crash clean bytecode

# pip's output goes to the log, which is shown (its end) only if the install fails.
$(STAMP): pyproject.toml
	@echo "== install: policyc into $(VENV) (about a minute on first run; pip's log: $(INSTALL_LOG))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[test]'; } > $(INSTALL_LOG) 2>&1 \
		|| { { tail -n 25 $(INSTALL_LOG); echo "install failed; the whole log: $(INSTALL_LOG)"; } >&2; exit 1; }
	@touch $(STAMP)

# Each `policyc` command imports policyc's modules from their compiled bytecode in __pycache__,
# which an editable install does not write (pip compiles only what it copies), and which Python
# never writes when PYTHONDONTWRITEBYTECODE is set (as in many CI and container images): every
# command then compiled all of policyc's source first, about 40 ms of a `policyc validate`.
# compileall writes what is missing or stale and returns at once when nothing is.
bytecode: $(STAMP)
	@$(PY) -m compileall -q -j 0 policyc compiler dsl runtime

demo: bytecode
	@$(PY) -m policyc.runtime.demo

# Two processes (pytest-xdist): most of the suite's time is Numba compiling kernels, one core each.
# Work stealing: a process that runs out of tests takes some of the other's, so the few long
# files (each random policy a compile) do not leave one core idle at the end.
test: bytecode
	$(PY) -m pytest -n 2 --dist worksteal

# The other side of the bench's CSV comparison: vectorbt with its Rust engine, in an environment
# of its own so that its pins never touch policyc's. Without it (no registry) the bench still
# runs, and that row says why it has no figure; the next `make bench` tries again.
VBT_VENV := .venv-vbt
VBT_STAMP := $(VBT_VENV)/.installed
$(VBT_STAMP):
	@echo "== install: vectorbt and vectorbt-rust into $(VBT_VENV), for the bench's CSV comparison (pip's log: $(VBT_VENV)/install.log)"
	@mkdir -p $(VBT_VENV) && { $(PYTHON) -m venv $(VBT_VENV) \
		&& $(VBT_VENV)/bin/python -m pip install 'vectorbt>=1.2' 'vectorbt-rust>=1.2'; } > $(VBT_VENV)/install.log 2>&1 \
		&& touch $(VBT_STAMP) \
		|| echo "vectorbt did not install (see $(VBT_VENV)/install.log): the bench goes on without that comparison" >&2

bench: bytecode $(VBT_STAMP)
	POLICYC_BENCH_VBT_PYTHON=$${POLICYC_BENCH_VBT_PYTHON:-$(CURDIR)/$(VBT_VENV)/bin/python} $(PY) bench/run.py

# `fuzz` and `crash` run one test for as long as they take: pytest's 300 s limit per test is off.
# The state machine of tests/test_invariants.py (every risk limit after every random step) with many
# more examples than `make test` runs: FUZZ_EXAMPLES (50,000 by default, derandomized; add
# POLICYC_FUZZ_RANDOM=1 for new ones each run). It prints how many ran.
FUZZ_EXAMPLES ?= 50000
fuzz: $(STAMP)
	POLICYC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/test_invariants.py -p no:cacheprovider -o timeout=0

# tests/test_crash_loop.py with CRASH_CYCLES kills of `policyc run` (50 by default; `make test` runs 8).
CRASH_CYCLES ?= 50
crash: $(STAMP)
	CRASH_CYCLES=$(CRASH_CYCLES) $(PY) -m pytest tests/test_crash_loop.py -s -p no:cacheprovider -o timeout=0

clean:
	rm -rf $(VENV) $(VBT_VENV) build reports .pytest_cache .hypothesis
