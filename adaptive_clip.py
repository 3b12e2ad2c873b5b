"""Flexible Entropy Control (FEC, Chen et al., arXiv 2602.09782): GRPO whose PPO clipping bounds depend on each
token's probability and change over training, so that the policy entropy is raised or lowered on purpose.

Entropy-sensitive regions. The first-order entropy change of a softmax policy under a policy-gradient step on a
sampled token (Cui et al., arXiv 2505.22617, Lemma 1) has the token-specific part ΔH_t ∝ −A_t (ℓ_t + H_t). With
A > 0 a likely token (surprisal −ℓ_t below the entropy H_t of its next-token distribution: region E1) lowers the
entropy and an unlikely one (−ℓ_t ≥ H_t: E2) raises it; with A < 0 a likely token (E3) raises it and an unlikely
one (E4) lowers it. The upper clip bound (A > 0) acts on E1/E2, the lower one (A < 0) on E3/E4. Regions are
taken with the old policy's ℓ and H (the policy that sampled the batch).

Probability-dependent thresholds ε(p) = α p + β with α < 0 (loose for unlikely tokens, tight for likely ones):
  upper, entropy-increasing (keeps E2, limits E1):  r ≤ 1 + ε_h(p), ε_h(p) = α_h p + β_h.  With p = π_θ = r π_old
        the bound has the closed form  r_max = (1 + β_h) / (1 − α_h π_old);
  lower, entropy-decreasing (keeps E4, limits E3):  r ≥ 1 − ε_l(p), ε_l(p) = α_l p + β_l, which gives
        r_min = (1 − β_l) / (1 + α_l π_old)  [DERIVED: the analogue of the upper closed form];
  `--threshold-prob old` evaluates ε at π_old instead: r_max = 1 + ε_h(π_old), r_min = 1 − ε_l(π_old) [DERIVED].
  Token loss: L_t = max(−A r, −A clip(r, r_min, r_max)) and, for A < 0, min(L_t, −A c) (dual clip), with the
  bounds computed from the detached π_old (no gradient through them).
  Defaults (α_h, β_h) = (−0.25, 0.35), (α_l, β_l) = (−0.2, 0.3), ε_std = 0.2 (flags). The coefficients are
  DERIVED: this project's own, shaped to match the authors' description; no published numbers were found.
  r_max runs from 1.35 (π_old → 0) to 1.08 (π_old = 1), r_min from 0.70 to 0.875: looser than the standard clip
  for unlikely tokens and tighter for likely ones, as the authors describe. Measured limits (tabular softmax,
  tests/test_adaptive_clip.py and an independent check): the increasing mode (upper bound) raises the entropy
  against the standard clip on peaked and medium states (5/5 configurations each), but lowers it on flat states
  (H₀ ≈ 3) and with Adam on every logit: the bound depends on the absolute p, the E1/E2 split on p = e^−H. (The
  coefficients shipped before, (−0.25, 0.5) and (−0.13, 0.3), were never tighter than ε_std above: r_max ≥ 1.2 for
  every π_old; on a tabular softmax their increasing mode lowered entropy more than the standard clip.)

Schedules over the run's T = total_steps rollout steps, step k = 0 … T − 1 (`--schedule`). Each side uses the blend
E(p) = w ε(p) + (1 − w) ε_std of its probability-dependent threshold with the standard one, solved for r as above:
  constant: (w⁺, w⁻) = (1, 1);   boost (entropy up): (1, 0);   suppress (entropy down): (0, 1);
  increase-decrease (ID), λ_k = 1 − 2k/T:   k ≤ T/2: w⁺ = λ_k, w⁻ = 0;       k > T/2: w⁺ = 0, w⁻ = 1 + λ_k;
  decrease-increase-decrease (DID):          k ≤ T/2: w⁺ = 1 − λ_k, w⁻ = 0;   k > T/2: w⁺ = 1, w⁻ = 1 + λ_k;
  (`--phase-split ρ` moves the switch to ρT with the same linear ramps: a DERIVED generalisation of T/2)
  oscillatory-decay (OD): H_min = 0.2 H_init, τ_low = H_min, τ_high(k) = H_min + (H_init − H_min)(1 − k/T);
  boost (s = 1) once the batch entropy H ≤ τ_low, suppress (s = 0) once H > τ_high(k), else keep s [DERIVED: the
  hysteresis reading, and s = 0 at the start]. H is the token-mean entropy of the previous step's batch under
  the policy that sampled it and H_init that of the first step [DERIVED: a one-step lag, which saves a forward
  pass over the whole batch before every update].

Gradient-preserving clipping (`--gradient-preserving`; GPPO, arXiv 2508.07629, and CE-GPPO, arXiv 2509.20712; not
part of FEC as published): a token beyond its bound keeps the clipped value but a scaled gradient,
  A < 0, r < r_min:  L_t = −β₁ r_min A · r/sg(r);      A > 0, r > r_max:  L_t = −β₂ r_max A · r/sg(r),
i.e. the gradient −β r_bound A ∇ℓ_t instead of none (sg = stop-gradient; GPPO is β₁ = β₂ = 1).

Defaults vs the paper-scale recipe (README: 512 prompts × 8, 16 minibatch updates per rollout, lr 1e-6, schedule
ID): 16 prompts × 8, `--num-minibatches 16` (8 sequences per update), lr 5e-5 (the testbed's for 16 updates: 2e-4
collapses GRPO there), ID. With one update per rollout the ratio is 1, no bound binds: grpo.py's training (a note).

Everything else is grpo.py's. `--clip-low`/`--clip-high` are used only with `--eps-std None`, as the standard
thresholds of the lower/upper side.

Run:  python adaptive_clip.py               # CPU, testbed model, the synthetic `paths` task
      accelerate launch --config_file configs/zero3.yaml adaptive_clip.py --model Qwen/Qwen2.5-Math-7B ...
"""

# ─── SHARED: imports ───────────────────────────────────────────────────────────────────────────
import copy
import dataclasses
import fcntl
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
import urllib.parse
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, field
from typing import Literal


def exit_quietly_on_interrupt(signum, frame):
    """Ctrl-C before the run starts (the libraries below take seconds to load): one line, exit status 130."""
    print("\ninterrupted: before the run started", file=sys.stderr, flush=True)
    os._exit(130)  # no unwinding through half-imported C extensions (an exception there can abort the process)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, exit_quietly_on_interrupt)

import torch
import transformers
import tyro
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from torch.distributed.fsdp import FSDPModule
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.logits_process import TopPLogitsWarper
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.integrations.fsdp import is_fsdp_managed_module

from common.data import (
    GRADED_FAMILIES,
    DataError,
    careful_format,
    graded_family,
    graded_format,
    load_prompts,
    take_prompts,
)
from common.reward import score

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
TESTBED_MODEL = os.path.join(REPO_DIR, "testbed", "model")
SCRIPT = os.path.basename(__file__)
transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars on every run


# ─── SHARED: arguments ─────────────────────────────────────────────────────────────────────────
# The flags, one line each, in the groups `--help` shows. `Args` is all of them, flat (`args.seed`); the method's
# own flags are `args.algo` (the `Algorithm` dataclass of the ALGORITHM section, the first group in `--help`).
@dataclass
class Experiment:
    exp_name: str = os.path.splitext(SCRIPT)[0]  # name of the experiment (the script's file name)
    seed: int = 1  # seed of data order, sampling and evaluation
    torch_deterministic: bool = True  # deterministic torch algorithms where they exist (warn_only)
    threads: int = 1  # torch threads per process on CPU (0: torch's default; 2 is faster on an idle 2-core machine)
    output_dir: str = "runs"  # parent directory of the run directories
    run_name: str | None = None  # run directory name (None: {train_data}__{exp_name}__{seed}__{unix time})
    resume: str | None = None  # run directory to continue with its own arguments (flags given here override them)
    track: bool = False  # mirror the TensorBoard logs to Weights & Biases (needs `pip install wandb`)
    wandb_project_name: str = "rlvr-entropy"  # Weights & Biases project
    wandb_entity: str | None = None  # Weights & Biases entity (team)


@dataclass
class ModelAndData:
    model: str = "testbed/model"
    """HF model id or folder, or a run / checkpoint folder of these scripts (its newest model)"""
    train_data: str = "paths"
    """training problems: a data-set name (paths: the testbed task) or a .jsonl/.json/.parquet"""
    train_split: str | None = None  # split of train_data (None: the loader's choice)
    eval_data: str = "paths"  # held-out problems evaluated every eval_every steps (same forms as train_data)
    eval_split: str | None = "test"  # split of eval_data
    data_dir: str | None = None  # directory of the benchmark files (None: $RLVR_DATA_DIR, else the download cache)
    skip_invalid: bool = False  # skip (and count) data rows without a usable question or answer instead of stopping
    template: Literal["plain", "qwen-math", "dapo"] = "plain"  # prompt template (plain: testbed; others: real models)
    max_prompt_length: int = 1024  # longer prompts are skipped at load time (the count is printed)


@dataclass
class Rollout:
    rollout_engine: Literal["auto", "vllm", "hf"] = "auto"  # auto: vLLM with CUDA and vLLM installed, else HF generate
    prompts_per_step: int = 16  # prompts per rollout step, summed over all processes
    group_size: int = 8  # responses per prompt (G)
    temperature: float = 1.0  # rollout sampling temperature (the trainer divides its logits by it too)
    top_p: float = 1.0  # rollout nucleus sampling (vLLM only; 1.0 keeps the gradient unbiased)
    sampling_noise: Literal["stream", "keyed"] = "stream"  # keyed: per-token noise shared by same-seed runs
    max_new_tokens: int = 64  # maximum response length in tokens
    hf_generation_batch_size: int = 256  # sequences per `generate` call of the HF engine
    rollout_is_cap: float | None = None
    """truncated IS: loss × min(π_old/π_rollout, C); 0: off; None: 2 with vLLM, else 0"""
    vllm_gpu_memory_utilization: float = 0.3  # fraction of GPU memory vLLM may take (colocated with training)
    vllm_sleep_mode: bool = False  # offload vLLM weights and free its KV cache between rollouts (sleep level 1)
    vllm_max_model_len: int | None = None
    """vLLM context length (None: the longest prompt + max_new_tokens, at most the model's max_position_embeddings)"""


@dataclass
class Rewards:
    answer_mode: Literal["auto", "boxed", "minerva", "the-answer-is", "answer"] = "auto"
    r"""last \boxed{}, ..., or all in turn"""
    multi_box: bool = False  # read several nearby \boxed{} as one set answer ("find all" questions)
    reward_range: Literal["01", "pm1"] = "01"  # reward of a correct / incorrect response: 1 / 0, or DAPO's +1 / −1
    grader_timeout_s: float = 5.0  # time limit per graded response (exceeded: incorrect)
    grader_workers: int = 2  # grader worker processes per training process
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """advantage scale: group std (GRPO), batch std, none (Dr.GRPO)"""
    filter_groups: bool = False  # DAPO dynamic sampling: drop groups whose rewards are all equal and sample more
    max_gen_batches: int = 10  # with filter_groups: most generation batches per step (then train on what was kept)
    overlong_buffer: int = 0  # DAPO overlong shaping: penalise responses longer than max_new_tokens − buffer (0: off)
    overlong_penalty_factor: float = 1.0  # DAPO overlong shaping: the penalty at max_new_tokens
    mask_truncated: bool = False  # exclude responses that hit max_new_tokens from the loss


@dataclass
class Optimisation:
    total_steps: int = 200  # rollout steps
    learning_rate: float = 2e-4  # AdamW learning rate (the testbed's; paper-scale runs use 1e-6)
    lr_warmup_steps: int = 0  # linear warm-up, in rollout steps
    lr_schedule: Literal["constant", "cosine"] = "constant"  # learning-rate schedule after warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (global L2 norm)
    update_epochs: int = 1  # passes over each rollout batch (1 with num_minibatches 1: strict on-policy)
    num_minibatches: int = 1  # optimizer steps per pass over the rollout batch
    micro_batch_size: int = 32  # sequences per forward/backward on each process (32: the fastest on the CPU testbed)
    micro_batch_order: Literal["by-length", "shuffled"] = "by-length"
    """by-length: a minibatch's sequences sorted by response length before the split into micro-batches (less
    padding; the same loss, summed in another order); shuffled: as drawn (for statistics taken per micro-batch)"""
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (long responses)
    prompt_once: bool = True  # training forwards: each distinct prompt once (response_logits); off: one per row


@dataclass
class Loss:
    clip_low: float = 0.2  # ε_low: the ratio is clipped below at 1 − ε_low (A < 0)
    clip_high: float = 0.28  # ε_high: the ratio is clipped above at 1 + ε_high (A > 0; DAPO clip-higher)
    dual_clip_c: float = 10.0  # dual-clip bound c > 1 for A < 0 (loss ≤ −A·c); 0: off
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    """aggregation over a minibatch on all processes: tokens, sequences, or B·L (Dr.GRPO)"""
    loss_scale_factor: float | None = None  # L of seq-mean-token-sum-norm (None: max_new_tokens)
    kl_coef: float = 0.0  # β of the k3 KL penalty to the initial model (loaded only when > 0)
    ent_coef: float = 0.0  # α of the entropy bonus −α·H_t (the "Entropy-Reg" baseline)
    adaptive_ent_coef: bool = False  # adapt α every step to hold the entropy at --ent-target (Skywork-OR1)
    ent_coef_init: float = 0.0  # adaptive: α at step 1
    ent_coef_min: float = 0.0  # adaptive: lower bound of α
    ent_coef_max: float = 0.005  # adaptive: upper bound of α
    ent_coef_delta: float = 1e-4  # adaptive: Δ, the change of α per step
    ent_target: float = 1.0  # adaptive: target entropy, in nats (absolute) or × H₀ (relative)
    ent_target_mode: Literal["absolute", "relative"] = "relative"  # relative: --ent-target × H₀ (step 1's entropy)


@dataclass
class Logging:
    eval_every: int = 25  # evaluate every this many steps, before the first and after the last (0: never)
    num_eval_problems: int = 256  # first problems of eval_data used for evaluation
    eval_n: int = 1  # samples per evaluation problem (avg@n)
    eval_temperature: float = 1.0  # evaluation sampling temperature
    log_completions_every: int = 10  # write a few sample completions every this many steps (0: never)
    num_completions_to_log: int = 4  # completions written each time
    checkpoint_every: int = 50  # resumable checkpoint every this many steps, and at the end (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept (a resume never deletes those it found)
    entropy_chunk_size: int = 1024  # rows of [tokens × vocab] processed at once for log-probs, entropy and G
    measure_entropy_change: bool = False  # re-run the batch after the update and log the realised entropy change


ARG_GROUPS = {  # the groups of `--help`, in order (after the method's own flags)
    "experiment": Experiment,
    "model_and_data": ModelAndData,
    "rollout": Rollout,
    "rewards_and_advantages": Rewards,
    "optimisation": Optimisation,
    "loss": Loss,
    "logging_evaluation_checkpoints": Logging,
}


