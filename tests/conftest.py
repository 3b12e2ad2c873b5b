"""Shared test helpers.

The benchmark data directory: tests that read the real benchmark files find them through ``RLVR_DATA_DIR`` (a
local copy in the data dir's layout, see the README's "Getting the data"), and only there; without it they are
skipped with the reason below (``pytest -rs`` lists it). Use ``DATA_DIR`` with the ``needs_data`` mark, or
``data_dir()`` inside a test.

At the end of a test run, the fault-injection suite's counts (issue: hardening): faults injected, bad inputs
tried, runs resumed, and work lost (a resumed run whose metrics differ from the uninterrupted run's fails its test).

Also shared by the test files: ``REPO``; the training scripts (``SCRIPTS``: ``grpo.py`` and its forks ``FORKS``;
``PRESENT_SCRIPTS``, those in this checkout); the ``pool`` fixture (a started grading pool); and ``tmpfs``, a
small (read-only) tmpfs mounted for a test, which skips it where mounting is not allowed; and ``free_port()``, a port
for a several-process launch to meet on."""

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORKS = ("opefo.py", "steer.py", "clip_cov.py", "adaptive_clip.py")  # the algorithms forked from grpo.py
SCRIPTS = ("grpo.py", *FORKS)  # every training script
PRESENT_SCRIPTS = [s for s in SCRIPTS if (REPO / s).exists()]
DATA_DIR_ENV = "RLVR_DATA_DIR"


def free_port() -> int:
    """A free port for `accelerate launch --main_process_port`: never accelerate's default 29500. Tests run in
    parallel (pytest -n), and two launches on one port collide: the second fails with EADDRINUSE, and a rank of
    the first can wait forever for its peer (seen as a CI hang)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _benchmark_data_dir() -> tuple[Path | None, str]:
    """(the benchmark data directory, or None; the reason to skip when None)."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    if not value:
        return None, f"{DATA_DIR_ENV} is not set: the benchmark-file tests need a local copy of the data"
    path = Path(value).expanduser()
    if not path.is_dir():
        return (
            None,
            f"{DATA_DIR_ENV}={value} is not a directory: the benchmark-file tests need a local copy of the data",
        )
    return path, ""


DATA_DIR, DATA_SKIP_REASON = _benchmark_data_dir()
needs_data = pytest.mark.skipif(DATA_DIR is None, reason=DATA_SKIP_REASON)


def data_dir() -> Path:
    """The benchmark data directory (``$RLVR_DATA_DIR``); skips the calling test when there is none."""
    if DATA_DIR is None:
        pytest.skip(DATA_SKIP_REASON)
    return DATA_DIR


@pytest.fixture(scope="module")
def pool():
    """A started grading pool of 2 workers (so timings exclude start-up); stopped after the module."""
    from common import reward

    with reward._POOL_LOCK:
        reward._get_pool().wait_ready(2)
    yield reward._POOL
    reward.shutdown_workers()


@contextlib.contextmanager
def tmpfs(path: Path, options: str = "ro,size=64k", why: str = "a read-only tmpfs (root ignores file permissions)"):
    """A tmpfs mounted on ``path`` (created) with ``options`` for the ``with`` block, unmounted after; skips the
    test, naming ``why`` it needs one, where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip(f"needs permission to mount {why}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


FAULTS = ("test_faults.py", "test_grpo_nonfinite.py", "test_reward_cpu_limit.py", "timeout", "kill", "pathological")
BAD_INPUT = ("invalid", "user_errors", "refuse", "bad_", "bad-", "mistake", "error", "unknown", "damaged")
RESUMED = ("resume",)


def pytest_terminal_summary(terminalreporter):
    passed = [r.nodeid for r in terminalreporter.stats.get("passed", [])]
    failed = [r.nodeid for r in terminalreporter.stats.get("failed", [])]
    count = lambda ids, words: sum(any(w in i.lower() for w in words) for i in ids)  # noqa: E731
    if count(passed + failed, FAULTS + BAD_INPUT + RESUMED):
        terminalreporter.write_line(
            f"fault suite: {count(passed, FAULTS)} fault-injection tests passed, {count(passed, BAD_INPUT)} bad-input "
            f"tests passed, {count(passed, RESUMED)} resume tests passed; work lost: "
            f"{count(failed, RESUMED)} resumed runs differed from their uninterrupted runs"
        )
