"""Plot training curves of one or more runs from their `metrics.jsonl` files.

    python plot.py runs/<a> runs/<b> ... --out fig.png
    python plot.py runs/* --metric train/clip_frac_high --metric entropy/mean --smooth 5

Default panels (a panel that no run logged is left out, with a note): policy entropy (`entropy/mean`),
training accuracy (`rollout/accuracy`, else `rollout/reward`), eval accuracy (`eval/accuracy`, drawn with
markers at the steps where it was logged), response length (`rollout/response_length_mean`) and the entropy
flows (`entropy/flow_increase`, `entropy/flow_decrease`, `entropy/flow_net`). `--metric NAME` (repeatable)
draws exactly the named metrics instead; a named metric that no run logged is an error.

Seeds: runs that differ only in their seed are drawn as one curve, the mean over seeds, with a shaded band
(`--band minmax`, the default: min to max over seeds; `--band std`: mean ± one standard deviation). Runs
belong together when their name with the seed stripped is the same (`{data}__{exp_name}__{seed}__{unix
time}` -> `{data}__{exp_name}`) and, if both have an `args.json`, their arguments agree apart from the seed and
bookkeeping (run name, output dir, resume, tracking). Groups that share a name but not their arguments get
the differing arguments added to their legend entry. A group is drawn on the steps that all its runs
logged (a note says when steps are dropped). `--smooth W` applies a trailing moving average over the last W
logged points of each run before averaging over seeds. `--no-group` draws every run on its own.

A run argument may be a run directory or a `metrics.jsonl` file. A directory without `metrics.jsonl` is an
error (non-zero exit, the path named).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

DEFAULT_PANELS = [  # (title, candidate metrics: the first one that any run logged is drawn)
    ("entropy/mean", ["entropy/mean"]),
    ("training accuracy", ["rollout/accuracy", "rollout/reward"]),
    ("eval/accuracy", ["eval/accuracy"]),
    ("response length", ["rollout/response_length_mean"]),
    ("entropy/flow_increase", ["entropy/flow_increase"]),
    ("entropy/flow_decrease", ["entropy/flow_decrease"]),
    ("entropy/flow_net", ["entropy/flow_net"]),
]
SPARSE_METRICS = ("eval/",)  # logged on some steps only: drawn with markers
BOOKKEEPING_ARGS = {"seed", "run_name", "output_dir", "resume", "track", "wandb_project_name", "wandb_entity"}
RUN_NAME_RE = re.compile(r"^(?P<base>.+)__(?P<seed>-?\d+)__(?P<time>\d+)$")


@dataclass
class Args:
    runs: tyro.conf.Positional[tuple[str, ...]]
    """run directories (each with a metrics.jsonl) or metrics.jsonl files"""
    out: str = "fig.png"
    """output image file (the format follows the extension: .png, .pdf, .svg)"""
    metric: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """metric to draw instead of the default panels (repeatable: --metric a --metric b)"""
    smooth: int = 1
    """trailing moving-average window over logged points (1 = no smoothing)"""
    band: Literal["minmax", "std"] = "minmax"
    """band around the mean over seeds: min-max over seeds, or ± one standard deviation"""
    group: bool = True
    """draw runs that differ only in their seed as mean and band (--no-group: every run on its own)"""
    title: str | None = None
    """figure title"""
    dpi: int = 120
    """resolution of raster output"""


class PlotError(Exception):
    """A user-facing error: printed and the script exits with status 1."""


# ─── loading and grouping ───────────────────────────────────────────────────────────────────────
def load_run(path: str) -> dict:
    """{"name", "dir", "args" (dict or None), "seed", "metrics": {name: (steps, values)}} of one run."""
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
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlotError(f"{metrics_path}:{line_no}: malformed JSON ({e.msg})") from None
            step = row.get("step")
            if not isinstance(step, (int, float)):
                raise PlotError(f"{metrics_path}:{line_no}: no numeric 'step'")
            for key, value in row.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
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
    seed = args.get("seed") if isinstance(args, dict) else None
    if seed is None and m:
        seed = int(m.group("seed"))
    return {"name": name, "dir": run_dir, "args": args if isinstance(args, dict) else None, "seed": seed,
            "metrics": {k: (np.asarray(s, dtype=float), np.asarray(v)) for k, (s, v) in series.items()}}


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


def _config(run: dict) -> dict | None:
    if run["args"] is None:
        return None
    return {k: json.dumps(v, sort_keys=True) for k, v in run["args"].items() if k not in BOOKKEEPING_ARGS}


def group_runs(runs: list[dict], group: bool = True) -> list[dict]:
    """[{"label", "runs"}] in order of first appearance (see the module docstring for the rule)."""
    groups: list[dict] = []
    for run in runs:
        key = (base_name(run), _config(run)) if group else (run["name"], None)
        for g in groups:
            if group and g["key"][0] == key[0] and (g["key"][1] is None or key[1] is None or g["key"][1] == key[1]):
                g["runs"].append(run)
                break
        else:
            groups.append({"key": key, "runs": [run]})
    by_base: dict[str, list[dict]] = {}
    for g in groups:
        by_base.setdefault(g["key"][0], []).append(g)
    for same in by_base.values():
        for g in same:
            g["label"] = g["key"][0]
        configs = [g["key"][1] for g in same]
        if len(same) > 1 and all(c is not None for c in configs):
            differing = sorted(k for k in set().union(*configs) if len({c.get(k) for c in configs}) > 1)
            for g in same:
                g["label"] += " (" + ", ".join(f"{k}={g['key'][1].get(k, '–')}" for k in differing[:4]) + ")"
        elif len(same) > 1:  # same name, no args to tell them apart
            for i, g in enumerate(same):
                g["label"] += f" #{i + 1}"
    for g in groups:
        if len(g["runs"]) > 1:
            g["label"] += f" [{len(g['runs'])} seeds]"
    return groups


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
            raise PlotError(f"metric(s) {', '.join(missing)} not logged by any run ({', '.join(r['dir'] for r in runs)}); "
                            f"available: {', '.join(sorted(available)) or 'none'}")
        return [(m, m) for m in metrics]
    panels = []
    for title, candidates in DEFAULT_PANELS:
        found = next((m for m in candidates if m in available), None)
        if found is None:
            print(f"note: no run logged {' or '.join(candidates)}; panel left out")
        else:
            panels.append((found if title == "training accuracy" else title, found))
    if not panels:
        raise PlotError(f"none of the default metrics is logged by any run ({', '.join(r['dir'] for r in runs)}); "
                        f"available: {', '.join(sorted(available)) or 'none'}; choose some with --metric")
    return panels


def plot(args: Args) -> str:
    if not args.runs:
        raise PlotError("no run directories given")
    if args.smooth < 1:
        raise PlotError("--smooth must be >= 1")
    runs = [load_run(p) for p in args.runs]
    panels = select_panels(runs, args.metric)
    groups = group_runs(runs, args.group)

    ncols = min(4, len(panels) + 1) if len(panels) > 2 else len(panels)
    nrows = math.ceil((len(panels) + (1 if len(panels) > 2 else 0)) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
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
            (line,) = ax.plot(steps, mean, color=color, lw=1.5, marker="o" if sparse or len(steps) == 1 else None,
                              ms=3, label=g["label"])
            if len(g["runs"]) > 1:
                ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
            handles.setdefault(g["label"], line)
        ax.set_title(title + (f" (smoothed {args.smooth})" if args.smooth > 1 and not sparse else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if metric.startswith("entropy/flow"):
            ax.axhline(0.0, color="grey", lw=0.8)
    spare = list(axes.flat)[len(panels):]
    for ax in spare:
        ax.axis("off")
    band_note = "band: min–max over seeds" if args.band == "minmax" else "band: ± 1 std over seeds"
    legend_title = band_note if any(len(g["runs"]) > 1 for g in groups) else None
    if spare:
        spare[0].legend(handles.values(), handles.keys(), loc="center", fontsize=8, title=legend_title,
                        title_fontsize=8, frameon=False)
    else:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(3, len(handles)), fontsize=8,
                   title=legend_title, title_fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.subplots_adjust(bottom=0.25)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    if not spare:
        fig.subplots_adjust(bottom=0.15 + 0.04 * math.ceil(len(handles) / 3))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    plt.close(fig)
    for g in groups:
        print(f"{g['label']}: {', '.join(r['dir'] for r in g['runs'])}")
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    try:
        plot(tyro.cli(Args))
    except PlotError as e:
        sys.exit(f"error: {e}")