@dataclass
class Args(Logging, Loss, Optimisation, Rewards, Rollout, ModelAndData, Experiment):  # fields: Experiment's first
    """Every flag of the run, flat; the method's flags in `algo`."""

    algo: "Algorithm" = field(default_factory=lambda: Algorithm())  # the method's flags (ALGORITHM section)


# flags a resumed run may change; the others define the run and must match it
RESUMABLE = set(
    "total_steps eval_every num_eval_problems eval_n eval_temperature output_dir run_name resume track "
    "wandb_project_name wandb_entity log_completions_every num_completions_to_log checkpoint_every "
    "keep_checkpoints grader_workers threads grader_timeout_s data_dir entropy_chunk_size "
    "measure_entropy_change hf_generation_batch_size".split()
)
MOST_USED = (
    "Most runs set: --model --template --train-data --eval-data --total-steps --learning-rate "
    "--prompts-per-step --group-size --max-new-tokens --micro-batch-size --resume; `accelerate launch` for GPUs."
)


# ─── ALGORITHM: arguments ──────────────────────────────────────────────────────────────────────
@dataclass
class Algorithm:
    """algorithm: flexible entropy control, probability-dependent and scheduled clipping (arXiv 2602.09782)"""

    schedule: Literal[
        "constant", "boost", "suppress", "increase-decrease", "decrease-increase-decrease", "oscillatory-decay"
    ] = "increase-decrease"
    """which probability-dependent bounds are in use over the T = --total-steps steps: both (constant), the upper
    only (boost: entropy up), the lower only (suppress: entropy down), the time schedules ID or DID, or the
    entropy-triggered oscillatory decay OD (ID was best in the paper)"""
    alpha_high: float = -0.25
    """α_h of ε_h(p) = α_h p + β_h, r_max = (1 + β_h)/(1 − α_h π_old): 1.35 … 1.08. DERIVED, like the other three
    coefficients: this project's values, shaped to the authors' description (no published numbers). They tighten
    the bounds of high-p tokens and loosen those of low-p ones; on tabular softmaxes the increasing mode raises the
    entropy against the standard clip on peaked and medium states, but lowers it on flat ones (H₀ ≈ 3) and with
    Adam on every logit"""
    beta_high: float = 0.35
    """β_h of the upper threshold (ε_h(p) in [0, ∞) for p in [0, 1]); DERIVED (see --alpha-high)"""
    alpha_low: float = -0.2
    """α_l of ε_l(p) = α_l p + β_l, r_min = (1 − β_l)/(1 + α_l π_old): 0.70 … 0.875; DERIVED (see --alpha-high)"""
    beta_low: float = 0.3
    """β_l of the lower threshold (ε_l(p) in [0, 1) for p in [0, 1]); DERIVED (see --alpha-high)"""
    eps_std: float | None = 0.2
    """ε_std, the standard threshold the schedules blend with on both sides (UNVERIFIED default; the paper's
    baseline may be 0.2 or DAPO's 0.28); None: --clip-low on the lower side and --clip-high on the upper"""
    threshold_prob: Literal["current", "old"] = "current"
    """p in ε(p): the current π_θ, solved for the ratio in closed form with π_old (the paper's upper bound), or
    π_old directly, r_max = 1 + ε_h(π_old) and r_min = 1 − ε_l(π_old) (DERIVED alternative)"""
    phase_split: float = 0.5
    """fraction of T at which ID and DID switch from the upper to the lower bound (the paper: 0.5; other values
    keep the same linear ramps, a DERIVED generalisation)"""
    od_min_entropy_frac: float = 0.2
    """OD: H_min = this × H_init (H_init: the first step's batch entropy), the switch-to-boost threshold τ_low and
    the end point of the decaying switch-to-suppress threshold τ_high"""
    od_start_boost: bool = False
    """OD: start in the boost state (s = 1) instead of suppress (s = 0, the DERIVED default)"""
    gradient_preserving: bool = False
    """GPPO / CE-GPPO (arXiv 2508.07629, 2509.20712): tokens beyond their bound keep the gradient −β r_bound A ∇ℓ
    instead of none (not part of FEC as published)"""
    gp_beta1: float = 1.0
    """β₁ of --gradient-preserving: gradient scale of A < 0 tokens below r_min (GPPO 1; CE-GPPO 0.25 to 0.75)"""
    gp_beta2: float = 1.0
    """β₂ of --gradient-preserving: gradient scale of A > 0 tokens above r_max (GPPO and CE-GPPO 1)"""


@dataclass
class Args(Args):  # the paper-scale recipe's structure at testbed scale (shared flags)
    num_minibatches: int = 16  # 16 minibatch updates per rollout (128 sequences: 8 each), as the paper-scale command
    learning_rate: float = 5e-5  # the testbed's rate for 16 updates per rollout (GRPO there: 2e-4 collapses, README)


# ─── ALGORITHM: loss ───────────────────────────────────────────────────────────────────────────
# The bounds need π_old and the regions need ℓ_old and H_old of each token: both are in every micro-batch (on the
# strictly on-policy first update, this forward's ℓ, H are the old policy's). OD reads the previous step's entropy.
def needs_old_policy_pass(args: Args) -> bool:
    """The bounds and regions use each micro-batch's ℓ_old and H_old, which the shared loop always provides."""
    return False


def needs_g3(args: Args) -> bool:
    """Whether `policy_token_loss` reads current["g3"]: no."""
    return False


REGIONS = (1, 2, 3, 4)  # E1..E4; 0 marks tokens with A = 0 (no gradient, no region)


def standard_thresholds(args: Args) -> tuple[float, float]:
    """(ε_std of the lower side, ε_std of the upper side): --eps-std on both, or --clip-low / --clip-high."""
    eps = args.algo.eps_std
    return (args.clip_low, args.clip_high) if eps is None else (eps, eps)


def check_algorithm_args(args: Args) -> None:
    a = args.algo
    for name, alpha, beta, top in (("high", a.alpha_high, a.beta_high, math.inf), ("low", a.alpha_low, a.beta_low, 1)):
        if not (abs(alpha) < 1 and 0 <= beta < top and 0 <= alpha + beta < top):
            raise UsageError(
                f"--alpha-{name} {alpha}, --beta-{name} {beta}: need |α| < 1 and the threshold α p + β "
                f"in [0, {top}) at p = 0 and p = 1"
            )
    if a.eps_std is not None and not 0 <= a.eps_std < 1:
        raise UsageError("--eps-std must be in [0, 1) (or None: --clip-low / --clip-high)")
    if not 0 < a.phase_split < 1:
        raise UsageError("--phase-split must be in (0, 1)")
    if not 0 < a.od_min_entropy_frac < 1:
        raise UsageError("--od-min-entropy-frac must be in (0, 1)")
    if a.gp_beta1 < 0 or a.gp_beta2 < 0:
        raise UsageError("--gp-beta1 and --gp-beta2 must be >= 0")
    if args.update_epochs * args.num_minibatches == 1:
        print(
            "note: one update per rollout: the ratio is exactly 1, no clip bound binds and training equals grpo.py's "
            "(use --num-minibatches or --update-epochs > 1 for the bounds to act)",
            file=sys.stderr,
        )


def blended_threshold(weight: float, alpha: float, beta: float, eps_std: float) -> tuple[float, float]:
    """(α, β) of the blend E(p) = w (α p + β) + (1 − w) ε_std of a probability-dependent and the standard threshold."""
    return weight * alpha, weight * beta + (1.0 - weight) * eps_std


def ratio_bounds(old_prob, alpha_h: float, beta_h: float, alpha_l: float, beta_l: float, prob: str = "current"):
    """(r_min, r_max), elementwise in the detached old probability π_old (float or tensor), of the bounds
    r ≤ 1 + α_h p + β_h and r ≥ 1 − (α_l p + β_l). prob="current": p = π_θ = r π_old, solved for r,
    r_max = (1 + β_h)/(1 − α_h π_old), r_min = (1 − β_l)/(1 + α_l π_old); prob="old": p = π_old,
    r_max = 1 + α_h π_old + β_h, r_min = 1 − α_l π_old − β_l."""
    if prob == "current":
        return (1.0 - beta_l) / (1.0 + alpha_l * old_prob), (1.0 + beta_h) / (1.0 - alpha_h * old_prob)
    if prob == "old":
        return 1.0 - beta_l - alpha_l * old_prob, 1.0 + beta_h + alpha_h * old_prob
    raise ValueError(f"unknown threshold prob {prob!r}")


def od_thresholds(step: int, total_steps: int, entropy_init: float, min_entropy_frac: float) -> tuple[float, float]:
    """OD (τ_low, τ_high(k)): H_min = f H_init and H_min + (H_init − H_min)(1 − k/T)."""
    h_min = min_entropy_frac * entropy_init
    return h_min, h_min + (entropy_init - h_min) * (1.0 - step / total_steps)


def schedule_bounds(
    step: int,
    total_steps: int,
    entropy: float | None,
    state: dict,
    schedule: str,
    phase_split: float = 0.5,
    min_entropy_frac: float = 0.2,
) -> tuple[float, float, dict]:
    """(upper, lower, state) at step k of T: the weights w⁺, w⁻ in [0, 1] of the probability-dependent thresholds in
    E⁺ = w⁺ ε_h(p) + (1 − w⁺) ε_std and E⁻ = w⁻ ε_l(p) + (1 − w⁻) ε_std. ID with ρ = phase_split: k ≤ ρT:
    w⁺ = 1 − k/(ρT), w⁻ = 0; k > ρT: w⁺ = 0, w⁻ = 1 − (k − ρT)/((1 − ρ)T) (ρ = 1/2: λ_k and 1 + λ_k, λ_k = 1 − 2k/T);
    DID: w⁺ = k/(ρT) then 1, w⁻ as in ID. OD: `entropy` (the latest batch entropy, None before the first) sets
    state["entropy_init"] once and moves state["od_boost"] to True when H ≤ τ_low, to False when H > τ_high(k);
    boost is (1, 0), suppress (0, 1). Returns a new state dict; the given one is not modified."""
    state = dict(state)
    if schedule == "constant":
        return 1.0, 1.0, state
    if schedule == "boost":
        return 1.0, 0.0, state
    if schedule == "suppress":
        return 0.0, 1.0, state
    if schedule in ("increase-decrease", "decrease-increase-decrease"):
        switch = phase_split * total_steps
        if step <= switch:
            fade_out = 1.0 - step / switch
            return (fade_out if schedule == "increase-decrease" else 1.0 - fade_out), 0.0, state
        lower = max(0.0, 1.0 - (step - switch) / (total_steps - switch))
        return (0.0 if schedule == "increase-decrease" else 1.0), lower, state
    if schedule == "oscillatory-decay":
        if entropy is not None and math.isfinite(entropy):
            if state.get("entropy_init") is None:
                state["entropy_init"] = entropy
            tau_low, tau_high = od_thresholds(step, total_steps, state["entropy_init"], min_entropy_frac)
            if entropy <= tau_low:
                state["od_boost"] = True
            elif entropy > tau_high:
                state["od_boost"] = False
        return (1.0, 0.0, state) if state["od_boost"] else (0.0, 1.0, state)
    raise ValueError(f"unknown schedule {schedule!r}")


def entropy_region(adv, logp, entropy):
    """Entropy region of each token (int tensor): 1 (E1) A > 0 and −ℓ < H; 2 (E2) A > 0 and −ℓ ≥ H; 3 (E3) A < 0 and
    −ℓ < H; 4 (E4) A < 0 and −ℓ ≥ H; 0 where A = 0. E1 and E4 lower the entropy, E2 and E3 raise it."""
    likely = -logp < entropy
    region = torch.where(likely, 1, 2) + torch.where(adv < 0, 2, 0)
    return torch.where(adv == 0, 0, region)


def fec_token_loss(adv, ratio, r_min, r_max, dual_clip_c: float, preserve: tuple[float, float] | None = None):
    """Token loss with per-token bounds, all [b, R]: L = max(−A r, −A clip(r, r_min, r_max)), for A < 0 also
    L = min(L, −A c). With preserve = (β₁, β₂) (GPPO / CE-GPPO) a token beyond its bound gets L = −β r_bound A r/sg(r)
    (same value for β = 1, gradient −β r_bound A ∇ℓ instead of 0). Returns (loss, clipped_low, clipped_high, below,
    above): clipped_* where the gradient is cut to zero, below = A < 0 and r < r_min, above = A > 0 and r > r_max."""
    below = (adv < 0) & (ratio < r_min)
    above = (adv > 0) & (ratio > r_max)
    if preserve is None:
        loss = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, r_min, r_max))
        clipped_low = below
        clipped_high = above
    else:
        beta1, beta2 = preserve
        keep = ratio / ratio.detach()  # 1 in value, ∇ℓ in gradient
        loss = torch.where(
            below, -beta1 * r_min * keep * adv, torch.where(above, -beta2 * r_max * keep * adv, -adv * ratio)
        )
        clipped_low = below & (beta1 == 0)
        clipped_high = above & (beta2 == 0)
    if dual_clip_c > 0:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip_c), loss)
        clipped_low = clipped_low | ((adv < 0) & (ratio > dual_clip_c))
    return loss, clipped_low, clipped_high, below, above


def micro_batch_mean_weights(loss_mask, micro_batches: int, epochs: int, reduce_sum):
    """Per-token weights w [B, R] such that the mean, over every micro-batch of the step on every process, of
    Σ_mb w·x is the token mean of x over the loss tokens (and epochs): w = mask · M / (N · epochs), with M the
    micro-batches of all processes and N their loss tokens (the hook's `algo/` scalars are micro-batch means).
    Without any loss token (N = 0) the weights, like the token means, are NaN."""
    m, n = reduce_sum(torch.stack([torch.tensor(float(micro_batches), device=loss_mask.device), loss_mask.sum()]))
    return loss_mask * (m / (n * epochs))


def init_algorithm_state(args: Args) -> dict:
    """Per-run algorithm state; saved in checkpoints: the steps done, the last batch entropy, OD's H_init and s."""
    return {
        "step": 0,
        "last_entropy": None,
        "entropy_init": None,
        "od_boost": args.algo.od_start_boost,
        "upper_weight": 1.0,
        "lower_weight": 1.0,
    }


