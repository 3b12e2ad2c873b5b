"""GRPO / DAPO / Dr.GRPO baseline for RL with verifiable rewards, with token-level entropy diagnostics.

Algorithm (ALGORITHMS.md §2, §7.2), for every step:
  1. Sample `prompts_per_step` prompts and `group_size` (G) responses each (vLLM on GPU, HF `generate`
     otherwise); grade each response with the math verifier: R_i ∈ {0, 1} (or ±1).
  2. Group advantage (§2.4): A_i = (R_i − mean_g R) / (std_g R + 1e-6), unbiased std;
     `--scale-rewards batch` uses the batch std, `none` (Dr.GRPO, §2.3) no std at all.
     DAPO dynamic sampling (`--filter-groups`): drop groups whose rewards are all equal and keep
     sampling up to `--max-gen-batches` generation batches.
  3. Old log-probs ℓ^old, entropy H and G = Σ p²(log p + H) from one no-grad pass of the trainer.
  4. For `--update-epochs` × `--num-minibatches` optimizer steps, minimise the dual-clip PPO token loss
     (§2.5)   L_t = max(−A r, −A clip(r, 1−ε_low, 1+ε_high)),  and for A < 0: min(L_t, −A c),
     r = exp(ℓ − ℓ^old), aggregated with `--loss-agg-mode` (§2.6), optionally + β·KL_k3(π‖π_ref)
     − α·H (entropy bonus, the "Entropy-Reg" baseline).
  5. Positive-advantage reweighting (arXiv 2511.05993, §7.2): L_t ← λ·L_t on tokens with A > 0;
     λ constant (`--pos-weight`, 1 = plain GRPO) or entropy-guided: λ ← clip(λ ∓ Δ, 0, 1) when the
     batch entropy is below / above δ (δ = 0.2, Δ = 0.05, λ₀ = 0).

Every script of this repository also logs the first-order entropy change of each token's gradient (§1.1)
  ΔH_t = −w_t A_t r_t [π_t (ℓ_t + H_t) − G_t]   (η dropped; w_t the method's token weight; 0 if clipped)
and its flows per loss token: I/N (entropy-increasing tokens), D/N (decreasing) and net (I − D)/N.

Deliberately left out: a value model, reward models, sequence packing, fused linear-cross-entropy
kernels, multi-node vLLM servers. Dual-clip c defaults to 10 (the entropy papers' scripts), not
verl's 3. `seq-mean-token-sum-norm` follows verl (no division by the number of sequences).

Run:  python grpo.py                       # CPU, testbed model, synthetic arithmetic (minutes)
      python grpo.py --help                # every flag
      accelerate launch --config_file configs/zero3.yaml grpo.py --model Qwen/Qwen2.5-Math-7B ...
"""

# ─── SHARED: imports ───────────────────────────────────────────────────────────────────────────
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
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


