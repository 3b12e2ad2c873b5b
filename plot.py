"""Plot training curves of one or more runs from their `metrics.jsonl` files.

    python plot.py runs/*                      # writes runs/plots/plot_<time>.png
    python plot.py runs/<a> runs/<b> --out fig.png
    python plot.py runs/* --metric train/clip_frac_high --metric entropy/mean --smooth 10

Default panels (a panel that no run logged is left out, with a note): policy entropy (`entropy/mean`),
training accuracy (`rollout/accuracy`, else `rollout/reward`), eval accuracy (`eval/accuracy`, drawn with
markers at the steps where it was logged), response length (`rollout/response_length_mean`) and the entropy
flows (`entropy/flow_increase`, `entropy/flow_decrease`, `entropy/flow_net`). `--metric NAME` (repeatable)
draws exactly the named metrics instead; a named metric that no run logged is an error.

Seeds: runs whose arguments (their `args.json`) are the same apart from the seed and bookkeeping (run name,
output dir, resume, tracking) are one group, drawn as the mean over seeds with a shaded band (`--band minmax`,
the default: min to max over seeds; `--band std`: mean ± one standard deviation). The number of processes
counts as an argument: it is read from `args.json` (`num_processes` / `world_size`) or else from the per-process
random states of the run's checkpoints. Two runs with the same arguments and the same seed are never averaged
(they are not two seeds): each gets its own curve, named after its run. Runs without `args.json` group by their
name with the seed stripped (`{data}__{exp_name}__{seed}__{unix time}` -> `{data}__{exp_name}`) and only with
each other. Each group is labelled by its `exp_name` when those differ, else by the arguments that differ between
the groups, then `[N seeds]` or
`[seed S]`; the title names what all runs share. A group is drawn on the steps that all its runs logged (a note
says when steps are dropped). `--smooth W` (default 5; `--smooth 1`: the raw values) applies a trailing moving
average over the last W logged points of each run before averaging over seeds, to the per-step training curves
only: evaluation points (`eval/...`) are drawn as logged. `--no-group` draws every run on its own.

A run argument may be a run directory or a `metrics.jsonl` file. A directory without `metrics.jsonl` is an
error (the path named), except plot.py's own output folder `plots/`, which is skipped. A partial
(unparseable) last line, as a run killed or still writing leaves it, is skipped with a note naming the file and
line; a bad line before the last is an error. A run that has logged nothing yet (empty `metrics.jsonl`) is left
out with one note; when no run has logged anything, one error line says so. Errors (bad arguments, no runs, a
bad metrics file) are one `error: ...` line on stderr and exit status 2. The figure
goes to `--out`, by default `plots/plot_<time>.png` in the runs' parent directory (e.g. `runs/`).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tyro

DEFAULT_PANELS = [  # (title, candidate metrics: the first one that any run logged is drawn)
    ("entropy/mean", ["entropy/mean"]),
    ("training accuracy", ["rollout/accuracy", "rollout/reward"]),
    ("eval/accuracy", ["eval/accuracy"]),
    ("response length", ["rollout/response_length_mean"]),
    ("entropy/flow_increase", ["entropy/flow_increase"]),
    ("entropy/flow_decrease", ["entropy/flow_decrease"]),
    ("entropy/flow_net", ["entropy/flow_net"]),
]
YLABELS = {  # y-axis label of each default panel's metric (other metrics: their name)
    "entropy/mean": "entropy (nats per token)",
    "rollout/accuracy": "fraction of responses correct",
    "rollout/reward": "mean reward",
    "eval/accuracy": "accuracy (avg@n)",
    "rollout/response_length_mean": "response length (tokens)",
    "entropy/flow_increase": "predicted ΔH per token (η = 1)",
    "entropy/flow_decrease": "predicted |ΔH| per token (η = 1)",
    "entropy/flow_net": "predicted ΔH per token (η = 1)",
}
SPARSE_METRICS = ("eval/",)  # logged on some steps only: drawn with markers
BOOKKEEPING_ARGS = {"run_name", "output_dir", "resume", "track", "wandb_project_name", "wandb_entity"}
PROCESS_ARGS = ("num_processes", "world_size")  # names under which a run may record its process count
TITLE_ARGS = ("exp_name", "train_data", "model")  # named in the default title when all runs share them
DEFAULT_SMOOTH = 5  # per-step training curves are noisy at one point per step; evaluation points are drawn as logged
OUTPUT_FOLDER = "plots"  # default figure folder, inside the runs' parent directory
RUN_NAME_RE = re.compile(r"^(?P<base>.+)__(?P<seed>-?\d+)__(?P<time>\d+)$")


@dataclass
class Args:
    runs: tyro.conf.Positional[tuple[str, ...]]
    """run directories (each with a metrics.jsonl) or metrics.jsonl files"""
    out: str | None = None
    """output image, its format by the extension: .png, .pdf, .svg (default: plots/plot_<time>.png beside the runs)"""
    metric: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """metric to draw instead of the default panels (repeatable: --metric a --metric b)"""
    smooth: int = DEFAULT_SMOOTH
    """window (logged points) of the trailing moving average of per-step curves (1: none; eval is never smoothed)"""
    band: Literal["minmax", "std"] = "minmax"
    """band around the mean over seeds: min-max over seeds, or ± one standard deviation"""
    group: bool = True
    """draw runs that differ only in their seed as mean and band (--no-group: every run on its own)"""
    title: str | None = None
    """figure title (default: the arguments all runs share, and the number of runs and groups)"""
    dpi: int = 120
    """resolution of raster output"""


class PlotError(Exception):
    """A user-facing error (arguments, run folders, metrics files): one `error:` line, exit status 2."""


# ─── loading and grouping ───────────────────────────────────────────────────────────────────────
def load_run(path: str) -> dict:
    """{"name", "dir", "metrics_path", "rows" (non-blank lines), "args" (dict or None), "seed", "processes",
    "metrics": {name: (steps, values)}} of one run."""
    if os.path.isfile(path):
        metrics_path, run_dir = path, os.path.dirname(os.path.abspath(path))
    elif os.path.isdir(path):
        run_dir, metrics_path = path, os.path.join(path, "metrics.jsonl")
        if not os.path.isfile(metrics_path):
            raise PlotError(f"{path}: no metrics.jsonl in this run directory")
    else:
        raise PlotError(f"{path}: no such run directory or file")
    series: dict[str, tuple[list, list]] = {}
    with open(metrics_path) as f:
        lines = [(line_no, line) for line_no, line in enumerate(f, 1) if line.strip()]
    for i, (line_no, line) in enumerate(lines):
        try:
            row = json.loads(line)
            problem = None if isinstance(row, dict) else f"not a JSON object ({type(row).__name__})"
        except json.JSONDecodeError as e:
            problem = f"malformed JSON ({e.msg})"
        if problem is not None:
            if i == len(lines) - 1:  # a run killed (or still writing) mid-line: the rows before it are good
                print(f"note: {metrics_path}:{line_no}: partial last line skipped ({problem})")
                break
            raise PlotError(f"{metrics_path}:{line_no}: {problem}")
        step = row.get("step")
        if not isinstance(step, (int, float)):
            raise PlotError(f"{metrics_path}:{line_no}: no numeric 'step'")
        for key, value in row.items():
            if (
                key == "step"
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))
    args = None
    args_path = os.path.join(run_dir, "args.json")
    if os.path.isfile(args_path):
        try:
            with open(args_path) as f:
                args = json.load(f)
        except (OSError, json.JSONDecodeError):
            args = None
    name = os.path.basename(os.path.normpath(run_dir))
    m = RUN_NAME_RE.match(name)
    args = args if isinstance(args, dict) else None
    seed = args.get("seed") if args else None
    if seed is None and m:
        seed = int(m.group("seed"))
    return {
        "name": name,
        "dir": run_dir,
        "metrics_path": metrics_path,
        "rows": len(lines),
        "args": args,
        "seed": seed,
        "processes": process_count(run_dir, args),
        "metrics": {k: (np.asarray(s, dtype=float), np.asarray(v)) for k, (s, v) in series.items()},
    }


def process_count(run_dir: str, args: dict | None) -> int | None:
    """The run's number of processes: from its arguments if they record it, else from the per-process random
    states (`random_states_<rank>.pkl`) that accelerate saves in each checkpoint; None when unknown."""
    for key in PROCESS_ARGS:
        if args and isinstance(args.get(key), int):
            return args[key]
    root = os.path.join(run_dir, "checkpoints")
    counts = set()
    if os.path.isdir(root):
        for step in os.listdir(root):
            step_dir = os.path.join(root, step)
            if os.path.isdir(step_dir) and not step.endswith(".tmp"):
                states = [f for f in os.listdir(step_dir) if re.fullmatch(r"random_states_\d+\.pkl", f)]
                if states:
                    counts.add(len(states))
    return counts.pop() if len(counts) == 1 else None


def base_name(run: dict) -> str:
    """Run name with the seed (and launch time) stripped."""
    m = RUN_NAME_RE.match(run["name"])
    if m:
        return m.group("base")
    if run["seed"] is not None:
        parts = run["name"].split("__")
        kept = [p for p in parts if p != str(run["seed"])]
        if kept and len(kept) < len(parts):
            return "__".join(kept)
    return run["name"]


def _short(value) -> str:
    """A readable argument value for labels: strings bare, absolute paths as their last two parts."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if isinstance(value, str) and text.startswith(("/", "~")) and text.rstrip("/").count("/") > 2:
        text = "…/" + "/".join(text.rstrip("/").split("/")[-2:])
    return text if len(text) <= 40 else text[:39] + "…"


