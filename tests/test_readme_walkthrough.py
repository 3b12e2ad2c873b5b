"""The README's first-hour walk-through, played top to bottom in a fresh copy of the repository, on tiny settings:
train -> evaluate -> plot -> continue. Every command is taken from the README itself, so the README stays true."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = [
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
    "--num-eval-problems",
    "8",
    "--eval-every",
    "2",
    "--checkpoint-every",
    "1",
]
TINY_EVAL = ["--n", "1", "--limit", "8", "--grader-workers", "1"]


def readme_commands() -> list[list[str]]:
    block = (REPO / "README.md").read_text().split("<!-- walkthrough -->")[1].split("<!-- /walkthrough -->")[0]
    lines = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("python ")]
    return [shlex.split(line) for line in lines]


def tiny(command: list[str]) -> list[str]:
    """The same command on tiny settings: fewer steps and problems (flags appended; --total-steps shrunk)."""
    script = command[1]
    if script == "grpo.py":
        command = [
            "--total-steps" if a == "--total-steps" else ("3" if prev == "--total-steps" else a)
            for prev, a in zip([""] + command, command)
        ]
        return command + TINY_TRAIN + ([] if "--total-steps" in command else ["--total-steps", "2"])
    return command + (TINY_EVAL if script == "eval_math.py" else [])


def test_readme_walkthrough_in_a_fresh_copy(tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    commands = readme_commands()
    assert [c[1] for c in commands] == ["grpo.py", "eval_math.py", "plot.py", "grpo.py"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    outputs = []
    for command in commands:
        argv = [sys.executable, *tiny(command)[1:]]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(command)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    run_dir = tmp_path / "runs" / "first"
    # the training run names its directory and the next commands, which are the README's
    assert "done: runs/first" in outputs[0] and "python eval_math.py --model runs/first" in outputs[0]
    assert re.search(r"continue: +python grpo.py .*--resume runs/first --total-steps N", outputs[0])
    assert list((tmp_path / "runs" / "plots").glob("plot_*.png"))
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == [1, 2, 3] and "resumed from" in outputs[3]
    assert (run_dir / "checkpoints" / "step_000003" / "hf" / "config.json").exists()


def test_the_printed_evaluate_command_evaluates_the_runs_own_eval_data(tmp_path, capsys):
    """A run on another task (here the study's `graded`) prints an evaluate command for that task, not eval_math's
    default `paths`; the command runs (--dry-run: data, prompts and golds, no sampling)."""
    sys.path.insert(0, str(REPO))
    import grpo

    run = tmp_path / "runs" / "g"
    shutil.copytree(REPO / "testbed" / "graded", run / "checkpoints" / "step_000001" / "hf")

    class MainProcess:
        is_main_process = True
        print = staticmethod(print)

    printed = {}
    for eval_data in ("paths", "graded"):
        grpo.print_next_commands(str(run), SimpleNamespace(eval_data=eval_data), MainProcess())
        printed[eval_data] = re.search(r"evaluate: +(.+)", capsys.readouterr().out).group(1)
    assert printed["paths"] == f"python eval_math.py --model {run}"  # eval_math's default task: nothing to add
    assert printed["graded"] == f"python eval_math.py --model {run} --benchmarks graded"
    argv = [sys.executable, *shlex.split(printed["graded"])[1:], "--dry-run"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "graded: 500 problems" in proc.stdout and "0 gold self-check failures" in proc.stdout
