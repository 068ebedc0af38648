"""Seeded quotes of one symbol, BTC, on two venues, for the cross-venue arbitrage example.

    python examples/arbitrage/generate.py [--seed 7] [--hours 2] [--out examples/arbitrage]

writes `binance-BTCUSDT.csv` and `coinbase-BTC-USD.csv` into `--out`: one file per
venue, as `policyc backtest --data bn=PATH --data cb=PATH` and `policyc replay-feed`
take them, with the columns

    ts        quote time, ISO 8601 UTC to the millisecond (`2024-03-01T14:00:00.123Z`)
    price     the quote's mid, (bid + ask) / 2 (USD per BTC)
    bid, ask  best bid and ask, on each venue's tick (0.01 USD)
    bid_size, ask_size  BTC at the best bid and ask (lot 0.001 BTC)

The model, all of it drawn from `numpy.random.default_rng(seed)`, so one seed gives the
same bytes on every machine:

- a latent mid, a random walk of log price on a 10 ms grid, started at 60,000 USD with
  `VOL_BPS_PER_S` basis points of volatility per second;
- binance (the leader) quotes that mid; coinbase quotes it `LAG_MS` later, plus noise of
  its own (an Ornstein-Uhlenbeck process in log price) and the dislocations below;
- quote times are Poisson arrivals, `RATE_PER_S` a second on each venue (one quote per
  millisecond at most);
- spreads are lognormal in basis points of the mid, clipped to `SPREAD_BPS` per venue,
  and a whole number of ticks; sizes are lognormal with median 1 BTC, 0.001 BTC at least;
- dislocations start as Poisson arrivals (one every `DISLOCATION_EVERY_S` seconds on
  average, at least `DISLOCATION_GAP_S` apart): coinbase's mid jumps 10 to 40 bps away
  from the leader's, either way, stays there for 2 to 6 s, then reverts over 1 s.

`generate(seed, hours)` returns the two venues' columns and the dislocation schedule, for
tests that check the data's properties against what was drawn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

START_NS = 1_709_301_600_000_000_000   # 2024-03-01T14:00:00Z
GRID_MS = 10                           # resolution of the latent mid, milliseconds
P0 = 60_000.0                          # USD per BTC at the start
TICK = 0.01                            # both venues' price tick, USD
LOT = 0.001                            # size step, BTC
VOL_BPS_PER_S = 2.0                    # volatility of the latent mid, bps per sqrt(second)
LAG_MS = 350                           # how far coinbase's mid trails binance's
CB_NOISE_BPS = 0.5                     # stationary stdev of coinbase's own noise, bps
CB_NOISE_HALF_LIFE_S = 5.0             # how fast that noise mean-reverts
RATE_PER_S = {"binance": 5.0, "coinbase": 4.0}
SPREAD_BPS = {"binance": (0.5, 2.0), "coinbase": (1.0, 4.0)}   # clipped range, bps of the mid
DISLOCATION_EVERY_S = 240.0
DISLOCATION_GAP_S = 30.0
DISLOCATION_BPS = (10.0, 40.0)
DISLOCATION_HOLD_S = (2.0, 6.0)
DISLOCATION_REVERT_S = 1.0
FILES = {"binance": "binance-BTCUSDT.csv", "coinbase": "coinbase-BTC-USD.csv"}
HEADER = "ts,price,bid,ask,bid_size,ask_size\n"


def _ou(rng, n: int, dt_s: float, sd: float, half_life_s: float) -> np.ndarray:
    """An Ornstein-Uhlenbeck path of n steps of dt_s seconds, stationary stdev sd, started
    in its stationary law (an exact AR(1) discretisation)."""
    phi = 0.5 ** (dt_s / half_life_s)
    shocks = rng.standard_normal(n) * sd * np.sqrt(1 - phi * phi)
    shocks[0] = rng.standard_normal() * sd
    out = np.empty(n)
    x = 0.0
    for k in range(n):   # 720,000 steps for two hours: a second or so in plain Python
        x = phi * x + shocks[k]
        out[k] = x
    return out


def dislocations(rng, span_s: float) -> np.ndarray:
    """Rows (start s, offset bps signed, hold s) of coinbase's dislocations in [0, span_s):
    Poisson starts, at least DISLOCATION_GAP_S apart, each over before the span ends."""
    rows, t = [], 0.0
    while True:
        t += DISLOCATION_GAP_S + rng.exponential(DISLOCATION_EVERY_S - DISLOCATION_GAP_S)
        size = rng.uniform(*DISLOCATION_BPS) * rng.choice((-1.0, 1.0))
        hold = rng.uniform(*DISLOCATION_HOLD_S)
        if t + hold + DISLOCATION_REVERT_S >= span_s:
            return np.array(rows).reshape(-1, 3)
        rows.append((t, size, hold))


def _offset(schedule: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """Coinbase's dislocation in log price at times t_s (seconds from the start)."""
    out = np.zeros(len(t_s))
    for start, size, hold in schedule:
        into = t_s - start
        level = np.clip(1.0 - (into - hold) / DISLOCATION_REVERT_S, 0.0, 1.0)
        out += np.where(into >= 0, level, 0.0) * size * 1e-4
    return out


