"""Keyed against stream sampling noise: how much tighter keyed noise makes a paired comparison.

    python benchmarks/keyed_noise_study.py --out runs/keyed --run      # the four comparisons, then the table
    python benchmarks/keyed_noise_study.py --out runs/keyed            # the table from finished runs files

Four `benchmarks/compare.py` comparisons, each 8 paired seeds × 120 steps on the testbed:

    opefo-stream   opefo.py (balance, exact flow) against grpo.py, `--sampling-noise stream` (the default)
    steer-stream   steer.py against grpo.py, stream (the GRPO runs of opefo-stream, --reuse-baseline)
    opefo-keyed    as opefo-stream with `--sampling-noise keyed`
    steer-keyed    as steer-stream with keyed noise (the GRPO runs of opefo-keyed)

With stream noise both arms of a seed already share the random stream at each step's start (the scripts reseed
every step from the seed and the step), so they draw the same tokens only while their batches keep the same shape
and their policies agree; keyed noise ties each draw to (seed, step, prompt, sample, position), so they draw the
same token wherever their policies agree. What that buys is the spread of the paired differences: for each outcome
the table gives the SD of arm − baseline over the seeds under each noise, their ratio keyed / stream with a 95%
interval (F distribution with 7 and 7 degrees of freedom: the two SDs come from different runs), and the seeds a
paired t-test needs for 80% power at a given difference, n = ((1.96 + 0.84) · SD / Δ)². A ratio whose interval
includes 1 is "not measurable at 8 seeds".
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.testbed_study import paired_differences  # noqa: E402

SEEDS, STEPS = 8, 120
F_975_7_7 = 4.99  # 0.975 quantile of F(7, 7): the 95% interval of a ratio of two variances from 8 values each
POWER_Z = 1.96 + 0.84  # two-sided α = 0.05, power 0.8
OUTCOMES = [  # (runs-file key, label, display scale, digits, the difference Δ a comparison should detect)
    ("eval_final", "final eval accuracy (points)", 100, 1, 0.05),
    ("entropy_mean", "mean entropy (nats)", 1, 4, 0.005),
    ("forking_entropy", "forking-token entropy (nats)", 1, 4, 0.02),
]


def comparisons(out: Path) -> list[tuple[str, list[str]]]:
    """(name, compare.py arguments) of the four comparisons, in the order they must start."""
    common = ["--seeds", str(SEEDS), "--steps", str(STEPS), "--jobs", "1"]
    runs = []
    for noise in ("stream", "keyed"):
        extra = ["--", "--sampling-noise", noise]
        opefo = out / f"opefo-{noise}"
        runs.append((f"opefo-{noise}", ["opefo.py", *common, "--out", str(opefo), *extra]))
        steer = ["steer.py", *common, "--out", str(out / f"steer-{noise}"), "--reuse-baseline", str(opefo), *extra]
        runs.append((f"steer-{noise}", steer))
    return runs


def read_runs(path: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["role"] == "arm"], [r for r in rows if r["role"] == "baseline"]


def table(out: Path) -> str:
    lines = [
        "| arm vs GRPO | outcome | SD stream | SD keyed | keyed / stream [95%] | seeds for Δ: stream → keyed |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for arm in ("opefo", "steer"):
        spread = {}
        for noise in ("stream", "keyed"):
            path = out / f"{arm}-{noise}" / "runs.jsonl"
            if not path.exists():
                return f"missing: {path} (run with --run first)"
            rows, base = read_runs(path)
            for key, *_ in OUTCOMES:
                diffs = paired_differences(rows, base, key)
                spread[noise, key] = (statistics.stdev(diffs), len(diffs)) if len(diffs) > 1 else (None, len(diffs))
        for key, label, scale, digits, delta in OUTCOMES:
            (sd_s, n_s), (sd_k, n_k) = spread["stream", key], spread["keyed", key]
            if sd_s is None or sd_k is None or n_s != SEEDS or n_k != SEEDS:
                lines.append(f"| {arm} | {label} | seeds: stream {n_s}, keyed {n_k} (need {SEEDS} each) | | | |")
                continue
            ratio = sd_k / sd_s if sd_s > 0 else math.inf
            low, high = ratio / math.sqrt(F_975_7_7), ratio * math.sqrt(F_975_7_7)
            seeds = [math.ceil((POWER_Z * sd / delta) ** 2) for sd in (sd_s, sd_k)]
            lines.append(
                f"| {arm} | {label} | {scale * sd_s:.{digits}f} | {scale * sd_k:.{digits}f} | "
                f"{ratio:.2f} [{low:.2f}, {high:.2f}] | Δ = {scale * delta:g}: {seeds[0]} → {seeds[1]} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/keyed", help="folder of the four comparisons' folders")
    ap.add_argument("--run", action="store_true", help="run (or resume) the four comparisons first, one at a time")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if args.run:
        for name, arguments in comparisons(out):
            print(f"== {name}: python benchmarks/compare.py {' '.join(arguments)}", flush=True)
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare.py"), *arguments], check=True)
    print(table(out))


if __name__ == "__main__":
    main()
