"""Tests for plot.py: figures from synthetic metrics files, grouping by arguments (seeds as mean and band,
process counts kept apart), labels, axis labels and title, the default output place, clear errors."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import plot

REPO = Path(__file__).resolve().parents[1]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path,
    name: str,
    seed: int,
    steps: int = 12,
    args: dict | None = None,
    eval_every: int = 4,
    processes: int | None = None,
) -> Path:
    """A run directory as grpo.py writes it; `processes` adds a checkpoint with one random-state file per process."""
    run = root / name
    run.mkdir(parents=True)
    if processes:
        ckpt = run / "checkpoints" / "step_000012"
        ckpt.mkdir(parents=True)
        for rank in range(processes):
            (ckpt / f"random_states_{rank}.pkl").write_bytes(b"x")
    rng = np.random.default_rng(seed)
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            row = {
                "step": step,
                "entropy/mean": 0.3 * math.exp(-step / 8) + 0.01 * rng.random(),
                "rollout/reward": 0.3 + 0.02 * step,
                "rollout/accuracy": 0.3 + 0.02 * step + 0.01 * rng.random(),
                "rollout/response_length_mean": 30.0 + step,
                "entropy/flow_increase": 1e-3 * rng.random(),
                "entropy/flow_decrease": 2e-3 * rng.random(),
                "entropy/flow_net": -1e-3 * rng.random(),
                "time/step_s": 1.0,
            }
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
    assert f"grpo [seed 1]: {a}" in printed and f"opefo [seed 1]: {b}" in printed  # named by their exp_name
    panels = plot.select_panels([plot.load_run(str(a))], ())
    assert [m for _, m in panels] == [
        "entropy/mean",
        "rollout/accuracy",
        "eval/accuracy",
        "rollout/response_length_mean",
        "entropy/flow_increase",
        "entropy/flow_decrease",
        "entropy/flow_net",
    ]


def test_seeds_of_one_config_become_mean_and_band(tmp_path, capsys):
    cfg = {"exp_name": "grpo", "clip_high": 0.28}
    runs = [make_run(tmp_path, f"arith__grpo__{s}__{1700000000 + s}", s, args=cfg) for s in (1, 2, 3)]
    other = make_run(
        tmp_path, "arith__grpo__1__1700000009", 1, args={**cfg, "clip_high": 0.2}
    )  # same name, other config
    loaded = [plot.load_run(str(r)) for r in [*runs, other]]
    groups = plot.group_runs(loaded)
    assert [len(g["runs"]) for g in groups] == [3, 1]
    assert groups[0]["label"] == "clip_high=0.28 [3 seeds]" and groups[1]["label"] == "clip_high=0.2 [seed 1]"
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
    proc = subprocess.run(
        [sys.executable, "plot.py", str(good), str(empty), "--out", str(tmp_path / "x.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and f"{empty}: no metrics.jsonl" in proc.stderr
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(plot.PlotError, match="nope/metric"):
        plot.plot(plot.Args(runs=(str(good),), out=str(tmp_path / "y.png"), metric=("nope/metric",)))


ARGS = {
    "exp_name": "grpo",
    "train_data": "arith",
    "model": "/home/u/rlvr/testbed/model",
    "clip_high": 0.28,
    "learning_rate": 2e-4,
    "track": False,
    "wandb_project_name": "rlvr-entropy",
    "resume": None,
}


def test_one_and_two_process_runs_of_one_seed_are_not_averaged(tmp_path, capsys):
    # the process count as grpo.py records it: one random-state file per process in each checkpoint
    one = make_run(tmp_path, "arith__grpo__1__1700000000", 1, args=ARGS, processes=1)
    two = make_run(tmp_path, "arith__grpo__1__1700000100", 1, args=ARGS, processes=2)
    groups = plot.group_runs([plot.load_run(str(one)), plot.load_run(str(two))])
    assert [g["label"] for g in groups] == ["processes=1 [seed 1]", "processes=2 [seed 1]"]
    # recorded in args.json instead
    a = make_run(tmp_path / "b", "r1", 1, args={**ARGS, "num_processes": 1})
    b = make_run(tmp_path / "b", "r2", 1, args={**ARGS, "num_processes": 2})
    assert [g["label"] for g in plot.group_runs([plot.load_run(str(a)), plot.load_run(str(b))])] == [
        "processes=1 [seed 1]",
        "processes=2 [seed 1]",
    ]
    # not recorded anywhere: still two curves (never "[2 seeds]"), each named after its run, and a note
    c = make_run(tmp_path / "c", "arith__grpo__1__1700000000", 1, args=ARGS)
    d = make_run(tmp_path / "c", "arith__grpo__1__1700000100", 1, args=ARGS)
    capsys.readouterr()
    groups = plot.group_runs([plot.load_run(str(c)), plot.load_run(str(d))])
    assert [g["label"] for g in groups] == [
        "arith__grpo (run arith__grpo__1__1700000000) [seed 1]",
        "arith__grpo (run arith__grpo__1__1700000100) [seed 1]",
    ]
    assert "same arguments and seed, so drawn separately, not averaged as seeds" in capsys.readouterr().out
    # a third run with another seed joins the first group as its second seed
    e = make_run(tmp_path / "c", "arith__grpo__2__1700000200", 2, args=ARGS)
    groups = plot.group_runs([plot.load_run(str(r)) for r in (c, d, e)])
    assert [len(g["runs"]) for g in groups] == [2, 1] and groups[0]["label"].endswith("[2 seeds]")


def test_many_methods_never_share_a_colour_and_style(tmp_path):
    runs = [plot.load_run(str(make_run(tmp_path, f"m{i}__1", 1, args={"exp_name": f"method-{i}"}))) for i in range(23)]
    fig, groups = plot.make_figure(plot.Args(runs=(), metric=("entropy/mean",)), runs)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 23 and [g["label"] for g in groups] == [f"method-{i} [seed 1]" for i in range(23)]
    assert len({(tuple(line.get_color()), line.get_linestyle()) for line in lines}) == 23


def test_groups_by_arguments_and_labels_by_what_differs(tmp_path):
    runs = [
        make_run(tmp_path, "mine_a", 1, args={**ARGS, "run_name": "mine_a"}),  # custom names, same arguments
        make_run(tmp_path, "mine_b", 2, args={**ARGS, "run_name": "mine_b", "track": True, "output_dir": "/x"}),
        make_run(tmp_path, "arith__grpo__1__1700000000", 1, args={**ARGS, "clip_high": 0.2}),
        make_run(tmp_path, "arith__grpo__1__1700000001", 1, args={**ARGS, "clip_high": 0.2, "learning_rate": 1e-4}),
        make_run(tmp_path, "arith__grpo__3__1700000002", 3),  # no args.json: grouped by name only, with its kind
        make_run(tmp_path, "arith__grpo__4__1700000003", 4),
    ]
    groups = plot.group_runs([plot.load_run(str(r)) for r in runs])
    assert [[r["name"] for r in g["runs"]] for g in groups] == [
        ["mine_a", "mine_b"],
        ["arith__grpo__1__1700000000"],
        ["arith__grpo__1__1700000001"],
        ["arith__grpo__3__1700000002", "arith__grpo__4__1700000003"],
    ]
    assert [g["label"] for g in groups] == [
        "clip_high=0.28, learning_rate=0.0002 [2 seeds]",
        "clip_high=0.2, learning_rate=0.0002 [seed 1]",
        "clip_high=0.2, learning_rate=0.0001 [seed 1]",
        "arith__grpo [2 seeds]",
    ]
    loaded = [plot.load_run(str(r)) for r in runs[:4]]
    assert plot.default_title(loaded, plot.group_runs(loaded)) == (
        "exp_name=grpo, train_data=arith, model=…/testbed/model — 4 runs, 3 curves"
    )


def test_axes_have_labels_and_the_figure_a_title(tmp_path):
    runs = [make_run(tmp_path, f"arith__grpo__{s}__{1700000000 + s}", s, args=ARGS) for s in (1, 2)]
    loaded = [plot.load_run(str(r)) for r in runs]
    fig, groups = plot.make_figure(plot.Args(runs=()), loaded)
    drawn = [ax for ax in fig.axes if ax.lines]
    assert len(drawn) == 7 and all(ax.get_ylabel() and ax.get_xlabel() == "step" for ax in drawn)
    assert drawn[0].get_ylabel() == "entropy (nats per token)" and drawn[2].get_ylabel() == "accuracy (avg@n)"
    assert fig._suptitle.get_text() == "exp_name=grpo, train_data=arith, model=…/testbed/model — 2 runs, 1 curve"
    fig, _ = plot.make_figure(plot.Args(runs=(), metric=("time/step_s",), title="mine"), loaded)
    assert fig.axes[0].get_ylabel() == "step s" and fig._suptitle.get_text() == "mine"


def test_figure_goes_under_the_runs_directory_by_default(tmp_path):
    root = tmp_path / "runs"
    for s in (1, 2):
        make_run(root, f"arith__grpo__{s}__{1700000000 + s}", s, args=ARGS)
    before = sorted(p.name for p in REPO.iterdir())
    cmd = [sys.executable, str(REPO / "plot.py"), *sorted(str(p) for p in root.iterdir())]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (figure,) = (root / "plots").iterdir()
    assert is_png(figure) and re.fullmatch(r"plot_\d{8}-\d{6}\.png", figure.name) and f"wrote {figure}" in proc.stdout
    assert sorted(p.name for p in REPO.iterdir()) == before  # nothing written into the repository
    # `runs/*` now also matches runs/plots: it is skipped, not an error
    proc = subprocess.run(
        [*cmd, str(root / "plots"), "--out", str(tmp_path / "again.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and is_png(tmp_path / "again.png"), proc.stderr
    assert f"note: {root / 'plots'}: plot.py's output folder, skipped" in proc.stdout


def test_sparse_eval_points_are_drawn_as_logged_even_with_smoothing(tmp_path):
    import json

    import matplotlib

    matplotlib.use("Agg")
    import plot

    run = tmp_path / "r"
    run.mkdir()
    rows = [{"step": s, "entropy/mean": 0.1 - s / 1000} for s in range(1, 11)]
    rows += [{"step": 5, "eval/accuracy": 0.2}, {"step": 10, "eval/accuracy": 0.8}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    group = {"runs": [plot.load_run(str(run))], "label": "r"}
    steps, mean, *_ = plot.group_curve(group, "eval/accuracy", 5, "minmax")
    assert list(mean) == [0.2, 0.8]


def test_groups_that_differ_in_many_arguments_get_distinct_readable_labels(tmp_path):
    import json

    import plot

    dirs = []
    for name, lr in (("alpha__1", 0.1), ("beta__1", 0.2), ("gamma__1", 0.3)):
        run = tmp_path / name
        run.mkdir()
        config = {"seed": 1, "learning_rate": lr, "a": lr, "b": lr, "c": lr, "d": lr}
        (run / "args.json").write_text(json.dumps(config))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "entropy/mean": lr}) + "\n")
        dirs.append(str(run))
    labels = [g["label"] for g in plot.group_runs([plot.load_run(d) for d in dirs])]
    assert len(set(labels)) == 3 and labels[0].startswith("alpha")


def run_plot_cli(*argv):
    return subprocess.run(
        [sys.executable, "plot.py", *map(str, argv)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_partial_last_line_is_skipped_with_one_note(tmp_path):
    """A run killed while writing (or still writing) leaves a partial last line: the rows before it are drawn."""
    run = make_run(tmp_path, "arith__grpo__1__1700000000", 1)
    metrics = run / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 13, "entropy/mean": 0.2')  # cut off mid-row, no newline
    out = tmp_path / "partial.png"
    proc = run_plot_cli(run, "--out", out)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {metrics}:13: partial last line skipped (malformed JSON (Expecting ',' delimiter))"]
    assert is_png(out)
    assert list(plot.load_run(str(run))["metrics"]["entropy/mean"][0]) == list(range(1, 13))
    # a bad line before the last one is not a partial write: an error naming the file and line
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:12]]) + "\n")
    with pytest.raises(plot.PlotError, match=re.escape(f"{metrics}:2: malformed JSON")):
        plot.load_run(str(run))


def test_empty_metrics_file_is_one_line(tmp_path):
    empty = tmp_path / "arith__grpo__2__1700000001"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    proc = run_plot_cli(empty, "--out", tmp_path / "x.png")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: nothing to draw: no metrics logged yet in {empty / 'metrics.jsonl'} (empty)"
    ]
    assert not (tmp_path / "x.png").exists()
    # beside a run with metrics: one note, and the other run is drawn
    good = make_run(tmp_path, "arith__grpo__1__1700000000", 1)
    proc = run_plot_cli(good, empty, "--out", tmp_path / "y.png")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("note:")] == [
        f"note: {empty / 'metrics.jsonl'}: no metrics logged yet (empty); run left out"
    ]
    assert is_png(tmp_path / "y.png")


def test_usage_errors_exit_2_with_one_error_line(tmp_path):
    """Bad arguments and runs that cannot be found or drawn: exit status 2 and one `error:` line, no traceback."""
    good = make_run(tmp_path, "arith__grpo__1__1700000000", 1)
    (tmp_path / "plots").mkdir()
    cases = [
        ([], "error: no run directories given"),
        ([tmp_path / "plots"], "error: no run directories given"),  # only plot.py's own output folder
        ([tmp_path / "nope"], f"error: {tmp_path / 'nope'}: no such run directory or file"),
        ([good, "--smooth", "0"], "error: --smooth must be >= 1"),
        ([good, "--metric", "nope/metric"], "error: metric(s) nope/metric not logged by any run"),
    ]
    for argv, error in cases:
        proc = run_plot_cli(*argv, "--out", tmp_path / "x.png")
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(error), (argv, proc.stderr)
    assert not (tmp_path / "x.png").exists()


def test_missing_default_panels_are_one_note(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "entropy/mean": 0.1}) + "\n" for s in (1, 2)))
    assert plot.select_panels([plot.load_run(str(run))], ()) == [("entropy/mean", "entropy/mean")]
    notes = capsys.readouterr().out.splitlines()
    assert len(notes) == 1 and notes[0].startswith(
        "note: no run logged rollout/accuracy or rollout/reward, eval/accuracy, "
    )
    assert notes[0].endswith("entropy/flow_net; panels left out")


def test_default_smooths_training_curves_not_eval_points(tmp_path):
    """By default the per-step curves are a readable moving average (the README figure's --smooth 5); evaluation
    points stay as logged; --smooth 1 draws the raw values."""
    run = make_run(tmp_path, "arith__grpo__1__1700000000", 1, steps=40)
    default = plot.Args(runs=(str(run),))
    assert default.smooth == plot.DEFAULT_SMOOTH == 5
    group = {"runs": [plot.load_run(str(run))], "label": "r"}
    raw = group["runs"][0]["metrics"]["rollout/accuracy"][1]
    _, smoothed, *_ = plot.group_curve(group, "rollout/accuracy", default.smooth, default.band)
    assert (
        np.allclose(smoothed, plot.moving_average(raw, 5))
        and np.abs(np.diff(smoothed)).max() < np.abs(np.diff(raw)).max()
    )
    _, evals, *_ = plot.group_curve(group, "eval/accuracy", default.smooth, default.band)
    assert np.allclose(evals, group["runs"][0]["metrics"]["eval/accuracy"][1])
    fig, _ = plot.make_figure(default, [group["runs"][0]])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "entropy/mean (smoothed 5)" in titles and "eval/accuracy" in titles
    _, unsmoothed, *_ = plot.group_curve(group, "rollout/accuracy", 1, default.band)
    assert np.allclose(unsmoothed, raw)
