"""The quick check of a document's shape accepts exactly what the pydantic models accept.

`policyc validate` checks a document against SHAPES directly and builds pydantic models
only for one that does not fit (for their messages); a document the quick check let
through that pydantic would refuse, or the reverse, would change what validates.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from policyc.dsl import document as doc

POLICIES = sorted((Path(__file__).resolve().parent.parent / "policies").glob("*.yaml"))
EXAMPLES = [yaml.safe_load(p.read_text()) for p in POLICIES]

scalars = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.none())
keys = st.sampled_from(sorted({*doc.TOP_KEYS, *doc.SHAPES["RiskModel"], "when", "target", "name", "action",
                               "typo"}))
leaves = st.one_of(scalars, st.sampled_from(["block", "halt", "nope"]), st.dates())
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.one_of(keys, st.integers()), inner,
                                                                      max_size=4)),
                      max_leaves=12)


def _pydantic_accepts(value) -> bool:
    try:
        doc._model("PolicyModel").model_validate(value)
    except ValidationError:
        return False
    return True


def _mutants(base: dict, path_value: list) -> dict:
    """`base` with the value at each (path, value) replaced (a path into dicts and lists)."""
    out = yaml.safe_load(yaml.safe_dump(base))
    for path, value in path_value:
        target = out
        for step in path[:-1]:
            target = target[step] if isinstance(target, dict) and step in target else None
            if target is None:
                break
        if isinstance(target, dict):
            target[path[-1]] = value
    return out


def test_the_examples_fit():
    assert all(doc._fits("PolicyModel", e) and _pydantic_accepts(e) for e in EXAMPLES)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(EXAMPLES))),
       st.lists(st.tuples(st.lists(keys, min_size=1, max_size=3), values), max_size=3))
def test_quick_check_and_pydantic_agree_on_mutated_examples(which, changes):
    value = _mutants(EXAMPLES[which], [(tuple(path), v) for path, v in changes])
    assert doc._fits("PolicyModel", value) == _pydantic_accepts(value)


@settings(max_examples=300, deadline=None, database=None)
@given(values)
def test_quick_check_and_pydantic_agree_on_any_value(value):
    assert doc._fits("PolicyModel", value) == _pydantic_accepts(value)


def test_a_document_that_fits_is_read_without_pydantic():
    code = ("import sys; from policyc.compiler.frontend import check_policy; "
            f"check_policy({str(POLICIES[0])!r}); print('pydantic' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
