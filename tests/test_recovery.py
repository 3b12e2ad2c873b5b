"""The recovery path a user follows: the commands the scripts print continue the run unchanged, a finished run is
left alone, a run without a checkpoint restarts, one run is written by one process, TensorBoard holds each step once,
a run folder is a model (training and evaluation), and a broken model folder is one error line."""

import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tmpfs

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


def run(args, expect=0, script="grpo.py", cwd=REPO):
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_a_finished_run_is_left_alone_and_extending_it_deletes_nothing(tmp_path):
    """Case 1: the printed `continue:` command without `--total-steps N` on a finished run says so and changes
    nothing; `--total-steps N` extends it with the run's own schedule and never deletes a checkpoint it found."""
    run(
        [
            *TINY,
            "--total-steps",
            "2",
            "--lr-schedule",
            "cosine",
            "--learning-rate",
            "4e-4",
            "--checkpoint-every",
            "1",
            "--keep-checkpoints",
            "1",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "two",
        ]
    )
    two = tmp_path / "two"
    before = {p: p.stat().st_mtime_ns for p in two.rglob("*")}
    again = run(["--resume", str(two)])
    assert f"run {two} is finished (2 of 2 steps)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in two.rglob("*")} == before
    extended = run(["--resume", str(two), "--total-steps", "3"])
    assert "resumed from" in extended.stdout
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    rates = [r["train/learning_rate"] for r in metrics(two)]
    assert rates == pytest.approx([4e-4, 2e-4, 4e-4 * 0.5 * (1 + math.cos(math.pi * 2 / 3))])  # cosine, not constant


def test_interrupted_run_continued_with_its_printed_command_matches(tmp_path):
    """Case 1 as a user meets it: `--resume RUN` (what a stopped run prints) continues with the run's own arguments
    (length, schedule, cadence) and ends exactly as the uninterrupted run; TensorBoard holds each step once."""
    common = [
        *TINY,
        "--total-steps",
        "3",
        "--lr-schedule",
        "cosine",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
        "3",
        "--output-dir",
        str(tmp_path),
    ]
    run([*common, "--run-name", "full"])
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    cut = tmp_path / "cut"
    shutil.rmtree(cut / "checkpoints" / "step_000003")
    proc = run(["--resume", str(cut)])
    assert "resumed from" in proc.stdout and "step_000002" in proc.stdout
    assert metrics(cut) == metrics(tmp_path / "full")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(cut))
    events.Reload()
    assert [e.step for e in events.Scalars("rollout/reward")] == [1, 2, 3]


def test_run_without_a_checkpoint_restarts_with_the_printed_command(tmp_path):
    """Case 2: a run that failed before its first checkpoint is started again by `--resume RUN`."""
    run([*TINY, "--total-steps", "2", "--output-dir", str(tmp_path), "--run-name", "early"])
    early = tmp_path / "early"
    shutil.rmtree(early / "checkpoints")
    proc = run(["--resume", str(early)])
    assert f"no usable checkpoint in {early}: starting it again from step 0" in proc.stdout
    assert [r["step"] for r in metrics(early)] == [1, 2]


