"""The kernel's fast paths give what its general loop body gives, and what the interpreter
gives: the reference job of `make bench` (an EMA crossover with a stop, bench/ema_stop.yaml)
with one instrument and with several (with a gross exposure limit, so the running totals
are read), on streams with prices that are not numbers, infinite, zero, negative, the
largest double and subnormal, time going backwards and the last int64 nanosecond.

With several instruments the common market event runs in `run`'s hot loop too, which
loads the event's instrument's state and writes it through; that loop is off with a
decision trace, so a traced run against an untraced one compares the two paths bit for
bit (assert_trace_changes_nothing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policyc.compiler.build import compile_policy
# Its four kernels are fixed policies, not random ones: they go to the suite's cache (not
# tests/test_differential.py's throw-away one), so a process that runs some of these tests
# after another has compiled them, or a later run, loads them instead of compiling again.
from test_differential import StreamSpec, assert_same, assert_trace_changes_nothing, make_events

ROOT = Path(__file__).resolve().parent.parent
EMA_STOP = (ROOT / "bench" / "ema_stop.yaml").read_text()


def policy(tmp_path, n_inst: int, gross: bool):
    text = EMA_STOP.replace("instruments: [X]", f"instruments: [{', '.join(f'I{k}' for k in range(n_inst))}]")
    if gross:
        text = text.replace("risk:\n", "risk:\n  max_gross_exposure: 1e9\n")
    # short windows, so that the EMAs are warm early and the policy trades in a short stream
    text = text.replace("fast: 12", "fast: 2").replace("slow: 26", "slow: 5")
    path = tmp_path / f"ema_stop_{n_inst}_{int(gross)}.yaml"
    path.write_text(text)
    return compile_policy(path)


SPECS = [StreamSpec(seed=1, n=400, vol=0.01, jump_p=0.02, intent_p=0.0, control_p=0.0, bad_p=0.0,
                    market_intent_p=0.0, tick=False),
         StreamSpec(seed=2, n=400, vol=0.03, jump_p=0.08, intent_p=0.03, control_p=0.02, bad_p=0.06,
                    market_intent_p=0.0, tick=True, back_p=0.03),
         StreamSpec(seed=3, n=300, vol=0.01, jump_p=0.02, intent_p=0.0, control_p=0.01, bad_p=0.06,
                    market_intent_p=0.0, tick=False, back_p=0.1, leap=True)]


@pytest.mark.parametrize("n_inst,gross", [(1, False), (1, True), (3, False), (3, True)])
def test_fast_paths_match_interpreter_and_general_loop(tmp_path, n_inst, gross):
    cp = policy(tmp_path, n_inst, gross)
    for spec in SPECS:
        ev = make_events(spec, cp.columns, n_inst)
        assert_same(cp, ev, f"({n_inst} instruments, gross {gross}, {spec})")
        assert_trace_changes_nothing(cp, ev, f"({n_inst} instruments, gross {gross}, {spec})")


@pytest.mark.parametrize("n_inst", [1, 3])
def test_instrument_index_out_of_range_is_refused(tmp_path, n_inst):
    cp = policy(tmp_path, n_inst, False)
    m = cp.kernel
    ok = np.array([0, n_inst - 1, 0], dtype=np.int32)
    m.check_instruments(ok, 0, len(ok))
    for bad in ([0, n_inst], [-1, 0], [0, np.iinfo(np.int32).min], [np.iinfo(np.int32).max]):
        a = np.array(bad, dtype=np.int32)
        with pytest.raises(ValueError, match="instrument index out of range"):
            m.check_instruments(a, 0, len(a))
    # only events[start:stop] count
    a = np.array([-5, 0, n_inst - 1, n_inst + 7], dtype=np.int32)
    m.check_instruments(a, 1, 3)
    m.check_instruments(a, 2, 2)
