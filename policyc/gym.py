"""Gymnasium environments over a compiled policy: the policy's risk section shields every action.

An action is the desired target position of each instrument. It goes into the policy's
`intent` input of the instrument's next market event and through the same compiled kernel
that backtests and trades live, so the risk steps clip or block it exactly as they would
the model's intents in `policyc run`, and a run of actions through the environment is the
backtest of those actions as an `intent` column (`PolicyEnv.events`). The guide page is
docs/rl.md.

- `PolicyEnv(policy, data, ...)`: one environment (a `gymnasium.Env`).
- `PolicyVectorEnv` / `make_vector(policy, data, num_envs, ...)`: many environments on one
  compiled kernel (over data files, data slices, param values or random starts), reset and
  stepped together by one call of a batched step generated for the kernel (`_STEP_MODULE`),
  with one batched observation (a `gymnasium.vector.VectorEnv`, next-step autoreset).
  `PolicyEnv` is the same machinery with one environment.
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

from policyc.compiler import jit
from policyc.compiler import layout as L
from policyc.compiler.build import ORDER_GROWTH, CompiledPolicy, Events, compile_checked, compile_policy
from policyc.compiler.frontend import check_policy
from policyc.compiler.sessions import CLOCK_WIDTH
from policyc.dsl.diagnostics import did_you_mean
from policyc.dsl.risk_keys import ACCOUNT_KEYS
from policyc.runtime.data import load_table, market_faults, merge

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
    last_of: np.ndarray   # [groups, instruments]: its last event up to the group's end; len(events) if none

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
        tables = [load_table(data[s], read, optional=policy.optional_columns) for s in policy.instruments]
        events = merge(tables, columns, (*policy.optional_columns, INTENT))  # no file has the intent: NaN
    if len(np.unique(events.ts)) < 2:
        raise ValueError("the data has fewer than two distinct timestamps: nothing to step through")
    return events


def check_events(policy: CompiledPolicy, events: Events) -> Events:
    """A copy of `events` (int64 ts, int8 kind, int32 inst, float64 vals) with its intent
    column NaN, checked as the data loader checks a file (`policyc.runtime.data`): market
    events only, one value column per `policy.columns`, instrument indices of the policy,
    timestamps (ns) that never go back (equal ones are fine), and the rules of
    `data.market_faults`: prices (`close`, `price`, `bid`, ...) positive and finite, a
    trade's `qty` above 0 and a bar's `volume` 0 or more, every value at most
    `layout.MAX_MAGNITUDE` in magnitude, no crossed quote, a bar's prices nesting. A
    model input may be NaN (no value), and so may an optional column
    (`policy.optional_columns`: data without it), where a value that is no usable price,
    or a crossed quote, is made NaN as the loader makes it. Raises ValueError naming the
    first bad event, its column and value."""
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
    # the rules of a data file's rows, which also leave an unusable optional value NaN, in place
    market = {name: vals[:, c] for c, name in enumerate(columns) if name != INTENT}
    broken = [(rows[0], text) for rows, _, text in market_faults(market, policy.optional_columns) if len(rows)]
    if broken:
        k, text = min(broken, key=lambda fault: fault[0])
        raise ValueError(f"event {k}: {text(k) if callable(text) else text}")
    vals[:, columns.index(INTENT)] = np.nan
    return Events(np.array(ts, np.int64), np.array(kind, np.int8), np.array(inst, np.int32), vals)


def _prepare(policy: CompiledPolicy, data) -> _Data:
    events = _events(policy, data)
    n, k = len(events), len(policy.instruments)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(events.ts)) + 1, [n]]).astype(np.int64)
    next_of = np.full((len(starts) - 1, k), -1, np.int64)
    last_of = np.full((len(starts) - 1, k), n, np.int64)
    for j in range(k):
        mine = np.flatnonzero(events.inst == j)
        at = np.searchsorted(mine, starts[:-1])
        ok = at < len(mine)
        next_of[ok, j] = mine[at[ok]]
        before = np.searchsorted(mine, starts[1:]) - 1
        last_of[before >= 0, j] = mine[before[before >= 0]]
    return _Data(events, starts, next_of, last_of)


#: The columns of `_Core.envs`, one row per environment (int64): the last group fed (-1
#: before the first reset), the episode's last group, the environment's number of groups,
#: the session's orders, those of the latest step, the first event fed in the episode, one
#: past the last event given an intent in it; and, while a step is under way, the next
#: event to feed (-1 between steps), the event to feed up to, and the orders before it.
_ENV_COLUMNS = ("group", "stop", "groups", "n_orders", "new_orders", "fed", "intent_end", "at", "end",
                "orders_before")
#: The columns of `_Core.setup` (int64): the fill mode, its latency (ns), the kernel's
#: trace flag, the intent column, the warm-up steps, `episode_steps` (0: none), and 1 for
#: box actions (checked and scaled by `scale` in the step), 0 for targets.
_SETUP_COLUMNS = ("mode", "latency", "trace_on", "intent", "warmup", "episode_steps", "box")
_TRACE_ON = 2  # the kernel's flag to record the decision trace and the features
#: The arrays `_Core` keeps for the batched step (name, dtype, dimensions), each with the
#: environments first: the step finds them through `_Core.table`, a row [address,
#: shape...] each, in this order.
_HELD = (("ts", np.int64, 2), ("kind", np.int8, 2), ("inst", np.int32, 2), ("vals", np.float64, 3),
         ("clock", np.int64, 3), ("bars", np.float64, 2), ("params", np.float64, 2), ("win", np.int64, 2),
         ("lay", np.int64, 2), ("cfg", np.float64, 2), ("fs", np.float64, 3), ("pstate", np.float64, 3),
         ("acct", np.float64, 2), ("orders", np.float64, 3), ("trace", np.float64, 3), ("no_equity", np.float64, 1),
         ("fresh_acct", np.float64, 2), ("fresh_pstate", np.float64, 3), ("fresh_fs", np.float64, 3),
         ("starts", np.int64, 2), ("next_of", np.int64, 3), ("last_of", np.int64, 3), ("step_ts", np.int64, 2),
         ("feature_cols", np.int64, 1), ("setup", np.int64, 1), ("envs", np.int64, 2), ("targets", np.float64, 2),
         ("before", np.float64, 2), ("features", np.float64, 3), ("scale", np.float64, 2),
         ("observed_positions", np.float64, 3), ("observed_account", np.float64, 2))

# The batched reset and step of many sessions of one kernel, as one Numba call. Numba
# caches only functions of real files, and calls another compiled function directly only
# when it is a global of the caller's module, so this module is written per kernel, beside
# it (`jit.load_kernel`), with the kernel's `run` as its global `run`. The arrays come as
# one table of addresses, and the kernel is given views that count no references: an
# array passed to a Numba call from Python costs about 0.07 us, a view counted inside one
# about 0.015 us, and the kernel takes fifteen a call, about as long as its step of an event.
_STEP_MODULE = '''\
"""policyc.gym's batched reset and step over the kernel {kernel}, generated by policyc.gym."""
import sys

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

