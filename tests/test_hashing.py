"""policy_hash follows meaning, not formatting; build_hash follows the toolchain; the
kernel-source cache follows everything that shapes the source."""
import contextlib
from pathlib import Path

import pytest

from policyc.compiler.frontend import check_text
from policyc.compiler.hashing import build_hash
from policyc.compiler.sessions import NO_CLOCK

BASE = """\
policy: h
version: 1
instruments: [ORCL]
params:
  fast: 12
  slow: 26
features:
  f: ema(close, fast)
  s: ema(close, slow)
signals:
  - when: crosses_above(f, s)
    target: 100
  - when: crosses_below(f, s)
    target: 0
risk:
  max_position: 500
  stop_loss: 3%
"""


def h(text: str, **params) -> str:
    return check_text(text, params or None).policy_hash


def test_formatting_comments_key_order_and_parentheses_keep_the_hash():
    variants = [
        BASE.replace("features:", "# a comment\nfeatures:  # another"),
        BASE.replace("ema(close, fast)", "ema( close ,fast )").replace("crosses_above(f, s)", "(crosses_above(f, s))"),
        BASE.replace("  fast: 12\n  slow: 26\n", "  slow: 26\n  fast: 12\n"),
        BASE.replace("  max_position: 500\n  stop_loss: 3%\n", "  stop_loss: 0.03\n  max_position: 500.0\n"),
        BASE.replace("instruments: [ORCL]", "instruments:\n  - ORCL"),
        BASE.replace("  - when: crosses_above(f, s)\n    target: 100",
                     "  - target: 100\n    when: \"crosses_above(f, s)\""),
        "risk:\n  stop_loss: 3%\n  max_position: 500\n" + BASE.split("risk:")[0],
        BASE.replace("target: 100", "target: (100)"),
    ]
    for text in variants:
        assert h(text) == h(BASE), text


@pytest.mark.parametrize("change", [
    ("ema(close, fast)", "sma(close, fast)"),           # an expression
    ("fast: 12", "fast: 13"),                           # a param value
    ("max_position: 500", "max_position: 400"),         # a limit
    ("stop_loss: 3%", "stop_loss: 3.5%"),
    ("target: 100", "target: 101"),
    ("version: 1", "version: 2"),
    ("instruments: [ORCL]", "instruments: [NVDA]"),
    ("risk:\n", "risk:\n  long_only: true\n"),          # a new limit
])
def test_any_change_of_meaning_changes_the_hash(change):
    old, new = change
    assert old in BASE
    assert h(BASE.replace(old, new)) != h(BASE)


def test_rule_order_changes_the_hash():
    rules = BASE.split("signals:\n")[1].split("risk:")[0]
    first, second = rules.split("  - when: crosses_below")
    swapped = BASE.replace(rules, "  - when: crosses_below" + second + first)
    assert h(swapped) != h(BASE)


def test_param_override_is_part_of_the_hash():
    assert h(BASE, fast=13) == h(BASE.replace("fast: 12", "fast: 13"))
    assert h(BASE, fast=12) == h(BASE)


def test_build_hash_changes_with_toolchain_versions():
    ph = h(BASE)
    base = {"policyc": "0.1.0", "python": "3.11.7", "numba": "0.60.0", "llvmlite": "0.43.0", "numpy": "2.0.0"}
    seen = {build_hash(ph, base)}
    for key in ("policyc", "numba", "llvmlite", "numpy"):
        seen.add(build_hash(ph, {**base, key: "9.9.9"}))
    assert len(seen) == 5
    assert build_hash(ph, base) == build_hash(ph, dict(base))
    assert check_text(BASE).build_hash == build_hash(ph)


def test_examples_have_distinct_hashes():
    root = Path(__file__).resolve().parent.parent / "policies"
    hashes = [check_text(p.read_text(), name=str(p)).policy_hash for p in sorted(root.glob("*.yaml"))]
    assert len(hashes) >= 5 and len(set(hashes)) == len(hashes)


# ---- the kernel-source cache, and the kernel's own check of what it is given ---------
#: `b` keeps state (an average), so a feature state of the wrong width is a wrong shape; the
#: custom rule gives the kernel's custom-rule state a column (see `shapes` below).
SAME_NAME = """\
policy: same
version: 1
instruments: [X]
features:
{features}
signals:
  - when: b > 100
    target: 1
risk:
  custom:
    - {{name: never, when: false, action: block}}
"""
ONE = SAME_NAME.format(features="  b: sma(close, 2)")
TWO = SAME_NAME.format(features="  a: close\n  b: sma(close, 2)")


