"""Gymnasium environments over a compiled policy: the policy's risk section shields every action.

An action is the desired target position of each instrument. It goes into the policy's
`intent` input of the instrument's next market event and through the same compiled kernel
that backtests and trades live, so the risk steps clip or block it exactly as they would
the model's intents in `policyc run`, and a run of actions through the environment is the
backtest of those actions as an `intent` column (`PolicyEnv.intents`). The guide page is
docs/rl.md.

- `PolicyEnv(policy, data, ...)`: one environment (a `gymnasium.Env`).
- `PolicyVectorEnv` / `make_vector(policy, data, num_envs, ...)`: many environments on one
  compiled kernel (over data files, data slices, param values or random starts), stepped
  together with one batched observation (a `gymnasium.vector.VectorEnv`, next-step autoreset).
- `Observer`: the observation's NumPy work alone, shared by both.
- `unshielded(policy)`: the same policy without its risk section, to train a model that
  never meets the limits (and measure afterwards how often they overrule it).
- `reward_curve`, `check_account`, `check_events`: the `log` reward's curve, and the
  checks of account overrides and of `Events` given as data.

Units: targets, positions and quantities in units of the instrument; equity, P&L and fees
in the account's money; drawdown and margin usage as fractions; times in ns since the
epoch, UTC.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from policyc.compiler import layout as L
from policyc.compiler.build import CompiledPolicy, Events, compile_checked, compile_policy
from policyc.compiler.frontend import check_policy
from policyc.dsl.diagnostics import did_you_mean
from policyc.dsl.risk_keys import ACCOUNT_KEYS
from policyc.runtime.data import PRICE_FIELDS, load_table, merge

#: The built-in rewards, per step (`reward_curve` and `Reward` in docs/rl.md): `equity` the
#: change in equity (money); `log` the change in `reward_curve(equity)`, which is the log
#: of equity over the previous step's while both are at least `REWARD_FLOOR` x the initial
#: equity; `drawdown` the change in equity over max(previous equity, `REWARD_FLOOR` x the
#: initial equity) minus `drawdown_penalty` times the rise in drawdown (a fraction) since
#: the previous step. Each is finite for finite equity, and has the sign of the change in
#: equity (0 for none), whatever the equity, 0 or below included.
REWARDS = ("equity", "log", "drawdown")
#: The fraction of the initial equity below which the `log` and `drawdown` rewards stop
#: dividing by the equity: 1%.
REWARD_FLOOR = 0.01
#: The account part of each observation row, after the features, positions and open orders.
ACCOUNT_FIELDS = ("return", "drawdown", "margin_usage")
MODES = {"next": L.FILL_NEXT, "same": L.FILL_SAME}
INTENT = "intent"
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _real(value) -> bool:
    """A real number (Python's or NumPy's), not a bool, a string or an array."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def reward_curve(equity, initial_equity):
    """log(equity / initial_equity) for equity of at least `REWARD_FLOOR` x initial_equity,
    and below that the straight line tangent to it there, log(REWARD_FLOOR) + (equity /
    initial_equity - REWARD_FLOOR) / REWARD_FLOOR: finite and increasing for every finite
    equity, 0 and below included. The `log` reward is its change over a step. Arrays or
    floats, both in money; returns a float array (no unit)."""
    x = np.asarray(equity, dtype=np.float64) / np.asarray(initial_equity, dtype=np.float64)
    return np.where(x >= REWARD_FLOOR, np.log(np.maximum(x, REWARD_FLOOR)),
                    np.log(REWARD_FLOOR) + (x - REWARD_FLOOR) / REWARD_FLOOR)


def check_account(account) -> dict[str, float]:
    """Account overrides as floats, checked as `policyc backtest --fees-bps`,
    `--slippage-bps` and `--initial-equity` are checked: each key one of
    `policyc.dsl.risk_keys.ACCOUNT_KEYS` (`initial_equity` money, `margin_rate` a fraction,
    `fees_bps` and `slippage_bps` basis points), each value a real number (not a string or
    a bool) that the key's bounds admit. None is no override. Raises ValueError naming the
    key (with a did-you-mean for a misspelt one) and the rule its value breaks."""
    if account is None:
        return {}
    if not isinstance(account, Mapping):
        raise ValueError(f"account must be a dict of account settings ({', '.join(ACCOUNT_KEYS)}), "
                         f"not {type(account).__name__}")
    out = {}
    for key, value in account.items():
        spec = ACCOUNT_KEYS.get(key)
        if spec is None:
            raise ValueError(f"`{key}` is not an account setting; "
                             f"{did_you_mean(str(key), ACCOUNT_KEYS) or 'the settings: ' + ', '.join(ACCOUNT_KEYS)}")
        if not _real(value):
            raise ValueError(f"account `{key}` must be {spec.rule}, not {value!r} (a {type(value).__name__})")
        if not spec.bounds.admit(float(value)):
            raise ValueError(f"account `{key}` must be {spec.rule}, not {float(value):g}")
        out[key] = float(value)
    return out


def _with_defaults(render_mode, options: dict) -> dict:
    """An environment's options over `_OPTIONS`'s defaults. Raises ValueError for a render
    mode (`check_render_mode`), TypeError for an option no environment has."""
    check_render_mode(render_mode)
    unknown = [k for k in options if k not in _OPTIONS]
    if unknown:
        raise TypeError(f"unknown option `{unknown[0]}`; "
                        f"{did_you_mean(unknown[0], _OPTIONS) or 'options: ' + ', '.join(_OPTIONS)}")
    return {**_OPTIONS, **options}


