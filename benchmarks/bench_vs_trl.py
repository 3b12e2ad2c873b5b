"""grpo.py against TRL's GRPOTrainer: the same strict on-policy configuration, step time, memory, learning.

    python benchmarks/bench_vs_trl.py [--steps 20] [--reps 2] [--threads 1] [--trl-path DIR]
    python benchmarks/bench_vs_trl.py --steps 200 --reps 3        # the README table (idle machine), and
    python benchmarks/bench_vs_trl.py --steps 200 --reps 3 --threads 2    # as grpo.py's own README timing
    python benchmarks/bench_vs_trl.py --profile --steps 8         # where one step's time goes, both trainers

TRL is a requirement of this benchmark only (never of the project). Install it into its own directory,
so that the project's environment stays as it is, and point the benchmark at it:

    pip install --no-deps --target /path/to/trl_site trl==1.16.0
    python benchmarks/bench_vs_trl.py --trl-path /path/to/trl_site      # or TRL_PATH=/path/to/trl_site

(trl 1.16.0's other requirements, accelerate, datasets, transformers, pandas, pyarrow, ... are already
in requirements.txt's environment; `pip install trl==1.16.0` into a throw-away venv works as well.)
Without an importable TRL the benchmark prints this and exits with status 2.

Both trainers run as separate subprocesses, interleaved (grpo, TRL, grpo, TRL, ...), with the same
number of steps, the same torch thread count (OMP_NUM_THREADS / MKL_NUM_THREADS, and
torch.set_num_threads in the TRL process), fp32 on the CPU, on:
  testbed/model, the synthetic `paths` task (load_problems("paths"), build_prompt(q, "plain")),
  16 prompts x 8 responses per step, 64 new tokens at most, temperature 1 (top-p 1, top-k off),
  HF rollouts (grpo.py: its decode loop, the samples of `generate`; TRL: `generate`),
  grading by common.reward.score (1 correct, 0 otherwise; 2 grader workers),
  one AdamW step per rollout batch (lr 2e-4 constant, no weight decay, grad-norm clip 1.0),
  token-mean loss over the whole batch, clip eps low 0.2 / high 0.28, no KL, group-std advantages,
  micro-batches of --micro-batch-size sequences (grpo.py's default 32).
The TRL process is fed the prompts in grpo.py's order (same seed), so step k of both trainers sees
the same 16 problems; only the sampled responses differ. Repetition r runs both trainers with seed
--seed + r (CPU runs are reproducible, so equal seeds would repeat the same curves): the learning
curves are means over seeds, and each grpo/TRL pair of a repetition shares its seed.

TRL mapping (GRPOConfig): num_generations=8; per_device_train_batch_size = micro-batch size;
gradient_accumulation_steps = steps_per_generation = 128 / micro-batch size, so the generation batch
is 128 completions (16 prompts) and one optimizer step consumes exactly one generation batch
(TRL then skips its old-policy pass; its ratio is exp(logp - logp.detach()) = 1); num_iterations=1;
beta=0; loss_type="dapo" (token sum / active tokens of the whole generation batch = token-mean);
epsilon=0.2, epsilon_high=0.28; scale_rewards="group"; max_completion_length=64; temperature=1,
top_p=1, top_k=0; learning_rate=2e-4, lr_scheduler_type="constant", warmup 0, weight_decay=0,
optim="adamw_torch" (torch.optim.AdamW, as grpo.py; transformers' default would be the fused
variant), max_grad_norm=1.0; bf16=False, use_cpu=True, gradient_checkpointing=False (GRPOConfig
defaults to True for both), disable_dropout=True (grpo.py zeroes dropout too); shuffle_dataset=False
(the dataset is already in grpo.py's order); logging_steps=1, save_strategy="no", eval_strategy="no",
report_to="none", use_vllm=False, log_completions=False.
Not matched: TRL divides by (group std + 1e-4), grpo.py by (std + 1e-6) (only matters for groups with
tiny std, which 0/1 rewards do not have); grpo.py's dual-clip c = 10 (TRL: none) and its logged
entropy diagnostics (entropy, G, predicted entropy flows) have no TRL counterpart; grpo.py runs with
its default torch.use_deterministic_algorithms(True) (TRL: off).

Step time: grpo.py's `time/step_s` from metrics.jsonl (rollout to optimizer step and metric
reduction; TensorBoard writing and the final checkpoint are outside it); TRL's from a callback,
on_step_begin to on_step_end (generation, reward, loss, backward, clip, optimizer step; the
Trainer's logging is outside it). CPU time per step: the CPU seconds (user + system) of the trainer's
process tree between two consecutive per-step log lines (sampled every 0.05 s), steps 2..N; with one
thread per trainer it moves much less with other processes' load than wall time does. Peak RSS:
ru_maxrss of the trainer process from wait4 (the largest of the trainer and the grader workers it
reaped), and the largest sum of RSS over the trainer's process tree, sampled. (On `arith` the
grader's string fast path decides every answer, so no grader worker process is started.) Load
averages are printed with every figure: on a shared 2-core machine the timings follow the load, and
with two threads per trainer a descheduled OpenMP thread stalls every parallel region (the same
`generate` call took 0.3 s to 15 s on a busy machine), hence --threads 1 by default.

--profile runs each trainer once under cProfile (the `--steps` given) and prints the seconds spent in
each part of a step: rollout, grading, grpo.py's old-policy no-grad pass, training forward,
backward, clipping, optimizer, diagnostics, logging.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRL_TESTED = "1.16.0"
INSTALL_HINT = f"""TRL is not importable (it is a requirement of this benchmark only, not of the project).
Install it into a separate directory and pass that directory:
    pip install --no-deps --target /path/to/trl_site trl=={TRL_TESTED}
    python benchmarks/bench_vs_trl.py --trl-path /path/to/trl_site   (or set TRL_PATH)
