"""The per-item time limit of the grading workers counts CPU time: an item that needs less CPU than the
limit is not lost when a competing load stretches its wall time beyond the limit (it is with the
wall-time clock, which this test also runs to show that the contention was real).

    pytest tests/test_reward_cpu_limit.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import reward
from common.reward import score, shutdown_workers

BUSY = "import time\nt = time.time() + 120\nwhile time.time() < t:\n    sum(i * i for i in range(1000))\n"
COMPETITORS = 5  # busy processes pinned to the worker's core: the worker gets at most 1/6 of it


def _slow(var: str) -> str:
    """A wrong answer that costs math-verify about a second of CPU against "1" (expanding a power);
    different letters so that no item profits from the sympy cache of another."""
    return f"\\boxed{{({var[0]}+{var[1]}+{var[2]})^{{40}}}}"


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or not Path("/proc/self/stat").exists(),
    reason="needs Linux CPU affinity and /proc",
)
def test_cpu_time_limit_survives_contention(monkeypatch):
    shutdown_workers()
    busy = []
    try:
        with reward._POOL_LOCK:
            reward._get_pool().wait_ready(1)
        core = min(os.sched_getaffinity(0))

        def pin_worker() -> int:
            with reward._POOL_LOCK:
                pool = reward._get_pool()
                pool.wait_ready(1)
                pid = pool.workers[0].proc.pid
            os.sched_setaffinity(pid, {core})
            return pid

        pid = pin_worker()
        costs = []
        for var in ("abc", "ghk"):  # the second is warm; items vary by tens of percent, so the larger of the two
            cpu0 = reward._proc_cpu_seconds(pid)
            assert score([_slow(var)], ["1"], num_workers=1, timeout_s=120) == [0.0]
            costs.append(reward._proc_cpu_seconds(pid) - cpu0)  # CPU seconds of one such item in this worker
        limit = 2.5 * max(costs)  # wall time at least 6x the cost under the competitors (more if the machine is busy)

        for _ in range(COMPETITORS):
            p = subprocess.Popen([sys.executable, "-c", BUSY])
            os.sched_setaffinity(p.pid, {core})
            busy.append(p)
        time.sleep(0.5)

        monkeypatch.setattr(reward, "TIME_LIMIT_CLOCK", "cpu")
        monkeypatch.setattr(reward, "WALL_BACKSTOP_FACTOR", 20.0)  # other tests' load must not reach the backstop
        t0 = time.perf_counter()
        got = score([_slow("pqr")], ["1"], num_workers=1, timeout_s=limit)
        wall = time.perf_counter() - t0
        assert wall > limit, f"the contention did not stretch the item ({wall:.2f}s for a {limit:.2f}s limit)"
        assert got == [0.0] and got.timeouts == 0 and got.crashes == 0
        assert reward._POOL.workers[0].proc.pid == pid  # the worker was not killed

        monkeypatch.setattr(reward, "TIME_LIMIT_CLOCK", "wall")
        got = score([_slow("uvw")], ["1"], num_workers=1, timeout_s=limit)
        assert got.timeouts == 1
    finally:
        for p in busy:
            p.kill()
            p.wait()
        shutdown_workers()
