"""Two processes (CPU, gloo, through `accelerate launch`): the KL reference is the policy's starting point on both,
and a checkpoint that fails on one process only, while written or while loaded, is handled by both together. The fault
is injected on process 1 by tests/rank_faults/sitecustomize.py (on PYTHONPATH); grpo.py has no test-only branch."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
TINY = ["--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "40", "--micro-batch-size", "8"]
TINY += ["--grader-workers", "1", "--eval-every", "0", "--log-completions-every", "0"]
RUN = [*TINY, "--kl-coef", "0.05", "--checkpoint-every", "1", "--keep-checkpoints", "5"]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/cpu.yaml", "--multi_gpu"]
LAUNCH += ["--num_processes", "2"]


def launch(args: list[str], fault: str = "", fault_log: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "RLVR_FAULT": fault}
    paths = [str(REPO / "tests" / "rank_faults"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if fault_log:
        env["RLVR_FAULT_LOG"] = str(fault_log)
    command = [*LAUNCH, "--main_process_port", str(free_port()), "grpo.py", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """2 steps with the KL term, a checkpoint after each."""
    out = tmp_path_factory.mktemp("runs")
    proc = launch([*RUN, "--total-steps", "2", "--output-dir", str(out), "--run-name", "kl"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "kl"


def test_kl_reference_equals_the_policy_until_its_first_update_on_both_processes(two_process_run):
    """train/kl_ref: the token mean over both processes of k3 = π_ref/π − log(π_ref/π) − 1 ≥ 0 from each micro-batch's
    forward of the update. Step 1 has one optimizer step, after every forward: the policy is still its starting point,
    so k3 is exactly 0 on every token of both processes only if both references hold the starting weights (a process
    with zero or partitioned weights would give k3 > 0). Step 2 follows an update: > 0, the reference stays put."""
    rows = metrics(two_process_run)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["train/kl_ref"] == 0.0
    assert rows[1]["train/kl_ref"] > 0.0


def test_a_checkpoint_failing_on_one_process_stops_both_at_once_with_one_error_line(tmp_path):
    fault_log = tmp_path / "fault_time"
    run_dir = tmp_path / "r"
    proc = launch([*RUN, "--total-steps", "2", "--output-dir", str(tmp_path), "--run-name", "r"], "1:save", fault_log)
    ended = time.time()
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ended - float(fault_log.read_text()) < 120, "the processes did not stop together (a hang lasts 30 min)"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # one line from each process, the same: both learnt of process 1's failure (without the agreement, process 0 went
    # on to the next collective and failed there with another message, or waited in it)
    assert len(errors) == 2 and errors[0] == errors[1], proc.stderr
    step = run_dir / "checkpoints" / "step_000001"
    assert errors[0].startswith(f"error: could not write checkpoint {step} (process 1: [Errno 28] No space left on")
    assert errors[0].endswith(f"the start: accelerate launch --multi_gpu --num_processes 2 grpo.py --resume {run_dir}")
    assert 'grpo.py", line' not in proc.stderr  # no traceback from the script (the launcher adds its own summary)
    assert not (run_dir / "checkpoints" / "step_000001.tmp").exists() and not step.exists()


def test_a_checkpoint_failing_to_load_on_one_process_is_passed_over_by_both_and_the_resume_matches(
    two_process_run, tmp_path
):
    run_dir = tmp_path / "kl"
    shutil.copytree(two_process_run, run_dir)
    proc = launch([*RUN, "--total-steps", "3", "--resume", str(run_dir)], "1:load")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    newest, previous = run_dir / "checkpoints" / "step_000002", run_dir / "checkpoints" / "step_000001"
    damaged = newest / "optimizer.bin"
    assert proc.stdout.count("could not be loaded") == 1, proc.stdout  # said once, by the main process
    expected = f"checkpoint {newest} could not be loaded (process 1: [Errno 5] Input/output error: '{damaged}')"
    assert f"{expected}; trying the previous one" in proc.stdout
    assert f"resumed from {previous} at step 1" in proc.stdout
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[:2] == metrics(two_process_run)  # both processes went back to step 1 together: nothing differs
