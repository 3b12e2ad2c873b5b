"""A first GPU hour, prepared: every training script, 20 steps each, on two models, then one evaluation.

    python benchmarks/gpu_check.py                  # one GPU: 5 scripts x 2 models x 20 steps, bf16 (7.5 min at most)
    python benchmarks/gpu_check.py --tiny           # CPU smoke test: 2 steps, tiny random Qwen2 (~1M), fp32 (~1-2 min)
    bash benchmarks/gpu_check.sh [--tiny ...]       # the lent GPU machine (no network): install the carried wheels
                                                    # (.whl/, from benchmarks/fetch_gpu_wheels.sh), then run this
    python benchmarks/gpu_check.py --out gpu_check.md --keep /tmp/gpu_check   # also write the table, keep runs and logs

What it runs, with nothing downloaded (no internet, no vLLM, no DeepSpeed needed):

* the five scripts (grpo.py, opefo.py, steer.py, clip_cov.py, adaptive_clip.py), each for `--steps` (20) steps with
  the Hugging Face engine (`--rollout-engine hf`) in bf16 (`--precision bf16`; fp32 with `--tiny`), no evaluation
  during training and one checkpoint at the end, and DAPO's dynamic sampling capped at `--max-gen-batches` (2)
  generation rounds per step (clip_cov.py filters groups by default, and a random-initialised model earns no
  reward, so every group is filtered out and each step would take the scripts' default 10 rounds), on
  - the testbed model (testbed/model, the scripts' default `--model`), and
  - a randomly initialised Qwen2-architecture model of ~150M parameters (hidden 1024, 12 layers, 16 query and 4
    key/value heads, MLP 3072, tied embeddings) built from a `Qwen2Config` and saved with the testbed tokenizer
    into the work folder; its vocabulary is the testbed tokenizer's, padded to a multiple of 64 (ids past the
    tokenizer's decode to nothing). `--tiny` uses a ~1M-parameter Qwen2 instead, and only that model.
* `eval_math.py --model <run dir>` on the first run that finished (the testbed's test split, `--limit` problems).

Each run is its own subprocess: a small wrapper imports the script as a module, parses its flags with
the script's `parse_args` (else `tyro.cli(module.Args, ...)`), calls `module.main(args)` and records
`torch.cuda.max_memory_allocated()`. Only the scripts' command-line flags, `parse_args`, `Args`, `main`, `token_stats`
and `_compiled` are used, nothing else of their internals.
From each run's `metrics.jsonl` it reports the median step time (`time/step_s`, steps 2 on; the first step, with
warm-up and compilation, apart), the entropy (`entropy/mean`, first -> last step), the largest `|train/ppo_kl|` and
`rollout/logp_diff_max`, and whether the chunked entropy kernel ran compiled (the scripts' `token_stats(...,
compile=None)` compiles on CUDA; read from the script's `_compiled` cache and torch's dynamo counters, "unknown"
when the script does not expose them). A separate probe calls `grpo.token_stats` on a small CUDA tensor (forward
and backward) and says whether `torch.compile` of the kernel worked. A failing run is one row with its error (the
last line of its output); the check goes on. `--budget-s` bounds the whole check: each run is cut at what is left
of it (a timed-out run is a row with its error) and no run starts with less than 30 s left (it is listed as
skipped). Its default on the GPU, 450 s, leaves half a minute of 8 for gpu_check.sh's wheel install and start-up.
The kernel probe runs while the random model is built. The result is a Markdown table, ready for the README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("grpo.py", "opefo.py", "steer.py", "clip_cov.py", "adaptive_clip.py")
TESTBED = os.path.join(REPO, "testbed", "model")
VOCAB_MULTIPLE = 64
MIN_RUN_S = 30.0  # a run is not started with less of the budget left

# Qwen2 shapes: ~150M parameters for the GPU check, ~1M for --tiny (vocabulary: the testbed tokenizer's, padded)
RANDOM_MODELS = {
    "qwen2-random-150m": {
        "hidden_size": 1024,
        "num_hidden_layers": 12,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "intermediate_size": 3072,
    },
    "qwen2-random-1m": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
    },
}

# (flags of every training run, eval_math.py flags) per mode
GPU_RUN = ["--prompts-per-step", "8", "--group-size", "8", "--max-new-tokens", "64", "--micro-batch-size", "64"]
TINY_RUN = [
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
    "--max-new-tokens",
    "8",
    "--micro-batch-size",
    "4",
    "--threads",
    "1",
]
GPU_EVAL = ["--n", "2", "--limit", "100"]
MAX_GEN_BATCHES = 2  # DAPO filtering's generation rounds per step (clip_cov.py filters by default; the scripts: 10)
GPU_BUDGET_S, TINY_BUDGET_S = 450.0, 600.0
TINY_EVAL = ["--n", "1", "--limit", "4", "--max-new-tokens", "8", "--grader-workers", "1"]

# Runs one script in this subprocess: argv[1] script path, argv[2] JSON list of its flags, argv[3] result file.
WRAPPER = textwrap.dedent("""
    import importlib.util, json, os, sys, time
    script, argv, result_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    out = {"error": None}
    try:
        import torch, tyro
        out["cuda"] = torch.cuda.is_available()
        name = os.path.splitext(os.path.basename(script))[0]
        spec = importlib.util.spec_from_file_location(name, script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        try:  # the script's own parser (its flag groups), else tyro over its flat Args
            parse = getattr(module, "parse_args", None)
            args = parse(argv) if parse else tyro.cli(module.Args, args=argv, config=(tyro.conf.OmitArgPrefixes,))
        except SystemExit as e:
            raise RuntimeError(f"the script refused its flags (exit status {e.code}; see its output)") from None
        if out["cuda"]:
            torch.cuda.reset_peak_memory_stats()
        start = time.time()
        out["run_dir"] = module.main(args)
        out["wall_s"] = time.time() - start
        if out["cuda"]:
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        cache = getattr(module, "_compiled", None)
        if not isinstance(cache, dict):
            out["compiled"] = "unknown"
        elif not cache:
            out["compiled"] = "no (eager)"
        else:
            try:
                from torch._dynamo.utils import counters
                graphs = counters["stats"]["unique_graphs"]
            except Exception:
                graphs = None
            out["compiled"] = "yes" if graphs is None else ("yes (%d graphs)" % graphs if graphs else "no (fell back)")
    except BaseException as e:
        message = str(e).strip().splitlines()
        out["error"] = type(e).__name__ + (": " + message[0] if message else "")
    with open(result_path, "w") as f:
        json.dump(out, f)
""")

# The kernel alone: grpo.token_stats (compile=None: compiled on CUDA) forward and backward on a small tensor.
PROBE = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    out = {"cuda": None, "device": None, "compiled": "unknown", "error": None}
    try:
        import torch
        out["cuda"] = torch.cuda.is_available()
        out["device"] = torch.cuda.get_device_name(0) if out["cuda"] else "cpu"
        import grpo
        device = "cuda" if out["cuda"] else "cpu"
        logits = torch.randn(300, 1000, device=device, requires_grad=True)
        tokens = torch.randint(0, 1000, (300,), device=device)
        logp, entropy, g = grpo.token_stats(logits, tokens, chunk_size=128)
        (logp.sum() + entropy.sum()).backward()
        finite = bool(torch.isfinite(logits.grad).all())
        cache = getattr(grpo, "_compiled", None)
        if not isinstance(cache, dict):
            out["compiled"] = "unknown"
        elif cache:
            out["compiled"] = "yes" if finite else "yes, but non-finite gradients"
        else:
            out["compiled"] = "no (eager)" + ("" if out["cuda"] else ": no CUDA")
    except BaseException as e:
        message = str(e).strip().splitlines()
        out["error"] = type(e).__name__ + (": " + message[0] if message else "")
        out["compiled"] = "no (failed)"
    print("GPU_CHECK_PROBE " + json.dumps(out))
""")