def run_config(run: dict) -> dict | None:
    """What makes a run's configuration: its arguments without the seed and bookkeeping, plus its process
    count when known. None without args.json."""
    if run["args"] is None:
        return None
    config = {
        k: v for k, v in run["args"].items() if k != "seed" and k not in BOOKKEEPING_ARGS and k not in PROCESS_ARGS
    }
    if run["processes"] is not None:
        config["processes"] = run["processes"]
    return config


def group_runs(runs: list[dict], group: bool = True) -> list[dict]:
    """[{"label", "runs", "config"}] in order of first appearance (see the module docstring for the rule)."""
    groups: list[dict] = []
    for run in runs:
        config = run_config(run)
        key = json.dumps(config, sort_keys=True) if config is not None else "name:" + base_name(run)
        target = None
        if group:
            target = next(
                (
                    g
                    for g in groups
                    if g["key"] == key and run["seed"] is not None and run["seed"] not in {r["seed"] for r in g["runs"]}
                ),
                None,
            )
        if target is None:
            groups.append({"key": key, "config": config, "runs": [run]})
        else:
            target["runs"].append(run)
    with_config = [g for g in groups if g["config"] is not None]
    keys = sorted(set().union(*(g["config"] for g in with_config))) if with_config else []
    differing = [
        k
        for k in keys
        if len({json.dumps(g["config"][k], sort_keys=True) if k in g["config"] else "<unset>" for g in with_config}) > 1
    ]
    repeated = [key for key in dict.fromkeys(g["key"] for g in groups) if sum(g["key"] == key for g in groups) > 1]
    for key in repeated:
        names = ", ".join(g["runs"][0]["name"] for g in groups if g["key"] == key)
        print(
            f"note: {names}: same arguments and seed, so drawn separately, not averaged as seeds (repeats, or "
            "they differ in something not recorded)"
        )
    for g in groups:
        if not group:
            g["label"] = g["runs"][0]["name"]
            continue
        if "exp_name" in differing and g["config"] is not None:  # experiments named apart: their names label them
            g["label"] = str(g["config"]["exp_name"])
        elif g["config"] is not None and differing:
            shown = [f"{k}={_short(g['config'][k]) if k in g['config'] else '–'}" for k in differing[:4]]
            g["label"] = ", ".join(shown) + (f", … ({len(differing) - 4} more)" if len(differing) > 4 else "")
        else:
            g["label"] = base_name(g["runs"][0])
        if (
            len(differing) > 4 and "exp_name" not in differing
        ):  # too many differences to list (e.g. different scripts): the runs' own name is clearer
            g["label"] = base_name(g["runs"][0])
        if g["key"] in repeated:  # same arguments and seed as another run: name the run, do not call them seeds
            g["label"] += f" (run {g['runs'][0]['name']})"
        seeds = [r["seed"] for r in g["runs"]]
        g["label"] += (
            f" [{len(seeds)} seeds]" if len(seeds) > 1 else (f" [seed {seeds[0]}]" if seeds[0] is not None else "")
        )
    labels = [g["label"] for g in groups]
    for g in groups:  # two groups must never share a legend entry
        if labels.count(g["label"]) > 1:
            g["label"] += f" ({g['runs'][0]['name']})"
    return groups