def algorithm_step_begin(state: dict, args: Args, batch: dict, reduce_sum) -> dict:
    """The schedule's weights for this step, and the token weights that turn micro-batch sums into token means."""
    a = args.algo
    o = args  # o: the optimisation flags
    total = args.total_steps
    upper, lower, new_state = schedule_bounds(
        state["step"], total, state["last_entropy"], state, a.schedule, a.phase_split, a.od_min_entropy_frac
    )
    state.update(new_state, upper_weight=upper, lower_weight=lower)
    rows = len(batch["adv"]) // o.num_minibatches
    micro = o.update_epochs * o.num_minibatches * math.ceil(rows / o.micro_batch_size)
    batch["algo_token_weight"] = micro_batch_mean_weights(batch["loss_mask"], micro, o.update_epochs, reduce_sum)
    metrics = {"algo/schedule_upper_weight": upper, "algo/schedule_lower_weight": lower}
    if a.schedule in ("increase-decrease", "decrease-increase-decrease"):
        metrics["algo/schedule_phase"] = 1.0 if state["step"] <= a.phase_split * total else 2.0
    if a.schedule == "oscillatory-decay":
        metrics["algo/schedule_od_boost"] = float(state["od_boost"])
        if state["entropy_init"] is not None:
            metrics["algo/schedule_od_tau_low"], metrics["algo/schedule_od_tau_high"] = od_thresholds(
                state["step"], total, state["entropy_init"], a.od_min_entropy_frac
            )
    return metrics


def policy_token_loss(mb: dict, current: dict, args: Args, state: dict):
    """Token loss [b, R] of one micro-batch with the bounds of this step's schedule, and the region diagnostics.
    `mb` holds [b, R] tensors: adv, logp_old, entropy_old, loss_mask, algo_token_weight; `logp` carries the gradient."""
    logp = current["logp"]  # [b, R], carries the gradient
    a = args.algo
    eps_low, eps_high = standard_thresholds(args)
    alpha_h, beta_h = blended_threshold(state["upper_weight"], a.alpha_high, a.beta_high, eps_high)
    alpha_l, beta_l = blended_threshold(state["lower_weight"], a.alpha_low, a.beta_low, eps_low)
    r_min, r_max = ratio_bounds(mb["logp_old"].exp(), alpha_h, beta_h, alpha_l, beta_l, a.threshold_prob)
    ratio = torch.exp((logp - mb["logp_old"]).clamp(-20, 20))
    loss, clipped_low, clipped_high, below, above = fec_token_loss(
        mb["adv"], ratio, r_min, r_max, args.dual_clip_c, (a.gp_beta1, a.gp_beta2) if a.gradient_preserving else None
    )
    weight = mb["algo_token_weight"]
    beyond = below | above
    region = entropy_region(mb["adv"], mb["logp_old"], mb["entropy_old"])
    info = {
        "ratio": ratio.detach(),
        "clipped_low": clipped_low,
        "clipped_high": clipped_high,
        "algo/ratio_min_mean": (r_min * weight).sum(),
        "algo/ratio_max_mean": (r_max * weight).sum(),
        # bounds more than 1% away from standard clipping's 1 − ε_low, 1 + ε_high (A > 0 meets r_max, A < 0 r_min)
        "changed": torch.where(
            mb["adv"] > 0,
            (r_max - 1 - eps_high).abs() > 0.01 * (1 + eps_high),
            ((r_min - 1 + eps_low).abs() > 0.01 * (1 - eps_low)) & (mb["adv"] < 0),
        ),
    }
    for k in REGIONS:
        info[f"algo/region_E{k}_frac"] = (weight * (region == k)).sum()
        info[f"algo/region_E{k}_clip_frac"] = (weight * ((region == k) & beyond)).sum()
    return loss, info


def algorithm_step_end(state: dict, args: Args, metrics: dict) -> None:
    """After the update: count the step and keep its batch entropy for OD's next decision."""
    state["step"] += 1
    state["last_entropy"] = metrics["entropy/mean"]


# ─── SHARED: token statistics and loss ─────────────────────────────────────────────────────────
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
    """`fn`, or its torch.compile'd version (compiled once per function)."""
    if not use_compile:
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn)
    return _compiled[fn]


class _TokenStats(torch.autograd.Function):
    """ℓ, H (differentiable) and G (not) from logits [N, V] in row chunks; the backward recomputes the softmax
    instead of keeping [N, V] probabilities for it."""

    @staticmethod
    def forward(ctx, logits, tokens, chunk_size, use_compile):
        stats = _maybe_compiled(_chunk_stats, use_compile)
        ctx.chunk_size = chunk_size
        ctx.use_compile = use_compile
        with torch.autocast(logits.device.type, enabled=False):  # full precision even inside autocast
            chunks = [stats(z, t) for z, t in zip(logits.split(chunk_size), tokens.split(chunk_size))]
        logp, entropy, g, lse = (torch.cat(parts) for parts in zip(*chunks))
        ctx.save_for_backward(logits, tokens, lse, entropy)
        ctx.mark_non_differentiable(g)
        return logp, entropy, g

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, _grad_g):
        logits, tokens, lse, entropy = ctx.saved_tensors  # grads in the outputs' dtype, zeros for an unused one
        chunk_grad = _maybe_compiled(_chunk_grad, ctx.use_compile)
        grad = torch.empty_like(logits)
        with torch.autocast(logits.device.type, enabled=False):
            for start in range(0, logits.shape[0], ctx.chunk_size):
                rows = slice(start, start + ctx.chunk_size)
                inputs = (logits, tokens, lse, entropy, grad_logp, grad_entropy)
                grad[rows] = chunk_grad(*(x[rows] for x in inputs))
        return grad, None, None, None


def token_stats(logits: torch.Tensor, tokens: torch.Tensor, chunk_size: int = 1024, compile: bool | None = None):
    """(logp, entropy, g) [N] from logits [N, V] / T and tokens [N]; g carries no gradient; compiled on CUDA."""
    use_compile = logits.is_cuda if compile is None else compile
    return _TokenStats.apply(logits, tokens, chunk_size, use_compile)


@torch.no_grad()
def g3_of_logits(logits, chunk_size: int = 1024):
    """G₃ = Σ_k p_k³(log p_k + H) of each row of logits [N, V] (fp32 at least), for methods that ask (`needs_g3`)."""
    out = []
    for z in logits.detach().to(torch.promote_types(logits.dtype, torch.float32)).split(chunk_size):
        z = z.log_softmax(-1)
        p = z.exp()
        p3 = p.square() * p
        out.append((p3 * z).sum(-1) - (p * z).sum(-1) * p3.sum(-1))
    return torch.cat(out)


def entropy_change(coef, logp, entropy, g):
    """ΔH_t/η = −coef_t [π_t(ℓ_t + H_t) − G_t], coef_t = −∂L/∂ℓ_t (A_t r_t for plain PG): arXiv 2505.22617, Lemma 1."""
    return -coef * (logp.exp() * (logp + entropy) - g)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """(R − mean_g) / (std_g + 1e-6) of rewards [n_groups · G] (`batch`: batch std; `none`: no division)."""
    if group_size == 1:
        return rewards.float().clone()
    grouped = rewards.float().view(-1, group_size)  # [n_groups, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "none":  # Dr.GRPO
        return centred.reshape(-1)
    std = grouped.std(dim=1, keepdim=True) if scale == "group" else rewards.float().std()
    return (centred / (std + 1e-6)).reshape(-1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO overlong reward shaping (arXiv 2503.14476 §3.4): 0 up to max_len − buffer, then linear to −factor."""
    penalty = torch.clamp(-(lengths.float() - (max_len - buffer)) / max(buffer, 1) * factor, max=0.0)
    return penalty * (buffer > 0)


def clipped_surrogate(adv, ratio, clip_low: float, clip_high: float, dual_clip_c: float):
    """Dual-clip PPO token loss [B, T] and where its gradient is clipped away (module docstring, step 3)."""
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    if dual_clip_c > 0:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip_c), loss)
    below = ratio < 1.0 - clip_low
    beyond_dual = (ratio > dual_clip_c) & (dual_clip_c > 0)
    clipped_low = (adv < 0) & (below | beyond_dual)
    clipped_high = (adv > 0) & (ratio > 1.0 + clip_high)
    return loss, clipped_low, clipped_high


def minibatch_totals(loss_mask: torch.Tensor, reduce_sum) -> dict:
    """Loss tokens N and sequences B with at least one loss token, of a minibatch [b, R] on all processes."""
    counts = torch.stack([loss_mask.sum(), (loss_mask.sum(-1) > 0).sum().to(loss_mask.dtype)])
    tokens, seqs = reduce_sum(counts)
    return {"tokens": tokens.clamp(min=1.0), "seqs": seqs.clamp(min=1.0)}


def aggregation_weights(loss_mask, mode: str, totals: dict, max_len: float) -> torch.Tensor:
    """Coefficient c_t [b, R] of each token's loss in the minibatch loss: 1/N, 1/B, 1/(|o_i| B) or 1/(B·L_max)."""
    if mode == "token-mean":
        divisor = totals["tokens"]
    elif mode == "seq-mean-token-sum":
        divisor = totals["seqs"]
    elif mode == "seq-mean-token-mean":
        divisor = loss_mask.sum(-1, keepdim=True).clamp(min=1.0) * totals["seqs"]  # [b, 1]
    else:  # seq-mean-token-sum-norm (Dr.GRPO)
        divisor = totals["seqs"] * max_len
    return loss_mask / divisor


def compute_loss(mb: dict, current: dict, args, algo_state: dict, totals: dict):
    """The minibatch loss Σ_t c_t · L_t of one micro-batch's tokens, and `info` (what the metrics log):
        L_t = method's token loss × min(π_old/π_rollout, C)  + β·KL_k3(π‖π_ref)  − α·H_t,
    c_t = `aggregation_weights` (over the minibatch on all processes). update_policy undoes the framework's scaling."""
    token_loss, info = policy_token_loss(mb, current, args, algo_state)
    if args.rollout_is_cap:  # truncated importance sampling against rollout/trainer mismatch
        raw = torch.exp((mb["logp_old"] - mb["rollout_logp"]).clamp(max=20))
        info["is_weight"] = raw.clamp(max=args.rollout_is_cap)
        info["is_capped"] = raw > args.rollout_is_cap
        token_loss = token_loss * info["is_weight"]
    if args.kl_coef > 0:  # k3 estimator of KL(π‖π_ref): π_ref/π − log(π_ref/π) − 1 (arXiv 2402.03300, Eq. 4)
        log_ratio = (mb["logp_ref"] - current["logp"]).clamp(-20, 20)
        info["kl_ref"] = log_ratio.exp() - log_ratio - 1.0
        token_loss = token_loss + args.kl_coef * info["kl_ref"]
    if args.ent_coef > 0:
        token_loss = token_loss - args.ent_coef * current["entropy"]
    if "ent_coef" in mb:  # --adaptive-ent-coef: this step's α, on steps where the bonus applies
        token_loss = token_loss - mb["ent_coef"] * current["entropy"]
    max_len = args.loss_scale_factor or args.max_new_tokens
    coef = aggregation_weights(mb["loss_mask"], args.loss_agg_mode, totals, max_len)
    info["token_loss"] = token_loss.detach()
    return (coef * token_loss).sum(), info


# ─── SHARED: update ────────────────────────────────────────────────────────────────────────────
def micro_batch_stats(model, batch: dict, rows, args, with_g3: bool = False, prompt_once: bool = True) -> dict:
    """logp, entropy, g (and g3 when asked) [b, R] of `rows` of the batch, from the logits / T that predict their
    response tokens.

    The forward sees only the columns the rows need. Example: a batch with R = 5 response columns whose rows here
    have at most 2 response tokens: width = 2, the left padding that every row has is cut, the last prompt position
    and response position 1 predict response tokens 1 and 2, and the [b, 2] results are padded with 0 to [b, 5]."""
    mask = batch["response_mask"][rows]  # [b, R]
    width = int(mask.sum(0).nonzero().max()) + 1 if mask.any() else 1  # trimmed response width
    full_width = mask.shape[1]
    prompt_width = batch["input_ids"].shape[1] - full_width
    attention = batch["attention_mask"][rows][:, : prompt_width + width]
    first = int(attention.sum(0).nonzero().min())  # the first column any of these rows attends to
    input_ids = batch["input_ids"][rows][:, first : attention.shape[1]]  # [b, P' + width]
    attention = attention[:, first:]
    logits = response_logits(model, input_ids, attention, width, prompt_once).div_(args.temperature)  # [b, width, V]
    logits = logits.reshape(-1, logits.shape[-1])  # [b · width, V]
    tokens = batch["response_ids"][rows][:, :width].reshape(-1)  # [b · width]
    logp, entropy, g = token_stats(logits, tokens, args.entropy_chunk_size)
    stats = {"logp": logp, "entropy": entropy, "g": g}
    if with_g3:
        stats["g3"] = g3_of_logits(logits, args.entropy_chunk_size).to(logp.dtype)
    for name, values in stats.items():  # [b · width] -> [b, R]
        stats[name] = torch.nn.functional.pad(values.view(len(input_ids), width), (0, full_width - width))
    return stats


def response_logits(model, input_ids, attention, width: int, prompt_once: bool = True) -> torch.Tensor:
    """The logits [b, width, V] that predict the last `width` tokens (the response) of each row of input_ids
    [b, P + width], left padded; the last token predicts nothing and is not fed. prompt_once: each distinct prompt
    but its last token runs once (a group's n rows share it; prompts are 45% of the testbed's tokens) and its KV
    cache is copied to its rows, on which the rest of each row runs; gradients flow back through the copies. The
    values are those of one forward per row (prompt_once False) up to float rounding."""
    shared = input_ids.shape[1] - width - 1 if prompt_once else 0  # the columns run once per distinct prompt
    cache = prompt_cache(model, input_ids[:, :shared], attention[:, :shared])[0] if shared > 0 else None
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared:-1]  # positions follow the left padding
    inputs = {"attention_mask": attention[:, :-1], "position_ids": positions, "past_key_values": cache}
    return model(input_ids[:, shared:-1], logits_to_keep=width, use_cache=cache is not None, **inputs).logits


def prompt_cache(model, input_ids, attention) -> tuple:
    """One forward of each distinct row of input_ids [b, P] (with its attention mask): its KV cache, copied to every
    row with that prompt, and the logits of its last position [b, V] (the only ones computed)."""
    distinct, row_prompt = torch.unique(torch.cat([input_ids, attention], dim=1), dim=0, return_inverse=True)
    prompt_ids, prompt_attention = distinct.split(input_ids.shape[1], dim=1)  # [U, P] each
    positions = (prompt_attention.cumsum(-1) - 1).clamp(min=0)  # positions follow the left padding, as in generate
    inputs = {"attention_mask": prompt_attention, "position_ids": positions, "use_cache": True}
    output = model(input_ids=prompt_ids, logits_to_keep=1, **inputs)
    output.past_key_values.batch_select_indices(row_prompt)  # [U, heads, P, d] -> [b, heads, P, d] in every layer
    return output.past_key_values, output.logits[row_prompt, -1]


