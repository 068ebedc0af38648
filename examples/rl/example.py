"""Train an agent under the policy's limits, compare it with one trained without them, and
run the trained agent live through `policyc run` (docs/rl.md walks through it).

    .venv/bin/pip install -e '.[rl]'      # stable-baselines3 (and PyTorch)
    .venv/bin/python examples/rl/example.py [--steps 40000]

1. PPO on ORCL daily bars 1995-2009 in `PolicyEnv` with the shield on (examples/rl/guard.yaml),
   and the same PPO with the shield off (`shield=False`: no risk section at all).
2. Both agents on 2010-2014 under the shield: P&L, how often the limits overruled them,
   and the reason codes; the unshielded agent also unguarded, for what it would have done.
3. The shielded agent live: `replay-feed` (2014) and `paper-venue` on loopback, and
   `policyc run` with an intents and a control port; the agent reads the bars from the
   feed, its account from the status, and sends its targets through `policyc.client`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

try:
    import torch
    from stable_baselines3 import PPO
except ImportError:
    sys.exit("this example needs stable-baselines3: .venv/bin/pip install -e '.[rl]'")
from websockets.asyncio.client import connect

from policyc.client import AsyncClient
from policyc.compiler import layout as L
from policyc.compiler.build import Events, compile_policy
from policyc.gym import PolicyEnv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
POLICY, DATA = HERE / "guard.yaml", ROOT / "data" / "orcl-1995-2014.csv"
SPLIT = np.datetime64("2010-01-01", "ns").astype(np.int64)
LIVE_FROM = np.datetime64("2014-01-01", "ns").astype(np.int64)
#: Bars per second of the live replay: the agent reads the status once a bar, and the control
#: port takes at most 20 messages per second per credential.
LIVE_RATE = 15
HOST = "127.0.0.1"
#: Targets in whole lots (a fraction of a lot would be rounded by `lot_size`, and every
#: step would count as overruled); 1 year episodes; log returns as the reward.
LEVELS = [-2000, -1000, 0, 1000, 2000]
ENV_OPTIONS = dict(action="discrete", levels=LEVELS, reward="log", episode_steps=250)


def period(events: Events, first: bool) -> Events:
    keep = events.ts < SPLIT if first else events.ts >= SPLIT
    return Events(events.ts[keep], events.kind[keep], events.inst[keep], events.vals[keep])


def train(policy, events, shield: bool, steps: int, seed: int):
    env = PolicyEnv(policy, events, shield=shield, **ENV_OPTIONS)
    model = PPO("MlpPolicy", env, seed=seed, n_steps=1000, batch_size=250, learning_rate=3e-4, ent_coef=0.01,
                policy_kwargs={"net_arch": [32, 32]}, verbose=0)
    return model.learn(steps)


def evaluate(model, policy, events, shield: bool) -> dict:
    """The agent over the whole period, deterministic, from its first step."""
    env = PolicyEnv(policy, events, shield=shield, **{**ENV_OPTIONS, "random_start": False, "episode_steps": None})
    obs, _ = env.reset()
    initial = env.session.acct[L.A_EQUITY]
    steps = overruled = 0
    reasons = Counter()
    done = False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        overruled += info["overruled"]
        reasons.update(info["reasons"])
        done = terminated or truncated
    return {"pnl": info["equity"] - initial, "overruled": overruled, "steps": steps, "orders": env.session.n_orders,
            "fees": float(env.session.acct[L.A_FEES]), "halted": info["halted"], "reasons": dict(reasons)}


def write_recording(events: Events, path: Path) -> None:
    """The test period as a bar file for `replay-feed` (dates and closes; the feed sends bars)."""
    with open(path, "w") as f:
        f.write("Date,Close\n")
        for ts, close in zip(events.ts, events.vals[:, 1]):
            f.write(f"{np.datetime64(int(ts), 'ns').astype('datetime64[D]')},{float(close)!r}\n")


async def live_agent(model, env: PolicyEnv, ports: dict, tokens: dict) -> dict:
    """The agent against `policyc run`: for every bar of the feed, the policy's features (a
    mirror of the policy fed the same bars), the account from the status, the same
    observation as in training, and its target sent as an intent."""
    policy = env.policy
    mirror = policy.session(L.FILL_SAME)
    trace = np.full((1, L.TRACE_FIXED + len(policy.feature_names)), np.nan)
    chosen = [L.TRACE_FIXED + policy.feature_names.index(n) for n in env.observation_features]
    decisions = []
    async with AsyncClient(f"ws://{HOST}:{ports['intents']}", tokens["model"], control=f"ws://{HOST}:{ports['control']}",
                           control_token=tokens["operator"]) as client, \
            connect(f"ws://{HOST}:{ports['feed']}") as feed:
        fresh = np.ones(1, bool)
        async for frame in feed:  # until the feed ends its recording
            bar = orjson.loads(frame)
            price = bar["price"]
            vals = np.array([[price, price, np.nan]])
            mirror.feed(Events.market(np.array([bar["ts"]]), vals), None, trace)
            status = await client.status()
            pos = np.array([[status["positions"].get("ORCL", 0.0)]])
            open_qty = np.array([[status["open_orders"].get("ORCL", 0.0)]])
            equity = np.array([status["equity"]])
            peak = equity / (1.0 - status["drawdown"])
            obs = env.observer.update(trace[0, chosen][None, None, :], pos, open_qty, np.array([[price]]),
                                      equity, peak, fresh)[0]
            fresh = np.zeros(1, bool)
            action, _ = model.predict(obs, deterministic=True)
            decisions.append(await client.intent("ORCL", LEVELS[int(action)]))
        final = await client.status()
    return {"decisions": decisions, "status": final, "reconnects": client.reconnects}


def run_live(model, env: PolicyEnv, events: Events, work: Path) -> dict:
    recording = work / "orcl-2014.csv"
    write_recording(events, recording)
    ports = {name: _free_port() for name in ("feed", "venue", "intents", "control")}
    tokens = {"model": secrets.token_hex(16), "operator": secrets.token_hex(16)}
    for role, token in tokens.items():
        (work / role).write_text(token)
        (work / role).chmod(0o600)
    policyc = [str(Path(sys.executable).parent / "policyc")]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": open(work / "stderr.txt", "w")}  # shown if one fails
    procs = [
        subprocess.Popen(policyc + ["replay-feed", "--data", str(recording), "--listen", f"{HOST}:{ports['feed']}",
                                    "--rate", str(LIVE_RATE), "--clients", "3"], **quiet),
        subprocess.Popen(policyc + ["paper-venue", "--listen", f"{HOST}:{ports['venue']}", "--feed",
                                    f"ws://{HOST}:{ports['feed']}", "--fees-bps", "1"], **quiet),
        subprocess.Popen(policyc + ["run", str(POLICY), "--feed", f"ws://{HOST}:{ports['feed']}", "--venue",
                                    f"ws://{HOST}:{ports['venue']}", "--intents", f"{HOST}:{ports['intents']}",
                                    "--control", f"{HOST}:{ports['control']}", "--model-token-file",
                                    str(work / "model"), "--operator-token-file", str(work / "operator"),
                                    "--log", str(work / "decisions.jsonl")], **quiet)]
    try:
        for name in ("feed", "intents", "control"):
            if not _wait_port(ports[name]):
                raise SystemExit(f"nothing listens on the {name} port:\n" + (work / "stderr.txt").read_text()[-3000:])
        return asyncio.run(live_agent(model, env, ports, tokens))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_port(port: int) -> bool:
    import socket
    for _ in range(1200):
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000, help="training steps per agent")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a small network: threads cost more than they give, and two agents share 2 cores
    t0 = time.perf_counter()
    policy = compile_policy(POLICY)
    events = PolicyEnv(policy, DATA, random_start=False).events
    train_ev, test_ev = period(events, True), period(events, False)

    print(f"training two PPO agents, {args.steps:,} steps each, on 1995-2009 ...", flush=True)
    shielded = train(policy, train_ev, True, args.steps, args.seed)
    unguarded = train(policy, train_ev, False, args.steps, args.seed)
    print(f"  trained in {time.perf_counter() - t0:.0f} s")

    rows = [("trained shield on, run under the shield", evaluate(shielded, policy, test_ev, True)),
            ("trained shield off, run under the shield", evaluate(unguarded, policy, test_ev, True)),
            ("trained shield off, run unguarded", evaluate(unguarded, policy, test_ev, False))]
    print("\n2010-2014 (held out), from 100,000:")
    print(f"  {'agent':<42} {'P&L':>11} {'overruled':>14} {'orders':>7} {'fees':>8}  halted  reasons")
    for name, r in rows:
        share = f"{r['overruled']}/{r['steps']}"
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])[:3])
        print(f"  {name:<42} {r['pnl']:>11,.2f} {share:>14} {r['orders']:>7} {r['fees']:>8,.2f}  "
              f"{'yes' if r['halted'] else 'no':<6}  {reasons}")

    print(f"\nlive, 2014: the shield-on agent through policyc run (replay-feed + paper-venue, {LIVE_RATE} bars/s) ...",
          flush=True)
    live_ev = Events(*(x[test_ev.ts >= LIVE_FROM] for x in (test_ev.ts, test_ev.kind, test_ev.inst, test_ev.vals)))
    env = PolicyEnv(policy, live_ev, **ENV_OPTIONS)
    with tempfile.TemporaryDirectory() as work:
        live = run_live(shielded, env, live_ev, Path(work))
    decisions, status = live["decisions"], live["status"]
    overruled = sum(d.overruled for d in decisions)
    reasons = Counter(r for d in decisions for r in d.reasons)
    print(f"  {len(decisions)} decisions, overruled {overruled}, orders {status['orders']}, fills {status['fills']}, "
          f"P&L {status['equity'] - 100_000:,.2f}, reasons {dict(reasons.most_common(3))}")
    print(f"\nend to end in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