def _quote_times(rng, rate: float, span_ms: int) -> np.ndarray:
    """Poisson arrival times in whole ms in [0, span_ms), at most one per ms, increasing."""
    gaps = rng.exponential(1000.0 / rate, int(span_ms * rate / 1000 * 1.2) + 100)
    t = np.unique(np.floor(np.cumsum(gaps)).astype(np.int64))
    return t[t < span_ms]


def _quotes(rng, venue: str, t_ms: np.ndarray, mid: np.ndarray) -> dict:
    """bid and ask in ticks (int64) around `mid` (USD), sizes in lots (int64)."""
    lo, hi = SPREAD_BPS[venue]
    spread_bps = np.clip(np.exp(rng.normal(np.log(np.sqrt(lo * hi)), 0.35, len(t_ms))), lo, hi)
    mid_ticks = mid / TICK
    width = np.maximum(1, np.round(spread_bps * 1e-4 * mid_ticks)).astype(np.int64)
    # the quote straddles the mid: the bid half a spread below it, rounded to the tick
    bid = np.floor(mid_ticks - width / 2.0 + 0.5).astype(np.int64)
    ask = bid + width
    sizes = np.maximum(1, np.round(np.exp(rng.normal(0.0, 0.6, (2, len(t_ms)))) / LOT)).astype(np.int64)
    return {"t_ms": t_ms, "bid": bid, "ask": ask, "bid_size": sizes[0], "ask_size": sizes[1]}


def generate(seed: int = 7, hours: float = 2.0) -> tuple[dict, np.ndarray]:
    """({venue: columns}, dislocation schedule) for `hours` of quotes from `seed`. Each
    venue's columns: t_ms (ms from START_NS, int64, increasing), bid and ask (ticks,
    int64), bid_size and ask_size (lots, int64). The schedule: rows (start s, offset bps
    signed, hold s)."""
    rng = np.random.default_rng(seed)
    span_ms = int(hours * 3_600_000)
    n = span_ms // GRID_MS + 1
    step = VOL_BPS_PER_S * 1e-4 * np.sqrt(GRID_MS / 1000.0)
    log_mid = np.log(P0) + np.concatenate([[0.0], np.cumsum(rng.standard_normal(n - 1) * step)])
    noise = _ou(rng, n, GRID_MS / 1000.0, CB_NOISE_BPS * 1e-4, CB_NOISE_HALF_LIFE_S)
    schedule = dislocations(rng, span_ms / 1000.0)
    venues = {}
    for venue in ("binance", "coinbase"):
        t_ms = _quote_times(rng, RATE_PER_S[venue], span_ms)
        at = t_ms // GRID_MS
        if venue == "binance":
            mid = np.exp(log_mid[at])
        else:
            lagged = np.maximum(t_ms - LAG_MS, 0) // GRID_MS
            mid = np.exp(log_mid[lagged] + noise[at] + _offset(schedule, t_ms / 1000.0))
        venues[venue] = _quotes(rng, venue, t_ms, mid)
    return venues, schedule


def _money(ticks: np.ndarray) -> list[str]:
    """Ticks of 0.01 as exact decimal text (no binary float rounding)."""
    return [f"{t // 100}.{t % 100:02d}" for t in ticks.tolist()]


def _mid(bid: np.ndarray, ask: np.ndarray) -> list[str]:
    """(bid + ask) / 2 of tick counts as exact decimal text: a half tick is a third digit."""
    half = (bid + ask).tolist()   # in half ticks, 0.005 USD
    return [f"{h // 200}.{(h % 200) // 2:02d}" + ("5" if h % 2 else "") for h in half]


def _lots(lots: np.ndarray) -> list[str]:
    return [f"{v // 1000}.{v % 1000:03d}" for v in lots.tolist()]


def _stamps(t_ms: np.ndarray) -> list[str]:
    ms = (START_NS // 1_000_000 + t_ms).astype("datetime64[ms]")
    return [s + "Z" for s in np.datetime_as_string(ms, unit="ms").tolist()]


def csv_text(columns: dict) -> str:
    """One venue's columns (as `generate` gives them) as the text of its CSV file."""
    rows = zip(_stamps(columns["t_ms"]), _mid(columns["bid"], columns["ask"]), _money(columns["bid"]),
               _money(columns["ask"]), _lots(columns["bid_size"]), _lots(columns["ask_size"]))
    return HEADER + "".join(",".join(r) + "\n" for r in rows)


def write(out: Path, seed: int = 7, hours: float = 2.0) -> list[Path]:
    """Write both venues' files into `out` (created if missing); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    venues, _ = generate(seed, hours)
    paths = []
    for venue, name in FILES.items():
        path = out / name
        path.write_bytes(csv_text(venues[venue]).encode())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Seeded two-venue BTC quotes for the arbitrage example.")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7, the bundled data's)")
    parser.add_argument("--hours", type=float, default=2.0, help="hours of quotes (default 2)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="directory for the two CSV files (default: this script's)")
    args = parser.parse_args(argv)
    if not args.hours > 0:
        parser.error("--hours must be above 0")
    for path in write(args.out, args.seed, args.hours):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
