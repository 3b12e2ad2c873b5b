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

Outputs in `--output-dir` (default `eval_out/<model name>__<YYYYmmdd-HHMMSS>`): `results.json` (the metrics
of each benchmark, their macro average, and the exact settings and versions), `results.md` (the Markdown
table that is also printed) and `completions.jsonl` (one line per sampled response).

`--protocol opefo` (the evaluation of the OPEFO paper, arXiv 2605.11491) sets, where the flag is not given:
benchmarks aime24, aime25, amc23, math500, minerva_math, olympiadbench; n = 32 for aime24/aime25/amc23 and
n = 1 for math500/minerva_math/olympiadbench (`name@n` in --benchmarks still wins; other benchmarks use
--n); template qwen-math; temperature 1.0; max_new_tokens 3000. top_p stays 1.0 unless given.

Run:  python eval_math.py                  # CPU, the testbed model on the synthetic `arith` test split
      python eval_math.py --model Qwen/Qwen2.5-Math-7B --protocol opefo
      python eval_math.py --model runs/<run> --benchmarks aime24@32,math500@1 --template qwen-math
      python eval_math.py --benchmarks aime24,math500 --dry-run   # load data, build prompts, check golds

The named benchmarks are downloaded on first use into the data dir (`--data-dir`, else $RLVR_DATA_DIR, else
~/.cache/rlvr-entropy/data) and checked against pinned checksums (common/data.py). The arguments are checked
before anything is loaded: a mistake prints one line `error: ...` naming the flag to change, exit status 2.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

import tyro

from common.data import BENCHMARKS, DataError, build_prompt, check_source, load_problems

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
TESTBED_MODEL = os.path.join(REPO_DIR, "testbed", "model")
OPEFO_N = {"aime24": 32, "aime25": 32, "amc23": 32, "math500": 1, "minerva_math": 1, "olympiadbench": 1}
OPEFO_MAX_NEW_TOKENS = 3000  # OPEFO's max response length for Qwen2.5-Math-7B (4,096 positions)
DEFAULT_MAX_NEW_TOKENS = {"plain": 64, "qwen-math": 3000, "dapo": 3000}


