"""Tests for plot.py: figures from synthetic metrics files, seed grouping with a band, clear errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, seed: int, steps: int = 12, args: dict | None = None, eval_every: int = 4) -> Path:
    run = root / name
    run.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, "entropy/mean": 0.3 * math.exp(-step / 8) + 0.01 * rng.random(),
                   "rollout/reward": 0.3 + 0.02 * step, "rollout/accuracy": 0.3 + 0.02 * step + 0.01 * rng.random(),
                   "rollout/response_length_mean": 30.0 + step, "entropy/flow_increase": 1e-3 * rng.random(),
                   "entropy/flow_decrease": 2e-3 * rng.random(), "entropy/flow_net": -1e-3 * rng.random(),
                   "time/step_s": 1.0}
            if step % eval_every == 0:
                row["eval/accuracy"] = 0.2 + 0.01 * step
            f.write(json.dumps(row) + "\n")
    if args is not None:
        (run / "args.json").write_text(json.dumps({"seed": seed, "run_name": None, "output_dir": str(root), **args}))
    return run


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_two_runs_default_panels(tmp_path, capsys):
    a = make_run(tmp_path, "arith__grpo__1__1700000000", 1, args={"exp_name": "grpo", "clip_high": 0.28})
    b = make_run(tmp_path, "arith__opefo__1__1700000001", 1, steps=8, args={"exp_name": "opefo", "clip_high": 0.28})
    out = tmp_path / "fig.png"
    plot.plot(plot.Args(runs=(str(a), str(b)), out=str(out), smooth=3))
    assert is_png(out)
    printed = capsys.readouterr().out
    assert "arith__grpo: " in printed and "arith__opefo: " in printed
    panels = plot.select_panels([plot.load_run(str(a))], ())
    assert [m for _, m in panels] == ["entropy/mean", "rollout/accuracy", "eval/accuracy", "rollout/response_length_mean",
                                      "entropy/flow_increase", "entropy/flow_decrease", "entropy/flow_net"]


def test_seeds_of_one_config_become_mean_and_band(tmp_path, capsys):
    cfg = {"exp_name": "grpo", "clip_high": 0.28}
    runs = [make_run(tmp_path, f"arith__grpo__{s}__{1700000000 + s}", s, args=cfg) for s in (1, 2, 3)]
    other = make_run(tmp_path, "arith__grpo__1__1700000009", 1, args={**cfg, "clip_high": 0.2})  # same name, other config
    loaded = [plot.load_run(str(r)) for r in [*runs, other]]
    groups = plot.group_runs(loaded)
    assert [len(g["runs"]) for g in groups] == [3, 1]
    assert groups[0]["label"] == "arith__grpo (clip_high=0.28) [3 seeds]" and groups[1]["label"] == "arith__grpo (clip_high=0.2)"
    steps, mean, low, high, dropped = plot.group_curve(groups[0], "entropy/mean", 1, "minmax")
    values = np.stack([r["metrics"]["entropy/mean"][1] for r in loaded[:3]])
    assert list(steps) == list(range(1, 13)) and dropped == 0
    assert np.allclose(mean, values.mean(0)) and np.allclose(low, values.min(0)) and np.allclose(high, values.max(0))
    _, mean_s, low_s, high_s, _ = plot.group_curve(groups[0], "entropy/mean", 1, "std")
    assert np.allclose(high_s - mean_s, values.std(0)) and np.allclose(mean_s - low_s, values.std(0))
    eval_steps, *_ = plot.group_curve(groups[0], "eval/accuracy", 1, "minmax")
    assert list(eval_steps) == [4, 8, 12]
    out = tmp_path / "band.png"
    plot.plot(plot.Args(runs=tuple(str(r) for r in runs), out=str(out), metric=("entropy/mean", "eval/accuracy")))
    assert is_png(out) and "[3 seeds]" in capsys.readouterr().out
    # without args.json the seed is read from the run name
    (runs[0] / "args.json").unlink()
    (runs[1] / "args.json").unlink()
    assert [len(g["runs"]) for g in plot.group_runs([plot.load_run(str(r)) for r in runs[:2]])] == [2]
    assert [len(g["runs"]) for g in plot.group_runs([plot.load_run(str(r)) for r in runs[:2]], group=False)] == [1, 1]


def test_moving_average_is_trailing():
    assert np.allclose(plot.moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])
    assert np.allclose(plot.moving_average(np.array([1.0, 2.0]), 1), [1.0, 2.0])


def test_clear_errors_for_missing_metrics_file_and_unknown_metric(tmp_path):
    good = make_run(tmp_path, "arith__grpo__1__1700000000", 1)
    empty = tmp_path / "no_metrics_run"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "plot.py", str(good), str(empty), "--out", str(tmp_path / "x.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and f"{empty}: no metrics.jsonl" in proc.stderr
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(plot.PlotError, match="nope/metric"):
        plot.plot(plot.Args(runs=(str(good),), out=str(tmp_path / "y.png"), metric=("nope/metric",)))
