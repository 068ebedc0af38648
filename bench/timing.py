"""How the kernel sections time a job the same way: the generated kernel alone
(Session.feed over a pre-sized order buffer, one call) and `run_backtest` as `policyc
backtest` runs it (no equity curve). A job has `policy`, `events` and `n` (their number);
each timing returns seconds and keeps its result for the job's parity check."""
from __future__ import annotations

import time

now = time.perf_counter


class KernelTimings:
    def time_kernel(self) -> float:
        session = self.policy.session()
        session.reserve_orders(self.n)
        a = now()
        session.feed(self.events)
        dt = now() - a
        self.kernel_session = session
        return dt

    def time_backtest(self) -> float:
        from policyc.runtime.backtest import run_backtest

        a = now()
        self.backtest_result = run_backtest(self.policy, self.events, progress=False, record_equity=False)
        return now() - a
