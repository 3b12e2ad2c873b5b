"""Compare an idea against GRPO: paired seeds, outcomes fixed in advance, one verdict per outcome.

    python benchmarks/compare.py myidea.py --baseline grpo.py --seeds 8 --steps 120 [--jobs 2] [--out DIR] [--tiny] \\
        [-- extra flags for both arms, e.g. --sampling-noise keyed]

Each seed s = 1 … --seeds (from --first-seed on, if given: new seeds for a replication) trains both scripts with
`--seed s` (the same data order, first rollout and, with `--sampling-noise keyed`, the same sampling noise: the
arms then draw the same tokens wherever their policies agree),
`--steps` rollout steps each, evaluated by the script's own evaluation at the end (`eval/accuracy`,
`--num-eval-problems 500 --eval-n 2`; flags after `--` come last and override these). `--jobs 2` runs the two arms
of a seed side by side, so both share the machine alike (the step time is compared by seed). `--arm-flags` /
`--baseline-flags` add flags to one arm only (e.g. the same script against itself with a method flag changed).

Pre-registration. The outcomes, the direction that counts as better, the test and the correction are fixed in this
file (OUTCOMES, ALPHA) before any run; no flag changes them:
  1. final eval accuracy (`eval/accuracy` at the last step; higher is better),
  2. mean entropy over the run (`entropy/mean`, mean over steps; higher is better: less entropy collapse),
  3. forking-token entropy (`entropy/forking_mean`, mean over steps; higher is better),
  4. discovery step, on the testbed tasks only (lower is better): on `paths`, the first step at which
     `rollout/careful_frac` exceeds 0.5; on `graded`, the mean over its six families of the step at which the
     family's `rollout/careful_frac_<family>`, averaged over the last DISCOVERY_WINDOW steps, first exceeds 0.5 (a
     family's share of one step rests on ~21 responses, too few to cross 0.5 only when it should). A run (or
     family) that never gets there counts as --steps + 1 (censored, so its differences shrink towards 0:
     conservative), and the number of such runs (families) is printed,
  5. step time (`time/step_s`, median over steps; lower is better).
Each is a paired difference arm − baseline over seeds: mean, 95% t-interval, and a two-sided one-sample t-test of
mean 0 (α = 0.05). The p-values of the outcomes of one comparison are Holm-corrected (4 outcomes off the testbed),
so that the chance of any false "resolved" among them stays at most 5%. The verdict per outcome is "resolved
better" / "resolved worse" when the Holm-adjusted p is below 0.05, else "not resolved at N seeds"; the printed
interval is not adjusted, so an interval that excludes 0 can still be "not resolved". Choose --seeds before
running: adding seeds until a difference resolves (optional stopping) makes the 5% untrue.

Not tested, only reported: the action size of each arm, from `action/changed_frac` (the share of loss tokens whose
loss the method changed by more than 1%: weight, clip bound or penalty) and `action/weight_dev_mean` (mean |w − 1|),
which every training script logs, and any `algo/<prefix>_changed_frac` / `algo/<prefix>_weight_dev_mean`: its mean
over steps and seeds and the share of steps where it is not 0. An arm whose action is always 0 did nothing: its
differences are noise. The runs file `<out>/runs.jsonl` has one JSON line per finished run (its summary); a rerun
with the same settings skips the finished runs (one that was cut short starts again) and refuses a runs file made
with other settings or another version of a script. The figure `<out>/compare.png` (plot.py) shows both arms,
mean ± std over seeds. The statistics are those of benchmarks/testbed_study.py.
"""

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.testbed_study import diff_text, half_width, paired_differences, uptime  # noqa: E402

