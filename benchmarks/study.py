"""The study, third pass: pre-registered paired comparisons on the graded testbed, Holm-corrected as one family.

    python benchmarks/study.py bracket            # 1. each regime's GRPO learning rate, bracketed (seeds 201-202)
    python benchmarks/study.py compare            # 2. the registered comparisons (seeds 1-12), resumable
    python benchmarks/study.py report             # the report from the committed runs files -> docs/study3.md
    python benchmarks/study.py compare --only grpo-strict --seeds 12   # part of it (e.g. one arm, first N seeds)

Testbed: `graded` (testbed/graded, `python testbed/build_testbed.py --task graded --out-dir testbed/graded`): six
problem families, each with its own rare careful path, so that a run's accuracy is the sum of several discoveries
rather than one coin flip, and no entropy sits at interchangeable formatting. Every run: 16 prompts x 8 responses,
STEPS rollout steps, keyed sampling noise (the arms of a seed draw the same tokens wherever their policies agree),
then the script's own evaluation (500 test problems x 2 samples).

Registered before any method run (this file, committed first; no flag changes it):
  * the regimes (REGIMES) and, per regime, the learning-rate rule: GRPO's rate is swept on BRACKET_SEEDS (never
    used by a comparison) over a doubling grid from BRACKET_START, extended by one rate on the side of the best
    while the best is at an edge; the chosen rate has the highest mean final eval accuracy and a lower and a
    higher neighbour that both score worse ("bracketed"). Every arm of the regime uses that rate;
  * the arms (ARMS) and the comparisons (COMPARISONS): arm - baseline paired by seed over SEEDS seeds;
  * the outcomes (OUTCOMES, the ones of benchmarks/compare.py): final eval accuracy, mean entropy, forking-token
    entropy, discovery step (the mean over the six families of the step where the family's careful share, a
    5-step mean, first passes 50%; never: STEPS + 1);
  * the test: two-sided paired t-test per comparison and outcome, Holm-adjusted over the whole family
    (len(COMPARISONS) x len(OUTCOMES) tests), alpha 0.05; verdicts "resolved better/worse" or "not resolved";
  * the claims (CLAIMS): which paper's claim each (comparison, outcome) tests, and its direction.
Everything else the report prints (step time, action sizes, families discovered, seed sizing) is exploratory.

Runs files: `runs/study3/bracket/runs.jsonl` and `runs/study3/compare/runs.jsonl` (one JSON line per finished run,
the summary of benchmarks/compare.py); a rerun skips finished runs and refuses rows made with another version of a
script, of common/, of the testbed model or of the summary code, or with other flags; where they are missing (a
fresh checkout) the committed copies are the start. The committed runs were made with the code of commit
RUNS_CODE_COMMIT (its scripts, common/ and testbed/graded); the code changed after them (the grader's soft limit), so
they are rerun or resumed from a worktree of that commit, given this checkout's runs files:
    git worktree add ../study3 f51cd60 && mkdir -p ../study3/runs/study3/compare ../study3/runs/study3/bracket
    cp docs/study3/compare.runs.jsonl ../study3/runs/study3/compare/runs.jsonl   # and bracket likewise
    cd ../study3 && python benchmarks/study.py compare
Copy the runs files by hand to docs/study3/bracket.runs.jsonl and docs/study3/compare.runs.jsonl to commit them;
`report` regenerates docs/study3.md from those, and tests/test_study.py checks that the two are equal.
"""

import argparse
import hashlib
import inspect
import math
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.compare import (  # noqa: E402
    ACTION_METRIC,
    ALPHA,
    DISCOVERY_SHARE,
    DISCOVERY_WINDOW,
    OUTCOMES,
    family_discovery_step,
    holm,
    outcome_values,
    read_runs_file,
    regularized_beta,
    run_one,
    script_sha,
    summarise,
    t_test_p,
    verdict,
)
from benchmarks.testbed_study import diff_text, half_width, paired_differences, uptime  # noqa: E402

POWER = 0.8  # the report's seed sizing (section 5, exploratory; added after the runs)
PAPER_SCALE_POINTS = 3.0  # ... and the accuracy gain it sizes for: the papers report gains of a few points
RUNS_CODE_COMMIT = "f51cd60"  # the scripts, common/ and testbed/graded the committed runs were made with (added after)

