"""Clip-Cov and KL-Cov (Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
arXiv 2505.22617) on the GRPO / DAPO baseline of grpo.py, with token-level entropy diagnostics.

The paper shows that one policy-gradient step changes the entropy of a softmax policy by about
ΔH ≈ −η Cov_{a∼π}(log π(a|s), π(a|s)·A(s, a)) (its Lemma 1 and Theorems 1–2), and that a small number of tokens with
a very large covariance drive entropy collapse. Both methods touch only those tokens, found with the detached
token covariance over the valid (loss) tokens M:
    c_t = (A_t − Ā)(ℓ_t − ℓ̄),   Ā, ℓ̄ the means of A and ℓ over M,   ℓ_t = log π(a_t | s_t) at the rollout temperature.
N = |M| is the number of valid tokens; ρ and κ below are FRACTIONS of N (2e-4 means 0.02 %, never a percent).

  Clip-Cov (`--method clip-cov`): the candidates are the valid tokens not already clipped by PPO with
  ω_low < c_t < ω_high (`--clip-cov-lb 1`, `--clip-cov-ub 5`); n = max(⌊ρ·N⌋, 1) of them (ρ = `--clip-cov-ratio`
  2e-4; all of them if fewer) are drawn uniformly at random with a seeded generator and lose their gradient:
      L_t = max(−A_t r_t, −A_t clip(r_t, 1 − ε_low, 1 + ε_high)) · keep_t,   keep_t = 0 on the drawn tokens, else 1,
  with no dual clip. The paper's scripts set ε_low = ε_high = 1, i.e. clip(r, 0, 2): PPO clipping is essentially
  off and Clip-Cov replaces it. This script therefore uses its own `--cov-clip-low 1 --cov-clip-high 1` in place of
  the shared `--clip-low/--clip-high` (which it reads only when these are None); `--dual-clip-c` is not used.
  The draw is a function of (--seed, rollout step, loss call within the step, process rank), kept in the
  algorithm state, so a resumed run draws the same tokens.

  KL-Cov (`--method kl-cov`): the k = max(⌊κ·N⌋, 1) valid tokens with the largest c_t (κ = `--kl-cov-ratio`,
  2e-3 for the paper's 7B runs, 2e-4 for 32B) get a penalty; no ratio clipping anywhere:
      L_t = −A_t r_t + β |ℓ_t − ℓ_t^old| on the chosen tokens,   −A_t r_t elsewhere,   β = `--kl-cov-coef` 1.
  The penalty's gradient β·sign(ℓ_t − ℓ_t^old) is zero at r = 1, so with a single update per rollout (strict
  on-policy, the testbed default) KL-Cov is the unclipped policy gradient; the paper takes 8 minibatch updates per
  rollout (`--num-minibatches 8`).

Where c_t and the choice come from (`--cov-stats`):
  micro-batch  the paper's code: Ā, ℓ̄, N and the choice are computed in every loss call, i.e. in each micro-batch
               of each process, from the current ℓ. The number of chosen tokens and which ones therefore depend on
               `--micro-batch-size` and on the number of processes, and a new choice is made at every update.
  global       [DERIVED, this project's choice]: once per rollout step, before the first gradient, from the old
               policy's ℓ over the whole batch of every process (the sums behind Ā, ℓ̄ and N are added across
               processes), and kept for every update of the step. Exactly n (Clip-Cov) or k (KL-Cov) tokens are
               chosen over all processes: each process contributes its own k largest scores to a table gathered
               through the summing all-reduce, which fixes the global threshold; ties at the threshold go to lower
               ranks, then to earlier positions. Clip-Cov's random draw gives every candidate an i.i.d. uniform key
               and keeps the n largest keys, a uniform draw over the candidates of all processes. Its "already
               clipped by PPO" test is taken at r = 1, where no token is clipped.
Only `--cov-stats global` needs the no-grad old-policy pass over the whole batch before the first gradient
(`needs_old_policy_pass`); strictly on-policy micro-batch runs skip it, as grpo.py does.

Everything else (rollout, advantages, aggregation, truncated IS, KL/entropy terms, entropy flows) is grpo.py's.
Logged: `algo/cov_mean` (mean c_t over the valid tokens), `algo/cov_selected_mean` (mean c_t over the chosen tokens),
`algo/selected_frac` (chosen / valid tokens, a fraction), summed over every loss call of the step and all processes.

Run:  python clip_cov.py                   # CPU, testbed model, synthetic arithmetic (minutes)
      accelerate launch --config_file configs/zero3.yaml clip_cov.py --model Qwen/Qwen2.5-7B --method kl-cov ...
"""

# ─── SHARED: imports ───────────────────────────────────────────────────────────────────────────
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import tyro
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList

from common.data import build_prompt, load_problems
from common.reward import score

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
TESTBED_MODEL = os.path.join(REPO_DIR, "testbed", "model")
SCRIPT = os.path.basename(__file__)