@dataclass
class Args:
    model: str = TESTBED_MODEL
    """Hugging Face model id or folder; also a grpo.py run directory (its `final/`, else its latest checkpoint) or checkpoint (`step_N/hf`)"""
    benchmarks: str | None = None
    """comma-separated benchmarks: names under the data dir (aime24, aime25, amc23, math500, minerva_math, olympiadbench, gsm8k, arith), local files or hub datasets; `name@n` sets n for one benchmark (default: arith, the testbed's test split; with --protocol opefo the six benchmarks)"""
    data_dir: str | None = None
    """directory of the benchmark files; missing ones are downloaded into it and every one is checked (default: $RLVR_DATA_DIR, else ~/.cache/rlvr-entropy/data)"""
    skip_invalid: bool = False
    """skip data rows that cannot be used (missing or empty gold, malformed JSON) and report how many, instead of stopping at the first"""
    template: Literal["plain", "qwen-math", "dapo"] | None = None
    """prompt template (default: qwen-math with --protocol opefo or when the tokenizer has a chat template, else plain)"""
    n: int = 4
    """samples per problem (avg@n, pass@k for k ≤ n, maj@n); forced to 1 with temperature 0"""
    temperature: float | None = None
    """sampling temperature; 0 = greedy (default 1.0)"""
    top_p: float = 1.0
    """nucleus sampling threshold (1.0 = off); top-k is always off"""
    max_new_tokens: int | None = None
    """maximum response length in tokens (default: 64 for the plain template, 3000 for qwen-math/dapo and --protocol opefo)"""
    seed: int = 0
    """sampling seed (HF: torch seed, reset before each benchmark; vLLM: engine seed and per-request seed)"""
    batch_size: int = 64
    """sequences per Hugging Face `generate` call"""
    limit: int | None = None
    """evaluate only the first K problems of each benchmark"""
    output_dir: str | None = None
    """where results.json, results.md and completions.jsonl go (default eval_out/<model name>__<time>)"""
    answer_mode: Literal["auto", "boxed", "minerva", "the-answer-is", "answer"] = "auto"
    """answer extraction: last \\boxed{}, Minerva's "The final answer is X", "The answer is X", DAPO's `Answer:`
    line, or `auto` (those, in that order)"""
    multi_box: bool = False
    """read several nearby \\boxed{} as one set answer ("find all" questions)"""
    grader_timeout_s: float = 5.0
    """hard time limit per graded response (a response over it scores as incorrect and is counted)"""
    grader_workers: int | None = None
    """grader worker processes (default: common.reward's default, min(2, CPUs))"""
    entropy: Literal["sampled", "full"] = "sampled"
    """mean token entropy: `sampled` = mean −log p of the sampled tokens (free); `full` = full-vocabulary entropy from a teacher-forced forward pass"""
    entropy_batch_size: int = 8
    """sequences per forward pass of `--entropy full`"""
    entropy_chunk_size: int = 1024
    """response positions whose [positions × vocab] logits are materialised at once by `--entropy full`"""
    protocol: Literal["none", "opefo"] = "none"
    """evaluation preset (see the module docstring): opefo = AIME24/25, AMC23 avg@32 and MATH-500, Minerva, OlympiadBench avg@1, qwen-math, T = 1.0, 3000 tokens"""
    engine: Literal["auto", "vllm", "hf"] = "auto"
    """generation engine: `auto` = vLLM when CUDA and vLLM are available, else Hugging Face `generate`"""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """model weights dtype: `auto` = bfloat16 on CUDA, float32 on CPU"""
    vllm_gpu_memory_utilization: float = 0.85
    """fraction of GPU memory vLLM may take"""
    vllm_max_model_len: int | None = None
    """vLLM context length (default: the model's)"""
    dry_run: bool = False
    """load the benchmarks, build and tokenize the prompts, check that every gold grades as correct against itself, print counts, and exit"""


# ─── settings ───────────────────────────────────────────────────────────────────────────────────
class UsageError(ValueError):
    """A mistake in the arguments or the data they point at: `error: <message>` on stderr, exit status 2."""


def looks_like_path(model: str) -> bool:
    """True when `--model` can only mean a local folder: it starts with `.`, `~` or `/`, has a backslash or more
    than one `/`, starts with `runs/` (grpo.py's output folder), or its first part exists here. A hub id is
    `owner/name`."""
    if model.startswith((".", "~", "/")) or "\\" in model:
        return True
    parts = model.split("/")
    return len(parts) > 2 or (len(parts) == 2 and (parts[0] == "runs" or os.path.exists(parts[0])))


def _check_model(model: str) -> None:
    path = os.path.expanduser(model)
    if os.path.isfile(path):
        raise UsageError(f"--model {model}: a file, not a model folder (give the folder that holds config.json)")
    if not os.path.exists(path) and looks_like_path(model):
        parent = os.path.dirname(os.path.normpath(path)) or "."
        base = os.path.basename(os.path.normpath(path))
        near = sorted(d for d in os.listdir(parent) if d.startswith(base)) if base and os.path.isdir(parent) else []
        hint = f"; did you mean {', '.join(os.path.join(parent, d) for d in near[:3])}?" if near else ""
        raise UsageError(f"--model {model}: no such directory{hint}")
    try:
        resolve_model_path(path if os.path.exists(path) else model)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None