trl {TRL_TESTED} needs accelerate>=1.10.1, datasets>=4.7, transformers>=4.56.2, huggingface_hub, jinja2,
numpy, packaging, pandas, psutil, pyarrow, pyyaml: all present in the project's environment."""

PROMPTS_PER_STEP, GROUP_SIZE, MAX_NEW_TOKENS, LEARNING_RATE = 16, 8, 64, 2e-4
CLIP_LOW, CLIP_HIGH, TEMPERATURE, GRADER_WORKERS = 0.2, 0.28, 1.0, 2


def load() -> str:
    """The load averages, as `uptime` prints them."""
    try:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def load1() -> float:
    return os.getloadavg()[0]


def grpo_prompt_order(num_problems: int, seed: int, count: int) -> list[int]:
    """Indices of the training problems grpo.py uses at positions 0..count-1 (one process): a fresh
    torch.randperm per epoch, seeded with seed * 1_000_003 + epoch (`common.data.take_prompts`)."""
    import torch

    order = []
    for i in range(count):
        epoch = i // num_problems
        if epoch * num_problems == i:
            perm = torch.randperm(num_problems, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        order.append(int(perm[i % num_problems]))
    return order


# ────────────────────────────────────────────────────────────────────────────────────────────────
# The TRL process
# ────────────────────────────────────────────────────────────────────────────────────────────────
def trl_child(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from common.data import build_prompt, load_problems
    from common.reward import score

    model_path = str(REPO / "testbed" / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    problems = load_problems("paths")
    order = grpo_prompt_order(len(problems), a.seed, a.steps * PROMPTS_PER_STEP)
    dataset = Dataset.from_list(
        [
            {"prompt": build_prompt(problems[i]["question"], "plain", tokenizer), "answer": problems[i]["answer"]}
            for i in order
        ]
    )

    def arith_reward(completions, answer, **_):
        return list(score(completions, answer, num_workers=GRADER_WORKERS))

    seqs = PROMPTS_PER_STEP * GROUP_SIZE
    accumulation = seqs // a.micro_batch_size
    config = GRPOConfig(
        output_dir=a.out,
        seed=a.seed,
        max_steps=a.steps,
        per_device_train_batch_size=a.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        num_generations=GROUP_SIZE,
        num_iterations=1,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        beta=0.0,
        loss_type="dapo",
        epsilon=CLIP_LOW,
        epsilon_high=CLIP_HIGH,
        scale_rewards="group",
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        disable_dropout=True,
        shuffle_dataset=False,
        use_vllm=False,
        log_completions=False,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    assert config.generation_batch_size == seqs and config.steps_per_generation * a.micro_batch_size == seqs

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step, written with the step's logged metrics to steps.jsonl."""

        def __init__(self, out):
            self.out, self.start, self.step_s = out, None, {}

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.step_s[state.global_step] = time.perf_counter() - self.start

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and state.global_step in self.step_s and "reward" in logs:
                row = {"step": state.global_step, "step_s": self.step_s.pop(state.global_step)}
                row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
                self.out.write(json.dumps(row) + "\n")
                self.out.flush()

    with open(os.path.join(a.out, "steps.jsonl"), "w") as out:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=arith_reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer(out)],
        )
        with open(os.path.join(a.out, "info.json"), "w") as f:
            json.dump(
                {
                    "trl": trl.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "generation_batch_size": config.generation_batch_size,
                    "steps_per_generation": config.steps_per_generation,
                    "gradient_accumulation_steps": config.gradient_accumulation_steps,
                },
                f,
            )
        trainer.train()


# ────────────────────────────────────────────────────────────────────────────────────────────────
# The parent: runs, measurements, report
# ────────────────────────────────────────────────────────────────────────────────────────────────
def child_env(a: argparse.Namespace, with_trl: bool) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(a.threads)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None) if not with_trl else None
    if with_trl and a.trl_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (a.trl_path, os.environ.get("PYTHONPATH")) if p)
    return env