# ─── SHARED: arguments ─────────────────────────────────────────────────────────────────────────
@dataclass
class SharedArgs:
    # experiment
    exp_name: str = os.path.splitext(os.path.basename(__file__))[0]
    """name of the experiment (defaults to the script's file name)"""
    seed: int = 1
    """seed of the experiment (data order, sampling, initialisation of any new parameters)"""
    torch_deterministic: bool = True
    """deterministic torch algorithms where they exist (`torch.use_deterministic_algorithms(warn_only=True)`)"""
    track: bool = False
    """mirror the TensorBoard logs to Weights & Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "rlvr-entropy"
    """Weights & Biases project"""
    wandb_entity: str | None = None
    """Weights & Biases entity (team)"""
    output_dir: str = "runs"
    """parent directory of the run directories"""
    run_name: str | None = None
    """run directory name; default `{train_data}__{exp_name}__{seed}__{unix time}`"""
    resume: str | None = None
    """run directory to resume from its latest checkpoint (continues writing into it)"""

    # model and data
    model: str = TESTBED_MODEL
    """Hugging Face model id or local folder (default: the committed CPU testbed model)"""
    train_data: str = "arith"
    """training problems: a benchmark/training-set name, a local .jsonl/.json/.parquet file, or a hub dataset"""
    train_split: str | None = None
    """split of `train_data` (default: the loader's default)"""
    eval_data: str = "arith"
    """held-out problems evaluated every `eval_every` steps (same forms as `train_data`)"""
    eval_split: str | None = "test"
    """split of `eval_data`"""
    data_dir: str | None = None
    """directory of the benchmark files (default: $RLVR_DATA_DIR, else ../shared/data)"""
    template: Literal["plain", "qwen-math", "dapo"] = "plain"
    """prompt template (`plain` for the testbed, `qwen-math` or `dapo` for real models)"""
    max_prompt_length: int = 1024
    """prompts with more tokens are skipped at load time (the count is printed)"""

    # rollout
    rollout_engine: Literal["auto", "vllm", "hf"] = "auto"
    """`auto` = vLLM when CUDA and vLLM are available, else Hugging Face `generate`"""
    prompts_per_step: int = 16
    """prompts per rollout step, summed over all processes"""
    group_size: int = 8
    """responses per prompt (G)"""
    temperature: float = 1.0
    """rollout sampling temperature (the trainer divides its logits by it too)"""
    top_p: float = 1.0
    """rollout nucleus sampling (keep 1.0 for unbiased RL)"""
    max_new_tokens: int = 64
    """maximum response length in tokens"""
    hf_generation_batch_size: int = 256
    """sequences per `generate` call of the HF engine"""
    vllm_gpu_memory_utilization: float = 0.3
    """fraction of total GPU memory vLLM may take (colocated with training)"""
    vllm_sleep_mode: bool = False
    """offload vLLM weights and free its KV cache between rollouts (sleep level 1)"""
    vllm_max_model_len: int = 4096
    """vLLM context length (prompt + response)"""

    # rewards and advantages
    answer_mode: Literal["auto", "boxed", "answer"] = "auto"
    """how the final answer is extracted from a response (last \\boxed{}, DAPO `Answer:` line, or either)"""
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

    # optimisation
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

    # loss
    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − ε_low (for A < 0)"""
    clip_high: float = 0.28
    """ε_high: the ratio is clipped above at 1 + ε_high (for A > 0); DAPO clip-higher"""
    dual_clip_c: float = 10.0
    """dual-clip bound c for A < 0 (loss ≤ −A·c); 0 disables"""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """loss aggregation (ALGORITHMS §2.6); token-mean divides by the global token count of the minibatch"""
    loss_scale_factor: float | None = None
    """constant divisor of `seq-mean-token-sum-norm` (default: max_new_tokens)"""
    kl_coef: float = 0.0
    """β of the k3 KL penalty to the initial model (the reference model is loaded only when > 0)"""
    ent_coef: float = 0.0
    """α of the entropy bonus −α·H_t (the "Entropy-Reg" baseline)"""

    # diagnostics, evaluation, checkpoints
    entropy_chunk_size: int = 1024
    """rows of [tokens × vocab] processed at once for log-probs, entropy and G"""
    measure_entropy_change: bool = False
    """re-run the batch after the update and log the realised entropy change (one extra forward)"""
    eval_every: int = 25
    """evaluate every this many steps (and at the end); 0 = never"""
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
    """save a resumable checkpoint every this many steps (and at the end); 0 = only the final model"""
    keep_checkpoints: int = 2
    """most recent checkpoints kept on disk"""

# ─── ALGORITHM: arguments ──────────────────────────────────────────────────────────────────────
@dataclass
class Args(SharedArgs):
    pos_weight_schedule: Literal["constant", "entropy-guided"] = "constant"
    """positive-advantage reweighting (arXiv 2511.05993): constant λ, or the entropy-guided schedule"""
    pos_weight: float = 1.0
    """λ for the constant schedule: weight of tokens with A > 0 (1 = plain GRPO)"""
    pos_weight_init: float = 0.0
    """λ₀ of the entropy-guided schedule"""
    pos_weight_target_entropy: float = 0.2
    """δ of the entropy-guided schedule: λ falls while the batch entropy is below δ, rises above it"""
    pos_weight_step: float = 0.05
    """Δ of the entropy-guided schedule: change of λ per step"""


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
    """d(Σ grad_logp·ℓ + grad_entropy·H)/dz for logits [c, V]: ∂ℓ/∂z = e_a − p, ∂H/∂z = −p (log p + H).
    Two [c, V] buffers."""
    grad = logits.to(lse.dtype, copy=True).sub_(lse[:, None])  # log p
    p = grad.exp()
    grad.add_(entropy[:, None]).mul_(grad_entropy[:, None]).add_(grad_logp[:, None]).mul_(p).neg_()
    del p
    grad.scatter_add_(1, tokens[:, None], grad_logp[:, None])
    return grad.to(logits.dtype)


# On CUDA, torch.compile fuses each chunk's passes over the vocabulary into a few kernels (no [c, V]
# temporaries; ~10x faster than the eager version, see benchmarks/bench_token_stats.py).
_compiled = {}


def _maybe_compiled(fn, use_compile: bool):
    if not use_compile:
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=None)
    return _compiled[fn]


class _TokenStats(torch.autograd.Function):
    """Sampled-token log-prob ℓ, entropy H and G from logits [N, V], in row chunks of `chunk_size`.
    ℓ and H are differentiable; G is not. Only the logits and four [N] vectors are kept for the backward,
    which recomputes the softmax chunk by chunk."""

    @staticmethod
    def forward(ctx, logits, tokens, chunk_size, use_compile):
        stats = _maybe_compiled(_chunk_stats, use_compile)
        with torch.autocast(logits.device.type, enabled=False):  # full precision even inside autocast
            chunks = [stats(logits[i: i + chunk_size], tokens[i: i + chunk_size]) for i in range(0, logits.shape[0], chunk_size)]
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
                grad[rows] = chunk_grad(logits[rows], tokens[rows], lse[rows], entropy[rows], grad_logp[rows], grad_entropy[rows])
        return grad, None, None, None


def token_stats(logits: torch.Tensor, tokens: torch.Tensor, chunk_size: int = 1024, compile: bool | None = None):
    """(logp, entropy, g), each fp32 [N] (fp64 for fp64 logits), from logits [N, V] (already divided by
    the temperature) and sampled tokens [N]. logp and entropy carry gradients when `logits` does; g never
    does. `compile` (default: on CUDA) fuses the per-chunk work with torch.compile."""
    use_compile = logits.is_cuda if compile is None else compile
    return _TokenStats.apply(logits, tokens, chunk_size, use_compile)


def entropy_delta(adv, ratio, logp, entropy, g, clipped):
    """First-order entropy change of each token under one policy-gradient step (§1.1), without η:
    ΔH_t = −A_t r_t [π_t (ℓ_t + H_t) − G_t], and 0 where the token's gradient is clipped."""
    delta = -adv * ratio * (logp.exp() * (logp + entropy) - g)
    return torch.where(clipped, torch.zeros_like(delta), delta)


def masked_sum(x, mask):
    return (x * mask).sum()


# ─── SHARED: advantages and loss aggregation ───────────────────────────────────────────────────
def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO advantages (§2.4) of rewards [n_groups · G], groups contiguous.
    group: (R − mean_g) / (std_g + 1e-6) with unbiased std (a group of 1 has mean 0, std 1);
    batch: (R − mean_g) / (std of the whole batch + 1e-6);  none (Dr.GRPO): R − mean_g."""
    grouped = rewards.float().view(-1, group_size)
    if group_size == 1:
        return rewards.float().clone()
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
    """DAPO overlong reward shaping (§2.2.5): 0 up to max_len − buffer, then linear down to −factor."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    excess = lengths.float() - (max_len - buffer)
    return torch.clamp(-excess / buffer * factor, max=0.0)


def aggregate_loss(per_token_loss, mask, mode: str, global_tokens: float, global_seqs: float,
                   world_size: int, scale_factor: float) -> torch.Tensor:
    """Aggregate a [B, T] token loss of one micro-batch so that the sum over micro-batches and
    processes (DDP averages gradients, hence × world_size) equals the minibatch loss of §2.6:
      token-mean               Σ m·ℓ / (tokens of the minibatch, all processes)
      seq-mean-token-sum       Σ_i Σ_t m·ℓ / B
      seq-mean-token-mean      Σ_i (Σ_t m·ℓ / Σ_t m) / B
      seq-mean-token-sum-norm  Σ m·ℓ / scale_factor          (verl / Dr.GRPO: no division by B)"""
    if mode == "token-mean":
        total = masked_sum(per_token_loss, mask) / max(global_tokens, 1.0)
    elif mode == "seq-mean-token-sum":
        total = masked_sum(per_token_loss, mask) / max(global_seqs, 1.0)
    elif mode == "seq-mean-token-mean":
        per_seq = (per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        total = per_seq.sum() / max(global_seqs, 1.0)
    elif mode == "seq-mean-token-sum-norm":
        total = masked_sum(per_token_loss, mask) / scale_factor
    else:
        raise ValueError(f"unknown loss_agg_mode {mode!r}")
    return total * world_size


def clipped_surrogate(adv, ratio, clip_low: float, clip_high: float, dual_clip_c: float):
    """Dual-clip PPO token loss (§2.5) and its clip indicators, all [B, T].
    L = max(−A r, −A clip(r, 1−ε_l, 1+ε_h)); for A < 0 also L = min(L, −A c)."""
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    if dual_clip_c > 0:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip_c), loss)
    clipped_high = (adv > 0) & (ratio > 1.0 + clip_high)
    clipped_low = (adv < 0) & (ratio < 1.0 - clip_low)
    if dual_clip_c > 0:
        clipped_low = clipped_low | ((adv < 0) & (ratio > dual_clip_c))
    return loss, clipped_low, clipped_high