def default_title(runs: list[dict], groups: list[dict]) -> str:
    """What all runs share (of TITLE_ARGS), and how many runs and groups are drawn."""
    shared = []
    if all(r["args"] for r in runs):
        for k in TITLE_ARGS:
            values = {json.dumps(r["args"].get(k), sort_keys=True) for r in runs}
            if len(values) == 1 and runs[0]["args"].get(k) is not None:
                shared.append(f"{k}={_short(runs[0]['args'][k])}")
    counts = f"{len(runs)} run{'s' if len(runs) != 1 else ''}, {len(groups)} curve{'s' if len(groups) != 1 else ''}"
    return (", ".join(shared) + " — " if shared else "") + counts


def default_output(runs: list[dict]) -> str:
    """`plots/plot_<time>.png` in the directory that holds the run directories (e.g. `runs/`)."""
    parents = [os.path.dirname(os.path.abspath(r["dir"])) for r in runs]
    parent = os.path.commonpath(parents)
    if parent == os.path.dirname(parent):  # the runs share nothing below the filesystem root
        parent = parents[0]
    return os.path.join(parent, OUTPUT_FOLDER, f"plot_{time.strftime('%Y%m%d-%H%M%S')}.png")


# ─── curves ─────────────────────────────────────────────────────────────────────────────────────
def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` points (fewer at the start)."""
    if window <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def group_curve(group: dict, metric: str, smooth: int, band: str):
    """(steps, mean, low, high, dropped_steps) over the runs of `group` that logged `metric`, or None."""
    smooth = 1 if metric.startswith(SPARSE_METRICS) else smooth  # sparse (eval) points are drawn as logged
    series = []
    for run in group["runs"]:
        if metric in run["metrics"]:
            steps, values = run["metrics"][metric]
            last = {}  # a step logged twice (e.g. after a resume): the last value wins
            for s, v in zip(steps, values):
                last[s] = v
            steps = np.array(sorted(last))
            series.append((steps, moving_average(np.array([last[s] for s in steps]), smooth)))
    if not series:
        return None
    common = series[0][0]
    for steps, _ in series[1:]:
        common = np.intersect1d(common, steps)
    union = np.unique(np.concatenate([s for s, _ in series]))
    stacked = np.stack([v[np.isin(s, common)] for s, v in series])  # [runs, steps]
    mean = stacked.mean(0)
    if band == "std":
        std = stacked.std(0)
        low, high = mean - std, mean + std
    else:
        low, high = stacked.min(0), stacked.max(0)
    return common, mean, low, high, len(union) - len(common)


def select_panels(runs: list[dict], metrics: tuple[str, ...]) -> list[tuple[str, str]]:
    """[(title, metric)] to draw. Raises PlotError for a requested metric that no run has."""
    available = set().union(*(r["metrics"] for r in runs))
    if metrics:
        missing = [m for m in metrics if m not in available]
        if missing:
            raise PlotError(
                f"metric(s) {', '.join(missing)} not logged by any run ({', '.join(r['dir'] for r in runs)}); "
                f"available: {', '.join(sorted(available)) or 'none'}"
            )
        return [(m, m) for m in metrics]
    panels, missing = [], []
    for title, candidates in DEFAULT_PANELS:
        found = next((m for m in candidates if m in available), None)
        if found is None:
            missing.append(" or ".join(candidates))
        else:
            panels.append((found if title == "training accuracy" else title, found))
    if missing and panels:
        print(f"note: no run logged {', '.join(missing)}; panel{'s' if len(missing) > 1 else ''} left out")
    if not panels:
        raise PlotError(
            f"none of the default metrics is logged by any run ({', '.join(r['dir'] for r in runs)}); "
            f"available: {', '.join(sorted(available)) or 'none'}; choose some with --metric"
        )
    return panels


def _is_output_folder(path: str) -> bool:
    """plot.py's own figure folder (`runs/plots`), which `runs/*` also matches."""
    return (
        os.path.isdir(path)
        and os.path.basename(os.path.normpath(path)) == OUTPUT_FOLDER
        and not os.path.isfile(os.path.join(path, "metrics.jsonl"))
    )


def make_figure(args: Args, runs: list[dict]):
    """(figure, groups) of the panels for `runs`."""
    panels = select_panels(runs, args.metric)
    groups = group_runs(runs, args.group)

    legend_slot = len(panels) >= 2  # the legend gets a panel of its own (below the panels, it would cover the axes)
    ncols = min(4, len(panels) + 1) if legend_slot else len(panels)
    nrows = math.ceil((len(panels) + legend_slot) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    colors = [
        plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")(i) for i in range(10 if len(groups) <= 10 else 20)
    ]
    styles = ["-", "--", ":", "-."]  # past 20 groups the colours repeat with another line style
    handles = {}
    for ax, (title, metric) in zip(axes.flat, panels):
        sparse = metric.startswith(SPARSE_METRICS)
        for gi, g in enumerate(groups):
            curve = group_curve(g, metric, args.smooth, args.band)
            if curve is None:
                continue
            steps, mean, low, high, dropped = curve
            if dropped:
                print(f"note: {g['label']}: {metric}: {dropped} step(s) not logged by every seed are left out")
            color = colors[gi % len(colors)]
            (line,) = ax.plot(
                steps,
                mean,
                color=color,
                ls=styles[gi // len(colors) % len(styles)],
                lw=1.5,
                marker="o" if sparse or len(steps) == 1 else None,
                ms=3,
                label=g["label"],
            )
            if len(g["runs"]) > 1:
                ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
            handles.setdefault(g["label"], line)
        ax.set_title(title + (f" (smoothed {args.smooth})" if args.smooth > 1 and not sparse else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(YLABELS.get(metric, metric.rsplit("/", 1)[-1].replace("_", " ")), fontsize=9)
        ax.grid(alpha=0.3)
        if metric.startswith("entropy/flow"):
            ax.axhline(0.0, color="grey", lw=0.8)
    spare = list(axes.flat)[len(panels) :]
    for ax in spare:
        ax.axis("off")
    band_note = "band: min–max over seeds" if args.band == "minmax" else "band: ± 1 std over seeds"
    legend_title = band_note if any(len(g["runs"]) > 1 for g in groups) else None
    if spare:
        spare[0].legend(
            handles.values(),
            handles.keys(),
            loc="center",
            fontsize=8,
            title=legend_title,
            title_fontsize=8,
            frameon=False,
        )
    else:
        fig.legend(
            handles.values(),
            handles.keys(),
            loc="lower center",
            ncol=min(3, len(handles)),
            fontsize=8,
            title=legend_title,
            title_fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.5, 0.0),
        )
        fig.subplots_adjust(bottom=0.25)
    fig.suptitle(args.title or default_title(runs, groups))
    fig.tight_layout()
    if not spare:
        fig.subplots_adjust(bottom=0.15 + 0.04 * math.ceil(len(handles) / 3))
    return fig, groups


def plot(args: Args) -> str:
    if args.smooth < 1:
        raise PlotError("--smooth must be >= 1")
    paths = [p for p in args.runs if not _is_output_folder(p)]
    for skipped in sorted(set(args.runs) - set(paths)):
        print(f"note: {skipped}: plot.py's output folder, skipped")
    if not paths:
        raise PlotError("no run directories given")
    loaded = [load_run(p) for p in paths]
    runs = [r for r in loaded if r["metrics"]]
    if not runs:  # one line, whatever the number of panels
        raise PlotError(
            "nothing to draw: no metrics logged yet in "
            + ", ".join(f"{r['metrics_path']}" + (" (empty)" if r["rows"] == 0 else "") for r in loaded)
        )
    for r in loaded:
        if not r["metrics"]:
            print(
                f"note: {r['metrics_path']}: no metrics logged yet{' (empty)' if r['rows'] == 0 else ''}; run left out"
            )
    fig, groups = make_figure(args, runs)
    out = args.out or default_output(runs)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    plt.close(fig)
    for g in groups:
        print(f"{g['label']}: {', '.join(r['dir'] for r in g['runs'])}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    try:
        plot(tyro.cli(Args))
    except PlotError as error:  # one line, exit status 2 (arguments or files), as in the other scripts
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        sys.exit(2)