# ─── the registered protocol ──────────────────────────────────────────────────────────────────────
STEPS = 120
SEEDS = list(range(1, 13))  # 12 paired seeds per comparison
BRACKET_SEEDS = [201, 202]  # the learning-rate sweep's seeds: no comparison reuses them
TASK_FLAGS = ["--train-data", "graded", "--eval-data", "graded", "--model", "testbed/graded"]
RUN_FLAGS = ["--total-steps", str(STEPS), "--eval-every", str(STEPS), "--sampling-noise", "keyed"]
RUN_FLAGS += ["--checkpoint-every", "0", "--keep-checkpoints", "1", "--log-completions-every", "0"]
RUN_FLAGS += ["--grader-workers", "1", "--num-eval-problems", "500", "--eval-n", "2"]
REGIMES = {  # update regime: the flags every run of it gets
    "strict": [],  # one update per rollout (GRPO-strict, OPEFO, positive-advantage reweighting)
    "mb8": ["--num-minibatches", "8", "--no-filter-groups"],  # Clip-Cov's / KL-Cov's recipe, no dynamic sampling
    "mb16": ["--num-minibatches", "16", "--micro-batch-size", "8"],  # STEER's and FEC's recipe
}
BRACKET_START = {"strict": 2e-4, "mb8": 5e-5, "mb16": 5e-5}  # the middle of the first three rates (the defaults)
BRACKET_MAX_RATES = 6
ARMS = {  # name: (regime, script, flags)
    "grpo-strict": ("strict", "grpo.py", []),
    "opefo": ("strict", "opefo.py", []),  # λ rule balance, exact flow (the script's defaults)
    "pos-weight": ("strict", "grpo.py", ["--pos-weight-schedule", "entropy-guided"]),  # relative δ (default)
    "grpo-mb16": ("mb16", "grpo.py", []),
    "steer": ("mb16", "steer.py", []),
    "grpo-mb16-symclip": ("mb16", "grpo.py", ["--clip-high", "0.2"]),  # FEC blends with a symmetric ε_std = 0.2
    "fec": ("mb16", "adaptive_clip.py", []),  # schedule increase-decrease (the paper's best; the default)
    "grpo-mb8": ("mb8", "grpo.py", []),
    "clip-cov": ("mb8", "clip_cov.py", ["--method", "clip-cov"]),
    "kl-cov": ("mb8", "clip_cov.py", ["--method", "kl-cov"]),
}
COMPARISONS = [  # (arm, baseline), in the order they are run
    ("opefo", "grpo-strict"),
    ("pos-weight", "grpo-strict"),
    ("steer", "grpo-mb16"),
    ("fec", "grpo-mb16-symclip"),
    ("clip-cov", "grpo-mb8"),
    ("kl-cov", "grpo-mb8"),
]
STUDY_OUTCOMES = ["eval_final", "entropy_mean", "forking_entropy", "discovery_step"]
CLAIMS = {  # arm: the paper whose claims the comparison tests (each: accuracy and entropy above its GRPO's)
    "opefo": "OPEFO, arXiv 2605.11491",
    "pos-weight": "positive-advantage reweighting, arXiv 2511.05993",
    "steer": "STEER, arXiv 2510.10150",
    "fec": "flexible entropy control, arXiv 2602.09782",
    "clip-cov": "Clip-Cov, Cui et al., arXiv 2505.22617",
    "kl-cov": "KL-Cov, Cui et al., arXiv 2505.22617",
}
CLAIMED = {  # outcome: what the papers claim of it (the discovery step is this project's reading of "exploration")
    "eval_final": "accuracy above GRPO's",
    "entropy_mean": "entropy above GRPO's (less collapse)",
    "forking_entropy": "forking-token entropy above GRPO's",
    "discovery_step": "better ways found sooner (exploration; the project's reading)",
}
OUT = REPO / "runs" / "study3"
DOCS = REPO / "docs" / "study3"


# ─── runs ─────────────────────────────────────────────────────────────────────────────────────────
def arm_flags(name: str, learning_rate: float) -> list[str]:
    regime, _, flags = ARMS[name]
    return [
        "--exp-name",
        name,
        *TASK_FLAGS,
        *RUN_FLAGS,
        *REGIMES[regime],
        *flags,
        "--learning-rate",
        f"{learning_rate:g}",
    ]