@torch.no_grad()
def stats_pass(model, batch: dict, args, accelerator) -> dict:
    """No-grad logp, entropy, g [B, R] of the whole batch, in micro-batches."""
    model.eval()
    with accelerator.autocast():
        rows = torch.arange(len(batch["adv"]), device=batch["adv"].device).split(args.micro_batch_size)
        parts = [micro_batch_stats(model, batch, r, args, prompt_once=args.prompt_once) for r in rows]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def update_policy(
    model, optimizer, batch, args, algo_state, accelerator, metrics, step: int, fill_old: bool, reduce_sum
):
    """`update_epochs` × `num_minibatches` optimizer steps on the rollout batch; returns how many were skipped
    (non-finite gradients). `fill_old`: no old-policy pass ran, so the update's forward provides ℓ_old, H_old, G_old."""
    world = accelerator.num_processes
    n_rows = len(batch["adv"])
    skipped_updates = 0
    prompt_once = args.prompt_once and not args.gradient_checkpointing  # checkpointed layers drop the KV cache
    model.train()
    for epoch in range(args.update_epochs):
        shuffle = torch.Generator().manual_seed(args.seed * 31 + step * 7 + epoch)
        order = torch.randperm(n_rows, generator=shuffle).to(batch["adv"].device)
        for k, mb_rows in enumerate(order.split(n_rows // args.num_minibatches)):
            totals = minibatch_totals(batch["loss_mask"][mb_rows], reduce_sum)
            accelerator.step = 0  # accumulation boundaries per minibatch (accelerate saves its counter in checkpoints)
            for rows in micro_batches(batch, mb_rows, args):
                # accelerate accumulates: DDP / FSDP all-reduce only at the last micro-batch; DeepSpeed's engine clips
                # and steps there
                with accelerator.accumulate(model), accelerator.autocast():
                    current = micro_batch_stats(model, batch, rows, args, needs_g3(args), prompt_once)
                    if fill_old:  # no old-policy pass: the batch's old-policy ℓ, H, G are this forward's
                        batch["logp_old"][rows] = current["logp"].detach()
                        batch["entropy_old"][rows] = current["entropy"].detach()
                        batch["g_old"][rows] = current["g"]
                    mb = {key: value[rows] for key, value in batch.items()}
                    if epoch == 0 and k == 0:  # the policy that sampled the batch: r ≡ 1 exactly
                        mb["logp_old"] = current["logp"].detach()
                    grad_logp = []
                    current["logp"].register_hook(grad_logp.append)  # ∂L/∂ℓ_t of the loss below, for the flows
                    loss, info = compute_loss(mb, current, args, algo_state, totals)
                    # The loss is already the minibatch mean over all processes (c_t divides by their N or B).
                    # Undo the framework's scaling: DDP averages gradients over the `world` processes, and
                    # accelerate divides each micro-batch's loss by gradient_accumulation_steps.
                    accelerator.backward(loss * world * accelerator.gradient_accumulation_steps)
                log_micro_batch(metrics, mb, current, info, grad_logp[0], totals, world)
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm) or 0.0)
            if math.isfinite(grad_norm):  # never write NaN into the weights (DeepSpeed: the engine already stepped)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            skipped_updates += not math.isfinite(grad_norm)
            metrics.add("train/grad_norm", grad_norm if math.isfinite(grad_norm) else 0.0)
    log_sampling_policy(metrics, batch, reduce_sum, accelerator)
    return skipped_updates


def micro_batches(batch: dict, rows: torch.Tensor, args) -> tuple:
    """The minibatch's `rows` in micro-batches of --micro-batch-size. by-length: sorted by response length first,
    so that each micro-batch is cut to its own longest response (micro_batch_stats) and pads less; the minibatch
    loss and its gradient are the same sums, taken in another order. Example: responses of 3, 40, 5, 38 tokens in
    micro-batches of 2: (3, 5) and (38, 40), 2 × 5 + 2 × 40 = 90 positions instead of 2 × 40 + 2 × 38 = 156."""
    if args.micro_batch_order == "by-length" and len(rows) > args.micro_batch_size:
        lengths = batch["response_mask"][rows].sum(-1)
        rows = rows[torch.argsort(lengths, stable=True)]
    return rows.split(args.micro_batch_size)


def log_micro_batch(metrics, mb: dict, current: dict, info: dict, grad_logp, totals: dict, world: int) -> None:
    """Means over the micro-batch's loss tokens: the entropy flows of the update, losses, ratios, clipping; and the
    method's `algo/` scalars (mean over micro-batches, or max / min)."""
    logp = current["logp"].detach()
    # the method's action on each token against GRPO's loss: |w_t − 1| of its loss weight (info["weight"]; 1 where
    # absent) and whether it acted on the token: that weight off by more than 1%, or info["changed"] (a clip bound
    # moved by more than 1%, or a penalty term of its own)
    deviation = (info["weight"].detach() - 1).abs() if "weight" in info else torch.zeros_like(logp)
    changed = (deviation > 0.01) | info.get("changed", torch.zeros_like(logp, dtype=torch.bool))
    # ΔH_t / η, exact first order, with −∂L/∂ℓ_t scaled so that token-mean reads A_t r_t w_t
    delta = entropy_change(-grad_logp * totals["tokens"] / world, logp, current["entropy"].detach(), current["g"])
    delta = delta * mb["loss_mask"]
    token_values = [
        ("entropy/flow_increase", delta.clamp(min=0)),
        ("entropy/flow_decrease", (-delta).clamp(min=0)),
        ("entropy/flow_net", delta),
        ("entropy/increase_frac", delta > 0),
        ("train/policy_loss", info["token_loss"]),
        ("train/ppo_kl", mb["logp_old"] - logp),
        ("train/clip_frac_low", info["clipped_low"]),
        ("train/clip_frac_high", info["clipped_high"]),
        ("train/kl_ref", info.get("kl_ref")),
        ("rollout/is_weight_mean", info.get("is_weight")),
        ("rollout/is_capped_frac", info.get("is_capped")),
        ("action/changed_frac", changed),
        ("action/weight_dev_mean", deviation),
    ]
    for name, values in token_values:
        if values is not None:  # boolean values are fractions (the mask is float)
            metrics.mean(name, values.detach(), mb["loss_mask"])
    for name, value in info.items():
        if not name.startswith("algo/"):
            continue
        if name.endswith("_max"):
            metrics.max(name, value)
        elif name.endswith("_min"):
            metrics.min(name, value)
        else:
            metrics.add(name, value)


# Forking positions: the batch's highest-entropy tokens, where a response chooses its way (arXiv 2506.01939 finds
# that about 20% of the tokens carry the choices). The training scripts log the entropy there and elsewhere
# (`entropy/forking_mean`, `entropy/nonforking_mean`; docs/metrics.md).
FORKING_PERCENT = 20  # forking positions: the 20% highest-entropy loss tokens of the batch


def forking_entropy(entropy: torch.Tensor, percent: int = FORKING_PERCENT) -> tuple[float, float]:
    """(mean of the k = ⌈percent/100 · N⌉ largest of the N token entropies, mean of the other N − k); NaN for an
    empty set. Ties: a mean of the k largest values does not depend on which of equal values are counted.

    Example: entropies [0.9, 0.1, 0.5, 0, 0.3, 0, 0, 0.2, 0, 0.1] (N = 10): k = 2, forking (0.9 + 0.5) / 2 = 0.7,
    the rest (0.3 + 0.2 + 0.1 + 0.1) / 8 = 0.0875."""
    ranked = entropy.detach().double().flatten().sort(descending=True).values
    k = -(-len(ranked) * percent // 100)  # integer ceiling: 0.2 · N in floats can land just above an integer
    forking = ranked[:k].mean().item() if k else float("nan")
    rest = ranked[k:].mean().item() if len(ranked) > k else float("nan")
    return forking, rest


def gather_values(values: torch.Tensor, accelerator) -> torch.Tensor:
    """The 1-D `values` of every process, concatenated in process order (each process may hold a different number)."""
    if accelerator.num_processes == 1:
        return values
    sizes = accelerator.gather(torch.tensor([len(values)], device=values.device)).tolist()
    padded = torch.nn.functional.pad(values, (0, max(sizes) - len(values)))
    rows = accelerator.gather(padded[None])  # [world, max size]
    return torch.cat([row[:size] for row, size in zip(rows, sizes)])


def log_sampling_policy(metrics, batch: dict, reduce_sum, accelerator) -> None:
    """The policy that sampled the batch, over all its response tokens: entropy, rollout/trainer log-prob gap,
    Cov(A, ℓ); over the loss tokens of all processes: the entropy at the forking positions and at the rest."""
    mask = batch["response_mask"]
    diff = (batch["rollout_logp"] - batch["logp_old"]).abs() * mask
    metrics.mean("rollout/logp_diff_mean", diff, mask)
    metrics.max("rollout/logp_diff_max", diff.max())
    metrics.mean("entropy/mean", batch["entropy_old"], mask)
    forking, rest = forking_entropy(gather_values(batch["entropy_old"][batch["loss_mask"] > 0], accelerator))
    metrics.add("entropy/forking_mean", forking)  # the same value on every process: their mean is it
    metrics.add("entropy/nonforking_mean", rest)
    sums = torch.stack([(batch["adv"] * mask).sum(), (batch["logp_old"] * mask).sum(), mask.sum()])
    adv_sum, logp_sum, n = reduce_sum(sums)
    covariance = (batch["adv"] - adv_sum / n) * (batch["logp_old"] - logp_sum / n)
    metrics.mean("entropy/cov_adv_logp", covariance, mask)


def learning_rate(args: Args, step: int) -> float:
    """The rate of rollout step `step` (1-based): linear warm-up, then constant or cosine decay to 0."""
    if step <= args.lr_warmup_steps:
        return args.learning_rate * step / args.lr_warmup_steps
    progress = min(1.0, (step - 1 - args.lr_warmup_steps) / max(1, args.total_steps - args.lr_warmup_steps))
    if args.lr_schedule == "cosine":
        return args.learning_rate * (0.5 * (1 + math.cos(math.pi * progress)))
    return args.learning_rate


# ─── SHARED: rollout ───────────────────────────────────────────────────────────────────────────
# ── keyed sampling noise (--sampling-noise keyed) ──
# The token at position t of sample j of the prompt at place i of the data order, at rollout step s, is the Gumbel-max
# draw argmax_v (z_v / T + g_v), g_v = −log(−log u_v): exactly a draw from softmax(z / T). Each u_v is a hash of the
# key (seed, domain, s, i, j, t) and of v, computed in int64 tensor ops, so it depends on the key alone: not on the
# other rows of the batch, their number or their order. Two runs with the same seed therefore draw the same token
# wherever their policies agree, and differ only where the policies do.
#
# The hash: two 32-bit lanes, each absorbing one 32-bit word at a time through a bijective xor-shift-multiply mixer
# (lane A: murmur3's finaliser; lane B: "lowbias32" by C. Wellons), lane B also absorbing lane A, so that two keys
# collide only if both 32-bit lanes do; the vocabulary index is absorbed last, and 52 bits of the two lanes give
# u = (k + 1/2) / 2^52, exact in fp64 and strictly inside (0, 1). Products are taken in 16-bit halves, so no int64
# product overflows. On vLLM, whose sampler cannot take this noise, each sample is its own request seeded with a
# 63-bit hash of its key less the position; vLLM's per-request generator then supplies the noise token by token.
MASK32 = 0xFFFFFFFF
LANE_A = (0x85EBCA6B, 0xC2B2AE35, 13, 0x9E3779B9)  # murmur3 fmix32: two multipliers, the middle shift; initial state
LANE_B = (0x7FEB352D, 0x846CA68B, 15, 0x632BE5AB)  # lowbias32; initial state
NOISE_DOMAINS = {"train": 0, "eval": 1}  # rollouts and evaluation draw from disjoint keys


@dataclass
class NoiseKey:
    """The key of one `generate` call's noise, less each row's sample index and position (added per row)."""

    seed: int  # the run's --seed
    step: int  # the rollout step (evaluation: the step evaluated after)
    prompt_index: list[int]  # of each prompt of the call, in the run's data order (not its place in this call)
    domain: int = NOISE_DOMAINS["train"]  # training rollouts or evaluation


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2^32 for x in [0, 2^32) (int64), in 16-bit halves so that no int64 product overflows."""
    low = (x & 0xFFFF) * c
    high = (((x >> 16) * c) & 0xFFFF) << 16
    return (low + high) & MASK32


def _mix32(x: torch.Tensor, lane: tuple) -> torch.Tensor:
    """A bijective 32-bit mixer (xor-shift-multiply): every input bit flips each output bit with probability ~1/2."""
    first, second, shift, _ = lane
    x = x ^ (x >> 16)
    x = _mul32(x, first)
    x = x ^ (x >> shift)
    x = _mul32(x, second)
    return x ^ (x >> 16)


def key_words(key: NoiseKey, rows, n: int, position: int | None = None, device="cpu") -> torch.Tensor:
    """[len(rows), W] int64 words in [0, 2^32) of the key of each row of a call (row r: prompt r // n, sample r % n);
    `rows`: a range or a tensor of row indices.

    Example: NoiseKey(seed=1, step=3, prompt_index=[40, 41]), n = 2, rows 1-2, position 5 ->
        [[1, 0, 0, 3, 40, 1, 5],     seed (low, high 32 bits), domain, step, prompt index, sample, position
         [1, 0, 0, 3, 41, 0, 5]]"""
    r = torch.as_tensor(rows, dtype=torch.int64).cpu()
    prompt = torch.tensor(key.prompt_index, dtype=torch.int64)[r // n] & MASK32
    fixed = [key.seed & MASK32, (key.seed >> 32) & MASK32, key.domain, key.step & MASK32]
    fixed_words = torch.tensor(fixed, dtype=torch.int64).expand(len(r), len(fixed))
    words = [fixed_words, prompt[:, None], (r % n)[:, None]]
    if position is not None:
        words.append(torch.full((len(r), 1), position, dtype=torch.int64))
    return torch.cat(words, dim=1).to(device)


def _absorb(words: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two lanes' states [b] after absorbing each row's words [b, W], from `state` (the states after the words
    before these) or the initial states."""
    a = torch.full(words.shape[:1], LANE_A[3], dtype=torch.int64, device=words.device) if state is None else state[0]
    b = torch.full(words.shape[:1], LANE_B[3], dtype=torch.int64, device=words.device) if state is None else state[1]
    for word in words.unbind(1):
        a = _mix32(a ^ word, LANE_A)
        b = _mix32(b ^ word ^ a, LANE_B)
    return a, b


def keyed_gumbel(words: torch.Tensor, vocab_size: int, state: tuple | None = None) -> torch.Tensor:
    """Gumbel noise [b, V] (fp64) of each row's key words [b, W] and vocabulary index: a function of (key, v) only.
    `state`: the lanes after the key's first words (`_absorb`), when `words` holds only the rest."""
    a, b = _absorb(words, state)
    v = torch.arange(vocab_size, dtype=torch.int64, device=words.device)
    a = _mix32(a[:, None] ^ v, LANE_A)
    b = _mix32(b[:, None] ^ a, LANE_B)
    k = (a << 20) | (b >> 12)  # 52 random bits: k + 1/2 is exact in fp64, so 0 < u < 1
    u = (k.double() + 0.5) * 2.0**-52
    return -torch.log(-torch.log(u))


def keyed_seeds(words: torch.Tensor) -> list[int]:
    """A 63-bit generator seed per row of key words [b, W]."""
    a, b = _absorb(words)
    return ((a << 31) | (b >> 1)).tolist()


def keyed_vllm_params(params, key: NoiseKey, n: int) -> list:
    """One vLLM SamplingParams per sample (the prompts repeated n times, n = 1 each), seeded by the sample's key less
    the position: as vLLM itself clones a request's params for its n samples (`ParentRequest`), with the seed set."""
    seeds = keyed_seeds(key_words(key, range(len(key.prompt_index) * n), n))
    clones = [copy.copy(params) for _ in seeds]
    for clone, seed in zip(clones, seeds):
        clone.n = 1
        clone.seed = seed
    return clones


def hf_generate(
    model, prompt_ids, n, temperature, top_p, max_new_tokens, stop_ids, pad_id, batch_size, key=None
) -> list[dict]:
    """n samples per prompt (greedy at temperature 0), `batch_size` rows at a time; each: response_ids (through the
    first stop token), rollout_logp (log π_T of each token), truncated (no stop token within max_new_tokens). In
    inference mode (decoding ~5% faster, the same tokens) unless sharded: ZeRO-3 / FSDP reuse gathered parameters."""
    if key is not None and top_p != 1 and temperature != 0:
        raise ValueError("keyed sampling noise needs top_p = 1 on the HF engine")
    rows = [ids for ids in prompt_ids for _ in range(n)]
    samples = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        settings = (temperature, top_p, max_new_tokens, stop_ids, pad_id)
        with torch.inference_mode(not is_sharded(model)), torch.no_grad():  # inference_mode(False) enables grad
            tokens, logps, lengths, stopped = decode(model, chunk, *settings, key=key, n=n, first_row=start)
        for i in range(len(chunk)):
            length = int(lengths[i])
            response = {"response_ids": tokens[i, :length].tolist(), "rollout_logp": logps[i, :length].tolist()}
            samples.append({**response, "truncated": not bool(stopped[i])})
    return samples


def decode(model, rows, temperature, top_p, max_new_tokens, stop_ids, pad_id, key=None, n=1, first_row=0):
    """Samples each row (prompt ids) to its first stop token or `max_new_tokens` as `model.generate` does (same
    forward inputs and draws, no generation_config), token for token, but a stopped row leaves the batch and its KV
    cache (a third less time on the testbed; the log-probs may round differently in the last bits), and rows with
    the same prompt share its forward (a group's n samples: 1/n of the prompts' cost; the same values). Sharded models
    on several processes keep all rows, as generate's synced_gpus. Noise: torch's stream (multinomial draws an
    exponential per row and vocabulary entry: stopped rows keep a placeholder, so the stream advances as in
    generate) or a NoiseKey's argmax(z / T + g(key)), row first_row + i of the call. -> tokens, log-probs [b, T],
    lengths [b], stopped [b]."""
    device = model.device
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)  # left padded
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    b = len(rows)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    synced = world > 1 and is_sharded(model)
    stop = torch.tensor(stop_ids, device=device)
    top_p_warper = TopPLogitsWarper(top_p) if top_p < 1 and temperature > 0 else None
    live = torch.arange(b, device=device)  # the batch's rows that the model still sees, in its order
    decoding = torch.ones(b, dtype=torch.bool, device=device)  # not stopped yet [b]
    tokens = torch.full((b, max_new_tokens), pad_id, device=device)
    logps = torch.zeros(b, max_new_tokens, device=device)
    lengths = torch.full((b,), max_new_tokens, device=device)
    prefix = _absorb(key_words(key, range(first_row, first_row + b), n, None, device)) if key is not None else None
    cache, logits = prompt_cache(model, input_ids, attention)  # [b, V]: the first token's
    token = None  # [live]: the token drawn last
    for t in range(max_new_tokens):
        if t > 0:
            inputs = {"attention_mask": attention, "position_ids": attention.sum(-1, keepdim=True) - 1}
            logits = model(input_ids=token[:, None], past_key_values=cache, logits_to_keep=1, **inputs).logits[:, -1]
        scores = logits.float() / (temperature or 1.0)  # [live, V]
        logp = torch.log_softmax(scores, dim=-1)  # log π_T, recorded for the sampled tokens
        if decoding.any():
            token = draw(scores, live, b, t, temperature, top_p_warper, prefix)
        else:  # synced: this process is done and only joins the others' forwards (generate draws nothing either)
            token = torch.full_like(live, pad_id)
        writing = decoding[live]  # [live]: the rows whose token counts
        token = torch.where(writing, token, pad_id)
        tokens[live[writing], t] = token[writing]
        logps[live[writing], t] = logp.gather(1, token[:, None]).squeeze(1)[writing]
        stops = writing & torch.isin(token, stop)
        lengths[live[stops]] = t + 1
        decoding[live[stops]] = False
        still_decoding = decoding.any().int()
        if synced:  # a sharded forward is collective: every process decodes until all are done
            torch.distributed.all_reduce(still_decoding, op=torch.distributed.ReduceOp.MAX)
        if not still_decoding:
            break
        if not synced and not decoding[live].all():  # the stopped rows leave the batch and the cache
            keep = decoding[live].nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, attention, token = live[keep], attention[keep], token[keep]
        attention = torch.cat([attention, attention.new_ones(len(attention), 1)], dim=1)
    return tokens.cpu(), logps.cpu(), lengths.cpu(), ~decoding.cpu()


def is_sharded(model) -> bool:  # accelerate's FSDP2 (fully_shard) makes an FSDPModule, which transformers misses
    return is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model) or isinstance(model, FSDPModule)