# ─── SHARED: arguments ─────────────────────────────────────────────────────────────────────────
@dataclass
class Experiment:
    """experiment"""
    exp_name: str = os.path.splitext(SCRIPT)[0]
    """name of the experiment (the script's file name)"""
    seed: int = 1
    """seed of data order, sampling and evaluation"""
    torch_deterministic: bool = True
    """deterministic torch algorithms where they exist (`torch.use_deterministic_algorithms(warn_only=True)`)"""
    threads: int = 1
    """torch threads per process on CPU (0 = torch's default); 1 is fastest for the testbed on a busy 2-core machine"""
    output_dir: str = "runs"
    """parent directory of the run directories"""
    run_name: str | None = None
    """run directory name (None: `{train_data}__{exp_name}__{seed}__{unix time}`)"""
    resume: str | None = None
    """run directory to resume from its latest checkpoint (continues writing into it)"""
    track: bool = False
    """mirror the TensorBoard logs to Weights & Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "rlvr-entropy"
    """Weights & Biases project"""
    wandb_entity: str | None = None
    """Weights & Biases entity (team)"""


@dataclass
class Data:
    """model and data"""
    model: str = TESTBED_MODEL
    """Hugging Face model id or local folder (here: the committed CPU testbed model)"""
    train_data: str = "arith"
    """training problems: a benchmark/training-set name, a local .jsonl/.json/.parquet file, or a hub dataset"""
    train_split: str | None = None
    """split of `train_data` (None: the loader's own choice)"""
    eval_data: str = "arith"
    """held-out problems evaluated every `eval_every` steps (same forms as `train_data`)"""
    eval_split: str | None = "test"
    """split of `eval_data`"""
    data_dir: str | None = None
    """directory of the benchmark files (None: $RLVR_DATA_DIR, else the download cache)"""
    skip_invalid: bool = False
    """skip (and count) data rows without a usable question or answer instead of stopping"""
    template: Literal["plain", "qwen-math", "dapo"] = "plain"
    """prompt template (`plain` for the testbed, `qwen-math` or `dapo` for real models)"""
    max_prompt_length: int = 1024
    """prompts with more tokens are skipped at load time (the count is printed)"""


@dataclass
class Rollout:
    """rollout"""
    rollout_engine: Literal["auto", "vllm", "hf"] = "auto"
    """`auto` = vLLM when CUDA and vLLM are available, else Hugging Face `generate`"""
    prompts_per_step: int = 16
    """prompts per rollout step, summed over all processes"""
    group_size: int = 8
    """responses per prompt (G)"""
    temperature: float = 1.0
    """rollout sampling temperature (the trainer divides its logits by it too)"""
    top_p: float = 1.0
    """rollout nucleus sampling (keep 1.0 for unbiased RL; vLLM only)"""
    max_new_tokens: int = 64
    """maximum response length in tokens"""
    hf_generation_batch_size: int = 256
    """sequences per `generate` call of the HF engine"""
    rollout_is_cap: float | None = None
    """truncated importance-sampling cap C: each token's loss × min(π_old/π_rollout, C); 0 = off;
    None: 2 with vLLM, off with the HF engine (whose log-probs match the trainer's)"""
    vllm_gpu_memory_utilization: float = 0.3
    """fraction of total GPU memory vLLM may take (colocated with training)"""
    vllm_sleep_mode: bool = False
    """offload vLLM weights and free its KV cache between rollouts (sleep level 1)"""
    vllm_max_model_len: int = 4096
    """vLLM context length (prompt + response)"""


@dataclass
class Reward:
    """rewards and advantages"""
    answer_mode: Literal["auto", "boxed", "minerva", "the-answer-is", "answer"] = "auto"
    """final-answer extraction: last \\boxed{}, Minerva's "The final answer is X", "The answer is X", DAPO's
    `Answer:` line, or `auto` (those, in that order); a response with none scores 0 (`rollout/no_answer_frac`)"""
    multi_box: bool = False
    """read several nearby \\boxed{} as one set answer ("find all" questions; off for training by default)"""
    reward_range: Literal["01", "pm1"] = "01"
    """reward of a correct/incorrect response: 1/0, or DAPO's +1/−1"""
    grader_timeout_s: float = 5.0
    """hard time limit per graded response; a response that exceeds it scores as incorrect"""
    grader_workers: int = 2
    """grader worker processes per training process"""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """advantage normalisation: group std (GRPO), batch std, or none (Dr.GRPO)"""
    filter_groups: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and sample more"""
    max_gen_batches: int = 10
    """with `filter_groups`: most generation batches per step (then train on what was kept)"""
    overlong_buffer: int = 0
    """DAPO overlong shaping: responses longer than max_new_tokens − buffer are penalised (0 = off)"""
    overlong_penalty_factor: float = 1.0
    """DAPO overlong shaping: penalty at max_new_tokens"""
    mask_truncated: bool = False
    """exclude responses that hit `max_new_tokens` from the loss"""


@dataclass
class Optim:
    """optimisation"""
    total_steps: int = 200
    """number of rollout steps"""
    learning_rate: float = 2e-4
    """AdamW learning rate (tuned for the testbed; the paper-scale runs use 1e-6)"""
    lr_warmup_steps: int = 0
    """linear warm-up, in rollout steps"""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """learning-rate schedule after warm-up"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping (global L2 norm)"""
    update_epochs: int = 1
    """passes over each rollout batch (1 with `num_minibatches` 1 = strict on-policy)"""
    num_minibatches: int = 1
    """optimizer steps per pass over the rollout batch"""
    micro_batch_size: int = 64
    """sequences per forward/backward on each process (gradient accumulation inside a minibatch)"""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto` = bf16 autocast on CUDA, fp32 on CPU"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (saves memory on long responses)"""


@dataclass
class Loss:
    """loss"""
    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − ε_low (for A < 0)"""
    clip_high: float = 0.28
    """ε_high: the ratio is clipped above at 1 + ε_high (for A > 0); DAPO clip-higher"""
    dual_clip_c: float = 10.0
    """dual-clip bound c > 1 for A < 0 (loss ≤ −A·c); 0 disables"""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        "token-mean")
    """loss aggregation over a minibatch (all processes): tokens, sequences, or sequences × L (Dr.GRPO)"""
    loss_scale_factor: float | None = None
    """L of `seq-mean-token-sum-norm` (None: max_new_tokens)"""
    kl_coef: float = 0.0
    """β of the k3 KL penalty to the initial model (the reference model is loaded only when > 0)"""
    ent_coef: float = 0.0
    """α of the entropy bonus −α·H_t (the "Entropy-Reg" baseline)"""


@dataclass
class Log:
    """logging, evaluation, checkpoints"""
    eval_every: int = 25
    """evaluate every this many steps (and before the first and after the last); 0 = never"""
    num_eval_problems: int = 256
    """first problems of `eval_data` used for evaluation"""
    eval_n: int = 1
    """samples per evaluation problem (avg@n)"""
    eval_temperature: float = 1.0
    """evaluation sampling temperature"""
    log_completions_every: int = 10
    """write a few sample completions every this many steps (0 = never)"""
    num_completions_to_log: int = 4
    """completions written each time"""
    checkpoint_every: int = 50
    """save a resumable checkpoint every this many steps (and at the end); 0 = only at the end"""
    keep_checkpoints: int = 2
    """most recent checkpoints kept on disk"""
    entropy_chunk_size: int = 1024
    """rows of [tokens × vocab] processed at once for log-probs, entropy and G"""
    measure_entropy_change: bool = False
    """re-run the batch after the update and log the realised entropy change (one extra forward)"""


class UsageError(ValueError):
    """A user error: printed as one `error: ...` line, exit status 2."""


class RunError(RuntimeError):
    """A run that cannot go on (a checkpoint that cannot be written, every update skipped): printed as one
    `error: ...` line with what to run next, exit status 1."""


def check_shared_args(args, world: int) -> None:
    """Refuse, before anything is loaded or written, every setting that would crash later or train on nothing."""
    r, o, lo, lg, rw = args.rollout, args.optim, args.loss, args.log, args.reward
    checks = [
        (r.prompts_per_step >= 1 and r.prompts_per_step % world == 0,
         f"--prompts-per-step must be a positive multiple of the {world} processes"),
        (r.group_size >= 1, "--group-size must be >= 1"),
        (r.group_size > 1 or rw.scale_rewards == "none",
         "--group-size 1 has no group statistics: use --group-size >= 2 or --scale-rewards none"),
        (r.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
        (r.temperature > 0, "--temperature must be > 0"),
        (0 < r.top_p <= 1, "--top-p must be in (0, 1]"),
        (r.rollout_is_cap is None or r.rollout_is_cap == 0 or r.rollout_is_cap >= 1,
         "--rollout-is-cap must be 0 (off) or >= 1"),
        (r.hf_generation_batch_size >= 1, "--hf-generation-batch-size must be >= 1"),
        (o.total_steps >= 1, "--total-steps must be >= 1"),
        (o.learning_rate > 0, "--learning-rate must be > 0"),
        (o.lr_warmup_steps >= 0 and o.weight_decay >= 0, "--lr-warmup-steps and --weight-decay must be >= 0"),
        (o.max_grad_norm > 0, "--max-grad-norm must be > 0"),
        (o.update_epochs >= 1 and o.num_minibatches >= 1, "--update-epochs and --num-minibatches must be >= 1"),
        (o.micro_batch_size >= 1, "--micro-batch-size must be >= 1"),
        (r.prompts_per_step // world * r.group_size % o.num_minibatches == 0,
         f"--num-minibatches {o.num_minibatches} must divide the {r.prompts_per_step // world * r.group_size} "
         "sequences per process (--prompts-per-step / processes × --group-size)"),
        (0 <= lo.clip_low < 1 and lo.clip_high >= 0, "--clip-low must be in [0, 1) and --clip-high >= 0"),
        (lo.dual_clip_c == 0 or lo.dual_clip_c > 1, "--dual-clip-c must be 0 (off) or > 1"),
        (lo.loss_scale_factor is None or lo.loss_scale_factor > 0, "--loss-scale-factor must be > 0"),
        (lo.kl_coef >= 0 and lo.ent_coef >= 0, "--kl-coef and --ent-coef must be >= 0"),
        (rw.grader_timeout_s > 0 and rw.grader_workers >= 0, "--grader-timeout-s must be > 0, --grader-workers >= 0"),
        (rw.max_gen_batches >= 1, "--max-gen-batches must be >= 1"),
        (0 <= rw.overlong_buffer < r.max_new_tokens, "--overlong-buffer must be in [0, --max-new-tokens)"),
        (lg.eval_every >= 0 and lg.checkpoint_every >= 0, "--eval-every and --checkpoint-every must be >= 0"),
        (lg.eval_every == 0 or (lg.num_eval_problems >= 1 and lg.eval_n >= 1 and lg.eval_temperature > 0),
         "--num-eval-problems and --eval-n must be >= 1 and --eval-temperature > 0 (or --eval-every 0)"),
        (lg.keep_checkpoints >= 1 and lg.entropy_chunk_size >= 1, "--keep-checkpoints and --entropy-chunk-size >= 1"),
        (args.exp.threads >= 0, "--threads must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    model = args.data.model  # a local path (not a hub id `owner/name`) that does not exist: fail now, not at the hub
    if not os.path.isdir(os.path.expanduser(model)) and (model.startswith((".", "/", "~")) or model.count("/") > 1
                                                          or os.path.isdir(model.split("/")[0])):
        raise UsageError(f"--model {args.data.model}: no such directory")
    existing = os.path.abspath(args.exp.resume or args.exp.output_dir)  # unwritable: fail now, not at a checkpoint
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK):
        raise UsageError(f"--output-dir {args.exp.output_dir} is not writable ({existing} is read-only)")
    if args.exp.resume is not None:
        check_resume(args)
    elif args.exp.run_name and os.path.exists(os.path.join(args.exp.output_dir, args.exp.run_name)):
        raise UsageError(f"--run-name {args.exp.run_name}: {os.path.join(args.exp.output_dir, args.exp.run_name)} "
                         "exists; continue it with --resume, or choose another --run-name")
    if r.top_p < 1 and not (r.rollout_engine == "vllm" or (r.rollout_engine == "auto" and vllm_available())):
        raise UsageError("--top-p < 1 needs the vLLM engine (the HF engine records unbiased log-probs only)")
    if r.rollout_engine == "vllm" and not vllm_available():
        raise UsageError("--rollout-engine vllm needs CUDA and `pip install vllm` (use --rollout-engine hf)")

# ─── ALGORITHM: arguments ──────────────────────────────────────────────────────────────────────
@dataclass
class Algorithm:
    """algorithm: Clip-Cov / KL-Cov (arXiv 2505.22617); ratios are fractions of the valid tokens, never percent"""
    method: Literal["clip-cov", "kl-cov"] = "clip-cov"
    """clip-cov: remove the gradient of a few random tokens of high covariance c_t = (A_t − Ā)(ℓ_t − ℓ̄);
    kl-cov: add β·|ℓ_t − ℓ_t^old| to the loss of the tokens of largest c_t"""
    cov_stats: Literal["micro-batch", "global"] = "micro-batch"
    """where c_t and the choice of tokens are computed: in every micro-batch of every process from the current ℓ
    (the paper's code; the choice depends on --micro-batch-size), or once per rollout step over the whole batch of
    all processes from the old policy's ℓ"""
    clip_cov_ratio: float = 2e-4
    """ρ of Clip-Cov, a fraction (not a percent) of the N valid tokens: max(⌊ρ·N⌋, 1) candidates lose their gradient"""
    clip_cov_lb: float = 1.0
    """ω_low of Clip-Cov: only tokens with ω_low < c_t < ω_high are candidates"""
    clip_cov_ub: float = 5.0
    """ω_high of Clip-Cov"""
    cov_clip_low: float | None = 1.0
    """ε_low of Clip-Cov's PPO clip, the ratio clipped below at 1 − ε_low (1, the paper's scripts: PPO clipping
    essentially off); None: --clip-low"""
    cov_clip_high: float | None = 1.0
    """ε_high of Clip-Cov's PPO clip, the ratio clipped above at 1 + ε_high (1, the paper's scripts);
    None: --clip-high"""
    kl_cov_ratio: float = 2e-3
    """κ of KL-Cov, a fraction (not a percent) of the N valid tokens: the max(⌊κ·N⌋, 1) tokens of largest c_t are
    penalised (the paper: 2e-3 for 7B models, 2e-4 for 32B)"""
    kl_cov_coef: float = 1.0
    """β of KL-Cov's penalty β·|ℓ_t − ℓ_t^old| (1 in the paper's scripts; upstream verl defaults to 0.1)"""


@dataclass
class Args:
    """Clip-Cov / KL-Cov (arXiv 2505.22617) on GRPO / DAPO, logging token-level entropy flows.

    Trains on the CPU testbed by default: `python clip_cov.py`. Paper scale: `accelerate launch --config_file
    configs/zero3.yaml clip_cov.py --model Qwen/Qwen2.5-7B --template dapo --train-data dapo_math_17k
    --method kl-cov ...`"""
    exp: Experiment = field(default_factory=Experiment)
    data: Data = field(default_factory=Data)
    rollout: Rollout = field(default_factory=Rollout)
    reward: Reward = field(default_factory=Reward)
    optim: Optim = field(default_factory=Optim)
    loss: Loss = field(default_factory=Loss)
    algo: Algorithm = field(default_factory=Algorithm)
    log: Log = field(default_factory=Log)


# ─── SHARED: token statistics and entropy change ───────────────────────────────────────────────
def _chunk_stats(logits, tokens):
    """logp of the sampled tokens, H = −Σ p log p, G = Σ p² log p + H Σ p² and logsumexp of logits [c, V]
    (fp32, fp64 for fp64 logits). Three [c, V] buffers at most; every summed term has one sign."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    lse = torch.logsumexp(z, dim=-1)
    z.sub_(lse[:, None])  # log p
    p = z.exp()
    entropy = -(p * z).sum(-1)
    p.square_()
    g = (p * z).sum(-1) + entropy * p.sum(-1)
    return z.gather(1, tokens[:, None]).squeeze(1), entropy, g, lse


def _chunk_grad(logits, tokens, lse, entropy, grad_logp, grad_entropy):
    """d(Σ grad_logp·ℓ + grad_entropy·H)/dz for logits [c, V]: ∂ℓ/∂z = e_a − p, ∂H/∂z = −p (log p + H)."""
    grad = logits.to(lse.dtype, copy=True).sub_(lse[:, None])  # log p
    p = grad.exp()
    grad.add_(entropy[:, None]).mul_(grad_entropy[:, None]).add_(grad_logp[:, None]).mul_(p).neg_()
    del p
    grad.scatter_add_(1, tokens[:, None], grad_logp[:, None])
    return grad.to(logits.dtype)


_compiled = {}  # on CUDA, torch.compile fuses each chunk's passes over V (~10x, benchmarks/bench_token_stats.py)


def _maybe_compiled(fn, use_compile: bool):
    if use_compile and fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=None)
    return _compiled[fn] if use_compile else fn


class _TokenStats(torch.autograd.Function):
    """ℓ, H (differentiable) and G (not) from logits [N, V] in row chunks; the backward keeps only the logits
    and [N] vectors and recomputes the softmax chunk by chunk."""

    @staticmethod
    def forward(ctx, logits, tokens, chunk_size, use_compile):
        stats = _maybe_compiled(_chunk_stats, use_compile)
        with torch.autocast(logits.device.type, enabled=False):  # full precision even inside autocast
            chunks = [stats(logits[i: i + chunk_size], tokens[i: i + chunk_size])
                      for i in range(0, logits.shape[0], chunk_size)]
        logp, entropy, g, lse = (torch.cat(parts) for parts in zip(*chunks))
        ctx.save_for_backward(logits, tokens, lse, entropy)
        ctx.chunk_size, ctx.use_compile = chunk_size, use_compile
        ctx.mark_non_differentiable(g)
        return logp, entropy, g

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, _grad_g):
        logits, tokens, lse, entropy = ctx.saved_tensors
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.to(lse.dtype)
        grad_entropy = torch.zeros_like(lse) if grad_entropy is None else grad_entropy.to(lse.dtype)
        chunk_grad = _maybe_compiled(_chunk_grad, ctx.use_compile)
        grad = torch.empty_like(logits)
        for i in range(0, logits.shape[0], ctx.chunk_size):
            rows = slice(i, i + ctx.chunk_size)
            with torch.autocast(logits.device.type, enabled=False):
                grad[rows] = chunk_grad(logits[rows], tokens[rows], lse[rows], entropy[rows], grad_logp[rows],
                                        grad_entropy[rows])
        return grad, None, None, None


def token_stats(logits: torch.Tensor, tokens: torch.Tensor, chunk_size: int = 1024, compile: bool | None = None):
    """(logp, entropy, g), each fp32 [N] (fp64 for fp64 logits), from logits [N, V] (already divided by the
    temperature) and sampled tokens [N]. logp and entropy carry gradients when `logits` does; g never does.
    `compile` (default: on CUDA) fuses the per-chunk work with torch.compile."""
    return _TokenStats.apply(logits, tokens, chunk_size, logits.is_cuda if compile is None else compile)


def entropy_change(coef, logp, entropy, g):
    """First-order entropy change per unit step of a tabular softmax whose loss pushes ℓ_t up with coefficient
    coef_t = −∂L/∂ℓ_t (coef = A_t r_t for a plain policy gradient): ΔH_t/η = −coef_t [π_t(ℓ_t + H_t) − G_t]
    (Cui et al., arXiv 2505.22617, Lemma 1, with G_t = Σ_k p_k²(log p_k + H_t) for the full softmax Jacobian)."""
    return -coef * (logp.exp() * (logp + entropy) - g)


# ─── SHARED: advantages and loss aggregation ───────────────────────────────────────────────────
def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO advantages of rewards [n_groups · G], groups contiguous. group: (R − mean_g) / (std_g + 1e-6)
    with unbiased std (a group of 1 keeps its reward); batch: / (batch std + 1e-6); none (Dr.GRPO): R − mean_g."""
    if group_size == 1:
        return rewards.float().clone()
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-6)
    elif scale == "batch":
        centred = centred / (rewards.float().std() + 1e-6)
    elif scale != "none":
        raise ValueError(f"unknown scale_rewards {scale!r}")
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO dynamic-sampling filter: True for groups whose rewards are not all equal. [n_groups] bool"""
    grouped = rewards.view(-1, group_size)
    return (grouped != grouped[:, :1]).any(dim=1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO overlong reward shaping (arXiv 2503.14476 §3.4): 0 up to max_len − buffer, then linear to −factor."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    return torch.clamp(-(lengths.float() - (max_len - buffer)) / buffer * factor, max=0.0)


def clipped_surrogate(adv, ratio, clip_low: float, clip_high: float, dual_clip_c: float):
    """Dual-clip PPO token loss and where its gradient is clipped away, all [B, T]:
    L = max(−A r, −A clip(r, 1−ε_l, 1+ε_h)); for A < 0 also L = min(L, −A c)."""
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    clipped_high = (adv > 0) & (ratio > 1.0 + clip_high)
    clipped_low = (adv < 0) & (ratio < 1.0 - clip_low)
    if dual_clip_c > 0:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip_c), loss)
        clipped_low = clipped_low | ((adv < 0) & (ratio > dual_clip_c))
    return loss, clipped_low, clipped_high


def k3_kl(logp_ref, logp):
    """k3 estimator of KL(π‖π_ref) per token: π_ref/π − log(π_ref/π) − 1 (arXiv 2402.03300, Eq. 4)."""
    log_ratio = (logp_ref - logp).clamp(-20, 20)
    return log_ratio.exp() - log_ratio - 1.0


def minibatch_totals(loss_mask: torch.Tensor, reduce_sum) -> dict:
    """Loss tokens N and sequences B with at least one loss token, of a minibatch [b, R] on all processes."""
    tokens, seqs = reduce_sum(torch.stack([loss_mask.sum(), (loss_mask.sum(-1) > 0).sum().to(loss_mask.dtype)]))
    return {"tokens": tokens.clamp(min=1.0), "seqs": seqs.clamp(min=1.0)}


def aggregation_weights(loss_mask, mode: str, totals: dict, max_len: float) -> torch.Tensor:
    """Coefficient [b, R] of each token's loss in the minibatch loss Σ coef·L_t (summed over micro-batches and
    processes), with N, B from `minibatch_totals`:  token-mean Σ L / N;  seq-mean-token-sum Σ_i Σ_t L / B;
    seq-mean-token-mean Σ_i (Σ_t L / |o_i|) / B;  seq-mean-token-sum-norm Σ L / (B·L_max) (Dr.GRPO)."""
    if mode == "token-mean":
        return loss_mask / totals["tokens"]
    if mode == "seq-mean-token-sum":
        return loss_mask / totals["seqs"]
    if mode == "seq-mean-token-mean":
        return loss_mask / loss_mask.sum(-1, keepdim=True).clamp(min=1.0) / totals["seqs"]
    if mode == "seq-mean-token-sum-norm":
        return loss_mask / (totals["seqs"] * max_len)
    raise ValueError(f"unknown loss_agg_mode {mode!r}")


def compute_loss(mb: dict, logp, entropy, args, algo_state: dict, totals: dict, world: int):
    """The whole loss of one micro-batch: the method's token loss (surrogate × its weight, ALGORITHM section)
    × the truncated importance weight min(π_old/π_rollout, C), + β·KL_k3 − α·H_t, aggregated with
    `aggregation_weights`; × world because DDP averages gradients over processes. Returns the scalar and `info`
    (per-token tensors, [b, R]: token_loss, clipped_low/high, ratio, is_weight, kl_ref; `algo/...` scalars)."""
    token_loss, info = policy_token_loss(mb, logp, args, algo_state)
    if args.rollout.rollout_is_cap:  # truncated importance sampling against rollout/trainer mismatch
        cap, raw = args.rollout.rollout_is_cap, torch.exp((mb["logp_old"] - mb["rollout_logp"]).clamp(max=20))
        info["is_weight"], info["is_capped"] = raw.clamp(max=cap), raw > cap
        token_loss = token_loss * info["is_weight"]
    if args.loss.kl_coef > 0:
        info["kl_ref"] = k3_kl(mb["logp_ref"], logp)
        token_loss = token_loss + args.loss.kl_coef * info["kl_ref"]
    if args.loss.ent_coef > 0:
        token_loss = token_loss - args.loss.ent_coef * entropy
    coef = aggregation_weights(mb["loss_mask"], args.loss.loss_agg_mode, totals,
                               args.loss.loss_scale_factor or args.rollout.max_new_tokens)
    info["token_loss"] = token_loss.detach()
    return (coef * token_loss).sum() * world, info

# ─── ALGORITHM: loss ───────────────────────────────────────────────────────────────────────────
def needs_old_policy_pass(args: Args) -> bool:
    """`--cov-stats global` chooses from the old policy's ℓ over the whole batch before the first gradient."""
    return args.algo.cov_stats == "global"


def check_algorithm_args(args: Args) -> None:
    a = args.algo
    checks = [
        (0 < a.clip_cov_ratio <= 1, "--clip-cov-ratio is a fraction of the valid tokens, in (0, 1] (e.g. 2e-4, "
         "not a percent)"),
        (0 < a.kl_cov_ratio <= 1, "--kl-cov-ratio is a fraction of the valid tokens, in (0, 1] (e.g. 2e-3, "
         "not a percent)"),
        (a.clip_cov_lb < a.clip_cov_ub, "--clip-cov-lb must be < --clip-cov-ub"),
        (a.kl_cov_coef >= 0, "--kl-cov-coef must be >= 0"),
        (a.cov_clip_low is None or 0 <= a.cov_clip_low <= 1, "--cov-clip-low must be in [0, 1] (or None: --clip-low)"),
        (a.cov_clip_high is None or a.cov_clip_high >= 0, "--cov-clip-high must be >= 0 (or None: --clip-high)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def _identity(x):
    return x


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, from torch.distributed when initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def token_covariance(adv, logp, mask, reduce_sum=_identity):
    """Detached token covariance c_t = (A_t − Ā)(ℓ_t − ℓ̄), [b, R], 0 where mask is 0; Ā and ℓ̄ are the means of A and
    ℓ over the tokens with mask 1, their sums added over processes by `reduce_sum` (identity: this batch only)."""
    adv, logp = adv.detach().to(logp.dtype), logp.detach()
    mask = mask.to(logp.dtype)
    a, lp, n = reduce_sum(torch.stack([(adv * mask).sum(), (logp * mask).sum(), mask.sum()]))
    n = n.clamp(min=1.0)
    return (adv - a / n) * (logp - lp / n) * mask


def top_k_mask(scores, valid, k: int, reduce_sum=_identity, rank: int = 0, world: int = 1):
    """Bool mask (shape of `scores`) of exactly min(k, V) of the V `valid` entries of all processes, those with the
    largest scores; ties at the threshold go to lower ranks first, then to earlier row-major positions. With
    world > 1 each process writes its k largest scores into its row of a [world, k] table of zeros, and
    `reduce_sum` (a summing all-reduce) assembles the table everywhere: its k-th largest entry is the threshold."""
    valid = valid.bool()
    flat = torch.where(valid, scores.detach().double(), -math.inf).reshape(-1)
    if k <= 0:
        return torch.zeros_like(valid)
    top = flat.topk(min(k, flat.numel())).values
    if world > 1:
        table = torch.zeros((world, k), dtype=torch.float64, device=flat.device)
        table[rank] = -math.inf
        table[rank, : len(top)] = top
        top = reduce_sum(table).reshape(-1)
    threshold = top.topk(k).values[-1].item() if len(top) >= k else -math.inf
    if threshold == -math.inf:  # fewer than k valid entries over all processes: all of them
        return valid
    greater, equal = flat > threshold, flat == threshold
    counts = torch.zeros(world + 1, dtype=torch.float64, device=flat.device)
    counts[rank], counts[world] = equal.sum(), greater.sum()
    counts = reduce_sum(counts) if world > 1 else counts
    take = (k - counts[world] - counts[:rank].sum()).clamp(min=0)  # tied entries this process may still take
    return (greater | (equal & (equal.cumsum(0) <= take))).view_as(valid)


def selection_generator(seed: int, step: int, call: int, rank: int) -> torch.Generator:
    """CPU generator of Clip-Cov's draw, a function of (seed, rollout step, loss call within the step, rank)."""
    words = [x % 2**63 for x in (seed, step, call, rank)]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) % 2**63)


def clip_cov_mask(cov, clipped, mask, frac: float, low: float, high: float, generator, reduce_sum=_identity,
                  rank: int = 0, world: int = 1):
    """Clip-Cov's keep mask, [b, R] in the dtype of `cov`: 1 keeps a token's gradient, 0 removes it. The candidates
    are the tokens with mask 1, not `clipped` by PPO, with low < c_t < high; n = max(⌊frac·N⌋, 1) of them (all if
    fewer) are drawn uniformly at random, N = the number of mask tokens over all processes and `frac` = ρ a
    fraction (not a percent). Every candidate gets an i.i.d. U(0, 1) key from `generator` (CPU) and the n largest
    keys of all processes win (`top_k_mask`), which is a uniform draw without replacement."""
    n_valid = reduce_sum(mask.sum().double()).item()
    candidates = mask.bool() & ~clipped.bool() & (cov > low) & (cov < high)
    keys = torch.rand(cov.shape, generator=generator, dtype=torch.float64).to(cov.device)
    drawn = top_k_mask(keys, candidates, max(int(frac * n_valid), 1), reduce_sum, rank, world)
    return (~drawn).to(cov.dtype)


def kl_cov_select(cov, mask, frac: float, reduce_sum=_identity, rank: int = 0, world: int = 1):
    """KL-Cov's chosen tokens, bool [b, R]: the k = max(⌊frac·N⌋, 1) tokens with mask 1 and the largest c_t over all
    processes (none when N = 0), N = the number of mask tokens over all processes, `frac` = κ a fraction (not a
    percent)."""
    n_valid = reduce_sum(mask.sum().double()).item()
    return top_k_mask(cov, mask, max(int(frac * n_valid), 1) if n_valid > 0 else 0, reduce_sum, rank, world)


def kl_cov_loss(adv, logp, old_logp, cov, mask, frac: float, coef: float, selected=None):
    """KL-Cov token loss [b, R], no ratio clipping: −A_t r_t + β|ℓ_t − ℓ_t^old| on the chosen tokens and −A_t r_t
    elsewhere, r_t = exp(ℓ_t − ℓ_t^old) (log-ratio clamped to ±20 as everywhere in this file), β = `coef`. The chosen
    tokens are `selected` (bool [b, R]) when given, else `kl_cov_select(cov, mask, frac)` in this batch (`frac` = κ,
    a fraction of the mask tokens, not a percent)."""
    if selected is None:
        selected = kl_cov_select(cov, mask, frac)
    log_ratio = logp - old_logp
    return -adv * torch.exp(log_ratio.clamp(-20, 20)) + coef * log_ratio.abs() * selected.to(logp.dtype)


def selection_totals(cov, mask, selected):
    """[Σ c_t, N, Σ c_t over the chosen tokens, their number] (float64) over the tokens with mask 1."""
    mask, chosen = mask.double(), selected.double() * mask.double()
    return torch.stack([(cov.double() * mask).sum(), mask.sum(), (cov.double() * chosen).sum(), chosen.sum()])


def selection_metrics(totals) -> dict:
    """algo/cov_mean, algo/cov_selected_mean and algo/selected_frac (chosen / valid tokens, a fraction) from the sums
    of `selection_totals`; NaN where nothing was counted."""
    c, n, c_sel, n_sel = totals.tolist()
    return {"algo/cov_mean": c / n if n else math.nan, "algo/cov_selected_mean": c_sel / n_sel if n_sel else math.nan,
            "algo/selected_frac": n_sel / n if n else math.nan}


def ppo_clip_bounds(args: Args) -> tuple[float, float]:
    """(ε_low, ε_high) of Clip-Cov: --cov-clip-low/high, or the shared --clip-low/high where those are None."""
    a = args.algo
    return (args.loss.clip_low if a.cov_clip_low is None else a.cov_clip_low,
            args.loss.clip_high if a.cov_clip_high is None else a.cov_clip_high)


def init_algorithm_state(args: Args) -> dict:
    """Per-run algorithm state, saved in checkpoints: `step` (rollout steps begun) and `calls` (loss calls within the
    step) seed Clip-Cov's draw, so a resumed run draws the same tokens. Keys starting with `_` live only within one
    step (the micro-batch mode's metric sums) and are removed by `algorithm_step_end`, before any checkpoint."""
    return {"step": 0, "calls": 0}


def algorithm_step_begin(state: dict, args: Args, batch: dict, reduce_sum) -> dict:
    """Once per step, before the update. --cov-stats global: c_t from the old policy's ℓ over the whole batch of every
    process and the choice of tokens, stored as batch["cov_selected"] (1 = chosen) for every update of the step;
    returns the selection metrics. micro-batch: only opens the step's metric sums (the choice is made per loss call)."""
    a = args.algo
    state["step"], state["calls"] = state["step"] + 1, 0
    mask = batch["loss_mask"]
    if a.cov_stats == "micro-batch":
        state["_totals"] = torch.zeros(4, dtype=torch.float64, device=mask.device)
        state["_reduce_sum"] = reduce_sum
        return {}
    rank, world = rank_and_world()
    cov = token_covariance(batch["adv"], batch["logp_old"], mask, reduce_sum)
    if a.method == "clip-cov":  # at r = 1, before any update, no token is clipped by PPO
        generator = selection_generator(args.exp.seed, state["step"], 0, rank)
        selected = clip_cov_mask(cov, torch.zeros_like(mask, dtype=torch.bool), mask, a.clip_cov_ratio, a.clip_cov_lb,
                                 a.clip_cov_ub, generator, reduce_sum, rank, world) == 0
    else:
        selected = kl_cov_select(cov, mask, a.kl_cov_ratio, reduce_sum, rank, world)
    batch["cov_selected"] = selected.to(mask.dtype)
    return selection_metrics(reduce_sum(selection_totals(cov, mask, selected)))


def policy_token_loss(mb: dict, logp, args: Args, state: dict):
    """Token loss [b, R] of one micro-batch: Clip-Cov (PPO clip with --cov-clip-low/high, no dual clip, the drawn
    tokens' loss and gradient removed) or KL-Cov (−A r, + β|ℓ − ℓ_old| on the chosen tokens). With --cov-stats
    micro-batch, c_t and the choice come from this micro-batch and the current ℓ (the paper's code). `mb` holds
    [b, R] tensors: adv, logp_old, loss_mask, cov_selected (global mode), ...; `logp` carries the gradient.
    clipped_low/high report PPO's own clipping (Clip-Cov's removed tokens are in algo/selected_frac)."""
    a, mask = args.algo, mb["loss_mask"]
    ratio = torch.exp((logp - mb["logp_old"]).clamp(-20, 20))
    per_call = a.cov_stats == "micro-batch"
    cov = token_covariance(mb["adv"], logp, mask) if per_call else None
    selected = None if per_call else mb["cov_selected"].bool()
    if a.method == "clip-cov":
        loss, clipped_low, clipped_high = clipped_surrogate(mb["adv"], ratio, *ppo_clip_bounds(args), 0.0)
        if per_call:
            generator = selection_generator(args.exp.seed, state["step"], state["calls"], rank_and_world()[0])
            selected = clip_cov_mask(cov, clipped_low | clipped_high, mask, a.clip_cov_ratio, a.clip_cov_lb,
                                     a.clip_cov_ub, generator) == 0
        loss = loss * (~selected).to(loss.dtype)
    else:
        if per_call:
            selected = kl_cov_select(cov, mask, a.kl_cov_ratio)
        loss = kl_cov_loss(mb["adv"], logp, mb["logp_old"], cov, mask, a.kl_cov_ratio, a.kl_cov_coef, selected)
        clipped_low = clipped_high = torch.zeros_like(selected)
    if per_call:
        state["calls"] += 1
        state["_totals"] += selection_totals(cov, mask, selected)
    return loss, {"ratio": ratio.detach(), "clipped_low": clipped_low, "clipped_high": clipped_high}


def algorithm_step_end(state: dict, args: Args, metrics: dict) -> None:
    """After the update. --cov-stats micro-batch: adds the selection metrics, summed over every loss call of the step
    and over processes, to `metrics` (logged with them) and drops the step's sums from the state."""
    if "_totals" in state:
        metrics.update(selection_metrics(state.pop("_reduce_sum")(state.pop("_totals"))))

# ─── SHARED: rollout ───────────────────────────────────────────────────────────────────────────
class _SampledLogprobRecorder(LogitsProcessor):
    """Applies the temperature as the last logits processor and records the log-prob of each sampled token."""

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


def response_lengths(generated: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Length of each generated row [B, T] up to and including its first stop token, and whether it has none."""
    is_stop = torch.isin(generated, torch.tensor(stop_ids, device=generated.device))
    truncated = ~is_stop.any(dim=1)
    return torch.where(truncated, generated.shape[1], is_stop.int().argmax(dim=1) + 1), truncated


@torch.no_grad()
def hf_generate(model, prompt_ids: list[list[int]], n: int, temperature: float, max_new_tokens: int,
                stop_ids: list[int], pad_id: int, batch_size: int) -> list[dict]:
    """Hugging Face engine: n samples per prompt, one dict per sample (prompt-major) with prompt_ids,
    response_ids, rollout_logp (log-probs of the sampled tokens at `temperature`), truncated."""
    rows = [ids for ids in prompt_ids for _ in range(n)]
    results, device = [], next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        width = max(len(r) for r in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in chunk], device=device)  # left padding
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], device=device)
        recorder = _SampledLogprobRecorder(temperature)
        out = model.generate(  # every sampling knob explicit: the model's generation_config must not leak in
            input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
            min_p=None, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([recorder]), eos_token_id=stop_ids, pad_token_id=pad_id)
        generated = out[:, width:]
        logps = recorder.finish(generated[:, -1]).cpu()
        lengths, truncated = (x.tolist() for x in response_lengths(generated, stop_ids))
        for i, (r, tokens) in enumerate(zip(chunk, generated.tolist())):
            results.append({"prompt_ids": r, "response_ids": tokens[: lengths[i]], "truncated": truncated[i],
                            "rollout_logp": logps[i, : lengths[i]].tolist()})
    return results


# ── GPU only: vLLM engine (colocated, one engine per process, tensor parallel 1; written against vLLM 0.33) ──
def vllm_sampling_kwargs(n: int, temperature: float, top_p: float, max_new_tokens: int, stop_ids: list[int]) -> dict:
    """vllm.SamplingParams for RL rollouts: unbiased sampling (top_k 0 = off), stop tokens, and the sampled
    token's log-prob (logprobs=0) after temperature (engine logprobs_mode=processed_logprobs)."""
    return dict(n=n, temperature=temperature, top_p=top_p, top_k=0, min_p=0.0, repetition_penalty=1.0,
                max_tokens=max_new_tokens, logprobs=0, stop_token_ids=list(stop_ids), skip_special_tokens=False)


def vllm_requests(prompt_ids: list[list[int]]) -> list[dict]:
    """Token-in prompts for LLM.generate (no re-tokenisation)."""
    return [{"prompt_token_ids": list(ids)} for ids in prompt_ids]


def parse_vllm_outputs(outputs, prompt_ids: list[list[int]]) -> list[dict]:
    """vLLM RequestOutputs -> the per-sample dicts of `hf_generate`. `token_ids` already ends with the stop token
    when finish_reason is "stop"; any other finish reason ("length", "abort", ...) counts as truncated."""
    results = []
    for prompt, request in zip(prompt_ids, outputs):
        for completion in request.outputs:
            tokens = list(completion.token_ids)
            logps = [completion.logprobs[t][token].logprob for t, token in enumerate(tokens)]
            results.append({"prompt_ids": list(prompt), "response_ids": tokens, "rollout_logp": logps,
                            "truncated": completion.finish_reason != "stop"})
    return results


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def build_vllm_engine(args, accelerator):
    """This process's engine, built before any optimizer state (vLLM checks free memory at start-up) and by every
    process at the same point (vLLM creates process groups collectively)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: weights reachable
    for key, value in (("RANK", accelerator.process_index), ("LOCAL_RANK", accelerator.local_process_index),
                       ("WORLD_SIZE", accelerator.num_processes), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", 29500)):
        os.environ.setdefault(key, str(value))
    from vllm import LLM

    r = args.rollout
    llm = LLM(model=args.data.model, distributed_executor_backend="external_launcher", tensor_parallel_size=1,
              seed=args.exp.seed + accelerator.process_index, gpu_memory_utilization=r.vllm_gpu_memory_utilization,
              max_model_len=r.vllm_max_model_len, enable_prefix_caching=True, enable_sleep_mode=r.vllm_sleep_mode,
              logprobs_mode="processed_logprobs", dtype="bfloat16",
              max_num_batched_tokens=max(4096, r.vllm_max_model_len))
    if r.vllm_sleep_mode:
        llm.sleep(level=1)  # level 1 keeps the weights (on CPU), so a wake-up is always valid
    return llm


def layer_groups(named: list) -> list[list]:
    """[(name, param)] grouped by decoder layer (`...layers.{i}.`); other parameters alone, in model order."""
    groups, keys = [], []
    for name, param in named:
        key = re.match(r".*?\.layers\.\d+\.", name)
        key = key.group(0) if key else name
        if not keys or keys[-1] != key:
            groups.append([])
            keys.append(key)
        groups[-1].append((name, param))
    return groups


def full_parameter_chunks(model, accelerator):
    """Yield the policy's weights as lists of (HF name, bf16 tensor), one decoder layer at a time, on every process:
    gathered under ZeRO-3 (one batched all-gather per layer), FSDP1 (one wrapped unit at a time) and FSDP2
    (`full_tensor`) only while the consumer holds them, so the extra memory is one layer, not the model.
    A tied `lm_head.weight` is never sent (vLLM ties it to the embedding, and rejects it alone)."""
    unwrapped = accelerator.unwrap_model(model)
    tied = getattr(unwrapped.config, "tie_word_embeddings", False)
    named = [(n, p) for n, p in unwrapped.named_parameters() if not (tied and n == "lm_head.weight")]
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        for group in layer_groups(named):
            with deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=None):
                yield [(n, p.detach().to(torch.bfloat16)) for n, p in group]
    elif accelerator.distributed_type == DistributedType.FSDP and not getattr(accelerator, "is_fsdp2", False):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        for prefix, unit in model.named_modules():
            if isinstance(unit, FSDP):  # the parameters this unit owns (not its FSDP children's), gathered
                with FSDP.summon_full_params(unit, recurse=False, writeback=False):
                    names = [(f"{prefix}.{n}" if prefix else n, p) for n, p in unit.named_parameters()
                             if n.count("_fsdp_wrapped_module.") == 1]
                    yield [(n.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", ""),
                            p.detach().to(torch.bfloat16)) for n, p in names
                           if not (tied and n.endswith("lm_head.weight"))]
    else:  # unsharded, or FSDP2 (DTensor parameters)
        for group in layer_groups(named):
            yield [(n, (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().to(torch.bfloat16))
                   for n, p in group]


@torch.no_grad()
def sync_weights_to_vllm(llm, model, accelerator, sleep_mode: bool) -> None:
    """Push the trainer's weights into the engine layer by layer (vLLM 0.33's Llama/Qwen2 `load_weights` takes HF
    names, keeps no state between calls and copies q/k/v and gate/up into its fused shards in place) and drop the
    prefix cache (its KV came from the old weights)."""
    if sleep_mode:
        torch.cuda.empty_cache()
        llm.wake_up(tags=["weights"])  # never load into sleeping (unmapped) memory
    for chunk in full_parameter_chunks(model, accelerator):
        llm.apply_model(lambda vllm_model: vllm_model.load_weights(iter(chunk)))  # in-process: no serialisation
    llm.reset_prefix_cache()
    if sleep_mode:
        llm.wake_up(tags=["kv_cache"])


def vllm_generate(llm, prompt_ids, n, temperature, top_p, max_new_tokens, stop_ids) -> list[dict]:
    from vllm import SamplingParams

    params = SamplingParams(**vllm_sampling_kwargs(n, temperature, top_p, max_new_tokens, stop_ids))
    return parse_vllm_outputs(llm.generate(vllm_requests(prompt_ids), sampling_params=params, use_tqdm=False),
                              prompt_ids)
# ── end of the GPU-only vLLM block ──


def generate(model, llm, accelerator, prompt_ids, n, temperature, args, stop_ids, pad_id) -> list[dict]:
    """Rollout with the chosen engine (a vLLM engine must hold the current weights); n samples per prompt."""
    if llm is not None:
        return vllm_generate(llm, prompt_ids, n, temperature, args.rollout.top_p, args.rollout.max_new_tokens, stop_ids)
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    with accelerator.autocast():
        samples = hf_generate(unwrapped, prompt_ids, n, temperature, args.rollout.max_new_tokens, stop_ids, pad_id,
                              args.rollout.hf_generation_batch_size)
    unwrapped.train(was_training)
    return samples


def collate(samples: list[dict], pad_id: int) -> dict:
    """Per-sample dicts -> tensors: input_ids/attention_mask [B, P+R] (prompt left-padded, response right-padded),
    response_ids/response_mask/rollout_logp [B, R], truncated [B]."""
    prompt_width = max(len(s["prompt_ids"]) for s in samples)
    response_width = max(max(len(s["response_ids"]) for s in samples), 1)
    input_ids = torch.full((len(samples), prompt_width + response_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask, rollout_logp = torch.zeros((2, len(samples), response_width))
    for i, s in enumerate(samples):
        p, r = s["prompt_ids"], s["response_ids"]
        input_ids[i, prompt_width - len(p): prompt_width + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, prompt_width - len(p): prompt_width + len(r)] = 1
        response_mask[i, : len(r)] = 1.0
        rollout_logp[i, : len(r)] = torch.tensor(s["rollout_logp"][: len(r)])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_ids": input_ids[:, prompt_width:],
            "response_mask": response_mask, "rollout_logp": rollout_logp,
            "truncated": torch.tensor([s["truncated"] for s in samples])}


def micro_batch_stats(model, batch: dict, rows, chunk_size: int, temperature: float):
    """logp, entropy, g [b, R] of the rows `rows` of `batch` from one forward (grads flow if enabled), logits / T.
    All-padding prompt columns on the left and response columns on the right are trimmed first."""
    mask = batch["response_mask"][rows]
    width = int(mask.sum(0).nonzero().max()) + 1 if mask.any() else 1
    full_width = mask.shape[1]
    attention = batch["attention_mask"][rows][:, : batch["input_ids"].shape[1] - full_width + width]
    first = int(attention.sum(0).nonzero().min())
    input_ids, attention = batch["input_ids"][rows][:, first: attention.shape[1]], attention[:, first:]
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # positions follow the left padding, as in generate
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                   logits_to_keep=width + 1, use_cache=False).logits.div_(temperature)  # row j predicts token j
    tokens = torch.cat([batch["response_ids"][rows][:, :width], torch.zeros_like(input_ids[:, :1])], dim=1)
    stats = token_stats(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), chunk_size)
    return [torch.nn.functional.pad(x.view(len(input_ids), width + 1)[:, :width], (0, full_width - width))
            for x in stats]

# ─── SHARED: logging, evaluation, checkpoints ──────────────────────────────────────────────────
class Metrics:
    """Per-process sums, counts and maxima (tensors stay on the device until `reduce`): the reduced value of a
    name is Σ sum / Σ count over processes, or the max over processes."""

    def __init__(self):
        self.sums, self.counts, self.maxes = {}, {}, {}

    def add(self, name: str, total, count=1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + total
        self.counts[name] = self.counts.get(name, 0.0) + count

    def mean(self, name: str, values, mask) -> None:
        self.add(name, (values * mask).sum(), mask.sum())

    def max(self, name: str, value) -> None:
        """Largest value, or the smallest for names ending in `_min`."""
        value = -value if name.endswith("_min") else value
        self.maxes[name] = value if name not in self.maxes else max(self.maxes[name], value)

    def reduce(self, accelerator) -> dict:
        keys, max_keys, device = sorted(self.sums), sorted(self.maxes), accelerator.device

        def as_tensor(values):  # one transfer for all values, no per-value device synchronisation
            return torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device).reshape(()) for v in values]) \
                if values else torch.zeros(0, dtype=torch.float64, device=device)

        totals = as_tensor([self.sums[k] for k in keys] + [self.counts[k] for k in keys])
        maxes = as_tensor([self.maxes[k] for k in max_keys])
        if accelerator.num_processes > 1:
            totals = accelerator.reduce(totals, reduction="sum")
            maxes = accelerator.gather(maxes[None]).amax(0) if max_keys else maxes
        totals, maxes = totals.tolist(), maxes.tolist()
        out = {k: totals[i] / totals[len(keys) + i] if totals[len(keys) + i] > 0 else float("nan")
               for i, k in enumerate(keys)}
        return {**out, **{k: -v if k.endswith("_min") else v for k, v in zip(max_keys, maxes)}}


def encode_problems(problems: list[dict], tokenizer, template: str, max_prompt_length: int) -> list[dict]:
    """Attach prompt token ids; prompts longer than `max_prompt_length` are skipped and counted."""
    encoded = []
    for p in problems:
        ids = tokenizer(build_prompt(p["question"], template, tokenizer), add_special_tokens=False)["input_ids"]
        if len(ids) <= max_prompt_length:
            encoded.append({**p, "prompt_ids": ids})
    if len(encoded) < len(problems):
        print(f"skipped {len(problems) - len(encoded)} of {len(problems)} prompts over {max_prompt_length} tokens")
    if not encoded:
        raise UsageError(f"no prompt fits in --max-prompt-length {max_prompt_length}")
    return encoded


def evaluate(model, llm, accelerator, problems, args, tokenizer, stop_ids, step: int) -> dict:
    """avg@n accuracy and response length on the held-out problems, sharded over processes; shards are padded to
    equal length (padding is generated but not scored) so every process runs the same calls."""
    world, rank, n = accelerator.num_processes, accelerator.process_index, args.log.eval_n
    per_rank = math.ceil(len(problems) / world)
    shard = (problems + problems[: per_rank * world - len(problems)])[rank * per_rank: (rank + 1) * per_rank]
    real = max(0, min(per_rank, len(problems) - rank * per_rank))
    if llm is not None:
        sync_weights_to_vllm(llm, model, accelerator, args.rollout.vllm_sleep_mode)
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # evaluation never perturbs the training RNG stream
        torch.manual_seed(args.exp.seed * 7919 + step * 104729 + rank)
        samples = generate(model, llm, accelerator, [p["prompt_ids"] for p in shard], n, args.log.eval_temperature,
                           args, stop_ids, tokenizer.pad_token_id)[: real * n]
    if llm is not None and args.rollout.vllm_sleep_mode:
        llm.sleep(level=1)
    texts = tokenizer.batch_decode([s["response_ids"] for s in samples], skip_special_tokens=True)
    rewards = score(texts, [p["answer"] for p in shard[:real] for _ in range(n)], mode=args.reward.answer_mode,
                    timeout_s=args.reward.grader_timeout_s, num_workers=args.reward.grader_workers,
                    multi_box=args.reward.multi_box)
    metrics = Metrics()
    metrics.add("eval/accuracy", sum(r > 0 for r in rewards), len(samples))
    metrics.add("eval/response_length_mean", sum(len(s["response_ids"]) for s in samples), len(samples))
    metrics.add("eval/no_answer_frac", rewards.no_answer, len(samples))
    return metrics.reduce(accelerator)


# flags that may change when a run is resumed (the rest must match the checkpoint, or the run is not the same run)
RESUMABLE_CHANGES = {"total_steps", "eval_every", "num_eval_problems", "eval_n", "eval_temperature", "output_dir",
                     "run_name", "resume", "track", "wandb_project_name", "wandb_entity", "log_completions_every",
                     "num_completions_to_log", "checkpoint_every", "keep_checkpoints", "grader_workers", "threads",
                     "grader_timeout_s", "data_dir", "entropy_chunk_size", "measure_entropy_change"}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_damage(checkpoint: str) -> str | None:
    """None if every file listed in the checkpoint's `manifest.json` is present with its size and sha256, else what
    is wrong (a partial write, a truncated or changed file)."""
    try:
        with open(os.path.join(checkpoint, "manifest.json")) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as error:
        return f"no readable manifest.json ({error.__class__.__name__})"
    for name, expected in files.items():
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path) or os.path.getsize(path) != expected["bytes"]:
            return f"{name}: missing or truncated"
        if file_sha256(path) != expected["sha256"]:
            return f"{name}: checksum mismatch"
    return None


def latest_checkpoint(run_dir: str, verify: bool = False) -> str | None:
    """The newest finished checkpoint (`step_N`, not `step_N.tmp`); with `verify`, the newest intact one, saying
    which damaged ones it passed over."""
    root = os.path.join(run_dir, "checkpoints")
    done = sorted((d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp")), reverse=True) \
        if os.path.isdir(root) else []
    for name in done:
        damage = checkpoint_damage(os.path.join(root, name)) if verify else None
        if damage is None:
            return os.path.join(root, name)
        print(f"checkpoint {os.path.join(root, name)} is damaged ({damage}); trying the previous one", file=sys.stderr)
    return None


def check_resume(args) -> None:
    """Refuse to resume a run of another script or with arguments that change the run (listed by flag)."""
    checkpoint = latest_checkpoint(args.exp.resume, verify=True)
    if checkpoint is None:
        raise UsageError(f"--resume {args.exp.resume}: no intact checkpoint under {args.exp.resume}/checkpoints")
    with open(os.path.join(checkpoint, "manifest.json")) as f:
        recorded = json.load(f)
    if recorded["script"] != SCRIPT:
        raise UsageError(f"--resume {args.exp.resume}: written by {recorded['script']}, not {SCRIPT}")
    now = flat_args(args)
    changed = [f"--{k.replace('_', '-')} {v!r} (checkpoint: {recorded['args'].get(k)!r})" for k, v in now.items()
               if k not in RESUMABLE_CHANGES and recorded["args"].get(k) != v]
    if changed:
        raise UsageError(f"--resume {args.exp.resume}: arguments differ from the run's: {'; '.join(changed)}")
    if recorded["code_sha256"] != file_sha256(os.path.join(REPO_DIR, SCRIPT)):
        print(f"note: {SCRIPT} has changed since {checkpoint} was written", file=sys.stderr)


def save_checkpoint(accelerator, model, tokenizer, run_dir: str, step: int, trainer_state: dict, args,
                    with_hf: bool = True) -> None:
    """Resumable checkpoint, written to `step_N.tmp` and renamed to `step_N` when complete: accelerate state (model,
    optimizer, scheduler, RNG states of every process), `trainer_state.json` (step, data position, algorithm state),
    unless `with_hf` is off (the last step, whose model goes to `final/`) the model in HF format (`hf/`), and last
    `manifest.json`: the script, its sha256, the arguments, and the size and sha256 of every file."""
    root = os.path.join(run_dir, "checkpoints")
    final, tmp = os.path.join(root, f"step_{step:06d}"), os.path.join(root, f"step_{step:06d}.tmp")
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        if with_hf:
            save_model(accelerator, model, tokenizer, os.path.join(tmp, "hf"))
        accelerator.wait_for_everyone()  # every process has written its files before the manifest and the rename
        if accelerator.is_main_process:
            with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
                json.dump(trainer_state, f)
            files = {os.path.relpath(os.path.join(d, n), tmp): os.path.join(d, n) for d, _, names in os.walk(tmp)
                     for n in names}
            manifest = {"script": SCRIPT, "code_sha256": file_sha256(os.path.join(REPO_DIR, SCRIPT)),
                        "args": flat_args(args), "files": {rel: {"bytes": os.path.getsize(path),
                                                                 "sha256": file_sha256(path)}
                                                           for rel, path in sorted(files.items())}}
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump(manifest, f, indent=1)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))[
                    :-args.log.keep_checkpoints]:
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    except Exception as error:  # a full disk surfaces as OSError, torch's "enforce fail", safetensors' I/O error
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        raise RunError(f"could not write checkpoint {final} ({str(error).splitlines()[0][:200]}); "
                              f"free disk space under {root}, then resume from "
                              f"{previous or 'the start (no earlier checkpoint)'}: {rerun_command(run_dir)}") from None
    accelerator.wait_for_everyone()


def save_model(accelerator, model, tokenizer, path: str) -> None:
    state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3 / FSDP
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path, state_dict=state_dict)
        tokenizer.save_pretrained(path)


def flat_args(args) -> dict:
    """{flag name: value} of the nested argument groups (what `args.json` and W&B record)."""
    return {k: v for group in asdict(args).values() for k, v in group.items()}


class RunLogger:
    """TensorBoard (`runs/<run_name>`), `metrics.jsonl` (one line per step), optional W&B, sample completions."""

    def __init__(self, run_dir: str, args, enabled: bool, resume_step: int):
        self.enabled, self.run_dir = enabled, run_dir
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        for name in ("metrics.jsonl", "completions.jsonl"):  # on resume, drop lines logged after the checkpoint
            path = os.path.join(run_dir, name)
            if resume_step and os.path.exists(path):
                with open(path) as f:
                    kept = [line for line in f if json.loads(line)["step"] <= resume_step]
                with open(path, "w") as f:
                    f.writelines(kept)
        flat = flat_args(args)
        if args.exp.track:
            import wandb

            wandb.init(project=args.exp.wandb_project_name, entity=args.exp.wandb_entity, sync_tensorboard=True,
                       config=flat, name=os.path.basename(run_dir), save_code=True, resume="allow")
        self.writer = SummaryWriter(run_dir)
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in
                                                                                    flat.items()))
        with open(os.path.join(run_dir, "args.json"), "w") as f:
            json.dump({"script": SCRIPT, **flat}, f, indent=1)
        self.metrics_file = open(os.path.join(run_dir, "metrics.jsonl"), "a")

    def log(self, step: int, metrics: dict) -> None:
        if self.enabled:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
            self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
            self.metrics_file.flush()

    def completions(self, step: int, rows: list[dict]) -> None:
        if self.enabled:
            with open(os.path.join(self.run_dir, "completions.jsonl"), "a") as f:
                f.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.metrics_file.close()

# ─── SHARED: main loop ─────────────────────────────────────────────────────────────────────────
def take_prompts(problems: list[dict], pos: int, count: int, seed: int) -> list[dict]:
    """`count` problems from global position `pos` of an endless stream that reshuffles the set every epoch."""
    n = len(problems)
    orders = {epoch: torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
              for epoch in range(pos // n, (pos + count - 1) // n + 1)}
    return [problems[int(orders[i // n][i % n])] for i in range(pos, pos + count)]


def rollout_and_grade(model, llm, accelerator, args, train_problems, data_pos, tokenizer, stop_ids, metrics):
    """Sample and grade groups until this step's batch is full (DAPO dynamic sampling keeps only groups whose
    rewards differ, up to `max_gen_batches`). Returns the samples of `prompts_per_step / world` groups (all-equal
    groups fill any gap, with `is_padding` set), and the new data position."""
    world, rank, G = accelerator.num_processes, accelerator.process_index, args.rollout.group_size
    per_rank = args.rollout.prompts_per_step // world
    kept, dropped, gen_batches, rollout_s, grading_s, timeouts, tokens = [], [], 0, 0.0, 0.0, 0, 0
    if llm is not None:
        sync_weights_to_vllm(llm, model, accelerator, args.rollout.vllm_sleep_mode)
    while True:
        problems = take_prompts(train_problems, data_pos + rank * per_rank, per_rank, args.exp.seed)
        data_pos, gen_batches = data_pos + args.rollout.prompts_per_step, gen_batches + 1
        t0 = time.time()
        samples = generate(model, llm, accelerator, [p["prompt_ids"] for p in problems], G, args.rollout.temperature,
                           args, stop_ids, tokenizer.pad_token_id)
        t1 = time.time()
        texts = tokenizer.batch_decode([s["response_ids"] for s in samples], skip_special_tokens=True)
        rewards = score(texts, [p["answer"] for p in problems for _ in range(G)], mode=args.reward.answer_mode,
                        timeout_s=args.reward.grader_timeout_s, num_workers=args.reward.grader_workers,
                        reward_range=args.reward.reward_range, multi_box=args.reward.multi_box)
        rollout_s, grading_s, timeouts = rollout_s + t1 - t0, grading_s + time.time() - t1, timeouts + rewards.timeouts
        tokens += sum(len(s["response_ids"]) for s in samples)
        correct = torch.tensor([r > 0 for r in rewards], dtype=torch.float32)
        informative = informative_groups(correct, G)
        metrics.add("rollout/accuracy", correct.sum(), len(correct))
        metrics.add("rollout/reward", sum(rewards), len(rewards))
        metrics.add("rollout/no_answer_frac", rewards.no_answer, len(rewards))
        metrics.add("rollout/filtered_group_frac", (~informative).sum() if args.reward.filter_groups else 0, per_rank)
        metrics.add("rollout/all_correct_group_frac", (correct.view(-1, G) == 1).all(1).sum(), per_rank)
        metrics.add("rollout/all_wrong_group_frac", (correct.view(-1, G) == 0).all(1).sum(), per_rank)
        for g, problem in enumerate(problems):
            group = [{**samples[i], "reward": rewards[i], "text": texts[i], "problem": problem}
                     for i in range(g * G, (g + 1) * G)]
            (kept if informative[g] or not args.reward.filter_groups else dropped).append(group)
        if not args.reward.filter_groups:
            break
        fewest = torch.tensor(float(len(kept)), device=accelerator.device)
        if (accelerator.gather(fewest[None]).min() if world > 1 else fewest) >= per_rank or \
                gen_batches >= args.reward.max_gen_batches:
            break
    if llm is not None and args.rollout.vllm_sleep_mode:
        llm.sleep(level=1)  # free the KV cache for training
    metrics.add("rollout/gen_batches", gen_batches)
    metrics.add("rollout/grader_timeouts", timeouts, 1.0 / world)  # summed over processes
    metrics.add("time/tokens_per_s", tokens, 1.0 / world)  # summed over processes; divided by the step time later
    metrics.add("time/rollout_s", rollout_s)
    metrics.add("time/grading_s", grading_s)
    # every process trains on exactly `per_rank` groups (same number of backward calls); when the sampling
    # budget ran out, all-equal groups fill the gap with their loss masked out
    groups = kept[:per_rank] + dropped[: max(0, per_rank - len(kept))]
    samples = [dict(s, is_padding=g >= len(kept)) for g, group in enumerate(groups) for s in group]
    return samples, data_pos


def make_batch(samples, args, accelerator, pad_id, metrics) -> dict:
    """Tensors of the rollout batch on this process, with advantages [B, R] from the rewards of all processes
    and the loss mask (padding groups and, with `mask_truncated`, truncated responses excluded)."""
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    batch = {k: v.to(device) for k, v in collate(samples, pad_id).items()}
    lengths = batch["response_mask"].sum(-1)
    rewards = torch.tensor([s["reward"] for s in samples], device=device) + overlong_penalty(
        lengths, args.rollout.max_new_tokens, args.reward.overlong_buffer, args.reward.overlong_penalty_factor)
    advantages = group_advantages(accelerator.gather(rewards) if world > 1 else rewards, args.rollout.group_size,
                                  args.reward.scale_rewards).view(world, -1)[rank]  # [B]
    excluded = torch.tensor([s["is_padding"] for s in samples], device=device)
    excluded |= batch["truncated"] & args.reward.mask_truncated
    batch["loss_mask"] = batch["response_mask"] * ~excluded[:, None]
    batch["adv"] = advantages[:, None].expand_as(batch["loss_mask"]).contiguous()
    metrics.add("rollout/response_length_mean", lengths.sum(), len(lengths))
    metrics.max("rollout/response_length_max", lengths.max())
    metrics.add("rollout/truncated_frac", batch["truncated"].sum(), len(lengths))
    metrics.add("rollout/advantage_abs_mean", advantages.abs().sum(), len(advantages))
    return batch


@torch.no_grad()
def stats_pass(model, batch: dict, args, accelerator) -> tuple[torch.Tensor, ...]:
    """No-grad logp, entropy, G [B, R] of the whole batch, in micro-batches."""
    model.eval()
    with accelerator.autocast():
        rows = torch.arange(len(batch["adv"]), device=batch["adv"].device).split(args.optim.micro_batch_size)
        parts = [micro_batch_stats(model, batch, r, args.log.entropy_chunk_size, args.rollout.temperature)
                 for r in rows]
    return tuple(torch.cat(p) for p in zip(*parts))


@contextmanager
def accumulation(accelerator, model, last: bool, n_micro: int):
    """Gradient accumulation over a minibatch's micro-batches; yields the factor for the loss. DDP: all-reduce on
    the last micro-batch only. DeepSpeed: its engine accumulates, clips and steps at the boundary marked by
    `sync_gradients`, and divides each loss by its accumulation steps (undone by the factor n_micro)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.sync_gradients = last
        yield float(n_micro)
    else:
        with nullcontext() if last else accelerator.no_sync(model):
            yield 1.0


def optimizer_step(accelerator, model, optimizer, max_grad_norm: float) -> tuple[float, bool]:
    """Clip and step unless the gradient is not finite (never write NaN into the weights). Returns (norm, skipped)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # the engine already clipped and stepped
        accelerator.sync_gradients = True
        norm = float(model.get_global_grad_norm() or 0.0)
        skipped = not math.isfinite(norm)
    else:
        norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm))
        skipped = not math.isfinite(norm)
        if not skipped:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, skipped


def update_policy(model, optimizer, batch, args, algo_state, accelerator, metrics, step: int, fill_old: bool) -> int:
    """`update_epochs` × `num_minibatches` optimizer steps over the batch; each micro-batch's entropy flows come from
    the gradient ∂L/∂ℓ_t of the loss actually taken. With `fill_old` (strictly on-policy, no old-policy pass) the
    training forward's ℓ, H, G are stored as the batch's old-policy statistics. Returns the skipped updates."""
    world, n_rows = accelerator.num_processes, len(batch["adv"])
    reduce_sum = (lambda x: accelerator.reduce(x.clone(), reduction="sum")) if world > 1 else (lambda x: x)
    model.train()
    skipped_updates = 0
    for epoch in range(args.optim.update_epochs):
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(args.exp.seed * 31 + step * 7 + epoch))
        for k, mb_rows in enumerate(order.to(batch["adv"].device).split(n_rows // args.optim.num_minibatches)):
            totals = minibatch_totals(batch["loss_mask"][mb_rows], reduce_sum)
            micro = mb_rows.split(args.optim.micro_batch_size)
            for j, rows in enumerate(micro):
                with accumulation(accelerator, model, j == len(micro) - 1, len(micro)) as loss_factor, \
                        accelerator.autocast():
                    logp, entropy, g = micro_batch_stats(model, batch, rows, args.log.entropy_chunk_size,
                                                         args.rollout.temperature)
                    mb = {key: value[rows] for key, value in batch.items()}
                    if epoch == 0 and k == 0:  # the policy that sampled the batch: r ≡ 1 exactly
                        mb["logp_old"] = logp.detach()
                        if fill_old:  # no old-policy pass: its H and G are this forward's
                            mb["entropy_old"], mb["g_old"] = entropy.detach(), g
                    grad_logp = []
                    logp.register_hook(grad_logp.append)  # ∂L/∂ℓ_t of the loss below, for the flows
                    loss, info = compute_loss(mb, logp, entropy, args, algo_state, totals, world)
                    accelerator.backward(loss * loss_factor)
                if fill_old:
                    batch["logp_old"][rows], batch["entropy_old"][rows], batch["g_old"][rows] = \
                        logp.detach(), entropy.detach(), g
                log_micro_batch(metrics, info, mb, logp.detach(), entropy.detach(), g,
                                -grad_logp[0] * totals["tokens"] / world)
            grad_norm, skipped = optimizer_step(accelerator, model, optimizer, args.optim.max_grad_norm)
            skipped_updates += skipped
            metrics.add("train/grad_norm", grad_norm if math.isfinite(grad_norm) else 0.0)
    return skipped_updates


def log_micro_batch(metrics, info, mb, logp, entropy, g, coef) -> None:
    """Loss and flow metrics of one micro-batch; `coef` = −∂L/∂ℓ_t scaled so that token-mean reads A_t r_t w_t."""
    m = mb["loss_mask"]
    delta = entropy_change(coef, logp, entropy, g) * m  # ΔH_t / η, exact first order (tabular softmax)
    metrics.add("entropy/flow_increase", delta.clamp(min=0).sum(), m.sum())
    metrics.add("entropy/flow_decrease", (-delta).clamp(min=0).sum(), m.sum())
    metrics.add("entropy/flow_net", delta.sum(), m.sum())
    metrics.add("entropy/increase_frac", (delta > 0).sum(), m.sum())
    metrics.mean("train/policy_loss", info["token_loss"], m)
    metrics.mean("train/clip_frac_low", info["clipped_low"].float(), m)
    metrics.mean("train/clip_frac_high", info["clipped_high"].float(), m)
    metrics.mean("train/ppo_kl", mb["logp_old"] - logp, m)
    if "kl_ref" in info:
        metrics.mean("train/kl_ref", info["kl_ref"].detach(), m)
    if "is_weight" in info:
        metrics.mean("rollout/is_weight_mean", info["is_weight"], m)
        metrics.mean("rollout/is_capped_frac", info["is_capped"].float(), m)
    for name, value in info.items():  # the method's scalars: mean over micro-batches, or max / min by name
        if name.startswith("algo/"):
            if name.endswith("_max") or name.endswith("_min"):
                metrics.max(name, value)
            else:
                metrics.add(name, value)


def batch_token_metrics(batch, metrics, reduce_sum) -> None:
    """Policy entropy, rollout/trainer log-prob gap and Cov(A, ℓ) of the sampling policy, over the whole batch."""
    mask = batch["response_mask"]
    diff = (batch["rollout_logp"] - batch["logp_old"]).abs() * mask
    metrics.mean("rollout/logp_diff_mean", diff, mask)
    metrics.max("rollout/logp_diff_max", diff.max())
    metrics.mean("entropy/mean", batch["entropy_old"], mask)
    a, lp, n = reduce_sum(torch.stack([(batch["adv"] * mask).sum(), (batch["logp_old"] * mask).sum(), mask.sum()]))
    metrics.mean("entropy/cov_adv_logp", (batch["adv"] - a / n) * (batch["logp_old"] - lp / n), mask)


def rerun_command(run_dir: str) -> str:
    """This command line with `--resume run_dir` in place of `--resume`, `--run-name`, `--total-steps`."""
    dropped = ("--resume", "--run-name", "--total-steps")
    argv, kept = sys.argv[1:] if os.path.basename(sys.argv[0]) == SCRIPT else [], []
    for i, arg in enumerate(argv):
        if arg.split("=")[0] not in dropped and (i == 0 or argv[i - 1] not in dropped):
            kept.append(arg)
    script = sys.argv[0] if os.path.basename(sys.argv[0]) == SCRIPT else SCRIPT  # as invoked, so it works from here
    return shlex.join(["python", script, *kept, "--resume", run_dir])


def main(args: Args) -> str:
    # ── setup: accelerator, argument checks (before anything is loaded or written), seeding, threads
    use_bf16 = args.optim.precision == "bf16" or (args.optim.precision == "auto" and torch.cuda.is_available())
    # cpu=True without CUDA: processes started by `accelerate launch --multi_gpu` / torchrun use gloo
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    engine = "vllm" if args.rollout.rollout_engine == "vllm" or (
        args.rollout.rollout_engine == "auto" and vllm_available()) else "hf"
    if args.rollout.rollout_is_cap is None:  # C = 2: the lower end of TRL's and ms-swift's caps (3, 2) bounds variance
        args.rollout.rollout_is_cap = 2.0 if engine == "vllm" else 0.0
    check_shared_args(args, world)
    check_algorithm_args(args)
    if args.exp.threads and accelerator.device.type == "cpu":
        torch.set_num_threads(args.exp.threads)
    seqs_per_rank = args.rollout.prompts_per_step // world * args.rollout.group_size
    micro_steps = math.ceil(seqs_per_rank // args.optim.num_minibatches / args.optim.micro_batch_size)
    is_deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if is_deepspeed:  # the engine accumulates `micro_steps` backward calls, clips, then steps
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            gradient_accumulation_steps=micro_steps, train_micro_batch_size_per_gpu=args.optim.micro_batch_size,
            gradient_clipping=args.optim.max_grad_norm)

    def seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    seed_everything(args.exp.seed)
    if args.exp.torch_deterministic:  # vLLM sampling stays non-deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    run_name = args.exp.run_name or "__".join([os.path.basename(args.data.train_data), args.exp.exp_name,
                                               str(args.exp.seed), str(int(time.time()))])
    run_dir = args.exp.resume or os.path.join(args.exp.output_dir, broadcast_object_list([run_name])[0])
    checkpoint = latest_checkpoint(run_dir, verify=True) if args.exp.resume else None

    # ── data
    tokenizer = AutoTokenizer.from_pretrained(args.data.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:  # stop at the tokenizer's EOS, the generation config's EOS ids and, for chat templates, <|im_end|>
        generation_eos = GenerationConfig.from_pretrained(args.data.model).eos_token_id
    except OSError:
        generation_eos = None
    im_end = tokenizer.get_vocab().get("<|im_end|>") if args.data.template != "plain" else None
    stop_ids = sorted({tokenizer.eos_token_id, im_end, *(generation_eos if isinstance(generation_eos, list)
                                                          else [generation_eos])} - {None})

    def load(name, split, limit=None):
        try:
            problems = load_problems(name, split=split, data_dir=args.data.data_dir, limit=limit,
                                     skip_invalid=args.data.skip_invalid)
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(str(error).replace("skip_invalid=True", "--skip-invalid")
                             .replace("data_dir=", "--data-dir")) from None
        if getattr(problems, "skipped", 0):
            accelerator.print(f"{name}: skipped {problems.skipped} invalid rows (--skip-invalid), first: "
                              f"{problems.skipped_rows[0]}")
        return encode_problems(problems, tokenizer, args.data.template, args.data.max_prompt_length)

    train_problems = load(args.data.train_data, args.data.train_split)
    if len(train_problems) < args.rollout.prompts_per_step:
        accelerator.print(f"note: {len(train_problems)} training problems, fewer than --prompts-per-step "
                          f"{args.rollout.prompts_per_step}: every step repeats problems (reshuffled each pass)")
    eval_problems = load(args.data.eval_data, args.data.eval_split, args.log.num_eval_problems) \
        if args.log.eval_every > 0 else []

    # ── rollout engine: vLLM is built before any optimizer state (it checks free memory at start-up)
    llm = build_vllm_engine(args, accelerator) if engine == "vllm" else None
    seed_everything(args.exp.seed)  # vLLM re-seeds the global RNGs in its worker

    # ── policy, optimizer, schedule (and the reference model only when the KL term is on)
    model = AutoModelForCausalLM.from_pretrained(args.data.model, dtype=torch.float32)
    for module in model.modules():  # dropout would make the on-policy ratio differ from 1
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if model.config.tie_word_embeddings:  # accelerate warns on every save that the tied lm_head is stored once
        logging.getLogger("accelerate.utils.other").addFilter(lambda r: "Removed shared tensor" not in r.getMessage())
    if args.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.optim.learning_rate, weight_decay=args.optim.weight_decay)

    def lr_factor(step: int) -> float:
        if step < args.optim.lr_warmup_steps:
            return (step + 1) / args.optim.lr_warmup_steps
        if args.optim.lr_schedule == "cosine":
            progress = (step - args.optim.lr_warmup_steps) / max(1, args.optim.total_steps - args.optim.lr_warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)  # stepped once per rollout step
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    ref_model = None
    if args.loss.kl_coef > 0:  # a plain (unsharded) frozen copy, also under ZeRO-3
        with accelerator.state.deepspeed_plugin.zero3_init_context_manager(enable=False) if is_deepspeed \
                else nullcontext():
            ref_model = AutoModelForCausalLM.from_pretrained(args.data.model, dtype=torch.bfloat16 if use_bf16
                                                             else torch.float32)
        ref_model = ref_model.to(accelerator.device).eval().requires_grad_(False)
    algo_state = init_algorithm_state(args)

    # ── resume
    start_step, data_pos = 0, 0
    if checkpoint:
        accelerator.load_state(checkpoint)
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            trainer_state = json.load(f)
        start_step, data_pos, algo_state = trainer_state["step"], trainer_state["data_pos"], trainer_state["algo_state"]
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")
    logger = RunLogger(run_dir, args, accelerator.is_main_process, start_step)
    accelerator.print(f"run directory: {run_dir}  (engine: {engine}, processes: {world}, device: {accelerator.device})")
    reduce_sum = (lambda x: accelerator.reduce(x.clone(), reduction="sum")) if world > 1 else (lambda x: x)
    # the old-policy pass is needed when later minibatches are off-policy or the algorithm needs batch statistics
    old_policy_pass = needs_old_policy_pass(args) or args.optim.update_epochs * args.optim.num_minibatches > 1

    if args.log.eval_every > 0 and start_step == 0:  # the starting point of the eval curve
        initial = evaluate(model, llm, accelerator, eval_problems, args, tokenizer, stop_ids, 0)
        logger.log(0, initial)
        accelerator.print(f"step    0 | eval {initial['eval/accuracy']:.3f}")

    # ── the loop (Ctrl-C ends it with what to run next)
    step, skipped_streak = start_step, 0
    try:
        for step in range(start_step + 1, args.optim.total_steps + 1):
            step_start = time.time()
            seed_everything(args.exp.seed * 10_007 + step * 101 + rank)  # sampling is a function of (seed, step, rank)
            metrics = Metrics()
            # 1. rollout and grading; 2. advantages and loss mask
            samples, data_pos = rollout_and_grade(model, llm, accelerator, args, train_problems, data_pos, tokenizer,
                                                  stop_ids, metrics)
            batch = make_batch(samples, args, accelerator, tokenizer.pad_token_id, metrics)
            # 3. old-policy ℓ_old, H, G (no grad), or filled in by the single on-policy update
            t0 = time.time()
            if old_policy_pass:
                batch["logp_old"], batch["entropy_old"], batch["g_old"] = stats_pass(model, batch, args, accelerator)
            else:
                batch["logp_old"], batch["entropy_old"], batch["g_old"] = torch.zeros((3, *batch["adv"].shape),
                                                                                      device=accelerator.device)
            if ref_model is not None:
                batch["logp_ref"] = stats_pass(ref_model, batch, args, accelerator)[0]
            algo_metrics = algorithm_step_begin(algo_state, args, batch, reduce_sum)
            # 4. policy update
            learning_rate = scheduler.get_last_lr()[0]  # the rate this step's updates use
            skipped = update_policy(model, optimizer, batch, args, algo_state, accelerator, metrics, step,
                                    fill_old=not old_policy_pass)
            metrics.add("train/skipped_updates", skipped)
            all_skipped = skipped == args.optim.update_epochs * args.optim.num_minibatches
            skipped_streak = skipped_streak + 1 if all_skipped else 0
            scheduler.step()
            batch_token_metrics(batch, metrics, reduce_sum)
            if args.log.measure_entropy_change:  # realised entropy change of the same batch
                metrics.mean("entropy/realised_change", stats_pass(model, batch, args, accelerator)[1] -
                             batch["entropy_old"], batch["response_mask"])
            metrics.add("time/training_s", time.time() - t0)

            # 5. metrics, evaluation, checkpoints
            metrics = {**metrics.reduce(accelerator), **algo_metrics, "train/learning_rate": learning_rate}
            step_s = time.time() - step_start
            metrics.update({"time/step_s": step_s, "time/tokens_per_s": metrics["time/tokens_per_s"] / step_s})
            algorithm_step_end(algo_state, args, metrics)
            if args.log.eval_every > 0 and (step % args.log.eval_every == 0 or step == args.optim.total_steps):
                metrics.update(evaluate(model, llm, accelerator, eval_problems, args, tokenizer, stop_ids, step))
            logger.log(step, metrics)
            if skipped_streak == 3:  # nothing is being learnt: stop rather than spin
                raise RunError(f"every update of steps {step - 2}-{step} was skipped (non-finite loss or gradients); "
                               f"the weights are unchanged since step {step - 3}. Lower --learning-rate or check the "
                               f"data, then continue from {latest_checkpoint(run_dir)}: {rerun_command(run_dir)}")
            if args.log.log_completions_every and step % args.log.log_completions_every == 0:
                logger.completions(step, [{"prompt": s["problem"]["question"], "response": s["text"],
                                           "reward": s["reward"], "gold": s["problem"]["answer"]}
                                          for s in samples[: args.log.num_completions_to_log]])
            shown = {"reward": "rollout/reward", "entropy": "entropy/mean", "flow net": "entropy/flow_net",
                     "len": "rollout/response_length_mean", "eval": "eval/accuracy"}
            accelerator.print(f"step {step:4d} | " + " | ".join(
                f"{label} {metrics[key]:.4g}" for label, key in shown.items() if key in metrics) + f" | {step_s:.1f}s")
            last = step == args.optim.total_steps
            if (args.log.checkpoint_every and step % args.log.checkpoint_every == 0) or last:
                save_checkpoint(accelerator, model, tokenizer, run_dir, step, {"step": step, "data_pos": data_pos,
                                "algo_state": algo_state}, args, with_hf=not last)
    except KeyboardInterrupt:
        last_saved = latest_checkpoint(run_dir)
        raise KeyboardInterrupt(f"run {run_dir} stopped at step {step}; its last checkpoint is {last_saved}; "
                                f"continue with: {rerun_command(run_dir)}") from None

    # ── final model in Hugging Face format, and what to run next
    save_model(accelerator, model, tokenizer, os.path.join(run_dir, "final"))
    logger.close()
    accelerator.print(f"done: {run_dir}\n  evaluate:  python eval_math.py --model {shlex.quote(run_dir)}\n"
                      f"  plot:      python plot.py {shlex.quote(run_dir)}\n"
                      f"  continue:  {rerun_command(run_dir)} --total-steps N")
    accelerator.end_training()
    return run_dir


if __name__ == "__main__":
    cli_args = tyro.cli(Args, config=(tyro.conf.OmitArgPrefixes,))
    try:
        main(cli_args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:
        print(f"\ninterrupted: {interrupt or 'before the run started'}", file=sys.stderr)
        sys.exit(130)