def inputs_sha() -> str:
    """What a run's row depends on besides its script and flags: the task and grader (common/), the testbed model's
    weights, and the code that turns a finished run into its row (compare.summarise and its constants)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "common").glob("*.py")) + [REPO / "testbed" / "graded" / "model.safetensors"]:
        digest.update(path.read_bytes())
    digest.update((inspect.getsource(summarise) + inspect.getsource(family_discovery_step)).encode())
    digest.update(repr((DISCOVERY_SHARE, DISCOVERY_WINDOW, ACTION_METRIC.pattern)).encode())
    return digest.hexdigest()[:16]


def plan_entry(script: str, flags: list[str]) -> dict:
    """benchmarks/compare.py's run_one plan entry: the script, its flags and the config a finished run must match
    (the script's and the inputs' hashes: a run made with another version of either is not reused)."""
    config = {"script": script, "script_sha256": script_sha(script), "inputs_sha256": inputs_sha(), "flags": flags}
    return {"script": script, "flags": flags, "config": config}


def run_jobs(jobs: list[tuple[str, int]], plan: dict, out: Path, jobs_at_once: int) -> list[dict]:
    """Run the (role, seed) jobs of `plan`, `jobs_at_once` at a time (compare.run_one: <out>/runs/<role>__<seed>,
    one line each in <out>/runs.jsonl); finished runs with the same config are skipped."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    committed = DOCS / f"{out.name}.runs.jsonl"
    if not (out / "runs.jsonl").exists() and committed.exists():  # a fresh checkout resumes from the committed runs
        shutil.copyfile(committed, out / "runs.jsonl")
    rows = read_runs_file(out / "runs.jsonl")
    stale = [r for r in rows if r["role"] in plan and r["config"] != plan[r["role"]]["config"]]
    if stale:
        sys.exit(
            f"error: {out / 'runs.jsonl'} holds {len(stale)} runs of {stale[0]['role']} made with other flags or "
            f"another version of its script or of its inputs (the committed runs: commit {RUNS_CODE_COMMIT}; "
            "the module docstring says how to rerun them there); move that file away to rerun them"
        )
    finished = {(r["role"], r["seed"]): r for r in rows if r["role"] in plan}
    todo = [job for job in jobs if job not in finished]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs finished before; load: {uptime()}", flush=True)
    start = time.time()
    with ThreadPoolExecutor(jobs_at_once) as pool:
        rows = list(pool.map(lambda job: run_one(*job, plan, out, finished), jobs))
    if todo:
        print(f"{len(todo)} runs in {(time.time() - start) / 60:.1f} min; load after: {uptime()}", flush=True)
    return rows


# ─── 1. the learning rate, bracketed ──────────────────────────────────────────────────────────────
def rate_role(regime: str, learning_rate: float) -> str:
    return f"{regime}@{learning_rate:g}"


def bracket_state(rows: list[dict], regime: str) -> tuple[list[float], float | None, bool]:
    """(the rates swept so far, the best one, whether it is bracketed). The grid doubles from BRACKET_START; a rate
    counts once all BRACKET_SEEDS have run at it; the best has the highest mean final eval accuracy (ties: the
    smaller rate); bracketed: both grid neighbours of the best score strictly lower."""
    scores = {}
    for rate in {r["learning_rate"] for r in rows if r["regime"] == regime}:
        evals = [r["eval_final"] for r in rows if r["regime"] == regime and r["learning_rate"] == rate]
        if len(evals) == len(BRACKET_SEEDS):
            scores[rate] = statistics.mean(evals)
    if not scores:
        return [], None, False
    rates = sorted(scores)
    best = max(rates, key=lambda rate: (scores[rate], -rate))
    i = rates.index(best)
    bracketed = 0 < i < len(rates) - 1 and scores[rates[i - 1]] < scores[best] > scores[rates[i + 1]]
    return rates, best, bracketed


def next_rates(rows: list[dict], regime: str) -> list[float]:
    """The rates to run next: the first three around BRACKET_START; then, while the best is not bracketed, one more
    rate beyond the lower end if the best is the lowest rate, else beyond the upper end (the best at the top, or tied
    with its higher neighbour); [] once bracketed or at BRACKET_MAX_RATES rates (then the best is used, reported as
    not bracketed)."""
    rates, best, bracketed = bracket_state(rows, regime)
    start = BRACKET_START[regime]
    if not rates:
        return [start / 2, start, start * 2]
    if bracketed or len(rates) >= BRACKET_MAX_RATES:
        return []
    return [rates[0] / 2] if best == rates[0] else [rates[-1] * 2]


