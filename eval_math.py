"""Evaluate a model on math benchmarks: avg@n, unbiased pass@k, maj@n, lengths, truncation, diversity, entropy.

For every benchmark, sample `n` responses per problem (vLLM on GPU when installed, Hugging Face `generate`
otherwise), grade them with `common.reward.score` (worker processes, hard time limit per item), and report
  avg@n          mean accuracy over all n·P samples (= unbiased pass@1), with its standard error over problems
  pass@k         unbiased estimator 1 − C(n−c, k)/C(n, k) (Chen et al. 2021), k = 1, 2, 4, … ≤ n and k = n,
                 computed as 1 − Π_{i=n−c+1..n} (1 − k/i), averaged over problems
  maj@n          majority vote over the extracted answers: answers are clustered with `is_equiv`
                 (identical strings first, then each new string joins the first cluster whose representative
                 it equals), the largest cluster wins, ties go to the cluster seen first; the winner's
                 representative (its first sample) is graded against the gold. No extractable answer: wrong.
  lengths        mean / median / max response length in tokens (generated tokens, the stop token included,
                 as `grpo.py` counts `rollout/response_length_mean`), truncation rate (no stop token within
                 `max_new_tokens`), answer rate (`extract_answer(...) is not None`)
  diversity      distinct-n for n = 1..4: distinct / total whitespace-separated word n-grams, pooled over the
                 n responses of a problem, averaged over problems (the table shows distinct-4); and the
                 distinct-answer fraction: number of answer clusters (as for maj@n) / n, averaged over problems
  entropy        token-mean over all response tokens of the benchmark, at the sampling temperature:
                 `--entropy sampled` (default) mean −log π_T(sampled token), free from the generation (an
                 unbiased estimate of the entropy when top_p = 1); `--entropy full` the full-vocabulary entropy
                 of softmax(logits / T) from a teacher-forced forward pass (in chunks of positions).
                 With temperature 0 (greedy) both use the unscaled logits (T = 1).

Generation is grpo.py's own (`grpo.generate`): evaluation decodes, stops and counts truncation exactly as
training does. `--model` takes what the training scripts take: a model folder or hub id, a run folder (its newest
checkpoint's model, named with its step) or a checkpoint folder.

Outputs in `--output-dir` (default `eval_out/<model name>__<YYYYmmdd-HHMMSS>`): `results.json` (the metrics
of each benchmark, their macro average, and the exact settings and versions), `results.md` (the Markdown
table that is also printed) and `completions.jsonl` (one line per sampled response).

`--protocol opefo` (the evaluation of the OPEFO paper, arXiv 2605.11491) sets, where the flag is not given:
benchmarks aime24, aime25, amc23, math500, minerva_math, olympiadbench; n = 32 for aime24/aime25/amc23 and
n = 1 for math500/minerva_math/olympiadbench (`name@n` in --benchmarks still wins; other benchmarks use
--n); template qwen-math; temperature 1.0; max_new_tokens 3000. top_p stays 1.0 unless given.

Run:  python eval_math.py                  # CPU, the testbed model on the synthetic `paths` test split
      python eval_math.py --model Qwen/Qwen2.5-Math-7B --protocol opefo
      python eval_math.py --model runs/<run> --benchmarks aime24@32,math500@1 --template qwen-math
      python eval_math.py --benchmarks aime24,math500 --dry-run   # load data, build prompts, check golds

The named benchmarks are downloaded on first use into the data dir (`--data-dir`, else $RLVR_DATA_DIR, else
~/.cache/rlvr-entropy/data) and checked against pinned checksums (common/data.py). The arguments are checked
before anything is loaded, the output folder's writability included: a mistake prints one line `error: ...`
naming the flag to change, exit status 2. While a benchmark generates, a progress bar shows on a terminal (stderr);
Ctrl-C prints one line `interrupted: while <stage>; ...` and exits with status 130. `--threads` is the training
scripts' own: torch threads on CPU, 1 by default (0: torch's default).
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal

try:  # Ctrl-C while torch and transformers load: the one `interrupted:` line of __main__, no traceback
    import numpy as np
    import torch
    import tyro
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from common.data import (
        BENCHMARKS,
        DEFAULT_TASK,
        SYNTHETIC_TASKS,
        DataError,
        build_prompt,
        check_source,
        load_problems,
    )
    from common.reward import extract_answer, is_equiv, score
    from grpo import (
        RunError,
        UsageError,
        build_vllm_engine,
        generate,
        load_pretrained,
        one_line,
        resolve_model,
        stop_token_ids,
        vllm_available,
    )
except KeyboardInterrupt:
    if __name__ != "__main__":
        raise
    print("interrupted: while starting (importing torch and transformers)", file=sys.stderr)
    sys.exit(130)

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
OPEFO_N = {"aime24": 32, "aime25": 32, "amc23": 32, "math500": 1, "minerva_math": 1, "olympiadbench": 1}
OPEFO_MAX_NEW_TOKENS = 3000  # OPEFO's max response length for Qwen2.5-Math-7B (4,096 positions)
DEFAULT_MAX_NEW_TOKENS = {"plain": 64, "qwen-math": 3000, "dapo": 3000}


@dataclass
class Args:
    model: str = "testbed/model"
    """HF model id or folder, a training run folder (its newest model) or a checkpoint folder"""
    benchmarks: str | None = None
    """comma-separated names or files, `name@n` sets n (None: the testbed task paths; the six with --protocol opefo)"""
    data_dir: str | None = None  # benchmark files (None: $RLVR_DATA_DIR, else the download cache)
    skip_invalid: bool = False  # skip (and count) rows without a usable question or answer instead of stopping
    template: Literal["plain", "qwen-math", "dapo"] | None = None  # prompt template (None: qwen-math for chat models)
    n: int = 4  # samples per problem (avg@n, pass@k, maj@n)
    temperature: float | None = None  # sampling temperature (None: 1.0; 0: greedy, n becomes 1)
    top_p: float = 1.0  # nucleus sampling
    max_new_tokens: int | None = None  # response length limit (None: 64 plain, 3000 chat templates and OPEFO)
    seed: int = 0  # sampling seed (the samples of a benchmark do not depend on the others)
    threads: int = 1  # torch threads on CPU, as the training scripts' --threads (0: torch's default)
    batch_size: int = 256  # sequences per HF generation call (the training scripts' --hf-generation-batch-size)
    limit: int | None = None  # first problems of each benchmark only
    output_dir: str | None = None  # where results go (None: eval_out/<model name>__<time>)
    answer_mode: Literal["auto", "boxed", "minerva", "the-answer-is", "answer"] = "auto"  # answer extraction (grader)
    multi_box: bool = False  # several nearby \boxed{} as one set answer ("find all" questions)
    grader_timeout_s: float = 5.0  # time limit per graded response
    grader_workers: int | None = None  # grader worker processes (None: one per core)
    entropy: Literal["sampled", "full"] = "sampled"  # −log π of the sampled tokens, or the full-vocabulary entropy
    entropy_batch_size: int = 8  # sequences per forward of --entropy full
    entropy_chunk_size: int = 1024  # positions per LM-head chunk of --entropy full
    protocol: Literal["none", "opefo"] = "none"  # opefo: the OPEFO paper's benchmarks, n, template and lengths
    engine: Literal["auto", "vllm", "hf"] = "auto"  # auto: vLLM when CUDA and vLLM are there, else HF generate
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    vllm_gpu_memory_utilization: float = 0.85  # fraction of GPU memory vLLM may take
    vllm_max_model_len: int | None = None  # vLLM context length (None: the model's)
    dry_run: bool = False  # load the benchmarks, build the prompts, check every gold grades against itself, and exit


# ─── settings ───────────────────────────────────────────────────────────────────────────────────
def check_args(args: Args) -> list[tuple[str, int]]:
    """Check every argument without loading anything; returns the (benchmark, n) list. Raises UsageError."""
    for flag in (
        "n",
        "max_new_tokens",
        "batch_size",
        "limit",
        "grader_workers",
        "entropy_batch_size",
        "entropy_chunk_size",
        "vllm_max_model_len",
    ):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag, ok, requirement in [
        ("threads", args.threads >= 0, ">= 0 (0 = torch's default)"),
        ("temperature", args.temperature is None or args.temperature >= 0, ">= 0 (0 = greedy)"),
        ("top_p", 0 < args.top_p <= 1, "in (0, 1]"),
        ("grader_timeout_s", args.grader_timeout_s > 0, "> 0"),
        ("vllm_gpu_memory_utilization", 0 < args.vllm_gpu_memory_utilization <= 1, "in (0, 1]"),
    ]:
        if not ok:
            raise UsageError(f"--{flag.replace('_', '-')} must be {requirement}, got {getattr(args, flag)}")
    if args.engine == "vllm" and not vllm_available():
        raise UsageError("--engine vllm needs CUDA and the vllm package; use --engine hf (or auto)")
    try:
        benchmarks = parse_benchmarks(args.benchmarks, args.protocol, args.n)
        for name, _ in benchmarks:
            check_source(name)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--benchmarks: {e}") from None
    data_dir = os.path.expanduser(args.data_dir or "")
    if args.data_dir is not None and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {args.data_dir}: a file, not a directory")
    check_writable_dir(args.output_dir or "eval_out", "--output-dir")  # hours of GPU time must not be lost
    resolve_model(args.model)
    return benchmarks


def check_writable_dir(path: str, flag: str) -> None:
    """Refuse, before anything is loaded, a folder that could not be created or written: the nearest path at or
    above `path` that exists must be a writable directory (not a file: `afile/out`). Raises UsageError naming `flag`."""
    existing = os.path.normpath(os.path.expanduser(path))
    while not os.path.lexists(existing):  # lexists: a dangling link stops the walk (makedirs fails on it)
        existing = os.path.dirname(existing) or os.getcwd()
    if not os.path.isdir(existing):
        kind = "a file, not a directory" if os.path.isfile(existing) else "not a directory"
        raise UsageError(f"{flag} {path}: {existing} is {kind}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} is not writable ({os.path.abspath(existing)} is read-only)")


def parse_benchmarks(spec: str | None, protocol: str, default_n: int) -> list[tuple[str, int]]:
    """`"aime24@32,math500"` -> [("aime24", 32), ("math500", n)], where n comes from the protocol table
    (opefo) or `default_n`. An empty spec means the testbed task (protocol none) or the six benchmarks (opefo)."""
    if not spec:
        spec = ",".join(BENCHMARKS) if protocol == "opefo" else DEFAULT_TASK
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, tail = item.rpartition("@")
        if sep and tail.isdigit() and name:
            n = int(tail)
        else:
            name = item
            n = OPEFO_N.get(name.lower(), default_n) if protocol == "opefo" else default_n
        if n < 1:
            raise ValueError(f"benchmark {item!r}: n must be >= 1 (`name@n`)")
        out.append((name, n))
    if not out:
        raise ValueError(f"no benchmark in {spec!r}")
    if len({name for name, _ in out}) != len(out):
        raise ValueError(f"a benchmark is listed twice in {spec!r}")
    return out


def model_display_name(model_path: str) -> str:
    """Short name for the output folder: `Qwen/Qwen2.5-Math-7B` -> Qwen2.5-Math-7B,
    `runs/r/checkpoints/step_000100/hf` -> r__step_000100, `testbed/model` -> testbed__model."""
    parts = [p for p in os.path.normpath(model_path).split(os.sep) if p and p != "."]
    if not parts:
        return "model"
    if parts[-1] == "hf" and len(parts) >= 4 and parts[-3] == "checkpoints":
        return f"{parts[-4]}__{parts[-2]}"
    if parts[-1] in ("final", "model", "hf") and len(parts) >= 2:  # generic folder names: keep the parent
        return f"{parts[-2]}__{parts[-1]}"
    return parts[-1]


# ─── metrics (pure functions) ───────────────────────────────────────────────────────────────────
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k), computed as 1 − Π_{i=n−c+1..n} (1 − k/i)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_k_values(n: int) -> list[int]:
    """k = 1, 2, 4, … ≤ n, plus n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def cluster_answers(answers: list[str | None], equiv=is_equiv) -> list[list[int]]:
    """Equivalence clusters of the extracted answers (None ignored), in order of first occurrence. Identical
    strings share a cluster without a call; a new string joins the first cluster whose representative (its
    first answer) it is equivalent to, `equiv(new, representative)`."""
    clusters: list[list[int]] = []
    reps: list[str] = []
    by_string: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        key = answer.strip()
        if key not in by_string:
            by_string[key] = next((j for j, rep in enumerate(reps) if _safe_equiv(equiv, key, rep)), len(reps))
            if by_string[key] == len(reps):
                reps.append(key)
                clusters.append([])
        clusters[by_string[key]].append(i)
    return clusters