from policyc.compiler import layout as L

run = sys.modules["{kernel}"].run
{held} = range({n_held})
{env_columns} = range({n_env_columns})
{setup_columns} = range({n_setup_columns})


@intrinsic
def pointer(typingctx, address, dtype):
    """A pointer of `dtype` (a NumPy scalar type, or an array's) to `address` (an int)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return types.CPointer(dtype.dtype)(address, dtype), codegen


@njit(inline="always")
def held1(table, k, dtype):
    """The held array k of `table` (a row [address, shape...]), of 1 dimension."""
    return carray(pointer(table[k, 0], dtype), (table[k, 1],))


@njit(inline="always")
def held2(table, k, dtype):
    return carray(pointer(table[k, 0], dtype), (table[k, 1], table[k, 2]))


@njit(inline="always")
def held3(table, k, dtype):
    return carray(pointer(table[k, 0], dtype), (table[k, 1], table[k, 2], table[k, 3]))


@njit(inline="always")
def row(a, i):
    """a[i], as a view that counts no reference."""
    return carray(pointer(a.ctypes.data + np.uint64(i * a.strides[0]), a), a.shape[1:])


@njit(inline="always")
def rows(a, i, lo, n):
    """a[i, lo:lo + n], as a view that counts no reference."""
    return carray(pointer(a.ctypes.data + np.uint64(i * a.strides[0] + lo * a.strides[1]), a), (n,) + a.shape[2:])


@njit(inline="always")
def snapshot(before, acct, pstate, i):
    """Environment i's fills, fees, equity, reason counts and exposure per instrument, into before[i]."""
    k = pstate.shape[1]
    n_counts = before.shape[1] - 3 - k
    before[i, 0] = acct[i, L.A_FILLS]
    before[i, 1] = acct[i, L.A_FEES]
    before[i, 2] = acct[i, L.A_EQUITY]
    for r in range(n_counts):
        before[i, 3 + r] = acct[i, L.A_REASON_COUNTS + r]
    for j in range(k):
        before[i, 3 + n_counts + j] = pstate[i, j, L.P_POS] + pstate[i, j, L.P_OPEN]


