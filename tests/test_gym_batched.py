"""policyc.gym's batched step: a `PolicyVectorEnv` is its sub-environments stepped one by
one as `PolicyEnv`s, bit for bit (observations, rewards, every info value, the sessions'
orders and state), over data files of different lengths, param values, several
instruments and autoresets; order buffers that fill grow without changing a run, which
stays the backtest of its actions; a policy with a calendar steps as its backtest; an
action refused on the step of an autoreset draws no start."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from loopback import ORCL_DATA
from policyc.compiler.build import Events, compile_policy
from policyc.gym import PolicyEnv, make_vector
from policyc.runtime.backtest import run_backtest
from test_sessions import INERT_LOSS, INERT_ORDERS, SESSION_FEATURES
from test_sessions import policy as sessions_policy

ROOT = ORCL_DATA.parent.parent
GUARD = ROOT / "examples" / "rl" / "guard.yaml"
NVDA_DATA = ROOT / "data" / "nvda-1999-2014.csv"
#: Two instruments whose data start four years apart: before 1999 a step has no NVDA event,
#: and NVDA's target waits on its first one.
PAIR = """
policy: pair_guard
version: 1
instruments: [ORCL, NVDA]
inputs: [intent]
params:
  units: 1000
features:
  ret1: close / close[1] - 1
  trend: close / ema(close, 10) - 1
signals: []
risk:
  max_position: units
  max_order_qty: 600
  lot_size: 10
  max_orders_per_day: 3
account:
  initial_equity: 100000
  fees_bps: 2
"""


@pytest.fixture(scope="module")
def guard():
    return compile_policy(GUARD)


def _actions(rng: np.random.Generator, shape) -> np.ndarray:
    """Random box actions with the extremes and zero among them."""
    a = rng.uniform(-1, 1, shape)
    extreme = rng.random(shape) < 0.3
    a[extreme] = rng.choice([-1.0, 0.0, 1.0], extreme.sum())
    return a.astype(np.float32)


def _step_together(vec, alone, seed: int, steps: int) -> None:
    """Step `vec` and the environments `alone` with the same actions, asserting that every
    output of sub-environment i is env i's, bit for bit (NaN equal to NaN)."""
    obs, info = vec.reset(seed=seed)
    for i, env in enumerate(alone):
        o, inf = env.reset(seed=seed + i)
        assert_array_equal(obs[i], o)
        assert info["start"][i] == inf["start"]
    rng = np.random.default_rng(seed)
    ended = np.zeros(vec.num_envs, bool)
    restarts = 0
    for _ in range(steps):
        actions = _actions(rng, vec.action_space.shape)
        obs, rewards, terminated, truncated, info = vec.step(actions)
        for i, env in enumerate(alone):
            if ended[i]:  # next-step autoreset: this step restarted it
                o = env.reset()[0]
                restarts += 1
                assert rewards[i] == 0.0 and not (terminated[i] or truncated[i])
                assert not any(info[key][i] for key in info if key.startswith("_"))
            else:
                o, r, te, tr, inf = env.step(actions[i])
                assert (rewards[i], terminated[i], truncated[i]) == (r, te, tr)
                assert all(info[key][i] for key in info if key.startswith("_"))
                for key, value in inf.items():
                    if key == "reasons":
                        assert {n: c for n, c in zip(vec.reason_names, info["reason_counts"][i]) if c} == value
                    else:
                        assert_array_equal(info[key][i], value, err_msg=key)
            assert_array_equal(obs[i], o)
        ended = terminated | truncated
    assert restarts >= vec.num_envs
    for s, env in zip(vec.sessions, alone):
        t = env.session
        assert s.n_orders == t.n_orders
        assert_array_equal(s.orders[: s.n_orders], t.orders[: t.n_orders])
        assert_array_equal(s.acct, t.acct)
        assert_array_equal(s.pstate, t.pstate)
        assert_array_equal(s.fs[:, : t.fs.shape[1]], t.fs)  # param values may size the feature state apart