@pytest.fixture(scope="module")
def shapes():
    """`ONE`, compiled in the suite's cache: the kernel of the shape checks below, and, as the
    source-cache test compiles `ONE` again in a cache of its own, already loaded in this
    process there (one Numba compile of it for this file, not two)."""
    from policyc.compiler.build import compile_policy
    from policyc.dsl.document import parse_policy_text

    return compile_policy(parse_policy_text(ONE, "one.yaml"))


def test_the_source_cache_key_covers_every_input_of_code_generation(shapes, tmp_path, monkeypatch):
    """Two policies with the same name and version, one with features `a: close` and
    `b: sma(close, 2)`, the other with `b` only, in one cache directory: each gets its own
    kernel (the second once got the first's, which wrote past its trace buffer)."""
    import numpy as np

    from policyc.compiler.build import Events, compile_policy
    from policyc.dsl.document import parse_policy_text

    monkeypatch.setenv("POLICYC_CACHE", str(tmp_path))
    two = compile_policy(parse_policy_text(TWO, "two.yaml"))
    one = compile_policy(parse_policy_text(ONE, "one.yaml"))
    assert one.source != two.source and one.feature_names == ["b"] and two.feature_names == ["a", "b"]
    assert one.source == shapes.source  # the cache key follows the source's inputs, not the cache it is in
    assert len(list((tmp_path / "sources").iterdir())) == 2
    ev = Events.market(np.arange(3, dtype=np.int64), np.repeat([[99.0], [101.0], [102.0]], 2, axis=1))  # price, close
    assert one.run(ev, trace=True).trace.shape == (3, 8) and two.run(ev, trace=True).trace.shape == (3, 9)
    assert [o[2] for o in one.run(ev).orders.tolist()] == [1.0]  # b: NaN, 100, 101.5


@pytest.mark.parametrize("spoil", ["nothing", "trace", "orders", "pstate", "acct", "fs", "vals", "inst", "equity",
                                   "params", "bars", "latency"])
def test_the_kernel_refuses_buffers_of_another_shape(shapes, spoil):
    """A buffer of the wrong shape (another policy's, say) is a ValueError before the
    kernel runs, never a write out of bounds."""
    import numpy as np

    from policyc.compiler import layout as L
    from policyc.compiler.build import Events

    n = 4
    ev = Events.market(np.arange(n, dtype=np.int64), np.full((n, 2), 100.0))  # price, close
    s = shapes.session()
    trace = np.full((n, L.TRACE_FIXED + 1), np.nan)
    equity = np.empty(n)
    params, win, lay = s.bound
    bars, latency = np.zeros((0, L.BAR_WIDTH)), 0
    if spoil == "bars":
        bars = np.full((n - 1, L.BAR_WIDTH), 100.0)
    elif spoil == "latency":
        latency = -1
    elif spoil == "trace":
        trace = np.full((n, L.TRACE_FIXED), np.nan)
    elif spoil == "orders":
        s.orders = np.empty((8, L.ORDER_WIDTH - 1))
    elif spoil == "pstate":
        s.pstate = s.pstate[:, :-1].copy()
    elif spoil == "acct":
        s.acct = s.acct[:-1].copy()
    elif spoil == "fs":
        s.fs = s.fs[:, :-1].copy()
    elif spoil == "vals":
        ev.vals = np.zeros((n, 0))
    elif spoil == "inst":
        ev.inst[2] = 1
    elif spoil == "equity":
        equity = np.empty(n - 1)
    elif spoil == "params":
        params = np.zeros(1)
    with pytest.raises(ValueError) if spoil != "nothing" else contextlib.nullcontext():
        shapes.kernel.run(ev.ts, ev.kind, ev.inst, ev.vals, NO_CLOCK, bars, 0, n, params, win, lay, s.config, s.fs,
                          s.pstate, s.acct, s.orders, 0, s.mode, latency, equity, trace, 3)


def test_a_calendar_policys_build_hash_covers_exchange_calendars():
    """A new release of exchange_calendars can move a holiday, and so a day counter: the
    build of a policy with `calendar:` names its version; one without does not."""
    from importlib import metadata

    from policyc.compiler.hashing import toolchain_of

    cal = check_text(BASE.replace("instruments:", "calendar: XNYS\ninstruments:", 1))
    assert toolchain_of(cal.checked)["exchange_calendars"] == metadata.version("exchange_calendars")
    assert cal.build_hash == build_hash(cal.policy_hash, toolchain_of(cal.checked)) != build_hash(cal.policy_hash)
    assert "exchange_calendars" not in toolchain_of(check_text(BASE).checked)