@njit(cache=True, nogil=True)
def refused(actions, setup):
    """Whether `actions` are box actions (setup[BOX]) and one is outside [-1, 1] or NaN."""
    if setup[BOX]:
        for a in actions.flat:
            if not abs(a) <= 1.0:  # NaN fails it too
                return True
    return False


@njit(cache=True, error_model="numpy", nogil=True)
def step(table, actions, restarts, floats, ints, flags, first):
    """Environment i (from `first` on) restarts at group restarts[i] when that is 0 or
    more (its session afresh, fed the warm-up groups before it with no intent), else
    feeds its next group with the target of actions[i] on each instrument's next market
    event: actions[i] x scale[i] for box actions (setup[BOX]), else actions[i] (units).
    Then its outcome goes into floats[i], ints[i] and flags[i] (as policyc.gym._Outcome
    lays them out), and what the observation reads into features[i], observed_positions[:, i]
    (position, open quantity, last price) and observed_account[:, i] (equity, peak).

    Returns -1; {refused}, having done nothing, when a box action is outside [-1, 1] (or
    NaN); or the environment whose order buffer filled: grow the buffers and call again
    with `first` that environment, which goes on where its session stopped. Raises
    ValueError for a step past an episode's end."""
    ts, kind, inst = held2(table, TS, np.int64), held2(table, KIND, np.int8), held2(table, INST, np.int32)
    vals, clock = held3(table, VALS, np.float64), held3(table, CLOCK, np.int64)
    bars, params = held2(table, BARS, np.float64), held2(table, PARAMS, np.float64)
    win, lay, cfg = held2(table, WIN, np.int64), held2(table, LAY, np.int64), held2(table, CFG, np.float64)
    fs, pstate, acct = held3(table, FS, np.float64), held3(table, PSTATE, np.float64), held2(table, ACCT, np.float64)
    orders, trace = held3(table, ORDERS, np.float64), held3(table, TRACE, np.float64)
    no_equity, fresh_acct = held1(table, NO_EQUITY, np.float64), held2(table, FRESH_ACCT, np.float64)
    fresh_pstate, fresh_fs = held3(table, FRESH_PSTATE, np.float64), held3(table, FRESH_FS, np.float64)
    starts, step_ts = held2(table, STARTS, np.int64), held2(table, STEP_TS, np.int64)
    next_of, last_of = held3(table, NEXT_OF, np.int64), held3(table, LAST_OF, np.int64)
    feature_cols, setup = held1(table, FEATURE_COLS, np.int64), held1(table, SETUP, np.int64)
    envs, targets = held2(table, ENVS, np.int64), held2(table, TARGETS, np.float64)
    before, features = held2(table, BEFORE, np.float64), held3(table, FEATURES, np.float64)
    scale = held2(table, SCALE, np.float64)
    observed_positions = held3(table, OBSERVED_POSITIONS, np.float64)
    observed_account = held2(table, OBSERVED_ACCOUNT, np.float64)
    mode, latency, trace_on, intent = setup[MODE], setup[LATENCY], setup[TRACE_ON], setup[INTENT]
    clocked = clock.shape[1] > 0  # a policy without a clock is given no clock rows
    n, k = targets.shape
    n_counts = ints.shape[1] - 3
    if first == 0 and refused(actions, setup):
        return {refused}
    for i in range(first, n):
        stepping = restarts[i] < 0
        if envs[i, AT] < 0:  # not begun by an earlier call
            if stepping:
                g = envs[i, GROUP] + 1
                if g > envs[i, STOP]:  # the tables end there: indices past them read and write any memory
                    raise ValueError("a step past the episode's end")
                snapshot(before, acct, pstate, i)
                for j in range(k):
                    target = actions[i, j] * scale[i, j] if setup[BOX] else actions[i, j]
                    e = next_of[i, g, j]
                    if e >= 0:  # the instrument's next market event carries the target
                        vals[i, e, intent] = target
                        envs[i, INTENT_END] = max(envs[i, INTENT_END], e + 1)
                    targets[i, j] = target
                envs[i, AT], envs[i, END] = starts[i, g], starts[i, g + 1]
            else:
                g = restarts[i]
                if g > envs[i, GROUPS] - 2:  # as past the end: a start must leave a step to take
                    raise ValueError("a start past the data's last step")
                acct[i, :] = fresh_acct[i]
                pstate[i, :, :] = fresh_pstate[i]
                fs[i, :, :] = fresh_fs[i]
                envs[i, N_ORDERS] = 0
                # what the last episode wrote, back to NaN: its intents, and the trace of the events it fed
                vals[i, envs[i, FED]:envs[i, INTENT_END], intent] = np.nan
                if envs[i, GROUP] >= 0:
                    trace[i, envs[i, FED]:starts[i, envs[i, GROUP] + 1], :] = np.nan
                envs[i, AT], envs[i, END] = starts[i, max(0, g - setup[WARMUP])], starts[i, g + 1]
                envs[i, FED], envs[i, INTENT_END] = envs[i, AT], envs[i, AT]
                targets[i, :] = np.nan
            envs[i, ORDERS_BEFORE] = envs[i, N_ORDERS]
        start, stop = envs[i, AT], envs[i, END]
        start, envs[i, N_ORDERS] = run(
            row(ts, i), row(kind, i), row(inst, i), row(vals, i),
            rows(clock, i, start if clocked else 0, stop - start if clocked else 0), bars, start, stop,
            row(params, i), row(win, i), row(lay, i), row(cfg, i), row(fs, i), row(pstate, i), row(acct, i),
            row(orders, i), envs[i, N_ORDERS], mode, latency, no_equity, row(trace, i), trace_on)
        if start < stop:
            envs[i, AT] = start
            return i
        envs[i, AT] = -1
        if stepping:
            g = envs[i, GROUP] + 1
            envs[i, NEW_ORDERS] = envs[i, N_ORDERS] - envs[i, ORDERS_BEFORE]
        else:  # the outcome of a restart is no change: what follows the warm-up is its start
            g = restarts[i]
            steps = setup[EPISODE_STEPS] if setup[EPISODE_STEPS] > 0 else envs[i, GROUPS]
            envs[i, STOP] = min(envs[i, GROUPS] - 1, g + steps)
            envs[i, NEW_ORDERS] = 0
            snapshot(before, acct, pstate, i)
        envs[i, GROUP] = g
        overruled = False
        for j in range(k):
            now = pstate[i, j, L.P_POS] + pstate[i, j, L.P_OPEN]
            e = next_of[i, g, j]
            delta = now - targets[i, j] if stepping and 0 <= e < starts[i, g + 1] else 0.0
            overruled |= delta != 0.0
            floats[i, j] = targets[i, j]
            floats[i, k + j] = now
            floats[i, 2 * k + j] = delta
            floats[i, 3 * k + j] = now - before[i, 3 + n_counts + j]
            at = last_of[i, g, j]
            for f in range(feature_cols.shape[0]):
                features[i, j, f] = trace[i, at, feature_cols[f]]
            observed_positions[0, i, j] = pstate[i, j, L.P_POS]
            observed_positions[1, i, j] = pstate[i, j, L.P_OPEN]
            observed_positions[2, i, j] = pstate[i, j, L.P_LAST] * pstate[i, j, L.P_MULT]
        equity = acct[i, L.A_EQUITY]
        observed_account[0, i] = equity
        observed_account[1, i] = acct[i, L.A_PEAK]
        floats[i, 4 * k] = acct[i, L.A_FEES] - before[i, 1]
        floats[i, 4 * k + 1] = equity - before[i, 2]
        floats[i, 4 * k + 2] = equity
        floats[i, 4 * k + 3] = 1.0 - equity / acct[i, L.A_PEAK]
        ints[i, 0] = envs[i, NEW_ORDERS]
        ints[i, 1] = np.int64(acct[i, L.A_FILLS] - before[i, 0])
        ints[i, 2] = step_ts[i, g]
        for r in range(n_counts):
            ints[i, 3 + r] = np.int64(acct[i, L.A_REASON_COUNTS + r] - before[i, 3 + r])
        halted = acct[i, L.A_HALTED] != 0.0
        flags[i, 0] = overruled
        flags[i, 1] = halted
        flags[i, 2] = stepping and halted
        flags[i, 3] = stepping and not halted and g >= envs[i, STOP]
        flags[i, 4] = flags[i, 2] or flags[i, 3]
    return -1