def build_random_qwen2(out_dir: str, shape: dict, tokenizer_dir: str = TESTBED, seed: int = 0) -> int:
    """A randomly initialised Qwen2ForCausalLM with the testbed tokenizer, saved to `out_dir`; its parameter count."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    eos = tokenizer.eos_token_id
    config = Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
        **shape,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl; an unparseable (e.g. partial last) line is left out."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def summarise(rows: list[dict]) -> dict:
    """Step count, median step time (steps 2 on), first step time, entropy first/last, max |ppo_kl|, max logp diff
    (finite values only), and the steps whose ppo_kl is not finite: those without an update (e.g. DAPO's filter left
    no group: `rollout/filtered_group_frac` 1, counted apart) or diverged."""

    def number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def series(key):
        return [r[key] for r in rows if number(r.get(key)) and math.isfinite(r[key])]

    step_s = [(r["step"], r["time/step_s"]) for r in rows if isinstance(r.get("time/step_s"), (int, float))]
    later = [t for s, t in step_s if s != step_s[0][0]] if step_s else []
    entropy, kl, diff = series("entropy/mean"), series("train/ppo_kl"), series("rollout/logp_diff_max")
    return {
        "steps": len(step_s),
        "step_s": statistics.median(later) if later else (step_s[0][1] if step_s else None),
        "first_step_s": step_s[0][1] if step_s else None,
        "entropy": (entropy[0], entropy[-1]) if entropy else None,
        "ppo_kl": max(abs(v) for v in kl) if kl else None,
        "logp_diff_max": max(diff) if diff else None,
        "ppo_kl_nan": sum(1 for r in rows if number(r.get("train/ppo_kl")) and not math.isfinite(r["train/ppo_kl"])),
        "ppo_kl_nan_filtered": sum(
            1
            for r in rows
            if number(r.get("train/ppo_kl"))
            and not math.isfinite(r["train/ppo_kl"])
            and r.get("rollout/filtered_group_frac") == 1
        ),
    }


def kl_cell(row: dict) -> str:
    """max |train/ppo_kl| of a row, and its non-finite steps: "nan (2 steps, every group filtered)"."""
    cell, nan = fmt(row.get("ppo_kl"), ".2g"), row.get("ppo_kl_nan") or 0
    if not nan:
        return cell
    filtered = row.get("ppo_kl_nan_filtered") or 0
    why = (
        ", every group filtered" if filtered == nan else (f", {filtered} with every group filtered" if filtered else "")
    )
    return ("nan" if row.get("ppo_kl") is None else f"{cell}, nan") + f" ({nan} step{'s' * (nan > 1)}{why})"


def last_line(path: str) -> str:
    """The last informative line of a log (progress bars and blank lines skipped), shortened."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line and not line.startswith(("Writing model shards", "Loading weights"))]
    for line in reversed(lines):  # the most telling line: an error, else the last one
        if line.startswith(("error:", "Traceback")) or "Error" in line.split(":")[0]:
            return line[:200]
    return lines[-1][:200] if lines else ""