ALPHA = 0.05
OUTCOMES = [  # (summary key, what is measured, +1: higher is better / −1: lower is better, display scale, digits)
    ("eval_final", "final eval accuracy (points)", +1, 100, 1),
    ("entropy_mean", "mean entropy over the run (nats/token)", +1, 1, 3),
    ("forking_entropy", "forking-token entropy, mean over the run", +1, 1, 3),
    ("discovery_step", "discovery step (careful share > 50%; graded: mean over families)", -1, 1, 1),
    ("step_s", "step time (s, median over steps)", -1, 1, 3),
]
DISCOVERY_SHARE = 0.5  # the careful path is "discovered" at the first step where more than half the samples take it
DISCOVERY_WINDOW = 5  # graded: a family's share is averaged over this many steps before it is compared
ACTION_METRIC = re.compile(
    r"^(action|algo)/(\w+_)?(changed_frac|weight_dev_mean)$"
)  # the arm's action size, if it logs one
FIXED_FLAGS = ["--checkpoint-every", "0", "--keep-checkpoints", "1", "--log-completions-every", "0"]
FIXED_FLAGS += ["--grader-workers", "1", "--num-eval-problems", "500", "--eval-n", "2"]
TINY_FLAGS = ["--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "40", "--micro-batch-size", "8"]
TINY_FLAGS += ["--num-eval-problems", "8", "--eval-n", "1"]
RUNS_FILE_LOCK = threading.Lock()


# ─── statistics ───────────────────────────────────────────────────────────────────────────────────
def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (continued fraction, Numerical Recipes §6.4)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the continued fraction converges fast on this side only
        return 1.0 - regularized_beta(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def t_test_p(diffs: list[float]) -> float | None:
    """Two-sided p-value of the one-sample t-test of mean 0 (None for fewer than 2 values)."""
    n = len(diffs)
    if n < 2:
        return None
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    if sd == 0:  # every seed gave the same difference
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    df = n - 1
    return regularized_beta(df / 2, 0.5, df / (df + t * t))


def holm(pvalues: dict) -> dict:
    """Holm-adjusted p-values {name: p} (step-down: the i-th smallest × (m − i), kept monotone, at most 1)."""
    ranked = sorted((p, name) for name, p in pvalues.items() if p is not None)
    adjusted, running = {}, 0.0
    for i, (p, name) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * p))
        adjusted[name] = running
    return adjusted


def verdict(diff: float | None, adjusted_p: float | None, better: int, seeds: int) -> str:
    if adjusted_p is None or adjusted_p >= ALPHA or diff == 0:
        return f"not resolved at {seeds} seed{'s' * (seeds != 1)}"
    return "resolved better" if diff * better > 0 else "resolved worse"