'''


def _step_module(policy: CompiledPolicy):
    """The batched step module of the policy's kernel, compiled (seconds, once per kernel on
    this machine: Numba caches it beside the kernel)."""
    source = _STEP_MODULE.format(
        kernel=policy.kernel.__name__, held=", ".join(name.upper() for name, _, _ in _HELD), n_held=len(_HELD),
        env_columns=", ".join(c.upper() for c in _ENV_COLUMNS), n_env_columns=len(_ENV_COLUMNS),
        setup_columns=", ".join(c.upper() for c in _SETUP_COLUMNS), n_setup_columns=len(_SETUP_COLUMNS),
        refused=_REFUSED)
    return jit.load_kernel(source)[0]


#: The outcome of a step, one row per environment: `floats` has, per instrument, the
#: target, approved exposure, shield delta and order quantity (four blocks of one column
#: per instrument), then `_FLOATS`; `ints` has `_INTS`, then the reason counts; `flags`
#: has `_FLAGS` (`terminated` and `truncated` as `PolicyEnv.step` returns them and `ended`
#: either, all False for an environment that restarted).
_FLOATS = ("fees", "pnl", "equity", "drawdown")
_INTS = ("orders", "fills", "ts")
_FLAGS = ("overruled", "halted", "terminated", "truncated", "ended")
_GROUP, _N_ORDERS, _AT = (_ENV_COLUMNS.index(c) for c in ("group", "n_orders", "at"))
_REFUSED = -2  # the step's answer to a box action outside [-1, 1]


@dataclasses.dataclass
class _Outcome:
    floats: np.ndarray
    ints: np.ndarray
    flags: np.ndarray
    k: int  # instruments

    def column(self, name: str) -> np.ndarray:
        return self.floats[:, 4 * self.k + _FLOATS.index(name)]

    def flag(self, name: str) -> np.ndarray:
        return self.flags[:, _FLAGS.index(name)]


def _with_headroom(function) -> Callable:
    """A function of the batched step module called as compile_policy runs a compile, with
    `jit.with_stack_headroom`: for its first call, where Numba compiles it or loads its
    machine code."""
    return lambda *args: jit.with_stack_headroom(function, *args)


class _Core:
    """`n` environments stepped together: one session each, their state rows of shared
    arrays, reset and stepped all at once by one call of the kernel's batched step
    (`_STEP_MODULE`), so that what follows is one NumPy operation for all of them."""

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
        intent = first.columns.index(INTENT)

        loaded = [_prepare(p, d) for p, d in zip(policies, data)]
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
        self._reasons = first.reason_names

        scale = np.array(max_target, dtype=np.float64)  # [n_envs, instruments], from `_policies`
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
        self.observer = Observer(n_envs, self.instruments, chosen, window, clip, scale, self.initial,
                                 np.array([s["margin_rate"] for s in settings]))

        # every environment's events and per-group tables, padded to the longest: row i is environment i's
        n_events, n_groups = max(len(d.events) for d in loaded), max(d.groups for d in loaded)
        clock = first.clock
        ts, kind = np.zeros((n_envs, n_events), np.int64), np.zeros((n_envs, n_events), np.int8)
        inst, vals = np.zeros((n_envs, n_events), np.int32), np.zeros((n_envs, n_events, len(first.columns)))
        clock_rows = np.zeros((n_envs, n_events if clock is not None else 0, CLOCK_WIDTH), np.int64)
        starts, step_ts = np.zeros((n_envs, n_groups + 1), np.int64), np.zeros((n_envs, n_groups), np.int64)
        next_of = np.full((n_envs, n_groups, k), -1, np.int64)
        last_of = np.full((n_envs, n_groups, k), n_events, np.int64)  # trace row n_events stays NaN: no event yet
        self.events = []
        for i, d in enumerate(loaded):
            e, g = len(d.events), d.groups
            ts[i, :e], kind[i, :e], inst[i, :e], vals[i, :e] = d.events.ts, d.events.kind, d.events.inst, d.events.vals
            if clock is not None:  # a clock row depends on its event's time alone: computed once
                clock_rows[i, :e] = clock.columns(d.events.ts)
            starts[i, :g + 1], starts[i, g + 1:] = d.starts, e
            step_ts[i, :g] = d.events.ts[d.starts[1:] - 1]
            next_of[i, :g], last_of[i, :g] = d.next_of, np.where(d.last_of == e, n_events, d.last_of)
            self.events.append(Events(ts[i, :e], kind[i, :e], inst[i, :e], vals[i, :e]))
        self.groups = [d.groups for d in loaded]
        width = max(s.fs.shape[1] for s in self.sessions)  # param values may size the feature state apart
        fresh_fs = np.zeros((n_envs, k, width))
        for i, s in enumerate(self.sessions):
            fresh_fs[i, :, :s.fs.shape[1]] = s.fs
        envs = np.zeros((n_envs, len(_ENV_COLUMNS)), np.int64)
        envs[:, [_GROUP, _AT]] = -1
        envs[:, _ENV_COLUMNS.index("groups")] = self.groups
        fresh_acct = np.stack([s.acct for s in self.sessions])
        fresh_pstate = np.stack([s.pstate for s in self.sessions])
        held = dict(
            ts=ts, kind=kind, inst=inst, vals=vals, clock=clock_rows, bars=np.zeros((0, L.BAR_WIDTH)),
            params=np.stack([p.param_vector for p in policies]), win=np.stack([p.state.windows for p in policies]),
            lay=np.stack([p.state.offsets for p in policies]), cfg=np.stack([s.config for s in self.sessions]),
            fs=fresh_fs.copy(), pstate=fresh_pstate.copy(), acct=fresh_acct.copy(),
            orders=np.empty((n_envs, len(self.sessions[0].orders), L.ORDER_WIDTH)),
            trace=np.full((n_envs, n_events + 1, L.TRACE_FIXED + len(names)), np.nan), no_equity=np.zeros(1),
            fresh_acct=fresh_acct, fresh_pstate=fresh_pstate, fresh_fs=fresh_fs, starts=starts, next_of=next_of,
            last_of=last_of, step_ts=step_ts,
            feature_cols=np.array([L.TRACE_FIXED + names.index(n) for n in chosen], np.int64),
            setup=np.array([mode, 0, _TRACE_ON, intent, self.warmup, episode_steps or 0, action == "box"], np.int64),
            envs=envs, scale=scale,
            targets=np.full((n_envs, k), np.nan), before=np.zeros((n_envs, 3 + len(self._reasons) + k)),
            features=np.zeros((n_envs, k, len(chosen))), observed_positions=np.zeros((3, n_envs, k)),
            observed_account=np.zeros((2, n_envs)))
        self.table = np.zeros((len(_HELD), 4), np.int64)
        for name, _, _ in _HELD:
            self._hold(name, held[name])
        for i, s in enumerate(self.sessions):
            s.acct, s.pstate, s.fs, s.orders = self.acct[i], self.pstate[i], self.fs[i], self.orders[i]
        module = _step_module(first)
        self._step, self._refused = module.step, module.refused
        self._prev_drawdown = np.zeros(n_envs)
        # the observation's inputs, each contiguous (NumPy is faster on them than on views of the state)
        self._observed = (*self.observed_positions, *self.observed_account)

    def __reduce__(self):
        # a copy's table would hold the addresses of this one's arrays
        raise TypeError("an environment's state cannot be copied or pickled: make a new environment")

    def _hold(self, name: str, array: np.ndarray) -> None:
        """Keep `array` as attribute `name`, and its address and shape in `table` for the
        step: it must stay alive, in place, C-ordered and of `_HELD`'s type while there."""
        k = [h[0] for h in _HELD].index(name)
        _, dtype, ndim = _HELD[k]
        if not (array.dtype == dtype and array.ndim == ndim and array.flags.c_contiguous and array.flags.writeable):
            raise TypeError(f"{name} must be a writeable C-ordered {ndim}-dimension array of {np.dtype(dtype)}, "
                            f"not {array.dtype} {array.shape}")
        setattr(self, name, array)
        self.table[k] = [array.ctypes.data, *array.shape, *[0] * (3 - ndim)]

    def session(self, i: int):
        """Environment i's kernel session, its order count brought up to date."""
        s = self.sessions[i]
        s.n_orders = int(self.envs[i, _N_ORDERS])
        return s

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
    def actions(self, actions, n: int) -> np.ndarray:
        """Actions of `n` environments as `step` takes them, float64 `[n, instruments]`: box
        actions as given (the step refuses one outside [-1, 1], `refuse`, and scales them to
        targets), or the targets (units) of discrete ones. Raises ValueError for an action
        outside the action space (shape, dtype, choice)."""
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
            return a.astype(np.float64).reshape(n, k)
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu":
            raise ValueError(f"the action {a.tolist()} is not a whole-number choice of the action space {space}")
        a = a.reshape(n, k)
        if np.any((a < 0) | (a >= len(self.levels))):
            raise ValueError(f"the action {a.tolist()} is outside the action space {space} "
                             f"(choices 0..{len(self.levels) - 1} of targets {self.levels.tolist()})")
        return self.levels[a]

    def check(self, actions: np.ndarray) -> None:
        """Raise the ValueError `step` would raise for these actions (as `actions` returns
        them), without stepping: a vector checks them before its restarts draw their starts."""
        refused = self._refused if self._refused.overloads else _with_headroom(self._refused)
        if refused(actions, self.setup):
            self.refuse(actions)

    def refuse(self, actions: np.ndarray):
        """Raise the ValueError for box actions the step refused (NaN, infinite, or outside [-1, 1])."""
        if not np.isfinite(actions).all():
            raise ValueError(f"the action has NaN or infinite values: {actions.tolist()}")
        raise ValueError(f"the action {actions.tolist()} is outside the action space [-1, 1] "
                         f"(1.0 is a target of {self.scale[0].tolist()} units)")

    # ---- episodes -----------------------------------------------------------------------
    def start_range(self, i: int) -> tuple[int, int]:
        last = self.groups[i] - 1
        lo = min(self.warmup, last - 1)
        hi = max(lo, last - (self.episode_steps or 1))
        return lo, hi

    def start_of(self, i: int, rng: np.random.Generator, start: int | None) -> int:
        """The group environment i's next episode starts at: `start`, or a random one (or the
        first) of `start_range`. Raises ValueError for a `start` not in the data."""
        if start is None:
            lo, hi = self.start_range(i)
            return int(rng.integers(lo, hi + 1)) if self.random_start else lo
        if not (isinstance(start, (int, np.integer)) and 0 <= start <= self.groups[i] - 2):
            raise ValueError(f"start must be a step from 0 to {self.groups[i] - 2} (one step before the data "
                             f"ends), not {start!r}")
        return int(start)

    def step(self, actions: np.ndarray, restarts: np.ndarray) -> "_Outcome":
        """Environment i starts afresh at group restarts[i] when that is 0 or more (having
        fed the `warmup` groups before it, their intents NaN: the policy's own rules), else
        feeds its next group with the target of actions[i] (`actions`) on each instrument's
        next market event. Raises ValueError, having done nothing, for a box action outside
        [-1, 1] (of any environment)."""
        n, k = actions.shape
        out = _Outcome(np.empty((n, 4 * k + len(_FLOATS))), np.empty((n, len(_INTS) + len(self._reasons)), np.int64),
                       np.empty((n, len(_FLAGS)), bool), k)
        step = self._step if self._step.overloads else _with_headroom(self._step)
        full = step(self.table, actions, restarts, out.floats, out.ints, out.flags, 0)
        if full == _REFUSED:
            self.refuse(actions)
        while full >= 0:  # environment `full`'s order buffer filled: all grow, and it goes on
            self._grow_orders()
            full = self._step(self.table, actions, restarts, out.floats, out.ints, out.flags, full)
        return out

    def _grow_orders(self) -> None:
        n, rows, width = self.orders.shape
        grown = np.empty((n, rows * ORDER_GROWTH, width))
        grown[:, :rows] = self.orders
        self._hold("orders", grown)
        for i, s in enumerate(self.sessions):
            s.orders = grown[i]

    def reset(self, restarts: np.ndarray) -> "_Outcome":
        """`step` with every environment restarting (restarts[i] >= 0)."""
        out = self.step(np.zeros_like(self.targets), restarts)
        self._prev_drawdown[:] = out.column("drawdown")  # the warm-up's own rules may have traded
        return out

    def observe(self, fresh: np.ndarray | None = None) -> np.ndarray:
        return self.observer.update(self.features, *self._observed, fresh)

    # ---- what a step did ----------------------------------------------------------------
    def rewards(self, out: "_Outcome") -> np.ndarray:
        pnl = out.column("pnl")
        if self.reward == "equity":
            return pnl.copy()
        equity = out.column("equity")
        prev = equity - pnl
        if self.reward == "log":
            return reward_curve(equity, self.initial) - reward_curve(prev, self.initial)
        if self.reward == "drawdown":
            drawdown = out.column("drawdown")
            r = (pnl / np.maximum(prev, REWARD_FLOOR * self.initial)
                 - self.drawdown_penalty * np.maximum(0.0, drawdown - self._prev_drawdown))
            self._prev_drawdown[:] = drawdown
            return r
        return np.array([float(self.reward(self.info_of(out, i))) for i in range(len(pnl))])

    def info(self, out: "_Outcome", stepping: np.ndarray) -> dict:
        """What the step did per environment (`PolicyVectorEnv.step`'s info): arrays with the
        environments first, each key `k` with its mask `_k`, `stepping`."""
        k, f, z, b, m = out.k, out.floats, out.ints, out.flags, stepping
        e = 4 * k  # `_FLOATS` from here
        return {
            "target": f[:, :k], "_target": m, "approved": f[:, k: 2 * k], "_approved": m,
            "shield_delta": f[:, 2 * k: 3 * k], "_shield_delta": m, "overruled": b[:, 0], "_overruled": m,
            "reason_counts": z[:, len(_INTS):], "_reason_counts": m, "orders": z[:, 0], "_orders": m,
            "order_qty": f[:, 3 * k: e], "_order_qty": m, "fills": z[:, 1], "_fills": m, "fees": f[:, e], "_fees": m,
            "pnl": f[:, e + 1], "_pnl": m, "equity": f[:, e + 2], "_equity": m, "drawdown": f[:, e + 3],
            "_drawdown": m, "halted": b[:, 1], "_halted": m, "ts": z[:, 2], "_ts": m,
        }

    def info_of(self, out: "_Outcome", i: int) -> dict:
        """Environment i's step as the plain dict `PolicyEnv.step` returns (see its docstring)."""
        k, f = out.k, out.floats[i]
        fees, pnl, equity, drawdown = f[4 * k:].tolist()
        orders, fills, ts, *counts = out.ints[i].tolist()
        overruled, halted = out.flags[i, :2].tolist()
        return {
            "target": f[:k], "approved": f[k: 2 * k], "shield_delta": f[2 * k: 3 * k], "overruled": overruled,
            "reasons": {self._reasons[b]: c for b, c in enumerate(counts) if c},
            "orders": orders, "order_qty": f[3 * k: 4 * k], "fills": fills, "fees": fees, "pnl": pnl,
            "equity": equity, "drawdown": drawdown, "halted": halted, "ts": ts,
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
        self._stepping = np.full(1, -1, np.int64)  # `_Core.step`'s restarts: none

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
        return self._core.session(0)

    @property
    def events(self) -> Events:
        """The data's events with this episode's actions so far in the `intent` column (NaN:
        no action): the input that `policyc backtest` runs to the same orders."""
        return self._core.events[0]

    @property
    def reason_names(self) -> list[str]:
        return self._core._reasons

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        core = self._core
        start = core.start_of(0, self.np_random, (options or {}).get("start"))
        out = core.reset(np.full(1, start, np.int64))
        self._done = False
        obs = core.observe(np.ones(1, bool))[0]
        return obs, {"start": start, "ts": int(out.ints[0, _INTS.index("ts")])}

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode has ended (or never started): call reset() first")
        core = self._core
        out = core.step(core.actions(action, 1), self._stepping)
        obs = core.observe()[0]
        reward = float(core.rewards(out)[0])
        info = core.info_of(out, 0)
        terminated, truncated = (bool(out.flags[0, _FLAGS.index(f)]) for f in ("terminated", "truncated"))
        self._done = terminated or truncated
        core.session(0)  # its order count, for a caller holding `session`
        return obs, reward, terminated, truncated, info


class PolicyVectorEnv(VectorEnv):
    """`num_envs` environments stepped together on one compiled kernel: one call of its
    batched step resets and steps them all, then the observation, reward and info of all
    of them are single NumPy operations. Sub-environment i runs `policies[i]` on `data[i]`
    (the policies the same policy under different param values,
    `CompiledPolicy.with_params`, so they share the kernel); the options are `PolicyEnv`'s,
    for all of them.

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
        self._stepping = np.full(self.num_envs, -1, np.int64)  # `_Core.step`'s restarts: none

    @property
    def observation_names(self) -> list[str]:
        return self._core.observer.names

    @property
    def reason_names(self) -> list[str]:
        return self._core._reasons

    @property
    def sessions(self) -> list:
        """Each sub-environment's kernel session (`orders[:n_orders]`, `acct`, `pstate`): the
        steps that follow update their arrays but not `n_orders`, which is this call's."""
        return [self._core.session(i) for i in range(self.num_envs)]

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        """Reset every sub-environment; `seed` an int (sub-environment i gets seed + i) or one
        per sub-environment; `options={"start": step}` starts all at that step."""
        super().reset(seed=None)
        seeds = ([None] * self.num_envs if seed is None else [seed + i for i in range(self.num_envs)]
                 if isinstance(seed, (int, np.integer)) else list(seed))
        if len(seeds) != self.num_envs:
            raise ValueError(f"give one seed per sub-environment ({self.num_envs}), not {len(seeds)}")
        rngs = [np.random.default_rng(s) for s in seeds]
        start = (options or {}).get("start")
        starts = np.array([self._core.start_of(i, rngs[i], start) for i in range(self.num_envs)], np.int64)
        self._rngs = rngs
        self._core.reset(starts)
        self._ended = np.zeros(self.num_envs, bool)
        obs = self._core.observe(np.ones(self.num_envs, bool))
        return obs, {"start": starts}

    def step(self, actions):
        core = self._core
        if not hasattr(self, "_rngs"):
            raise RuntimeError("call reset() first")
        actions = core.actions(actions, self.num_envs)
        resetting = self._ended
        restarts = self._stepping
        any_resetting = np.count_nonzero(resetting) > 0
        if any_resetting:
            core.check(actions)  # before the restarts draw their starts
            restarts = restarts.copy()
            for i in np.flatnonzero(resetting).tolist():
                restarts[i] = core.start_of(i, self._rngs[i], None)
        out = core.step(actions, restarts)
        obs = core.observe(resetting)
        rewards = core.rewards(out)
        if any_resetting:
            rewards[resetting] = 0.0
        terminated, truncated, self._ended = out.flag("terminated"), out.flag("truncated"), out.flag("ended")
        return obs, rewards, terminated, truncated, core.info(out, ~resetting)


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