def test_the_batched_step_is_each_environment_alone_bit_for_bit(guard):
    data = [ORCL_DATA, NVDA_DATA, ORCL_DATA, NVDA_DATA, ORCL_DATA]
    params = [{"units": 500}, {"units": 2000}, {"units": 1000}, {"units": 2000}, {"units": 300}]
    options = dict(episode_steps=25, window=2, reward="drawdown", account={"fees_bps": 3})
    vec = make_vector(guard, data, params=params, **options)
    alone = [PolicyEnv(guard.with_params(**p), d, **options) for p, d in zip(params, data)]
    _step_together(vec, alone, seed=5, steps=90)


def test_several_instruments_step_together_and_as_their_backtest(tmp_path):
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR)
    pair = compile_policy(path)
    data = {"ORCL": ORCL_DATA, "NVDA": NVDA_DATA}
    options = dict(episode_steps=30, reward="log", features=["trend"])
    vec = make_vector(pair, data, 4, **options)
    alone = [PolicyEnv(pair, data, **options) for _ in range(4)]
    _step_together(vec, alone, seed=11, steps=100)

    env = PolicyEnv(pair, data, random_start=False)
    env.reset(options={"start": 700})  # 1997: NVDA has no event until 1999, and its target waits
    rng = np.random.default_rng(2)
    infos = [env.step(a)[4] for a in _actions(rng, (900, 2))]
    ts = env.events.ts
    fed = int(np.searchsorted(ts, infos[-1]["ts"], side="right"))
    e = env.events
    run = run_backtest(pair, Events(e.ts[:fed], e.kind[:fed], e.inst[:fed], e.vals[:fed]), progress=False)
    last_event = np.searchsorted(ts, [i["ts"] for i in infos], side="right") - 1
    assert_array_equal(run.equity[last_event], [i["equity"] for i in infos])
    s = env.session
    assert s.n_orders == len(run.orders) == sum(i["orders"] for i in infos) > 100
    assert_array_equal(s.orders[: s.n_orders], run.orders)
    assert np.isfinite(e.vals[: 1100, 2]).sum() > 0 and np.isnan(e.vals[fed:, 2]).all()


def test_order_buffers_that_fill_grow_without_changing_a_run(guard):
    # sub-environment 1 orders on almost every step and fills its 1,024 first rows while
    # sub-environment 0, which holds still, has room: the step goes on from 1
    options = dict(random_start=False, max_target=20_000)
    vec = make_vector(guard, [ORCL_DATA, NVDA_DATA], shield=False, **options)
    alone = [PolicyEnv(guard, d, shield=False, **options) for d in (ORCL_DATA, NVDA_DATA)]
    vec.reset()
    starts = [env.reset()[1]["start"] for env in alone]
    flips = np.array([[0.0, 0.5 if k % 2 else -0.5] for k in range(1300)], np.float32)
    for a in flips:
        vec.step(a[:, None])
        for i, env in enumerate(alone):
            env.step(a[i: i + 1])
    sessions = vec.sessions
    assert sessions[0].n_orders < 10 and sessions[1].n_orders > 1100 and len(sessions[1].orders) > 1100
    for i, env in enumerate(alone):
        s, t = sessions[i], env.session
        assert_array_equal(s.orders[: s.n_orders], t.orders[: t.n_orders])
        e = env.events
        fed = starts[i] + 1 + len(flips)  # daily bars: one event a step
        run = run_backtest(env.policy, Events(e.ts[:fed], e.kind[:fed], e.inst[:fed], e.vals[:fed]),
                           progress=False)
        assert_array_equal(t.orders[: t.n_orders], run.orders)


