"""benchmarks/gpu_check.py, the prepared first GPU hour, in its tiny CPU configuration (`--tiny`: 2 steps, small
batch, a ~1M-parameter random Qwen2, fp32): every training script runs end to end and is one row of the printed
table, without error; eval_math.py runs on the first run. Also the metrics summary on a partial file."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_tiny_configuration_runs_every_script(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--tiny", "--keep", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^\| \w+\.py \|", line)]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(gpu_check.SCRIPTS)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        script, model, steps, *_, compiled, error = cells
        assert model.startswith("qwen2-random-1m (1.0M params)") and steps == "2", row
        assert error == "none" and compiled == "no (eager)", row  # CPU: the kernel runs eager
        assert re.fullmatch(r"\d\.\d{3} → \d\.\d{3}", cells[7]), row  # entropy/mean first -> last
    assert "torch.cuda.is_available(): False" in proc.stdout
    assert re.search(r"eval_math\.py --model <grpo__qwen2-random-1m> .*: paths avg@1 [\d.]+", proc.stdout)
    assert "5/5 runs without error" in proc.stdout
    assert out.read_text().strip() == proc.stdout[proc.stdout.index("## GPU check") :].strip()
    assert (tmp_path / "work" / "runs" / "grpo__qwen2-random-1m" / "metrics.jsonl").is_file()


def test_summary_of_a_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": s, "time/step_s": t, "entropy/mean": e, "train/ppo_kl": k, "rollout/logp_diff_max": d}
        for s, t, e, k, d in [
            (1, 9.0, 1.5, 0.0, 1e-3),
            (2, 1.0, 1.4, -2e-3, 5e-3),
            (3, 2.0, 1.2, 1e-3, 2e-3),
            (4, 3.0, 1.1, 0.0, 1e-3),
        ]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "time/st')  # a partial last line
    summary = gpu_check.summarise(gpu_check.read_metrics(str(path)))
    assert summary == {
        "steps": 4,
        "step_s": 2.0,
        "first_step_s": 9.0,
        "entropy": (1.5, 1.1),
        "ppo_kl": 2e-3,
        "logp_diff_max": 5e-3,
    }
    assert gpu_check.summarise([])["steps"] == 0
