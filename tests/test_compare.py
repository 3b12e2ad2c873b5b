"""benchmarks/compare.py: its statistics (t-test p-values, Holm, verdicts), the summary of a run, the report, and
`--tiny` end to end (4 runs, the runs file, the figure; a rerun skips the finished runs; other settings are refused)."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compare, testbed_study

REPO = Path(__file__).resolve().parents[1]


def with_t(t: float, n: int) -> list[float]:
    """n values whose one-sample t statistic is exactly t."""
    values = [float(i) for i in range(n)]
    mean, sd = statistics.mean(values), statistics.stdev(values)
    return [v - mean + t * sd / math.sqrt(n) for v in values]


def test_t_test_p_is_005_at_the_tables_quantiles():
    for df, t in enumerate(testbed_study.T975, start=1):  # the 0.975 quantiles the intervals use
        assert compare.t_test_p(with_t(t, df + 1)) == pytest.approx(0.05, abs=2e-4)
        assert compare.t_test_p(with_t(-t, df + 1)) == pytest.approx(0.05, abs=2e-4)
    assert compare.t_test_p(with_t(0.0, 5)) == pytest.approx(1.0)
    assert compare.t_test_p([0.3]) is None
    assert compare.t_test_p([0.0, 0.0, 0.0]) == 1.0 and compare.t_test_p([2.0, 2.0]) == 0.0
    assert compare.regularized_beta(2, 3, 0.4) == pytest.approx(0.5248)  # Σ_{j≥2} C(4, j) 0.4^j 0.6^(4−j)


def test_holm_and_verdicts():
    assert compare.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5, "e": None}) == pytest.approx(
        {"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5}
    )
    assert compare.verdict(+2.0, 0.01, +1, 8) == "resolved better"
    assert compare.verdict(+2.0, 0.01, -1, 8) == "resolved worse"  # a longer discovery step or step time is worse
    assert compare.verdict(-2.0, 0.2, +1, 8) == "not resolved at 8 seeds"
    assert compare.verdict(None, None, +1, 1) == "not resolved at 1 seed"


def write_run(run_dir: Path, careful: list[float], action=None, entropy=0.2):
    run_dir.mkdir(parents=True)
    rows = [{"step": 0, "eval/accuracy": 0.2}]
    for step, share in enumerate(careful, start=1):
        row = {"step": step, "entropy/mean": entropy, "entropy/forking_mean": 4 * entropy, "time/step_s": step}
        row["rollout/careful_frac"] = share
        if action is not None:
            row["algo/changed_frac"] = action[step - 1]
        rows.append(row)
    rows[-1]["eval/accuracy"] = 0.5
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_of_a_run(tmp_path):
    write_run(tmp_path / "a", [0.1, 0.4, 0.5, 0.7, 0.2, 0.9], action=[0.0, 0.1, 0.1, 0.0, 0.2, 0.2])
    s = compare.summarise(tmp_path / "a")
    assert s["discovery_step"] == 4  # the first step above 0.5 (0.5 itself is not)
    assert s["eval_final"] == 0.5 and s["steps"] == 6 and s["step_s"] == 3.5
    assert s["entropy_mean"] == pytest.approx(0.2) and s["forking_entropy"] == pytest.approx(0.8)
    assert s["action"] == {"algo/changed_frac": [pytest.approx(0.1), pytest.approx(4 / 6)]}
    write_run(tmp_path / "b", [0.1, 0.2, 0.3])
    assert (
        compare.summarise(tmp_path / "b")["discovery_step"] is None
        and compare.summarise(tmp_path / "b")["action"] == {}
    )


def test_report_pairs_by_seed_and_corrects_over_outcomes():
    def row(role, seed, eval_final, discovery, action=None):
        return {
            "role": role,
            "seed": seed,
            "steps": 20,
            "eval_final": eval_final,
            "entropy_mean": 0.2,
            "forking_entropy": 0.8,
            "step_s": 1.0 + 0.01 * seed,
            "discovery_step": discovery,
            "action": action or {},
        }

    base = [row("baseline", s, 0.5 + 0.01 * s, None) for s in range(1, 7)]
    arm = [
        row("arm", s, 0.6 + 0.01 * s + 0.001 * (s % 2), 10 + s, {"algo/changed_frac": [0.0, 0.0]}) for s in range(1, 7)
    ]
    text = compare.report(arm + base, "idea.py", "grpo.py")
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert (
        "+10.0 [" in lines["final eval accuracy (points)"]
        and "resolved better" in lines["final eval accuracy (points)"]
    )
    # never discovered by the baseline: step 21; the arm's 11 … 16: lower is better
    assert "resolved better" in lines["discovery step (careful share > 50%; graded: mean over families)"]
    assert "not resolved at 6 seeds" in lines["mean entropy over the run (nats/token)"]  # no difference
    assert "Holm: adjusted over the 5 outcomes" in text
    assert "0 of 6 baseline runs" in text and "6 of 6 arm runs" in text
    assert "NEVER ACTED" in text and "action size of grpo.py (baseline): none logged" in text
    baseline_zero = [
        {**r, "action": {"action/changed_frac": [0.0, 0.0]}} if r["role"] == "baseline" else r for r in arm + base
    ]
    baseline_line = next(
        line
        for line in compare.report(baseline_zero, "idea.py", "grpo.py").splitlines()
        if line.startswith("action size of grpo.py (baseline)")
    )
    assert "action/changed_frac 0 " in baseline_line and "NEVER ACTED" not in baseline_line  # GRPO's 0 is no warning
    off_testbed = [{k: v for k, v in r.items() if k != "discovery_step"} for r in arm + base]
    assert "over the 4 outcomes" in compare.report(off_testbed, "idea.py", "grpo.py")


def test_tiny_comparison_then_a_rerun_skips_finished_runs_and_other_settings_are_refused(tmp_path):
    command = [sys.executable, "benchmarks/compare.py", "grpo.py", "--baseline", "grpo.py", "--tiny"]
    command += ["--out", str(tmp_path), "--arm-flags", "--pos-weight 0.5", "--", "--sampling-noise", "keyed"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["role"], r["seed"]) for r in rows) == [("arm", 1), ("arm", 2), ("baseline", 1), ("baseline", 2)]
    assert all(r["steps"] == 3 and "discovery_step" in r for r in rows)
    arm_args = json.loads((tmp_path / "runs" / "arm__1" / "args.json").read_text())
    assert arm_args["pos_weight"] == 0.5 and arm_args["sampling_noise"] == "keyed" and arm_args["seed"] == 1
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0][2:] for line in table] == [what for _, what, *_ in compare.OUTCOMES]
    verdicts = ("resolved better", "resolved worse", "not resolved at 2 seeds")
    assert all(line.split(" | ")[-1].rstrip(" |") in verdicts for line in table)
    report = (tmp_path / "report.md").read_text()
    assert report in proc.stdout and (tmp_path / "compare.png").stat().st_size > 0
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "4 of 4 runs finished before" in again.stdout
    assert (tmp_path / "report.md").read_text() == report and report in again.stdout  # nothing ran again
    other = subprocess.run([*command, "--learning-rate", "1e-3"], cwd=REPO, capture_output=True, text=True)
    assert other.returncode != 0 and "other settings" in other.stderr


def test_a_baseline_run_of_another_comparison_is_reused_only_with_the_same_configuration(tmp_path):
    """--reuse-baseline: the other comparison's baseline run of the seed, with exactly this configuration, is linked
    and recorded here instead of rerun; another configuration is not taken (it waits, then says so)."""
    other = tmp_path / "other"
    (other / "runs" / "baseline__3").mkdir(parents=True)
    config = {"script": "grpo.py", "script_sha256": "abc", "flags": ["--x"]}
    rows = [
        {"role": "baseline", "seed": 3, "config": {**config, "flags": ["--y"]}, "run_dir": "baseline__3"},
        {"role": "baseline", "seed": 3, "config": config, "run_dir": "baseline__3", "eval_final": 0.5},
    ]
    (other / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mine"
    out.mkdir()
    plan = {"reuse": other, "baseline": {"config": config}}
    row = compare.reuse_baseline(3, plan, out, poll_s=0.01, wait_s=1)
    assert row["eval_final"] == 0.5 and row["reused_from"] == str(other)
    assert (out / "runs" / "baseline__3").resolve() == (other / "runs" / "baseline__3").resolve()
    assert json.loads((out / "runs.jsonl").read_text())["seed"] == 3
    plan["baseline"]["config"] = {**config, "flags": ["--z"]}
    with pytest.raises(RuntimeError, match="did not appear"):
        compare.reuse_baseline(3, plan, out, poll_s=0.01, wait_s=0.05)


def test_job_list_runs_the_seeds_from_first_seed_and_the_arm_first_when_the_baseline_is_reused():
    assert compare.job_list(1, 2, False) == [("arm", 1), ("baseline", 1), ("arm", 2), ("baseline", 2)]
    assert compare.job_list(101, 2, False) == [("arm", 101), ("baseline", 101), ("arm", 102), ("baseline", 102)]
    assert compare.job_list(5, 2, True) == [("arm", 5), ("arm", 6), ("baseline", 5), ("baseline", 6)]