def _safe_equiv(equiv, a: str, b: str) -> bool:
    try:
        return bool(equiv(a, b))
    except Exception:
        return False


def majority_vote(answers: list[str | None], equiv=is_equiv) -> int | None:
    """Index of the representative (first member) of the largest answer cluster; ties go to the cluster that
    appears first. None when no response has an answer."""
    return _winner(cluster_answers(answers, equiv))


def _winner(clusters: list[list[int]]) -> int | None:
    if not clusters:
        return None
    best = max(range(len(clusters)), key=lambda j: (len(clusters[j]), -clusters[j][0]))
    return clusters[best][0]


def distinct_ngrams(texts: list[str], order: int) -> float | None:
    """Distinct / total word n-grams (whitespace split) pooled over `texts`; None if there is none."""
    grams = []
    for text in texts:
        words = text.split()
        grams += [tuple(words[i : i + order]) for i in range(len(words) - order + 1)]
    return len(set(grams)) / len(grams) if grams else None


def benchmark_metrics(problems: list[dict], n: int, equiv=is_equiv) -> dict:
    """Metrics of one benchmark. `problems`: one dict per problem with `samples`, a list of n dicts with
    `score` (0/1), `answer` (str or None), `length`, `truncated`, `response` (text), `entropy_sum` and
    `entropy_count` (None when unavailable)."""
    per_problem_acc, maj, distinct_answers = [], [], []
    ks = pass_k_values(n)
    pass_k = {k: [] for k in ks}
    distinct = {o: [] for o in (1, 2, 3, 4)}
    lengths, truncated, answered = [], [], []
    ent_sum, ent_count, ent_ok = 0.0, 0, True
    for problem in problems:
        samples = problem["samples"]
        if len(samples) != n:
            raise ValueError(f"problem {problem.get('id')}: {len(samples)} samples, expected {n}")
        correct = [s["score"] > 0 for s in samples]
        c = sum(correct)
        per_problem_acc.append(c / n)
        for k in ks:
            pass_k[k].append(pass_at_k(n, c, k))
        answers = [s["answer"] for s in samples]
        clusters = cluster_answers(answers, equiv)
        winner = _winner(clusters)
        maj.append(0.0 if winner is None else float(correct[winner]))
        distinct_answers.append(len(clusters) / n)
        for o in distinct:
            d = distinct_ngrams([s["response"] for s in samples], o)
            if d is not None:
                distinct[o].append(d)
        for s in samples:
            lengths.append(s["length"])
            truncated.append(bool(s["truncated"]))
            answered.append(s["answer"] is not None)
            if s.get("entropy_sum") is None:
                ent_ok = False
            else:
                ent_sum += s["entropy_sum"]
                ent_count += s["entropy_count"]
    num = len(problems)
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else None  # noqa: E731
    stderr = float(np.std(per_problem_acc, ddof=1) / math.sqrt(num)) if num > 1 else None
    return {
        "num_problems": num,
        "n": n,
        "num_samples": num * n,
        "avg@n": mean(per_problem_acc),
        "avg@n_stderr": stderr,
        "pass@k": {str(k): mean(v) for k, v in pass_k.items()},
        "maj@n": mean(maj),
        "response_length_mean": mean(lengths),
        "response_length_median": float(statistics.median(lengths)) if lengths else None,
        "response_length_max": max(lengths) if lengths else None,
        "truncation_rate": mean(truncated),
        "answer_rate": mean(answered),
        "distinct_answer_frac": mean(distinct_answers),
        "distinct_ngrams": {str(o): mean(v) for o, v in distinct.items()},
        "entropy_mean": ent_sum / ent_count if ent_ok and ent_count else None,
    }


