"""Median step time of `grpo.py --total-steps 20` with 1 and 2 torch threads, on an idle machine and with one
competing CPU-bound job (a busy loop on one core), interleaved; prints the load next to every figure.

    python benchmarks/bench_threads.py [--steps 20] [--reps 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median_step(threads: int, steps: int, out: str) -> float:
    name = f"t{threads}_{len(os.listdir(out))}"
    subprocess.run(
        [
            sys.executable,
            "grpo.py",
            "--threads",
            str(threads),
            "--total-steps",
            str(steps),
            "--eval-every",
            "0",
            "--checkpoint-every",
            "0",
            "--output-dir",
            out,
            "--run-name",
            name,
        ],
        cwd=REPO,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        capture_output=True,
    )
    rows = [json.loads(line) for line in (Path(out) / name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["time/step_s"] for r in rows[1:])  # step 1 warms up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    out = tempfile.mkdtemp()
    results = {}
    for rep in range(args.reps):
        for busy in (False, True):
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            for threads in (1, 2):
                load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load average:")[1]
                t = median_step(threads, args.steps, out)
                results.setdefault((busy, threads), []).append(t)
                print(
                    f"rep {rep} {'1 competing job' if busy else 'idle':>15} threads {threads}: {t:.2f} s/step"
                    f"  (load{load.strip()})",
                    flush=True,
                )
            if competitor:
                competitor.kill()
    print("\n| machine | 1 thread | 2 threads | 2 ÷ 1 |\n|---|---:|---:|---:|")
    for busy in (False, True):
        one, two = (statistics.median(results[(busy, t)]) for t in (1, 2))
        print(f"| {'one competing job' if busy else 'idle'} | {one:.2f} s | {two:.2f} s | {two / one:.2f} |")


if __name__ == "__main__":
    main()
