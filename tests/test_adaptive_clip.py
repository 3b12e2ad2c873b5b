"""adaptive_clip.py (FEC, arXiv 2602.09782): bounds, schedules, regions, loss, metric weights, flags, end to end."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adaptive_clip as fec
import grpo

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {"alpha_h": -0.25, "beta_h": 0.35, "alpha_l": -0.2, "beta_l": 0.3}
SHIPPED_BEFORE = {"alpha_h": -0.25, "beta_h": 0.5, "alpha_l": -0.13, "beta_l": 0.3}  # never tighter than ε_std = 0.2
SCHEDULE_POINTS = [0, 25, 50, 75, 100]  # k = 0, T/4, T/2, 3T/4, T for T = 100


# ── probability-dependent bounds ──────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    "p, r_min, r_max",
    [
        (0.0, 0.7, 1.35),
        (0.5, 0.7 / (1 - 0.2 * 0.5), 1.35 / (1 + 0.25 * 0.5)),
        (1.0, 0.875, 1.08),
    ],
)
def test_ratio_bounds_closed_form_at_0_half_1(p, r_min, r_max):
    got_min, got_max = fec.ratio_bounds(p, **DEFAULTS)
    assert got_min == pytest.approx(r_min, abs=1e-12) and got_max == pytest.approx(r_max, abs=1e-12)
    # the other direction: at the bound, π_θ = r π_old sits exactly on the threshold ε(π_θ) = α π_θ + β
    assert got_max == pytest.approx(1 + DEFAULTS["alpha_h"] * got_max * p + DEFAULTS["beta_h"], abs=1e-12)
    assert got_min == pytest.approx(1 - (DEFAULTS["alpha_l"] * got_min * p + DEFAULTS["beta_l"]), abs=1e-12)


def test_ratio_bounds_end_points_and_monotone():
    assert fec.ratio_bounds(0.0, **DEFAULTS) == pytest.approx((0.70, 1.35))
    assert fec.ratio_bounds(1.0, **DEFAULTS) == pytest.approx((0.875, 1.08))
    # likely tokens get a tighter bound than the standard clip (ε_std = 0.2) on both sides, unlikely ones a looser one
    assert fec.ratio_bounds(0.9, **DEFAULTS)[0] > 0.8 and fec.ratio_bounds(0.9, **DEFAULTS)[1] < 1.2
    assert fec.ratio_bounds(1.0, **SHIPPED_BEFORE)[1] == pytest.approx(1.2)  # the old upper bound never was
    p = torch.linspace(0, 1, 101, dtype=torch.float64)
    r_min, r_max = fec.ratio_bounds(p, **DEFAULTS)
    assert (r_max.diff() < 0).all() and (r_min.diff() > 0).all()  # α < 0: loose for unlikely tokens
    assert (r_max > 1).all() and (r_min < 1).all()


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_ratio_bounds_threshold_at_old_prob(p):
    r_min, r_max = fec.ratio_bounds(p, **DEFAULTS, prob="old")
    assert r_max == pytest.approx(1 + 0.35 - 0.25 * p) and r_min == pytest.approx(1 - 0.3 + 0.2 * p)


@pytest.mark.parametrize("prob", ["current", "old"])
def test_blend_weight_0_is_standard_clipping_and_1_the_dynamic_bound(prob):
    p = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    lo = fec.blended_threshold(0.0, -0.2, 0.3, 0.2)
    hi = fec.blended_threshold(0.0, -0.25, 0.35, 0.2)
    r_min, r_max = fec.ratio_bounds(p, *hi, *lo, prob=prob)
    torch.testing.assert_close(r_min, torch.full_like(p, 0.8))
    torch.testing.assert_close(r_max, torch.full_like(p, 1.2))
    full_h, full_l = fec.blended_threshold(1.0, -0.25, 0.35, 0.2), fec.blended_threshold(1.0, -0.2, 0.3, 0.2)
    got = fec.ratio_bounds(p, *full_h, *full_l, prob=prob)
    want = fec.ratio_bounds(p, **DEFAULTS, prob=prob)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ── schedules ─────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    "schedule, upper, lower",
    [
        ("constant", [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
        ("boost", [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]),
        ("suppress", [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]),
        # ID: k ≤ T/2: (λ_k, 0); k > T/2: (0, 1 + λ_k), λ_k = 1 − 2k/T
        ("increase-decrease", [1, 0.5, 0, 0, 0], [0, 0, 0, 0.5, 0]),
        # DID: k ≤ T/2: (1 − λ_k, 0); k > T/2: (1, 1 + λ_k)
        ("decrease-increase-decrease", [0, 0.5, 1, 1, 1], [0, 0, 0, 0.5, 0]),
    ],
)
def test_schedule_weights_at_quarters(schedule, upper, lower):
    for k, u, low in zip(SCHEDULE_POINTS, upper, lower):
        got_u, got_l, _ = fec.schedule_bounds(k, 100, 0.5, {"od_boost": False}, schedule)
        assert (got_u, got_l) == pytest.approx((u, low)), (schedule, k)


@pytest.mark.parametrize("schedule", ["increase-decrease", "decrease-increase-decrease"])
def test_phase_two_starts_at_full_lower_weight_and_follows_lambda(schedule):
    T = 100
    for k in range(51, 101):
        lam = 1 - 2 * k / T
        assert fec.schedule_bounds(k, T, None, {}, schedule)[1] == pytest.approx(1 + lam)
    for k in range(51):
        lam = 1 - 2 * k / T
        want = lam if schedule == "increase-decrease" else 1 - lam
        assert fec.schedule_bounds(k, T, None, {}, schedule)[0] == pytest.approx(want)


def test_phase_split_moves_the_switch():
    T = 100
    assert fec.schedule_bounds(30, T, None, {}, "increase-decrease", phase_split=0.3)[:2] == (0.0, 0.0)
    assert fec.schedule_bounds(15, T, None, {}, "increase-decrease", phase_split=0.3)[:2] == pytest.approx((0.5, 0))
    assert fec.schedule_bounds(65, T, None, {}, "increase-decrease", phase_split=0.3)[:2] == pytest.approx((0, 0.5))


def test_oscillatory_decay_hysteresis_on_a_hand_made_entropy_sequence():
    """T = 10, H_init = 1, H_min = τ_low = 0.2, τ_high(k) = 0.2 + 0.8 (1 − k/10)."""
    T, state = 10, {"od_boost": False, "entropy_init": None}
    sequence = [  # (k, latest entropy, τ_high(k), expected state: 1 boost, 0 suppress)
        (0, None, None, 0),  # nothing measured yet: the initial suppress state
        (1, 1.0, 0.92, 0),  # H_init = 1.0 is set; H > τ_high → suppress
        (2, 0.5, 0.84, 0),  # between the thresholds: keep suppress
        (3, 0.2, 0.76, 1),  # H ≤ τ_low → boost
        (4, 0.5, 0.68, 1),  # back above τ_low but below τ_high: keep boost (hysteresis)
        (5, 0.7, 0.60, 0),  # H > τ_high → suppress
        (6, 0.5, 0.52, 0),  # between: keep suppress (hysteresis)
        (7, 0.15, 0.44, 1),  # H ≤ τ_low → boost
        (8, 0.3, 0.36, 1),  # between: keep boost
        (9, 0.4, 0.28, 0),  # the decayed τ_high is now below 0.4 → suppress
        (10, 0.25, 0.20, 0),  # k = T: τ_high = τ_low = H_min
    ]
    for k, entropy, tau_high, expected in sequence:
        upper, lower, state = fec.schedule_bounds(k, T, entropy, state, "oscillatory-decay")
        assert int(state["od_boost"]) == expected, k
        assert (upper, lower) == ((1.0, 0.0) if expected else (0.0, 1.0))
        if tau_high is not None:
            assert state["entropy_init"] == 1.0
            assert fec.od_thresholds(k, T, 1.0, 0.2) == pytest.approx((0.2, tau_high))


def test_oscillatory_decay_keeps_state_on_nan_and_does_not_mutate_input():
    state = {"od_boost": True, "entropy_init": 1.0}
    upper, lower, new = fec.schedule_bounds(5, 10, float("nan"), state, "oscillatory-decay")
    assert (upper, lower) == (1.0, 0.0) and new == state and new is not state
    _, _, new = fec.schedule_bounds(5, 10, 0.9, state, "oscillatory-decay")
    assert new["od_boost"] is False and state["od_boost"] is True


# ── regions ───────────────────────────────────────────────────────────────────────────────────────────
def test_entropy_region_assignment_by_hand():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 0.5, -0.5])
    logp = torch.tensor([-0.5, -2.0, -0.5, -2.0, -0.5, -1.0, -1.0])  # surprisal 0.5 < H, 2.0 > H; the last two = H
    entropy = torch.full_like(adv, 1.0)
    assert fec.entropy_region(adv, logp, entropy).tolist() == [1, 2, 3, 4, 0, 2, 4]


def test_regions_follow_the_sign_of_the_token_specific_entropy_change():
    torch.manual_seed(0)
    adv, logp, entropy = torch.randn(500), -torch.rand(500) * 4, torch.rand(500) * 3
    region = fec.entropy_region(adv, logp, entropy)
    change = -adv * (logp + entropy)  # ΔH_t / η without the baseline G_t
    assert (change[(region == 1) | (region == 4)] <= 0).all() and (change[(region == 2) | (region == 3)] >= 0).all()
    assert set(region.tolist()) == {1, 2, 3, 4}


# ── token loss ────────────────────────────────────────────────────────────────────────────────────────
CASES = {  # A > 0 above r_max, inside, A < 0 below r_min, inside, A > 0 below r_min, A < 0 beyond c
    "adv": [1.0, 1.0, -1.0, -1.0, 1.0, -1.0],
    "ratio": [1.6, 1.1, 0.6, 0.9, 0.5, 12.0],
}


def loss_and_grad(preserve=None, c=10.0):
    adv = torch.tensor(CASES["adv"], dtype=torch.float64)
    logp_old = torch.zeros(6, dtype=torch.float64)
    logp = torch.tensor(CASES["ratio"], dtype=torch.float64).log().requires_grad_()
    ratio = torch.exp(logp - logp_old)
    out = fec.fec_token_loss(adv, ratio, torch.full_like(adv, 0.7), torch.full_like(adv, 1.5), c, preserve)
    out[0].sum().backward()
    return out, logp.grad


def test_fec_token_loss_values_gradients_and_clip_masks_by_hand():
    (loss, clipped_low, clipped_high, below, above), grad = loss_and_grad()
    assert loss.tolist() == pytest.approx([-1.5, -1.1, 0.7, 0.9, -0.5, 10.0])
    # ∂L/∂ℓ = −A r where the gradient passes, 0 where clipped (and beyond the dual-clip bound)
    assert grad.tolist() == pytest.approx([0.0, -1.1, 0.0, 0.9, -0.5, 0.0])
    assert clipped_high.tolist() == [True, False, False, False, False, False]
    assert clipped_low.tolist() == [False, False, True, False, False, True]
    assert above.tolist() == clipped_high.tolist() and below.tolist() == [False, False, True, False, False, False]


def test_fec_token_loss_reduces_to_grpo_clipping_for_constant_bounds():
    torch.manual_seed(3)
    adv, ratio = torch.randn(4, 9), torch.rand(4, 9) * 2.5
    got = fec.fec_token_loss(adv, ratio, torch.full_like(ratio, 0.8), torch.full_like(ratio, 1.28), 3.0)
    want = grpo.clipped_surrogate(adv, ratio, 0.2, 0.28, 3.0)
    for a, b in zip(got[:3], want):
        assert torch.equal(a, b)


def test_gradient_preserving_keeps_scaled_gradient_beyond_the_bounds():
    (loss, clipped_low, clipped_high, below, above), grad = loss_and_grad(preserve=(0.5, 2.0))
    # beyond the bound: value and gradient −β r_bound A (β₂ = 2 at r_max 1.5; β₁ = 0.5 at r_min 0.7)
    assert loss.tolist() == pytest.approx([-3.0, -1.1, 0.35, 0.9, -0.5, 10.0])
    assert grad.tolist() == pytest.approx([-3.0, -1.1, 0.35, 0.9, -0.5, 0.0])
    assert not clipped_high.any() and clipped_low.tolist() == [False] * 5 + [True]  # only the dual clip cuts
    assert above.tolist() == [True] + [False] * 5 and below.tolist() == [False, False, True, False, False, False]
    (_, clipped_low, _, _, _), grad = loss_and_grad(preserve=(0.0, 1.0))
    assert grad[2] == 0 and clipped_low[2] and grad[0] == pytest.approx(-1.5)  # β₁ = 0 cuts; β₂ = 1 keeps −r_max A


def tabular_entropy_change(clip_regions, seed, lr=1e-3):
    """One SGD step on the logits of a tabular softmax (24 states, 12 actions, peaked as in LLMs) on the FEC loss of
    6 sampled tokens per state with ±1 advantages, where the tokens of `clip_regions` get bounds that exclude their
    on-policy ratio r = 1 (so the loss clips them). Returns the realised entropy change, summed over states."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(24, 12, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    probs = torch.softmax(logits.detach(), -1)
    tokens = torch.multinomial(probs, 6, replacement=True, generator=gen)
    adv = torch.randint(0, 2, (24, 6), generator=gen).double() * 2 - 1

    def entropy(z):
        logp = torch.log_softmax(z, -1)
        return -(logp.exp() * logp).sum(-1)

    logp = torch.log_softmax(logits, -1).gather(1, tokens)
    region = fec.entropy_region(adv, logp.detach(), entropy(logits.detach())[:, None].expand_as(adv))
    clip = torch.isin(region, torch.tensor(clip_regions, dtype=region.dtype))
    r_max = torch.where(clip, 0.9, 1.5).double()  # A > 0 tokens of a clipped region: r = 1 > r_max
    r_min = torch.where(clip, 1.1, 0.7).double()  # A < 0 tokens of a clipped region: r = 1 < r_min
    ratio = torch.exp(logp - logp.detach())
    loss, clipped_low, clipped_high, _, _ = fec.fec_token_loss(adv, ratio, r_min, r_max, 10.0)
    assert torch.equal(clipped_low | clipped_high, clip)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    with torch.no_grad():
        return float((entropy(logits - lr * grad) - entropy(logits)).sum()), set(region.flatten().tolist())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_clipping_regions_on_a_tabular_softmax_moves_entropy_as_predicted(seed):
    """The paper's controlled experiment in miniature. Clipping a region removes its gradient, so the entropy moves
    against that region's own effect: clipping the entropy-raising E2/E3 lowers the realised change, clipping the
    entropy-lowering E1/E4 raises it (and with only E1/E4 left the entropy falls, with only E2/E3 it rises)."""
    none, regions = tabular_entropy_change([], seed)
    without_raising, _ = tabular_entropy_change([2, 3], seed)
    without_lowering, _ = tabular_entropy_change([1, 4], seed)
    assert regions == {1, 2, 3, 4}
    assert without_raising < none < without_lowering
    assert without_raising < 0 < without_lowering


