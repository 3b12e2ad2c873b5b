"""The testbed study: every method on the CPU testbed with the same rollout budget and several seeds.

    python benchmarks/testbed_study.py                       # the README study (11 methods × 3 seeds, 2 jobs at once)
    python benchmarks/testbed_study.py --tiny                # 1 seed, 2 steps per method (what the test runs)

Each method trains `--steps` rollout steps of 16 prompts × 8 responses (the same rollout budget for all), then
`eval_math.py` evaluates its final model on the testbed's 500 test problems (avg@n, pass@n). Runs are paired:
two jobs share the 2 cores, and step times are compared only as a ratio to GRPO measured in the same study.
Hyper-parameters are each paper's defaults as the scripts ship them; nothing is tuned for one method and not for
GRPO. Writes `<out>/study.json`, `<out>/study.md` (the README table) and a plot.py figure of every method.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFF_POLICY = ["--num-minibatches", "8"]  # 8 updates per rollout: the setting where clipping methods act
METHODS = {  # name: (script, flags)
    "grpo-strict": ("grpo.py", []),
    "grpo-8upd": ("grpo.py", OFF_POLICY),
    "grpo-8upd-symclip": ("grpo.py", [*OFF_POLICY, "--clip-high", "0.2"]),
    "grpo-entropy-bonus": ("grpo.py", ["--ent-coef", "0.001"]),
    "pos-weight-guided": ("grpo.py", ["--pos-weight-schedule", "entropy-guided"]),
    "opefo": ("opefo.py", []),
    "steer": ("steer.py", OFF_POLICY),
    "clip-cov": ("clip_cov.py", ["--method", "clip-cov", *OFF_POLICY]),
    "kl-cov": ("clip_cov.py", ["--method", "kl-cov", *OFF_POLICY]),
    "adaptive-id": ("adaptive_clip.py", ["--schedule", "increase-decrease", *OFF_POLICY]),
    "adaptive-od": ("adaptive_clip.py", ["--schedule", "oscillatory-decay", *OFF_POLICY]),
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_one(name: str, seed: int, args) -> dict:
    script, flags = METHODS[name]
    run_dir = Path(args.out) / "runs" / f"{name}__{seed}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    train = [sys.executable, script, *flags, "--seed", str(seed), "--total-steps", str(args.steps),
             "--eval-every", "0", "--checkpoint-every", "0", "--log-completions-every", "0",
             "--output-dir", str(run_dir.parent), "--run-name", run_dir.name, "--grader-workers", "1", *args.extra]
    log = open(Path(args.out) / f"{name}__{seed}.log", "w")
    subprocess.run(train, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    evaluate = [sys.executable, "eval_math.py", "--model", str(run_dir), "--n", str(args.eval_n), "--seed", str(seed),
                "--grader-workers", "1", "--output-dir", str(run_dir / "eval"),
                *(["--limit", str(args.eval_limit)] if args.eval_limit else [])]
    subprocess.run(evaluate, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (result,) = json.loads((run_dir / "eval" / "results.json").read_text())["benchmarks"].values()  # the default task
    entropy = [r["entropy/mean"] for r in rows]
    k = max(1, len(rows) // 10)
    return {"method": name, "seed": seed, "entropy_initial": statistics.mean(entropy[:k]),
            "entropy_final": statistics.mean(entropy[-k:]), "entropy_auc": statistics.mean(entropy),
            "flow_increase": statistics.mean(r["entropy/flow_increase"] for r in rows),
            "flow_decrease": statistics.mean(r["entropy/flow_decrease"] for r in rows),
            "response_length": statistics.mean(r["rollout/response_length_mean"] for r in rows),
            "step_s": statistics.median(r["time/step_s"] for r in rows),
            "avg": result["avg@n"], "pass": result["pass@k"][str(args.eval_n)], "run_dir": str(run_dir)}


def mean_std(values) -> str:
    values = list(values)
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def table(results: list[dict], eval_n: int) -> str:
    grpo_step = statistics.mean(r["step_s"] for r in results if r["method"] == "grpo-strict")
    lines = [f"| method | entropy initial | entropy final | entropy AUC (mean over steps) | D/I (decreasing ÷ increasing "
             f"flow) | eval avg@{eval_n} % | eval pass@{eval_n} % | response length | step time ÷ GRPO |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in METHODS:
        rs = [r for r in results if r["method"] == name]
        if rs:
            lines.append(f"| {name} | {mean_std(r['entropy_initial'] for r in rs)} | "
                         f"{mean_std(r['entropy_final'] for r in rs)} | {mean_std(r['entropy_auc'] for r in rs)} | "
                         f"{statistics.mean(r['flow_decrease'] / max(r['flow_increase'], 1e-12) for r in rs):.2f} | "
                         f"{100 * statistics.mean(r['avg'] for r in rs):.1f} | "
                         f"{100 * statistics.mean(r['pass'] for r in rs):.1f} | "
                         f"{statistics.mean(r['response_length'] for r in rs):.1f} | "
                         f"{statistics.mean(r['step_s'] for r in rs) / grpo_step:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/study", help="directory of the runs, logs, table and figure")
    ap.add_argument("--steps", type=int, default=150, help="rollout steps per run (the same budget for every method)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (2 cores)")
    ap.add_argument("--eval-n", type=int, default=4)
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first K test problems")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    ap.add_argument("--tiny", action="store_true", help="1 seed, 2 steps, tiny batches and evaluation")
    args = ap.parse_args()
    args.extra = []
    if args.tiny:
        args.steps, args.seeds, args.eval_n, args.eval_limit = 2, 1, 1, 8
        args.extra = ["--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "40", "--micro-batch-size", "8"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = [(name, seed) for seed in range(1, args.seeds + 1) for name in args.methods.split(",")]
    print(f"{len(jobs)} runs, {args.jobs} at once; load before: {uptime()}", flush=True)
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, args), jobs))
    print(f"done in {(time.time() - start) / 60:.1f} min; load after: {uptime()}")
    (Path(args.out) / "study.json").write_text(json.dumps(results, indent=1))
    markdown = table(results, args.eval_n)
    (Path(args.out) / "study.md").write_text(markdown)
    print(markdown)
    figure = Path(args.out) / "study.png"
    subprocess.run([sys.executable, "plot.py", *sorted({r["run_dir"] for r in results}), "--out", str(figure),
                    "--smooth", "1"], cwd=REPO, check=True)  # as logged: the README figure
    print(f"figure: {figure}")


if __name__ == "__main__":
    main()