# ─── full-vocabulary entropy (teacher-forced) ────────────────────────────────────────────────────
@torch.no_grad()
def full_entropy(
    model,
    sequences: list[tuple[list[int], list[int]]],
    temperature: float,
    pad_id: int,
    batch_size: int,
    chunk_size: int,
) -> list[list[float]]:
    """Full-vocabulary entropy of softmax(logits / T) at every response position, teacher-forced.
    `sequences`: (prompt_ids, response_ids) pairs. The decoder runs once per batch; the LM head and the
    softmax run on `chunk_size` positions at a time, so no [B, R, V] tensor is ever built."""
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    scale = 1.0 if temperature == 0 else temperature
    order = sorted(range(len(sequences)), key=lambda i: -(len(sequences[i][0]) + len(sequences[i][1])))
    out: list[list[float]] = [[] for _ in sequences]
    for start in range(0, len(order), batch_size):
        idx = [i for i in order[start : start + batch_size] if sequences[i][1]]
        if not idx:
            continue
        pw = max(len(sequences[i][0]) for i in idx)
        rw = max(len(sequences[i][1]) for i in idx)
        input_ids = torch.full((len(idx), pw + rw), pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for b, i in enumerate(idx):
            p, r = sequences[i]
            input_ids[b, pw - len(p) : pw] = torch.tensor(p, dtype=torch.long)
            input_ids[b, pw : pw + len(r)] = torch.tensor(r, dtype=torch.long)
            attention[b, pw - len(p) : pw + len(r)] = 1
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        hidden = decoder(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=position_ids.to(device),
            use_cache=False,
        ).last_hidden_state
        hidden = hidden[:, pw - 1 : pw + rw - 1]  # position pw-1+j predicts response token j
        flat = hidden.reshape(-1, hidden.shape[-1])
        ent = torch.empty(flat.shape[0], dtype=torch.float32)
        for s in range(0, flat.shape[0], chunk_size):
            logits = head(flat[s : s + chunk_size]).float() / scale
            logp = torch.log_softmax(logits, dim=-1)
            ent[s : s + chunk_size] = -(logp.exp() * logp).sum(-1).cpu()
        ent = ent.view(len(idx), rw)
        for b, i in enumerate(idx):
            out[i] = ent[b, : len(sequences[i][1])].tolist()
    return out


# ─── reporting ──────────────────────────────────────────────────────────────────────────────────
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown_table(results: dict, entropy_mode: str) -> str:
    """One row per benchmark (and a macro-average row when there are several). Accuracies in %."""
    benches = results["benchmarks"]
    ks = sorted({int(k) for m in benches.values() for k in m["pass@k"] if int(k) > 1})
    header = (
        ["benchmark", "problems", "n", "avg@n", "± s.e.", "maj@n"]
        + [f"pass@{k}" for k in ks]
        + [
            "len mean",
            "len median",
            "len max",
            "truncated %",
            "answered %",
            "distinct answers %",
            "distinct-4 %",
            f"entropy ({entropy_mode})",
        ]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, m in benches.items():
        ent = m["entropy_mean"]
        row = [name, str(m["num_problems"]), str(m["n"]), _pct(m["avg@n"]), _pct(m["avg@n_stderr"]), _pct(m["maj@n"])]
        row += [_pct(m["pass@k"].get(str(k))) for k in ks]
        row += [
            f"{m['response_length_mean']:.1f}",
            f"{m['response_length_median']:.1f}",
            str(m["response_length_max"]),
            _pct(m["truncation_rate"]),
            _pct(m["answer_rate"]),
            _pct(m["distinct_answer_frac"]),
            _pct(m["distinct_ngrams"]["4"]),
            "–" if ent is None else f"{ent:.4f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    if len(benches) > 1:
        avg = results["average"]
        row = (
            [
                "**average**",
                str(sum(m["num_problems"] for m in benches.values())),
                "",
                _pct(avg["avg@n"]),
                "",
                _pct(avg["maj@n"]),
            ]
            + [""] * len(ks)
            + [f"{avg['response_length_mean']:.1f}"]
            + [""] * 7
        )
        lines.append("| " + " | ".join(row) + " |")
    s = results["settings"]
    caption = (
        f"model `{s['model']}`, template {s['template']}, engine {s['engine']}, temperature {s['temperature']}, "
        f"top_p {s['top_p']}, max_new_tokens {s['max_new_tokens']}, seed {s['seed']}, answer mode {s['answer_mode']}"
        + (", protocol " + s["protocol"] if s["protocol"] != "none" else "")
        + ". avg@n = pass@1 (unbiased); pass@k unbiased; the average row is the macro average over benchmarks."
    )
    return caption + "\n\n" + "\n".join(lines) + "\n"


def _versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for package in ("torch", "transformers", "vllm", "math-verify"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def _git_commit() -> dict:
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO_DIR, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


# ─── main ───────────────────────────────────────────────────────────────────────────────────────
def load_benchmarks(benchmarks, args) -> dict:
    """{name: (n, problems)}; the data's errors come before any model is loaded."""
    loaded = {}
    for name, n in benchmarks:
        try:
            problems = load_problems(
                name,
                split="test" if name.lower() in SYNTHETIC_TASKS else None,
                data_dir=args.data_dir,
                skip_invalid=args.skip_invalid,
                limit=args.limit,
            )
        except (DataError, OSError) as e:  # bad rows, not the pinned file, missing and not downloadable
            raise UsageError(
                f"{e}" if isinstance(e, (DataError, FileNotFoundError)) else f"--benchmarks {name}: {e}"
            ) from None
        if not problems:
            raise UsageError(
                f"--benchmarks {name}: no problems"
                + (f" ({problems.skipped} rows skipped)" if problems.skipped else "")
            )
        if problems.skipped:
            print(f"{name}: skipped {problems.skipped} invalid rows (--skip-invalid), e.g. {problems.skipped_rows[0]}")
        loaded[name] = (n, problems)
    return loaded


def dry_run(data: dict, args, template: str, max_new_tokens: int, stop_ids) -> None:
    total_bad = 0
    for name, d in data.items():
        golds = [p["answer"] for p in d["problems"]]
        checks = score(
            [f"\\boxed{{{g}}}" for g in golds],
            golds,
            mode="boxed",
            timeout_s=args.grader_timeout_s,
            num_workers=args.grader_workers,
        )
        bad = [(p["id"], p["answer"]) for p, r in zip(d["problems"], checks) if r <= 0]
        total_bad += len(bad)
        lengths = [len(ids) for ids in d["prompt_ids"]]
        print(
            f"{name}: {len(d['problems'])} problems, n={d['n']}, prompt tokens mean {np.mean(lengths):.0f} "
            f"max {max(lengths)}, golds graded correct against themselves: {len(golds) - len(bad)}/{len(golds)}"
            + (f" (failing: {bad[:5]})" if bad else "")
        )
    print(
        f"dry run: {sum(len(d['problems']) for d in data.values())} problems in {len(data)} benchmarks, template "
        f"{template}, max_new_tokens {max_new_tokens}, stop ids {stop_ids}; {total_bad} gold self-check failures"
    )


def grade_benchmark(name: str, d: dict, args, gen_s: float) -> tuple[dict, list[dict]]:
    """The benchmark's metrics and its completions.jsonl rows."""
    n, flat = d["n"], [s for samples in d["samples"] for s in samples]
    t0 = time.time()
    scores = score(
        [s["text"] for s in flat],
        [p["answer"] for p in d["problems"] for _ in range(n)],
        mode=args.answer_mode,
        timeout_s=args.grader_timeout_s,
        num_workers=args.grader_workers,
        multi_box=args.multi_box,
    )
    grading_s = time.time() - t0
    for s, sc in zip(flat, scores):
        s.update(
            response=s["text"],
            score=float(sc),
            answer=extract_answer(s["text"], args.answer_mode, args.multi_box),
            length=len(s["response_ids"]),
        )
    metrics = benchmark_metrics([{"id": p["id"], "samples": ss} for p, ss in zip(d["problems"], d["samples"])], n)
    metrics.update(
        grader_timeouts=scores.timeouts,
        grader_crashes=getattr(scores, "crashes", 0),
        no_answer=scores.no_answer,
        generation_s=round(gen_s, 2),
        grading_s=round(grading_s, 2),
        skipped_rows=d["problems"].skipped_rows,
        duplicates_dropped=d["problems"].duplicates,
    )
    rows = [
        {
            "benchmark": name,
            "problem_id": p["id"],
            "sample_index": j,
            "prompt": prompt,
            "response": s["response"],
            "gold": p["answer"],
            "extracted_answer": s["answer"],
            "score": s["score"],
            "length": s["length"],
            "truncated": s["truncated"],
            "entropy": s["entropy_sum"] / s["entropy_count"] if s["entropy_count"] else None,
        }
        for p, prompt, samples in zip(d["problems"], d["prompts"], d["samples"])
        for j, s in enumerate(samples)
    ]
    return metrics, rows


class _WithProgressBar:
    """A vLLM engine as `grpo.vllm_generate` calls it, but with vLLM's own progress bar (prompts done) on a terminal."""

    def __init__(self, llm):
        self.llm = llm

    def generate(self, *args, **kwargs):
        return self.llm.generate(*args, **{**kwargs, "use_tqdm": sys.stderr.isatty()})


def generate_benchmark(name: str, d: dict, model, llm, tokenizer, args, temperature, max_new_tokens, stop_ids):
    """`grpo.generate` for one benchmark, seeded on its own, with a progress bar on a terminal (stderr). HF: in
    chunks of whole batches (lcm(n, --batch-size) sequences), so the batches, and the samples, are exactly those of
    a single call; vLLM: one call (its own bar)."""
    torch.manual_seed(args.seed)  # each benchmark's samples do not depend on the others
    ids, n = d["prompt_ids"], d["n"]
    step = len(ids) if llm is not None else args.batch_size // math.gcd(n, args.batch_size)  # prompts per call
    flat: list[dict] = []
    with tqdm(total=len(ids) * n, desc=name, unit=" responses", disable=True if llm else None, file=sys.stderr) as bar:
        for start in range(0, len(ids), step):
            flat += generate(
                model,
                llm and _WithProgressBar(llm),
                tokenizer,
                ids[start : start + step],
                n,
                temperature,
                max_new_tokens,
                stop_ids,
                args.top_p,
                args.batch_size,
                seed=args.seed,
            )
            bar.update(len(flat) - bar.n)
    return flat


def add_entropy(data: dict, args, model, model_path, dtype, device, temperature, pad_id) -> None:
    """Each sample's `entropy_sum` and `entropy_count` (None when unavailable), as --entropy chooses."""
    for d in data.values():
        flat = [s for samples in d["samples"] for s in samples]
        if args.entropy == "full":
            model = model or AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
            ents = full_entropy(
                model,
                [(ids, s["response_ids"]) for ids, samples in zip(d["prompt_ids"], d["samples"]) for s in samples],
                temperature,
                pad_id,
                args.entropy_batch_size,
                args.entropy_chunk_size,
            )
        else:
            ents = [None if s["rollout_logp"] is None else [-x for x in s["rollout_logp"]] for s in flat]
        for s, e in zip(flat, ents):
            s["entropy_sum"], s["entropy_count"] = (None, None) if e is None else (float(sum(e)), len(e))


def run_settings(args, data, model_path, template, engine, device, dtype, temperature, max_new_tokens, stop_ids, t0):
    """The `settings` of results.json: what was run, exactly, and with which versions."""
    return {
        "model": args.model,
        "model_path": os.path.abspath(model_path) if os.path.isdir(model_path) else model_path,
        "benchmarks": {name: d["n"] for name, d in data.items()},
        "template": template,
        "engine": engine,
        "device": device,
        "dtype": str(dtype).removeprefix("torch.") if engine == "hf" else args.dtype,
        "seed": args.seed,
        "n": args.n,
        "temperature": temperature,
        "top_p": args.top_p,
        "top_k": 0,
        "max_new_tokens": max_new_tokens,
        "stop_token_ids": stop_ids,
        "answer_mode": args.answer_mode,
        "grader_timeout_s": args.grader_timeout_s,
        "entropy": args.entropy,
        "protocol": args.protocol,
        "limit": args.limit,
        "data_dir": args.data_dir,
        "skip_invalid": args.skip_invalid,
        "args": asdict(args),
        "command": " ".join(sys.argv),
        "versions": _versions(),
        "git": _git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "wall_s": round(time.time() - t0, 2),
    }


def main(args: Args) -> dict:
    """Evaluate; results.json's content ({} for --dry-run). Ctrl-C raises KeyboardInterrupt naming the stage."""
    stage = ["checking the arguments"]
    try:
        t_start = time.time()
        benchmarks = check_args(args)
        if args.threads and not torch.cuda.is_available():  # as the training scripts: 1 by default, 0: torch's own
            torch.set_num_threads(args.threads)
        temperature = args.temperature if args.temperature is not None else 1.0
        if temperature == 0 and any(n > 1 for _, n in benchmarks):
            print("temperature 0 (greedy): every sample would be identical, so n is set to 1 for every benchmark")
            benchmarks = [(name, 1) for name, _ in benchmarks]
        stage[0] = "loading the benchmarks"
        loaded = load_benchmarks(benchmarks, args)
        model_path = resolve_model(args.model)
        if model_path != args.model:  # a run folder: its newest model, which the training scripts name by step
            print(f"model: {args.model} -> {model_path}")
        stage[0] = f"loading the tokenizer of {model_path}"
        tokenizer = load_pretrained(model_path, "tokenizer")
        template = args.template or (
            "qwen-math" if args.protocol == "opefo" or getattr(tokenizer, "chat_template", None) else "plain"
        )
        max_new_tokens = args.max_new_tokens or (
            OPEFO_MAX_NEW_TOKENS if args.protocol == "opefo" else DEFAULT_MAX_NEW_TOKENS[template]
        )
        stop_ids = stop_token_ids(tokenizer, model_path, template)
        data = {}
        for name, (n, problems) in loaded.items():
            prompts = [build_prompt(p["question"], template, tokenizer) for p in problems]
            data[name] = {
                "n": n,
                "problems": problems,
                "prompts": prompts,
                "prompt_ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts],
            }
        if args.dry_run:
            stage[0] = "checking the golds (--dry-run)"
            dry_run(data, args, template, max_new_tokens, stop_ids)
            return {}

        # ── generation (grpo.generate, as in training), then the entropy of every response token
        engine = "vllm" if args.engine in ("vllm", "auto") and vllm_available() else "hf"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {
            "auto": torch.bfloat16 if device == "cuda" else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[args.dtype]
        stage[0] = f"loading the model {model_path} ({engine})"
        llm = (
            build_vllm_engine(
                model_path,
                args.seed,
                args.vllm_gpu_memory_utilization,
                args.vllm_max_model_len,
                dtype="auto" if args.dtype == "auto" else args.dtype,
            )
            if engine == "vllm"
            else None
        )
        model = None if llm else load_pretrained(model_path, "model", dtype).to(device).eval()
        gen_s = {}
        for k, (name, d) in enumerate(data.items(), 1):
            stage[0] = f"generating {name} (benchmark {k} of {len(data)})"
            t0 = time.time()
            flat = generate_benchmark(name, d, model, llm, tokenizer, args, temperature, max_new_tokens, stop_ids)
            d["samples"] = [flat[i * d["n"] : (i + 1) * d["n"]] for i in range(len(d["prompt_ids"]))]
            gen_s[name] = time.time() - t0
            print(f"{name}: {len(flat)} responses in {gen_s[name]:.1f} s")
        if llm is not None:  # free the GPU before any HF forward (--entropy full); the engine holds reference cycles
            del llm
            gc.collect()
            torch.cuda.empty_cache()
        stage[0] = f"computing the entropy (--entropy {args.entropy})"
        add_entropy(data, args, model, model_path, dtype, device, temperature, tokenizer.pad_token_id)

        # ── grading, metrics and files
        results, completions = {"settings": {}, "benchmarks": {}, "average": {}}, []
        for name, d in data.items():
            stage[0] = f"grading {name}"
            results["benchmarks"][name], rows = grade_benchmark(name, d, args, gen_s[name])
            completions += rows
        for key in ("avg@n", "maj@n", "response_length_mean", "truncation_rate", "answer_rate"):
            results["average"][key] = float(np.mean([m[key] for m in results["benchmarks"].values()]))
        results["settings"] = run_settings(
            args, data, model_path, template, engine, device, dtype, temperature, max_new_tokens, stop_ids, t_start
        )
        output_dir = args.output_dir or os.path.join(
            "eval_out", f"{model_display_name(model_path)}__{time.strftime('%Y%m%d-%H%M%S', time.localtime(t_start))}"
        )
        table = markdown_table(results, args.entropy)
        stage[0] = f"writing {output_dir}"
        try:
            os.makedirs(output_dir, exist_ok=True)
            for name, text in (
                ("results.json", json.dumps(results, indent=1)),
                ("results.md", table),
                ("completions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in completions)),
            ):
                with open(os.path.join(output_dir, name), "w") as f:
                    f.write(text)
        except OSError as error:  # the table is still printed, then exit status 1
            print(f"\n{table}", file=sys.stderr)
            raise RunError(
                f"could not write {output_dir} ({one_line(error)}); the table above is all that is left"
            ) from None
        print(f"\n{table}\nwrote {output_dir}/results.json, results.md, completions.jsonl")
        return results
    except KeyboardInterrupt:
        done = "its files may be incomplete" if stage[0].startswith("writing") else "no results written"
        raise KeyboardInterrupt(f"while {stage[0]}; {done}") from None


if __name__ == "__main__":
    try:
        main(tyro.cli(Args, description=__doc__.split("\n\n")[0]))
    except (UsageError, RunError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, no traceback
        sys.exit(2 if isinstance(e, UsageError) else 1)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line, exit status 130 (the training scripts' convention)
        print(("\n" if sys.stderr.isatty() else "") + f"interrupted: {interrupt or 'while starting'}", file=sys.stderr)
        sys.exit(130)
