"""`policyc explain`: the compiled plan as a trader reads it.

Features in evaluation order with the state each keeps per instrument, the rules, the
risk steps in effect with their limits, and the account settings.
"""
from __future__ import annotations

from policyc.dsl.expressions import pretty
from policyc.dsl.risk_keys import CUSTOM_STEP, RISK_KEYS, RISK_STEPS

from . import layout as L
from .frontend import Checked
from .lower import lower
from .passes import optimise


def _reachable(program, start: int) -> set[int]:
    seen, stack = set(), [start]
    while stack:
        j = stack.pop()
        if j not in seen:
            seen.add(j)
            stack.extend(program.ops[j].args)
    return seen


def explain(result: Checked, show_ir: bool = False) -> str:
    c = result.checked
    p = c.parsed
    program = optimise(lower(c))
    layout = L.state_layout(program, [c.params[n] for n in program.params])
    out = [f"policy {p.name} v{p.version}",
           f"  policy_hash {result.policy_hash}",
           f"  build_hash  {result.build_hash}",
           f"instruments: {', '.join(c.instruments)}",
           f"event columns: {', '.join(program.columns)}"]
    if c.params:
        out.append("params: " + ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else f'{v:g}'}"
                                           for k, v in c.params.items()))
    out.append("features, in evaluation order (state per instrument, in float64 slots):")
    owned: set[int] = set()
    for name in c.feature_order:
        ops = _reachable(program, program.features[name])
        size = 0
        for n, slot in enumerate(layout.slots):
            if slot.op in ops and n not in owned:
                owned.add(n)
                size += layout.size_of(n)
        out.append(f"  {name:<16} = {pretty(p.features[name].expr):<48} state {size}")
    rest = sum(layout.size_of(n) for n in range(len(layout.slots)) if n not in owned)
    if rest:
        out.append(f"  (rules, risk and lookback history keep {rest} more)")
    out.append(f"  total feature state: {layout.width} slots = {layout.width * 8} bytes per instrument")
    out.append("rules (the first that holds sets the desired target):")
    if "intent" in c.inputs:
        out.append("  an `intent` value on an event sets the desired target directly")
    for n, rule in enumerate(p.signals, 1):
        if rule.legs is None:
            limit = "" if rule.limit is None else f" (IOC limit {pretty(rule.limit)})"
            out.append(f"  {n}. when {pretty(rule.when)}  ->  target {pretty(rule.target)}{limit}")
        else:
            out.append(f"  {n}. when {pretty(rule.when)}  ->  legs, in this order:")
            for leg in rule.legs:
                limit = "" if leg.limit is None else f" (IOC limit {pretty(leg.limit)})"
                out.append(f"       {leg.instrument}: target {pretty(leg.target)}{limit}")
    if p.risk is None:
        out.append("risk: none (warning: nothing limits this policy's orders)")
    else:
        out.append("risk steps in effect, in order:")
        for step in RISK_STEPS:
            if step.number == CUSTOM_STEP:
                for rule in p.custom:
                    out.append(f"  {step.number} custom `{rule.name}`: when {pretty(rule.when)} -> {rule.action}")
            present = [k for k in step.keys if k in c.risk]
            if present:
                out.append(f"  {step.number} {step.title}: "
                           + ", ".join(f"{k} {RISK_KEYS[k].kind.written(c.risk[k])}" for k in present))
        out.append("  protective exits and liquidations are never blocked by steps 3-5 and 10")
    out.append("account: " + ", ".join(f"{k} {v:g}" for k, v in c.account.items()))
    if show_ir:
        out += ["optimised IR:", program.dump()]
    return "\n".join(out)