def check_args(args: Args) -> list[tuple[str, int]]:
    """Check every argument without loading anything; returns the (benchmark, n) list. Raises UsageError."""
    def positive(flag: str, value, allow_none: bool = True):
        if value is None and allow_none:
            return
        if value is None or value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")

    positive("--n", args.n, allow_none=False)
    positive("--max-new-tokens", args.max_new_tokens)
    positive("--batch-size", args.batch_size, allow_none=False)
    positive("--limit", args.limit)
    positive("--grader-workers", args.grader_workers)
    positive("--entropy-batch-size", args.entropy_batch_size, allow_none=False)
    positive("--entropy-chunk-size", args.entropy_chunk_size, allow_none=False)
    positive("--vllm-max-model-len", args.vllm_max_model_len)
    if args.temperature is not None and not args.temperature >= 0:
        raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not args.grader_timeout_s > 0:
        raise UsageError(f"--grader-timeout-s must be > 0, got {args.grader_timeout_s}")
    if not 0 < args.vllm_gpu_memory_utilization <= 1:
        raise UsageError(f"--vllm-gpu-memory-utilization must be in (0, 1], got {args.vllm_gpu_memory_utilization}")
    try:
        benchmarks = parse_benchmarks(args.benchmarks, args.protocol, args.n)
        for name, _ in benchmarks:
            check_source(name)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--benchmarks: {e}") from None
    for flag, value in (("--data-dir", args.data_dir), ("--output-dir", args.output_dir)):
        if value is not None and os.path.exists(os.path.expanduser(value)) and not os.path.isdir(os.path.expanduser(value)):
            raise UsageError(f"{flag} {value}: a file, not a directory")
    _check_model(args.model)
    return benchmarks


def parse_benchmarks(spec: str | None, protocol: str, default_n: int) -> list[tuple[str, int]]:
    """`"aime24@32,math500"` -> [("aime24", 32), ("math500", n)], where n comes from the protocol table
    (opefo) or `default_n`. An empty spec means arith (protocol none) or the six benchmarks (opefo)."""
    if not spec:
        spec = ",".join(BENCHMARKS) if protocol == "opefo" else "arith"
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


def resolve_model_path(model: str) -> str:
    """A HF folder as is; a checkpoint folder (`step_N/` with `hf/`) -> its `hf/`; a grpo.py run directory
    -> its `final/`, else its latest finished checkpoint; anything else (a hub id) unchanged."""
    if not os.path.isdir(model) or os.path.isfile(os.path.join(model, "config.json")):
        return model
    for sub in ("hf", "final"):
        if os.path.isfile(os.path.join(model, sub, "config.json")):
            return os.path.join(model, sub)
    root = os.path.join(model, "checkpoints")
    if os.path.isdir(root):
        done = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp")
                      and os.path.isfile(os.path.join(root, d, "hf", "config.json")))
        if done:
            return os.path.join(root, done[-1], "hf")
    raise FileNotFoundError(f"--model {model}: a folder without config.json, hf/, final/ or checkpoints/step_*/hf/")


def model_display_name(model_path: str) -> str:
    """Short name for the output folder: `Qwen/Qwen2.5-Math-7B` -> Qwen2.5-Math-7B,
    `runs/r/checkpoints/step_000100/hf` -> r__step_000100, `runs/r/final` -> r__final, `testbed/model` -> testbed__model."""
    parts = [p for p in os.path.normpath(model_path).split(os.sep) if p and p != "."]
    if not parts:
        return "model"
    if parts[-1] == "hf" and len(parts) >= 4 and parts[-3] == "checkpoints":
        return f"{parts[-4]}__{parts[-2]}"
    if parts[-1] in ("final", "model", "hf") and len(parts) >= 2:  # generic folder names: keep the parent
        return f"{parts[-2]}__{parts[-1]}"
    return parts[-1]


def _exit_usage(e: UsageError):
    print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, no traceback
    sys.exit(2)


if __name__ == "__main__":  # check the arguments before the slow imports below: a mistake is reported at once
    ARGS = tyro.cli(Args)
    try:
        check_args(ARGS)
    except UsageError as e:
        _exit_usage(e)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList)

from common.reward import extract_answer, is_equiv, score  # noqa: E402


def stop_token_ids(tokenizer, model_path: str, template: str) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS, the model's generation-config EOS ids, and, for the
    chat templates, `<|im_end|>` when the vocabulary has it (base models often close the assistant turn
    with it and then invent a new turn)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    try:
        gen_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids += gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
    except Exception:  # no generation_config.json
        pass
    if template != "plain":
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            ids.append(im_end)
    ids = list(dict.fromkeys(i for i in ids if i is not None))
    if not ids:
        raise ValueError("the tokenizer has no EOS token and the model no generation_config eos_token_id")
    return ids