def check_render_mode(render_mode) -> None:
    """Raises ValueError for any render mode but None: the environments render nothing
    (`metadata["render_modes"]` is empty)."""
    if render_mode is not None:
        raise ValueError(f"render_mode {render_mode!r} is not supported: the environment renders nothing "
                         "(supported render modes: none; leave render_mode None)")


class Observer:
    """The observation of `n_envs` environments, as a NumPy array `[n_envs, window * row]`.

    A row is, in this order: the chosen features of each instrument (instrument-major,
    their values at its latest market event), each instrument's position and open order
    quantity divided by its `scale` (units), then the account: return since the start
    (equity / initial equity - 1), drawdown ((peak - equity) / peak) and margin usage
    (sum of |position x last price| x margin rate / equity). NaN (a feature still warming
    up, no price yet) becomes 0, and every value is clipped to [-clip, clip]. With
    `window` > 1 the observation is the latest `window` rows, oldest first, flattened.
    Raises ValueError for a `window` that is not a whole number of at least 1, or a `clip`
    not above 0 and at most the largest float32 (about 3.4e38).
    """

    def __init__(self, n_envs: int, instruments: Sequence[str], features: Sequence[str], window: int,
                 clip: float, scale: np.ndarray, initial_equity: np.ndarray, margin_rate: np.ndarray):
        if not (isinstance(window, (int, np.integer)) and window >= 1):
            raise ValueError(f"window must be a whole number of steps, at least 1, not {window!r}")
        if not (_real(clip) and 0 < clip <= FLOAT32_MAX):
            raise ValueError(f"clip must be a number above 0 and at most {FLOAT32_MAX:g} (the largest float32: "
                             f"the observation is float32), not {clip!r}")
        k, f = len(instruments), len(features)
        self.window, self.clip = int(window), float(clip)
        self.row_names = ([f"{i}.{name}" for i in instruments for name in features]
                          + [f"{i}.position" for i in instruments] + [f"{i}.open" for i in instruments]
                          + list(ACCOUNT_FIELDS))
        self._features = slice(0, k * f)
        self._pos, self._open = slice(k * f, k * f + k), slice(k * f + k, k * f + 2 * k)
        self._inv_scale = 1.0 / np.asarray(scale, dtype=np.float64)
        self._initial = np.asarray(initial_equity, dtype=np.float64)
        self._margin_rate = np.asarray(margin_rate, dtype=np.float64)
        self.rows = np.zeros((n_envs, self.window, len(self.row_names)))
        self.space = spaces.Box(-self.clip, self.clip, (self.window * len(self.row_names),), np.float32)

    @property
    def names(self) -> list[str]:
        """The name of each observation value: `t-N:` marks the rows before the latest."""
        if self.window == 1:
            return list(self.row_names)
        return [f"t-{self.window - 1 - w}:{n}" if w < self.window - 1 else n
                for w in range(self.window) for n in self.row_names]

    def update(self, features: np.ndarray, position: np.ndarray, open_qty: np.ndarray, last_price: np.ndarray,
               equity: np.ndarray, peak: np.ndarray, fresh: np.ndarray | None = None) -> np.ndarray:
        """Push one row per environment and return the observations (float32, a new array).

        features `[n_envs, instruments, features]`; position, open_qty (units) and
        last_price (money per unit: the last price x the contract's multiplier)
        `[n_envs, instruments]`; equity and peak `[n_envs]`
        (money). `fresh`, a bool mask `[n_envs]`: those environments start a new episode,
        so their whole window is this row."""
        rows = self.rows
        if self.window > 1:
            rows[:, :-1] = rows[:, 1:]
        row = rows[:, -1]
        row[:, self._features] = features.reshape(len(row), -1)
        row[:, self._pos] = position * self._inv_scale
        row[:, self._open] = open_qty * self._inv_scale
        gross = np.fmax(np.abs(position * last_price), 0.0).sum(axis=1)  # fmax drops NaN: no price, no exposure
        with np.errstate(divide="ignore", invalid="ignore"):
            row[:, -3] = equity / self._initial - 1.0
            row[:, -2] = 1.0 - equity / peak
            row[:, -1] = gross * self._margin_rate / equity
        np.copyto(row, 0.0, where=np.isnan(row))
        np.clip(row, -self.clip, self.clip, out=row)  # infinities too
        if fresh is not None and self.window > 1 and fresh.any():
            rows[fresh] = row[fresh, None]
        return rows.reshape(len(rows), -1).astype(np.float32)


def unshielded(policy: CompiledPolicy) -> CompiledPolicy:
    """The same policy (features, rules, inputs, params, account) with no risk section: no
    limit, no protective exit, no custom rule, no kill switch. A model trained on it learns
    what it would do unguarded; run it under `policy` to see how often the limits overrule it."""
    parsed = dataclasses.replace(policy.checked.parsed, risk=None, custom=[])
    return compile_checked(check_policy(parsed, policy.params))