def test_second_process_on_one_run_is_refused(tmp_path):
    """Case 3: while a process holds the run, a `--resume` of it is refused in one line and writes nothing."""
    run([*TINY, "--total-steps", "1", "--output-dir", str(tmp_path), "--run-name", "busy"])
    busy = tmp_path / "busy"
    with open(busy / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run(["--resume", str(busy), "--total-steps", "2"], expect=2)
    assert proc.stderr.strip().splitlines() == [
        f"error: {busy} is in use by another process (running, or being resumed)"
    ]
    assert [r["step"] for r in metrics(busy)] == [1]


def test_training_from_a_run_folder_and_broken_model_folders(tmp_path):
    """Case 6: `--model runs/X` trains from the run's newest model, in every script; a folder without a tokenizer or
    with damaged weights is one error line (training and evaluation)."""
    run([*TINY, "--total-steps", "1", "--output-dir", str(tmp_path), "--run-name", "first"])
    first = tmp_path / "first"
    for script in ("grpo.py", "opefo.py"):
        proc = run(
            [
                *TINY,
                "--total-steps",
                "1",
                "--model",
                str(first),
                "--output-dir",
                str(tmp_path),
                "--run-name",
                f"second_{script}",
            ],
            script=script,
        )
        assert f"model: {first}/checkpoints/step_000001/hf" in proc.stdout
        assert "Loading weights" not in proc.stderr and "Writing model shards" not in proc.stderr
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(first / "checkpoints" / "step_000001" / "hf", no_tokenizer)
    for name in os.listdir(no_tokenizer):
        if name.startswith("tokenizer"):
            os.remove(no_tokenizer / name)
    damaged = tmp_path / "damaged"
    shutil.copytree(first / "checkpoints" / "step_000001" / "hf", damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for folder, what in ((no_tokenizer, "tokenizer"), (damaged, "model")):
        for script, extra in (
            ("grpo.py", [*TINY, "--output-dir", str(tmp_path / "x")]),
            ("eval_math.py", ["--limit", "2", "--output-dir", str(tmp_path / "ev")]),
        ):
            proc = run(["--model", str(folder), *extra], expect=2, script=script)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: --model {folder}: no loadable {what}"), proc.stderr
    assert not (tmp_path / "ev").exists()


def test_eval_of_a_run_uses_its_newest_model_and_names_it(tmp_path):
    """Case 4: `eval_math.py --model runs/X` evaluates the newest checkpoint and says which (step and path)."""
    run(
        [
            *TINY,
            "--total-steps",
            "2",
            "--checkpoint-every",
            "1",
            "--keep-checkpoints",
            "2",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "r",
        ]
    )
    proc = run(
        [
            "--model",
            str(tmp_path / "r"),
            "--limit",
            "2",
            "--n",
            "1",
            "--grader-workers",
            "1",
            "--output-dir",
            str(tmp_path / "ev"),
        ],
        script="eval_math.py",
    )
    assert f"model: {tmp_path / 'r'} -> {tmp_path / 'r'}/checkpoints/step_000002/hf" in proc.stdout
    settings = json.loads((tmp_path / "ev" / "results.json").read_text())["settings"]
    assert settings["model_path"].endswith("checkpoints/step_000002/hf")


def test_eval_with_an_unwritable_output_dir_fails_before_evaluating(tmp_path):
    """Case 5: checked before any model is loaded, not after hours of generation."""
    with tmpfs(tmp_path / "ro") as mount:
        proc = run(["--limit", "2", "--output-dir", str(mount / "out")], expect=2, script="eval_math.py")
    assert proc.stderr.strip().splitlines() == [
        f"error: --output-dir {mount / 'out'} is not writable ({mount} is read-only)"
    ]
    assert "responses in" not in proc.stdout


def test_no_learning_rate_scheduler_warning_and_default_model_from_anywhere(tmp_path):
    """Case 7: no `lr_scheduler.step()` warning; the default `--model testbed/model` works from another directory."""
    proc = run([*TINY, "--total-steps", "1", "--output-dir", str(tmp_path), "--run-name", "w"], cwd=tmp_path)
    assert "lr_scheduler.step()" not in proc.stderr and not re.search(
        r"Loading weights|Writing model shards", proc.stderr
    )


def test_resume_keeps_the_step_0_evaluation_and_a_damaged_newest_checkpoint_is_passed_over(tmp_path):
    """The eval curve keeps its starting point after a resume; a newest checkpoint whose trainer_state.json is cut
    short is passed over (no traceback); args.json is flat, the method's flags beside the shared ones."""
    run(
        [
            *TINY,
            "--total-steps",
            "2",
            "--eval-every",
            "2",
            "--num-eval-problems",
            "4",
            "--checkpoint-every",
            "1",
            "--keep-checkpoints",
            "3",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "ev",
        ]
    )
    ev = tmp_path / "ev"
    saved = json.loads((ev / "args.json").read_text())
    assert "algo" not in saved and saved["pos_weight"] == 1.0 and saved["script"] == "grpo.py"
    (ev / "checkpoints" / "step_000002" / "trainer_state.json").write_text('{"step": ')
    proc = run(["--resume", str(ev)])  # finished, but its last checkpoint is damaged: step 2 is taken again
    assert "step_000002 could not be loaded" in proc.stdout and "resumed from" in proc.stdout
    assert [r["step"] for r in metrics(ev)] == [0, 1, 2] and "eval/accuracy" in metrics(ev)[0]
    assert json.loads((ev / "checkpoints" / "step_000002" / "trainer_state.json").read_text())["step"] == 2
