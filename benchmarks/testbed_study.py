"""The testbed study: every method on the `paths` testbed, tuned alike, several seeds, each checked to act.

    python benchmarks/testbed_study.py                   # the study in docs/study.md (~90 min, 2 cores, 2 jobs)
    python benchmarks/testbed_study.py --report FILE     # tables and claims again from a runs file (no training)
    python benchmarks/testbed_study.py --tiny            # every method, 1 seed, 2 steps (what CI runs)

Protocol. Three update regimes: `strict` (one update per rollout, as GRPO-strict and OPEFO), `mb8` (8 minibatch
updates per rollout, Clip-Cov's recipe; its DAPO dynamic sampling is off so that the regime differs in one thing)
and `mb16` (16 minibatch updates of 8 sequences, STEER's and FEC's recipes). For each regime GRPO's learning rate
is swept over 3 values on seeds 1-2 and the best mean eval avg@4 is used for every method of that regime (no method
gets tuning GRPO does not get); the sweep's seeds are not reused, so the comparisons do not inherit the lucky pair
that picked the rate. Every run trains `--steps` rollout steps of 16 prompts x 8 responses, then
`eval_math.py` samples 4 responses to each of the 500 test problems. A run is paired with GRPO of its regime by seed
(same data order and first rollout): differences are means over common seeds with a 95% t-interval.

Each method is checked to act from its own metrics (clip fractions, selected tokens, weights, lambda); a method
whose mechanism never moved from its no-op value is reported as not acting and left out of the claims.
One row per run goes to `<out>/runs.jsonl`; `<out>/study.md` (tables and claims) is generated from it, and
plot.py draws `<out>/study_<regime>.png`. The study resumes: a finished run (its `row.json`) is not run again.
The write-up is docs/study.md: its tables are `--report docs/testbed_study_runs.jsonl` (the committed runs file),
which tests/test_testbed_study.py checks line by line.
"""

import argparse
import json
import math
import os
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
from common.data import paths_format  # noqa: E402