def draw(scores, live, b: int, t: int, temperature: float, top_p_warper=None, key_state=None) -> torch.Tensor:
    """The next token [live] of each row still decoding, from its scores z / T [live, V]: the argmax at T = 0; with
    keyed noise (`key_state`: the lanes after the key less the position) argmax(z / T + g(key, position t)); else
    torch.multinomial over all b rows of the chunk, the stopped ones a placeholder, so that torch's stream advances
    as in generate (after top-p when `top_p_warper`)."""
    if temperature == 0:
        return scores.argmax(-1)
    if key_state is not None:
        position = live.new_full((len(live), 1), t)
        noise = keyed_gumbel(position, scores.shape[-1], (key_state[0][live], key_state[1][live]))
        return (scores.double() + noise).argmax(-1)
    scores = top_p_warper(None, scores) if top_p_warper else scores
    probs = torch.zeros(b, scores.shape[-1], device=scores.device)
    probs[:, 0] = 1.0  # the stopped rows' placeholder
    probs[live] = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1).squeeze(1)[live]


# ── GPU only: vLLM engine (colocated, one engine per process, tensor parallel 1; written against vLLM 0.33) ──
def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def vllm_generate(llm, prompt_ids, n, temperature, top_p, max_new_tokens, stop_ids, seed=None) -> list[dict]:
    """The dicts of `hf_generate` from vLLM: unbiased sampling, the sampled token's log-prob after the temperature
    (logprobs=0 with logprobs_mode=processed_logprobs); any finish_reason but "stop" ("length", "abort") is
    truncated. A NoiseKey `seed`: one request per sample, seeded by its key (keyed_vllm_params)."""
    from vllm import SamplingParams

    keyed = isinstance(seed, NoiseKey) and temperature > 0
    params = SamplingParams(
        n=1 if keyed else n,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        min_p=0.0,
        repetition_penalty=1.0,
        seed=None if isinstance(seed, NoiseKey) else seed,
        max_tokens=max_new_tokens,
        logprobs=0,
        stop_token_ids=list(stop_ids),
        skip_special_tokens=True,
    )
    requests = [{"prompt_token_ids": ids} for ids in prompt_ids for _ in range(n if keyed else 1)]
    outputs = llm.generate(requests, keyed_vllm_params(params, seed, n) if keyed else params, use_tqdm=False)
    samples = []
    for request in outputs:
        for c in sorted(request.outputs, key=lambda c: getattr(c, "index", 0)):
            logps = [c.logprobs[t][token].logprob for t, token in enumerate(c.token_ids)]
            samples.append(
                {"response_ids": list(c.token_ids), "truncated": c.finish_reason != "stop", "rollout_logp": logps}
            )
    return samples


def build_vllm_engine(
    model: str,
    seed: int,
    memory: float,
    max_model_len: int | None,
    sleep_mode=False,
    accelerator=None,
    dtype="bfloat16",
):
    """An in-process engine. With an `accelerator` (training) every process builds its own, at the same point
    (vLLM creates process groups collectively) and before any optimizer state (it checks free memory at start-up)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: weights reachable
    extra = {}
    if accelerator is not None:
        os.environ.setdefault("RANK", str(accelerator.process_index))
        os.environ.setdefault("LOCAL_RANK", str(accelerator.local_process_index))
        os.environ.setdefault("WORLD_SIZE", str(accelerator.num_processes))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        extra = {
            "distributed_executor_backend": "external_launcher",
            "enable_sleep_mode": sleep_mode,
            "max_num_batched_tokens": max(4096, max_model_len),
        }
    from vllm import LLM  # after the environment above

    llm = LLM(
        model=model,
        tensor_parallel_size=1,
        seed=seed,
        gpu_memory_utilization=memory,
        dtype=dtype,
        max_model_len=max_model_len,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
        **extra,
    )
    if sleep_mode:
        llm.sleep(level=1)  # level 1 keeps the weights (on CPU), so a wake-up is always valid
    return llm


def start_vllm(args, model_path: str, problems: list[dict], accelerator):
    """This process's engine, its context as long as the run needs (the longest prompt + max_new_tokens) and the model
    allows (max_position_embeddings): vLLM refuses a longer one at start-up."""
    allowed = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    needed = max(len(p["prompt_ids"]) for p in problems) + args.max_new_tokens
    length = args.vllm_max_model_len or (min(needed, allowed) if allowed else needed)
    if allowed and length > allowed:
        raise UsageError(
            f"--vllm-max-model-len {length}: the model allows {allowed} positions (max_position_embeddings)"
        )
    if length < needed:
        print(f"warning: vLLM context {length} < the longest prompt + --max-new-tokens ({needed})", file=sys.stderr)
    seed = args.seed + accelerator.process_index
    memory = args.vllm_gpu_memory_utilization
    return build_vllm_engine(model_path, seed, memory, length, args.vllm_sleep_mode, accelerator)


def full_parameter_chunks(model, accelerator):
    """(HF name, bf16 tensor) lists, a decoder layer at a time, gathered (ZeRO-3, FSDP2) only while held; no tied
    `lm_head.weight` (vLLM rejects it)."""
    unwrapped = accelerator.unwrap_model(model)
    tied = getattr(unwrapped.config, "tie_word_embeddings", False)
    named = [(n, p) for n, p in unwrapped.named_parameters() if not (tied and n == "lm_head.weight")]
    zero3 = (
        accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    )

    def layer_of(name_and_param):  # "model.layers.3." for a decoder layer's parameters, else the full name
        name = name_and_param[0]
        match = re.match(r".*?\.layers\.\d+\.", name)
        return match[0] if match else name

    for _, group in itertools.groupby(named, key=layer_of):
        group = list(group)
        gathered = nullcontext()
        if zero3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters([p for _, p in group])
        with gathered:
            yield [
                (n, (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().to(torch.bfloat16)) for n, p in group
            ]


@torch.no_grad()
def sync_weights_to_vllm(llm, model, accelerator, sleep_mode: bool) -> None:
    """The trainer's weights into the engine, layer by layer (`load_weights` fills fused shards in place)."""
    if sleep_mode:
        torch.cuda.empty_cache()
        llm.wake_up(tags=["weights"])  # never load into sleeping (unmapped) memory
    for chunk in full_parameter_chunks(model, accelerator):

        def load(vllm_model, chunk=chunk):  # runs in this process (in-process engine): no serialisation
            return vllm_model.load_weights(iter(chunk))

        llm.apply_model(load)
    llm.reset_prefix_cache()
    if sleep_mode:
        llm.wake_up(tags=["kv_cache"])


# ── end of the GPU-only vLLM block ──


