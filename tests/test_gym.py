"""policyc.gym: the environments pass gymnasium's checks; a run of actions through the
environment is `policyc backtest` of those actions as an `intent` column; under random
and adversarial actions no risk limit is ever exceeded and the info's shield statistics
add up to what the kernel did; the vector environment steps as its sub-environments do
alone; the built-in rewards stay finite, with the sign of the P&L, when equity goes
negative; bad actions, options, account overrides and `Events` give clear errors. The
agents are a few lines of NumPy."""
from __future__ import annotations

import csv
import json
import subprocess
from collections import Counter
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopback import ORCL_DATA, policyc_command
from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.compiler.semantics import NS_PER_DAY
from policyc.dsl.risk_keys import ACCOUNT_KEYS
from policyc.gym import REWARD_FLOOR, PolicyEnv, PolicyVectorEnv, make_vector, reward_curve
from policyc.runtime.backtest import run_backtest

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "examples" / "rl" / "guard.yaml"
NVDA_DATA = ROOT / "data" / "nvda-1999-2014.csv"


@pytest.fixture(scope="module")
def guard():
    return compile_policy(GUARD)


def momentum_agent(obs: np.ndarray) -> np.ndarray:
    """A tiny agent: long when the trend feature is up, short when down (obs[2] is ORCL.trend)."""
    return np.clip(np.array([obs[2] * 40.0], np.float32), -1.0, 1.0)


@pytest.mark.parametrize("options", [{}, {"window": 3, "reward": "log", "episode_steps": 50},
                                     {"action": "discrete", "levels": [-2000, 0, 2000], "reward": "drawdown"},
                                     {"features": ["trend", "vol"], "mode": "same", "shield": False}])
def test_check_env_passes(guard, options):
    env = PolicyEnv(guard, ORCL_DATA, **options)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs) and len(env.observation_names) == obs.shape[0]


def test_registered_with_gymnasium(guard):
    env = gymnasium.make("policyc/Policy-v0", policy=guard, data=ORCL_DATA, episode_steps=20)
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(momentum_agent(obs))
    assert truncated and not terminated


def _write_with_intents(path: Path, events, n: int) -> None:
    """The data file's first n events (close) with the environment's `intent` column."""
    intent = events.vals[:, 2]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Date", "Close", "intent"])
        for e in range(n):
            day = np.datetime64(int(events.ts[e]), "ns").astype("datetime64[D]")
            w.writerow([str(day), repr(float(events.vals[e, 1])), "" if np.isnan(intent[e]) else repr(float(intent[e]))])


