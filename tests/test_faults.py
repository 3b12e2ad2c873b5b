"""Faults a user meets, on every algorithm script present: a damaged latest checkpoint (resume falls back to the
newest intact one and still ends with the uninterrupted run's metrics), resuming with other arguments or another
script (refused), a full disk while checkpointing, and Ctrl-C (each a one-line message saying what to run next)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PRESENT_SCRIPTS, tmpfs

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
    "--max-new-tokens",
    "40",
    "--micro-batch-size",
    "8",
    "--grader-workers",
    "1",
    "--eval-every",
    "0",
    "--log-completions-every",
    "0",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run(script, args, expect=0, timeout=600):
    proc = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.parametrize("script", PRESENT_SCRIPTS[:1])  # the fallback is shared code
def test_damaged_latest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, script):
    common = [
        *TINY,
        "--total-steps",
        "3",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "5",
        "--output-dir",
        str(tmp_path),
    ]
    run(script, [*common, "--run-name", "full"])
    # a damaged step-2 checkpoint (a truncated model file) and a step-3 checkpoint cut short while being written
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    cut = tmp_path / "cut"
    shutil.move(cut / "checkpoints" / "step_000003", cut / "checkpoints" / "step_000003.tmp")
    step2 = cut / "checkpoints" / "step_000002"
    model_file = step2 / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    proc = run(script, [*common, "--resume", str(cut)])
    assert "step_000002 could not be loaded" in proc.stdout
    assert "resumed from" in proc.stdout and "step_000001" in proc.stdout.split("resumed from")[1].splitlines()[0]
    assert metrics(cut) == metrics(tmp_path / "full")


@pytest.mark.parametrize("script", PRESENT_SCRIPTS)
def test_resume_with_other_arguments_or_another_script_is_refused(tmp_path, script):
    run(script, [*TINY, "--total-steps", "1", "--output-dir", str(tmp_path), "--run-name", "r"])
    proc = run(
        script, [*TINY, "--total-steps", "2", "--learning-rate", "1e-3", "--resume", str(tmp_path / "r")], expect=2
    )
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --resume") and "--learning-rate 0.001" in proc.stderr
    other = next((s for s in PRESENT_SCRIPTS if s != script), None)
    if other:
        proc = run(other, [*TINY, "--total-steps", "2", "--resume", str(tmp_path / "r")], expect=2)
        assert f"written by {script}, not {other}" in proc.stderr


@pytest.mark.parametrize("script", PRESENT_SCRIPTS[:1])
def test_full_disk_while_checkpointing_says_what_happened_and_what_to_run(tmp_path, script):
    with tmpfs(tmp_path / "small", "size=600k", "a small tmpfs (a real full disk)") as mount:
        proc = run(
            script,
            [*TINY, "--total-steps", "2", "--checkpoint-every", "1", "--output-dir", str(mount), "--run-name", "full"],
            expect=1,
        )
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not write checkpoint") and "No space left on device" in line
    assert "--resume" in line and "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", PRESENT_SCRIPTS[:1])
def test_ctrl_c_names_the_run_and_how_to_continue(tmp_path, script):
    proc = subprocess.Popen(
        [
            sys.executable,
            script,
            *TINY,
            "--total-steps",
            "50",
            "--checkpoint-every",
            "1",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "int",
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not (tmp_path / "int" / "checkpoints" / "step_000002").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert f"interrupted: run {tmp_path / 'int'} stopped at step" in err and "continue with: python" in err
    assert f"--resume {tmp_path / 'int'}" in err


@pytest.mark.parametrize("script", PRESENT_SCRIPTS)
def test_kill_9_while_writing_a_checkpoint_then_resume_matches_the_uninterrupted_run(tmp_path, script):
    """SIGKILL the moment the step-3 checkpoint starts being written (its `.tmp` directory appears): the resumed run
    ignores the partial checkpoint, continues from step 2, and ends with the uninterrupted run's metrics."""
    common = [
        *TINY,
        "--total-steps",
        "4",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "5",
        "--output-dir",
        str(tmp_path),
    ]
    run(script, [*common, "--run-name", "full"])
    proc = subprocess.Popen(
        [sys.executable, script, *common, "--run-name", "killed"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = tmp_path / "killed" / "checkpoints" / "step_000003.tmp"
    deadline = time.time() + 300
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    assert partial.exists(), "the run was not caught while writing its checkpoint"
    resumed = run(script, [*common, "--resume", str(tmp_path / "killed")])
    assert "step_000002" in resumed.stdout.split("resumed from")[1].splitlines()[0]
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "full")


def test_read_only_output_directory_fails_at_start(tmp_path):
    with tmpfs(tmp_path / "ro") as mount:
        proc = run(PRESENT_SCRIPTS[0], [*TINY, "--output-dir", str(mount)], expect=2)
    assert proc.stderr.strip().splitlines()[-1] == f"error: --output-dir {mount} is not writable ({mount} is read-only)"
