"""Optimisation passes over the IR, one rule per function, run in order by `optimise`.

Params are never folded: they are kernel arguments, so a new value reuses the kernel.
"""
from __future__ import annotations

import math

from .ir import Op, Program
from .semantics import PURE_FUNCTIONS, arith, compare


def _rebuild(program: Program, transform) -> Program:
    """Walk ops in order; `transform(op, new_ops) -> new index`. Lags that read a later
    op (a feature's own past) are patched once every op has its new index."""
    mapping: dict[int, int] = {}
    ops: list[Op] = []
    forward: list[tuple[int, int]] = []
    for i, op in enumerate(program.ops):
        if op.kind in ("lag", "xlag") and op.args[0] >= i:
            ops.append(op)
            forward.append((len(ops) - 1, op.args[0]))
            mapping[i] = len(ops) - 1
            continue
        op = Op(op.kind, tuple(mapping[a] for a in op.args), op.attr, op.type, op.span)
        mapping[i] = transform(op, ops)
    for at, source in forward:
        old = ops[at]
        ops[at] = Op(old.kind, (mapping[source],), old.attr, old.type, old.span)
    return program.with_ops(ops, mapping)


def _append(op: Op, ops: list[Op]) -> int:
    ops.append(op)
    return len(ops) - 1


def fold_constants(program: Program) -> Program:
    """Evaluate operations whose operands are all literals."""

    def transform(op: Op, ops: list[Op]) -> int:
        args = [ops[a] for a in op.args]
        across_events = op.kind in ("moving", "bars_since", "lag", "ref", "xlag")  # never a constant
        if not args or any(a.kind != "const" for a in args) or across_events:
            if op.kind == "select" and args[0].kind == "const":
                return op.args[1] if args[0].attr[0] else op.args[2]
            return _append(op, ops)
        values = [a.attr[0] for a in args]
        if op.kind == "neg":
            value = -values[0]
        elif op.kind == "not":
            value = not values[0]
        elif op.kind == "and":
            value = values[0] and values[1]
        elif op.kind == "or":
            value = values[0] or values[1]
        elif op.kind == "arith":
            value = arith(op.attr[0], values[0], values[1])
        elif op.kind == "cmp":
            value = compare(op.attr[0], values[0], values[1])
        elif op.kind == "select":
            return op.args[1] if values[0] else op.args[2]
        elif op.kind == "call" and op.attr[0] in PURE_FUNCTIONS:
            value = PURE_FUNCTIONS[op.attr[0]](*values)
        else:
            return _append(op, ops)
        if isinstance(value, float) and math.isnan(value):
            return _append(op, ops)  # keep NaN-producing code visible rather than a NaN literal
        return _append(Op("const", (), (value,), op.type, op.span), ops)

    return _rebuild(program, transform)


def eliminate_common_subexpressions(program: Program) -> Program:
    """Share identical operations: `ema(close, 12)` written twice keeps one state."""
    seen: dict[tuple, int] = {}

    def transform(op: Op, ops: list[Op]) -> int:
        key = op.key()
        if key not in seen:
            seen[key] = _append(op, ops)
        return seen[key]

    return _rebuild(program, transform)


def eliminate_dead_code(program: Program) -> Program:
    """Drop operations no output reads (folded-away operands, unused sugar)."""
    live = set()
    stack = list(program.outputs())
    while stack:
        i = stack.pop()
        if i not in live:
            live.add(i)
            stack.extend(program.ops[i].args)
    mapping: dict[int, int] = {}
    ops: list[Op] = []
    for i, op in enumerate(program.ops):
        if i in live:
            mapping[i] = len(ops)
            ops.append(op)
    ops = [Op(op.kind, tuple(mapping[a] for a in op.args), op.attr, op.type, op.span) for op in ops]
    return program.with_ops(ops, mapping)


PASSES = (fold_constants, eliminate_common_subexpressions, eliminate_dead_code)


def optimise(program: Program) -> Program:
    for run in PASSES:
        program = run(program)
    return program