def generate(
    model, llm, tokenizer, prompt_ids, n, temperature, max_new_tokens, stop_ids, top_p=1.0, batch_size=256, seed=None
) -> list[dict]:
    """The one generation path of training and eval_math.py: n samples per prompt, prompt-major, by vLLM (holding the
    current weights) or HF; `seed`: vLLM's, or a NoiseKey for keyed noise. Each: prompt_ids, response_ids (through
    the first stop token), rollout_logp (log π_T of each), truncated (no stop token within max_new_tokens), text
    (decoded without special tokens)."""
    if llm is not None:
        samples = vllm_generate(llm, prompt_ids, n, temperature, top_p, max_new_tokens, stop_ids, seed)
    else:  # leaves the model in eval mode: stats_pass and update_policy set the mode they need
        key = seed if isinstance(seed, NoiseKey) else None  # an int seed is vLLM's: HF samples from torch's RNG
        limits = (max_new_tokens, stop_ids, tokenizer.pad_token_id, batch_size)
        samples = hf_generate(model.eval(), prompt_ids, n, temperature, top_p, *limits, key)
    texts = tokenizer.batch_decode([s["response_ids"] for s in samples], skip_special_tokens=True)
    return [{**s, "prompt_ids": prompt_ids[i // n], "text": text} for i, (s, text) in enumerate(zip(samples, texts))]


def stop_token_ids(tokenizer, model_path: str, template: str) -> list[int]:
    """The tokenizer's and generation config's EOS ids and, for chat templates, `<|im_end|>` (base models use it)."""
    eos = None
    with suppress(OSError):  # no generation_config.json
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    im_end = tokenizer.get_vocab().get("<|im_end|>") if template != "plain" else None
    ids = {tokenizer.eos_token_id, im_end, *(eos if isinstance(eos, list) else [eos])} - {None}
    if not ids:
        raise UsageError(f"--model {model_path}: the tokenizer has no EOS token and the model no eos_token_id")
    return sorted(ids)


def sample(model, llm, accelerator, args, problems, n, temperature, tokenizer, stop_ids, key=None) -> list[dict]:
    """n samples per problem with the current weights (`generate`; vLLM must hold them: `sync_weights_to_vllm`)."""
    policy = accelerator.unwrap_model(model)
    prompts = [p["prompt_ids"] for p in problems]
    key = key if args.sampling_noise == "keyed" else None  # the NoiseKey of the samples' keyed noise
    settings = (args.max_new_tokens, stop_ids, args.top_p, args.hf_generation_batch_size, key)
    with accelerator.autocast():
        return generate(policy, llm, tokenizer, prompts, n, temperature, *settings)


def grade(samples: list[dict], problems: list[dict], args, n: int) -> list:
    """Rewards of the samples (n per problem, in order); `.no_answer` and `.timeouts` count the graded items."""
    texts = [s["text"] for s in samples]
    answers = [p["answer"] for p in problems for _ in range(n)]
    options = {"mode": args.answer_mode, "timeout_s": args.grader_timeout_s, "num_workers": args.grader_workers}
    return score(texts, answers, **options, reward_range=args.reward_range, multi_box=args.multi_box)


def rollout_and_grade(model, llm, accelerator, args, train_problems, data_pos, tokenizer, stop_ids, metrics, step=0):
    """The samples of this process's `prompts_per_step / world` graded groups (`filter_groups`: only groups whose
    rewards differ, while `max_gen_batches` allows) and the new data position (a prompt's keyed-noise index)."""
    world = accelerator.num_processes
    rank = accelerator.process_index
    G = args.group_size
    per_rank = args.prompts_per_step // world
    kept = []
    dropped = []
    gen_batches = 0
    if llm is not None:
        sync_weights_to_vllm(llm, model, accelerator, args.vllm_sleep_mode)
    while True:
        problems = take_prompts(train_problems, data_pos + rank * per_rank, per_rank, args.seed)
        key = NoiseKey(args.seed, step, list(range(data_pos + rank * per_rank, data_pos + (rank + 1) * per_rank)))
        data_pos += args.prompts_per_step
        gen_batches += 1
        t1 = time.time()
        samples = sample(model, llm, accelerator, args, problems, G, args.temperature, tokenizer, stop_ids, key)
        t2 = time.time()
        rewards = grade(samples, problems, args, G)
        t3 = time.time()
        correct = torch.tensor([r > 0 for r in rewards], dtype=torch.float32).view(-1, G)  # [per_rank, G]
        informative = (correct != correct[:, :1]).any(dim=1)  # DAPO's filter: rewards not all equal [per_rank]
        log_generation_batch(
            metrics, args, samples, problems, rewards, correct, informative, gen_batches, world, t2 - t1, t3 - t2
        )
        for g, problem in enumerate(problems):
            group = [{**samples[i], "reward": rewards[i], "problem": problem} for i in range(g * G, (g + 1) * G)]
            if informative[g] or not args.filter_groups:
                kept.append(group)
            else:
                dropped.append(group)
        if not args.filter_groups:
            break
        fewest_kept = accelerator.gather(torch.tensor([len(kept)], device=accelerator.device)).min()  # every process
        if gen_batches >= args.max_gen_batches or fewest_kept >= per_rank:
            break
    if llm is not None and args.vllm_sleep_mode:
        llm.sleep(level=1)  # free the KV cache for training
    # every process trains on exactly `per_rank` groups (the same number of backward calls); when the sampling
    # budget ran out, all-equal groups fill the gap with their loss masked out
    groups = kept[:per_rank] + dropped[: max(0, per_rank - len(kept))]
    samples = [dict(s, is_padding=g >= len(kept)) for g, group in enumerate(groups) for s in group]
    return samples, data_pos


def log_generation_batch(
    metrics, args, samples, problems, rewards, correct, informative, gen_batches, world, rollout_s, grading_s
):
    """Accuracy, rewards and group outcomes of one generation batch (`samples` prompt-major, G per problem); the
    step's totals over its generation batches (gen_batches, times, tokens, timeouts) counted once."""
    per_rank = len(correct)
    once = float(gen_batches == 1)
    rows = [
        ("rollout/accuracy", correct.sum(), correct.numel()),
        ("rollout/reward", sum(rewards), len(rewards)),
        ("rollout/no_answer_frac", rewards.no_answer, len(rewards)),
        ("rollout/filtered_group_frac", (~informative).sum() if args.filter_groups else 0, per_rank),
        ("rollout/all_correct_group_frac", (correct == 1).all(1).sum(), per_rank),
        ("rollout/all_wrong_group_frac", (correct == 0).all(1).sum(), per_rank),
        ("rollout/gen_batches", 1, once),
        ("time/rollout_s", rollout_s, once),
        ("time/grading_s", grading_s, once),
        ("time/tokens_per_s", sum(len(s["response_ids"]) for s in samples), once / world),  # ÷ step s in main
        ("rollout/grader_timeouts", rewards.timeouts, once / world),  # summed over processes
    ]
    if args.train_data in ("paths", "graded"):  # the testbed tasks: the rare, better careful path(s)
        careful = [careful_format(args.train_data, s["text"]) for s in samples]
        rows.append(("rollout/careful_frac", sum(careful), len(samples)))
    if args.train_data == "graded":  # one discovery per family: its share of responses opening its own careful path
        families = [graded_family(problems[i // args.group_size]["question"]) for i in range(len(samples))]
        for name, _, _ in GRADED_FAMILIES:
            own = [graded_format(s["text"], name) == "careful" for s, f in zip(samples, families) if f == name]
            rows.append((f"rollout/careful_frac_{name}", sum(own), len(own)))
    for name, total, count in rows:
        metrics.add(name, total, count)


def make_batch(samples, args, accelerator, pad_id, metrics) -> dict:
    """The batch's tensors with advantages `adv` and the loss mask (no padding groups; `mask_truncated`) [B, R]."""
    device = accelerator.device
    batch = {k: v.to(device) for k, v in collate(samples, pad_id).items()}
    lengths = batch["response_mask"].sum(-1)  # [B]
    penalty = overlong_penalty(lengths, args.max_new_tokens, args.overlong_buffer, args.overlong_penalty_factor)
    rewards = torch.tensor([s["reward"] for s in samples], device=device) + penalty
    all_advantages = group_advantages(accelerator.gather(rewards), args.group_size, args.scale_rewards)
    advantages = all_advantages.view(accelerator.num_processes, -1)[accelerator.process_index]  # [B]: this process's
    excluded = torch.tensor([s["is_padding"] for s in samples], device=device)
    excluded |= batch["truncated"] & args.mask_truncated
    batch["loss_mask"] = batch["response_mask"] * ~excluded[:, None]
    batch["adv"] = advantages[:, None].expand_as(batch["loss_mask"]).contiguous()
    metrics.add("rollout/response_length_mean", lengths.sum(), len(lengths))
    metrics.max("rollout/response_length_max", lengths.max())
    metrics.add("rollout/truncated_frac", batch["truncated"].sum(), len(lengths))
    metrics.add("rollout/advantage_abs_mean", advantages.abs().sum(), len(advantages))
    return batch


def collate(samples: list[dict], pad_id: int) -> dict:
    """Samples -> input_ids, attention_mask [B, P+R] (left-padded prompt), response tensors [B, R], truncated [B].

    Example (pad p, stop token 2): prompt [5, 6] with response [8, 9, 2], and prompt [7] with response [4, 2]:
        input_ids     [[5, 6, 8, 9, 2],    attention_mask [[1, 1, 1, 1, 1],    P = 2, R = 3
                       [p, 7, 4, 2, p]]                    [0, 1, 1, 1, 0]]
        response_ids  [[8, 9, 2], [4, 2, p]],   response_mask [[1, 1, 1], [1, 1, 0]],   rollout_logp 0 where padded"""
    P = max(len(s["prompt_ids"]) for s in samples)
    R = max(max(len(s["response_ids"]) for s in samples), 1)
    input_ids = []
    attention_mask = []
    rollout_logp = []
    for s in samples:
        prompt = s["prompt_ids"]
        response = s["response_ids"]
        input_ids.append([pad_id] * (P - len(prompt)) + prompt + response + [pad_id] * (R - len(response)))
        attention_mask.append([0] * (P - len(prompt)) + [1] * (len(prompt) + len(response)) + [0] * (R - len(response)))
        rollout_logp.append(s["rollout_logp"][: len(response)] + [0.0] * (R - len(response)))
    input_ids = torch.tensor(input_ids)
    attention_mask = torch.tensor(attention_mask)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_ids": input_ids[:, P:],
        "response_mask": attention_mask[:, P:].float(),
        "truncated": torch.tensor([s["truncated"] for s in samples]),
        "rollout_logp": torch.tensor(rollout_logp),
    }


def evaluate(model, llm, accelerator, problems, args, tokenizer, stop_ids, step: int) -> dict:
    """avg@eval_n accuracy, length and no-answer rate, sharded over processes (equal shards: padding not graded)."""
    world = accelerator.num_processes
    rank = accelerator.process_index
    n = args.eval_n
    per_rank = math.ceil(len(problems) / world)
    shard = (problems * world)[rank * per_rank : (rank + 1) * per_rank]  # padded with repeats to equal shards
    real = problems[rank * per_rank :][:per_rank]  # the problems of the shard that are graded
    if llm is not None:
        sync_weights_to_vllm(llm, model, accelerator, args.vllm_sleep_mode)
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        torch.manual_seed(args.seed * 7919 + step * 104729 + rank)  # evaluation never perturbs the training RNG
        key = NoiseKey(args.seed, step, list(range(rank * per_rank, (rank + 1) * per_rank)), NOISE_DOMAINS["eval"])
        samples = sample(model, llm, accelerator, args, shard, n, args.eval_temperature, tokenizer, stop_ids, key)
    if llm is not None and args.vllm_sleep_mode:
        llm.sleep(level=1)  # free the KV cache for training
    samples = samples[: len(real) * n]
    rewards = grade(samples, real, args, n)
    metrics = Metrics()
    metrics.add("eval/accuracy", sum(r > 0 for r in rewards), len(samples))
    metrics.add("eval/response_length_mean", sum(len(s["response_ids"]) for s in samples), len(samples))
    metrics.add("eval/no_answer_frac", rewards.no_answer, len(samples))
    return metrics.reduce(accelerator)


# ─── SHARED: main loop ─────────────────────────────────────────────────────────────────────────
def main(args: Args) -> str:
    # ── setup: accelerator, argument checks (before anything is loaded or written), determinism
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and torch.cuda.is_available())
    # cpu=True without CUDA: processes started by `accelerate launch --multi_gpu` / torchrun use gloo
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available())
    world = accelerator.num_processes
    rank = accelerator.process_index
    engine = "vllm" if args.rollout_engine in ("vllm", "auto") and vllm_available() else "hf"
    if args.rollout_is_cap is None:  # C = 2: the lower end of TRL's and ms-swift's caps (3, 2) bounds the variance
        args.rollout_is_cap = 2.0 if engine == "vllm" else 0.0
    fsdp1 = accelerator.distributed_type == DistributedType.FSDP and not getattr(accelerator, "is_fsdp2", False)
    check_args(args, world, engine, fsdp1)
    check_algorithm_args(args)
    if args.threads and accelerator.device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.torch_deterministic:  # vLLM sampling stays non-deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    run_name = args.run_name or "__".join(
        [os.path.basename(args.train_data), args.exp_name, str(args.seed), str(int(time.time()))]
    )
    run_dir = args.resume or os.path.join(args.output_dir, broadcast_object_list([run_name])[0])

    # ── data first: its errors come before anything is loaded or written
    model_path = resolve_model(args.model)
    if model_path != args.model:
        accelerator.print(f"model: {model_path}")
    tokenizer = load_pretrained(model_path, "tokenizer")
    stop_ids = stop_token_ids(tokenizer, model_path, args.template)
    train_problems, eval_problems = load_data(args, tokenizer)
    found = checkpoints(run_dir) if args.resume else []  # newest last; an earlier one if it cannot be loaded
    done = saved_args(found[-1], "trainer_state.json").get("step", 0) if found else 0  # damaged: not finished
    if done >= args.total_steps:  # a finished run: nothing changes
        accelerator.print(
            f"run {run_dir} is finished ({done} of {args.total_steps} steps); "
            f"to extend it: {rerun_command(run_dir)} --total-steps N"
        )
        return run_dir

    # ── rollout engine (before any optimizer state: vLLM checks free memory at start-up), policy, resume
    llm = start_vllm(args, model_path, train_problems + eval_problems, accelerator) if engine == "vllm" else None
    set_seed(args.seed)  # after vLLM, which re-seeds the global RNGs in its worker
    model, optimizer, ref_model = build_policy(args, accelerator, model_path, use_bf16)
    state = load_checkpoint(accelerator, found)
    # the run folder is created only now, once the model has loaded: a failed start leaves nothing behind
    lock = lock_run(run_dir) if accelerator.is_main_process else None  # held until main returns
    locked_out = broadcast_object_list([accelerator.is_main_process and lock is None])[0]  # every process stops
    if locked_out:
        raise UsageError(f"{run_dir} is in use by another process (running, or being resumed)")
    if args.resume and not state:
        accelerator.print(f"no usable checkpoint in {run_dir}: starting it again from step 0")
    start_step = state.get("step", 0)
    data_pos = state.get("data_pos", 0)
    algo_state = state.get("algo_state", init_algorithm_state(args))
    ent_state = state.get("ent_state", {"ent_coef": args.ent_coef_init, "applied": False, "initial_entropy": None})
    logger = RunLogger(run_dir, args, accelerator.is_main_process, start_step)
    accelerator.print(f"run directory: {run_dir}  (engine: {engine}, processes: {world}, device: {accelerator.device})")
    reduce_sum = sum_over_processes(accelerator)
    # the old-policy pass is needed when later minibatches are off-policy or the algorithm needs batch statistics
    old_policy_pass = needs_old_policy_pass(args) or args.update_epochs * args.num_minibatches > 1
    if args.eval_every and start_step == 0:  # the starting point of the eval curve
        logger.log(0, evaluate(model, llm, accelerator, eval_problems, args, tokenizer, stop_ids, 0))

    # ── the loop (Ctrl-C ends it with what to run next)
    step = start_step
    skipped_streak = 0
    try:
        for step in range(start_step + 1, args.total_steps + 1):
            step_start = time.time()
            set_seed(args.seed * 10_007 + step * 101 + rank)  # sampling is a function of (seed, step, rank)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, step)
            metrics = Metrics()
            # 1. sample and grade
            samples, data_pos = rollout_and_grade(
                model, llm, accelerator, args, train_problems, data_pos, tokenizer, stop_ids, metrics, step
            )
            # 2. advantages and the loss mask
            batch = make_batch(samples, args, accelerator, tokenizer.pad_token_id, metrics)
            # 3. old-policy ℓ_old, H, G (no grad), or filled in by the single on-policy update
            t0 = time.time()
            add_old_policy_stats(batch, model, args, accelerator, old_policy_pass)
            if ref_model is not None:
                batch["logp_ref"] = stats_pass(ref_model, batch, args, accelerator)["logp"]
            algo_metrics = algorithm_step_begin(algo_state, args, batch, reduce_sum)
            algo_metrics.update(entropy_control_begin(ent_state, args, batch))
            # 4. policy update (without an old-policy pass, its forward fills in ℓ_old, H_old, G_old)
            skipped = update_policy(
                model, optimizer, batch, args, algo_state, accelerator, metrics, step, not old_policy_pass, reduce_sum
            )
            skipped_streak = skipped_streak + 1 if skipped == args.update_epochs * args.num_minibatches else 0
            metrics.add("train/skipped_updates", skipped)
            if args.measure_entropy_change:  # realised entropy change of the same batch
                realised = stats_pass(model, batch, args, accelerator)["entropy"] - batch["entropy_old"]
                metrics.mean("entropy/realised_change", realised, batch["response_mask"])
            metrics.add("time/training_s", time.time() - t0)
            # 5. metrics, evaluation, checkpoints
            metrics = {**metrics.reduce(accelerator), **algo_metrics, "train/learning_rate": learning_rate(args, step)}
            step_s = time.time() - step_start
            metrics["time/step_s"] = step_s
            metrics["time/tokens_per_s"] = metrics["time/tokens_per_s"] / step_s
            algorithm_step_end(algo_state, args, metrics)
            entropy_control_end(ent_state, args, metrics)
            if args.eval_every and (step % args.eval_every == 0 or step == args.total_steps):
                metrics.update(evaluate(model, llm, accelerator, eval_problems, args, tokenizer, stop_ids, step))
            log_step(logger, args, step, metrics, samples, accelerator)
            if skipped_streak == 3:  # nothing is being learnt: stop rather than spin
                raise RunError(
                    f"every update of steps {step - 2}-{step} was skipped (non-finite loss or gradients); "
                    f"lower --learning-rate or check the data, then continue: {rerun_command(run_dir)}"
                )
            if (args.checkpoint_every and step % args.checkpoint_every == 0) or step == args.total_steps:
                trainer_state = {"step": step, "data_pos": data_pos, "algo_state": algo_state, "ent_state": ent_state}
                save_checkpoint(accelerator, model, tokenizer, run_dir, trainer_state, args, start_step)
    except KeyboardInterrupt:
        last = (checkpoints(run_dir) or ["none yet"])[-1]
        raise KeyboardInterrupt(
            f"run {run_dir} stopped at step {step}; its last checkpoint is {last}; "
            f"continue with: {rerun_command(run_dir)}"
        ) from None
    if logger.writer:
        logger.writer.close()
    print_next_commands(run_dir, args, accelerator)
    accelerator.end_training()
    return run_dir


def add_old_policy_stats(batch: dict, model, args, accelerator, old_policy_pass: bool) -> None:
    """batch["logp_old"], ["entropy_old"], ["g_old"] [B, R]: the sampling policy's, from a no-grad pass over the
    batch, or zeros that the single on-policy update fills in from its own forward (`fill_old`)."""
    if old_policy_pass:
        old = stats_pass(model, batch, args, accelerator)
    else:
        old = {name: torch.zeros(batch["adv"].shape, device=accelerator.device) for name in ("logp", "entropy", "g")}
    batch["logp_old"] = old["logp"]
    batch["entropy_old"] = old["entropy"]
    batch["g_old"] = old["g"]


def entropy_control_begin(state: dict, args, batch: dict) -> dict:
    """--adaptive-ent-coef, before the update: this step's α into batch["ent_coef"] [B, R] if the bonus applies (as
    decided after the previous step; not at step 1, before any entropy was measured). Returns its metrics."""
    if not args.adaptive_ent_coef:
        return {}
    if state["applied"]:
        batch["ent_coef"] = torch.full_like(batch["adv"], state["ent_coef"])
    return {"train/ent_coef": state["ent_coef"], "train/ent_coef_applied": float(state["applied"])}


def entropy_control_end(state: dict, args, metrics: dict) -> None:
    """Adaptive entropy control (Skywork-OR1, arXiv 2505.22312), after step k with its entropy H_k (entropy/mean):
    α ← clip(α + Δ, α_min, α_max) if H_k ≤ target, else clip(α − Δ, α_min, α_max), and the bonus −α·H_t applies at
    step k + 1 only if H_k ≤ target; target = --ent-target, × H₀ = H_1 with --ent-target-mode relative."""
    if not args.adaptive_ent_coef:
        return
    entropy = metrics["entropy/mean"]
    if state["initial_entropy"] is None:
        state["initial_entropy"] = entropy
    target = args.ent_target * (state["initial_entropy"] if args.ent_target_mode == "relative" else 1.0)
    state["applied"] = entropy <= target  # NaN: not
    moved = state["ent_coef"] + (args.ent_coef_delta if state["applied"] else -args.ent_coef_delta)
    state["ent_coef"] = min(max(moved, args.ent_coef_min), args.ent_coef_max)


def print_next_commands(run_dir: str, args, accelerator) -> None:
    """Where the run's model is, and the commands to evaluate (on the run's eval data), plot and continue it."""
    model_dir = os.path.join(checkpoints(run_dir)[-1] if accelerator.is_main_process else "", "hf")
    quoted = shlex.quote(run_dir)
    data = "" if args.eval_data == "paths" else f" --benchmarks {shlex.quote(args.eval_data)}"  # eval_math's default
    accelerator.print(
        f"done: {run_dir}  (model: {model_dir})\n  evaluate:  python eval_math.py --model {quoted}{data}\n"
        f"  plot:      python plot.py {quoted}\n  continue:  {rerun_command(run_dir)} --total-steps N"
    )


def log_step(logger, args, step: int, metrics: dict, samples: list[dict], accelerator) -> None:
    """The step's metrics (metrics.jsonl, TensorBoard), a few completions, and one line on the console."""
    completions = []
    if args.log_completions_every and step % args.log_completions_every == 0:
        for s in samples[: args.num_completions_to_log]:
            completions.append(
                {
                    "prompt": s["problem"]["question"],
                    "response": s["text"],
                    "reward": s["reward"],
                    "gold": s["problem"]["answer"],
                }
            )
    logger.log(step, metrics, completions)
    logger.steps_without_answers = logger.steps_without_answers + 1 if metrics["rollout/no_answer_frac"] == 1 else 0
    if step == 5 and logger.steps_without_answers == 5:  # once: the first 5 steps, every response without an answer
        print(
            f"warning: no response of the first 5 steps had an answer the grader could read (--template "
            f"{args.template}, --train-data {args.train_data}, --answer-mode {args.answer_mode}): the model does not "
            "write its answers the way this template asks. Try the template the model was trained with (--template "
            "plain for the testbed model), or an --answer-mode that reads how it writes its final answer.",
            file=sys.stderr,
        )
    shown = {
        "reward": "rollout/reward",
        "entropy": "entropy/mean",
        "flow net": "entropy/flow_net",
        "len": "rollout/response_length_mean",
        "eval": "eval/accuracy",
        "s": "time/step_s",
    }
    line = " | ".join(f"{label} {metrics[key]:.4g}" for label, key in shown.items() if key in metrics)
    accelerator.print(f"step {step:4d} | {line}")


def sum_over_processes(accelerator):
    """x ↦ Σ over processes of x (the identity on one process): the `reduce_sum` the hooks get."""

    def reduce_sum(x):
        if accelerator.num_processes == 1:
            return x
        return accelerator.reduce(x.clone(), reduction="sum")

    return reduce_sum


# ─── SHARED: run management ────────────────────────────────────────────────────────────────────
class UsageError(ValueError):
    """A mistake in the arguments or the files they name: one `error: ...` line, exit status 2."""


class RunError(RuntimeError):
    """A run that cannot go on (a checkpoint not written, every update skipped): one `error: ...` line, exit 1."""


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line; with `--resume RUN` the run's own arguments are the defaults and a flag given changes one."""
    args = parse_command_line(argv, Args())
    saved = saved_args(args.resume)  # another script's run is refused by check_args
    if saved.get("script") != SCRIPT:
        return args
    run_flags = {k: v for k, v in saved.items() if k in Args.__dataclass_fields__ and k != "algo"}
    run_algo_flags = {k: v for k, v in saved.items() if k in Algorithm.__dataclass_fields__}
    return parse_command_line(argv, Args(**run_flags, algo=Algorithm(**run_algo_flags)))


def parse_command_line(argv: list[str] | None, defaults: Args) -> Args:
    """tyro over one dataclass per flag group, so `--help` shows the groups (the method's first) while the flags stay
    unprefixed (`--seed`, not `--experiment.seed`); the groups are flattened back into `Args`."""
    groups = {"method": Algorithm, **ARG_GROUPS}
    Cli = dataclasses.make_dataclass("Cli", list(groups.items()))
    group_defaults = {}
    for name, group in ARG_GROUPS.items():
        group_defaults[name] = group(**{f.name: getattr(defaults, f.name) for f in dataclasses.fields(group)})
    default = Cli(method=defaults.algo, **group_defaults)
    description = __doc__.split("\n\n")[0] + "\n" + MOST_USED
    cli = tyro.cli(Cli, args=argv, default=default, config=(tyro.conf.OmitArgPrefixes,), description=description)
    flags = {k: v for name in ARG_GROUPS for k, v in asdict(getattr(cli, name)).items()}  # the groups flattened
    return Args(**flags, algo=cli.method)


def flat_args(args: Args) -> dict:
    """{flag: value}, the method's flags included (what `args.json`, TensorBoard and W&B record)."""
    return {k: v for k, v in {**asdict(args), **asdict(args.algo)}.items() if k != "algo"}


def saved_args(run_dir: str | None, name: str = "args.json") -> dict:
    """The flat arguments of a run (its `args.json`), or another JSON file of it; {} if missing or damaged."""
    saved = {}
    with suppress(OSError, TypeError, ValueError), open(os.path.join(run_dir, name)) as f:  # TypeError: no run_dir
        saved = json.load(f)
    return {**saved, **saved.get("algo", {})}  # older runs nest the method's flags


def check_args(args: Args, world: int, engine: str, fsdp1: bool = False) -> None:
    """Refuse, before anything is loaded or written, settings that would fail late, train on nothing or change a run."""
    if world == 1 and "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ:  # set for --num_processes > 1
        print(
            "warning: accelerate launch was asked for several processes but started one: on CPU add --multi_gpu "
            "(accelerate launch --multi_gpu --num_processes N ...)",
            file=sys.stderr,
        )
    check_flag_values(args, world, engine)
    if fsdp1:
        raise UsageError(
            "FSDP1 is not supported (its weights cannot be streamed to vLLM): use fsdp_version: 2 (configs/fsdp.yaml)"
        )
    if engine != "vllm" and args.rollout_engine == "vllm":
        raise UsageError("--rollout-engine vllm needs CUDA and `pip install vllm` (use --rollout-engine hf)")
    resolve_model(args.model)
    check_writable_dir(args.resume or args.output_dir, "--output-dir", args.output_dir)
    saved = saved_args(args.resume)
    if args.resume and saved.get("script") != SCRIPT:
        why = (
            f"written by {saved.get('script')}, not {SCRIPT}"
            if saved
            else "not a run directory (no readable args.json)"
        )
        raise UsageError(f"--resume {args.resume}: {why}")
    changed = [  # a flag newer than the run has its default
        f"--{k.replace('_', '-')} {v!r} (the run's: {saved[k]!r})"
        for k, v in flat_args(args).items()
        if k not in RESUMABLE and k in saved and saved[k] != v
    ]
    if changed:
        raise UsageError(f"--resume {args.resume}: arguments differ from the run's: {'; '.join(changed)}")
    made_with = processes_of(checkpoints(args.resume)[-1]) if args.resume and checkpoints(args.resume) else world
    if made_with not in (0, world):  # the data order and every process's RNG state depend on the process count
        raise UsageError(
            f"--resume {args.resume}: the run was made with {made_with} processes, this launch has {world}; "
            f"continue it with: {rerun_command(args.resume, made_with)}"
        )
    run_dir = os.path.join(args.output_dir, args.run_name or "")
    if not args.resume and args.run_name and os.path.exists(run_dir):
        raise UsageError(
            f"--run-name {args.run_name}: {run_dir} exists; continue it with --resume, or choose another --run-name"
        )


def check_flag_values(args: Args, world: int, engine: str) -> None:
    """Each flag's allowed values, one row per rule: (flag, allowed, what it must be)."""
    at_least_one = ["max_new_tokens", "total_steps", "micro_batch_size", "update_epochs", "entropy_chunk_size"]
    at_least_one += ["hf_generation_batch_size", "keep_checkpoints", "max_gen_batches"]
    non_negative = ["threads", "eval_every", "checkpoint_every", "kl_coef", "ent_coef", "weight_decay"]
    non_negative += ["lr_warmup_steps", "grader_workers", "ent_coef_min", "ent_coef_delta"]
    positive = ["temperature", "learning_rate", "max_grad_norm", "grader_timeout_s", "eval_temperature"]
    positive += ["loss_scale_factor", "ent_target"]  # None (its default) allowed
    seqs = args.prompts_per_step // world * args.group_size  # sequences per process and step
    rules = [(flag, getattr(args, flag) >= 1, ">= 1") for flag in at_least_one]
    rules += [(flag, getattr(args, flag) >= 0, ">= 0") for flag in non_negative]
    rules += [(flag, getattr(args, flag) is None or getattr(args, flag) > 0, "> 0") for flag in positive]
    rules += [
        (
            "prompts_per_step",
            args.prompts_per_step >= 1 and args.prompts_per_step % world == 0,
            f"a positive multiple of the {world} processes",
        ),
        (
            "group_size",
            args.group_size >= 2 or (args.group_size == 1 and args.scale_rewards == "none"),
            ">= 2 (1 has no group statistics: only with --scale-rewards none)",
        ),
        ("top_p", 0 < args.top_p <= 1 and (args.top_p == 1 or engine == "vllm"), "in (0, 1], and 1 with the HF engine"),
        (
            "top_p",
            args.top_p == 1 or not args.rollout_is_cap,
            "1 with truncated IS (--rollout-is-cap 0 to turn it off): vLLM's log-probs are then renormalised over "
            "the nucleus, the trainer's are not, and the IS weight would be biased low",
        ),
        ("temperature", args.temperature <= 2 or engine != "vllm", "<= 2 with vLLM (it refuses more)"),
        (
            "num_minibatches",
            args.num_minibatches >= 1 and seqs % args.num_minibatches == 0,
            f"a divisor of the {seqs} sequences per process (--prompts-per-step / processes × --group-size)",
        ),
        ("clip_low", 0 <= args.clip_low < 1 and args.clip_high >= 0, "in [0, 1), with --clip-high >= 0"),
        ("dual_clip_c", args.dual_clip_c == 0 or args.dual_clip_c > 1, "0 (off) or > 1"),
        ("ent_coef_init", args.ent_coef_min <= args.ent_coef_init <= args.ent_coef_max, "in [--ent-coef-min, max]"),
        ("ent_coef", args.ent_coef == 0 or not args.adaptive_ent_coef, "0 with --adaptive-ent-coef"),
        ("overlong_buffer", 0 <= args.overlong_buffer < args.max_new_tokens, "in [0, --max-new-tokens)"),
        ("rollout_is_cap", args.rollout_is_cap in (None, 0) or args.rollout_is_cap >= 1, "0 (off) or >= 1"),
        (
            "num_eval_problems",
            args.eval_every == 0 or min(args.num_eval_problems, args.eval_n) >= 1,
            ">= 1, with --eval-n >= 1 (or --eval-every 0)",
        ),
    ]
    for flag, allowed, requirement in rules:
        if not allowed:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be {requirement}")


def check_writable_dir(path: str, flag: str, given: str | None = None) -> None:
    """Refuse now, not at the first write, a directory that cannot be created or written: its nearest existing
    ancestor must be a writable directory. `given`: the flag's value as typed (default: `path`)."""
    given = path if given is None else given
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {given}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"{flag} {given} is not writable ({existing} is read-only)")


class Metrics:
    """A step's metrics on each process: means (Σ sum / Σ count over processes), maxima and minima."""

    def __init__(self):
        self.sums = {}
        self.counts = {}
        self.maxima = {}
        self.minima = {}

    def add(self, name: str, total, count=1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + total
        self.counts[name] = self.counts.get(name, 0.0) + count

    def mean(self, name: str, values, mask) -> None:
        self.add(name, (values * mask).sum(), mask.sum())

    def max(self, name: str, value) -> None:
        self.maxima[name] = max(self.maxima.get(name, value), value)

    def min(self, name: str, value) -> None:
        self.minima[name] = min(self.minima.get(name, value), value)

    def reduce(self, accelerator) -> dict:
        """{name: value} over all processes (one gather), names sorted: the means, then the maxima and minima."""
        keys = sorted(self.sums)
        max_keys = sorted(self.maxima)
        min_keys = sorted(self.minima)
        values = [self.sums[k] for k in keys] + [self.counts[k] for k in keys]
        values += [self.maxima[k] for k in max_keys] + [self.minima[k] for k in min_keys]
        values.append(0.0)  # never an empty tensor
        values = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64).to(accelerator.device).reshape(()) for v in values]
        )
        values = values[None]  # [1, n]
        if accelerator.num_processes > 1:
            values = accelerator.gather(values)  # [world, n]
        n = len(keys)
        totals = values[:, : 2 * n].sum(0).tolist()
        maxima = values[:, 2 * n : 2 * n + len(max_keys)].amax(0).tolist()
        minima = values[:, 2 * n + len(max_keys) : -1].amin(0).tolist()
        means = {k: s / c if c > 0 else float("nan") for k, s, c in zip(keys, totals[:n], totals[n:])}
        extremes = {**dict(zip(max_keys, maxima)), **dict(zip(min_keys, minima))}
        return {**means, **{k: extremes[k] for k in sorted(extremes)}}


