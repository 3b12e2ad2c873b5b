"""A fault on one process of a multi-process run, for tests/test_rank_faults.py (this folder goes on PYTHONPATH).

RLVR_FAULT="R:save": on process R (its RANK), creating the folder of a checkpoint being written (`step_N.tmp`, the
first thing accelerate's save_state does on every process) fails as on a full disk. RLVR_FAULT="R:load": on process R,
the first read of a checkpoint's optimizer state (`optimizer.bin`, which load_state reads on every process) fails as
a damaged disk does (not the RNG state file: accelerate's load_state passes over a failure to read that one).
When RLVR_FAULT_LOG names a file, the time of the fault is written there. Other processes, and every process without
RLVR_FAULT, are unchanged."""

import builtins
import errno
import os
import time

_rank, _, _when = os.environ.get("RLVR_FAULT", "").partition(":")


def _fault(code: int, path) -> OSError:
    if os.environ.get("RLVR_FAULT_LOG"):
        with _open(os.environ["RLVR_FAULT_LOG"], "w") as log:
            log.write(str(time.time()))
    return OSError(code, os.strerror(code), os.fspath(path))


if _rank and _rank == os.environ.get("RANK"):
    _makedirs, _open = os.makedirs, builtins.open
    _loads_failed = []

    def _failing_makedirs(name, *args, **kwargs):
        if _when == "save" and os.fspath(name).rstrip("/").endswith(".tmp"):
            raise _fault(errno.ENOSPC, name)
        return _makedirs(name, *args, **kwargs)

    def _failing_open(file, mode="r", *args, **kwargs):
        optimizer_state = isinstance(file, (str, os.PathLike)) and os.path.basename(file) == "optimizer.bin"
        if _when == "load" and optimizer_state and "r" in mode and not _loads_failed:
            _loads_failed.append(file)
            raise _fault(errno.EIO, file)
        return _open(file, mode, *args, **kwargs)

    os.makedirs = _failing_makedirs
    builtins.open = _failing_open