def trl_version(a: argparse.Namespace) -> str | None:
    probe = subprocess.run(
        [sys.executable, "-c", "import trl; from trl import GRPOTrainer; print(trl.__version__)"],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(a, True),
        cwd=REPO,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def grpo_command(a: argparse.Namespace, out_dir: str, name: str, seed: int) -> list[str]:
    """grpo.py with every setting of the comparison spelled out (its defaults, except no evaluation,
    no periodic checkpoints and no completion logging)."""
    return [
        sys.executable,
        str(REPO / "grpo.py"),
        "--total-steps",
        str(a.steps),
        "--eval-every",
        "0",
        "--checkpoint-every",
        "0",
        "--log-completions-every",
        "0",
        "--output-dir",
        out_dir,
        "--run-name",
        name,
        "--seed",
        str(seed),
        "--model",
        str(REPO / "testbed" / "model"),
        "--train-data",
        "paths",
        "--template",
        "plain",
        "--rollout-engine",
        "hf",
        "--precision",
        "fp32",
        "--prompts-per-step",
        str(PROMPTS_PER_STEP),
        "--group-size",
        str(GROUP_SIZE),
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--temperature",
        str(TEMPERATURE),
        "--top-p",
        "1.0",
        "--learning-rate",
        str(LEARNING_RATE),
        "--lr-schedule",
        "constant",
        "--lr-warmup-steps",
        "0",
        "--weight-decay",
        "0.0",
        "--max-grad-norm",
        "1.0",
        "--update-epochs",
        "1",
        "--num-minibatches",
        "1",
        "--micro-batch-size",
        str(a.micro_batch_size),
        "--loss-agg-mode",
        "token-mean",
        "--kl-coef",
        "0",
        "--ent-coef",
        "0",
        "--clip-low",
        str(CLIP_LOW),
        "--clip-high",
        str(CLIP_HIGH),
        "--scale-rewards",
        "group",
        "--grader-workers",
        str(GRADER_WORKERS),
    ]


def trl_command(a: argparse.Namespace, out_dir: str, seed: int) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-trl",
        "--out",
        out_dir,
        "--steps",
        str(a.steps),
        "--seed",
        str(seed),
        "--threads",
        str(a.threads),
        "--micro-batch-size",
        str(a.micro_batch_size),
    ]


class Monitor(threading.Thread):
    """Samples a process tree every `interval` s: the largest sum of RSS over the process and its
    descendants, and the tree's CPU time (user + system) whenever a new line appears in `watch`
    (the trainer's per-step log), which gives CPU seconds per step, a figure that the load of
    other processes disturbs much less than wall time (with one thread per trainer)."""

    def __init__(self, pid: int, watch: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.watch, self.interval = pid, watch, interval
        self.peak, self.cpu_at_line, self.stop = 0, [], threading.Event()

    def run(self):
        try:
            import psutil
        except ImportError:
            return
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        size, lines = -1, 0
        while not self.stop.is_set():
            rss = cpu = 0.0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            try:
                new_size = os.path.getsize(self.watch)
            except OSError:
                new_size = size
            if new_size != size:
                size = new_size
                with open(self.watch, "rb") as f:
                    count = f.read().count(b"\n")
                self.cpu_at_line += [cpu] * (count - lines)
                lines = count
            self.stop.wait(self.interval)


def run_child(cmd: list[str], env: dict, log_path: str, watch: str) -> dict:
    """Run one trainer; wall time, exit status, CPU time and peak RSS (wait4 on its pid), and the
    Monitor's figures (`watch`: its per-step log file)."""
    before = load()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = Monitor(proc.pid, watch)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}; end of its log {log_path}:\n{tail}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_mib": usage.ru_maxrss / 1024,
        "tree_rss_mib": sampler.peak / 2**20,
        "cpu_at_step": sampler.cpu_at_line,
        "load_before": before,
        "load_after": load(),
    }


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rep_seed(a: argparse.Namespace, rep: int) -> int:
    """Repetition r runs both trainers with seed + r (the same seed with --same-seed)."""
    return a.seed if a.same_seed else a.seed + rep


