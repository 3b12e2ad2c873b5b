"""Throughput of the grader (common/reward.py) on model-like responses, idle and under CPU load.

    python benchmarks/bench_grader.py [--data-dir DIR] [--num-workers 2] [--group-size 8]
                                      [--timeout-s 5] [--load-procs N] [--skip-load] [--skip-reference]

The mix (MATH-500, deterministic): G responses per problem (G = ``--group-size``, as one GRPO step
grades G responses per gold), each drawn from
  same      30%  the full reference solution: reasoning, then \\boxed{gold}
  equiv     20%  the reasoning, then \\boxed{<an equivalent but different form of the gold>}
                 (1/2 -> 0.5, 0.5 -> \\frac{1}{2}, \\frac{a}{b} -> \\frac{2a}{2b} or a/b, n -> x = n or
                 n.0 or \\frac{2n}{2}, a + b -> b + a, spaced <-> compact matrices, tuples in \\left( \\right),
                 intervals as inequalities, 2\\sqrt{2} -> \\sqrt{8}, \\dfrac, ...)
  format    10%  the reasoning, then the gold in Minerva's "Final Answer: The final answer is $X$. I hope
                 it is correct.", "The answer is $X$." or "**Answer:** $X$"
  other     15%  the reasoning, then \\boxed{<the gold of another problem with a different answer>}
  near      15%  the reasoning, then \\boxed{<a near miss>}: n+1, another numerator, permuted entries,
                 another interval end, one digit changed
  truncated  9%  the first 60% of the reference solution (usually no final answer left)
  patho      1%  power towers, 10^{10^{10}}, 10^6!, nested braces and \\frac, 200 KB strings, lone
                 surrogates (invalid UTF-8 decoded with surrogateescape)
The problems are split in two halves: "warm" figures grade the second half on a pool that has already
graded the first (workers started, imports and sympy's caches warm, golds of the graded step new, as
in training); "cold" figures grade the second half from a stopped pool with empty caches (start-up
included). Each pass prints, per kind, how many items scored 1 (all of same/equiv/format should; none
of other/near/patho; truncated ones are right when the box came early in the solution).

Under load: ``--load-procs`` (default: the number of CPUs) competing busy processes run during the
loaded passes (one competing job per core: 2x load with the 2 workers). Items that scored 1 idle and
0 loaded are correct items lost to the time limit. The loaded pass runs twice: with the per-item
limit counted in CPU time (the default, ``reward.TIME_LIMIT_CLOCK = "cpu"``) and in wall time.

"Reference solutions": the 500 MATH-500 reference solutions against their own answers (the fast
path decides all of them), for comparison with earlier figures. ``--compare-rev REV`` also grades the
mix (warm) with ``common/reward.py`` as of git revision REV.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import reward

KINDS = {"same": 30, "equiv": 20, "format": 10, "other": 15, "near": 15, "truncated": 9, "patho": 1}

PATHOLOGICAL = [
    "\\boxed{9^{9^{9^{9^{9}}}}}",
    "\\boxed{10^{10^{10}}}",
    "\\boxed{1000000!}",
    "\\boxed{" + "{" * 200 + "1" + "}" * 200 + "}",
    "\\boxed{" + "\\frac{1}{" * 50 + "2" + "}" * 50 + "}",
    "\\boxed{" + "1+" * 100_000 + "1}",
    ("lorem ipsum \\frac{" * 12_000)[:200_000],
    "\\boxed{\ud800" + b"\xff\xfe".decode("utf-8", "surrogateescape") + "5}",
]


def uptime() -> str:
    """``uptime`` and the number of processes runnable right now (the load averages lag behind)."""
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = "load average %.2f %.2f %.2f" % os.getloadavg()
    try:
        with open("/proc/loadavg") as f:
            out += f"; runnable now {f.read().split()[3].split('/')[0]}"
    except OSError:
        pass
    return out


def load_math500(data_dir: Path) -> list[dict]:
    with open(data_dir / "math500" / "test.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------
# Building the mix
# ----------------------------------------------------------------------------------------------

_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{?(\d+)\}?\{?(\d+)\}?")
_DEC = re.compile(r"-?\d*\.\d+")
_COEF_SQRT = re.compile(r"(\d+)\s*\\sqrt\{?(\d+)\}?")
_INTERVAL = re.compile(r"^\\?(?:left)?([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*\\?(?:right)?([\])])$")


def equivalent_forms(g: str) -> list[str]:
    """Different strings with the value of the gold ``g`` (by construction; checked by the grader's
    verdicts being reported per kind)."""
    forms = []
    if _INT.fullmatch(g):
        n = int(g)
        forms += [f"x = {n}", f"{n}.0", f"\\frac{{{2 * n}}}{{2}}", f"{n}\\text{{ units}}"]
        if abs(n) >= 1000:
            forms.append(f"{n:,}")
    elif m := _FRAC.fullmatch(g):
        sign, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        forms += [f"{sign}{a}/{b}", f"{sign}\\frac{{{2 * a}}}{{{2 * b}}}", f"{sign}\\dfrac{{{a}}}{{{b}}}"]
        d = b
        for p in (2, 5):
            while d % p == 0:
                d //= p
        if d == 1:
            forms.append(sign + str(a / b))
    elif _DEC.fullmatch(g):
        forms += [g + "0", f"\\frac{{{g.replace('.', '')}}}{{{10 ** len(g.split('.')[1])}}}"]
    elif m := _COEF_SQRT.fullmatch(g):
        forms.append(f"\\sqrt{{{int(m.group(1)) ** 2 * int(m.group(2))}}}")
    elif "\\begin{pmatrix}" in g:
        forms += [re.sub(r"\s+", "", g), g.replace("pmatrix", "bmatrix")]
    elif (m := _INTERVAL.match(g)) and "\\cup" not in g:
        lo, hi = m.group(2), m.group(3)
        gt, lt = (">" if m.group(1) == "(" else "\\ge"), ("<" if m.group(4) == ")" else "\\le")
        lo_lt = "<" if m.group(1) == "(" else "\\le"
        if "infty" in hi and "infty" not in lo:
            forms.append(f"x {gt} {lo}")
        elif "infty" in lo and "infty" not in hi:
            forms.append(f"x {lt} {hi}")
        elif "infty" not in lo:
            forms.append(f"{lo} {lo_lt} x {lt} {hi}")
    elif g.count(",") >= 1 and g.startswith(("(", "\\left(")):
        forms.append("\\left(" + g.replace("\\left(", "").replace("\\right)", "").strip()[1:-1] + "\\right)")
    elif re.fullmatch(r"[^,=]+ [+-] [^,=]+", g) and "\\pm" not in g and "_" not in g:
        a, op, b = re.fullmatch(r"(.+?) ([+-]) (.+)", g).groups()
        if "+" not in b and "-" not in b and "+" not in a and "-" not in a[1:]:
            forms.append(f"{b} + {a}" if op == "+" else f"-{b} + {a}")
    generic = g.replace("\\frac", "\\dfrac")
    if generic != g:
        forms.append(generic)
    if not forms:
        forms.append("\\displaystyle " + g)
    return forms


def near_miss(g: str, rng: random.Random) -> str:
    """A wrong answer close to the gold ``g``."""
    if _INT.fullmatch(g):
        return str(int(g) + rng.choice((-1, 1, 10)))
    if m := _FRAC.fullmatch(g):
        return f"{m.group(1)}\\frac{{{int(m.group(2)) + 1}}}{{{m.group(3)}}}"
    if "\\begin{pmatrix}" in g:
        body = re.search(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", g).group(1)
        rows = [r.strip() for r in body.split("\\\\")]
        rows = [" & ".join(reversed(r.split("&"))) for r in rows] if "&" in body else rows[::-1]
        return "\\begin{pmatrix} " + " \\\\ ".join(rows) + " \\end{pmatrix}"
    if (m := _INTERVAL.match(g)) and not m.group(2).strip().startswith("-\\infty"):
        return ("[" if m.group(1) == "(" else "(") + g[len(g) - len(g.lstrip("\\left")) :].lstrip("\\left")[1:]
    digits = [i for i, c in enumerate(g) if c.isdigit()]
    if digits:
        i = rng.choice(digits)
        return g[:i] + str((int(g[i]) + rng.randint(1, 8)) % 10) + g[i + 1 :]
    return g.replace("+", "-", 1) if "+" in g else g + " + 1"


def reasoning_of(solution: str) -> str:
    """The reference solution up to its last \\boxed (the "reasoning" of a response)."""
    cut = solution.rfind("\\boxed")
    return solution[:cut] if cut > 0 else solution


def build_mix(rows: list[dict], group_size: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """[(kind, response, gold)] with ``group_size`` responses per problem."""
    rng = random.Random(seed)
    golds = [r["answer"] for r in rows]
    kinds, weights = zip(*KINDS.items())
    items, patho = [], 0
    for i, row in enumerate(rows):
        g, sol = row["answer"], row["solution"]
        reasoning = reasoning_of(sol)
        j = (i + 1) % len(rows)
        while reward._canon(golds[j]) == reward._canon(g):
            j = (j + 1) % len(rows)
        for _ in range(group_size):
            kind = rng.choices(kinds, weights)[0]
            if kind == "same":
                text = sol
            elif kind == "equiv":
                text = reasoning + f"\\boxed{{{rng.choice(equivalent_forms(g))}}}$."
            elif kind == "format":
                text = (
                    reasoning.rstrip(" $\\[")
                    + "\n\n"
                    + rng.choice(
                        [
                            f"Final Answer: The final answer is ${g}$. I hope it is correct.",
                            f"The answer is ${g}$.",
                            f"**Answer:** ${g}$",
                        ]
                    )
                )
            elif kind == "other":
                text = reasoning + f"\\boxed{{{golds[j]}}}$."
            elif kind == "near":
                text = reasoning + f"\\boxed{{{near_miss(g, rng)}}}$."
            elif kind == "truncated":
                text = sol[: int(0.6 * len(sol))]
            else:
                text = reasoning + PATHOLOGICAL[patho % len(PATHOLOGICAL)]
                patho += 1
            items.append((kind, text, g))
    return items


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def fresh_state(num_workers: int, start: bool) -> None:
    """Stop the pool, clear the parent's caches; optionally start a new pool and wait until it is ready."""
    reward.shutdown_workers()
    for fn in (reward._clean, reward._canon, reward._parse_gold):
        fn.cache_clear()
    if start:
        with reward._POOL_LOCK:
            reward._get_pool().wait_ready(num_workers)