def k3_kl(logp_ref, logp):
    """k3 estimator of KL(π‖π_ref) per token: π_ref/π − log(π_ref/π) − 1 (§2.1)."""
    log_ratio = (logp_ref - logp).clamp(-20, 20)
    return log_ratio.exp() - log_ratio - 1.0


# ─── ALGORITHM: loss ───────────────────────────────────────────────────────────────────────────
def pos_weight_update(weight: float, entropy: float, target: float, step: float) -> float:
    """Entropy-guided λ (arXiv 2511.05993 §7.2): λ ← clip(λ − Δ, 0, 1) if H < δ else clip(λ + Δ, 0, 1)."""
    return float(min(max(weight - step if entropy < target else weight + step, 0.0), 1.0))


def init_algorithm_state(args: Args) -> dict:
    """Per-run algorithm state; saved in checkpoints."""
    return {"pos_weight": args.pos_weight if args.pos_weight_schedule == "constant" else args.pos_weight_init}


def algorithm_step_begin(state: dict, args: Args, batch: dict, reduce_sum) -> dict:
    """Called once per step with the whole rollout batch (after the old-policy pass). Returns metrics."""
    return {"algo/pos_weight": state["pos_weight"]}


def compute_policy_loss(mb: dict, args: Args, state: dict):
    """Token loss [b, R] of one micro-batch and `info`: ratio, weight (the factor on each token's policy
    gradient, for the entropy flows), clipped_low/clipped_high, and optional `algo/...` scalars.
    `mb` holds, each [b, R]: logp and entropy_current (with grad), logp_old, entropy and g (old policy,
    no grad), adv, loss_mask."""
    ratio = torch.exp((mb["logp"] - mb["logp_old"]).clamp(-20, 20))
    loss, clipped_low, clipped_high = clipped_surrogate(mb["adv"], ratio, args.clip_low, args.clip_high, args.dual_clip_c)
    weight = torch.where(mb["adv"] > 0, torch.full_like(loss, state["pos_weight"]), torch.ones_like(loss))
    return loss * weight, {"ratio": ratio.detach(), "weight": weight, "clipped_low": clipped_low, "clipped_high": clipped_high}


def algorithm_step_end(state: dict, args: Args, metrics: dict) -> None:
    """Called after the update with the step's reduced metrics."""
    if args.pos_weight_schedule == "entropy-guided":
        state["pos_weight"] = pos_weight_update(
            state["pos_weight"], metrics["entropy/mean"], args.pos_weight_target_entropy, args.pos_weight_step)

# ─── SHARED: rollout ───────────────────────────────────────────────────────────────────────────
class _SampledLogprobRecorder(LogitsProcessor):
    """Applies the temperature as the last logits processor and records the log-prob of each sampled
    token (`generate` samples from softmax of what this returns), keeping one [B, V] row at a time."""

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
    """Length of each generated row [B, T] up to and including its first stop token, and whether it has
    none (truncated). Both [B]."""
    is_stop = torch.isin(generated, torch.tensor(stop_ids, device=generated.device))
    truncated = ~is_stop.any(dim=1)
    lengths = torch.where(truncated, generated.shape[1], is_stop.int().argmax(dim=1) + 1)
    return lengths, truncated


@torch.no_grad()
def hf_generate(model, prompt_ids: list[list[int]], n: int, temperature: float, top_p: float,
                max_new_tokens: int, stop_ids: list[int], pad_id: int, batch_size: int) -> list[dict]:
    """Hugging Face engine: n samples per prompt. Returns one dict per sample (prompt-major order) with
    prompt_ids, response_ids, rollout_logp (log-probs of the sampled tokens at `temperature`), truncated."""
    if top_p < 1.0:  # top-p would act after the recorder: the recorded log-probs would be wrong
        raise ValueError("the HF engine samples with top_p = 1 only (unbiased RL rollouts); use vLLM for top_p < 1")
    rows = [ids for ids in prompt_ids for _ in range(n)]
    results = []
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        width = max(len(r) for r in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):  # left padding
            input_ids[i, width - len(r):] = torch.tensor(r)
            attention[i, width - len(r):] = 1
        recorder = _SampledLogprobRecorder(temperature)
        out = model.generate(  # every sampling knob explicit: the model's generation_config must not leak in
            input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
            temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([recorder]), eos_token_id=stop_ids, pad_token_id=pad_id,
        )
        generated = out[:, width:]
        logps = recorder.finish(generated[:, -1]).cpu()
        lengths, truncated = (x.tolist() for x in response_lengths(generated, stop_ids))
        for i, (r, tokens) in enumerate(zip(chunk, generated.tolist())):
            results.append({"prompt_ids": r, "response_ids": tokens[: lengths[i]], "truncated": truncated[i],
                            "rollout_logp": logps[i, : lengths[i]].tolist()})
    return results


