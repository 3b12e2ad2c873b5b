"""Throughput of the grader (common/reward.py) on MATH-500 reference solutions.

    python benchmarks/bench_grader.py [--data-dir ../shared/data] [--num-workers 2]

Cases (500 items each; golds = the ``answer`` field):
  reference : the full reference ``solution``; its last \\boxed{} equals the gold, so the string fast
              path in the parent decides every item (no worker is involved)
  no-fast   : the same responses with the fast path switched off (monkeypatched in this process), so
              every item is parsed and verified by math-verify in a worker: the slow path when the
              answer is right (verify short-circuits on identical expressions)
  wrong     : "\\boxed{<gold of the next problem with a different answer>}" (all must score 0): the
              realistic slow path; plain-number pairs are decided by the fast path, the rest
              (symbolic answers, which need sympy simplification) by math-verify
For each case: ``score`` on a freshly started idle pool (start-up excluded; caches cold), the same from a
stopped pool (start-up included), and a second pass on the now warm pool (sympy's cache and the workers'
gold cache warm, as in a long training run).
Baseline: plain sequential math-verify, ``verify(parse("$<answer>$"), parse(<solution>))`` in a loop,
run in a fresh interpreter (cold, like the workers), first and second pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import reward  # noqa: E402

BASELINE = r"""
import json, sys, time
from math_verify import parse, verify
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for rep in range(2):
    t0 = time.perf_counter()
    correct = sum(bool(verify(parse("$" + r["answer"] + "$"), parse(r["solution"]))) for r in rows)
    print(correct, time.perf_counter() - t0, flush=True)
"""


def load_math500(data_dir: Path) -> list[dict]:
    with open(data_dir / "math500" / "test.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def fresh_state(num_workers: int, start: bool) -> None:
    """Stop the pool, clear the parent's caches; optionally start a new pool and wait until it is ready."""
    reward.shutdown_workers()
    reward._clean.cache_clear()
    reward._canon.cache_clear()
    reward._parse_gold.cache_clear()
    if start:
        with reward._POOL_LOCK:
            reward._get_pool().wait_ready(num_workers)


def run(responses, golds, num_workers):
    t0 = time.perf_counter()
    scores = reward.score(responses, golds, num_workers=num_workers, timeout_s=5.0)
    return scores, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    w = args.num_workers

    rows = load_math500(Path(args.data_dir))
    n = len(rows)
    golds = [r["answer"] for r in rows]
    wrong = []
    for i, g in enumerate(golds):
        j = (i + 1) % n
        while reward._canon(golds[j]) == reward._canon(g):
            j = (j + 1) % n
        wrong.append(f"The answer is \\boxed{{{golds[j]}}}.")
    cases = {"reference": [r["solution"] for r in rows], "no-fast": [r["solution"] for r in rows], "wrong": wrong}

    print(f"MATH-500: {n} items; score() with {w} workers; os.cpu_count()={os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    fast_equiv = reward._fast_equiv
    for name, responses in cases.items():
        n_fast = sum(fast_equiv(reward.extract_answer(r) or "", g) is not None for r, g in zip(responses, golds))
        if name == "no-fast":
            reward._fast_equiv, n_fast = (lambda pred, gold: None), 0
        fresh_state(w, start=False)
        cold, t_cold = run(responses, golds, w)
        fresh_state(w, start=True)
        first, t_first = run(responses, golds, w)
        second, t_second = run(responses, golds, w)
        reward._fast_equiv = fast_equiv
        print(
            f"score[{name}] correct {int(sum(first))}/{n} (other passes {int(sum(cold))}, {int(sum(second))}); "
            f"fast path decided {n_fast}/{n}; timeouts {first.timeouts + cold.timeouts + second.timeouts}\n"
            f"    {n / t_first:9.1f} items/s  started pool, excluding start-up ({t_first:.2f}s)\n"
            f"    {n / t_cold:9.1f} items/s  including pool start-up ({t_cold:.2f}s)\n"
            f"    {n / t_second:9.1f} items/s  second pass, warm pool ({t_second:.2f}s)"
        )
    reward.shutdown_workers()

    if not args.skip_baseline:
        out = subprocess.run(
            [sys.executable, "-c", BASELINE, str(Path(args.data_dir) / "math500" / "test.jsonl")],
            capture_output=True, text=True, check=True,
        ).stdout.split("\n")
        (c1, t1), (c2, t2) = [(int(a), float(b)) for a, b in (line.split() for line in out if line.strip())]
        print(f"baseline: sequential math-verify parse+verify on the reference solutions: correct {c1}/{n}\n"
              f"    {n / t1:9.1f} items/s  fresh interpreter ({t1:.2f}s)\n"
              f"    {n / t2:9.1f} items/s  second pass ({t2:.2f}s)")


if __name__ == "__main__":
    main()