# ─── one run ──────────────────────────────────────────────────────────────────────────────────────
def summarise(run_dir: Path) -> dict:
    """The outcomes of one finished run and its action size, from its metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "entropy/mean" in r]  # training steps (the step-0 evaluation has no entropy)
    evaluations = [r for r in rows if "eval/accuracy" in r]
    if not evaluations:
        raise RuntimeError(f"{run_dir.name} has no evaluation (was --eval-every 0 passed?)")
    finite = lambda key: [r[key] for r in steps if key in r and math.isfinite(r[key])]  # noqa: E731
    summary = {
        "steps": len(steps),
        "eval_final": evaluations[-1]["eval/accuracy"],
        "entropy_mean": statistics.mean(finite("entropy/mean")),
        "forking_entropy": statistics.mean(finite("entropy/forking_mean")),
        "step_s": statistics.median(finite("time/step_s")),
    }
    families = sorted({k for r in steps for k in r if k.startswith("rollout/careful_frac_")})
    if families:  # graded: one discovery per family, the outcome their mean step (never: --steps + 1)
        firsts = [family_discovery_step(steps, key) for key in families]
        summary["discovery_step"] = statistics.mean(f if f is not None else len(steps) + 1 for f in firsts)
        summary["families_discovered"] = sum(f is not None for f in firsts)
        summary["families"] = len(families)
        summary["careful_final"] = steps[-1]["rollout/careful_frac"]
    elif any("rollout/careful_frac" in r for r in steps):  # paths
        passed = [r["step"] for r in steps if r["rollout/careful_frac"] > DISCOVERY_SHARE]
        summary["discovery_step"] = passed[0] if passed else None
        summary["careful_final"] = steps[-1]["rollout/careful_frac"]
    summary["action"] = {
        name: [statistics.mean(finite(name)), sum(v != 0 for v in finite(name)) / len(steps)]
        for name in sorted({k for r in steps for k in r if ACTION_METRIC.match(k)})
    }
    return summary


def run_one(role: str, seed: int, plan: dict, out: Path, finished: dict) -> dict:
    """Train one run (or return its row from the runs file)."""
    if (role, seed) in finished:
        return finished[role, seed]
    if role == "baseline" and plan.get("reuse"):
        return reuse_baseline(seed, plan, out)
    run_dir = out / "runs" / f"{role}__{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short starts again
    spec = plan[role]
    command = [sys.executable, spec["script"], "--seed", str(seed), "--output-dir", str(run_dir.parent)]
    command += ["--run-name", run_dir.name, *spec["flags"]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    start = time.time()
    log_path = out / "logs" / f"{run_dir.name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=6 * 3600)
    if proc.returncode:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-5:])
        raise RuntimeError(f"{run_dir.name} failed (exit {proc.returncode}); {log_path} ends:\n{tail}")
    row = {"role": role, "seed": seed, "config": spec["config"], **summarise(run_dir)}
    row.update(run_dir=run_dir.name, wall_s=round(time.time() - start, 1), finished_at=time.time())
    with RUNS_FILE_LOCK, open(out / "runs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    summary = f"eval {row['eval_final']:.3f}, entropy {row['entropy_mean']:.3f}, {row['wall_s']:.0f} s"
    print(f"{time.strftime('%H:%M:%S')} {run_dir.name}: {summary}", flush=True)
    return row


def reuse_baseline(seed: int, plan: dict, out: Path, poll_s: float = 30, wait_s: float = 6 * 3600) -> dict:
    """The baseline run of `seed` from another comparison (--reuse-baseline), once it is in that comparison's runs
    file with exactly this configuration (script version and flags): linked into this folder and recorded in this
    runs file, not rerun. Waits while that comparison is still running it."""
    other = plan["reuse"]
    deadline = time.time() + wait_s
    while True:
        for row in read_runs_file(other / "runs.jsonl"):
            if row["role"] == "baseline" and row["seed"] == seed and row["config"] == plan["baseline"]["config"]:
                link = out / "runs" / row["run_dir"]
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(other / "runs" / row["run_dir"], target_is_directory=True)
                row = {**row, "reused_from": str(other)}
                with RUNS_FILE_LOCK, open(out / "runs.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{time.strftime('%H:%M:%S')} baseline__{seed}: reused from {other}", flush=True)
                return row
        if time.time() > deadline:
            raise RuntimeError(
                f"baseline__{seed} did not appear in {other / 'runs.jsonl'} within {wait_s / 3600:.0f} h"
            )
        time.sleep(poll_s)


def read_runs_file(path: Path) -> list[dict]:
    """The finished runs (a line cut short by a crash, always the last, is dropped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# ─── the report ───────────────────────────────────────────────────────────────────────────────────
def family_discovery_step(steps: list[dict], key: str) -> int | None:
    """The first step at which the mean of `key` over the last DISCOVERY_WINDOW steps (steps where the family was
    sampled) exceeds DISCOVERY_SHARE; None if never."""
    shares = [(r["step"], r[key]) for r in steps if key in r and math.isfinite(r[key])]
    for i in range(DISCOVERY_WINDOW - 1, len(shares)):
        if statistics.mean(v for _, v in shares[i - DISCOVERY_WINDOW + 1 : i + 1]) > DISCOVERY_SHARE:
            return shares[i][0]
    return None


def outcome_values(rows: list[dict], key: str) -> list[dict]:
    """{seed, key} per run; the discovery step of a run that never discovered is steps + 1."""
    if key == "discovery_step":
        return [{"seed": r["seed"], key: r[key] if r[key] is not None else r["steps"] + 1} for r in rows]
    return [{"seed": r["seed"], key: r[key]} for r in rows]


def report(rows: list[dict], arm_name: str, base_name: str) -> str:
    arm = sorted((r for r in rows if r["role"] == "arm"), key=lambda r: r["seed"])
    base = sorted((r for r in rows if r["role"] == "baseline"), key=lambda r: r["seed"])
    seeds = sorted({r["seed"] for r in arm} & {r["seed"] for r in base})
    outcomes = [o for o in OUTCOMES if all(o[0] in r for r in arm + base)]  # discovery: on the testbed only
    results = {}
    for key, _, _, _, _ in outcomes:
        diffs = paired_differences(outcome_values(arm, key), outcome_values(base, key), key)
        results[key] = (statistics.mean(diffs) if diffs else None, half_width(diffs) if diffs else None, diffs)
    adjusted = holm({key: t_test_p(diffs) for key, (_, _, diffs) in results.items()})
    lines = [
        f"{arm_name} (arm) vs {base_name} (baseline): {len(seeds)} paired seeds, arm − baseline, mean [95% "
        f"t-interval]; p: two-sided paired t-test; Holm: adjusted over the {len(outcomes)} outcomes (α = {ALPHA})",
        "",
        f"| outcome | better | {base_name} | {arm_name} | arm − baseline | p | Holm p | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, what, better, scale, digits in outcomes:
        diff, half, diffs = results[key]
        p = t_test_p(diffs)
        means = [statistics.mean(v[key] for v in outcome_values(rs, key)) * scale for rs in (base, arm)]
        lines.append(
            f"| {what} | {'higher' if better > 0 else 'lower'} | {means[0]:.{digits}f} | {means[1]:.{digits}f} | "
            f"{diff_text(diff, half, scale, digits)} | {'–' if p is None else f'{p:.3f}'} | "
            f"{'–' if key not in adjusted else f'{adjusted[key]:.3f}'} | "
            f"{verdict(diff, adjusted.get(key), better, len(diffs))} |"
        )
    if any("families_discovered" in r for r in arm + base):
        found = [sum(r["families_discovered"] for r in rs) for rs in (arm, base)]
        total = [sum(r["families"] for r in rs) for rs in (arm, base)]
        lines.append(
            f"\ndiscovery: families whose careful path passed {DISCOVERY_SHARE:.0%} of their samples "
            f"({DISCOVERY_WINDOW}-step mean): {found[0]} of {total[0]} in the arm runs, {found[1]} of {total[1]} in "
            f"the baseline runs (never: counted as step {arm[0]['steps'] + 1 if arm else '–'})"
        )
    elif any(o[0] == "discovery_step" for o in outcomes):
        never = [sum(r["discovery_step"] is None for r in rs) for rs in (arm, base)]
        lines.append(
            f"\ndiscovery: the careful path passed {DISCOVERY_SHARE:.0%} of the samples in {len(arm) - never[0]} of "
            f"{len(arm)} arm runs and {len(base) - never[1]} of {len(base)} baseline runs (never: counted as step "
            f"{arm[0]['steps'] + 1 if arm else '–'})"
        )
    lines += ["", action_report(arm, arm_name), action_report(base, f"{base_name} (baseline)", baseline=True)]
    return "\n".join(line for line in lines if line is not None) + "\n"


def action_report(rows: list[dict], name: str, baseline: bool = False) -> str | None:
    """The action size of an arm: each `action/…` / `algo/…changed_frac` / `…weight_dev_mean` it logs, over steps
    and seeds; an arm that never acted is flagged (a baseline is GRPO: 0 is what it should log)."""
    metrics = sorted({k for r in rows for k in r["action"]})
    if not metrics:
        return f"action size of {name}: none logged (no action/changed_frac or action/weight_dev_mean)"
    parts = []
    for metric in metrics:
        values = [r["action"][metric] for r in rows if metric in r["action"]]
        mean, acting = statistics.mean(v[0] for v in values), statistics.mean(v[1] for v in values)
        note = " — NEVER ACTED: its differences are noise" if acting == 0 and not baseline else ""
        parts.append(f"{metric} {mean:.3g} (not 0 on {acting:.0%} of steps){note}")
    return f"action size of {name}: " + "; ".join(parts)


def plot(rows: list[dict], out: Path, smooth: int, title: str) -> Path:
    """plot.py over every run: the two arms as two groups (their exp_name), mean ± std over seeds."""
    figure = out / "compare.png"
    metrics = ["entropy/mean", "entropy/forking_mean", "rollout/accuracy"]
    if any("discovery_step" in r for r in rows):
        metrics.append("rollout/careful_frac")
    runs = [str(out / "runs" / r["run_dir"]) for r in rows]
    command = [sys.executable, "plot.py", *runs, "--out", str(figure), "--band", "std"]
    command += ["--smooth", str(smooth), "--title", f"{title} (mean ± std over seeds)"]
    for metric in metrics:
        command += ["--metric", metric]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return figure


# ─── main ─────────────────────────────────────────────────────────────────────────────────────────
def script_sha(script: str) -> str:
    return hashlib.sha256((REPO / script).read_bytes()).hexdigest()[:16]


def job_list(first_seed: int, seeds: int, reuse: bool) -> list[tuple[str, int]]:
    """(role, seed) of every run, the two arms of a seed together; with a reused baseline the arm's runs first (the
    other comparison may still be running the baselines)."""
    jobs = [(role, seed) for seed in range(first_seed, first_seed + seeds) for role in ("arm", "baseline")]
    return sorted(jobs, key=lambda job: job[0] == "baseline") if reuse else jobs


def make_plan(args, extra: list[str]) -> dict:
    """Per role: the script, its flags (all but seed, run name and output dir) and the config a finished run must
    match to be reused."""
    plan = {}
    for role, script, own in (("arm", args.arm, args.arm_flags), ("baseline", args.baseline, args.baseline_flags)):
        label = f"{role}-{Path(script).stem}"  # exp_name: plot.py draws the two arms as two groups
        flags = ["--exp-name", label, "--total-steps", str(args.steps), "--eval-every", str(args.steps)]
        flags += FIXED_FLAGS + (TINY_FLAGS if args.tiny else []) + shlex.split(own) + extra
        plan[role] = {"script": script, "flags": flags}
        plan[role]["config"] = {"script": script, "script_sha256": script_sha(script), "flags": flags}
    return plan


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arm", help="the idea: a training script of this repository (e.g. myidea.py)")
    ap.add_argument("--baseline", default="grpo.py", help="the script it is compared with")
    ap.add_argument("--seeds", type=int, default=8, help="paired seeds (choose before running)")
    ap.add_argument(
        "--first-seed", type=int, default=1, help="the seeds are first … first + N − 1 (new seeds: a replication)"
    )
    ap.add_argument("--steps", type=int, default=120, help="rollout steps per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (2: the two arms of a seed side by side)")
    ap.add_argument("--out", default=None, help="runs, logs, runs file, figure (default: runs/compare/ARM-vs-BASE)")
    ap.add_argument("--arm-flags", default="", help="flags of the arm only, one string (one flag: --arm-flags='--x')")
    ap.add_argument("--baseline-flags", default="", help="flags of the baseline only, one string")
    ap.add_argument("--tiny", action="store_true", help="2 seeds, 3 steps, tiny batches (what the tests run)")
    ap.add_argument(
        "--reuse-baseline",
        default=None,
        help="another comparison's --out: its baseline runs of the same configuration are used, not rerun (the arm "
        "runs first; a baseline that comparison is still running is waited for)",
    )
    args = ap.parse_args(argv)
    if args.tiny:
        args.seeds, args.steps = 2, 3
    for script in (args.arm, args.baseline):
        if not (REPO / script).is_file():
            sys.exit(f"error: {script}: no such script in {REPO}")
    name = f"{Path(args.arm).stem}-vs-{Path(args.baseline).stem}"
    out = Path(args.out or f"runs/compare{'-tiny' if args.tiny else ''}/{name}").resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    plan = make_plan(args, extra)
    plan["reuse"] = Path(args.reuse_baseline).resolve() if args.reuse_baseline else None
    previous = read_runs_file(out / "runs.jsonl")
    stale = sorted({r["role"] for r in previous if r["config"] != plan[r["role"]]["config"]})
    if stale:
        sys.exit(
            f"error: {out / 'runs.jsonl'} holds {' and '.join(stale)} runs made with other settings or another "
            f"version of the script; choose another --out (or delete that folder)"
        )
    finished = {(r["role"], r["seed"]): r for r in previous}
    jobs = job_list(args.first_seed, args.seeds, plan["reuse"] is not None)
    todo = [job for job in jobs if job not in finished]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs finished before; load: {uptime()}", flush=True)
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        try:
            rows = list(pool.map(lambda job: run_one(*job, plan, out, finished), jobs))
        except RuntimeError as error:
            sys.exit(f"error: {error}")
    if todo:
        print(f"{len(todo)} runs in {(time.time() - start) / 60:.1f} min; load after: {uptime()}\n")
    text = report(rows, args.arm, args.baseline)
    if extra or args.arm_flags or args.baseline_flags:
        text += f"\nflags: both {shlex.join(extra) or '–'}; arm {args.arm_flags or '–'}; "
        text += f"baseline {args.baseline_flags or '–'}\n"
    (out / "report.md").write_text(text)
    print(text)
    figure = plot(rows, out, 1 if args.tiny else 5, f"{args.arm} vs {args.baseline}")
    print(f"runs file: {out / 'runs.jsonl'}\nfigure: {figure}")


if __name__ == "__main__":
    main()