def one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def load_data(args, tokenizer) -> tuple[list, list]:
    """The training and evaluation problems, prompts tokenized; a data error names its flag."""
    options = (tokenizer, args.template, args.max_prompt_length, args.data_dir, args.skip_invalid)
    per_step = args.prompts_per_step
    train = load_prompts(args.train_data, args.train_split, *options, per_step=per_step, flag="--train-data")
    if not args.eval_every:
        return train, []
    return train, load_prompts(args.eval_data, args.eval_split, *options, args.num_eval_problems, flag="--eval-data")


def resolve_model(model: str) -> str:
    """A model folder (repository-relative ones from any directory) or hub id as given; a run or checkpoint folder:
    its `hf/`."""
    path = os.path.expanduser(model)
    if not os.path.exists(path) and os.path.isdir(os.path.join(REPO_DIR, path)):
        path = os.path.join(REPO_DIR, path)
    candidates = [*checkpoints(path), path]
    found = [os.path.join(c, "hf") for c in candidates if os.path.isfile(os.path.join(c, "hf", "config.json"))]
    if found:  # a checkpoint folder: its hf/; a run folder: its newest checkpoint's
        return found[-1]
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"--model {model}: a folder without config.json, hf/ or checkpoints/step_*/hf/")
    parts = model.split("/")  # a hub id is `owner/name`; `runs/x` or `./x` is a folder
    looks_like_folder = (
        model.startswith((".", "/", "~"))
        or len(parts) > 2
        or (len(parts) == 2 and (parts[0] == "runs" or os.path.exists(parts[0])))
    )
    if not os.path.exists(path) and looks_like_folder:
        parent, base = os.path.split(os.path.normpath(path))
        near = []
        if os.path.isdir(parent or "."):
            near = sorted(d for d in os.listdir(parent or ".") if d.startswith(base))
        hint = f"; did you mean {os.path.join(parent, near[0])}?" if near else ""
        raise UsageError(f"--model {model}: no such directory{hint}")
    if not os.path.exists(path):
        check_hub_reachable(model)
    return path if os.path.exists(path) else model