def run_script(script: str, flags: list[str], work: str, tag: str, env: dict, timeout_s: float) -> dict:
    """Run one script in a subprocess through WRAPPER; the summary of its metrics, peak memory, compile state, error."""
    result_path = os.path.join(work, "results", f"{tag}.json")
    log_path = os.path.join(work, "logs", f"{tag}.log")
    start = time.time()
    error = None
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run(
                [sys.executable, "-c", WRAPPER, os.path.join(REPO, script), json.dumps(flags), result_path],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
            )
        if proc.returncode != 0 and not os.path.exists(result_path):
            error = f"exit status {proc.returncode}: {last_line(log_path)}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout_s:.0f} s: {last_line(log_path)}"
    out = {}
    if os.path.exists(result_path):
        with open(result_path) as f:
            out = json.load(f)
        if out.get("error"):
            tail = last_line(log_path)
            error = out["error"] + (f" | {tail}" if tail and tail not in out["error"] else "")
    run_dir = out.get("run_dir") or os.path.join(work, "runs", tag)
    summary = summarise(read_metrics(os.path.join(run_dir, "metrics.jsonl")))
    if error is None and summary["steps"] == 0:
        error = f"no steps in {os.path.join(run_dir, 'metrics.jsonl')}"
    return {
        **summary,
        "run_dir": run_dir if os.path.isdir(run_dir) else None,
        "peak_gib": out.get("peak_gib"),
        "compiled": out.get("compiled", "unknown"),
        "cuda": out.get("cuda"),
        "error": error,
        "wall_s": time.time() - start,
        "log": log_path,
    }


def run_eval(run_dir: str, flags: list[str], work: str, env: dict, timeout_s: float) -> dict:
    out_dir = os.path.join(work, "eval")
    log_path = os.path.join(work, "logs", "eval_math.log")
    cmd = [
        sys.executable,
        os.path.join(REPO, "eval_math.py"),
        "--model",
        run_dir,
        "--engine",
        "hf",
        "--output-dir",
        out_dir,
        *flags,
    ]
    start = time.time()
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s: {last_line(log_path)}", "wall_s": time.time() - start}
    wall = time.time() - start
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}: {last_line(log_path)}", "wall_s": wall}
    try:
        with open(os.path.join(out_dir, "results.json")) as f:
            results = json.load(f)
        benches = results["benchmarks"]
        name, metrics = next(iter(benches.items()))
        return {
            "error": None,
            "wall_s": wall,
            "benchmark": name,
            "avg": metrics.get("avg@n"),
            "n": results["settings"].get("n"),
            "length": metrics.get("response_length_mean"),
        }
    except (OSError, ValueError, KeyError, StopIteration) as e:
        return {"error": f"results.json unreadable: {type(e).__name__}: {e}", "wall_s": wall}