@dataclasses.dataclass
class _Data:
    """One environment's events and, per step (a group of events with one timestamp), where
    each instrument's actions land and which of its events the observation reads."""

    events: Events
    starts: np.ndarray    # [steps + 1]: first event of each group, then len(events)
    next_of: np.ndarray   # [groups, instruments]: first event of the instrument at or after the group's start; -1 if none
    last_of: np.ndarray   # [groups, instruments]: its last event up to the group's end; `pad` if none
    decided: np.ndarray   # [groups, instruments] bool: the instrument has an event in the group

    def __post_init__(self):
        # Python ints: the per-step loop reads them without NumPy's boxing
        self.start_list, self.next_list = self.starts.tolist(), self.next_of.tolist()
        self.step_ts = self.events.ts[self.starts[1:] - 1]

    @property
    def groups(self) -> int:
        return len(self.starts) - 1


def _events(policy: CompiledPolicy, data) -> Events:
    """The data as events with an `intent` column of NaN (no action)."""
    columns = policy.columns
    if isinstance(data, Events):
        events = check_events(policy, data)
    else:
        if isinstance(data, (str, Path)):
            if len(policy.instruments) > 1:
                raise ValueError(f"`{policy.name}` trades {', '.join(policy.instruments)}: give data as "
                                 "{symbol: path} with one file each")
            data = {policy.instruments[0]: data}
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be Events, a path or {{symbol: path}}, not {type(data).__name__}")
        data = {policy.symbol(s) if isinstance(s, str) else s: path for s, path in data.items()}
        unknown = [s for s in data if s not in policy.instruments]
        if unknown:
            raise ValueError(f"`{unknown[0]}` is not an instrument of `{policy.name}`; "
                             f"{did_you_mean(unknown[0], policy.instruments) or 'its instruments: ' + ', '.join(policy.instruments)}")
        missing = [s for s in policy.instruments if s not in data]
        if missing:
            raise ValueError(f"no data for instrument `{missing[0]}`")
        read = [c for c in columns if c != INTENT]
        tables = [load_table(data[s], read) for s in policy.instruments]
        for t in tables:
            t.columns[INTENT] = np.full(len(t), np.nan)
        events = merge(tables, columns)
    if len(np.unique(events.ts)) < 2:
        raise ValueError("the data has fewer than two distinct timestamps: nothing to step through")
    return events


def check_events(policy: CompiledPolicy, events: Events) -> Events:
    """A copy of `events` (int64 ts, int8 kind, int32 inst, float64 vals) with its intent
    column NaN, checked as the data loader checks a file (`policyc.runtime.data`): market
    events only, one value column per `policy.columns`, instrument indices of the policy,
    timestamps (ns) that never go back (equal ones are fine), prices (`close`, `price`,
    `bid`, ...) positive and finite, `qty` and `volume` numbers, and every value at most
    `layout.MAX_MAGNITUDE` in magnitude (a model input may be NaN: no value). Raises
    ValueError naming the first bad event, its column and value."""
    columns = policy.columns
    ts, kind, inst, vals = (np.asarray(a) for a in (events.ts, events.kind, events.inst, events.vals))
    n = len(ts)
    if vals.ndim != 2 or vals.shape[1] != len(columns):
        raise ValueError(f"the events have {vals.shape[1:]} value columns; `{policy.name}` reads "
                         f"{len(columns)}: {', '.join(columns)}")
    if ts.ndim != 1 or not (len(kind) == len(inst) == len(vals) == n):
        raise ValueError(f"the events' columns differ in length: ts {ts.shape}, kind {kind.shape}, inst {inst.shape}, "
                         f"vals {vals.shape}")
    for name, a in (("ts", ts), ("kind", kind), ("inst", inst)):
        if a.dtype.kind not in "iu":
            raise ValueError(f"the events' `{name}` must be whole numbers, not of dtype {a.dtype}")
    if n and np.any(kind != L.MARKET):
        raise ValueError("the events must all be market events (layout.MARKET): the environment makes the intents")
    k = len(policy.instruments)
    bad = np.flatnonzero((inst < 0) | (inst >= k))
    if len(bad):
        raise ValueError(f"event {bad[0]}: instrument index {inst[bad[0]]} is not one of `{policy.name}`'s "
                         f"0..{k - 1} ({', '.join(policy.instruments)})")
    back = np.flatnonzero(np.diff(ts) < 0)
    if len(back):
        e = back[0] + 1
        raise ValueError(f"event {e}: timestamp {ts[e]} ns is earlier than the event before ({ts[e - 1]} ns); "
                         "the events must be sorted by time (equal timestamps are fine)")
    vals = np.array(vals, dtype=np.float64)
    for c, name in enumerate(columns):
        if name == INTENT:
            continue
        v = vals[:, c]
        if name in PRICE_FIELDS:
            bad, rule = np.flatnonzero(~((v > 0) & (v < np.inf))), "prices must be positive and finite"
        elif name in ("qty", "volume"):
            bad, rule = np.flatnonzero(np.isnan(v)), "market data must be numbers"
        else:
            bad = np.array([], np.int64)
        if not len(bad):
            bad, rule = np.flatnonzero(np.abs(v) > L.MAX_MAGNITUDE), f"values must be at most {L.MAX_MAGNITUDE:g} " \
                                                                     "in magnitude"
        if len(bad):
            raise ValueError(f"event {bad[0]}: `{name}` is {v[bad[0]]:g}; {rule}")
    vals[:, columns.index(INTENT)] = np.nan
    return Events(np.array(ts, np.int64), np.array(kind, np.int8), np.array(inst, np.int32), vals)