def check_hub_reachable(model: str) -> None:
    """A hub id not in the local cache needs the hub: without network, say so now, not after the hub client's
    retries (a minute of them)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return  # cached: transformers loads it without the network
    host = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.create_connection((host.hostname, host.port or 443), timeout=3).close()
    except OSError as error:
        raise UsageError(
            f"--model {model}: not a local folder, not in the Hugging Face cache, and the hub {constants.ENDPOINT} "
            f"cannot be reached ({error}); download the model where there is network, copy its folder here and pass "
            "--model PATH (with HF_HUB_OFFLINE=1)"
        ) from None


def load_pretrained(path: str, what: str = "tokenizer", dtype=torch.float32):
    """The tokenizer or model of a resolved `--model`; a failure is one error line, not a traceback."""
    try:
        if what == "tokenizer":
            tokenizer = AutoTokenizer.from_pretrained(path)
            tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
            return tokenizer
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as error:  # OSError, ValueError, safetensors' errors, sentencepiece/tiktoken import errors
        raise UsageError(f"--model {path}: no loadable {what} ({one_line(error)})") from None


def build_policy(args, accelerator, model_path: str, use_bf16: bool):
    """The policy and its optimizer (prepared: DDP, ZeRO or FSDP), and a frozen reference when the KL term is on."""
    model = load_pretrained(model_path, "model")
    for module in model.modules():  # dropout would make the on-policy ratio differ from 1
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if model.config.tie_word_embeddings:  # accelerate warns on every save that the tied lm_head is stored once
        logging.getLogger("accelerate.utils.other").addFilter(lambda r: "Removed shared tensor" not in r.getMessage())
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    seqs_per_minibatch = args.prompts_per_step // accelerator.num_processes * args.group_size // args.num_minibatches
    accelerator.gradient_accumulation_steps = math.ceil(seqs_per_minibatch / args.micro_batch_size)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # its engine accumulates, clips, then steps
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
            gradient_clipping=args.max_grad_norm,
            train_micro_batch_size_per_gpu=args.micro_batch_size,
        )
    model, optimizer = accelerator.prepare(model, optimizer)
    if args.kl_coef == 0:
        return model, optimizer, None
    # loaded as the policy was (ZeRO-3: inside zero.Init, partitioned; FSDP2 with cpu_ram_efficient_loading: the
    # weights read on process 0 only, zeros elsewhere), then placed as the framework places the policy
    ref_model = load_pretrained(model_path, "model", torch.bfloat16 if use_bf16 else torch.float32)
    return model, optimizer, prepare_reference(accelerator, ref_model)


def prepare_reference(accelerator, ref_model):
    """The frozen KL reference, ready for no-grad forwards on every process, placed as the framework places the policy:
    - DeepSpeed: an inference engine of the training config without optimizer and scheduler. ZeRO-3 stays stage 3
      (parameters partitioned like the policy's, gathered layer by layer in the forward); ZeRO-1/2 become stage 0
      (they partition optimizer state and gradients, which a frozen model has none of): a full copy per process.
    - FSDP2: sharded like the policy (accelerate's `fully_shard` per layer); with cpu_ram_efficient_loading, process
      0's weights are broadcast to the others, which loaded zeros.
    - otherwise (one process, DDP): a full copy on the device, unwrapped (no gradients, nothing to all-reduce)."""
    ref_model.requires_grad_(False)  # before FSDP2 preparation: frozen parameters keep their dtype
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import deepspeed

        config = accelerator.state.deepspeed_plugin.deepspeed_config  # its "auto" values filled in by prepare
        config = {key: value for key, value in config.items() if key not in ("optimizer", "scheduler")}
        zero = config.get("zero_optimization", {})
        config["zero_optimization"] = dict(zero) if zero.get("stage") == 3 else {"stage": 0}
        ref_model = deepspeed.initialize(model=ref_model, config=config)[0]
    elif getattr(accelerator, "is_fsdp2", False):  # FSDP1 is refused by check_args
        from accelerate.utils import fsdp2_prepare_model  # prepare() refuses an FSDP2 model without its optimizer

        ref_model = fsdp2_prepare_model(accelerator, ref_model)
    else:
        ref_model = ref_model.to(accelerator.device)
    ref_model.eval()  # DeepSpeed's engine.eval() returns None
    return ref_model


def checkpoints(run_dir: str) -> list[str]:
    """Finished checkpoints of a run, oldest first (`step_N.tmp` is one that was being written)."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, d) for d in sorted(os.listdir(root)) if re.fullmatch(r"step_\d+", d)]


def save_checkpoint(accelerator, model, tokenizer, run_dir: str, state: dict, args, first_step: int) -> None:
    """`checkpoints/step_N` (accelerate state with every process's RNG, `hf/`, `trainer_state.json`), written as
    `step_N.tmp` and renamed when complete; keeps the newest `keep_checkpoints` written since `first_step`.
    A failure on any process (a full disk) ends every process together, with the same one-line RunError."""
    root = os.path.join(run_dir, "checkpoints")
    final = os.path.join(root, f"step_{state['step']:06d}")
    tmp = final + ".tmp"

    def clear():  # what a run stopped while writing this checkpoint left
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)

    def write_model():
        state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3 / FSDP
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(os.path.join(tmp, "hf"), state_dict=state_dict)
            tokenizer.save_pretrained(os.path.join(tmp, "hf"))
            with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
                json.dump(state, f)

    def publish():  # after every process has written its files
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            written_here = [c for c in checkpoints(run_dir) if first_step < int(c[-6:]) <= state["step"]]
            for old in written_here[: -args.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    parts = [clear, lambda: accelerator.save_state(tmp), write_model, publish]  # save_state: on every process
    # each part ends where every process learns whether it failed anywhere: the collectives of the next part never
    # wait for a process that has stopped
    for part in parts:
        error = None
        try:
            part()
        except Exception as caught:  # a full disk: OSError, torch's "enforce fail", safetensors' I/O error
            error = caught
        failure = first_failure(accelerator, error)
        if failure is not None:
            if accelerator.is_local_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            last = (checkpoints(run_dir) or ["the start"])[-1]
            raise RunError(
                f"could not write checkpoint {final} ({failure}); free disk space under {root}, then "
                f"continue from {last}: {rerun_command(run_dir)}"
            ) from None


def first_failure(accelerator, error: Exception | None) -> str | None:
    """The one-line message of `error` (None: this process's part succeeded) or, with several processes, of the first
    process whose part failed, named ("process 1: ..."); None if none failed. Every process calls it at the same
    point: a failure on one process then stops all of them together, instead of leaving the others waiting in their
    next collective until it times out."""
    message = None if error is None else one_line(error)
    if accelerator.num_processes == 1:
        return message
    from accelerate.utils import gather_object

    try:
        messages = gather_object([message])  # one small all-gather, [message of process 0, of process 1, ...]
    except Exception as gather_error:  # a process is gone (gloo: "Connection closed by peer")
        return f"process {accelerator.process_index}: {message or one_line(gather_error)}"
    failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
    return f"process {failed[0][0]}: {failed[0][1]}" if failed else None


def load_checkpoint(accelerator, found: list[str]) -> dict:
    """The trainer state of the newest checkpoint that loads on every process ({} if none); damaged ones are passed
    over (on all processes together)."""
    for checkpoint in reversed(found):
        error = state = None
        try:
            accelerator.load_state(checkpoint)
            with open(os.path.join(checkpoint, "trainer_state.json")) as f:
                state = json.load(f)
        except Exception as caught:  # a truncated or missing file
            error = caught
        failure = first_failure(accelerator, error)
        if failure is None:
            accelerator.print(f"resumed from {checkpoint} at step {state['step']}")
            return state
        accelerator.print(f"checkpoint {checkpoint} could not be loaded ({failure}); trying the previous one")
    return {}


def rerun_command(run_dir: str, world: int | None = None) -> str:
    """The command that continues the run: with as many processes as this one (or `world`)."""
    script = sys.argv[0] if os.path.basename(sys.argv[0]) == SCRIPT else SCRIPT  # as invoked, so it works from here
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world  # set by accelerate launch / torchrun
    if world > 1:  # --multi_gpu: without it, accelerate launch on CPU starts one process whatever --num_processes says
        return shlex.join(
            ["accelerate", "launch", "--multi_gpu", "--num_processes", str(world), script, "--resume", run_dir]
        )
    return shlex.join(["python", script, "--resume", run_dir])


def processes_of(checkpoint: str) -> int:
    """How many processes wrote a checkpoint: accelerate saves one RNG state file per process."""
    return len([f for f in os.listdir(checkpoint) if re.fullmatch(r"random_states_\d+\.pkl", f)])


def lock_run(run_dir: str):
    """One process at a time writes a run: the lock (None if another holds it), held while the file stays open."""
    os.makedirs(run_dir, exist_ok=True)
    lock = open(os.path.join(run_dir, ".lock"), "w")
    with suppress(BlockingIOError):  # another process holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return lock
    return None


class RunLogger:
    """metrics.jsonl, TensorBoard, W&B, completions.jsonl, args.json; a resume drops what followed its checkpoint."""

    def __init__(self, run_dir: str, args, enabled: bool, start_step: int):
        self.run_dir = run_dir
        self.writer = None
        self.steps_without_answers = 0  # steps in a row in which no response had an answer the grader could read
        if not enabled:
            return
        for name in ("metrics.jsonl", "completions.jsonl"):
            path = os.path.join(run_dir, name)
            lines = []
            if os.path.exists(path):
                with open(path) as f:
                    lines = f.readlines()
            with open(path, "w") as f:  # a line cut short by a crash has no newline
                f.writelines(
                    x for x in lines if start_step and x.endswith("\n") and json.loads(x)["step"] <= start_step
                )
        if args.track:
            import wandb

            wandb.init(
                project=args.wandb_project_name,
                entity=args.wandb_entity,
                sync_tensorboard=True,
                config=flat_args(args),
                name=os.path.basename(run_dir),
                save_code=True,
                resume="allow",
            )
        self.writer = SummaryWriter(run_dir, purge_step=start_step + 1 if start_step else 0)  # no step logged twice
        table = "\n".join(f"|{k}|{v}|" for k, v in flat_args(args).items())
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
        with open(os.path.join(run_dir, "args.json"), "w") as f:
            json.dump({"script": SCRIPT, **flat_args(args)}, f, indent=1)

    def log(self, step: int, metrics: dict, completions: list[dict] = ()) -> None:
        if not self.writer:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        for name, rows in (("metrics.jsonl", [metrics]), ("completions.jsonl", completions)):
            with open(os.path.join(self.run_dir, name), "a") as f:
                f.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C raises KeyboardInterrupt
    try:
        main(parse_args())
    except (UsageError, DataError, RunError) as error:  # one line; exit status 2: arguments or files, 1: the run
        message = error if isinstance(error, RunError) else " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1 if isinstance(error, RunError) else 2)
    except KeyboardInterrupt as interrupt:
        print(f"\ninterrupted: {interrupt or 'before the run started'}", file=sys.stderr)
        sys.exit(130)