REGIMES = {  # name: (flags of every run in the regime, GRPO learning rates swept)
    "strict": ([], (1e-4, 2e-4, 4e-4)),
    "mb8": (["--num-minibatches", "8", "--no-filter-groups"], (2.5e-5, 5e-5, 1e-4)),
    "mb16": (["--num-minibatches", "16", "--micro-batch-size", "8"], (2.5e-5, 5e-5, 1e-4)),
}
ENT_COEF = 0.001
SWEEP_SEEDS = (1, 2)  # the methods' seeds follow: 3, 4, 5 (… 7)
OPEFO_READINGS = [(rule, est) for rule in ("net-flow", "balance") for est in ("exact", "paper", "paper-expected")]
METHODS = {  # name: (regime, script, flags, seeds, how it acts)
    "grpo-strict": ("strict", "grpo.py", [], 5, None),
    "entropy-bonus": ("strict", "grpo.py", ["--ent-coef", str(ENT_COEF)], 3, "bonus"),
    "pos-weight-guided": ("strict", "grpo.py", ["--pos-weight-schedule", "entropy-guided"], 3, "pos_weight"),
    **{
        "opefo" if (rule, est) == OPEFO_READINGS[0] else f"opefo-{rule}-{est}": (
            "strict",
            "opefo.py",
            [
                "--lambda-rule",
                rule,
                "--flow-estimator",
                est,
                *(["--micro-batch-size", "128"] if est == "paper-expected" else []),
            ],
            5 if (rule, est) == OPEFO_READINGS[0] else 3,
            "lambda",
        )
        for rule, est in OPEFO_READINGS
    },
    "grpo-mb8": ("mb8", "grpo.py", [], 3, "clip"),
    "clip-cov": ("mb8", "clip_cov.py", ["--method", "clip-cov"], 3, "cov"),
    "kl-cov": ("mb8", "clip_cov.py", ["--method", "kl-cov"], 3, "cov"),
    "grpo-mb16": ("mb16", "grpo.py", [], 3, "clip"),
    "grpo-mb16-symclip": ("mb16", "grpo.py", ["--clip-high", "0.2"], 3, "clip"),
    "steer": ("mb16", "steer.py", [], 3, "steer"),
    "adaptive-id": ("mb16", "adaptive_clip.py", ["--schedule", "increase-decrease"], 3, "fec"),
    "adaptive-od": ("mb16", "adaptive_clip.py", ["--schedule", "oscillatory-decay"], 3, "fec"),
}
BASELINE = {"strict": "grpo-strict", "mb8": "grpo-mb8", "mb16": "grpo-mb16"}  # whose learning rate is swept
COMPARED_WITH = {
    "adaptive-id": "grpo-mb16-symclip",  # FEC blends with a symmetric ε_std = 0.2: so is its GRPO
    "adaptive-od": "grpo-mb16-symclip",
}
ACTION = {  # kind: (what is measured, its value at one step: 0 when the method does nothing at that step)
    "clip": ("tokens clipped (fraction)", lambda r, a: r["train/clip_frac_low"] + r["train/clip_frac_high"]),
    "bonus": (
        "α·H ÷ mean \\|A\\|",
        lambda r, a: a["ent_coef"] * r["entropy/mean"] / max(r["rollout/advantage_abs_mean"], 1e-12),
    ),
    "pos_weight": ("1 − λ (weight of A > 0 tokens)", lambda r, a: 1 - r["algo/pos_weight"]),
    "lambda": ("\\|λ\\| (token weights 1 ± λ)", lambda r, a: abs(r["algo/lambda"])),
    "steer": ("1 − mean weight", lambda r, a: 1 - r["algo/weight_mean"]),
    "cov": ("tokens selected (fraction)", lambda r, a: r["algo/selected_frac"]),
    "fec": (
        "shift of the mean ratio bounds from 1 ± ε_std, at steps where tokens were clipped",
        lambda r, a: (
            (abs(r["algo/ratio_max_mean"] - 1 - a["eps_std"]) + abs(r["algo/ratio_min_mean"] - 1 + a["eps_std"]))
            * (r["train/clip_frac_low"] + r["train/clip_frac_high"] > 0)
        ),
    ),
}
LAMBDA_RANGE = (2.5e-4, 1.75e-3)  # OPEFO paper (arXiv 2605.11491): λ* of its runs
CLAIMS = [  # (paper, claim, method, baseline method or a constant, figure, claimed sign of method − baseline)
    (
        "Cui et al. 2505.22617 §2",
        "GRPO's entropy collapses (falls by more than half)",
        "grpo-strict",
        0.5,
        "entropy_ratio",
        -1,
    ),
    ("Cui et al. 2505.22617 §2", "… also with 16 minibatch updates", "grpo-mb16", 0.5, "entropy_ratio", -1),
    (
        "OPEFO 2605.11491 Tab. 1",
        "strict on-policy GRPO beats 8 updates per rollout (50.1 vs 45.5)",
        "grpo-strict",
        "grpo-mb8",
        "eval_avg",
        +1,
    ),
    (
        "Jin et al. 2511.05993 §4",
        "more updates per rollout lower entropy further (each at its tuned rate)",
        "grpo-mb16",
        "grpo-strict",
        "entropy_final",
        -1,
    ),
    (
        "DAPO 2503.14476 §3.1",
        "clip-higher (ε_high 0.28) keeps entropy above symmetric clipping (0.2)",
        "grpo-mb16",
        "grpo-mb16-symclip",
        "entropy_final",
        +1,
    ),
    (
        "OPEFO 2605.11491 §5",
        "an entropy bonus keeps entropy above GRPO's",
        "entropy-bonus",
        "grpo-strict",
        "entropy_final",
        +1,
    ),
    (
        "Jin et al. 2511.05993 Tab. 2",
        "positive-advantage reweighting keeps entropy above GRPO's (0.187 vs 0.118)",
        "pos-weight-guided",
        "grpo-strict",
        "entropy_final",
        +1,
    ),
    (
        "Jin et al. 2511.05993 Tab. 2",
        "… and raises avg accuracy (45.7 vs 44.1)",
        "pos-weight-guided",
        "grpo-strict",
        "eval_avg",
        +1,
    ),
    ("OPEFO 2605.11491 §5", "OPEFO keeps entropy above strict GRPO's", "opefo", "grpo-strict", "entropy_final", +1),
    (
        "OPEFO 2605.11491 Tab. 1",
        "OPEFO raises avg accuracy over strict GRPO (52.4 vs 50.1)",
        "opefo",
        "grpo-strict",
        "eval_avg",
        +1,
    ),
    ("OPEFO 2605.11491 §5", "OPEFO raises pass@k over strict GRPO", "opefo", "grpo-strict", "eval_pass", +1),
    (
        "OPEFO 2605.11491 §5",
        "λ* is small and positive (about 2.5e-4 … 1.75e-3)",
        "opefo",
        LAMBDA_RANGE,
        "lambda_median",
        0,
    ),
    ("Cui et al. 2505.22617 §4", "Clip-Cov keeps entropy above GRPO's", "clip-cov", "grpo-mb8", "entropy_final", +1),
    ("Cui et al. 2505.22617 §4", "Clip-Cov raises accuracy over GRPO", "clip-cov", "grpo-mb8", "eval_avg", +1),
    ("Cui et al. 2505.22617 §4", "KL-Cov keeps entropy above GRPO's", "kl-cov", "grpo-mb8", "entropy_final", +1),
    ("Cui et al. 2505.22617 §4", "KL-Cov raises accuracy over GRPO", "kl-cov", "grpo-mb8", "eval_avg", +1),
    ("STEER 2510.10150 Tab. 1", "STEER raises accuracy over GRPO (48.6 vs 44.2)", "steer", "grpo-mb16", "eval_avg", +1),
    ("STEER 2510.10150 §1", "STEER keeps entropy above GRPO's", "steer", "grpo-mb16", "entropy_final", +1),
    (
        "FEC 2602.09782 §4",
        "increase-decrease raises entropy in its first half",
        "adaptive-id",
        "grpo-mb16-symclip",
        "entropy_first_half",
        +1,
    ),
    (
        "FEC 2602.09782 §4",
        "increase-decrease raises accuracy over GRPO",
        "adaptive-id",
        "grpo-mb16-symclip",
        "eval_avg",
        +1,
    ),
    (
        "FEC 2602.09782 §4",
        "oscillatory decay raises accuracy over GRPO",
        "adaptive-od",
        "grpo-mb16-symclip",
        "eval_avg",
        +1,
    ),
]
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]  # t quantile 0.975, 1 … 29 d.o.f.
T975 += [2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]
T975 += [2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045]  # more seeds: 29's (a little wider)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_one(method: str, lr: float, seed: int, phase: str, args) -> dict:
    """Train and evaluate one run (or read its row if it finished before)."""
    regime, script, flags, _, _ = METHODS[method]
    run_dir = Path(args.out) / "runs" / f"{method}__lr{lr:g}__{seed}"
    config = {
        "steps": args.steps,
        "eval_every": args.eval_every,
        "eval_n": args.eval_n,
        "eval_limit": args.eval_limit,
        "extra": args.extra,
    }
    if (run_dir / "row.json").exists():
        row = json.loads((run_dir / "row.json").read_text())
        if row.get("config") == config and row["phase"] == phase:
            return row
    shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short, or made with other settings, starts again
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    train = [
        sys.executable,
        script,
        *REGIMES[regime][0],
        *flags,
        "--exp-name",
        method,
        "--seed",
        str(seed),
        "--learning-rate",
        str(lr),
        "--total-steps",
        str(args.steps),
        "--eval-every",
        str(args.eval_every),
        "--checkpoint-every",
        "0",
        "--keep-checkpoints",
        "1",
        "--log-completions-every",
        "0",
        "--grader-workers",
        "1",
        "--output-dir",
        str(run_dir.parent),
        "--run-name",
        run_dir.name,
        *args.extra,
    ]
    evaluate = [
        sys.executable,
        "eval_math.py",
        "--model",
        str(run_dir),
        "--n",
        str(args.eval_n),
        "--seed",
        str(seed),
        "--grader-workers",
        "1",
        "--output-dir",
        str(run_dir / "eval"),
        *(["--limit", str(args.eval_limit)] if args.eval_limit else []),
    ]
    start = time.time()
    with open(Path(args.out) / "logs" / f"{run_dir.name}.log", "w") as log:
        for command in (train, evaluate):
            subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=3600)
    row = {
        **run_row(method, lr, seed, phase, run_dir, args.eval_n),
        "config": config,
        "wall_s": round(time.time() - start, 1),
        "finished_at": time.time(),
    }
    (run_dir / "row.json").write_text(json.dumps(row))
    write_runs_file(Path(args.out))
    print(
        f"{time.strftime('%H:%M:%S')} {run_dir.name}: entropy {row['entropy_initial']:.3f} → "
        f"{row['entropy_final']:.3f}, avg@{args.eval_n} {row['eval_avg']:.3f}, {row['wall_s']:.0f} s; {uptime()}",
        flush=True,
    )
    return row