def run_grpo(a, work: str, rep: int) -> dict:
    name = f"grpo_rep{rep}"
    res = run_child(
        grpo_command(a, work, name, rep_seed(a, rep)),
        child_env(a, False),
        os.path.join(work, name + ".log"),
        os.path.join(work, name, "metrics.jsonl"),
    )
    rows = [r for r in read_jsonl(os.path.join(work, name, "metrics.jsonl")) if r["step"] >= 1]
    res["steps"] = [
        {
            "step": r["step"],
            "step_s": r["time/step_s"],
            "reward": r["rollout/reward"],
            "entropy": r["entropy/mean"],
            "length": r["rollout/response_length_mean"],
            "rollout_s": r["time/rollout_s"],
            "grading_s": r["time/grading_s"],
            "training_s": r["time/training_s"],
        }
        for r in rows
    ]
    return res


def run_trl(a, work: str, rep: int) -> dict:
    out = os.path.join(work, f"trl_rep{rep}")
    os.makedirs(out, exist_ok=True)
    res = run_child(
        trl_command(a, out, rep_seed(a, rep)), child_env(a, True), out + ".log", os.path.join(out, "steps.jsonl")
    )
    res["steps"] = [
        {
            "step": r["step"],
            "step_s": r["step_s"],
            "reward": r["reward"],
            "entropy": r.get("entropy"),
            "length": r.get("completions/mean_length"),
            "trl_step_time": r.get("step_time"),
        }
        for r in read_jsonl(os.path.join(out, "steps.jsonl"))
    ]
    with open(os.path.join(out, "info.json")) as f:
        res["info"] = json.load(f)
    return res