def split_response(token_ids: list[int], stop_ids, max_new_tokens: int) -> tuple[list[int], bool]:
    """Cut a generated row after its first stop token (kept). Returns (tokens, truncated)."""
    for i, tok in enumerate(token_ids):
        if tok in stop_ids:
            return token_ids[: i + 1], False
    return token_ids[:max_new_tokens], True


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
        grams += [tuple(words[i: i + order]) for i in range(len(words) - order + 1)]
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


# ─── Hugging Face engine (CPU or GPU) ───────────────────────────────────────────────────────────
class _SampledLogprobRecorder(LogitsProcessor):
    """Applies the temperature as the last logits processor and records log π_T of each sampled token
    (`generate` samples from softmax of what this returns), keeping one [B, V] row at a time."""

    def __init__(self, temperature: float):
        self.temperature, self.prev_logp, self.recorded = temperature, None, []

    def __call__(self, input_ids, scores):
        if self.prev_logp is not None:  # input_ids[:, -1] was sampled from the previous call's scores
            self.recorded.append(self.prev_logp.gather(1, input_ids[:, -1:]).squeeze(1))
        scores = scores / self.temperature
        self.prev_logp = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens):
        self.recorded.append(self.prev_logp.gather(1, last_tokens[:, None]).squeeze(1))
        return torch.stack(self.recorded, dim=1)  # [B, T_generated]


@contextmanager
def _only_these_generation_settings(model):
    """`generate` fills every field left unset in the config it is given from the model's own
    generation_config (a Qwen instruct model ships repetition_penalty, top_k, ...). Hide that one meanwhile,
    so only our settings and the library's neutral defaults apply."""
    saved, model.generation_config = model.generation_config, GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def hf_generate(model, prompt_ids: list[list[int]], n: int, temperature: float, top_p: float, max_new_tokens: int,
                stop_ids: list[int], pad_id: int, batch_size: int, desc: str = "generate") -> list[list[dict]]:
    """n samples per prompt with `generate` (left padding, rows sorted by prompt length). Returns, per prompt,
    n dicts with response_ids, logps (log π_T of each response token) and truncated."""
    rows = sorted(((p, j) for p in range(len(prompt_ids)) for j in range(n)), key=lambda r: -len(prompt_ids[r[0]]))
    device = next(model.parameters()).device
    greedy = temperature == 0
    config = GenerationConfig(do_sample=not greedy, temperature=1.0, top_p=top_p if not greedy else 1.0, top_k=0,
                              max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id,
                              repetition_penalty=1.0)
    results: list[list[dict | None]] = [[None] * n for _ in prompt_ids]
    remaining = Counter(p for p, _ in rows)
    progress = tqdm(total=len(prompt_ids), desc=desc, unit="problem")
    with _only_these_generation_settings(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start: start + batch_size]
            width = max(len(prompt_ids[p]) for p, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (p, _) in enumerate(chunk):
                ids = prompt_ids[p]
                input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[i, width - len(ids):] = 1
            recorder = _SampledLogprobRecorder(1.0 if greedy else temperature)
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 generation_config=config, logits_processor=LogitsProcessorList([recorder]))
            generated = out[:, width:]
            logps = recorder.finish(generated[:, -1]).cpu()
            generated = generated.cpu().tolist()
            finished = 0
            for i, (p, j) in enumerate(chunk):
                tokens, truncated = split_response(generated[i], stop_ids, max_new_tokens)
                results[p][j] = {"response_ids": tokens, "logps": logps[i, : len(tokens)].tolist(), "truncated": truncated}
                remaining[p] -= 1
                finished += remaining[p] == 0
            progress.update(finished)
    progress.close()
    return results