def timed_score(responses, golds, num_workers, timeout_s):
    t0, c0 = time.perf_counter(), time.process_time()
    scores = reward.score(responses, golds, num_workers=num_workers, timeout_s=timeout_s)
    return scores, time.perf_counter() - t0, time.process_time() - c0


class Load:
    """``n`` competing busy processes (pure Python loops) while in the ``with`` block."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        code = "import time\nt = time.time() + 3600\nwhile time.time() < t:\n    sum(i * i for i in range(1000))\n"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        time.sleep(2.0)  # let the load average see them
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def report(name, kinds, scores, seconds, parent_cpu):
    n = len(kinds)
    right = Counter(k for k, s in zip(kinds, scores) if s == 1.0)
    total = Counter(kinds)
    print(
        f"  {name:46s} {n / seconds:7.1f} items/s ({seconds:6.2f} s; parent CPU {parent_cpu:5.2f} s); "
        f"timeouts {scores.timeouts}, crashes {scores.crashes}, no_answer {scores.no_answer}; scored 1: "
        + ", ".join(f"{k} {right[k]}/{total[k]}" for k in KINDS)
    )


def compare(rev: str, warm_items, items, kinds, w: int, limit: float) -> None:
    """The warm pass with the grader of another git revision, loaded from a temporary file (its workers
    load it by path, as ours do)."""
    import importlib.util
    import tempfile

    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:common/reward.py"], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reward_at_rev.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("reward_at_rev", path)
        other = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = other
        spec.loader.exec_module(other)
        with other._POOL_LOCK:
            other._get_pool().wait_ready(w)
        other.score([r for _, r, _ in warm_items], [g for _, _, g in warm_items], num_workers=w, timeout_s=limit)
        print(f"common/reward.py at {rev}: {uptime()}")
        t0, c0 = time.perf_counter(), time.process_time()
        got = other.score([r for _, r, _ in items], [g for _, _, g in items], num_workers=w, timeout_s=limit)
        got.no_answer = getattr(got, "no_answer", "n/a")
        report(f"warm, grader at {rev}", kinds, got, time.perf_counter() - t0, time.process_time() - c0)
        other.shutdown_workers()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="benchmark files (default: $RLVR_DATA_DIR, else the cache)")
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--timeout-s", type=float, default=5.0)
    ap.add_argument("--load-procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument(
        "--compare-rev",
        default=None,
        help="also grade the mix (warm pool, idle) with common/reward.py as of this git revision",
    )
    args = ap.parse_args()
    w, limit = args.num_workers, args.timeout_s

    from common.data import fetch_file

    rows = load_math500(fetch_file("math500/test.jsonl", args.data_dir).parents[1])  # downloaded and checked if missing
    half = len(rows) // 2
    warm_items = build_mix(rows[:half], args.group_size, seed=1)
    items = build_mix(rows[half:], args.group_size, seed=2)
    kinds = [k for k, _, _ in items]
    responses = [r for _, r, _ in items]
    golds = [g for _, _, g in items]
    print(
        f"grader benchmark: {w} workers, os.cpu_count()={os.cpu_count()}, timeout_s={limit}, "
        f"time limit clock {reward.TIME_LIMIT_CLOCK!r}"
    )
    print(
        f"mix: {len(items)} responses ({len(rows) - half} problems x {args.group_size}), "
        f"mean length {sum(map(len, responses)) / len(items):.0f} chars; kinds "
        + ", ".join(f"{k} {c}" for k, c in sorted(Counter(kinds).items()))
    )
    parser_items = sum(
        reward._fast_equiv(p, g) is None
        for p, g in ((reward.extract_answer(r), g) for r, g in zip(responses, golds))
        if p is not None
    )
    print(f"  items left to the parser after the fast path: {parser_items}/{len(items)}")

    print(f"idle: {uptime()}")
    fresh_state(w, start=False)
    cold, t, c = timed_score(responses, golds, w, limit)
    report("cold (pool start-up and caches included)", kinds, cold, t, c)
    fresh_state(w, start=True)
    first, t, c = timed_score(responses, golds, w, limit)
    report("started pool, cold caches (start-up excluded)", kinds, first, t, c)
    fresh_state(w, start=True)
    timed_score([r for _, r, _ in warm_items], [g for _, _, g in warm_items], w, limit)
    warm, t, c = timed_score(responses, golds, w, limit)
    report("warm (pool warmed on the other half)", kinds, warm, t, c)
    cpu = sorted(reward._POOL.item_cpu, key=lambda x: x[1])
    if cpu:
        print(
            f"  worker CPU per item sent to the parser ({len(cpu)} distinct pairs): median "
            f"{cpu[len(cpu) // 2][1] * 1e3:.1f} ms, max {cpu[-1][1] * 1e3:.0f} ms, max of those scored correct "
            f"{max((x[1] for x in cpu if x[0]), default=0) * 1e3:.0f} ms, total {sum(x[1] for x in cpu):.2f} s "
            f"(limit {limit:g} s)"
        )
    print(f"  after: {uptime()}")

    if not args.skip_load:
        for clock in ("cpu", "wall"):
            reward.TIME_LIMIT_CLOCK = clock
            fresh_state(w, start=True)
            timed_score([r for _, r, _ in warm_items], [g for _, _, g in warm_items], w, limit)
            with Load(args.load_procs):
                print(f"loaded ({args.load_procs} competing busy processes), limit in {clock} time: {uptime()}")
                loaded, t, c = timed_score(responses, golds, w, limit)
                report(f"warm, loaded, {clock}-time limit", kinds, loaded, t, c)
                print(f"  end of pass: {uptime()}")
            lost = sum(a == 1.0 and b != 1.0 for a, b in zip(warm, loaded))
            gained = sum(a != 1.0 and b == 1.0 for a, b in zip(warm, loaded))
            print(
                f"  correct items lost to the time limit under load: {lost} (idle 1 -> loaded 0); "
                f"the other way: {gained}"
            )
        reward.TIME_LIMIT_CLOCK = "cpu"

    if args.compare_rev:
        compare(args.compare_rev, warm_items, items, kinds, w, limit)

    if not args.skip_reference:
        print(f"reference solutions (MATH-500, fast path): {uptime()}")
        sols, ans = [r["solution"] for r in rows], [r["answer"] for r in rows]
        fresh_state(w, start=True)
        ref, t, c = timed_score(sols, ans, w, limit)
        print(f"  correct {int(sum(ref))}/{len(rows)}  {len(rows) / t:9.1f} items/s ({t:.3f} s)")
    reward.shutdown_workers()


if __name__ == "__main__":
    main()