def test_actions_through_the_env_are_the_backtest_of_them_as_an_intent_column(guard, tmp_path):
    env = PolicyEnv(guard, ORCL_DATA, random_start=False, reward="equity")
    obs, info = env.reset()
    start = info["start"]
    rng = np.random.default_rng(11)
    actions, infos = [], []
    done = False
    while not done:
        a = np.clip(momentum_agent(obs) + rng.normal(0, 0.3, 1).astype(np.float32), -1, 1)
        obs, reward, terminated, truncated, info = env.step(a)
        actions.append(float(a[0]))
        infos.append(info)
        assert reward == info["pnl"]
        done = terminated or truncated
    fed = start + 1 + len(actions)  # daily bars: one event per step
    # the intent column is exactly the actions, each on the event after the one observed
    expected = np.full(len(env.events), np.nan)
    expected[start + 1: fed] = np.array(actions, np.float32).astype(np.float64) * 2000.0
    np.testing.assert_array_equal(env.events.vals[:, 2], expected)

    data = tmp_path / "orcl_with_intents.csv"
    _write_with_intents(data, env.events, fed)
    orders_csv = tmp_path / "orders.csv"
    out = subprocess.run(policyc_command("backtest", GUARD, "--data", data, "--format", "json", "--orders", orders_csv),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    mine = env.session.orders[: env.session.n_orders]
    with open(orders_csv) as f:
        theirs = list(csv.DictReader(f))
    assert len(theirs) == len(mine) == sum(i["orders"] for i in infos) > 50
    for row, o in zip(theirs, mine):
        assert float(row["qty"]) == o[L.O_QTY]
        assert (row["fill_price"] == "") == (o[L.O_FILL_EVENT] < 0)
        if row["fill_price"]:
            assert float(row["fill_price"]) == o[L.O_FILL_PRICE] and float(row["fee"]) == o[L.O_FEE]
    assert summary["fills"] == sum(i["fills"] for i in infos) == int(env.session.acct[L.A_FILLS])
    assert summary["final_equity"] == infos[-1]["equity"]
    assert summary["reasons"] == env.session.reason_counts
    # and the equity after every step is the backtest's equity curve at that step's event
    curve = run_backtest(guard, env.events, progress=False).equity
    np.testing.assert_array_equal(curve[start + 1: fed], [i["equity"] for i in infos])


# ---- the shield ------------------------------------------------------------------------
LIMITS = {"max_position": 2000, "max_position_notional": 40000, "max_order_qty": 1000, "lot_size": 10,
          "max_orders_per_day": 4, "max_drawdown": 0.25}
SCALE = 5 * LIMITS["max_position"]  # action 1.0 asks for five times the position limit


@pytest.fixture(scope="module")
def shield_env(guard):
    assert {k: guard.checked.risk[k] for k in LIMITS} == LIMITS
    return PolicyEnv(guard, NVDA_DATA, max_target=SCALE, episode_steps=40, account={"fees_bps": 5})


def _actions():
    extreme = st.sampled_from([-1.0, 1.0, 0.0, 0.999, -0.999, 0.2001, -0.0001])
    random = st.floats(-1.0, 1.0, allow_nan=False, width=32)
    flips = st.integers(1, 40).map(lambda n: [(-1.0) ** k for k in range(n)])  # reverse every step
    return st.one_of(st.lists(random, min_size=1, max_size=40), st.lists(extreme, min_size=1, max_size=40), flips)


@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), actions=_actions())
def test_no_limit_is_exceeded_and_the_shield_statistics_add_up(shield_env, seed, actions):
    env = shield_env
    obs, _ = env.reset(seed=seed)
    s = env.session
    base_reasons, base_fills, base_fees = Counter(s.reason_counts), s.acct[L.A_FILLS], s.acct[L.A_FEES]
    infos = []
    for a in actions:
        before = s.n_orders
        obs, reward, terminated, truncated, info = env.step(np.array([a], np.float32))
        infos.append(info)
        assert env.observation_space.contains(obs)
        exposure = s.pstate[0, L.P_POS] + s.pstate[0, L.P_OPEN]
        assert abs(exposure) <= LIMITS["max_position"] and abs(s.pstate[0, L.P_POS]) <= LIMITS["max_position"]
        for o in s.orders[before: s.n_orders]:
            assert abs(o[L.O_QTY]) <= LIMITS["max_order_qty"] and o[L.O_QTY] % LIMITS["lot_size"] == 0
            if abs(o[L.O_TARGET]) > abs(o[L.O_TARGET] - o[L.O_QTY]):  # it increased exposure
                assert abs(o[L.O_TARGET]) * o[L.O_PRICE] <= LIMITS["max_position_notional"] + 1e-6
        # the info's shield statistics are what happened
        assert info["target"][0] == float(np.float32(a)) * SCALE
        assert info["approved"][0] == exposure
        assert info["shield_delta"][0] == info["approved"][0] - info["target"][0]
        assert info["overruled"] == (info["shield_delta"][0] != 0)
        assert info["orders"] == s.n_orders - before
        assert info["order_qty"][0] == pytest.approx(s.orders[before: s.n_orders, L.O_QTY].sum(), abs=1e-9)
        assert terminated == info["halted"] == bool(s.acct[L.A_HALTED])
        if not terminated:
            assert info["drawdown"] < LIMITS["max_drawdown"]
        if terminated or truncated:
            break
    reasons = Counter()
    for i in infos:
        reasons.update(i["reasons"])
    assert reasons == Counter(s.reason_counts) - base_reasons
    assert sum(i["fills"] for i in infos) == s.acct[L.A_FILLS] - base_fills
    assert sum(i["fees"] for i in infos) == pytest.approx(s.acct[L.A_FEES] - base_fees, rel=1e-12, abs=1e-9)
    assert sum(i["orders"] for i in infos) == s.n_orders  # a reset's warm-up, with no intent, orders nothing here
    # orders per UTC day, exits included
    days = Counter(int(env.events.ts[int(o[L.O_EVENT])]) // NS_PER_DAY for o in s.orders[: s.n_orders])
    assert max(days.values(), default=0) <= LIMITS["max_orders_per_day"]
    overruled = sum(i["overruled"] for i in infos)
    assert overruled == sum(1 for i in infos if i["approved"][0] != i["target"][0])


def test_unshielded_env_does_what_it_is_told(guard):
    env = PolicyEnv(guard, ORCL_DATA, shield=False, max_target=10_000, random_start=False)
    env.reset()
    for a in (1.0, -0.37, 0.5):
        _, _, _, _, info = env.step(np.array([a], np.float32))
        assert info["approved"][0] == info["target"][0] and not info["overruled"] and info["reasons"] == {}


# ---- vectors ---------------------------------------------------------------------------
def test_vector_env_steps_as_its_sub_environments_alone(guard):
    params = [{"units": 500}, {"units": 1000}, {"units": 2000}]
    vec = make_vector(guard, ORCL_DATA, params=params, episode_steps=30, reward="log", window=2)
    alone = [PolicyEnv(guard.with_params(**p), ORCL_DATA, episode_steps=30, reward="log", window=2) for p in params]
    obs, _ = vec.reset(seed=7)
    singles = [env.reset(seed=7 + i)[0] for i, env in enumerate(alone)]
    np.testing.assert_array_equal(obs, np.stack(singles))
    rng = np.random.default_rng(0)
    ended = np.zeros(3, bool)
    for step in range(70):  # through two autoresets
        actions = rng.uniform(-1, 1, (3, 1)).astype(np.float32)
        obs, rewards, terminated, truncated, info = vec.step(actions)
        for i, env in enumerate(alone):
            if ended[i]:  # next-step autoreset: this step reset it
                o = env.reset()[0]
                assert rewards[i] == 0.0 and not info["_pnl"][i]
            else:
                o, r, te, tr, inf = env.step(actions[i])
                assert (rewards[i], terminated[i], truncated[i]) == (r, te, tr)
                assert info["equity"][i] == inf["equity"] and info["orders"][i] == inf["orders"]
                assert dict(zip(vec.reason_names, info["reason_counts"][i])) | {} == \
                    {n: inf["reasons"].get(n, 0) for n in vec.reason_names}
            np.testing.assert_array_equal(obs[i], o)
        ended = terminated | truncated
    assert isinstance(vec, PolicyVectorEnv) and vec.observation_space.shape == (3, obs.shape[1])


def test_vector_env_over_instruments_data_files(guard):
    vec = make_vector(guard, [ORCL_DATA, NVDA_DATA], episode_steps=10)
    obs, info = vec.reset(seed=1)
    assert obs.shape == (2, len(vec.observation_names))
    obs, rewards, *_ = vec.step(np.ones((2, 1), np.float32))
    assert np.all(np.isfinite(rewards))


# ---- bad input -------------------------------------------------------------------------
def test_bad_actions_and_options_give_clear_errors(guard, tmp_path):
    env = PolicyEnv(guard, ORCL_DATA)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(1))
    env.reset(seed=0)
    for bad, message in [(np.zeros(2), "shape"), (np.array([np.nan]), "NaN"), (np.array([1.5]), "outside"),
                         ("up", "dtype"), (np.array([[0.1, 0.2]]), "shape")]:
        with pytest.raises(ValueError, match=message):
            env.step(bad)
    env.step(np.zeros(1))  # still usable after refusals
    discrete = PolicyEnv(guard, ORCL_DATA, action="discrete", levels=[0, 100])
    discrete.reset(seed=0)
    for bad in (2, -1, 0.5):
        with pytest.raises(ValueError, match="action"):
            discrete.step(bad)
    discrete.step(1)
    with pytest.raises(ValueError, match="did you mean `trend`"):
        PolicyEnv(guard, ORCL_DATA, features=["trnd"])
    with pytest.raises(TypeError, match="did you mean `window`"):
        PolicyEnv(guard, ORCL_DATA, windw=2)
    with pytest.raises(ValueError, match="reward must be"):
        PolicyEnv(guard, ORCL_DATA, reward="sharpe")
    with pytest.raises(ValueError, match="levels"):
        PolicyEnv(guard, ORCL_DATA, action="discrete")
    with pytest.raises(ValueError, match="start must be"):
        env.reset(options={"start": 10**6})
    plain = tmp_path / "plain.yaml"
    plain.write_text("policy: p\nversion: 1\ninstruments: [ORCL]\nsignals:\n  - when: close > 0\n    target: 1\n")
    with pytest.raises(ValueError, match="no `intent` input"):
        PolicyEnv(plain, ORCL_DATA)
    with pytest.raises(ValueError, match="not an instrument"):
        PolicyEnv(guard, {"ORCX": ORCL_DATA})


