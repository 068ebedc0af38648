"""`python -m policyc`: the same as the `policyc` command."""
import sys

try:
    from policyc.cli import main
except ModuleNotFoundError as exc:
    # Run from a source tree with a Python that never installed it: the `policyc/`
    # folder is found, the stages it maps in (dsl/, compiler/, runtime/) and the
    # dependencies are not.
    if not (exc.name or "").startswith("policyc."):
        print(f"policyc: error: {exc}; policyc is not installed in {sys.executable}", file=sys.stderr)
    else:
        print(f"policyc: error: policyc is not installed in {sys.executable} (only its source folder "
              "was found)", file=sys.stderr)
    print("policyc: run `make demo` and use .venv/bin/policyc, or `pip install .`", file=sys.stderr)
    sys.exit(2)
sys.exit(main())