RUNS_FILE_LOCK = threading.Lock()  # runs finish in parallel threads; one rewrite of runs.jsonl at a time


def write_runs_file(out: Path) -> list[dict]:
    """`<out>/runs.jsonl` from every finished run's row.json (rewritten after each run: a cut study keeps its rows)."""
    with RUNS_FILE_LOCK:
        rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/row.json"))]
        tmp = out / "runs.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, out / "runs.jsonl")
        return rows


def run_row(method: str, lr: float, seed: int, phase: str, run_dir: Path, eval_n: int) -> dict:
    """Every figure of one run, from its metrics.jsonl and its eval_math output."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "entropy/mean" in r]  # training steps (evaluation-only lines have no entropy)
    entropy = [r["entropy/mean"] for r in steps]
    tail, half = max(1, len(entropy) // 10), max(1, len(entropy) // 2)
    (result,) = json.loads((run_dir / "eval" / "results.json").read_text())["benchmarks"].values()
    completions = [json.loads(line) for line in (run_dir / "eval" / "completions.jsonl").read_text().splitlines()]
    regime, script, flags, _, kind = METHODS[method]
    run_args = json.loads((run_dir / "args.json").read_text())
    row = {
        "method": method,
        "regime": regime,
        "script": script,
        "flags": " ".join(REGIMES[regime][0] + flags),
        "learning_rate": lr,
        "seed": seed,
        "phase": phase,
        "steps": len(steps),
        "entropy_initial": entropy[0],
        "entropy_final": statistics.mean(entropy[-tail:]),
        "entropy_mean": statistics.mean(entropy),
        "entropy_first_half": statistics.mean(entropy[:half]),
        "entropy_ratio": statistics.mean(entropy[-tail:]) / entropy[0],
        "eval_avg": result["avg@n"],
        "eval_pass": result["pass@k"][str(eval_n)],
        "careful_frac": sum(paths_format(c["response"]) == "careful" for c in completions) / len(completions),
        "response_length": result["response_length_mean"],
        "eval_entropy": result["entropy_mean"],
        "step_s": statistics.median(r["time/step_s"] for r in steps),
        "acted": None,
        "action": None,
    }
    if kind:
        values = [ACTION[kind][1](r, run_args) for r in steps]
        row["action"], row["acted"] = statistics.mean(values), sum(abs(v) > 1e-12 for v in values) / len(values)
    if script == "opefo.py":
        row["lambda_median"] = statistics.median(r["algo/lambda"] for r in steps)
        for rule, est in OPEFO_READINGS:
            key = f"algo/lambda_{rule}_{est}".replace("-", "_")
            values = [r[key] for r in steps]
            row[key] = [statistics.median(values), min(values), max(values), sum(v > 0 for v in values) / len(values)]
    return row


def run_jobs(jobs: list[tuple], args) -> list[dict]:
    with ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(lambda job: run_one(*job, args), jobs))


def best_rates(rows: list[dict]) -> dict:
    """Per regime, GRPO's learning rate of the best mean eval avg@n over the sweep's seeds (ties: the smaller)."""
    best = {}
    for regime, method in BASELINE.items():
        by_lr = {}
        for r in rows:
            if r["method"] == method and r["phase"] == "sweep":
                by_lr.setdefault(r["learning_rate"], []).append(r["eval_avg"])
        if by_lr:
            best[regime] = max(sorted(by_lr), key=lambda lr: statistics.mean(by_lr[lr]))
    return best


# ─── report: everything below reads only the runs file ────────────────────────────────────────────
def mean_std(values, scale: float = 1.0, digits: int = 3) -> str:
    values = [scale * v for v in values]
    if not values:
        return "–"
    return (
        f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
        if len(values) > 1
        else f"{values[0]:.{digits}f}"
    )


def paired_differences(rows: list[dict], base: list[dict], key: str) -> list[float]:
    """rows − base of `key`, one per common seed (in the order of `rows`)."""
    base_by_seed = {r["seed"]: r[key] for r in base}
    return [r[key] - base_by_seed[r["seed"]] for r in rows if r["seed"] in base_by_seed]


def paired(rows: list[dict], base: list[dict], key: str):
    """(mean difference, 95% half-width or None, seeds) of rows − base over their common seeds."""
    diffs = paired_differences(rows, base, key)
    if not diffs:
        return None, None, 0
    return statistics.mean(diffs), half_width(diffs), len(diffs)


def half_width(values: list[float]):
    """Half-width of the 95% t-interval of the mean (None for one value)."""
    n = len(values)
    return T975[min(n, len(T975) + 1) - 2] * statistics.stdev(values) / math.sqrt(n) if n > 1 else None


def diff_text(diff, half, scale: float = 1.0, digits: int = 3) -> str:
    if diff is None:
        return "–"
    return f"{scale * diff:+.{digits}f}" + (
        f" [{scale * (diff - half):+.{digits}f}, {scale * (diff + half):+.{digits}f}]" if half is not None else ""
    )


def study_rows(rows: list[dict]) -> dict:
    """{method: the runs of its chosen learning rate}, in METHODS order."""
    rates = best_rates(rows)
    return {
        m: sorted(
            [
                r
                for r in rows
                if r["method"] == m and r["learning_rate"] == rates.get(spec[0]) and r["phase"] == "method"
            ],
            key=lambda r: r["seed"],
        )
        for m, spec in METHODS.items()
    }


def report(rows: list[dict], eval_n: int) -> str:
    rates, by_method = best_rates(rows), study_rows(rows)
    out = [
        f"GRPO learning-rate sweep (seeds 1-2; eval avg@{eval_n} % on the test split, mean over seeds; "
        "the chosen rate in bold):\n",
        "| regime | " + " | ".join(f"lr {i + 1}" for i in range(3)) + " |",
        "|---|---|---|---|",
    ]
    for regime, method in BASELINE.items():
        cells = []
        for lr in sorted({r["learning_rate"] for r in rows if r["method"] == method and r["phase"] == "sweep"}):
            values = [
                r["eval_avg"]
                for r in rows
                if r["method"] == method and r["learning_rate"] == lr and r["phase"] == "sweep"
            ]
            text = f"{lr:g}: {100 * statistics.mean(values):.1f}"
            cells.append(f"**{text}**" if lr == rates.get(regime) else text)
        out.append(f"| {regime} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"Per method (mean ± std over seeds; entropy in nats per token; eval: `eval_math.py` on the test "
        f"split, {eval_n} samples per problem; careful: share of eval responses in the rare careful format):\n",
        f"| method | regime, lr | seeds | acts | entropy initial | entropy final | entropy mean | eval avg@{eval_n} % "
        f"| eval pass@{eval_n} % | careful % | response length | step time ÷ GRPO |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, rs in by_method.items():
        if not rs:
            continue
        regime = METHODS[method][0]
        acted = acts(rs)
        out.append(
            f"| {method} | {regime}, {rs[0]['learning_rate']:g} | {len(rs)} | {acted} | "
            f"{mean_std(r['entropy_initial'] for r in rs)} | {mean_std(r['entropy_final'] for r in rs)} | "
            f"{mean_std(r['entropy_mean'] for r in rs)} | {mean_std((r['eval_avg'] for r in rs), 100, 1)} | "
            f"{mean_std((r['eval_pass'] for r in rs), 100, 1)} | "
            f"{mean_std((r['careful_frac'] for r in rs), 100, 1)} | "
            f"{mean_std((r['response_length'] for r in rs), 1, 1)} | "
            f"{mean_std(step_ratios(rs, by_method[BASELINE[regime]]), 1, 2)} |"
        )
    out += [
        "",
        "Does each method act? (its mechanism's value per step, 0 when it does nothing; mean over steps and "
        "seeds, and the share of steps where it was not 0):\n",
        "| method | what is measured | mean | steps acting | verdict |",
        "|---|---|---:|---:|---|",
    ]
    for method, rs in by_method.items():
        if rs and rs[0]["acted"] is not None:
            out.append(
                f"| {method} | {ACTION[METHODS[method][4]][0]} | {statistics.mean(r['action'] for r in rs):.2g} | "
                f"{100 * statistics.mean(r['acted'] for r in rs):.0f}% | {acts(rs)} |"
            )
    out += [
        "",
        "Difference to GRPO of the same regime (method − GRPO, paired by seed: mean [95% t-interval]; "
        "adaptive clipping against the symmetric-clip GRPO, as its ε_std = 0.2 on both sides; a method that did "
        "not act is not compared):\n",
        f"| method | vs | entropy final | entropy mean | eval avg@{eval_n} (points) | eval pass@{eval_n} (points) | "
        "careful (points) | response length | step time ÷ GRPO |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, rs in by_method.items():
        base = COMPARED_WITH.get(method, BASELINE[METHODS[method][0]])
        if rs and method != base and by_method[base]:
            if acts(rs) not in ("reference", "acts"):
                out.append(f"| {method} | {base} | not compared: {acts(rs).lower()} acted |" + " |" * 6)
                continue
            cells = [
                diff_text(*paired(rs, by_method[base], k)[:2], scale, d)
                for k, scale, d in (
                    ("entropy_final", 1, 3),
                    ("entropy_mean", 1, 3),
                    ("eval_avg", 100, 1),
                    ("eval_pass", 100, 1),
                    ("careful_frac", 100, 1),
                    ("response_length", 1, 1),
                )
            ]
            ratios = step_ratios(rs, by_method[base])
            ratio_half = half_width(ratios)
            mean_ratio = statistics.mean(ratios)
            cells.append(
                f"{mean_ratio:.2f}"
                + (f" [{mean_ratio - ratio_half:.2f}, {mean_ratio + ratio_half:.2f}]" if ratio_half is not None else "")
            )
            out.append(f"| {method} | {base} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"OPEFO: λ of every reading (median over steps, then mean over seeds; range over all steps; steps with "
        f"λ > 0). Logged = computed on the default runs' batches; trained = the run that trains with it. "
        f"Paper: {LAMBDA_RANGE[0]:g} … {LAMBDA_RANGE[1]:g}.\n",
        "| reading | λ median (logged) | λ range (logged) | λ > 0 | λ median (trained) | entropy final | "
        f"eval avg@{eval_n} % |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for rule, est in OPEFO_READINGS:
        key = f"algo/lambda_{rule}_{est}".replace("-", "_")
        logged = [r[key] for r in by_method["opefo"]]
        trained = by_method["opefo" if (rule, est) == OPEFO_READINGS[0] else f"opefo-{rule}-{est}"]
        if logged:
            out.append(
                f"| {rule}, {est} | {statistics.mean(v[0] for v in logged):+.2e} | "
                f"{min(v[1] for v in logged):+.1e} … {max(v[2] for v in logged):+.1e} | "
                f"{100 * statistics.mean(v[3] for v in logged):.0f}% | "
                + (
                    f"{statistics.mean(r['lambda_median'] for r in trained):+.2e} | "
                    f"{mean_std(r['entropy_final'] for r in trained)} | "
                    f"{mean_std((r['eval_avg'] for r in trained), 100, 1)} |"
                    if trained
                    else "– | – | – |"
                )
            )
    out += [
        "",
        "Claims (holds: the 95% interval of method − baseline lies on the claimed side; fails: on the other "
        "side; unresolved: it contains 0; not compared: the method did not act):\n",
        "| paper | claim | holds on the testbed? | the figure |",
        "|---|---|---|---|",
    ]
    for paper, claim, method, base, key, sign in CLAIMS:
        out.append(f"| {paper} | {claim} | " + " | ".join(verdict(by_method, method, base, key, sign)) + " |")
    return "\n".join(out) + "\n"


def step_ratios(rs: list[dict], base: list[dict]) -> list[float]:
    """Step time ÷ the baseline's, per common seed (runs two at a time share the cores: a ratio, never seconds)."""
    base_by_seed = {r["seed"]: r["step_s"] for r in base}
    return [r["step_s"] / base_by_seed[r["seed"]] for r in rs if r["seed"] in base_by_seed]