def _prepare(policy: CompiledPolicy, data, pad: int | None = None) -> _Data:
    events = _events(policy, data)
    n, k = len(events), len(policy.instruments)
    pad = n if pad is None else pad
    starts = np.concatenate([[0], np.flatnonzero(np.diff(events.ts)) + 1, [n]]).astype(np.int64)
    next_of = np.full((len(starts) - 1, k), -1, np.int64)
    last_of = np.full((len(starts) - 1, k), pad, np.int64)
    for j in range(k):
        mine = np.flatnonzero(events.inst == j)
        at = np.searchsorted(mine, starts[:-1])
        ok = at < len(mine)
        next_of[ok, j] = mine[at[ok]]
        before = np.searchsorted(mine, starts[1:]) - 1
        last_of[before >= 0, j] = mine[before[before >= 0]]
    decided = (next_of >= 0) & (next_of < starts[1:, None])
    return _Data(events, starts, next_of, last_of, decided)


class _Core:
    """`n` environments stepped together: one session each, their account and position
    arrays rows of shared arrays (the kernel writes them in place), so that everything
    after the kernel calls is one NumPy operation for all of them."""

    def __init__(self, policies: list[CompiledPolicy], data: list, *, mode, account, features, window, clip,
                 action, max_target, levels, reward, drawdown_penalty, warmup, episode_steps, random_start):
        first = policies[0]
        if mode in MODES:
            mode = MODES[mode]
        if mode not in MODES.values():
            raise ValueError(f"mode must be one of {', '.join(MODES)} (fill at the next event's price or this one's), "
                             f"not {mode!r}")
        self.policies, self.mode = policies, mode
        self.instruments = list(first.instruments)
        k, n_envs = len(self.instruments), len(policies)
        names = first.feature_names
        chosen = list(names) if features is None else list(features)
        for name in chosen:
            if name not in names:
                raise ValueError(f"`{name}` is not a feature of `{first.name}`; "
                                 f"{did_you_mean(name, names) or 'its features: ' + ', '.join(names)}")
        self.feature_names = chosen
        self._feature_cols = np.array([L.TRACE_FIXED + names.index(n) for n in chosen], np.int64)
        self._intent_col = first.columns.index(INTENT)

        loaded = [_prepare(p, d) for p, d in zip(policies, data)]
        pad = max(len(d.events) for d in loaded)
        self.data = [_Data(d.events, d.starts, d.next_of, np.where(d.last_of == len(d.events), pad, d.last_of),
                           d.decided) for d in loaded]
        self.warmup = (int(first.state.windows.max(initial=0)) + 1) if warmup is None else int(warmup)
        if self.warmup < 0:
            raise ValueError(f"warmup must be 0 or more steps, not {warmup!r}")
        if episode_steps is not None and not (isinstance(episode_steps, (int, np.integer)) and episode_steps >= 1):
            raise ValueError(f"episode_steps must be a whole number of steps, at least 1, or None, not {episode_steps!r}")
        self.episode_steps, self.random_start = episode_steps, bool(random_start)

        account = check_account(account)
        settings = [{**p.checked.account, **account} for p in policies]
        self.initial = np.array([s["initial_equity"] for s in settings])
        self.sessions = [p.session(mode, account) for p in policies]
        self.fresh = [(s.acct.copy(), s.pstate.copy(), s.fs.copy()) for s in self.sessions]
        self.acct = np.stack([s.acct for s in self.sessions])
        self.pstate = np.stack([s.pstate for s in self.sessions])
        for i, s in enumerate(self.sessions):
            s.acct, s.pstate = self.acct[i], self.pstate[i]
        self.trace = np.full((n_envs, pad + 1, L.TRACE_FIXED + len(names)), np.nan)  # row `pad` stays NaN
        self._reasons = first.reason_names
        self._counted = slice(0, L.A_REASON_COUNTS + len(self._reasons))
        self._prev = self.acct[:, self._counted].copy()
        self._prev_exposure = np.zeros((n_envs, k))
        self._prev_drawdown = np.zeros(n_envs)

        self.scale = np.array(max_target, dtype=np.float64)  # [n_envs, instruments], from `_policies`
        self.action_kind = action
        if action == "box":
            self.action_space = spaces.Box(-1.0, 1.0, (k,), np.float32)
        elif action == "discrete":
            if levels is None or len(levels) < 2:
                raise ValueError("a discrete action needs `levels`: the targets (units) it chooses from, at least two")
            self.levels = np.asarray(levels, dtype=np.float64)
            if not np.all(np.isfinite(self.levels)) or np.any(np.abs(self.levels) > L.MAX_MAGNITUDE):
                raise ValueError(f"levels must be finite targets of at most {L.MAX_MAGNITUDE:g} units")
            self.action_space = spaces.Discrete(len(levels)) if k == 1 else spaces.MultiDiscrete([len(levels)] * k)
        else:
            raise ValueError(f"action must be `box` or `discrete`, not {action!r}")
        if not (reward in REWARDS or callable(reward)):
            raise ValueError(f"reward must be one of {', '.join(REWARDS)} or a callable, not {reward!r}")
        if not (_real(drawdown_penalty) and 0 <= drawdown_penalty < np.inf):
            raise ValueError(f"drawdown_penalty must be a finite number, 0 or more, not {drawdown_penalty!r}")
        self.reward, self.drawdown_penalty = reward, float(drawdown_penalty)

        self.observer = Observer(n_envs, self.instruments, chosen, window, clip, self.scale, self.initial,
                                 np.array([s["margin_rate"] for s in settings]))
        self.group = np.full(n_envs, -1, np.int64)      # the last group fed; -1 before the first reset
        self._stop = np.full(n_envs, -1, np.int64)      # the episode's last group
        self.last = np.full((n_envs, k), pad, np.int64)  # the event each instrument's features are read at
        self.decided = np.zeros((n_envs, k), bool)
        # every environment's per-group tables end to end, so one index reads all of them
        self._offset = np.cumsum([0] + [d.groups for d in self.data[:-1]]).astype(np.int64)
        self._last_all = np.concatenate([d.last_of for d in self.data])
        self._decided_all = np.concatenate([d.decided for d in self.data])
        self._ts_all = np.concatenate([d.step_ts for d in self.data])
        self.new_orders = np.zeros(n_envs, np.int64)
        self.targets = np.full((n_envs, k), np.nan)
        self._env_index = np.arange(n_envs)[:, None, None]

    @staticmethod
    def targets_scale(policy: CompiledPolicy, max_target) -> np.ndarray:
        """The target (units) of action 1.0 per instrument `[instruments]`; also the scale of
        positions in the observation. Default: the policy's `max_position`."""
        k = len(policy.instruments)
        if max_target is None:
            limit = policy.checked.risk.get("max_position")
            if limit is None:
                raise ValueError(f"`{policy.name}` has no `max_position`: give max_target, the target (units) "
                                 "of action 1.0")
            max_target = limit
        scale = np.broadcast_to(np.asarray(max_target, dtype=np.float64), (k,)).copy()
        if not np.all((scale > 0) & (scale <= L.MAX_MAGNITUDE)):
            raise ValueError(f"max_target must be above 0 and at most {L.MAX_MAGNITUDE:g} units, not {max_target!r}")
        return scale

    # ---- actions --------------------------------------------------------------------------
    def to_targets(self, actions, n: int) -> np.ndarray:
        """Actions of `n` environments to targets `[n, instruments]` (units). Raises
        ValueError for an action outside the action space (shape, NaN, range)."""
        k = len(self.instruments)
        space = self.action_space
        try:
            a = np.asarray(actions)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the action is not an array of numbers: {exc}") from None
        if a.size != n * k or not (a.ndim <= 1 or a.shape == (n, k)):
            raise ValueError(f"the action has shape {a.shape}; the action space is {space}"
                             + (f", for each of {n} environments: shape ({n}, {k})" if n > 1 else ""))
        if self.action_kind == "box":
            if a.dtype.kind not in "fiu":
                raise ValueError(f"the action is of dtype {a.dtype}, not numbers; the action space is {space}")
            a = a.astype(np.float64).reshape(n, k)
            if not (np.abs(a) <= 1.0).all():  # NaN fails it too
                if not np.isfinite(a).all():
                    raise ValueError(f"the action has NaN or infinite values: {a.tolist()}")
                raise ValueError(f"the action {a.tolist()} is outside the action space [-1, 1] "
                                 f"(1.0 is a target of {self.scale[0].tolist()} units)")
            return a * self.scale
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu":
            raise ValueError(f"the action {a.tolist()} is not a whole-number choice of the action space {space}")
        a = a.reshape(n, k)
        if np.any((a < 0) | (a >= len(self.levels))):
            raise ValueError(f"the action {a.tolist()} is outside the action space {space} "
                             f"(choices 0..{len(self.levels) - 1} of targets {self.levels.tolist()})")
        return self.levels[a]

    # ---- episodes -----------------------------------------------------------------------
    def start_range(self, i: int) -> tuple[int, int]:
        last = self.data[i].groups - 1
        lo = min(self.warmup, last - 1)
        hi = max(lo, last - (self.episode_steps or 1))
        return lo, hi

    def reset_one(self, i: int, rng: np.random.Generator, start: int | None) -> None:
        """Start environment i afresh at group `start` (or a random or the first start),
        having fed the `warmup` groups before it (their intents NaN: the policy's own rules)."""
        lo, hi = self.start_range(i)
        if start is None:
            start = int(rng.integers(lo, hi + 1)) if self.random_start else lo
        elif not (isinstance(start, (int, np.integer)) and 0 <= start <= self.data[i].groups - 2):
            raise ValueError(f"start must be a step from 0 to {self.data[i].groups - 2} (one step before the data "
                             f"ends), not {start!r}")
        d, s = self.data[i], self.sessions[i]
        acct, pstate, fs = self.fresh[i]
        self.acct[i], self.pstate[i] = acct, pstate
        s.fs[...] = fs
        s.n_orders = 0
        d.events.vals[:, self._intent_col] = np.nan
        self.trace[i] = np.nan
        s.feed(d.events, None, self.trace[i], int(d.starts[max(0, start - self.warmup)]), int(d.starts[start + 1]))
        self.group[i] = start
        self._stop[i] = min(d.groups - 1, start + (self.episode_steps or d.groups))
        self.last[i] = d.last_of[start]
        self.decided[i] = False
        self.new_orders[i] = 0
        self.targets[i] = np.nan
        self._prev[i] = self.acct[i, self._counted]
        self._prev_exposure[i] = self.pstate[i, :, L.P_POS] + self.pstate[i, :, L.P_OPEN]
        # the warm-up's own rules may have traded: the first step's rise is from here
        self._prev_drawdown[i] = 1.0 - self.acct[i, L.A_EQUITY] / self.acct[i, L.A_PEAK]

    def ended(self) -> np.ndarray:
        """Per environment: its episode cannot go on (the data's last step, `episode_steps`
        taken, the kill switch, or never started)."""
        return (self.group >= self._stop) | (self.acct[:, L.A_HALTED] != 0.0)

    def step(self, targets: np.ndarray, stepping: np.ndarray) -> None:
        """Feed the next group of every environment in `stepping`, each instrument's target
        on its next market event."""
        self._prev[:] = self.acct[:, self._counted]
        self._prev_exposure[:] = self.pstate[:, :, L.P_POS] + self.pstate[:, :, L.P_OPEN]
        intent = self._intent_col
        trace = self.trace
        groups = self.group.tolist()
        for i in np.flatnonzero(stepping).tolist():
            d, s = self.data[i], self.sessions[i]
            g = groups[i] + 1
            vals = d.events.vals
            for j, e in enumerate(d.next_list[g]):
                if e >= 0:
                    vals[e, intent] = targets[i, j]
            before = s.n_orders
            s.feed(d.events, None, trace[i], d.start_list[g], d.start_list[g + 1])
            self.new_orders[i] = s.n_orders - before
        self.group += stepping
        rows = self._offset + self.group
        self.last = self._last_all[rows]
        self.decided = self._decided_all[rows] & stepping[:, None]
        np.copyto(self.targets, targets, where=stepping[:, None])

    def observe(self, fresh: np.ndarray | None = None) -> np.ndarray:
        features = self.trace[self._env_index, self.last[:, :, None], self._feature_cols]
        return self.observer.update(features, self.pstate[:, :, L.P_POS], self.pstate[:, :, L.P_OPEN],
                                    self.pstate[:, :, L.P_LAST] * self.pstate[:, :, L.P_MULT], self.acct[:, L.A_EQUITY],
                                    self.acct[:, L.A_PEAK], fresh)

    def ts(self, i: int) -> int:
        """The time (ns) of environment i's current step: its last event's."""
        return int(self._ts_all[self._offset[i] + self.group[i]])

    # ---- what a step did ----------------------------------------------------------------
    def outcome(self) -> dict:
        """Per environment, what the last step did: arrays with the environments first."""
        change = self.acct[:, self._counted] - self._prev
        equity = self.acct[:, L.A_EQUITY].copy()
        exposure = self.pstate[:, :, L.P_POS] + self.pstate[:, :, L.P_OPEN]
        delta = np.where(self.decided, exposure - self.targets, 0.0)
        return {
            "target": self.targets.copy(),
            "approved": exposure,
            "shield_delta": delta,
            "overruled": (delta != 0.0).any(axis=1),
            "reason_counts": change[:, L.A_REASON_COUNTS:].astype(np.int64),
            "orders": self.new_orders.copy(),
            "order_qty": exposure - self._prev_exposure,
            "fills": change[:, L.A_FILLS].astype(np.int64),
            "fees": change[:, L.A_FEES],
            "pnl": change[:, L.A_EQUITY],
            "equity": equity,
            "drawdown": 1.0 - equity / self.acct[:, L.A_PEAK],  # the peak starts at the initial equity, above 0
            "halted": self.acct[:, L.A_HALTED] != 0.0,
            "ts": self._ts_all[self._offset + self.group],
        }

    def rewards(self, out: dict) -> np.ndarray:
        equity = out["equity"]
        prev = equity - out["pnl"]
        if self.reward == "equity":
            r = out["pnl"]
        elif self.reward == "log":
            r = reward_curve(equity, self.initial) - reward_curve(prev, self.initial)
        elif self.reward == "drawdown":
            r = (out["pnl"] / np.maximum(prev, REWARD_FLOOR * self.initial)
                 - self.drawdown_penalty * np.maximum(0.0, out["drawdown"] - self._prev_drawdown))
        else:
            r = np.array([float(self.reward(self.info_of(out, i))) for i in range(len(equity))])
        self._prev_drawdown[:] = out["drawdown"]
        return np.asarray(r, dtype=np.float64)

    def info_of(self, out: dict, i: int) -> dict:
        """Environment i's step as the plain dict `PolicyEnv.step` returns (see its docstring)."""
        counts = out["reason_counts"][i]
        return {
            "target": out["target"][i], "approved": out["approved"][i], "shield_delta": out["shield_delta"][i],
            "overruled": bool(out["overruled"][i]),
            "reasons": {self._reasons[b]: int(counts[b]) for b in np.flatnonzero(counts)} if counts.any() else {},
            "orders": int(out["orders"][i]), "order_qty": out["order_qty"][i], "fills": int(out["fills"][i]),
            "fees": float(out["fees"][i]), "pnl": float(out["pnl"][i]), "equity": float(out["equity"][i]),
            "drawdown": float(out["drawdown"][i]), "halted": bool(out["halted"][i]), "ts": int(out["ts"][i]),
        }


