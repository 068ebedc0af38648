"""The kernel's fast paths give what its general loop body gives, and what the interpreter
gives: the reference job of `make bench` (an EMA crossover with a stop, bench/ema_stop.yaml,
as tests/test_backtest.py writes it) with one instrument and with several (with a gross
exposure limit, so the running totals are read), on streams with prices that are not
numbers, infinite, zero, negative, the largest double and subnormal, time going backwards
and the last int64 nanosecond.

With several instruments the common market event runs in `run`'s hot loop too, which
loads the event's instrument's state and writes it through; that loop is off with a
decision trace, so a traced run against an untraced one compares the two paths bit for
bit (assert_trace_changes_nothing)."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from policyc.compiler.build import compile_policy
# Its four kernels are fixed policies, not random ones: they go to the suite's cache (not
# tests/test_differential.py's throw-away one), so a process that runs some of these tests
# after another has compiled them, or a later run, loads them instead of compiling again.
from test_differential import StreamSpec, assert_same, assert_trace_changes_nothing, make_events
from test_backtest import EMA_STOP as BACKTEST_EMA_STOP

ROOT = Path(__file__).resolve().parent.parent
EMA_STOP = (ROOT / "bench" / "ema_stop.yaml").read_text()


#: The four kernels are those of tests/test_backtest.py's `EMA_STOP`: the bench's job with
#: two params more, `down` (the cross below targets size x down: 0, flat, as the bench's)
#: and `lo` (long_only, which a long-or-flat policy never meets), given the bench's values
#: (one unit, a 2% stop). A value is not code, nor an instrument's name, so its kernel with
#: one instrument and no gross exposure is the one test_backtest compiles, not another.
def policy(tmp_path, n_inst: int, gross: bool):
    edits = {"instruments: [ORCL]": f"instruments: [{', '.join(f'I{k}' for k in range(n_inst))}]",
             "size: 100": "size: 1", "stop_loss: 3%": "stop_loss: 2%",
             # short windows, so that the EMAs are warm early and the policy trades in a short stream
             "fast: 12": "fast: 2", "slow: 26": "slow: 5"}
    if gross:
        edits["risk:\n"] = "risk:\n  max_gross_exposure: 1e9\n"
    text = BACKTEST_EMA_STOP
    for old, new in edits.items():  # each edit must find its text, or the policy is not the one described
        assert old in text, f"tests/test_backtest.py's EMA_STOP has no {old!r}"
        text = text.replace(old, new)
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
        with_bars = make_events(spec, cp.columns, n_inst)
        # The hot loops run only on data without bars (a bar's protective exits are the
        # loop body's): each stream runs without its bars too, where they take the events
        for ev, bars in ((with_bars, "bars"), (replace(with_bars, bars=None), "no bars")):
            label = f"({n_inst} instruments, gross {gross}, {bars}, {spec})"
            assert_same(cp, ev, label)
            assert_trace_changes_nothing(cp, ev, label)


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


def test_the_hot_loop_leaves_only_on_a_market_field_that_is_not_a_number():
    """The hot loop runs an ema of a market field without a NaN test, and takes an event
    only when that field is a number (clean data always has it); an ema of a model's input,
    which may be NaN on most events, keeps its NaN test, so such events stay in the loop."""
    from policyc.compiler.emit import emit
    from policyc.compiler.frontend import check_policy
    from policyc.compiler.lower import lower
    from policyc.compiler.passes import optimise
    from policyc.dsl.document import parse_policy_text

    text = EMA_STOP.replace("features:\n", "inputs: [score]\nfeatures:\n  calm: ema(score, 5)\n").replace(
        "crosses_above(fast_ma, slow_ma)", "crosses_above(fast_ma, slow_ma) and calm > 0")
    checked = check_policy(parse_policy_text(text, "inputs.yaml")).checked
    program = optimise(lower(checked))
    source = emit(program, checked)
    close, score = (program.columns.index(name) for name in ("close", "score"))
    hot = source[source.index("decide_at = False"):source.index("if decide_at:")]
    local = {c: re.search(rf"(v\d+) = vals\[u, {c}\]", hot)[1] for c in (close, score)}
    assert f"if vals[u, {close}] != vals[u, {close}]:\n" in hot and f"if {local[close]} != {local[close]}:" not in hot
    assert f"vals[u, {score}] != vals[u, {score}]" not in hot and f"if {local[score]} != {local[score]}:" in hot