@torch.no_grad()
def full_entropy(model, sequences: list[tuple[list[int], list[int]]], temperature: float, pad_id: int,
                 batch_size: int, chunk_size: int) -> list[list[float]]:
    """Full-vocabulary entropy of softmax(logits / T) at every response position, teacher-forced.
    `sequences`: (prompt_ids, response_ids) pairs. The decoder runs once per batch; the LM head and the
    softmax run on `chunk_size` positions at a time, so no [B, R, V] tensor is ever built."""
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    scale = 1.0 if temperature == 0 else temperature
    order = sorted(range(len(sequences)), key=lambda i: -(len(sequences[i][0]) + len(sequences[i][1])))
    out: list[list[float]] = [[] for _ in sequences]
    for start in range(0, len(order), batch_size):
        idx = [i for i in order[start: start + batch_size] if sequences[i][1]]
        if not idx:
            continue
        pw = max(len(sequences[i][0]) for i in idx)
        rw = max(len(sequences[i][1]) for i in idx)
        input_ids = torch.full((len(idx), pw + rw), pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for b, i in enumerate(idx):
            p, r = sequences[i]
            input_ids[b, pw - len(p): pw] = torch.tensor(p, dtype=torch.long)
            input_ids[b, pw: pw + len(r)] = torch.tensor(r, dtype=torch.long)
            attention[b, pw - len(p): pw + len(r)] = 1
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        hidden = decoder(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                         position_ids=position_ids.to(device), use_cache=False).last_hidden_state
        hidden = hidden[:, pw - 1: pw + rw - 1]  # position pw-1+j predicts response token j
        flat = hidden.reshape(-1, hidden.shape[-1])
        ent = torch.empty(flat.shape[0], dtype=torch.float32)
        for s in range(0, flat.shape[0], chunk_size):
            logits = head(flat[s: s + chunk_size]).float() / scale
            logp = torch.log_softmax(logits, dim=-1)
            ent[s: s + chunk_size] = -(logp.exp() * logp).sum(-1).cpu()
        ent = ent.view(len(idx), rw)
        for b, i in enumerate(idx):
            out[i] = ent[b, : len(sequences[i][1])].tolist()
    return out


# ── GPU only: vLLM engine ────────────────────────────────────────────────────────────────────────
# Building the engine and generating need CUDA and vLLM; the request building and output parsing are pure
# functions (tested with stand-in objects).
def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def vllm_sampling_kwargs(n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                         stop_ids: list[int]) -> dict:
    """Keyword arguments of vllm.SamplingParams: unbiased sampling (top_k 0 = off in vLLM 0.33), stop ids,
    the sampled token's log-prob (logprobs=0; processed = after temperature with the engine's
    logprobs_mode="processed_logprobs") and a per-request seed (child i of a request gets seed + i)."""
    return dict(n=n, temperature=temperature, top_p=top_p, top_k=0, max_tokens=max_new_tokens, seed=seed,
                logprobs=0, stop_token_ids=list(stop_ids), skip_special_tokens=True)


def vllm_requests(prompt_ids: list[list[int]]) -> list[dict]:
    """Token-in prompts for LLM.generate (no re-tokenisation)."""
    return [{"prompt_token_ids": list(ids)} for ids in prompt_ids]


def parse_vllm_outputs(outputs, n: int) -> list[list[dict]]:
    """vLLM RequestOutputs (one per prompt, in order) -> per prompt, n dicts with response_ids, logps
    (None when the engine returned none) and truncated (finish_reason "length")."""
    results = []
    for request in outputs:
        if len(request.outputs) != n:
            raise ValueError(f"vLLM returned {len(request.outputs)} completions for a request, expected {n}")
        samples = []
        for completion in sorted(request.outputs, key=lambda c: getattr(c, "index", 0)):
            tokens = list(completion.token_ids)
            logps = None
            if completion.logprobs is not None:
                logps = [float(entry[tok].logprob) for entry, tok in zip(completion.logprobs, tokens)]
            samples.append({"response_ids": tokens, "logps": logps, "truncated": completion.finish_reason == "length"})
        results.append(samples)
    return results


def build_vllm_engine(model_path: str, args: Args):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process: easy to free
    from vllm import LLM

    kwargs = dict(model=model_path, seed=args.seed, logprobs_mode="processed_logprobs", tensor_parallel_size=1,
                  gpu_memory_utilization=args.vllm_gpu_memory_utilization, enable_prefix_caching=True,
                  dtype="auto" if args.dtype == "auto" else args.dtype)
    if args.vllm_max_model_len:
        kwargs["max_model_len"] = args.vllm_max_model_len
    return LLM(**kwargs)


def vllm_generate(llm, prompt_ids, n, temperature, top_p, max_new_tokens, seed, stop_ids) -> list[list[dict]]:
    from vllm import SamplingParams

    params = SamplingParams(**vllm_sampling_kwargs(n, temperature, top_p, max_new_tokens, seed, stop_ids))
    outputs = llm.generate(vllm_requests(prompt_ids), sampling_params=params, use_tqdm=True)
    return parse_vllm_outputs(outputs, n)
# ── end of the GPU-only block ────────────────────────────────────────────────────────────────────


# ─── reporting ──────────────────────────────────────────────────────────────────────────────────
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown_table(results: dict, entropy_mode: str) -> str:
    """One row per benchmark (and a macro-average row when there are several). Accuracies in %."""
    benches = results["benchmarks"]
    ks = sorted({int(k) for m in benches.values() for k in m["pass@k"] if int(k) > 1})
    header = (["benchmark", "problems", "n", "avg@n", "± s.e.", "maj@n"] + [f"pass@{k}" for k in ks]
              + ["len mean", "len median", "len max", "truncated %", "answered %", "distinct answers %",
                 "distinct-4 %", f"entropy ({entropy_mode})"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, m in benches.items():
        ent = m["entropy_mean"]
        row = [name, str(m["num_problems"]), str(m["n"]), _pct(m["avg@n"]), _pct(m["avg@n_stderr"]), _pct(m["maj@n"])]
        row += [_pct(m["pass@k"].get(str(k))) for k in ks]
        row += [f"{m['response_length_mean']:.1f}", f"{m['response_length_median']:.1f}", str(m["response_length_max"]),
                _pct(m["truncation_rate"]), _pct(m["answer_rate"]), _pct(m["distinct_answer_frac"]),
                _pct(m["distinct_ngrams"]["4"]), "–" if ent is None else f"{ent:.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    if len(benches) > 1:
        avg = results["average"]
        row = ["**average**", str(sum(m["num_problems"] for m in benches.values())), "", _pct(avg["avg@n"]), "",
               _pct(avg["maj@n"])] + [""] * len(ks) + [f"{avg['response_length_mean']:.1f}"] + [""] * 7
        lines.append("| " + " | ".join(row) + " |")
    s = results["settings"]
    caption = (f"model `{s['model']}`, template {s['template']}, engine {s['engine']}, temperature {s['temperature']}, "
               f"top_p {s['top_p']}, max_new_tokens {s['max_new_tokens']}, seed {s['seed']}, answer mode {s['answer_mode']}"
               + (", protocol " + s["protocol"] if s["protocol"] != "none" else "")
               + ". avg@n = pass@1 (unbiased); pass@k unbiased; the average row is the macro average over benchmarks.")
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


def _encode(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


# ─── main ───────────────────────────────────────────────────────────────────────────────────────
def main(args: Args) -> dict:
    t_start = time.time()
    benchmarks = check_args(args)
    if args.engine == "vllm" and not vllm_available():
        raise UsageError("--engine vllm needs CUDA and the vllm package; use --engine hf (or auto)")
    temperature = args.temperature if args.temperature is not None else 1.0
    if temperature == 0 and any(n > 1 for _, n in benchmarks):
        print("temperature 0 (greedy): every sample would be identical, so n is set to 1 for every benchmark")
        benchmarks = [(name, 1) for name, _ in benchmarks]

    # ── data first (downloaded and checked on first use): its errors come before any model is loaded
    loaded = {}
    for name, n in benchmarks:
        split = "test" if name.lower() == "arith" else None
        try:
            problems = load_problems(name, split=split, data_dir=args.data_dir, skip_invalid=args.skip_invalid,
                                     limit=args.limit)
        except (DataError, OSError) as e:  # bad rows, not the pinned file, missing and not downloadable
            raise UsageError(f"{e}" if isinstance(e, (DataError, FileNotFoundError)) else f"--benchmarks {name}: {e}") from None
        if not problems:
            raise UsageError(f"--benchmarks {name}: no problems" + (f" ({problems.skipped} rows skipped)" if problems.skipped else ""))
        if problems.skipped:
            print(f"{name}: skipped {problems.skipped} invalid rows (--skip-invalid), e.g. {problems.skipped_rows[0]}")
        loaded[name] = (n, problems)

    model_path = resolve_model_path(os.path.expanduser(args.model) if looks_like_path(args.model) else args.model)
    if model_path != args.model:
        print(f"model: {args.model} -> {model_path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as e:  # a hub id that does not exist (or no network)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--model {args.model}: cannot load a tokenizer from this folder or hub id ({first_line})") from None
    if args.template is not None:
        template = args.template
    elif args.protocol == "opefo" or getattr(tokenizer, "chat_template", None):
        template = "qwen-math"
    else:
        template = "plain"
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = OPEFO_MAX_NEW_TOKENS if args.protocol == "opefo" else DEFAULT_MAX_NEW_TOKENS[template]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = stop_token_ids(tokenizer, model_path, template)

    # ── prompts: token-in prompts of every benchmark
    data = {}
    for name, (n, problems) in loaded.items():
        prompts = [build_prompt(p["question"], template, tokenizer) for p in problems]
        data[name] = {"n": n, "problems": problems, "prompts": prompts, "prompt_ids": [_encode(tokenizer, t) for t in prompts]}

    if args.dry_run:
        total_bad = 0
        for name, d in data.items():
            golds = [p["answer"] for p in d["problems"]]
            checks = score([f"\\boxed{{{g}}}" for g in golds], golds, mode="boxed", timeout_s=args.grader_timeout_s,
                           num_workers=args.grader_workers)
            bad = [(p["id"], p["answer"]) for p, r in zip(d["problems"], checks) if r <= 0]
            total_bad += len(bad)
            lengths = [len(ids) for ids in d["prompt_ids"]]
            print(f"{name}: {len(d['problems'])} problems, n={d['n']}, prompt tokens mean {np.mean(lengths):.0f} "
                  f"max {max(lengths)}, golds graded correct against themselves: {len(golds) - len(bad)}/{len(golds)}"
                  + (f" (failing: {bad[:5]})" if bad else ""))
        print(f"dry run: {sum(len(d['problems']) for d in data.values())} problems in {len(data)} benchmarks, "
              f"template {template}, max_new_tokens {max_new_tokens}, stop ids {stop_ids}; {total_bad} gold self-check failures")
        return {}

    # ── generation
    engine = "vllm" if args.engine == "vllm" or (args.engine == "auto" and vllm_available()) else "hf"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model = None
    gen_time = {}
    if engine == "vllm":
        llm = build_vllm_engine(model_path, args)
        for name, d in data.items():
            t0 = time.time()
            d["samples"] = vllm_generate(llm, d["prompt_ids"], d["n"], temperature, args.top_p, max_new_tokens,
                                         args.seed, stop_ids)
            gen_time[name] = time.time() - t0
        del llm  # free the GPU before any HF forward pass (--entropy full)
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        for name, d in data.items():
            torch.manual_seed(args.seed)  # each benchmark's samples do not depend on the others
            t0 = time.time()
            d["samples"] = hf_generate(model, d["prompt_ids"], d["n"], temperature, args.top_p, max_new_tokens,
                                       stop_ids, tokenizer.pad_token_id, args.batch_size, desc=name)
            gen_time[name] = time.time() - t0

    # ── per-token entropy: from the sampled tokens, or full-vocabulary (teacher-forced)
    for name, d in data.items():
        flat = [s for samples in d["samples"] for s in samples]
        if args.entropy == "full":
            if model is None:
                model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
            seqs = [(ids, s["response_ids"]) for ids, samples in zip(d["prompt_ids"], d["samples"]) for s in samples]
            ents = full_entropy(model, seqs, temperature, tokenizer.pad_token_id, args.entropy_batch_size,
                                args.entropy_chunk_size)
        else:
            ents = [None if s["logps"] is None else [-x for x in s["logps"]] for s in flat]
        for s, e in zip(flat, ents):
            s["entropy_sum"] = None if e is None else float(sum(e))
            s["entropy_count"] = None if e is None else len(e)

    # ── grading and metrics
    results = {"settings": {}, "benchmarks": {}, "average": {}}
    completions = []
    for name, d in data.items():
        n = d["n"]
        flat = [s for samples in d["samples"] for s in samples]
        texts = tokenizer.batch_decode([s["response_ids"] for s in flat], skip_special_tokens=True)
        golds = [p["answer"] for p in d["problems"] for _ in range(n)]
        t0 = time.time()
        scores = score(texts, golds, mode=args.answer_mode, timeout_s=args.grader_timeout_s,
                       num_workers=args.grader_workers, multi_box=args.multi_box)
        grading_s = time.time() - t0
        for s, text, sc in zip(flat, texts, scores):
            s.update(response=text, score=float(sc), answer=extract_answer(text, args.answer_mode, args.multi_box),
                     length=len(s["response_ids"]))
        per_problem = [{"id": p["id"], "samples": samples} for p, samples in zip(d["problems"], d["samples"])]
        metrics = benchmark_metrics(per_problem, n)
        metrics.update(grader_timeouts=scores.timeouts, grader_crashes=getattr(scores, "crashes", 0),
                       no_answer=scores.no_answer,
                       generation_s=round(gen_time[name], 2), grading_s=round(grading_s, 2),
                       skipped_rows=d["problems"].skipped_rows, duplicates_dropped=d["problems"].duplicates)
        results["benchmarks"][name] = metrics
        for p, prompt, samples in zip(d["problems"], d["prompts"], d["samples"]):
            for j, s in enumerate(samples):
                completions.append({
                    "benchmark": name, "problem_id": p["id"], "sample_index": j, "prompt": prompt,
                    "response": s["response"], "gold": p["answer"], "extracted_answer": s["answer"], "score": s["score"],
                    "length": s["length"], "truncated": s["truncated"],
                    "entropy": None if not s["entropy_count"] else s["entropy_sum"] / s["entropy_count"]})

    benches = results["benchmarks"].values()
    for key in ("avg@n", "maj@n", "response_length_mean", "truncation_rate", "answer_rate"):
        results["average"][key] = float(np.mean([m[key] for m in benches]))
    results["settings"] = {
        "model": args.model, "model_path": os.path.abspath(model_path) if os.path.isdir(model_path) else model_path,
        "benchmarks": {name: d["n"] for name, d in data.items()}, "template": template, "engine": engine,
        "device": device, "dtype": str(dtype).removeprefix("torch.") if engine == "hf" else args.dtype,
        "seed": args.seed, "n": args.n, "temperature": temperature, "top_p": args.top_p, "top_k": 0,
        "max_new_tokens": max_new_tokens, "stop_token_ids": stop_ids, "answer_mode": args.answer_mode,
        "grader_timeout_s": args.grader_timeout_s, "entropy": args.entropy, "protocol": args.protocol, "limit": args.limit,
        "data_dir": args.data_dir, "skip_invalid": args.skip_invalid, "args": asdict(args), "command": " ".join(sys.argv),
        "versions": _versions(), "git": _git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)), "wall_s": None,
    }

    output_dir = args.output_dir or os.path.join(
        "eval_out", f"{model_display_name(model_path)}__{time.strftime('%Y%m%d-%H%M%S', time.localtime(t_start))}")
    os.makedirs(output_dir, exist_ok=True)
    results["settings"]["wall_s"] = round(time.time() - t_start, 2)
    table = markdown_table(results, args.entropy)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(output_dir, "completions.jsonl"), "w") as f:
        for row in completions:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print()
    print(table)
    print(f"wrote {output_dir}/results.json, results.md, completions.jsonl")
    return results


if __name__ == "__main__":
    try:
        main(ARGS)
    except UsageError as e:
        _exit_usage(e)
