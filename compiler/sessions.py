"""Trading days and sessions: the one definition that the kernel, the reference
interpreter and the data reader all use.

A policy with `calendar:` (an exchange calendar of the `exchange_calendars` package) or
`timezone:` (an IANA zone) has a `Clock`. `Clock.columns(ts)` gives, for each event
time (int64 ns since the epoch, UTC), one row of CLOCK_WIDTH int64 values:

- K_DAY: the event's trading day, as days since 1970-01-01 of the session's date (with a
  calendar) or of the local date (with a zone alone);
- K_OPEN, K_CLOSE: that day's session open and close, ns since the epoch UTC (with a
  zone alone: the local midnights that start and end the day);
- K_IN: 1 when the event is inside the session (open <= t < close, and not in the lunch
  break of a calendar that has one), else 0;
- K_OFFSET: the zone's offset from UTC at the event, in ns (local wall time = t + offset).

With a calendar, the trading day rolls at each session's open, or at the first instant
of the session's date in the exchange's zone when that comes first: an event belongs to
the session that contains it; between two sessions, to the next one from the first
instant of its date on (pre-market events, and a daily bar stamped at midnight of its
date), else to the one that closed before it (after-hours, weekends, holidays). The backtest computes the rows for a whole
batch at once (`Session.feed`), the interpreter one event at a time, through this same
function, so both see the same day for the same timestamp.

A policy with neither has no Clock: its day is the UTC day (`ts // NS_PER_DAY`) and the
kernel reads no clock rows.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import numpy as np

from policyc.dsl.cache import cache_root, write_atomic

from .semantics import NS_PER_DAY, NS_PER_MINUTE

K_DAY, K_OPEN, K_CLOSE, K_IN, K_OFFSET = range(5)
CLOCK_WIDTH = 5
NO_CLOCK = np.zeros((0, CLOCK_WIDTH), dtype=np.int64)  # what the kernel of a policy without a clock is given


_MARGIN_DAYS = 30  # a calendar's schedule is built this far either side of the events asked about
# Times from 1900 to 2200 (ns since the epoch UTC) have a clock; outside it, where zone rules
# and calendars mean little and a date's arithmetic could leave int64, an event's day is its
# UTC day and it is outside any session, so no timestamp up to the int64 limit raises.
CLOCK_FROM = -2_208_988_800 * 10**9    # 1900-01-01T00:00Z
CLOCK_UNTIL = 7_258_118_400 * 10**9    # 2200-01-01T00:00Z
_MIN, _MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
_FIRST_DAY, _LAST_DAY = _MIN // NS_PER_DAY, _MAX // NS_PER_DAY


@functools.lru_cache(maxsize=1)
def calendar_names() -> frozenset[str]:
    """The exchange calendars `exchange_calendars` knows (codes and aliases). Kept in the
    cache folder per version of the package, so that checking a policy's `calendar:`
    does not import it and pandas (about 0.3 s) in every process: `validate` stays fast."""
    from importlib import metadata

    try:
        version = metadata.version("exchange_calendars")
    except metadata.PackageNotFoundError:
        version = None
    path = cache_root() / f"calendars-{version}.json"
    if version is not None:
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            kept = None
        if isinstance(kept, list) and kept and all(isinstance(name, str) for name in kept):
            return frozenset(kept)  # anything else (a file cut short or edited) is built again
    import exchange_calendars

    names = sorted(exchange_calendars.get_calendar_names(include_aliases=True))
    if version is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(names))
        except OSError:  # a cache that cannot be written only costs the import next time
            pass
    return frozenset(names)


class ClockError(ValueError):
    """A timestamp the policy's calendar has no session for."""


@functools.lru_cache(maxsize=None)
def clock_of(spec: tuple[str | None, str | None] | None) -> "Clock | None":
    """The Clock of a program's (calendar, timezone), shared by every user of the same
    spec so a calendar's schedule is built once per process."""
    return None if spec is None else Clock(*spec)