_OPTIONS = dict(mode="next", account=None, features=None, window=1, clip=1e6, action="box", max_target=None,
                levels=None, reward="equity", drawdown_penalty=1.0, warmup=None, episode_steps=None,
                random_start=True)


def _policies(policies: Sequence, shield: bool, options: dict) -> list[CompiledPolicy]:
    """The compiled policies to run (unshielded ones, once per distinct policy, for
    `shield=False`); sets options["max_target"] to each one's action scale, taken from the
    policies given: shielded or not, an action means the same target."""
    compiled = []
    for p in policies:
        checked = p.checked if isinstance(p, CompiledPolicy) else check_policy(p).checked
        if INTENT not in checked.inputs:
            raise ValueError(f"policy `{checked.name}` has no `{INTENT}` input, so a model cannot set its target: "
                             f"add `inputs: [{INTENT}]` (with `signals: []` for a policy the model alone drives)")
        compiled.append(p if isinstance(p, CompiledPolicy) else compile_policy(p))
    options["max_target"] = np.stack([_Core.targets_scale(p, options["max_target"]) for p in compiled])
    if shield:
        return compiled
    bare = {id(p): unshielded(p) for p in compiled}
    return [bare[id(p)] for p in compiled]


class PolicyEnv(gymnasium.Env):
    """A trading environment whose actions the policy's risk section shields.

    policy: a `CompiledPolicy` or a policy file with an `intent` input. data: `Events`
    (market events, one value column per `policy.columns`; the intent column is
    overwritten), a data file (one instrument), or {symbol: path} (a symbol may be given by
    the policy's name of it, `bn` for `instruments: {bn: "binance:BTCUSDT"}`).

    Options (keywords):
    - `action`: `box` (default): `Box(-1, 1, (instruments,))`, target = action x
      `max_target` (units; default the policy's `max_position`); `discrete`: a choice of
      `levels` (targets in units), `Discrete(len(levels))`, or `MultiDiscrete` with several
      instruments.
    - observation: `features` (names; default all of the policy's), `window` (rows, default
      1), `clip` (bound of the `Box`, default 1e6, at most the largest float32); the layout is `Observer`'s, and
      `observation_names` names each value.
    - `reward`: `equity` (default), `log`, `drawdown` (with `drawdown_penalty`, default 1,
      0 or more), or a callable taking the step's info dict and returning a float; the
      built-in ones are defined at `REWARDS`.
    - episodes: `warmup` (steps fed before the first observation, intents NaN; default the
      policy's longest window + 1), `episode_steps` (None: to the end of the data),
      `random_start` (default True: `reset(seed=...)` starts at a random step; the start
      can also be given as `reset(options={"start": step})`).
    - `mode`: `next` (default; an order fills at its instrument's next market event's
      price, as `policyc backtest`) or `same` (at the deciding event's price).
    - `account`: overrides of `initial_equity` (money), `margin_rate` (fraction),
      `fees_bps`, `slippage_bps` (basis points), checked as `policyc backtest` checks
      `--initial-equity`, `--fees-bps`, `--slippage-bps` (`check_account`).
    - `shield`: False runs `unshielded(policy)`: no risk section at all.
    - `render_mode`: None, the only mode (the environment renders nothing).

    A step is one timestamp of the data: every market event dated then. An instrument's
    target goes into the `intent` of its next market event (normally in this step), which
    sets the desired target after the policy's rules; the risk steps then decide the order.

    `step` returns the info dict: `target` (units asked, per instrument), `approved` (the
    exposure the risk steps allowed: position plus open orders, units), `shield_delta`
    (approved - target for an instrument decided in the step, else 0), `overruled` (any
    such delta), `reasons` (reason code -> decisions of the step that recorded it),
    `orders` (orders decided), `order_qty` (their signed sum per instrument, units),
    `fills`, `fees` (money), `pnl` (equity change, money), `equity`, `drawdown`
    (fraction), `halted` (the kill switch), `ts` (the step's time, ns). The episode is
    terminated when the kill switch halts the account and truncated at the end of the
    data (or after `episode_steps`).

    Raises TypeError for an unknown option; ValueError for a policy without an `intent`
    input, an unknown feature, a bad option value (an account override its key's bounds
    refuse, a `clip` above the largest float32, a `render_mode` other than None), unusable
    `Events` (`check_events`; `policyc.runtime.data.DataError` for a file), and, from
    `step`, for an action outside the action space (shape, NaN, range).
    """

    metadata = {"render_modes": []}

    def __init__(self, policy: CompiledPolicy | str | Path, data, *, shield: bool = True,
                 render_mode: str | None = None, **options):
        self.render_mode = None
        options = _with_defaults(render_mode, options)
        [self.policy] = _policies([policy], shield, options)
        self._core = _Core([self.policy], [data], **options)
        self.action_space = self._core.action_space
        self.observation_space = self._core.observer.space
        self._done = True

    @property
    def observation_names(self) -> list[str]:
        return self._core.observer.names

    @property
    def observer(self) -> Observer:
        """The observation's builder: `observer.update(...)` makes this environment's
        observation from state read elsewhere (a live runtime's status, say)."""
        return self._core.observer

    @property
    def observation_features(self) -> list[str]:
        """The policy features in the observation, in its order."""
        return self._core.feature_names

    @property
    def session(self):
        """The kernel session of the current episode (`orders[:n_orders]`, `acct`, `pstate`)."""
        return self._core.sessions[0]

    @property
    def events(self) -> Events:
        """The data's events with this episode's actions so far in the `intent` column (NaN:
        no action): the input that `policyc backtest` runs to the same orders."""
        return self._core.data[0].events

    @property
    def reason_names(self) -> list[str]:
        return self._core._reasons

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        start = (options or {}).get("start")
        self._core.reset_one(0, self.np_random, start)
        self._done = False
        obs = self._core.observe(np.ones(1, bool))[0]
        return obs, {"start": int(self._core.group[0]), "ts": self._core.ts(0)}

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode has ended (or never started): call reset() first")
        core = self._core
        targets = core.to_targets(action, 1)
        core.step(targets, np.ones(1, bool))
        obs = core.observe()[0]
        out = core.outcome()
        reward = float(core.rewards(out)[0])
        terminated = bool(out["halted"][0])
        truncated = not terminated and bool(core.ended()[0])
        self._done = terminated or truncated
        return obs, reward, terminated, truncated, core.info_of(out, 0)