# ── GPU only: vLLM engine (colocated, one engine per process, tensor parallel 1; ANCHORS §4.5) ──
def vllm_sampling_kwargs(n: int, temperature: float, top_p: float, max_new_tokens: int, stop_ids: list[int]) -> dict:
    """Keyword arguments of vllm.SamplingParams for RL rollouts: unbiased sampling, stop tokens, and the
    sampled token's log-prob (logprobs=0) after temperature (engine logprobs_mode=processed_logprobs)."""
    return dict(n=n, temperature=temperature, top_p=top_p, top_k=0, min_p=0.0, repetition_penalty=1.0,  # top_k 0 = off
                max_tokens=max_new_tokens, logprobs=0, stop_token_ids=list(stop_ids), skip_special_tokens=False)


def vllm_requests(prompt_ids: list[list[int]]) -> list[dict]:
    """Token-in prompts for LLM.generate (no re-tokenisation)."""
    return [{"prompt_token_ids": list(ids)} for ids in prompt_ids]


def parse_vllm_outputs(outputs, prompt_ids: list[list[int]]) -> list[dict]:
    """vLLM RequestOutputs -> the same per-sample dicts as `hf_generate` (prompt-major order).
    `token_ids` already ends with the stop token when finish_reason is "stop" (vLLM 0.33); any other
    finish reason ("length", "abort", ...) counts as truncated."""
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
    """Create this process's vLLM engine before the optimizer state exists (memory check at start-up).
    Every process builds its engine at the same point (vLLM creates process groups collectively)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: weights reachable
    os.environ.setdefault("RANK", str(accelerator.process_index))
    os.environ.setdefault("LOCAL_RANK", str(accelerator.local_process_index))
    os.environ.setdefault("WORLD_SIZE", str(accelerator.num_processes))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    from vllm import LLM

    llm = LLM(
        model=args.model, distributed_executor_backend="external_launcher", tensor_parallel_size=1,
        seed=args.seed + accelerator.process_index, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        max_model_len=args.vllm_max_model_len, enable_prefix_caching=True, enable_sleep_mode=args.vllm_sleep_mode,
        logprobs_mode="processed_logprobs", dtype="bfloat16", max_num_batched_tokens=max(4096, args.vllm_max_model_len),
    )
    if args.vllm_sleep_mode:
        llm.sleep(level=1)  # level 1 keeps the weights (on CPU), so a wake-up is always valid
    return llm


@contextmanager
def full_parameters(model, accelerator):
    """Yield [(HF name, full tensor)] of the policy on every process: gathered under ZeRO-3 and FSDP
    (inside the context only), plain parameters otherwise."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(unwrapped.parameters()), modifier_rank=None):
            yield [(name, p.detach()) for name, p in unwrapped.named_parameters()]
    elif accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, writeback=False, rank0_only=False, offload_to_cpu=False):
            yield [(name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", ""), p.detach())
                   for name, p in model.named_parameters()]
    else:
        yield [(name, p.detach()) for name, p in unwrapped.named_parameters()]


@torch.no_grad()
def sync_weights_to_vllm(llm, model, accelerator, sleep_mode: bool) -> None:
    """Push the trainer's current weights into the engine and drop the prefix cache (its KV came from
    the old weights); wakes a sleeping engine. Never `reload_weights` after this. vLLM's Qwen2/Llama
    `load_weights` takes HF names (it stacks q/k/v and gate/up itself); all tensors go in one call so
    tied embeddings are complete (vLLM 0.33 `models/utils.py`)."""
    if sleep_mode:
        torch.cuda.empty_cache()
        llm.wake_up(tags=["weights"])  # never load into sleeping (unmapped) memory
    with full_parameters(model, accelerator) as weights:
        llm.apply_model(lambda vllm_model: vllm_model.load_weights(iter(weights)))  # in-process: no serialisation
    llm.reset_prefix_cache()
    if sleep_mode:
        llm.wake_up(tags=["kv_cache"])


def vllm_generate(llm, prompt_ids, n, temperature, top_p, max_new_tokens, stop_ids) -> list[dict]:
    from vllm import SamplingParams

    params = SamplingParams(**vllm_sampling_kwargs(n, temperature, top_p, max_new_tokens, stop_ids))
    outputs = llm.generate(vllm_requests(prompt_ids), sampling_params=params, use_tqdm=False)
    return parse_vllm_outputs(outputs, prompt_ids)


def collate(samples: list[dict], pad_id: int) -> dict:
    """Per-sample dicts -> tensors: input_ids/attention_mask [B, P+R] (prompt left-padded, response
    right-padded), response_ids/response_mask/rollout_logp [B, R], truncated [B]."""
    prompt_width = max(len(s["prompt_ids"]) for s in samples)
    response_width = max(max(len(s["response_ids"]) for s in samples), 1)
    b = len(samples)
    input_ids = torch.full((b, prompt_width + response_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros((b, response_width))
    rollout_logp = torch.zeros((b, response_width))
    for i, s in enumerate(samples):
        p, r = s["prompt_ids"], s["response_ids"]
        input_ids[i, prompt_width - len(p): prompt_width] = torch.tensor(p)
        input_ids[i, prompt_width: prompt_width + len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, prompt_width - len(p): prompt_width + len(r)] = 1
        response_mask[i, : len(r)] = 1.0
        rollout_logp[i, : len(r)] = torch.tensor(s["rollout_logp"][: len(r)])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_ids": input_ids[:, prompt_width:],
            "response_mask": response_mask, "rollout_logp": rollout_logp,
            "truncated": torch.tensor([s["truncated"] for s in samples])}


def response_logits(model, input_ids, attention_mask, response_width: int, temperature: float):
    """Logits [B, R+1, V] predicting the response tokens (row j predicts response token j; the last row
    is unused), divided by the temperature in place. Positions follow the left padding, as in generate."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=response_width + 1, use_cache=False).logits
    return logits.div_(temperature)


def micro_batch_stats(model, batch: dict, rows, args, temperature: float):
    """logp, entropy, g [b, R] of the rows `rows` of `batch` (one forward; grads flow if enabled).
    Leading all-padding prompt columns and trailing all-padding response columns are trimmed."""
    mask = batch["response_mask"][rows]
    width = int(mask.sum(0).nonzero().max()) + 1 if mask.any() else 1
    full_width = batch["response_mask"].shape[1]
    attention = batch["attention_mask"][rows][:, : batch["input_ids"].shape[1] - full_width + width]
    first = int(attention.sum(0).nonzero().min())
    input_ids = batch["input_ids"][rows][:, first: attention.shape[1]]
    attention = attention[:, first:]
    logits = response_logits(model, input_ids, attention, width, temperature)  # [b, width+1, V]
    tokens = torch.cat([batch["response_ids"][rows][:, :width], torch.zeros_like(input_ids[:, :1])], dim=1)
    logp, entropy, g = token_stats(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), args.entropy_chunk_size)
    pad = full_width - width
    shape = (len(input_ids), width + 1)
    return [torch.nn.functional.pad(x.view(shape)[:, :width], (0, pad)) for x in (logp, entropy, g)]

# ─── SHARED: logging, evaluation, checkpoints ──────────────────────────────────────────────────
def encode_problems(problems: list[dict], tokenizer, template: str, max_prompt_length: int) -> list[dict]:
    """Attach prompt token ids; prompts longer than `max_prompt_length` are skipped and counted."""
    encoded, skipped = [], 0
    for p in problems:
        ids = tokenizer(build_prompt(p["question"], template, tokenizer), add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            skipped += 1
            continue
        encoded.append({**p, "prompt_ids": ids})
    if skipped:
        print(f"skipped {skipped} of {len(problems)} prompts longer than {max_prompt_length} tokens")
    if not encoded:
        raise ValueError("no usable prompts (all longer than --max-prompt-length?)")
    return encoded


def generate(model, llm, accelerator, prompt_ids, n, temperature, args, stop_ids, pad_id) -> list[dict]:
    """Rollout with the chosen engine (a vLLM engine must hold the current weights: `sync_weights_to_vllm`);
    samples in prompt-major order (n per prompt)."""
    if llm is not None:
        return vllm_generate(llm, prompt_ids, n, temperature, args.top_p, args.max_new_tokens, stop_ids)
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    with accelerator.autocast():
        samples = hf_generate(unwrapped, prompt_ids, n, temperature, args.top_p, args.max_new_tokens,
                              stop_ids, pad_id, args.hf_generation_batch_size)
    unwrapped.train(was_training)
    return samples


def reduce_metrics(accelerator, sums: dict, counts: dict, maxes: dict) -> dict:
    """Global metrics: Σsum/Σcount over processes for each key of `sums`, max for `maxes`.
    Every process must pass the same keys."""
    device = accelerator.device
    keys, max_keys = sorted(sums), sorted(maxes)
    totals = torch.tensor([float(sums[k]) for k in keys] + [float(counts[k]) for k in keys], device=device, dtype=torch.float64)
    totals = accelerator.reduce(totals, reduction="sum") if accelerator.num_processes > 1 else totals
    out = {k: (totals[i] / totals[len(keys) + i]).item() if totals[len(keys) + i] > 0 else float("nan") for i, k in enumerate(keys)}
    if max_keys:
        values = torch.tensor([float(maxes[k]) for k in max_keys], device=device, dtype=torch.float64)
        values = accelerator.gather(values[None]).amax(0) if accelerator.num_processes > 1 else values
        out.update({k: values[i].item() for i, k in enumerate(max_keys)})
    return out


def evaluate(model, llm, accelerator, problems, args, tokenizer, stop_ids, step: int) -> dict:
    """avg@n accuracy (and response length) on the held-out problems, sharded over processes. Shards are
    padded to equal length (padding is generated but not scored) so every process runs the same calls."""
    world = accelerator.num_processes
    per_rank = math.ceil(len(problems) / world)
    padded = problems + problems[: per_rank * world - len(problems)]
    shard = padded[accelerator.process_index * per_rank: (accelerator.process_index + 1) * per_rank]
    real = max(0, min(per_rank, len(problems) - accelerator.process_index * per_rank))
    if llm is not None:
        sync_weights_to_vllm(llm, model, accelerator, args.vllm_sleep_mode)
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # evaluation never perturbs the training RNG stream
        torch.manual_seed(args.seed * 7919 + step * 104729 + accelerator.process_index)
        samples = generate(model, llm, accelerator, [p["prompt_ids"] for p in shard], args.eval_n, args.eval_temperature,
                           args, stop_ids, tokenizer.pad_token_id)[: real * args.eval_n]
    if llm is not None and args.vllm_sleep_mode:
        llm.sleep(level=1)
    texts = tokenizer.batch_decode([s["response_ids"] for s in samples], skip_special_tokens=True)
    golds = [p["answer"] for p in shard[:real] for _ in range(args.eval_n)]
    rewards = score(texts, golds, mode=args.answer_mode, timeout_s=args.grader_timeout_s, num_workers=args.grader_workers)
    n = float(len(samples))
    sums = {"eval/accuracy": sum(r > 0 for r in rewards), "eval/response_length_mean": sum(len(s["response_ids"]) for s in samples)}
    return reduce_metrics(accelerator, sums, {k: n for k in sums}, {})


def latest_checkpoint(run_dir: str) -> str | None:
    root = os.path.join(run_dir, "checkpoints")
    done = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp")) if os.path.isdir(root) else []
    return os.path.join(root, done[-1]) if done else None


def save_checkpoint(accelerator, model, tokenizer, run_dir: str, step: int, trainer_state: dict, keep: int) -> None:
    """Resumable checkpoint, written to `step_N.tmp` and renamed to `step_N` only when complete:
    accelerate state (model, optimizer, scheduler, RNG states of every process), the model and tokenizer in
    Hugging Face format (`hf/`), and `trainer_state.json` (step, data position, algorithm state)."""
    root = os.path.join(run_dir, "checkpoints")
    final, tmp = os.path.join(root, f"step_{step:06d}"), os.path.join(root, f"step_{step:06d}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)  # model, optimizer, scheduler, and the RNG states of every process
    state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3 / FSDP
    accelerator.wait_for_everyone()  # every process has written its files before the rename
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(os.path.join(tmp, "hf"), state_dict=state_dict)
        tokenizer.save_pretrained(os.path.join(tmp, "hf"))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(trainer_state, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))[: -max(keep, 1)]:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    accelerator.wait_for_everyone()


class RunLogger:
    """TensorBoard (`runs/<run_name>`), `metrics.jsonl` (one line per step), optional W&B, sample completions."""

    def __init__(self, run_dir: str, args, enabled: bool, resume_step: int):
        self.enabled, self.run_dir = enabled, run_dir
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        for name in ("metrics.jsonl", "completions.jsonl"):  # on resume, drop lines logged after the checkpoint
            path = os.path.join(run_dir, name)
            if resume_step and os.path.exists(path):
                with open(path) as f:
                    kept = [line for line in f if json.loads(line)["step"] <= resume_step]
                with open(path, "w") as f:
                    f.writelines(kept)
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=vars(args), name=os.path.basename(run_dir), save_code=True, resume="allow")
        self.writer = SummaryWriter(run_dir)
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
        with open(os.path.join(run_dir, "args.json"), "w") as f:
            json.dump(asdict(args), f, indent=1)
        self.metrics_file = open(metrics_path, "a")

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.metrics_file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.metrics_file.flush()

    def completions(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        with open(os.path.join(self.run_dir, "completions.jsonl"), "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        self.writer.add_text("completions", "\n\n".join(f"**{r['reward']:+.0f}** `{r['prompt']}` → `{r['response']}`" for r in rows), step)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.metrics_file.close()

# ─── SHARED: main loop ─────────────────────────────────────────────────────────────────────────
def main(args: Args) -> str:
    # ── setup: accelerator, seeding, run directory
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and torch.cuda.is_available())
    # cpu=True without CUDA: processes started by `accelerate launch --multi_gpu` / torchrun use gloo (MULTI_CPU)
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    if args.prompts_per_step % world:
        raise ValueError(f"--prompts-per-step {args.prompts_per_step} must be divisible by the {world} processes")
    prompts_per_rank = args.prompts_per_step // world
    seqs_per_rank = prompts_per_rank * args.group_size
    if seqs_per_rank % args.num_minibatches:
        raise ValueError(f"{seqs_per_rank} sequences per process do not split into {args.num_minibatches} minibatches")
    minibatch_size = seqs_per_rank // args.num_minibatches
    micro_steps = math.ceil(minibatch_size / args.micro_batch_size)
    is_deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if is_deepspeed:  # the engine accumulates `micro_steps` backward calls, clips, then steps
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config.update(gradient_accumulation_steps=micro_steps, train_micro_batch_size_per_gpu=args.micro_batch_size,
                         gradient_clipping=args.max_grad_norm)

    def seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    seed_everything(args.seed)
    if args.torch_deterministic:  # vLLM sampling stays non-deterministic (ANCHORS §3.5)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    run_name = [args.run_name or f"{os.path.basename(args.train_data)}__{args.exp_name}__{args.seed}__{int(time.time())}"]
    run_name = broadcast_object_list(run_name)[0]  # one directory for all processes (their clocks may differ)
    run_dir = args.resume or os.path.join(args.output_dir, run_name)
    checkpoint = latest_checkpoint(run_dir) if args.resume else None
    if args.resume and checkpoint is None:
        raise FileNotFoundError(f"--resume {args.resume}: no finished checkpoint under {run_dir}/checkpoints")

    # ── data
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id
    try:  # stop at the tokenizer's EOS, the generation config's EOS ids and, for chat templates, <|im_end|>
        generation_eos = GenerationConfig.from_pretrained(args.model).eos_token_id
    except OSError:
        generation_eos = None
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if args.template != "plain" and "<|im_end|>" in tokenizer.get_vocab() else None
    stop_ids = sorted({tokenizer.eos_token_id, im_end, *(generation_eos if isinstance(generation_eos, list) else [generation_eos])} - {None})
    train_problems = encode_problems(load_problems(args.train_data, split=args.train_split, data_dir=args.data_dir),
                                     tokenizer, args.template, args.max_prompt_length)
    eval_problems = []
    if args.eval_every > 0:
        eval_problems = encode_problems(load_problems(args.eval_data, split=args.eval_split, data_dir=args.data_dir,
                                                      limit=args.num_eval_problems), tokenizer, args.template, args.max_prompt_length)

    # ── rollout engine: vLLM is built before any optimizer state (it checks free memory at start-up)
    engine = "vllm" if args.rollout_engine == "vllm" or (args.rollout_engine == "auto" and vllm_available()) else "hf"
    llm = build_vllm_engine(args, accelerator) if engine == "vllm" else None
    seed_everything(args.seed)  # vLLM re-seeds the global RNGs in its worker

    # ── policy, optimizer, schedule (and the reference model only when the KL term is on)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    for module in model.modules():  # dropout would make the on-policy ratio differ from 1
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)

    def lr_factor(step: int) -> float:
        if step < args.lr_warmup_steps:
            return (step + 1) / args.lr_warmup_steps
        if args.lr_schedule == "cosine":
            progress = (step - args.lr_warmup_steps) / max(1, args.total_steps - args.lr_warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)  # stepped once per rollout step
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    ref_model = None
    if args.kl_coef > 0:  # a plain (unsharded) frozen copy, also under ZeRO-3
        zero3_off = accelerator.state.deepspeed_plugin.zero3_init_context_manager(enable=False) if is_deepspeed else nullcontext()
        with zero3_off:
            ref_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if use_bf16 else torch.float32)
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

    epoch_orders = {}

    def take_prompts(pos: int) -> list[dict]:
        """This process's share of the `prompts_per_step` prompts starting at global position `pos`
        (a fresh permutation of the training set every epoch)."""
        n = len(train_problems)
        picked = []
        for i in range(pos + rank * prompts_per_rank, pos + (rank + 1) * prompts_per_rank):
            if i // n not in epoch_orders:
                epoch_orders[i // n] = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1_000_003 + i // n))
            picked.append(train_problems[int(epoch_orders[i // n][i % n])])
        return picked

    def reduce_sum(x: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(x.clone(), reduction="sum") if world > 1 else x

    def stats_pass(batch: dict, which_model) -> tuple[torch.Tensor, ...]:
        """No-grad logp, entropy, G [B, R] of the whole batch, in micro-batches."""
        outs = [[], [], []]
        with torch.no_grad(), accelerator.autocast():
            for rows in torch.arange(len(batch["response_mask"])).split(args.micro_batch_size):
                for out, x in zip(outs, micro_batch_stats(which_model, batch, rows, args, args.temperature)):
                    out.append(x)
        return tuple(torch.cat(o) for o in outs)

    if args.eval_every > 0 and start_step == 0:  # the starting point of the eval curve
        model.eval()
        initial = evaluate(model, llm, accelerator, eval_problems, args, tokenizer, stop_ids, 0)
        logger.log(0, initial)
        accelerator.print(f"step    0 | eval {initial['eval/accuracy']:.3f}")

    # ── the loop
    for step in range(start_step + 1, args.total_steps + 1):
        step_start = time.time()
        seed_everything(args.seed * 10_007 + step * 101 + rank)  # sampling is a function of (seed, step, rank)
        sums, counts, maxes = {}, {}, {}

        def add(name, total, count):
            sums[name] = sums.get(name, 0.0) + float(total)
            counts[name] = counts.get(name, 0.0) + float(count)

        # ── 1. rollout and grading, with DAPO dynamic sampling
        kept, dropped, rollout_s, grading_s, gen_batches, timeouts = [], [], 0.0, 0.0, 0, 0
        if llm is not None:
            sync_weights_to_vllm(llm, model, accelerator, args.vllm_sleep_mode)
        while True:
            problems = take_prompts(data_pos)
            data_pos += args.prompts_per_step
            gen_batches += 1
            t0 = time.time()
            samples = generate(model, llm, accelerator, [p["prompt_ids"] for p in problems], args.group_size,
                               args.temperature, args, stop_ids, pad_id)
            rollout_s += time.time() - t0
            t0 = time.time()
            texts = tokenizer.batch_decode([s["response_ids"] for s in samples], skip_special_tokens=True)
            golds = [p["answer"] for p in problems for _ in range(args.group_size)]
            rewards = score(texts, golds, mode=args.answer_mode, timeout_s=args.grader_timeout_s,
                            num_workers=args.grader_workers, reward_range=args.reward_range)
            grading_s += time.time() - t0
            timeouts += rewards.timeouts
            correct = torch.tensor([r > 0 for r in rewards], dtype=torch.float32)
            informative = informative_groups(correct, args.group_size)
            add("rollout/accuracy", correct.sum(), len(correct))
            add("rollout/reward", sum(rewards), len(rewards))
            group_correct = correct.view(-1, args.group_size)
            add("rollout/filtered_group_frac", (~informative).sum() if args.filter_groups else 0, len(informative))
            add("rollout/all_correct_group_frac", (group_correct == 1).all(dim=1).sum(), len(informative))
            add("rollout/all_wrong_group_frac", (group_correct == 0).all(dim=1).sum(), len(informative))
            for g, problem in enumerate(problems):
                group = []
                for j in range(args.group_size):
                    i = g * args.group_size + j
                    group.append({**samples[i], "reward": rewards[i], "text": texts[i], "problem": problem})
                (kept if informative[g] or not args.filter_groups else dropped).append(group)
            if not args.filter_groups:
                break
            fewest = torch.tensor(float(len(kept)), device=accelerator.device)
            fewest = accelerator.gather(fewest[None]).min() if world > 1 else fewest
            if fewest >= prompts_per_rank or gen_batches >= args.max_gen_batches:
                break
        if llm is not None and args.vllm_sleep_mode:
            llm.sleep(level=1)  # free the KV cache for training
        # every process trains on exactly `prompts_per_rank` groups (same number of backward calls);
        # when the sampling budget ran out, all-equal groups fill the gap with their loss masked out
        padding = max(0, prompts_per_rank - len(kept))
        groups = kept[:prompts_per_rank] + dropped[:padding]
        samples = [s for group in groups for s in group]
        is_padding = torch.tensor([gi >= len(kept) for gi, group in enumerate(groups) for _ in group])

        # ── 2. rewards -> advantages (global statistics: advantages are computed on all processes' rewards)
        batch = {k: v.to(accelerator.device) for k, v in collate(samples, pad_id).items()}
        lengths = batch["response_mask"].sum(-1)
        shaped = torch.tensor([s["reward"] for s in samples], device=accelerator.device)
        shaped = shaped + overlong_penalty(lengths, args.max_new_tokens, args.overlong_buffer, args.overlong_penalty_factor)
        all_rewards = accelerator.gather(shaped) if world > 1 else shaped
        advantages = group_advantages(all_rewards, args.group_size, args.scale_rewards)
        advantages = advantages.view(world, -1)[rank]  # [B]
        loss_mask = batch["response_mask"].clone()
        loss_mask[is_padding.to(accelerator.device)] = 0.0
        if args.mask_truncated:
            loss_mask[batch["truncated"]] = 0.0
        batch["loss_mask"] = loss_mask
        batch["adv"] = advantages[:, None].expand_as(loss_mask).contiguous()  # [B, R]
        mask = batch["response_mask"]
        add("rollout/response_length_mean", lengths.sum(), len(lengths))
        maxes["rollout/response_length_max"] = lengths.max().item()
        add("rollout/truncated_frac", batch["truncated"].sum(), len(lengths))
        add("rollout/advantage_abs_mean", advantages.abs().sum(), len(advantages))

        # ── 3. old-policy pass: ℓ_old, H, G (no grad)
        t0 = time.time()
        model.eval()
        logp_old, entropy_old, g_old = stats_pass(batch, model)
        batch.update(logp_old=logp_old, entropy=entropy_old, g=g_old)
        if ref_model is not None:
            batch["logp_ref"] = stats_pass(batch, ref_model)[0]
        n_tokens = mask.sum()
        diff = (batch["rollout_logp"] - logp_old).abs() * mask
        add("rollout/logp_diff_mean", diff.sum(), n_tokens)
        maxes["rollout/logp_diff_max"] = diff.max().item()
        add("entropy/mean", masked_sum(entropy_old, mask), n_tokens)
        # token covariance Cov(A, ℓ) over the batch (§3.1, §9), with global means
        token_totals = reduce_sum(torch.stack([masked_sum(batch["adv"], mask), masked_sum(logp_old, mask), n_tokens]))
        adv_mean, logp_mean = token_totals[0] / token_totals[2], token_totals[1] / token_totals[2]
        add("entropy/cov_adv_logp", masked_sum((batch["adv"] - adv_mean) * (logp_old - logp_mean), mask), n_tokens)
        algo_metrics = algorithm_step_begin(algo_state, args, batch, reduce_sum)

        # ── 4. policy update: update_epochs × num_minibatches optimizer steps, with the predicted
        #       first-order entropy change ΔH_t of each token's gradient (current ratio, weight, clipping)
        model.train()
        skipped_updates = 0
        for epoch in range(args.update_epochs):
            order = torch.randperm(seqs_per_rank, generator=torch.Generator().manual_seed(args.seed * 31 + step * 7 + epoch))
            for mb_rows in order.split(minibatch_size):
                mb_totals = reduce_sum(torch.stack([batch["loss_mask"][mb_rows].sum(),
                                                    torch.tensor(float(len(mb_rows)), device=accelerator.device)]))
                micro_rows = mb_rows.split(args.micro_batch_size)
                for k, rows in enumerate(micro_rows):
                    last = k == len(micro_rows) - 1
                    if is_deepspeed:  # the engine steps only at the accumulation boundary
                        accelerator.sync_gradients = last
                    with (nullcontext() if last or is_deepspeed else accelerator.no_sync(model)), accelerator.autocast():
                        logp, entropy, g = micro_batch_stats(model, batch, rows, args, args.temperature)
                        mb = {key: batch[key][rows] for key in batch if key not in ("truncated",)}
                        mb.update(logp=logp, entropy_current=entropy)
                        per_token_loss, info = compute_policy_loss(mb, args, algo_state)
                        if ref_model is not None:
                            kl = k3_kl(mb["logp_ref"], logp)
                            per_token_loss = per_token_loss + args.kl_coef * kl
                            add("train/kl_ref", masked_sum(kl.detach(), mb["loss_mask"]), mb["loss_mask"].sum())
                        if args.ent_coef:
                            per_token_loss = per_token_loss - args.ent_coef * entropy
                        loss = aggregate_loss(per_token_loss, mb["loss_mask"], args.loss_agg_mode, mb_totals[0].item(),
                                              mb_totals[1].item(), world, args.loss_scale_factor or args.max_new_tokens)
                        accelerator.backward(loss * (len(micro_rows) if is_deepspeed else 1))  # DeepSpeed divides by GAS
                    m = mb["loss_mask"]
                    clipped = info["clipped_low"] | info["clipped_high"]
                    delta = entropy_delta(info["weight"] * mb["adv"], info["ratio"], logp.detach(), entropy.detach(), g, clipped) * m
                    add("entropy/flow_increase", delta.clamp(min=0).sum(), m.sum())
                    add("entropy/flow_decrease", (-delta).clamp(min=0).sum(), m.sum())
                    add("entropy/flow_net", delta.sum(), m.sum())
                    add("entropy/increase_frac", (delta > 0).sum(), m.sum())
                    add("train/policy_loss", masked_sum(per_token_loss.detach(), m), m.sum())
                    add("train/clip_frac_low", masked_sum(info["clipped_low"].float(), m), m.sum())
                    add("train/clip_frac_high", masked_sum(info["clipped_high"].float(), m), m.sum())
                    add("train/ppo_kl", masked_sum(mb["logp_old"] - logp.detach(), m), m.sum())
                    for name, value in info.items():
                        if name.startswith("algo/"):
                            add(name, value, 1)
                if is_deepspeed:  # the engine clipped and stepped at the accumulation boundary
                    accelerator.sync_gradients = True
                    grad_norm = float(model.get_global_grad_norm() or 0.0)
                    skipped_updates += not math.isfinite(grad_norm)  # counted; DeepSpeed itself decides
                else:
                    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
                    if math.isfinite(grad_norm):
                        optimizer.step()
                    else:  # non-finite loss or gradients: never write NaN into the weights
                        skipped_updates += 1
                optimizer.zero_grad(set_to_none=True)
                add("train/grad_norm", grad_norm if math.isfinite(grad_norm) else 0.0, 1)
        scheduler.step()

        # ── 5. optional: realised entropy change of the same batch
        if args.measure_entropy_change:
            model.eval()
            entropy_after = stats_pass(batch, model)[1]
            add("entropy/realised_change", masked_sum(entropy_after - entropy_old, mask), n_tokens)
        training_s = time.time() - t0

        # ── 6. metrics, evaluation, checkpoints
        add("rollout/grader_timeouts", timeouts, 1.0 / world)  # summed over processes
        add("rollout/gen_batches", gen_batches, 1)
        add("train/skipped_updates", skipped_updates, 1.0 / world)
        generated_tokens = sum(len(s["response_ids"]) for group in kept + dropped for s in group)
        add("time/tokens_per_s", generated_tokens, 1.0 / world)  # divided by the step time below
        metrics = reduce_metrics(accelerator, sums, counts, maxes)
        metrics.update(algo_metrics)
        step_s = time.time() - step_start
        metrics.update({"train/learning_rate": scheduler.get_last_lr()[0], "time/rollout_s": rollout_s,
                        "time/grading_s": grading_s, "time/training_s": training_s, "time/step_s": step_s,
                        "time/tokens_per_s": metrics["time/tokens_per_s"] / step_s})
        algorithm_step_end(algo_state, args, metrics)
        if args.eval_every > 0 and (step % args.eval_every == 0 or step == args.total_steps):
            model.eval()
            metrics.update(evaluate(model, llm, accelerator, eval_problems, args, tokenizer, stop_ids, step))
        logger.log(step, metrics)
        if args.log_completions_every and step % args.log_completions_every == 0:
            logger.completions(step, [{"prompt": s["problem"]["question"], "response": s["text"], "gold": s["problem"]["answer"],
                                       "reward": s["reward"]} for s in samples[: args.num_completions_to_log]])
        accelerator.print(f"step {step:4d} | reward {metrics['rollout/reward']:.3f} | entropy {metrics['entropy/mean']:.4f} | "
                          f"flow net {metrics['entropy/flow_net']:+.2e} | len {metrics['rollout/response_length_mean']:.1f} | "
                          + (f"eval {metrics['eval/accuracy']:.3f} | " if "eval/accuracy" in metrics else "")
                          + f"{step_s:.1f}s")
        if (args.checkpoint_every and step % args.checkpoint_every == 0) or step == args.total_steps:
            save_checkpoint(accelerator, model, tokenizer, run_dir, step,
                            {"step": step, "data_pos": data_pos, "algo_state": algo_state}, args.keep_checkpoints)

    # ── final model in Hugging Face format
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(os.path.join(run_dir, "final"), state_dict=state_dict)
        tokenizer.save_pretrained(os.path.join(run_dir, "final"))
    logger.close()
    accelerator.print(f"done: {run_dir}")
    accelerator.end_training()
    return run_dir


if __name__ == "__main__":
    main(tyro.cli(Args))
