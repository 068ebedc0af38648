"""The Numba kernel against the reference interpreter on random policies
(tests/test_differential.py draws them and compares the two).

Each generated policy costs one Numba compile, so every example runs several event
streams, some of them under re-bound param values (`with_params` reuses the kernel).
The number of examples is fixed (EXAMPLES) and they are the same on every run
(derandomized); the test fails unless every one of them compiled and was compared.
Shrinking is off (each shrink step would be another compile): a failure prints the
policy text, the stream spec (seed and knobs) and the bound params, which is enough to
replay it with `make_events`.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st

from policyc.compiler.build import compile_policy
from policyc.dsl.diagnostics import PolicyError
from policyc.dsl.document import parse_policy_text
from test_differential import (_private_kernel_cache, assert_same,  # noqa: F401 - the fixture is autouse
                               assert_trace_changes_nothing, make_events, policies, rebound_params, stream_specs)

STREAMS_PER_POLICY = 5
#: Each example is one Numba compile (2-9 s), so there are few, and the same ones on every
#: run (derandomized: a failure is a failure of the code, never of the draw). For a bug
#: hunt, more and random ones: POLICYC_DIFF_EXAMPLES=300 POLICYC_DIFF_RANDOM=1 pytest tests/test_differential_random.py
EXAMPLES = int(os.environ.get("POLICYC_DIFF_EXAMPLES", "6"))
RANDOM = bool(os.environ.get("POLICYC_DIFF_RANDOM"))
_compared: list[str] = []  # the policies compared in full by the current run, in order


@settings(max_examples=EXAMPLES, derandomize=not RANDOM, deadline=None, database=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(gp=policies(), data=st.data())
def _kernel_matches_interpreter(gp, data):
    streams = [(rebound_params(data.draw, gp) if k > 0 else {}, data.draw(stream_specs, label=f"stream {k}"))
               for k in range(STREAMS_PER_POLICY)]
    note(gp.text)
    try:
        base = compile_policy(parse_policy_text(gp.text, "gen.yaml"))
    except PolicyError as exc:   # not a valid policy: Hypothesis draws another, this one does not count
        note(str(exc))
        assume(False)
    for overrides, spec in streams:
        cp = base
        if overrides:
            try:
                cp = base.with_params(**overrides)
            except PolicyError:      # e.g. a window param re-bound to 0
                cp = base
        ev = make_events(spec, cp.columns, gp.n_instruments)
        assert_same(cp, ev, f"on {spec} with params {cp.params}")
        assert_trace_changes_nothing(cp, ev, f"on {spec} with params {cp.params}")
    _compared.append(gp.text)


def test_kernel_matches_interpreter_on_random_policies():
    """On EXAMPLES random valid policies, each under STREAMS_PER_POLICY random event
    streams and in both fill modes, the kernel and the interpreter agree on everything
    (`differences`); and all EXAMPLES of them did run: Hypothesis stops early, without
    failing, when too many of its draws are invalid policies, and that must not pass
    as a success."""
    _compared.clear()
    _kernel_matches_interpreter()
    assert len(_compared) >= EXAMPLES, (
        f"only {len(_compared)} of {EXAMPLES} random policies were compiled and compared "
        "(Hypothesis gave up on too many invalid ones)")