def bracket_plan(regime: str, rate: float) -> dict:
    return plan_entry("grpo.py", arm_flags("grpo-" + regime, rate))


def with_rates(rows: list[dict]) -> list[dict]:
    """Bracketing rows with their regime and learning rate (from the role, regime@rate)."""
    out = []
    for r in rows:
        regime, rate = r["role"].split("@")
        out.append({**r, "regime": regime, "learning_rate": float(rate)})
    return out


def bracket(jobs_at_once: int) -> None:
    out = OUT / "bracket"
    while True:
        rows = with_rates(read_runs_file(out / "runs.jsonl"))
        todo = {regime: next_rates(rows, regime) for regime in REGIMES}
        if not any(todo.values()):
            break
        plan = {rate_role(g, rate): bracket_plan(g, rate) for g, rates in todo.items() for rate in rates}
        plan.update({r["role"]: bracket_plan(r["regime"], r["learning_rate"]) for r in rows})
        jobs = [(role, seed) for role in plan for seed in BRACKET_SEEDS]
        run_jobs(jobs, plan, out, jobs_at_once)
    print(bracket_report(with_rates(read_runs_file(out / "runs.jsonl"))))


def chosen_rates(rows: list[dict]) -> dict:
    """{regime: its chosen rate}: the bracketed best, or the best of BRACKET_MAX_RATES rates; exits while a regime's
    bracketing is unfinished."""
    chosen = {}
    for regime in REGIMES:
        if next_rates(rows, regime):
            sys.exit(f"error: the learning rate of regime {regime} is not bracketed yet: run `study.py bracket` first")
        chosen[regime] = bracket_state(rows, regime)[1]
    return chosen


def bracket_report(rows: list[dict]) -> str:
    lines = [
        f"GRPO's learning rate per regime, final eval accuracy (%, 500 problems x 2) on seeds "
        f"{', '.join(map(str, BRACKET_SEEDS))} (no comparison uses them), {STEPS} steps; * the chosen rate",
        "",
        "| regime | learning rate | eval per seed | mean | discovery step (mean) | chosen |",
        "|---|---:|---|---:|---:|---|",
    ]
    for regime in REGIMES:
        rates, best, bracketed = bracket_state(rows, regime)
        for rate in rates:
            runs = sorted(
                (r for r in rows if r["regime"] == regime and r["learning_rate"] == rate), key=lambda r: r["seed"]
            )
            evals = [100 * r["eval_final"] for r in runs]
            discovery = statistics.mean(v["discovery_step"] for v in outcome_values(runs, "discovery_step"))
            mark = ("* bracketed" if bracketed else "* best, NOT bracketed") if rate == best else ""
            lines.append(
                f"| {regime} | {rate:g} | {', '.join(f'{e:.1f}' for e in evals)} | {statistics.mean(evals):.1f} | "
                f"{discovery:.1f} | {mark} |"
            )
    return "\n".join(lines) + "\n"


# ─── 2. the registered comparisons ────────────────────────────────────────────────────────────────
def compare_plan(rates: dict) -> dict:
    return {name: plan_entry(script, arm_flags(name, rates[regime])) for name, (regime, script, _) in ARMS.items()}


def compare_jobs(seeds: list[int], only: list[str] | None = None) -> list[tuple[str, int]]:
    """(arm, seed) in the order of COMPARISONS, the baseline and the arm of a seed side by side; each arm once."""
    jobs = []
    for arm, base in COMPARISONS:
        for seed in seeds:
            jobs += [job for job in ((base, seed), (arm, seed)) if job not in jobs]
    return [job for job in jobs if only is None or job[0] in only]


def compare(jobs_at_once: int, only: list[str] | None, seeds: int) -> None:
    rates = chosen_rates(with_rates(read_runs_file(OUT / "bracket" / "runs.jsonl")))
    print("learning rates:", ", ".join(f"{regime} {rate:g}" for regime, rate in rates.items()), flush=True)
    run_jobs(compare_jobs(SEEDS[:seeds], only), compare_plan(rates), OUT / "compare", jobs_at_once)
    print(report(read_runs_file(OUT / "compare" / "runs.jsonl"), read_runs_file(OUT / "bracket" / "runs.jsonl")))