def start_probe(env: dict) -> subprocess.Popen:
    """The kernel probe, started in the background (it compiles while the random model is built)."""
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, REPO],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_probe(proc: subprocess.Popen, timeout_s: float) -> dict:
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {
            "cuda": None,
            "device": None,
            "compiled": "unknown",
            "error": f"the probe timed out after {timeout_s:.0f} s",
        }
    for line in stdout.splitlines():
        if line.startswith("GPU_CHECK_PROBE "):
            return json.loads(line.split(" ", 1)[1])
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"cuda": None, "device": None, "compiled": "unknown", "error": f"exit status {proc.returncode}: {tail}"}


def fmt(value, spec: str = ".3g", none: str = "–") -> str:
    return none if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    head = (
        "| script | model | steps | run wall (s) | step time (s, median) | first step (s) | peak GPU memory (GiB) "
        "| entropy/mean first → last | max \\|train/ppo_kl\\| | max rollout/logp_diff_max | kernel compiled | error |"
    )
    lines = [head, "|" + "---|" * 2 + "---:|" * 8 + "---|" * 2]
    for r in rows:
        entropy = "–" if r.get("entropy") is None else f"{r['entropy'][0]:.3f} → {r['entropy'][1]:.3f}"
        peak = fmt(r.get("peak_gib"), ".2f", "n/a (CPU)" if r.get("cuda") is False else "–")
        error = (r.get("error") or "").replace("|", "\\|")
        lines.append(
            f"| {r['script']} | {r['model']} | {r.get('steps', 0)} | {fmt(r.get('wall_s'), '.0f')} | "
            f"{fmt(r.get('step_s'))} | "
            f"{fmt(r.get('first_step_s'))} | {peak} | {entropy} | {kl_cell(r)} | "
            f"{fmt(r.get('logp_diff_max'), '.2g')} | {r.get('compiled', 'unknown')} | {error or 'none'} |"
        )
    return "\n".join(lines)


def common_flags(args: argparse.Namespace) -> list[str]:
    """The flags every training run gets, whatever its model: precision, engine, batch shape, the DAPO cap."""
    return [
        "--total-steps",
        str(args.steps),
        "--rollout-engine",
        "hf",
        "--precision",
        "fp32" if args.tiny else "bf16",
        "--eval-every",
        "0",
        "--checkpoint-every",
        "0",
        "--max-gen-batches",
        str(args.max_gen_batches),
        *(TINY_RUN if args.tiny else GPU_RUN),
    ]