class PolicyVectorEnv(VectorEnv):
    """`num_envs` environments stepped together on one compiled kernel: the kernel runs
    each one's step, then the observation, reward and info of all of them are single NumPy
    operations. Sub-environment i runs `policies[i]` on `data[i]` (the policies the same
    policy under different param values, `CompiledPolicy.with_params`, so they share the
    kernel); the options are `PolicyEnv`'s, for all of them.

    Autoreset is next-step (`metadata["autoreset_mode"]`): the step after one that ended a
    sub-environment resets it, ignoring its action, with reward 0. The info is a dict of
    arrays with the sub-environments first: `PolicyEnv`'s keys, with `reason_counts`
    `[num_envs, len(reason_names)]` in place of `reasons`, each key `k` with its mask `_k`
    (False for a sub-environment being reset, as `gymnasium.vector` marks them)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, policies: Sequence[CompiledPolicy], data: Sequence, *, shield: bool = True,
                 render_mode: str | None = None, **options):
        self.render_mode = None
        options = _with_defaults(render_mode, options)
        if len(policies) != len(data) or not policies:
            raise ValueError(f"give one policy per data source: {len(policies)} policies, {len(data)} data sources")
        compiled = _policies(policies, shield, options)
        kernels = {p.kernel_path for p in compiled}
        if len(kernels) > 1:
            raise ValueError("the policies must share one kernel: the same policy under different param values")
        self.policies = compiled
        self._core = _Core(compiled, list(data), **options)
        self.num_envs = len(compiled)
        self.single_action_space = self._core.action_space
        self.single_observation_space = self._core.observer.space
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self._ended = np.ones(self.num_envs, bool)

    @property
    def observation_names(self) -> list[str]:
        return self._core.observer.names

    @property
    def reason_names(self) -> list[str]:
        return self._core._reasons

    @property
    def sessions(self) -> list:
        return self._core.sessions

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        """Reset every sub-environment; `seed` an int (sub-environment i gets seed + i) or one
        per sub-environment; `options={"start": step}` starts all at that step."""
        super().reset(seed=None)
        seeds = ([None] * self.num_envs if seed is None else [seed + i for i in range(self.num_envs)]
                 if isinstance(seed, (int, np.integer)) else list(seed))
        if len(seeds) != self.num_envs:
            raise ValueError(f"give one seed per sub-environment ({self.num_envs}), not {len(seeds)}")
        self._rngs = [np.random.default_rng(s) for s in seeds]
        start = (options or {}).get("start")
        for i in range(self.num_envs):
            self._core.reset_one(i, self._rngs[i], start)
        self._ended[:] = False
        obs = self._core.observe(np.ones(self.num_envs, bool))
        return obs, {"start": self._core.group.copy()}

    def step(self, actions):
        core = self._core
        if not hasattr(self, "_rngs"):
            raise RuntimeError("call reset() first")
        targets = core.to_targets(actions, self.num_envs)
        resetting = self._ended.copy()
        for i in np.flatnonzero(resetting):
            core.reset_one(i, self._rngs[i], None)
        stepping = ~resetting
        core.step(targets, stepping)
        obs = core.observe(resetting)
        out = core.outcome()
        rewards = np.where(stepping, core.rewards(out), 0.0)
        terminated = out["halted"] & stepping
        truncated = core.ended() & stepping & ~terminated
        self._ended = terminated | truncated
        info = {}
        for key, value in out.items():
            info[key] = value
            info[f"_{key}"] = stepping
        return obs, rewards, terminated, truncated, info


def make_vector(policy: CompiledPolicy | str | Path, data, num_envs: int | None = None, *,
                params: Sequence[dict] | None = None, shield: bool = True, **options) -> PolicyVectorEnv:
    """A `PolicyVectorEnv` over one policy: `data` one source for all (each sub-environment
    then starts at its own random step) or a list of sources (data files, `Events` slices),
    one per sub-environment; `params` a list of param overrides, one per sub-environment
    (same kernel, `CompiledPolicy.with_params`). `num_envs` defaults to the length of
    whichever list is given; a single source and no params need it."""
    compiled = policy if isinstance(policy, CompiledPolicy) else compile_policy(policy)
    many = isinstance(data, (list, tuple))
    sizes = {len(x) for x in (data if many else None, params) if x is not None}
    if num_envs is not None:
        sizes.add(num_envs)
    if len(sizes) != 1:
        raise ValueError("give num_envs, or data or params as lists of one length" if not sizes else
                         f"num_envs, data and params disagree on the number of environments: {sorted(sizes)}")
    n = sizes.pop()
    if n < 1:
        raise ValueError(f"num_envs must be at least 1, not {n}")
    policies = [compiled.with_params(**p) for p in params] if params is not None else [compiled] * n
    return PolicyVectorEnv(policies, list(data) if many else [data] * n, shield=shield, **options)


gymnasium.register(id="policyc/Policy-v0", entry_point=PolicyEnv)