# ─── report ───────────────────────────────────────────────────────────────────────────────────────
PATHS_REFERENCE = REPO / "docs" / "comparisons" / "opefo-vs-grpo-replication.runs.jsonl"  # 12 GRPO seeds on paths


def paired_means(arm_rows: list[dict], base_rows: list[dict], key: str) -> list[float | None]:
    """[baseline, arm] means of `key` over the seeds both finished."""
    seeds = {r["seed"] for r in arm_rows} & {r["seed"] for r in base_rows}
    if not seeds:
        return [None, None]
    return [
        statistics.mean(v[key] for v in outcome_values(rs, key) if v["seed"] in seeds) for rs in (base_rows, arm_rows)
    ]


def family_results(rows: list[dict]) -> list[dict]:
    """One result per registered (comparison, outcome): paired differences over the seeds both arms finished, the
    t-test p, and the Holm-adjusted p over the whole family. A comparison not finished on all SEEDS counts as p = 1:
    that can only make the others' adjusted p larger, so a "resolved" verdict stands when it arrives (a "not
    resolved" one may still become resolved)."""
    results = []
    for arm, base in COMPARISONS:
        arm_rows = [r for r in rows if r["role"] == arm]
        base_rows = [r for r in rows if r["role"] == base]
        for key in STUDY_OUTCOMES:
            diffs = paired_differences(outcome_values(arm_rows, key), outcome_values(base_rows, key), key)
            complete = len(diffs) == len(SEEDS)
            results.append(
                {
                    "arm": arm,
                    "baseline": base,
                    "key": key,
                    "diffs": diffs,
                    "p": t_test_p(diffs) if complete else None,
                    "means": paired_means(arm_rows, base_rows, key),
                }
            )
    adjusted = holm({i: (1.0 if r["p"] is None else r["p"]) for i, r in enumerate(results)})
    for i, r in enumerate(results):
        r["holm"] = adjusted[i] if r["p"] is not None else None
    return results


def p_text(p: float | None) -> str:
    return "–" if p is None else f"{p:.3f}"


def outcome_spec(key: str) -> tuple:
    return next(o for o in OUTCOMES if o[0] == key)


def claim_verdict(result: dict) -> str:
    _, _, better, _, _ = outcome_spec(result["key"])
    if result["p"] is None:
        return f"unfinished ({len(result['diffs'])} of {len(SEEDS)} seeds)"
    diff = statistics.mean(result["diffs"])
    text = verdict(diff, result["holm"], better, len(result["diffs"]))
    return {"resolved better": "supported", "resolved worse": "contradicted"}.get(text, text)


def variance_figures(rows: list[dict], events_key: str) -> dict:
    """SD of final eval accuracy over seeds (points) and the share of its variance the discovery events explain (R²
    of a least-squares line of eval on the number of discoveries; None when every run made as many)."""
    evals = [100 * r["eval_final"] for r in rows]
    if events_key == "discovered":
        events = [float(r["discovery_step"] is not None) for r in rows]
    else:
        events = [float(r[events_key]) for r in rows]
    r2 = None
    if statistics.pvariance(events) > 0 and statistics.pvariance(evals) > 0:
        r2 = statistics.correlation(events, evals) ** 2
    return {"n": len(rows), "sd": statistics.stdev(evals), "r2": r2, "events": events}


def t_quantile(df: int, alpha: float) -> float:
    """The |t| at which a two-sided t-test with `df` degrees of freedom gives p = `alpha` (bisection)."""
    low, high = 0.0, 1e4
    for _ in range(200):
        middle = (low + high) / 2
        if regularized_beta(df / 2, 0.5, df / (df + middle * middle)) > alpha:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def detectable_difference(sd: float, seeds: int, alpha: float, power: float = POWER) -> float:
    """The paired mean difference that a two-sided t-test on `seeds` seeds resolves at `alpha` with probability
    about `power`, for paired differences of SD `sd`: (t_{1-alpha/2} + t_{power}) * sd / sqrt(seeds), the usual
    approximation to the noncentral t."""
    df = seeds - 1
    return (t_quantile(df, alpha) + t_quantile(df, 2 * (1 - power))) * sd / math.sqrt(seeds)


def seeds_needed(sd: float, difference: float, alpha: float, most: int = 500) -> int | None:
    """The fewest paired seeds whose detectable difference is at most `difference` (None: more than `most`)."""
    if difference <= 0:
        return None
    return next((n for n in range(2, most + 1) if detectable_difference(sd, n, alpha) <= difference), None)