# ---- rewards --------------------------------------------------------------------------
@pytest.mark.parametrize("reward", ["log", "drawdown"])
def test_rewards_are_finite_with_the_sign_of_the_pnl_through_negative_equity(reward):
    env = PolicyEnv(GUARD, ORCL_DATA, shield=False, max_target=200_000, reward=reward, random_start=False)
    env.reset(options={"start": 1500})
    initial = env.policy.checked.account["initial_equity"]
    rewards, pnl, equity = [], [], []
    for k in range(600):  # +1 and -1 in blocks of 50: 200,000 units of ORCL on 100,000 of equity
        _, r, terminated, truncated, info = env.step(np.array([1.0 if (k // 50) % 2 == 0 else -1.0], np.float32))
        rewards.append(r), pnl.append(info["pnl"]), equity.append(info["equity"])
        assert not (terminated or truncated)
    rewards, pnl, equity = map(np.array, (rewards, pnl, equity))
    prev = equity - pnl
    assert (equity < 0).sum() > 100 and np.any((prev <= 0) & (pnl > 0)) and np.any((prev > 0) & (equity < 0))
    assert np.all(np.isfinite(rewards))
    np.testing.assert_array_equal(np.sign(rewards), np.sign(pnl))
    above = (prev >= REWARD_FLOOR * initial) & (equity >= REWARD_FLOOR * initial)
    assert above.sum() > 10
    if reward == "log":  # the log return wherever both equities are above the floor
        np.testing.assert_allclose(rewards[above], np.log(equity[above] / prev[above]), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(rewards, reward_curve(equity, initial) - reward_curve(prev, initial))
    else:  # simple return over max(previous equity, the floor), less the penalty on a rise in drawdown
        np.testing.assert_array_equal(rewards[pnl > 0], (pnl / np.maximum(prev, REWARD_FLOOR * initial))[pnl > 0])


def test_reward_curve_is_the_log_above_the_floor_and_its_tangent_below():
    x = np.array([-3.0, -0.5, 0.0, 0.005, 0.01, 0.5, 1.0, 2.0]) * 1000.0
    y = reward_curve(x, 1000.0)
    np.testing.assert_allclose(y[4:], np.log(x[4:] / 1000.0))
    np.testing.assert_allclose(y[:4], np.log(0.01) + (x[:4] / 1000.0 - 0.01) / 0.01)
    assert np.all(np.diff(y) > 0) and np.all(np.isfinite(y))


# ---- options and data ------------------------------------------------------------------
def test_account_overrides_are_checked_as_the_cli_checks_them(guard):
    for account, key in [({"fees_bps": -500}, "fees_bps"), ({"initial_equity": float("nan")}, "initial_equity"),
                         ({"slippage_bps": float("inf")}, "slippage_bps"), ({"initial_equity": 0}, "initial_equity"),
                         ({"initial_equity": -5}, "initial_equity"), ({"margin_rate": 0}, "margin_rate"),
                         ({"fees_bps": 10_001}, "fees_bps")]:
        with pytest.raises(ValueError, match=f"account `{key}` must be {ACCOUNT_KEYS[key].rule}, not"):
            PolicyEnv(guard, ORCL_DATA, account=account)
    with pytest.raises(ValueError, match="`fee_bps` is not an account setting; did you mean `fees_bps`"):
        PolicyEnv(guard, ORCL_DATA, account={"fee_bps": 2})
    for value in ("2", True, None):
        with pytest.raises(ValueError, match="account `fees_bps` must be"):
            PolicyEnv(guard, ORCL_DATA, account={"fees_bps": value})
    with pytest.raises(ValueError, match="account must be a dict"):
        PolicyEnv(guard, ORCL_DATA, account=[("fees_bps", 2)])
    env = PolicyEnv(guard, ORCL_DATA, account={"fees_bps": np.float64(0), "initial_equity": 5000, "slippage_bps": 0})
    _, info = env.reset(seed=0)
    assert env.session.acct[L.A_EQUITY] == 5000.0
    with pytest.raises(ValueError, match="drawdown_penalty must be"):
        PolicyEnv(guard, ORCL_DATA, reward="drawdown", drawdown_penalty=-1)


@pytest.mark.filterwarnings("ignore:.*render_mode.*:UserWarning")  # gymnasium's own, before the env refuses it
def test_render_mode_and_clip_are_checked_by_the_env(guard):
    env = gymnasium.make("policyc/Policy-v0", policy=guard, data=ORCL_DATA, render_mode=None)
    assert env.unwrapped.render_mode is None
    with pytest.raises(ValueError, match="render_mode 'human' is not supported.*supported render modes: none"):
        gymnasium.make("policyc/Policy-v0", policy=guard, data=ORCL_DATA, render_mode="human", disable_env_checker=True)
    with pytest.raises(ValueError, match="render_mode 'rgb_array' is not supported"):
        make_vector(guard, ORCL_DATA, 2, render_mode="rgb_array")
    for clip in (1e39, np.inf, 0, "5"):
        with pytest.raises(ValueError, match="clip must be a number above 0 and at most 3.40282e\\+38"):
            PolicyEnv(guard, ORCL_DATA, clip=clip)
    assert PolicyEnv(guard, ORCL_DATA, clip=3e38).observation_space.high[0] == np.float32(3e38)


def test_events_given_as_data_are_checked_as_files_are(guard):
    day = NS_PER_DAY
    good = Events.market(np.arange(5) * day, np.column_stack([np.full(5, 10.0), np.full(5, 10.0), np.zeros(5)]))
    env = PolicyEnv(guard, good, warmup=0, random_start=False)
    env.reset()
    assert np.isnan(env.events.vals[:, 2]).all()  # the intent column is the environment's

    def events(ts=None, close=None, inst=None) -> Events:
        e = Events.market(np.arange(5) * day, np.full((5, 3), 10.0))
        if ts is not None:
            e.ts[:] = ts
        if close is not None:
            e.vals[2, 1] = close
        if inst is not None:
            e.inst[3] = inst
        return e

    for data, message in [(events(ts=[0, 2 * day, day, 3 * day, 4 * day]), "event 2: timestamp .* is earlier"),
                          (events(close=0.0), "event 2: `close` is 0; prices must be positive and finite"),
                          (events(close=-1.0), "event 2: `close` is -1; prices must be positive"),
                          (events(close=np.nan), "event 2: `close` is nan; prices must be positive"),
                          (events(close=1e300), "event 2: `close` is 1e\\+300; values must be at most 1e\\+15"),
                          (events(inst=1), "event 3: instrument index 1 is not one of")]:
        with pytest.raises(ValueError, match=message):
            PolicyEnv(guard, data)
    PolicyEnv(guard, events(ts=[0, day, day, 2 * day, 3 * day]), warmup=0)  # equal timestamps are fine


def test_the_batched_steps_first_call_runs_with_stack_headroom(guard, monkeypatch):
    """The batched step and its check of actions compile (or load their machine code) on
    their first call, which runs under `jit.with_stack_headroom` as compile_policy does;
    later calls are the Numba functions themselves."""
    from numba import njit

    from policyc.compiler import jit

    env = PolicyEnv(guard, ORCL_DATA)
    env.reset(seed=1)
    core = env.unwrapped._core
    action = np.zeros((1, 1))
    core.check(action)
    assert core._step.overloads and core._refused.overloads
    ran = []
    real = jit.with_stack_headroom

    def spy(fn, *args):
        ran.append(fn.py_func.__name__)
        return real(fn, *args)

    monkeypatch.setattr(jit, "with_stack_headroom", spy)
    env.step(env.action_space.sample())
    core.check(action)
    assert ran == []  # compiled already: called as they are
    # the same functions as they are before a first call: Numba has neither compiled nor loaded them
    core._step, core._refused = (njit(cache=True)(f.py_func) for f in (core._step, core._refused))
    jit.seal_machine_code([core._step, core._refused])  # their machine code is in the cache, sealed
    env.step(env.action_space.sample())
    core.check(action)
    assert ran == ["step", "refused"] and core._step.overloads and core._refused.overloads
