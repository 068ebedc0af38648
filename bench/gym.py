"""Environment steps per second of `policyc.gym`, each next to a bare environment measured
in the same run.

The bare environments do only the NumPy work every trading environment does per step:
read and check the action, move a position to the target at once, mark equity at the
next price, build the observation (`policyc.gym.Observer`, the same code the policy
environment uses, over features computed beforehand) and the reward. What the policy
environment adds is the compiled kernel (features, rules, every risk limit, fills, fees,
the kill switch) and its info. Target: a policy step costs at most 2x a bare step, for
one environment and for a vector of 64.

The vector of 64 is measured twice: `PolicyVectorEnv` (one batched step of the kernel for
all, and one batched observation) and gymnasium's `SyncVectorEnv` over 64 `PolicyEnv`s, to
show which is faster.

Time is the stepping thread's CPU time (`time.thread_time`): every environment steps on
one thread, so that is its cost, and the time other processes on a shared machine take
the core from it does not count. Each round times every environment once, in turn, so
drift (caches, clock speed) hits all of them alike; a rate is the median over the
rounds, and a ratio the median over the rounds of the two costs measured in the same
round.

`python bench/gym.py` prints the rows; `rows()` returns them as dicts
{"section", "target", "measured", "limit", "unit", "pass"}.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policyc.compiler import layout as L  # noqa: E402
from policyc.compiler.build import compile_policy  # noqa: E402
from policyc.gym import Observer, PolicyEnv, make_vector  # noqa: E402

POLICY = ROOT / "examples" / "rl" / "guard.yaml"
DATA = ROOT / "data" / "orcl-1995-2014.csv"
EPISODE = 250            # steps per episode (a trading year of daily bars)
SINGLE_STEPS = 10_000    # per round
VECTOR_ENVS = 64
VECTOR_STEPS = 753       # batched steps per round (three episodes): 48,192 environment steps
ROUNDS = 7
MAX_RATIO = 2.0
CLOCK = time.thread_time


class _Market:
    """The bare environments' data: the policy's feature values at every event (computed
    once by a backtest trace) and the prices, for one instrument."""

    def __init__(self, policy, events):
        run = policy.run(events, trace=True)
        self.features = np.nan_to_num(run.trace[:, L.TRACE_FIXED:])[:, None, :]  # [events, 1, features]
        self.prices = events.vals[:, 0].copy()
        self.initial = policy.checked.account["initial_equity"]
        self.scale = policy.checked.risk["max_position"]


class BareEnv(gymnasium.Env):
    """One instrument, the NumPy work of a step and nothing else."""

    def __init__(self, market: _Market):
        self.m = market
        self.observer = Observer(1, ["X"], [f"f{i}" for i in range(market.features.shape[2])], 1, 1e6,
                                 np.array([market.scale]), np.array([market.initial]), np.ones(1))
        self.observation_space = self.observer.space
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _observe(self):
        t = self.t
        return self.observer.update(self.m.features[t][None], self.pos, self.open, self.m.prices[t][None, None],
                                    self.equity, self.peak)[0]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(50, len(self.m.prices) - EPISODE - 1))
        self.end = self.t + EPISODE
        self.pos, self.open = np.zeros((1, 1)), np.zeros((1, 1))
        self.equity, self.peak = np.full(1, self.m.initial), np.full(1, self.m.initial)
        return self._observe(), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(1, 1)
        if not (np.abs(a) <= 1.0).all():
            raise ValueError("action outside [-1, 1]")
        before = self.equity.copy()
        self.t += 1
        p = self.m.prices
        self.equity += self.pos[:, 0] * (p[self.t] - p[self.t - 1])
        self.pos = a * self.m.scale
        np.maximum(self.peak, self.equity, out=self.peak)
        obs = self._observe()
        return obs, float((self.equity - before)[0]), False, self.t >= self.end, {}


class BareVectorEnv(VectorEnv):
    """`n` bare environments with one batched observation, as `PolicyVectorEnv` batches."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, market: _Market, n: int):
        self.m, self.num_envs = market, n
        self.observer = Observer(n, ["X"], [f"f{i}" for i in range(market.features.shape[2])], 1, 1e6,
                                 np.full(1, market.scale), np.full(n, market.initial), np.ones(n))
        self.single_observation_space = self.observer.space
        self.single_action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, n)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, n)

    def reset(self, *, seed=None, options=None):
        rng = np.random.default_rng(seed)
        self.t = rng.integers(50, len(self.m.prices) - EPISODE - 1, self.num_envs)
        self.end = self.t + EPISODE
        self.pos, self.open = np.zeros((self.num_envs, 1)), np.zeros((self.num_envs, 1))
        self.equity, self.peak = np.full(self.num_envs, self.m.initial), np.full(self.num_envs, self.m.initial)
        fresh = np.ones(self.num_envs, bool)
        return self.observer.update(self.m.features[self.t], self.pos, self.open, self.m.prices[self.t][:, None],
                                    self.equity, self.peak, fresh), {}

    def step(self, actions):
        a = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, 1)
        if not (np.abs(a) <= 1.0).all():
            raise ValueError("action outside [-1, 1]")
        before = self.equity.copy()
        done = self.t >= self.end
        self.t = np.where(done, self.end - EPISODE, self.t + 1)
        p = self.m.prices
        self.equity += np.where(done, 0.0, self.pos[:, 0] * (p[self.t] - p[self.t - 1]))
        self.pos = a * self.m.scale
        np.maximum(self.peak, self.equity, out=self.peak)
        obs = self.observer.update(self.m.features[self.t], self.pos, self.open, self.m.prices[self.t][:, None],
                                   self.equity, self.peak, done)
        return obs, self.equity - before, np.zeros(self.num_envs, bool), self.t >= self.end, {}