def med(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def cpu_per_step(run: dict) -> list[float]:
    """CPU seconds of the trainer's process tree between consecutive per-step log lines (steps 2..N)."""
    c = run["cpu_at_step"]
    return [c[i] - c[i - 1] for i in range(1, len(c))]


def loads(run: dict) -> str:
    return (
        f"{run['load_before'].split('load average:')[-1].strip()} -> "
        f"{run['load_after'].split('load average:')[-1].strip()}"
    )


def report(a, runs: dict[str, list[dict]], version: str, threads_seen: str) -> dict:
    print(
        "\n== per run (seconds; step time: median over steps, mean over steps 2..N, step 1; CPU/step: median "
        "CPU s of steps 2..N; wall and CPU: whole process incl. start-up; RSS in MiB)"
    )
    print(
        f"{'trainer':7} {'rep':>3} {'steps':>5} {'median':>7} {'mean>1':>7} {'first':>6} {'CPU/st':>7} {'wall':>7} "
        f"{'CPU':>7} {'maxRSS':>7} {'treeRSS':>7}  load before -> after (1/5/15 min)"
    )
    for rep in range(a.reps):
        for name in ("grpo", "trl"):
            r = runs[name][rep]
            ts = [s["step_s"] for s in r["steps"]]
            print(
                f"{name:7} {rep:>3} {len(ts):>5} {med(ts):7.3f} {mean(ts[1:]):7.3f} {ts[0]:6.2f} "
                f"{med(cpu_per_step(r)):7.3f} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} {r['maxrss_mib']:7.0f} "
                f"{r['tree_rss_mib']:7.0f}  {loads(r)}"
            )

    all_times = {n: [s["step_s"] for r in runs[n] for s in r["steps"]] for n in runs}
    m_grpo, m_trl = med(all_times["grpo"]), med(all_times["trl"])
    per_rep = [
        med([s["step_s"] for s in g["steps"]]) / med([s["step_s"] for s in t["steps"]])
        for g, t in zip(runs["grpo"], runs["trl"])
    ]
    print("\n== summary")
    print(
        f"TRL {version}, torch threads {threads_seen}, {a.steps} steps x {a.reps} repetitions, "
        f"micro-batch {a.micro_batch_size}, seeds {[rep_seed(a, r) for r in range(a.reps)]} (each grpo/TRL pair "
        f"shares its seed and its prompts)"
    )
    print(
        f"median step time: grpo.py {m_grpo:.3f} s, TRL {m_trl:.3f} s; ratio grpo/TRL {m_grpo / m_trl:.2f} "
        f"(per repetition: {', '.join(f'{x:.2f}' for x in per_rep)})"
    )
    c_grpo, c_trl = (med([c for r in runs[n] for c in cpu_per_step(r)]) for n in ("grpo", "trl"))
    print(
        f"median CPU time per step (steps 2..N; less sensitive to other processes' load): grpo.py {c_grpo:.3f} s, "
        f"TRL {c_trl:.3f} s; ratio grpo/TRL {c_grpo / c_trl:.2f}"
    )
    print(
        f"peak RSS (trainer, wait4): grpo.py {max(r['maxrss_mib'] for r in runs['grpo']):.0f} MiB, "
        f"TRL {max(r['maxrss_mib'] for r in runs['trl']):.0f} MiB; process tree incl. grader workers: "
        f"grpo.py {max(r['tree_rss_mib'] for r in runs['grpo']):.0f} MiB, "
        f"TRL {max(r['tree_rss_mib'] for r in runs['trl']):.0f} MiB"
    )
    g_steps = [s for r in runs["grpo"] for s in r["steps"]]
    print(
        f"grpo.py step breakdown (median s): rollout {med(s['rollout_s'] for s in g_steps):.3f}, "
        f"grading {med(s['grading_s'] for s in g_steps):.3f}, old-policy pass + update "
        f"{med(s['training_s'] for s in g_steps):.3f}; TRL's own `step_time` (training_step) median "
        f"{med(s['trl_step_time'] for r in runs['trl'] for s in r['steps']):.3f} s"
    )

    window = a.window or max(1, a.steps // 10)
    print(
        f"\n== learning curves: training reward (= accuracy) / entropy / response length, mean over "
        f"{a.reps} repetition(s) and windows of {window} steps"
    )
    print(
        f"{'steps':>11} | {'reward grpo':>11} {'TRL':>6} | {'entropy grpo':>12} {'TRL':>7} | {'len grpo':>8} {'TRL':>5}"
    )
    curves = []
    for lo in range(1, a.steps + 1, window):
        hi = min(lo + window - 1, a.steps)
        row = {"steps": [lo, hi]}
        for name in ("grpo", "trl"):
            sel = [s for r in runs[name] for s in r["steps"] if lo <= s["step"] <= hi]
            row[name] = {k: mean(s[k] for s in sel) for k in ("reward", "entropy", "length")}
        curves.append(row)
        g, t = row["grpo"], row["trl"]
        print(
            f"{lo:>5}-{hi:<5} | {g['reward']:11.3f} {t['reward']:6.3f} | {g['entropy']:12.4f} {t['entropy']:7.4f} | "
            f"{g['length']:8.1f} {t['length']:5.1f}"
        )
    print(
        f"reward first -> last window: grpo.py {curves[0]['grpo']['reward']:.3f} -> "
        f"{curves[-1]['grpo']['reward']:.3f}, TRL {curves[0]['trl']['reward']:.3f} -> {curves[-1]['trl']['reward']:.3f}"
    )
    return {
        "median_step_s": {"grpo": m_grpo, "trl": m_trl},
        "ratio_grpo_trl": m_grpo / m_trl,
        "median_cpu_per_step_s": {"grpo": c_grpo, "trl": c_trl},
        "ratio_per_rep": per_rep,
        "curves": curves,
    }


# ────────────────────────────────────────────────────────────────────────────────────────────────
# --profile: cProfile of both trainers, the time of each part of a step
# ────────────────────────────────────────────────────────────────────────────────────────────────
# (label, file the function is defined in (suffix), function name, only when called from this function)
GRPO_PARTS = [
    ("rollout: hf_generate", "grpo.py", "hf_generate", None),
    ("  of which model forwards (decode)", "torch/nn/modules/module.py", "_wrapped_call_impl", "decode"),
    ("grading: score()", "common/reward.py", "score", None),
    ("decode responses (batch_decode)", "tokenization_utils_base.py", "batch_decode", "generate"),
    ("batch tensors, advantages (make_batch)", "grpo.py", "make_batch", None),
    ("old-policy no-grad pass (stats_pass)", "grpo.py", "stats_pass", None),
    ("training forward (micro_batch_stats)", "grpo.py", "micro_batch_stats", "update_policy"),
    ("  of which token_stats forward", "grpo.py", "forward", None),
    ("backward (accelerator.backward)", "accelerator.py", "backward", "update_policy"),
    ("  of which token_stats backward", "grpo.py", "backward", None),
    ("loss (compute_loss)", "grpo.py", "compute_loss", "update_policy"),
    ("grad clip (clip_grad_norm_)", "accelerator.py", "clip_grad_norm_", "update_policy"),
    ("optimizer step", "accelerate/optimizer.py", "step", "update_policy"),
    ("micro-batch metrics (log_micro_batch)", "grpo.py", "log_micro_batch", None),
    ("sampling-policy metrics (log_sampling_policy)", "grpo.py", "log_sampling_policy", None),
    ("per-step logging (log_step)", "grpo.py", "log_step", None),
    ("final checkpoint + model save", "grpo.py", "save_checkpoint", None),
]
TRL_PARTS = [
    ("rollout: generate (_generate_single_turn)", "grpo_trainer.py", "_generate_single_turn", None),
    ("grading: reward function", "grpo_trainer.py", "_calculate_rewards", None),
    (
        "old-policy no-grad pass",
        "grpo_trainer.py",
        "_get_per_token_logps_and_entropies",
        "_generate_and_score_completions",
    ),
    ("training forward (_compute_loss)", "grpo_trainer.py", "_compute_loss", None),
    ("backward (accelerator.backward)", "accelerator.py", "backward", None),
    ("grad clip (clip_grad_norm_)", "accelerator.py", "clip_grad_norm_", None),
    ("optimizer step", "accelerate/optimizer.py", "step", None),
    ("whole _generate_and_score_completions", "grpo_trainer.py", "_generate_and_score_completions", None),
    ("Trainer logging (log)", "grpo_trainer.py", "log", None),
]


def profile_parts(stats_path: str, parts: list) -> list[tuple[str, float, int]]:
    import pstats

    stats = pstats.Stats(stats_path).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    out = []
    for label, file_suffix, name, caller in parts:
        total, calls = 0.0, 0
        for (file, _, fname), (_, nc, _, ct, callers) in stats.items():
            if fname != name or not file.replace(os.sep, "/").endswith(file_suffix):
                continue
            if caller is None:
                total, calls = total + ct, calls + nc
            else:
                for (_, _, cname), (_, cnc, _, cct) in callers.items():
                    if cname == caller:
                        total, calls = total + cct, calls + cnc
        out.append((label, total, calls))
    return out


# `python -m cProfile grpo.py` breaks tyro (its dataclasses' annotations are resolved in cProfile's
# __main__); runpy.run_path installs the script as __main__ while it runs.
PROFILE_BOOT = (
    "import cProfile, runpy, sys\n"
    "out, script = sys.argv[1], sys.argv[2]\n"
    "sys.argv = sys.argv[2:]\n"
    "sys.path.insert(0, __import__('os').path.dirname(script))\n"
    "prof = cProfile.Profile()\n"
    "prof.enable()\n"
    "try:\n"
    "    runpy.run_path(script, run_name='__main__')\n"
    "finally:\n"
    "    prof.disable()\n"
    "    prof.dump_stats(out)\n"
)


def profiled(cmd: list[str], out: str) -> list[str]:
    return [cmd[0], "-c", PROFILE_BOOT, out] + cmd[1:]


def run_profile(a, work: str, version: str | None) -> None:
    print(f"== profile (cProfile; {a.steps} steps each, first step included; cProfile inflates Python-heavy code)")
    results = {}
    prof = os.path.join(work, "grpo.prof")
    cmd = profiled(grpo_command(a, work, "grpo_profile", a.seed), prof)
    res = run_child(
        cmd,
        child_env(a, False),
        os.path.join(work, "grpo_profile.log"),
        os.path.join(work, "grpo_profile", "metrics.jsonl"),
    )
    steps = read_jsonl(os.path.join(work, "grpo_profile", "metrics.jsonl"))
    results["grpo"] = (res, sum(r["time/step_s"] for r in steps if r["step"] >= 1), profile_parts(prof, GRPO_PARTS))
    if version is not None:
        out = os.path.join(work, "trl_profile")
        os.makedirs(out, exist_ok=True)
        prof = os.path.join(work, "trl.prof")
        cmd = profiled(trl_command(a, out, a.seed), prof)
        res = run_child(cmd, child_env(a, True), out + ".log", os.path.join(out, "steps.jsonl"))
        steps = read_jsonl(os.path.join(out, "steps.jsonl"))
        results["trl"] = (res, sum(r["step_s"] for r in steps), profile_parts(prof, TRL_PARTS))
    for name, (res, step_total, parts) in results.items():
        print(
            f"\n{name}: {a.steps} steps, sum of step times {step_total:.2f} s ({step_total / a.steps:.3f} s/step) "
            f"under the profiler; load {loads(res)}"
        )
        print(f"  {'part':44} {'total s':>8} {'s/step':>7} {'% of steps':>10} {'calls':>6}")
        for label, total, calls in parts:
            print(f"  {label:44} {total:8.2f} {total / a.steps:7.3f} {100 * total / step_total:9.1f}% {calls:>6}")
    print("\nprofiles kept in", work, "(python -m pstats FILE; sort cumulative; stats 40)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="training steps of each run (README table: 200)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions; runs are interleaved grpo, TRL, grpo, TRL, ...")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of both trainers (OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads); "
        "1 by default: on a busy 2-core machine two OpenMP threads stall whenever one is descheduled",
    )
    ap.add_argument(
        "--micro-batch-size",
        type=int,
        default=32,
        choices=(8, 16, 32, 64, 128),
        help="sequences per forward/backward (grpo.py --micro-batch-size; TRL per_device_train_batch_size)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of repetition 0; repetition r uses seed + r")
    ap.add_argument("--same-seed", action="store_true", help="every repetition uses --seed")
    ap.add_argument(
        "--trl-path",
        default=os.environ.get("TRL_PATH"),
        help="directory TRL was installed into with pip --target (put on the TRL process's PYTHONPATH)",
    )
    ap.add_argument("--window", type=int, default=0, help="steps per learning-curve row (default: steps / 10)")
    ap.add_argument("--work-dir", default=None, help="keep run directories and logs here (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--profile", action="store_true", help="profile one run of each trainer instead of timing them")
    ap.add_argument("--child-trl", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_trl:
        trl_child(a)
        return

    version = trl_version(a)
    if version is None and not a.profile:
        print(INSTALL_HINT, file=sys.stderr)
        sys.exit(2)
    if version is not None and version != TRL_TESTED:
        print(f"note: TRL {version} found; this benchmark was written against {TRL_TESTED}")
    work = a.work_dir or tempfile.mkdtemp(prefix="bench_vs_trl_")
    os.makedirs(work, exist_ok=True)
    print(
        f"bench_vs_trl: {os.cpu_count()} CPUs, torch threads {a.threads}, TRL {version} "
        f"({'PYTHONPATH ' + a.trl_path if a.trl_path else 'installed'}), work dir {work}"
    )
    print(f"load at start: {load()}")
    t_start = time.perf_counter()
    if a.profile:
        if version is None:
            print(INSTALL_HINT + "\n(profiling grpo.py only)")
        run_profile(a, work, version)
        print(f"\nload at end: {load()}")
        return

    runs = {"grpo": [], "trl": []}
    for rep in range(a.reps):
        for name, fn in (("grpo", run_grpo), ("trl", run_trl)):
            r = fn(a, work, rep)
            runs[name].append(r)
            ts = [s["step_s"] for s in r["steps"]]
            print(
                f"[rep {rep}] {name:4}: median step {med(ts):.3f} s over {len(ts)} steps, "
                f"CPU/step {med(cpu_per_step(r)):.3f} s, wall {r['wall_s']:.1f} s; load {loads(r)}",
                flush=True,
            )
    threads_seen = f"{a.threads} (TRL process reports {sorted({r['info']['torch_threads'] for r in runs['trl']})})"
    figures = report(a, runs, version, threads_seen)
    print(f"\nload at end: {load()}  (total {time.perf_counter() - t_start:.0f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "trl": version, "figures": figures, "runs": runs}, f, indent=1)
    if not a.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
