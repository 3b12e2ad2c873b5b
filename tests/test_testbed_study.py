"""The testbed study script runs end to end in its tiny configuration (every method, 1 seed, 2 steps), so it cannot
rot: every method trains, is evaluated, and lands in the table and the figure."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import testbed_study  # noqa: E402


def test_study_tiny(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/testbed_study.py", "--tiny", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "study.json").read_text())
    assert sorted(r["method"] for r in results) == sorted(testbed_study.METHODS)
    for r in results:
        assert r["entropy_initial"] > 0 and 0 <= r["avg"] <= 1 and r["step_s"] > 0
    table = (tmp_path / "study.md").read_text()
    assert all(f"| {name} |" in table for name in testbed_study.METHODS)
    assert (tmp_path / "study.png").stat().st_size > 10_000