def power_table(results: list[dict]) -> list[str]:
    """Section 5's seed sizing from the measured paired SDs (computed after the runs: exploratory)."""
    strictest = ALPHA / len(results)  # Holm's first step; its last step tests at ALPHA itself
    lines = [
        f"Seeds against the measured paired SDs ({POWER:.0%} power; Holm tests the smallest p at α/{len(results)} "
        f"= {strictest:.4f} and the largest at α = {ALPHA}): the difference that {len(SEEDS)} seeds resolve, and the "
        f"seeds that would resolve the measured difference (eval: also a {PAPER_SCALE_POINTS:g}-point gain, the "
        "papers' scale) at Holm's first step.",
        "",
        f"| arm vs baseline | outcome | seeds | SD of the paired differences | measured difference | resolvable at "
        f"{len(SEEDS)} seeds, α/{len(results)} | at α = {ALPHA} | seeds for the measured difference | seeds for "
        f"{PAPER_SCALE_POINTS:g} points |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["key"] not in ("eval_final", "discovery_step") or len(r["diffs"]) < 2:
            continue
        _, what, _, scale, digits = outcome_spec(r["key"])
        sd, diff = statistics.stdev(r["diffs"]) * scale, abs(statistics.mean(r["diffs"])) * scale
        needed = [seeds_needed(sd, diff, strictest)]
        needed.append(seeds_needed(sd, PAPER_SCALE_POINTS, strictest) if r["key"] == "eval_final" else None)
        needed_text = ["–" if n is None else str(n) for n in needed]
        if r["key"] != "eval_final":
            needed_text[1] = ""
        lines.append(
            f"| {r['arm']} vs {r['baseline']} | {what} | {len(r['diffs'])} | {sd:.{digits}f} | {diff:.{digits}f} | "
            f"{detectable_difference(sd, len(SEEDS), strictest):.{digits}f} | "
            f"{detectable_difference(sd, len(SEEDS), ALPHA):.{digits}f} | {needed_text[0]} | {needed_text[1]} |"
        )
    return lines + ["", "–: more than 500 seeds, or no difference measured."]


def report(rows: list[dict], bracket_rows: list[dict]) -> str:
    results = family_results(rows)
    lines = [
        "# The study, third pass: the registered comparisons on the graded testbed",
        "",
        "Generated by `python benchmarks/study.py report` from docs/study3/bracket.runs.jsonl and "
        "docs/study3/compare.runs.jsonl; the protocol is registered in benchmarks/study.py; the runs were made with "
        f"the code of commit {RUNS_CODE_COMMIT}.",
        "",
        "## 1. The learning rate, bracketed per regime",
        "",
        bracket_report(with_rates(bracket_rows)),
        "## 2. The testbed: graded against paths (GRPO-strict, final eval accuracy over seeds)",
        "",
        "| testbed | seeds | SD of final eval (points) | variance explained by the discoveries (R²) | discoveries |",
        "|---|---:|---:|---:|---|",
    ]
    reference = read_runs_file(PATHS_REFERENCE)
    for name, runs, key in (
        ("graded, GRPO-strict", [r for r in rows if r["role"] == "grpo-strict"], "families_discovered"),
        ("paths, GRPO-strict", [r for r in reference if r["role"] == "baseline"], "discovered"),
        ("graded, OPEFO", [r for r in rows if r["role"] == "opefo"], "families_discovered"),
        ("paths, OPEFO", [r for r in reference if r["role"] == "arm"], "discovered"),
    ):
        if len(runs) < 2:
            lines.append(f"| {name} | {len(runs)} | – | – | – |")
            continue
        v = variance_figures(runs, key)
        if key == "discovered":
            found = f"{int(sum(v['events']))} of {len(runs)} runs found the careful path"
        else:
            found = "families found per run: " + " ".join(str(int(e)) for e in sorted(v["events"]))
        r2 = "– (the same number in every run)" if v["r2"] is None else f"{v['r2']:.2f}"
        lines.append(f"| {name} | {v['n']} | {v['sd']:.1f} | {r2} | {found} |")
    lines += [
        "",
        "paths: the runs of docs/comparisons/opefo-vs-grpo-replication (seeds 101-112, the same flags but "
        "learning rate 2e-4, testbed/model); graded: this study's runs (seeds 1-12). R²: of a least-squares line of "
        "final eval on the number of discoveries (paths: 0 or 1; graded: 0 to 6 families), within one arm.",
        "",
        f"## 3. The registered comparisons ({len(results)} tests, Holm-adjusted together, α = {ALPHA})",
        "",
        "| arm vs baseline | outcome | better | baseline | arm | arm − baseline [95%] | p | Holm p | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        _, what, better, scale, digits = outcome_spec(r["key"])
        diffs = r["diffs"]
        diff_cell = diff_text(statistics.mean(diffs), half_width(diffs), scale, digits) if diffs else "–"
        means = ["–" if m is None else f"{m * scale:.{digits}f}" for m in r["means"]]
        lines.append(
            f"| {r['arm']} vs {r['baseline']} | {what} | {'higher' if better > 0 else 'lower'} | {means[0]} | "
            f"{means[1]} | {diff_cell} | {p_text(r['p'])} | "
            f"{p_text(r['holm'])} | {claim_verdict(r)} |"
        )
    lines += [
        "",
        "## 4. The claims against the papers",
        "",
        "Supported: resolved in the claimed direction after Holm over the family; contradicted: resolved against it; "
        "otherwise not resolved. Each cell: verdict, arm − baseline [95%].",
        "",
        "| paper | arm vs baseline | " + " | ".join(CLAIMED[key] for key in STUDY_OUTCOMES) + " |",
        "|---|---|" + "---|" * len(STUDY_OUTCOMES),
    ]
    for arm, base in COMPARISONS:
        cells = []
        for r in (r for r in results if r["arm"] == arm):
            _, _, _, scale, digits = outcome_spec(r["key"])
            diffs = r["diffs"]
            diff_cell = diff_text(statistics.mean(diffs), half_width(diffs), scale, digits) if diffs else "–"
            cells.append(f"{claim_verdict(r)}, {diff_cell}")
        lines.append(f"| {CLAIMS[arm]} | {arm} vs {base} | " + " | ".join(cells) + " |")
    lines += ["", "## 5. Exploratory (not part of the registered family)", ""]
    lines += [
        "| arm | seeds | step time vs baseline [95%] | families discovered (of 6 per run) | action/changed_frac | "
        "action/weight_dev_mean |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name in ARMS:
        runs = [r for r in rows if r["role"] == name]
        if not runs:
            lines.append(f"| {name} | 0 | – | – | – | – |")
            continue
        base = next((b for a, b in COMPARISONS if a == name), None)
        step = "–"
        if base:
            diffs = paired_differences(runs, [r for r in rows if r["role"] == base], "step_s")
            step = diff_text(statistics.mean(diffs), half_width(diffs), 1, 3) + " s" if diffs else "–"
        action = [
            statistics.mean(r["action"].get(k, [0.0])[0] for r in runs)
            for k in ("action/changed_frac", "action/weight_dev_mean")
        ]
        found = sum(r.get("families_discovered", 0) for r in runs)
        lines.append(
            f"| {name} | {len(runs)} | {step} | {found} of {6 * len(runs)} | {action[0]:.3f} | {action[1]:.3f} |"
        )
    lines += ["", *power_table(results)]
    return "\n".join(lines) + "\n"


# ─── main ─────────────────────────────────────────────────────────────────────────────────────────
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("bracket", "compare", "report"))
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--only", nargs="*", default=None, help="compare: only these arms (names of ARMS)")
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="compare: the first N of the registered seeds")
    ap.add_argument("--runs", default=str(DOCS), help="report: the folder of the runs files (default docs/study3)")
    args = ap.parse_args(argv)
    if args.only and set(args.only) - set(ARMS):
        sys.exit(f"error: --only {' '.join(sorted(set(args.only) - set(ARMS)))}: not an arm of {', '.join(ARMS)}")
    if not 1 <= args.seeds <= len(SEEDS):
        sys.exit(f"error: --seeds must be 1 … {len(SEEDS)}, got {args.seeds}")
    if args.what == "bracket":
        bracket(args.jobs)
    elif args.what == "compare":
        compare(args.jobs, args.only, args.seeds)
    else:
        runs = Path(args.runs)
        text = report(read_runs_file(runs / "compare.runs.jsonl"), read_runs_file(runs / "bracket.runs.jsonl"))
        (runs / "README.md" if runs != DOCS else REPO / "docs" / "study3.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
