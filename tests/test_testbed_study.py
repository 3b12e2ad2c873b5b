"""The testbed study: its statistics, its tiny configuration end to end (every method trains, is evaluated, is
checked to act and lands in the tables, the claims and the figures), and the study tables of docs/study.md, which
must be what `--report` generates from the committed runs file."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks import testbed_study

REPO = Path(__file__).resolve().parents[1]

RUNS_FILE = REPO / "docs" / "testbed_study_runs.jsonl"
STUDY_DOC = REPO / "docs" / "study.md"  # the study's write-up: its tables are the report of RUNS_FILE


def test_paired_difference_and_verdicts():
    base = [{"seed": s, "x": 0.0, "acted": None} for s in (1, 2, 3, 4, 5)]
    rows = [{"seed": s, "x": d, "acted": 1.0, "action": 0.1} for s, d in ((1, 1.0), (2, 2.0), (3, 3.0))]
    diff, half, n = testbed_study.paired(rows, base, "x")
    assert (diff, n) == (2.0, 3) and half == pytest.approx(4.303 / 3**0.5)  # sd 1, t(0.975, 2 df) = 4.303
    by_method = {"m": rows, "b": base}
    assert testbed_study.verdict(by_method, "m", "b", "x", +1)[0] == "unresolved"  # 2 ± 2.48 contains 0
    close = [dict(r, x=2 + (r["x"] - 2) / 10) for r in rows]  # 2 ± 0.25
    assert testbed_study.verdict({"m": close, "b": base}, "m", "b", "x", +1)[0] == "yes"
    assert testbed_study.verdict({"m": close, "b": base}, "m", 2.5, "x", -1)[0] == "yes"  # a constant: 2 ± 0.25 < 2.5
    assert (
        testbed_study.verdict({"m": [dict(r, x=r["x"] + 3) for r in rows], "b": base}, "m", "b", "x", -1)[0]
        == "no (the opposite)"
    )
    assert (
        testbed_study.verdict({"m": [dict(r, acted=0.0) for r in rows], "b": base}, "m", "b", "x", +1)[0]
        == "not compared (did not act)"
    )


def test_runs_file_rewritten_from_parallel_threads(tmp_path):
    """Runs finish in parallel threads, each rewriting runs.jsonl (CI once lost the race on a shared .tmp name)."""
    for i in range(20):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        (tmp_path / "runs" / str(i) / "row.json").write_text(json.dumps({"i": i}))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: testbed_study.write_runs_file(tmp_path), range(200)))
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 20


def test_study_tiny(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/testbed_study.py", "--tiny", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    chosen = testbed_study.study_rows(rows)
    assert all(len(chosen[m]) == 1 for m in testbed_study.METHODS)  # every method ran at its regime's chosen rate
    assert sum(r["phase"] == "sweep" for r in rows) == 2 * len(testbed_study.REGIMES)
    for r in rows:
        assert r["entropy_initial"] > 0 and 0 <= r["eval_avg"] <= r["eval_pass"] <= 1 and r["step_s"] > 0
        assert 0 <= r["careful_frac"] <= 1 and r["steps"] == 2
        assert r["acted"] is None if r["method"] == "grpo-strict" else r["acted"] > 0  # every mechanism acts here
    study = (tmp_path / "study.md").read_text()
    assert all(f"| {name} |" in study for name in testbed_study.METHODS)
    assert all(f"| {claim} |" in study for _, claim, *_ in testbed_study.CLAIMS)
    assert study.split("\n", 2)[2] == testbed_study.report(rows, 2)  # the tables are generated from the runs file
    for regime in testbed_study.REGIMES:
        assert (tmp_path / f"study_{regime}.png").stat().st_size > 10_000


def test_study_doc_tables_are_generated_from_the_committed_runs_file():
    rows = [json.loads(line) for line in RUNS_FILE.read_text().splitlines()]
    doc = STUDY_DOC.read_text().splitlines()
    generated = [line for line in testbed_study.report(rows, 4).splitlines() if line.startswith("|")]
    missing = [line for line in generated if line not in doc]
    assert not missing, f"docs/study.md lacks table lines generated from {RUNS_FILE.name}: {missing[:3]}"
    stale = [line for line in doc if line.startswith("|") and line not in generated]
    assert not stale, f"docs/study.md has table lines not generated from {RUNS_FILE.name}: {stale[:3]}"