def acts(rs: list[dict]) -> str:
    """reference (GRPO-strict: nothing to act), acts (on some step of every seed), never acts, or some seeds."""
    if rs[0]["acted"] is None:
        return "reference"
    return "acts" if all(r["acted"] for r in rs) else "NEVER" if not any(r["acted"] for r in rs) else "some seeds"


def verdict(by_method: dict, method: str, base, key: str, sign: int) -> tuple[str, str]:
    rs = by_method.get(method, [])
    if not rs:
        return "not run", "–"
    if acts(rs) not in ("reference", "acts"):
        return "not compared (did not act)", f"{method}: {statistics.mean(r['action'] for r in rs):.2g}"
    values = [r[key] for r in rs]
    if isinstance(base, tuple):  # a range of the paper: the 95% interval of the mean inside it, or outside it
        m = statistics.mean(values)
        half = half_width(values) or 0.0
        holds = (
            "yes"
            if base[0] <= m - half and m + half <= base[1]
            else "no"
            if m + half < base[0] or m - half > base[1]
            else "unresolved"
        )
        return holds, f"{key} {m:+.2e} [{m - half:+.2e}, {m + half:+.2e}] ({len(values)} seeds)"
    if isinstance(base, float):  # a constant
        diff, half = statistics.mean(values) - base, half_width(values)
        figure = f"{key} {diff + base:.3f}" + (f" [{diff + base - half:.3f}, {diff + base + half:.3f}]" if half else "")
    else:
        if not by_method.get(base):
            return "not run", "–"
        diff, half, n = paired(rs, by_method[base], key)
        points = key.startswith(("eval", "careful"))
        figure = f"{key}: {method} − {base} = {diff_text(diff, half, 100 if points else 1, 1 if points else 3)}"
    if half is None:
        return "unresolved (1 seed)", figure
    low, high = diff - half, diff + half
    return (
        "yes"
        if sign * low > 0 and sign * high > 0
        else "no (the opposite)"
        if sign * high < 0 and sign * low < 0
        else "unresolved"
    ), figure