def _single_rate(env, actions) -> float:
    env.reset(seed=1)
    t0 = CLOCK()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return len(actions) / (CLOCK() - t0)


def _vector_rate(env, actions) -> float:
    env.reset(seed=1)
    t0 = CLOCK()
    for a in actions:
        env.step(a)
    return len(actions) * env.num_envs / (CLOCK() - t0)


def rows() -> list[dict]:
    policy = compile_policy(POLICY)
    market = _Market(policy, _intent_free_events(policy))
    rng = np.random.default_rng(0)
    single_actions = rng.uniform(-1, 1, (SINGLE_STEPS, 1)).astype(np.float32)
    vector_actions = rng.uniform(-1, 1, (VECTOR_STEPS, VECTOR_ENVS, 1)).astype(np.float32)

    env = PolicyEnv(policy, str(DATA), episode_steps=EPISODE)
    bare = BareEnv(market)
    native = make_vector(policy, str(DATA), VECTOR_ENVS, episode_steps=EPISODE)
    bare_vector = BareVectorEnv(market, VECTOR_ENVS)
    sync = SyncVectorEnv([lambda: PolicyEnv(policy, str(DATA), episode_steps=EPISODE)] * VECTOR_ENVS)
    _single_rate(env, single_actions[:1000])  # warm caches and code paths
    runs = {"bare": lambda: _single_rate(bare, single_actions), "env": lambda: _single_rate(env, single_actions),
            "bare64": lambda: _vector_rate(bare_vector, vector_actions),
            "native64": lambda: _vector_rate(native, vector_actions),
            "sync64": lambda: _vector_rate(sync, vector_actions[:VECTOR_STEPS // 5])}
    rates = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            rates[name].append(run())
    sync.close()
    rate = {name: statistics.median(r) for name, r in rates.items()}

    def row(section, target, measured, limit, unit, ok):
        return {"section": section, "target": target, "measured": round(measured, 3), "limit": limit,
                "unit": unit, "pass": bool(ok)}

    single_ratio = statistics.median(b / e for b, e in zip(rates["bare"], rates["env"]))
    vector_ratio = statistics.median(b / e for b, e in zip(rates["bare64"], rates["native64"]))
    return [
        row("gym: bare env, 1 env", "baseline", rate["bare"], None, "steps/s", True),
        row("gym: PolicyEnv, 1 env", f">= bare / {MAX_RATIO:g}", rate["env"], rate["bare"] / MAX_RATIO, "steps/s",
            single_ratio <= MAX_RATIO),
        row("gym: PolicyEnv step cost / bare step cost, 1 env", f"<= {MAX_RATIO:g}", single_ratio, MAX_RATIO, "x",
            single_ratio <= MAX_RATIO),
        row(f"gym: bare vector, {VECTOR_ENVS} envs", "baseline", rate["bare64"], None, "steps/s", True),
        row(f"gym: PolicyVectorEnv, {VECTOR_ENVS} envs", f">= bare / {MAX_RATIO:g}", rate["native64"],
            rate["bare64"] / MAX_RATIO, "steps/s", vector_ratio <= MAX_RATIO),
        row(f"gym: PolicyVectorEnv step cost / bare step cost, {VECTOR_ENVS} envs", f"<= {MAX_RATIO:g}",
            vector_ratio, MAX_RATIO, "x", vector_ratio <= MAX_RATIO),
        row(f"gym: SyncVectorEnv of {VECTOR_ENVS} PolicyEnv", "slower than PolicyVectorEnv", rate["sync64"],
            rate["native64"], "steps/s", rate["sync64"] < rate["native64"]),
    ]


def _intent_free_events(policy):
    """The data file's events with the policy's `intent` input NaN (no action), for the bare
    environments' features."""
    return PolicyEnv(policy, str(DATA), random_start=False).events


def main() -> int:
    result = rows()
    width = max(len(r["section"]) for r in result)
    for r in result:
        limit = "" if r["limit"] is None else f"limit {r['limit']:,.2f}"
        print(f"{r['section']:<{width}}  {r['measured']:>12,.2f} {r['unit']:<8} {r['target']:<28} {limit:<22} "
              f"{'ok' if r['pass'] else 'FAIL'}")
    return 0 if all(r["pass"] for r in result) else 1


if __name__ == "__main__":
    sys.exit(main())
