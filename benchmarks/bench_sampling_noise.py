"""How well the two arms of a comparison share their sampling noise, `--sampling-noise stream` against `keyed`.

    python benchmarks/bench_sampling_noise.py [--steps 30] [--out runs/bench_sampling_noise]   # 6 runs, 2 at a time

Per mode, grpo.py (seed 1, defaults) is run three times: the baseline; an arm that changes the method a little
(`--learning-rate 2.2e-4`, 10% above the default); and an arm that changes nothing but how the HF engine batches the
rollout (`--hf-generation-batch-size 64`, 2 chunks of the step's 128 sequences instead of 1). Printed per arm: the
share of the step's 128 samples whose text is identical to the baseline's (every sample is logged to
completions.jsonl), at some steps and averaged over the run, and the mean |difference| of `entropy/mean` and
`rollout/accuracy`. A finished run (all its steps in metrics.jsonl, made with these flags) is not run again.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = {"base": {}, "lr": {"learning_rate": 2.2e-4}, "bs64": {"hf_generation_batch_size": 64}}  # their flags
SHOWN_STEPS = (1, 2, 3, 5, 10, 15, 20, 25, 30)


def run(mode: str, arm: str, args) -> Path:
    run_dir = Path(args.out) / f"{mode}_{arm}"
    wanted = {"sampling_noise": mode, "total_steps": args.steps, "seed": 1, **ARMS[arm]}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and len(metrics.read_text().splitlines()) == args.steps:
        made_with = json.loads((run_dir / "args.json").read_text())
        if all(made_with[k] == v for k, v in wanted.items()):
            return run_dir
    flags = ["--total-steps", str(args.steps), "--eval-every", "0", "--checkpoint-every", "0"]
    flags += ["--log-completions-every", "1", "--num-completions-to-log", "128", "--grader-workers", "1"]
    flags += [x for k, v in wanted.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    flags += ["--output-dir", str(run_dir.parent), "--run-name", run_dir.name]
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "grpo.py", *flags], cwd=REPO, env=env, check=True, capture_output=True)
    return run_dir


def load(run_dir: Path) -> tuple[dict, dict]:
    samples, metrics = {}, {}
    for line in (run_dir / "completions.jsonl").open():
        row = json.loads(line)
        samples.setdefault(row["step"], []).append(row["response"])
    for line in (run_dir / "metrics.jsonl").open():
        row = json.loads(line)
        metrics[row["step"]] = row
    return samples, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="runs/bench_sampling_noise")
    args = ap.parse_args()
    args.out = str(Path(args.out).resolve())
    jobs = [(mode, arm) for mode in ("stream", "keyed") for arm in ARMS]
    with ThreadPoolExecutor(2) as pool:
        dirs = dict(zip(jobs, pool.map(lambda job: run(*job, args), jobs)))
    print(
        "| noise | arm | identical samples at steps " + ", ".join(map(str, SHOWN_STEPS)) + " | mean over steps | "
        "mean \\|Δ entropy/mean\\| | mean \\|Δ rollout/accuracy\\| |\n|---|---|---|---:|---:|---:|"
    )
    for mode in ("stream", "keyed"):
        base_samples, base_metrics = load(dirs[mode, "base"])
        for arm in ("lr", "bs64"):
            samples, metrics = load(dirs[mode, arm])
            steps = sorted(samples)
            same = {s: sum(a == b for a, b in zip(samples[s], base_samples[s])) / len(samples[s]) for s in steps}
            gaps = [
                statistics.mean(abs(metrics[s][key] - base_metrics[s][key]) for s in steps)
                for key in ("entropy/mean", "rollout/accuracy")
            ]
            shown = " ".join(f"{same[s]:.2f}" for s in SHOWN_STEPS if s in same)
            flag = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in ARMS[arm].items())
            print(
                f"| {mode} | {flag} | {shown} | {statistics.mean(same.values()):.2f} | {gaps[0]:.4f} | {gaps[1]:.4f} |"
            )


if __name__ == "__main__":
    main()