def session_value(fn: str, t: int, row) -> float | bool:
    """The value of session function `fn` at event time `t` (ns, UTC) with clock row `row`."""
    if fn == "in_session":
        return bool(row[K_IN])
    if fn == "minutes_since_open":
        return float((t - int(row[K_OPEN])) // NS_PER_MINUTE)
    if fn == "minutes_to_close":
        return float((int(row[K_CLOSE]) - t) // NS_PER_MINUTE)
    raise AssertionError(fn)


@dataclass(frozen=True)
class Clock:
    """The policy's calendar and/or time zone (at least one of the two is set)."""

    calendar: str | None
    timezone: str | None
    _schedule: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @functools.cached_property
    def zone(self) -> str:
        """The zone of wall-clock time and of naive timestamps: `timezone`, else the calendar's."""
        return self.timezone if self.timezone is not None else self.exchange_zone

    @functools.cached_property
    def exchange_zone(self) -> str:
        """The calendar's own zone, in which its session dates are dates."""
        import exchange_calendars

        # the zone is a property of the calendar; a month of sessions builds in milliseconds,
        # where the default range (twenty years) takes far longer
        return str(exchange_calendars.get_calendar(self.calendar, start="2020-01-01", end="2020-02-01").tz)

    def columns(self, ts: np.ndarray) -> np.ndarray:
        """int64[len(ts), CLOCK_WIDTH]: the clock row of each event time (ns since the epoch UTC)."""
        ts = np.asarray(ts, dtype=np.int64)
        inside = (ts >= CLOCK_FROM) & (ts < CLOCK_UNTIL)
        if inside.all():
            return self._columns(ts)
        out = np.empty((len(ts), CLOCK_WIDTH), dtype=np.int64)
        day = ts // NS_PER_DAY
        out[:, K_DAY] = day
        # the UTC day's first and next day's first nanosecond, clamped to int64 at its two ends
        out[:, K_OPEN] = np.where(day > _FIRST_DAY, np.maximum(day, _FIRST_DAY + 1) * NS_PER_DAY, _MIN)
        out[:, K_CLOSE] = np.where(day < _LAST_DAY, (np.minimum(day, _LAST_DAY - 1) + 1) * NS_PER_DAY, _MAX)
        out[:, K_IN] = 0
        out[:, K_OFFSET] = 0
        out[inside] = self._columns(ts[inside])
        return out

    def _columns(self, ts: np.ndarray) -> np.ndarray:
        """`columns` of times from CLOCK_FROM to CLOCK_UNTIL."""
        out = np.empty((len(ts), CLOCK_WIDTH), dtype=np.int64)
        if len(ts) == 0:
            return out
        out[:, K_OFFSET] = utc_offsets(ts, self.zone)
        if self.calendar is None:
            local_day = (ts + out[:, K_OFFSET]) // NS_PER_DAY
            out[:, K_DAY] = local_day
            out[:, K_OPEN] = local_midnights(local_day, self.zone)
            out[:, K_CLOSE] = local_midnights(local_day + 1, self.zone)
            out[:, K_IN] = 1
            return out
        days, opens, closes, breaks, break_ends = self._sessions(int(ts.min()), int(ts.max()))
        k = np.searchsorted(opens, ts, side="right") - 1  # the last session that opened at or before
        # Between sessions, an event on the next session's date (or later) is that session's:
        # its pre-market, or a daily bar stamped at midnight. `_sessions` guarantees k + 1 exists.
        offsets = out[:, K_OFFSET] if self.timezone is None else utc_offsets(ts, self.exchange_zone)
        k += (ts >= closes[k]) & ((ts + offsets) // NS_PER_DAY >= days[k + 1])
        out[:, K_DAY] = days[k]
        out[:, K_OPEN] = opens[k]
        out[:, K_CLOSE] = closes[k]
        out[:, K_IN] = (opens[k] <= ts) & (ts < closes[k]) & ~((breaks[k] <= ts) & (ts < break_ends[k]))
        return out

    def _sessions(self, lo: int, hi: int):
        """The calendar's sessions as arrays (session date as days since the epoch; open,
        close, break start and end in ns UTC; no break: both MAX), built to cover [lo, hi]:
        a session opens at or before lo, and one opens after hi, so the last open at or
        before any time in [lo, hi] is in the arrays."""
        cached = self._schedule.get("arrays")
        if cached is not None and cached[1][0] <= lo and hi < cached[1][-1]:
            return cached
        import exchange_calendars
        import pandas as pd

        if cached is not None:  # grow the range already built, so a live run rebuilds rarely
            lo, hi = min(lo, int(cached[1][0])), max(hi, int(cached[1][-1]))
        start = pd.Timestamp(lo).normalize() - pd.Timedelta(days=_MARGIN_DAYS)
        end = pd.Timestamp(hi).normalize() + pd.Timedelta(days=_MARGIN_DAYS)
        try:
            cal = exchange_calendars.get_calendar(self.calendar, start=start.tz_localize(None),
                                                  end=end.tz_localize(None))
        except Exception as exc:  # the package's own errors for dates outside its bounds
            raise ClockError(f"calendar {self.calendar} has no sessions from {start.date()} to {end.date()}: "
                             f"{exc}") from exc
        sched = cal.schedule
        opens = _ns(sched["open"])
        if len(opens) == 0 or opens[0] > lo or opens[-1] <= hi:
            raise ClockError(f"calendar {self.calendar} has no session open at or before "
                             f"{pd.Timestamp(lo, tz='UTC')} or none after {pd.Timestamp(hi, tz='UTC')}")
        days = sched.index.values.astype("datetime64[D]").astype(np.int64)
        none = np.iinfo(np.int64).max
        breaks = np.where(sched["break_start"].isna(), none, _ns(sched["break_start"].fillna(sched["open"])))
        break_ends = np.where(sched["break_end"].isna(), none, _ns(sched["break_end"].fillna(sched["open"])))
        arrays = (days, opens, _ns(sched["close"]), breaks, break_ends)
        self._schedule["arrays"] = arrays
        return arrays


def _ns(series) -> np.ndarray:
    """A column of UTC datetimes as int64 ns since the epoch."""
    return series.dt.tz_convert("UTC").dt.tz_localize(None).values.astype("datetime64[ns]").astype(np.int64)


def utc_offsets(ts: np.ndarray, zone: str) -> np.ndarray:
    """int64 ns: the offset of `zone` from UTC at each time (ns since the epoch UTC)."""
    import pandas as pd

    utc = pd.DatetimeIndex(ts.astype("datetime64[ns]"), tz="UTC")
    local = utc.tz_convert(zone).tz_localize(None)
    return local.asi8 - ts


def local_midnights(days: np.ndarray, zone: str) -> np.ndarray:
    """int64 ns UTC: the first instant of each local date (days since the epoch) in `zone`.
    Where DST skips midnight the day starts at the first wall time that exists; where it
    repeats midnight, at the first of the two."""
    import pandas as pd

    wall = pd.DatetimeIndex((np.asarray(days, dtype=np.int64) * NS_PER_DAY).astype("datetime64[ns]"))
    return wall.tz_localize(zone, ambiguous=np.ones(len(wall), dtype=bool), nonexistent="shift_forward").asi8


def localize(wall_ns: np.ndarray, zone: str) -> np.ndarray:
    """int64 ns UTC of naive wall times (int64 ns as if UTC) read in `zone`. A wall time
    that DST repeats is read as its first occurrence; one that DST skips (which no clock
    in the zone showed) as the first instant after the gap."""
    import pandas as pd

    wall = pd.DatetimeIndex(np.asarray(wall_ns, dtype=np.int64).astype("datetime64[ns]"))
    return wall.tz_localize(zone, ambiguous=np.ones(len(wall), dtype=bool), nonexistent="shift_forward").asi8
