"""`policyc explain`: the compiled plan as a trader reads it.

Features in evaluation order with the state each keeps per instrument, the rules, the
risk steps in effect with their limits, and the account settings.
"""
from __future__ import annotations

from policyc.dsl.expressions import pretty

from . import layout as L
from .frontend import Checked
from .lower import lower
from .passes import optimise

_PERCENT_KEYS = {"max_drawdown", "stop_loss", "take_profit", "trailing_stop", "max_daily_loss", "max_volatility",
                 "max_margin_usage", "price_collar"}
_STEPS = (
    ("1 kill switch", ("max_drawdown",)),
    ("2 protective exits", ("stop_loss", "take_profit", "trailing_stop")),
    ("3 day limits", ("max_daily_loss",)),
    ("4 reduce-only conditions", ("max_volatility", "volatility_window", "stale_after", "long_only")),
    ("6 position limits", ("max_position", "max_position_notional")),
    ("7 portfolio limits", ("max_gross_exposure", "max_margin_usage")),
    ("8 order rounding", ("lot_size", "min_order_qty")),
    ("9 order limits", ("max_order_qty", "max_order_notional", "price_collar")),
    ("10 rate limits", ("max_orders_per_day", "max_orders_per_second")),
)


def _value(key: str, value: float) -> str:
    if key in _PERCENT_KEYS:
        return f"{value * 100:g}%"
    if key == "stale_after":
        return f"{value:g}s"
    if key == "long_only":
        return "true" if value else "false"
    return f"{value:g}"


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
        out.append(f"  {n}. when {pretty(rule.when)}  ->  target {pretty(rule.target)}")
    if p.risk is None:
        out.append("risk: none (warning: nothing limits this policy's orders)")
    else:
        out.append("risk steps in effect, in order:")
        for title, keys in _STEPS:
            if title.startswith("6"):
                for rule in p.custom:
                    out.append(f"  5 custom `{rule.name}`: when {pretty(rule.when)} -> {rule.action}")
            present = [k for k in keys if k in c.risk]
            if present:
                out.append(f"  {title}: " + ", ".join(f"{k} {_value(k, c.risk[k])}" for k in present))
        out.append("  protective exits and liquidations are never blocked by steps 3-5 and 10")
    out.append("account: " + ", ".join(f"{k} {v:g}" for k, v in c.account.items()))
    if show_ir:
        out += ["optimised IR:", program.dump()]
    return "\n".join(out)