def training_flags(args: argparse.Namespace, model_path: str, work: str, tag: str) -> list[str]:
    """The command line of one training run (parsed by the script's own `Args`)."""
    return ["--model", model_path, "--output-dir", os.path.join(work, "runs"), "--run-name", tag, *common_flags(args)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The check's flags, with the defaults that depend on `--tiny` filled in; a refused flag exits (status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="CPU smoke test: 2 steps, small batch, ~1M random Qwen2, fp32"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 20; 2 with --tiny)")
    parser.add_argument("--scripts", default=",".join(SCRIPTS), help="comma-separated training scripts")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget of the whole check: each run is cut at what is left of it, and no run "
        f"starts with less than {MIN_RUN_S:.0f} s left (default {GPU_BUDGET_S:.0f}; {TINY_BUDGET_S:.0f} with --tiny)",
    )
    parser.add_argument(
        "--max-gen-batches",
        type=int,
        default=MAX_GEN_BATCHES,
        help="most generation rounds per step of DAPO's dynamic sampling, passed to every script (default "
        f"{MAX_GEN_BATCHES}; only scripts that filter groups, clip_cov.py by default, use it)",
    )
    parser.add_argument(
        "--run-timeout-s", type=float, default=None, help="limit per run (default 240; 180 with --tiny)"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the eval_math.py run")
    parser.add_argument(
        "--keep", default=None, help="work folder to keep (runs, logs, models); default: a temp folder, removed"
    )
    parser.add_argument("--out", default=None, help="also write the report (Markdown) to this file")
    args = parser.parse_args(argv)

    args.scripts = [s.strip() for s in args.scripts.split(",") if s.strip()]
    unknown = [s for s in args.scripts if not os.path.isfile(os.path.join(REPO, s))]
    if unknown:
        parser.error(f"--scripts: no such script(s) in {REPO}: {', '.join(unknown)}")
    if not args.scripts:
        parser.error("--scripts: no script named")
    for flag in ("steps", "max_gen_batches"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("budget_s", "run_timeout_s"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0")
    args.steps = args.steps or (2 if args.tiny else 20)
    args.budget_s = args.budget_s if args.budget_s is not None else (TINY_BUDGET_S if args.tiny else GPU_BUDGET_S)
    args.run_timeout_s = args.run_timeout_s or (180.0 if args.tiny else 240.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scripts, steps, budget, run_timeout = args.scripts, args.steps, args.budget_s, args.run_timeout_s
    work = args.keep or tempfile.mkdtemp(prefix="gpu_check_")
    for sub in ("runs", "logs", "results", "models"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.tiny:
        env["OMP_NUM_THREADS"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""  # the tiny configuration is a CPU check, also on a GPU machine
    t_start = time.time()

    import torch
    import transformers

    probe_proc = start_probe(env)
    models = [] if args.tiny else [("testbed", TESTBED, None)]
    name = "qwen2-random-1m" if args.tiny else "qwen2-random-150m"
    path = os.path.join(work, "models", name)
    try:
        transformers.utils.logging.disable_progress_bar()
        params = build_random_qwen2(path, RANDOM_MODELS[name])
        models.append((f"{name} ({params / 1e6:.1f}M params)", path, None))
    except Exception as e:  # the other model's runs still go ahead
        models.append((name, None, f"building the random model failed: {type(e).__name__}: {e}"))
    probe = finish_probe(probe_proc, min(300.0, budget - (time.time() - t_start)))
    header = [
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"torch.cuda.is_available(): {probe.get('cuda')}, device: {probe.get('device')}",
        f"chunked entropy kernel (grpo.token_stats, compile=None) on a small tensor: compiled: "
        f"{probe.get('compiled')}" + (f"; error: {probe['error']}" if probe.get("error") else ""),
    ]

    rows, evaluation = [], None
    for model_label, model_path, model_error in models:
        for script in scripts:
            tag = f"{os.path.splitext(script)[0]}__{model_label.split(' ')[0]}"
            row = {"script": script, "model": model_label}
            if model_error:
                rows.append({**row, "error": model_error})
                continue
            left = budget - (time.time() - t_start)
            if left < MIN_RUN_S:
                rows.append(
                    {**row, "error": f"skipped: {max(left, 0):.0f} s of the time budget (--budget-s {budget:.0f}) left"}
                )
                continue
            flags = training_flags(args, model_path, work, tag)
            result = run_script(script, flags, work, tag, env, min(run_timeout, left))
            rows.append({**row, **result})
            print(
                f"  {script} on {model_label}: {result['steps']} steps in {result['wall_s']:.0f} s"
                + (f"; error: {result['error']}" if result["error"] else ""),
                flush=True,
            )
            left = budget - (time.time() - t_start)
            if evaluation is None and not args.no_eval and result["error"] is None and result["run_dir"]:
                if left < MIN_RUN_S:
                    evaluation = {
                        "run": tag,
                        "wall_s": 0.0,
                        "error": f"skipped: {max(left, 0):.0f} s of the budget left",
                    }
                else:
                    evaluation = {
                        "run": tag,
                        **run_eval(
                            result["run_dir"], TINY_EVAL if args.tiny else GPU_EVAL, work, env, min(run_timeout, left)
                        ),
                    }
                print(
                    f"  eval_math.py --model {tag}: {evaluation['wall_s']:.0f} s"
                    + (f"; error: {evaluation['error']}" if evaluation["error"] else ""),
                    flush=True,
                )

    report = [
        "## GPU check" + (" (--tiny, CPU)" if args.tiny else ""),
        "",
        f"{steps} steps per run, `{' '.join(common_flags(args)[2:])}`.",
        "",
        *[f"- {line}" for line in header],
        "",
        table(rows),
        "",
    ]
    if evaluation is None:
        report.append("eval_math.py: not run" + (" (--no-eval)" if args.no_eval else " (no run finished)"))
    elif evaluation["error"]:
        report.append(f"eval_math.py --model <{evaluation['run']}>: error: {evaluation['error']}")
    else:
        report.append(
            f"eval_math.py --model <{evaluation['run']}> --engine hf "
            f"{' '.join(TINY_EVAL if args.tiny else GPU_EVAL)}: {evaluation['benchmark']} "
            f"avg@{evaluation['n']} {fmt(evaluation['avg'])}, mean response length "
            f"{fmt(evaluation['length'])} tokens, {evaluation['wall_s']:.0f} s"
        )
    failed = sum(1 for r in rows if r.get("error"))
    report += [
        "",
        f"{len(rows) - failed}/{len(rows)} runs without error; total {time.time() - t_start:.0f} s"
        + (f"; work folder {work}" if args.keep else ""),
    ]
    text = "\n".join(report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if failed == 0 and (evaluation is None or not evaluation["error"]) else 1


if __name__ == "__main__":
    sys.exit(main())
