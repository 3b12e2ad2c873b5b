"""The CPU accelerate config: `accelerate launch --config_file configs/cpu.yaml grpo.py` runs one process (and
with `--multi_gpu --num_processes 2`, two) without accelerate's "had defaults used instead" warning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
SHORT_RUN = [
    "--total-steps",
    "1",
    "--eval-every",
    "0",
    "--prompts-per-step",
    "2",
    "--group-size",
    "2",
    "--max-new-tokens",
    "8",
    "--grader-workers",
    "1",
]


@pytest.mark.parametrize("processes", [1, 2])
def test_cpu_config_launches_without_defaults_warnings(tmp_path, processes):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as a user's shell has it
    extra = ["--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())] if processes == 2 else []
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/cpu.yaml",
        *extra,
        "grpo.py",
        *SHORT_RUN,
        "--output-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "defaults used instead" not in proc.stderr and "accelerate config" not in proc.stderr, proc.stderr
    assert f"processes: {processes}" in proc.stdout
    (run_dir,) = tmp_path.iterdir()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]