def ppo_entropy_change(
    mode: str, coefficients: dict, lr: float, seed: int, ppo_steps: int = 8, actions=10, scale=1.5, adam=False
) -> float:
    """Entropy change of a tabular softmax (`actions` actions, logits N(0, scale²), 3 of them rewarded) after
    `ppo_steps` full-batch SGD (or Adam) steps on the FEC loss of one rollout of 64 sampled actions with
    group-normalised advantages; the bounds of `mode`: standard (w⁺ = w⁻ = 0), increase (w⁺ = 1, the upper bound:
    `boost`) or decrease (w⁻ = 1: `suppress`)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(actions, generator=gen, dtype=torch.float64) * scale
    rewarded = torch.zeros(actions, dtype=torch.float64)
    rewarded[torch.randint(0, actions, (3,), generator=gen)] = 1.0
    upper, lower = {"standard": (0, 0), "increase": (1, 0), "decrease": (0, 1)}[mode]
    alpha_h, beta_h = fec.blended_threshold(upper, coefficients["alpha_h"], coefficients["beta_h"], 0.2)
    alpha_l, beta_l = fec.blended_threshold(lower, coefficients["alpha_l"], coefficients["beta_l"], 0.2)
    p_old = theta.softmax(-1)
    sampled = torch.multinomial(p_old, 64, replacement=True, generator=gen)
    reward = rewarded[sampled]
    adv = (reward - reward.mean()) / (reward.std() + 1e-6)
    logp_old = p_old.log()[sampled]
    r_min, r_max = fec.ratio_bounds(logp_old.exp(), alpha_h, beta_h, alpha_l, beta_l)
    optimizer = torch.optim.Adam([theta.requires_grad_(True)], lr=lr) if adam else None
    for _ in range(ppo_steps):
        z = theta if adam else theta.clone().requires_grad_(True)
        ratio = torch.exp(z.log_softmax(-1)[sampled] - logp_old)
        (grad,) = torch.autograd.grad(fec.fec_token_loss(adv, ratio, r_min, r_max, 10.0)[0].mean(), z)
        if adam:
            theta.grad = grad
            optimizer.step()
        else:
            theta = theta - lr * grad
    theta = theta.detach()
    entropy = lambda p: float(-(p * p.log()).sum())  # noqa: E731
    return entropy(theta.softmax(-1)) - entropy(p_old)


@pytest.mark.parametrize("lr", [0.1, 0.3, 1.0])
def test_increasing_bounds_raise_and_decreasing_bounds_lower_the_entropy(lr):
    """The direction of FEC's bounds, 40 seeds, 8 PPO steps on one rollout: the increasing mode (upper bound, loose
    for unlikely and tight for likely tokens) ends with more entropy than the standard clip ε = 0.2, the decreasing
    mode (lower bound) with less. The coefficients shipped before, never tighter than ε_std on the upper side, did not
    (at lr 1 their increasing mode lowered the entropy more than the standard clip)."""
    mean = lambda mode, c: sum(ppo_entropy_change(mode, c, lr, s) for s in range(40)) / 40  # noqa: E731
    standard, increase, decrease = (mean(m, DEFAULTS) for m in ("standard", "increase", "decrease"))
    print(f"lr {lr}: standard {standard:+.4f}, increase {increase:+.4f}, decrease {decrease:+.4f}")
    assert decrease < standard < increase
    if lr == 1.0:
        assert mean("increase", SHIPPED_BEFORE) < standard


@pytest.mark.parametrize(
    "setting, lr",
    [({"actions": 30, "scale": 0.5}, 0.3), ({"actions": 30, "scale": 0.5}, 1.0), ({"adam": True}, 0.1)],
)
def test_the_derived_coefficients_limits_flat_states_and_adam(setting, lr):
    """The limits stated with the DERIVED coefficients: on a flat state (30 actions, H₀ ≈ 3.3) and with Adam on every
    logit the increasing mode ends with *less* entropy than the standard clip (the bound depends on the absolute p,
    the E1/E2 split on p = e^−H), the opposite of the peaked SGD case above."""
    mean = lambda mode: sum(ppo_entropy_change(mode, DEFAULTS, lr, s, **setting) for s in range(40)) / 40  # noqa: E731
    standard, increase = mean("standard"), mean("increase")
    print(f"{setting} lr {lr}: standard {standard:+.4f}, increase {increase:+.4f}")
    assert increase < standard


def test_help_marks_the_coefficients_derived():
    out = subprocess.run(
        [sys.executable, "adaptive_clip.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    ).stdout
    for flag in ("--alpha-high", "--beta-high", "--alpha-low", "--beta-low"):
        assert "DERIVED" in out.split(flag + " FLOAT", 1)[1].split("--", 1)[0], flag  # in the flag's own help


# ── metric weights and the per-micro-batch loss ───────────────────────────────────────────────────────
def test_micro_batch_mean_weights_give_token_means_over_processes_and_epochs():
    torch.manual_seed(5)
    masks = [(torch.rand(10, 7) > 0.4).float(), (torch.rand(10, 7) > 0.7).float()]  # two processes
    xs = [torch.randn(10, 7), torch.randn(10, 7)]
    epochs, micro_size = 2, 3
    n_micro = epochs * math.ceil(10 / micro_size)
    stacks = [torch.stack([torch.tensor(float(n_micro)), m.sum()]) for m in masks]
    weights = [
        fec.micro_batch_mean_weights(m, n_micro, epochs, lambda s, i=i: s + stacks[1 - i]) for i, m in enumerate(masks)
    ]
    values = [
        (w[rows] * x[rows]).sum()
        for w, x in zip(weights, xs)
        for _ in range(epochs)
        for rows in torch.arange(10).split(micro_size)
    ]
    assert len(values) == 2 * n_micro
    want = sum((m * x).sum() for m, x in zip(masks, xs)) / sum(m.sum() for m in masks)
    torch.testing.assert_close(torch.stack(values).mean(), want)
    # no loss token anywhere: undefined, like the shared token means
    assert fec.micro_batch_mean_weights(torch.zeros(2, 3), 1, 1, lambda s: s).isnan().all()


def make_args(**algo):
    args = fec.Args()
    for key, value in algo.items():
        setattr(args.algo, key, value)
    return args


def test_policy_token_loss_bounds_and_region_metrics():
    torch.manual_seed(7)
    b, R = 3, 5
    logp_old = -torch.rand(b, R) * 3
    mb = {
        "adv": torch.tensor([[1.0] * R, [-1.0] * R, [0.0] * R]),
        "logp_old": logp_old,
        "entropy_old": torch.rand(b, R) * 2,
        "loss_mask": torch.ones(b, R),
    }
    mb["algo_token_weight"] = mb["loss_mask"] / mb["loss_mask"].sum()  # one micro-batch
    logp = (logp_old + torch.randn(b, R) * 0.3).requires_grad_()
    args = make_args(schedule="constant")
    state = {"upper_weight": 1.0, "lower_weight": 1.0}
    _, info = fec.policy_token_loss(mb, {"logp": logp}, args, state)
    r_min, r_max = fec.ratio_bounds(logp_old.exp(), **DEFAULTS)
    ratio = torch.exp(logp.detach() - logp_old)
    assert float(info["algo/ratio_max_mean"]) == pytest.approx(float(r_max.mean()))
    assert float(info["algo/ratio_min_mean"]) == pytest.approx(float(r_min.mean()))
    region = fec.entropy_region(mb["adv"], logp_old, mb["entropy_old"])
    beyond = ((mb["adv"] > 0) & (ratio > r_max)) | ((mb["adv"] < 0) & (ratio < r_min))
    assert beyond.any() and not beyond.all()
    for k in (1, 2, 3, 4):
        assert float(info[f"algo/region_E{k}_frac"]) == pytest.approx(float((region == k).float().mean()))
        want = ((region == k) & beyond).float().mean()
        assert float(info[f"algo/region_E{k}_clip_frac"]) == pytest.approx(float(want))
    high = float(info["algo/region_E1_clip_frac"] + info["algo/region_E2_clip_frac"])
    assert high == pytest.approx(float(info["clipped_high"].float().mean()))
    # schedule weights 0 on both sides: plain GRPO clipping at ε_std = 0.2 on both sides
    loss0, info0 = fec.policy_token_loss(mb, {"logp": logp}, args, {"upper_weight": 0.0, "lower_weight": 0.0})
    want = grpo.clipped_surrogate(mb["adv"], torch.exp(logp - logp_old), 0.2, 0.2, 10.0)
    torch.testing.assert_close(loss0, want[0])
    assert float(info0["algo/ratio_max_mean"]) == pytest.approx(1.2)
    assert float(info0["algo/ratio_min_mean"]) == pytest.approx(0.8)
    # --eps-std None: the standard thresholds are --clip-low / --clip-high
    args_none = make_args(eps_std=None)
    _, info1 = fec.policy_token_loss(mb, {"logp": logp}, args_none, {"upper_weight": 0.0, "lower_weight": 0.0})
    assert float(info1["algo/ratio_max_mean"]) == pytest.approx(1.28)


def test_step_hooks_advance_the_schedule_and_keep_json_state():
    args = make_args(schedule="oscillatory-decay")
    args.total_steps = 10
    state = fec.init_algorithm_state(args)
    batch = {"adv": torch.ones(4, 3), "loss_mask": torch.ones(4, 3)}
    metrics = fec.algorithm_step_begin(state, args, batch, lambda x: x)
    assert metrics["algo/schedule_od_boost"] == 0.0 and "algo/schedule_od_tau_high" not in metrics
    assert (state["upper_weight"], state["lower_weight"]) == (0.0, 1.0)
    assert batch["algo_token_weight"].shape == (4, 3)
    fec.algorithm_step_end(state, args, {"entropy/mean": 0.05})
    assert state["step"] == 1 and state["last_entropy"] == 0.05
    metrics = fec.algorithm_step_begin(state, args, batch, lambda x: x)
    assert state["entropy_init"] == 0.05
    assert (metrics["algo/schedule_od_tau_low"], metrics["algo/schedule_od_tau_high"]) == pytest.approx((0.01, 0.046))
    assert json.loads(json.dumps(state)) == state


# ── command line ──────────────────────────────────────────────────────────────────────────────────────
def cli(args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "adaptive_clip.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--alpha-high", "-0.6"], "--alpha-high -0.6, --beta-high 0.35"),
        (["--beta-low", "1.0"], "--alpha-low -0.2, --beta-low 1.0"),
        (["--alpha-low", "1.0"], "--alpha-low 1.0"),
        (["--eps-std", "1.0"], "--eps-std"),
        (["--phase-split", "1"], "--phase-split"),
        (["--od-min-entropy-frac", "0"], "--od-min-entropy-frac"),
        (["--gp-beta1", "-1"], "--gp-beta1"),
    ],
)
def test_invalid_flags_are_refused_with_one_error_line(tmp_path, flags, message):
    proc = cli([*flags, "--output-dir", str(tmp_path)], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {message}") and sum(line.startswith("error:") for line in lines) == 1
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


TINY = [
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
    "--max-new-tokens",
    "40",
    "--eval-every",
    "0",
    "--grader-workers",
    "1",
    "--micro-batch-size",
    "8",
]
REGION_METRICS = {f"algo/region_E{k}_{kind}" for k in (1, 2, 3, 4) for kind in ("frac", "clip_frac")}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_step_run_logs_finite_algo_metrics_that_add_up(tmp_path):
    """Off-policy (2 epochs × 2 minibatches, micro-batches of unequal token counts, a high learning rate) so that
    tokens get clipped; dynamic sampling so that both steps have tokens with A ≠ 0."""
    proc = cli(
        [
            *TINY,
            "--total-steps",
            "2",
            "--update-epochs",
            "2",
            "--num-minibatches",
            "2",
            "--micro-batch-size",
            "3",
            "--schedule",
            "constant",
            "--learning-rate",
            "1e-3",
            "--filter-groups",
            "--max-gen-batches",
            "4",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "e2e",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = metrics(tmp_path / "e2e")
    assert [r["step"] for r in rows] == [1, 2]
    expected = REGION_METRICS | {
        "algo/ratio_max_mean",
        "algo/ratio_min_mean",
        "algo/schedule_upper_weight",
        "algo/schedule_lower_weight",
        "entropy/mean",
        "entropy/flow_net",
    }
    for row in rows:
        assert expected <= set(row), expected - set(row)
        assert all(math.isfinite(v) for k, v in row.items() if k.startswith("algo/"))
        assert 1.08 <= row["algo/ratio_max_mean"] <= 1.35 and 0.7 <= row["algo/ratio_min_mean"] <= 0.875
        fractions = [row[f"algo/region_E{k}_frac"] for k in (1, 2, 3, 4)]
        assert all(0 <= f <= 1 for f in fractions) and 0 < sum(fractions) <= 1 + 1e-6
        for k in (1, 2, 3, 4):
            assert 0 <= row[f"algo/region_E{k}_clip_frac"] <= row[f"algo/region_E{k}_frac"] + 1e-6
        # the upper-side clips are exactly the E1 and E2 tokens beyond r_max (token-weighted, like the shared metric)
        assert row["algo/region_E1_clip_frac"] + row["algo/region_E2_clip_frac"] == pytest.approx(
            row["train/clip_frac_high"], abs=1e-6
        )
        # the lower-side clips are the E3 and E4 tokens below r_min, plus any beyond the dual-clip bound c
        assert row["algo/region_E3_clip_frac"] + row["algo/region_E4_clip_frac"] <= row["train/clip_frac_low"] + 1e-6
    assert sum(r["train/clip_frac_high"] + r["train/clip_frac_low"] for r in rows) > 0, "nothing was clipped"
    metrics_doc = (REPO / "docs" / "metrics.md").read_text()
    glossary = set(re.findall(r"`([a-z]+/[A-Za-z0-9_]+)`", metrics_doc.split("# Logged metrics")[1]))
    logged = {k for row in rows for k in row if k != "step"}
    assert logged <= glossary, f"metrics missing from the glossary docs/metrics.md: {logged - glossary}"


def test_defaults_take_16_updates_per_rollout_and_the_bounds_act(tmp_path):
    """`python adaptive_clip.py` as shipped (16 prompts × 8, 16 minibatch updates, schedule ID): the bounds clip
    tokens, and in the first step (upper weight 1) the mean upper bound is below the standard 1.2."""
    assert fec.Args().num_minibatches == 16 and grpo.Args().num_minibatches == 1
    proc = cli(
        [
            "--total-steps",
            "2",
            "--eval-every",
            "0",
            "--grader-workers",
            "1",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "defaults",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "note: one update per rollout" not in proc.stderr
    rows = metrics(tmp_path / "defaults")
    assert rows[0]["algo/schedule_upper_weight"] == 1.0 and rows[0]["algo/ratio_max_mean"] < 1.2
    assert sum(r["train/clip_frac_high"] + r["train/clip_frac_low"] for r in rows) > 0
    assert json.loads((tmp_path / "defaults" / "args.json").read_text())["num_minibatches"] == 16


def test_oscillatory_decay_with_gradient_preserving_resumes_exactly(tmp_path):
    """OD keeps its step counter, last entropy, H_init and state in the checkpoint: a resumed run matches."""
    common = [
        *TINY,
        "--total-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
        "5",
        "--schedule",
        "oscillatory-decay",
        "--gradient-preserving",
        "--gp-beta1",
        "0.5",
        "--num-minibatches",
        "2",
        "--output-dir",
        str(tmp_path),
    ]
    proc = cli([*common, "--run-name", "full"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    full = metrics(tmp_path / "full")
    assert "algo/schedule_od_tau_high" not in full[0] and "algo/schedule_od_tau_high" in full[1]
    assert all(r["algo/schedule_od_boost"] in (0.0, 1.0) for r in full)
    assert full[0]["algo/schedule_upper_weight"] == 0.0 and full[0]["algo/schedule_lower_weight"] == 1.0
    assert full[1]["algo/schedule_od_tau_low"] == pytest.approx(0.2 * full[0]["entropy/mean"])
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_000004")
    proc = cli([*common, "--resume", str(tmp_path / "cut")])
    assert proc.returncode == 0, proc.stderr[-5000:]
    resumed = metrics(tmp_path / "cut")
    timing = lambda row: {k: v for k, v in row.items() if not k.startswith("time/")}  # noqa: E731
    assert [timing(r) for r in resumed] == [timing(r) for r in full]
