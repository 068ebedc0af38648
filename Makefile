# `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
INSTALL_LOG := $(VENV)/install.log

.PHONY: demo test bench clean

# pip's output goes to the log, which is shown (its end) only if the install fails.
$(STAMP): pyproject.toml
	@echo "== install: policyc into $(VENV) (about a minute on first run; pip's log: $(INSTALL_LOG))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[test]'; } > $(INSTALL_LOG) 2>&1 \
		|| { { tail -n 25 $(INSTALL_LOG); echo "install failed; the whole log: $(INSTALL_LOG)"; } >&2; exit 1; }
	@touch $(STAMP)

demo: $(STAMP)
	@$(PY) -m policyc.runtime.demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build reports .pytest_cache .hypothesis
