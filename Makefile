# `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
INSTALL_LOG := $(VENV)/install.log

.PHONY: demo test bench fuzz crash clean

# pip's output goes to the log, which is shown (its end) only if the install fails.
$(STAMP): pyproject.toml
	@echo "== install: policyc into $(VENV) (about a minute on first run; pip's log: $(INSTALL_LOG))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[test]'; } > $(INSTALL_LOG) 2>&1 \
		|| { { tail -n 25 $(INSTALL_LOG); echo "install failed; the whole log: $(INSTALL_LOG)"; } >&2; exit 1; }
	@touch $(STAMP)

demo: $(STAMP)
	@$(PY) -m policyc.runtime.demo

# Two processes (pytest-xdist): most of the suite's time is Numba compiling kernels, one core each.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) bench/run.py

# The state machine of tests/test_invariants.py (every risk limit after every random step) with many
# more examples than `make test` runs: FUZZ_EXAMPLES (50,000 by default, derandomized; add
# POLICYC_FUZZ_RANDOM=1 for new ones each run). It prints how many ran.
FUZZ_EXAMPLES ?= 50000
fuzz: $(STAMP)
	POLICYC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/test_invariants.py -p no:cacheprovider

# tests/test_crash_loop.py with CRASH_CYCLES kills of `policyc run` (50 by default; `make test` runs 8).
CRASH_CYCLES ?= 50
crash: $(STAMP)
	CRASH_CYCLES=$(CRASH_CYCLES) $(PY) -m pytest tests/test_crash_loop.py -s -p no:cacheprovider

clean:
	rm -rf $(VENV) build reports .pytest_cache .hypothesis