def test_a_policy_with_a_calendar_steps_as_its_backtest(tmp_path):
    # tests/test_sessions.py's policy with a clock, whose features are the session
    # functions: its kernel (a calendar's name is not code), not one of this test's own
    path = tmp_path / "days_xnys.yaml"
    path.write_text(sessions_policy("calendar: XNYS", f"  max_daily_loss: {INERT_LOSS}\n"
                                    f"  max_orders_per_day: {INERT_ORDERS}", SESSION_FEATURES))
    policy = compile_policy(path)
    assert policy.clock is not None
    env = PolicyEnv(policy, ORCL_DATA, random_start=False, episode_steps=400)
    start = env.reset(options={"start": 3000})[1]["start"]
    rng = np.random.default_rng(4)
    infos = []
    for a in _actions(rng, (400, 1)):
        *_, terminated, truncated, info = env.step(a)
        infos.append(info)
        if terminated or truncated:
            break
    fed = start + 1 + len(infos)
    e = env.events
    run = run_backtest(policy, Events(e.ts[:fed], e.kind[:fed], e.inst[:fed], e.vals[:fed]), progress=False)
    assert_array_equal(run.equity[start + 1: fed], [i["equity"] for i in infos])
    assert_array_equal(env.session.orders[: env.session.n_orders], run.orders)
    assert len(run.orders) > 50


def test_an_action_refused_on_an_autoreset_step_draws_no_start(guard):
    twins = [make_vector(guard, ORCL_DATA, 3, episode_steps=2) for _ in range(2)]
    hold = np.zeros((3, 1), np.float32)
    for vec in twins:
        vec.reset(seed=3)
        for _ in range(2):
            *_, truncated, _ = vec.step(hold)
        assert truncated.all()  # the next step restarts all three, each at a start drawn from its generator
    for bad, message in [(np.full((3, 1), 1.5, np.float32), "outside the action space"),
                         (np.array([[0.0], [np.nan], [0.0]], np.float32), "NaN")]:
        with pytest.raises(ValueError, match=message):
            twins[0].step(bad)
    (obs0, *_, info0), (obs1, *_, info1) = (vec.step(hold) for vec in twins)
    assert_array_equal(obs0, obs1)
    assert_array_equal(info0["ts"], info1["ts"])


def test_an_episode_does_not_depend_on_the_episodes_before_it(tmp_path):
    # NVDA trades one day in seven, so an observation often reads its features at an event
    # before the episode's first: NaN (0 in the observation) for an environment that never
    # ran before, and so after any number of episodes
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR)
    pair = compile_policy(path)
    days = np.arange(200)
    ts = np.repeat(days, 2)[np.tile([True, False], 200) | (np.repeat(days, 2) % 7 == 0)] * 86_400 * 10**9
    inst = np.array([0 if k == 0 or ts[k] != ts[k - 1] else 1 for k in range(len(ts))], np.int32)
    price = 50.0 + np.cumsum(np.random.default_rng(9).normal(0, 0.5, len(ts)))
    events = Events.market(ts, np.column_stack([price, price, np.full(len(ts), np.nan)]), inst)
    options = dict(warmup=0, episode_steps=40)
    env = PolicyEnv(pair, events, **options)
    rng = np.random.default_rng(6)
    for episode in range(15):
        obs, info = env.reset(seed=episode)
        fresh = PolicyEnv(pair, events, **options)
        assert_array_equal(fresh.reset(options={"start": info["start"]})[0], obs)
        done = False
        while not done:
            a = _actions(rng, (2,))
            obs, reward, terminated, truncated, info = env.step(a)
            o, r, *_, inf = fresh.step(a)
            assert_array_equal(obs, o)
            assert reward == r and info["equity"] == inf["equity"] and info["orders"] == inf["orders"]
            done = terminated or truncated
        assert_array_equal(env.events.vals[:, 2], fresh.events.vals[:, 2])  # this episode's intents alone
        assert_array_equal(env.session.orders[: env.session.n_orders], fresh.session.orders[: fresh.session.n_orders])