def plot(rows: list[dict], out: Path, smooth: int) -> list[Path]:
    figures = []
    for regime in REGIMES:
        dirs = [
            str(Path(out) / "runs" / f"{r['method']}__lr{r['learning_rate']:g}__{r['seed']}")
            for m, rs in study_rows(rows).items()
            if METHODS[m][0] == regime
            for r in rs
        ]
        if dirs:
            figure = out / f"study_{regime}.png"
            subprocess.run(
                [
                    sys.executable,
                    "plot.py",
                    *dirs,
                    "--out",
                    str(figure),
                    "--metric",
                    "entropy/mean",
                    "--metric",
                    "eval/accuracy",
                    "--smooth",
                    str(smooth),
                    "--band",
                    "std",
                    "--title",
                    f"testbed study, {regime} (mean ± std over seeds)",
                ],
                cwd=REPO,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            figures.append(figure)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--out",
        default=None,
        help="directory of the runs, logs, runs file, tables and figures "
        "(default: runs/study, with --tiny runs/study-tiny)",
    )
    ap.add_argument("--steps", type=int, default=120, help="rollout steps per run (the same budget for every method)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (2 cores: 2)")
    ap.add_argument(
        "--eval-every", type=int, default=20, help="in-training evaluation (256 problems, n = 1) for the figure"
    )
    ap.add_argument("--eval-n", type=int, default=4, help="eval_math.py samples per test problem")
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first K test problems")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset (GRPO of their regimes runs too)"
    )
    ap.add_argument("--max-seeds", type=int, default=None, help="at most this many seeds per method")
    ap.add_argument("--report", default=None, help="only print the tables and claims of this runs file")
    ap.add_argument(
        "--tiny", action="store_true", help="every method, 1 seed, 2 steps, 2 rates per regime, tiny batches"
    )
    args = ap.parse_args()
    if args.report:
        rows = [json.loads(line) for line in Path(args.report).read_text().splitlines() if line.strip()]
        print(report(rows, args.eval_n))
        return
    args.extra, sweep_seeds, rates = [], SWEEP_SEEDS, {k: v[1] for k, v in REGIMES.items()}
    args.out = args.out or ("runs/study-tiny" if args.tiny else "runs/study")
    if args.tiny:
        args.steps, args.max_seeds, args.eval_n, args.eval_limit, args.eval_every, sweep_seeds = 2, 1, 2, 8, 1, (1,)
        rates = {k: v[:2] for k, v in rates.items()}
        args.extra = [
            "--prompts-per-step",
            "2",
            "--group-size",
            "8",
            "--max-new-tokens",
            "40",
            "--num-eval-problems",
            "4",
        ]
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        sys.exit(f"error: --methods: unknown {', '.join(sorted(unknown))} (known: {', '.join(METHODS)})")
    regimes = {METHODS[m][0] for m in methods}
    start = time.time()
    print(f"load before: {uptime()}", flush=True)
    sweep = [
        (BASELINE[g], lr, seed, "sweep") for g in REGIMES if g in regimes for lr in rates[g] for seed in sweep_seeds
    ]
    rows = run_jobs(sweep, args)
    chosen = best_rates(rows)
    print(f"learning rates chosen: {chosen}", flush=True)
    first = max(sweep_seeds) + 1  # the methods' seeds: not those that chose the rate
    seeds = lambda m: range(first, first + min(METHODS[m][3], args.max_seeds or 99))  # noqa: E731
    jobs = sorted(
        {
            (m, chosen[METHODS[m][0]], s, "method")
            for m in {*methods, *(BASELINE[g] for g in regimes)}
            for s in seeds(m)
        },
        key=lambda job: (job[2], list(METHODS).index(job[0])),
    )  # seed by seed
    run_jobs(jobs, args)
    print(f"done in {(time.time() - start) / 60:.1f} min; load after: {uptime()}")
    rows = write_runs_file(out)
    span = (max(r["finished_at"] for r in rows) - min(r["finished_at"] - r["wall_s"] for r in rows)) / 60
    markdown = report(rows, args.eval_n)
    (out / "study.md").write_text(
        f"{len(rows)} runs, {span:.1f} min from the first start to the last end, {args.jobs} at once\n\n" + markdown
    )
    print(markdown)
    for figure in plot(rows, out, 1 if args.tiny else 5):
        print(f"figure: {figure}")


if __name__ == "__main__":
    main()
