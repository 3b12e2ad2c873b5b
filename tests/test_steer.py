"""steer.py: the entropy-change estimate Ω_t, the token weights, the loss hook, argument checks, a short run."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grpo
import steer

REPO = Path(__file__).resolve().parents[1]
LN08 = -math.log(0.8)


def entropy_of(z):
    p = torch.softmax(z, -1)
    return -(p * torch.log_softmax(z, -1)).sum(-1)


# ── Ω_t ──────────────────────────────────────────────────────────────────────────────────────────


def test_omega_hand_computed():
    # A = 1, π = 0.5, π_old = 0.25, H_old = 1: r = 2, Ω = 1 · 2 · 0.5 · (ln 0.5 + 1)
    # A = −2, π = π_old = 0.9, H_old = 0.2: r = 1, Ω = −2 · 0.1 · (ln 0.9 + 0.2)
    adv = torch.tensor([[1.0, -2.0]])
    logp = torch.log(torch.tensor([[0.5, 0.9]]))
    old_logp = torch.log(torch.tensor([[0.25, 0.9]]))
    old_entropy = torch.tensor([[1.0, 0.2]])
    want = torch.tensor([[2 * 0.5 * (math.log(0.5) + 1), -2 * 0.1 * (math.log(0.9) + 0.2)]])
    torch.testing.assert_close(steer.steer_omega(adv, logp, old_logp, old_entropy), want)
    torch.testing.assert_close(
        steer.steer_omega_first_order(adv, logp, old_logp, old_entropy), want * torch.tensor([[0.5, 0.9]])
    )


def test_omega_matches_the_closed_form_and_is_detached():
    torch.manual_seed(0)
    adv = torch.randn(4, 9)
    logp = (-torch.rand(4, 9) * 5).requires_grad_()
    old_logp = (logp.detach() + 0.3 * torch.randn(4, 9)).clamp(max=-1e-3)  # log-probs: π_old ≤ 1
    old_entropy = torch.rand(4, 9) * 2
    pi, r = logp.detach().exp(), (logp.detach() - old_logp).exp()
    omega = steer.steer_omega(adv, logp, old_logp, old_entropy)
    assert not omega.requires_grad
    torch.testing.assert_close(omega, adv * r * (1 - pi) * (logp.detach() + old_entropy), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        steer.steer_omega_first_order(adv, logp, old_logp, old_entropy), omega * pi, rtol=1e-5, atol=1e-7
    )


def test_first_order_omega_is_the_entropy_change_less_the_off_action_terms():
    """Finite differences: one step Δz = η A (e_a − p) on the logits changes H by ΔH = −η A [π(ℓ + H) − G];
    the first-order Ω keeps π²(ℓ + H) of G only, so ΔH/η = −(Ω_fo + A (π²(ℓ + H) − G)). Both signs of A."""
    torch.manual_seed(1)
    z = torch.randn(6, 50, dtype=torch.float64) * 3
    tokens = torch.randint(0, 50, (6,))
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.5, -0.7], dtype=torch.float64)
    eta = 1e-6
    p = torch.softmax(z, -1)
    step = eta * adv[:, None] * (torch.nn.functional.one_hot(tokens, 50) - p)
    dh = (entropy_of(z + step) - entropy_of(z)) / eta
    logp, entropy, g = grpo.token_stats(z, tokens)
    omega = steer.steer_omega_first_order(adv, logp, logp, entropy)  # r = 1
    pi = logp.exp()
    torch.testing.assert_close(dh, -(omega + adv * (pi**2 * (logp + entropy) - g)), rtol=1e-4, atol=1e-6)


def test_omega_sign_is_minus_the_entropy_change_on_peaked_distributions():
    """E1–E4: in the low-entropy regime of RL-trained policies sign(Ω) = −sign(ΔH) for either form; A > 0 on a likely
    token lowers entropy (Ω > 0), on an unlikely one raises it (Ω < 0), and the reverse for A < 0."""
    torch.manual_seed(2)
    z = torch.randn(200, 100, dtype=torch.float64) * 8
    tokens = torch.where(torch.rand(200) < 0.5, z.argmax(-1), torch.randint(0, 100, (200,)))
    adv = torch.where(torch.rand(200) < 0.5, 1.0, -1.0).double()
    logp, entropy, g = grpo.token_stats(z, tokens)
    dh = grpo.entropy_change(adv, logp, entropy, g)
    keep = dh.abs() > 1e-9
    for form in (steer.steer_omega, steer.steer_omega_first_order):
        omega = form(adv, logp, logp, entropy)
        assert (torch.sign(omega[keep]) == -torch.sign(dh[keep])).double().mean() > 0.97
    likely = logp + entropy > 0  # −ln π < H
    omega = steer.steer_omega(adv, logp, logp, entropy)
    assert ((omega > 0) == ((adv > 0) == likely))[(omega != 0)].all()
    assert {(True, True), (True, False), (False, True), (False, False)} <= set(
        zip((adv > 0).tolist(), likely.tolist())
    )  # all four quadrants were exercised


def test_omega_non_finite_values_become_zero():
    adv = torch.tensor([[1.0, math.inf, 1.0, 1.0]])
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 1.0]]))
    old_logp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    old_entropy = torch.tensor([[math.nan, 1.0, 1.0, 1.0]])
    omega = steer.steer_omega(adv, logp, old_logp, old_entropy)
    assert omega[0, 0] == 0 and omega[0, 1] == 0 and omega[0, 2] != 0
    assert omega[0, 3] == 0  # π = 1: clamped to 1 − 1e-8, (1 − π) ≈ 0
    # an underflowed probability is clamped to 1e-8, not log(0)
    tiny = steer.steer_omega(torch.tensor([1.0]), torch.tensor([-200.0]), torch.tensor([-1.0]), torch.tensor([0.5]))
    torch.testing.assert_close(tiny, torch.tensor([1e-8 / math.exp(-1.0) * (1 - 1e-8) * (math.log(1e-8) + 0.5)]))


# ── weights ──────────────────────────────────────────────────────────────────────────────────────


def test_exp_weights_hand_computed():
    omega = torch.tensor([[0.1, -0.2, 0.4, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 5.0 is padding: not in max|Ω| and weight 0
    w = steer.steer_weights(omega, mask)  # k = −ln 0.8 / 0.4: w = 0.8^(|Ω| / 0.4)
    torch.testing.assert_close(w, torch.tensor([[0.8**0.25, 0.8**0.5, 0.8, 0.0]]))
    # max|Ω| below the floor 0.02: k = −ln 0.8 / 0.02
    w = steer.steer_weights(torch.tensor([0.01, 0.005]), torch.ones(2))
    torch.testing.assert_close(w, torch.tensor([0.8**0.5, 0.8**0.25]))
    # another λ_min; w_max is not used by exp mode
    w = steer.steer_weights(torch.tensor([0.3, 0.6]), torch.ones(2), mode="exp", w_min=0.5, w_max=3.0)
    torch.testing.assert_close(w, torch.tensor([0.5**0.5, 0.5]))


def test_linear_weights_hand_computed():
    omega = torch.tensor([[0.1, -0.2, 0.4], [0.25, 9.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w = steer.steer_weights(omega, mask, mode="linear")  # [0.1, 0.4] → [1.2, 0.8]
    torch.testing.assert_close(w, torch.tensor([[1.2, 1.2 - 0.4 / 3, 0.8], [1.0, 0.0, 0.0]]))
    w = steer.steer_weights(torch.tensor([0.0, 1.0, 0.5]), torch.ones(3), mode="linear", w_min=0.5, w_max=2.0)
    torch.testing.assert_close(w, torch.tensor([2.0, 0.5, 1.25]))


@pytest.mark.parametrize("mode, equal, zero", [("exp", 0.8, 1.0), ("linear", 1.0, 1.0)])
def test_weights_degenerate_cases(mode, equal, zero):
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # every |Ω| equal (both signs): exp gives λ_min (max|Ω| above the floor), linear the midpoint of [0.8, 1.2]
    w = steer.steer_weights(torch.tensor([0.5, -0.5, 0.5, 7.0]), mask, mode=mode)
    torch.testing.assert_close(w, torch.tensor([equal] * 3 + [0.0]))
    # every Ω zero: weight 1 in both modes
    torch.testing.assert_close(steer.steer_weights(torch.zeros(4), mask, mode=mode), torch.tensor([zero] * 3 + [0.0]))
    # non-finite Ω count as |Ω| = 0 and do not poison the others
    w = steer.steer_weights(torch.tensor([math.nan, math.inf, 0.4, 0.0]), mask, mode=mode)
    assert torch.isfinite(w).all() and w[3] == 0
    torch.testing.assert_close(w[:3], steer.steer_weights(torch.tensor([0.0, 0.0, 0.4]), torch.ones(3), mode=mode))
    # no loss token at all: zeros, no NaN
    assert torch.equal(steer.steer_weights(torch.randn(2, 3), torch.zeros(2, 3), mode=mode), torch.zeros(2, 3))


@pytest.mark.parametrize("mode, low, high", [("exp", 0.8, 1.0), ("linear", 0.8, 1.2)])
def test_weights_in_range_monotone_and_zero_on_padding(mode, low, high):
    torch.manual_seed(3)
    omega = torch.randn(8, 30) * torch.logspace(-4, 1, 30)
    mask = (torch.rand(8, 30) < 0.7).float()
    w = steer.steer_weights(omega, mask, mode=mode)
    valid = mask > 0
    assert (w[~valid] == 0).all()
    assert (w[valid] >= low - 1e-6).all() and (w[valid] <= high + 1e-6).all()
    a, ws = omega.abs()[valid], w[valid]
    order = a.argsort()
    assert (ws[order].diff() <= 1e-6).all()  # larger predicted entropy change, smaller weight
    assert ws[a.argmax()] == pytest.approx(low)
    if mode == "linear":
        assert ws[a.argmin()] == pytest.approx(high)


def test_weights_from_range_clamp_values_beyond_the_bounds():
    """`--weight-stats global`: later minibatches may see |Ω| outside the step's [min, max]; the clamps hold."""
    omega = torch.tensor([0.0, 0.5, 3.0])
    for mode, lo, hi in (("exp", 0.8, 1.0), ("linear", 0.8, 1.2)):
        w = steer.steer_weights_from_range(omega, torch.ones(3), torch.tensor(1.0), torch.tensor(0.2), mode)
        assert w.min() >= lo and w.max() <= hi and w[2] == pytest.approx(lo) and w[0] == pytest.approx(hi)


def _range_worker(rank, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    omega = torch.tensor([[0.3, -2.0, 0.7], [0.05, 9.0, 0.0]]) if rank == 0 else torch.tensor([[-1.5, 0.2, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]) if rank == 0 else torch.tensor([[1.0, 1.0, 0.0]])
    hi, lo = steer.omega_abs_range(omega, mask, all_processes=True)
    local = steer.omega_abs_range(omega, mask)
    torch.save({"global": (float(hi), float(lo)), "local": tuple(float(x) for x in local)}, f"{out_dir}/{rank}.pt")
    torch.distributed.destroy_process_group()


def test_global_range_combines_processes(tmp_path):
    """Max and min of |Ω| over the loss tokens of two gloo processes (what `--weight-stats global` uses)."""
    torch.multiprocessing.spawn(_range_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert r0["global"] == r1["global"] == pytest.approx((2.0, 0.05))
    assert r0["local"] == pytest.approx((2.0, 0.05)) and r1["local"] == pytest.approx((1.5, 0.2))


# ── the loss hook ────────────────────────────────────────────────────────────────────────────────


def make_batch(seed=4, rows=6, width=7):
    torch.manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,))
    response_mask = (torch.arange(width)[None] < lengths[:, None]).float()
    loss_mask = response_mask.clone()
    loss_mask[-1] = 0  # a masked-out response (e.g. a padding group)
    return {
        "adv": torch.randn(rows, 1).expand(rows, width).contiguous(),
        "loss_mask": loss_mask,
        "response_mask": response_mask,
        "logp_old": -torch.rand(rows, width) * 4,
        "entropy_old": torch.rand(rows, width) * 2,
        "g_old": torch.zeros(rows, width),
        "rollout_logp": torch.zeros(rows, width),
    }


@pytest.mark.parametrize("stats", ["micro-batch", "global"])
@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_policy_token_loss_is_weight_times_dual_clip_ppo(stats, mode):
    args = steer.Args(algo=steer.Algorithm(weight_mode=mode, weight_stats=stats))
    batch = make_batch()
    assert steer.algorithm_step_begin(steer.init_algorithm_state(args), args, batch, lambda x: x) == {}
    rows = torch.tensor([0, 2, 5])
    mb = {k: v[rows] for k, v in batch.items()}
    logp = (mb["logp_old"] + 0.4 * torch.randn_like(mb["logp_old"])).requires_grad_()  # an off-policy minibatch
    loss, info = steer.policy_token_loss(mb, {"logp": logp}, args, {})
    ratio = torch.exp(logp.detach() - mb["logp_old"])
    ppo, clipped_low, clipped_high = grpo.clipped_surrogate(mb["adv"], ratio, 0.2, 0.28, 10.0)
    omega = steer.steer_omega(mb["adv"], logp, mb["logp_old"], mb["entropy_old"])
    if stats == "global":  # bounds from the whole batch at r = 1, on every token of the batch
        whole = steer.steer_omega(batch["adv"], batch["logp_old"], batch["logp_old"], batch["entropy_old"])
        hi, lo = steer.omega_abs_range(whole, batch["loss_mask"])
        weight = steer.steer_weights_from_range(omega, mb["loss_mask"], hi, lo, mode)
    else:
        weight = steer.steer_weights(omega, mb["loss_mask"], mode=mode)
    torch.testing.assert_close(loss.detach(), weight * ppo)
    assert torch.equal(info["clipped_low"], clipped_low) and torch.equal(info["clipped_high"], clipped_high)
    assert clipped_low.any() or clipped_high.any()  # the example exercises clipping
    assert (loss.detach()[mb["loss_mask"] == 0] == 0).all()
    loss.sum().backward()  # the gradient flows through the ratio only; w is a constant
    unclipped = ~(clipped_low | clipped_high)
    want = torch.where(unclipped, -mb["adv"] * ratio * weight, torch.zeros_like(ratio))
    torch.testing.assert_close(logp.grad, want)
    valid = mb["loss_mask"] > 0
    assert float(info["algo/weight_mean"]) == pytest.approx(float(weight[valid].mean()))
    assert float(info["algo/weight_min"]) == pytest.approx(float(weight[valid].min()))
    assert float(info["algo/weight_max"]) == pytest.approx(float(weight[valid].max()))
    assert float(info["algo/omega_abs_mean"]) == pytest.approx(float(omega.abs()[valid].mean()))
    assert float(info["algo/omega_abs_max"]) == pytest.approx(float(omega.abs()[valid].max()))


def test_clip_indicator_form_zeroes_omega_of_clipped_tokens():
    """`--omega-clip-indicator` (the paper's text): Ω_t × 1[not clipped], so the clipped tokens weigh 1 (exp mode)
    and the micro-batch's max |Ω| is taken over the unclipped ones; without it (the code) they count too."""
    batch = make_batch(seed=3)
    logp = (batch["logp_old"] + 0.4 * torch.randn_like(batch["logp_old"])).requires_grad_()
    ratio = torch.exp(logp.detach() - batch["logp_old"])
    _, clipped_low, clipped_high = grpo.clipped_surrogate(batch["adv"], ratio, 0.2, 0.28, 10.0)
    unclipped = ~(clipped_low | clipped_high)
    omega = steer.steer_omega(batch["adv"], logp, batch["logp_old"], batch["entropy_old"]) * unclipped
    want = steer.steer_weights(omega, batch["loss_mask"])
    args = steer.Args(algo=steer.Algorithm(omega_clip_indicator=True))
    loss, info = steer.policy_token_loss(batch, {"logp": logp}, args, {})
    ppo = grpo.clipped_surrogate(batch["adv"], ratio, 0.2, 0.28, 10.0)[0]
    torch.testing.assert_close(loss.detach(), want * ppo)
    assert ((want == 1) | ~(batch["loss_mask"] > 0))[~unclipped].all() and (~unclipped & (batch["loss_mask"] > 0)).any()
    _, info_code = steer.policy_token_loss(batch, {"logp": logp}, steer.Args(), {})
    assert float(info["algo/omega_abs_mean"]) < float(info_code["algo/omega_abs_mean"])


def test_global_and_micro_batch_statistics_differ_on_a_subset():
    batch = make_batch(seed=5)
    whole = steer.steer_omega(batch["adv"], batch["logp_old"], batch["logp_old"], batch["entropy_old"]).abs()
    row_max = (whole * batch["loss_mask"]).amax(1)[:-1]  # the last row is masked out
    rows = row_max.argsort()[:2]  # the micro-batch misses the row with the batch's largest |Ω|
    logp = batch["logp_old"][rows].clone()
    weights = {}
    for stats in ("micro-batch", "global"):
        args = steer.Args(algo=steer.Algorithm(weight_stats=stats))
        b = dict(batch)
        steer.algorithm_step_begin({}, args, b, lambda x: x)
        loss, info = steer.policy_token_loss({k: v[rows] for k, v in b.items()}, {"logp": logp}, args, {})
        weights[stats] = info["algo/weight_min"]
    assert weights["micro-batch"] == pytest.approx(0.8)  # the micro-batch's own largest |Ω| gets λ_min
    assert weights["global"] > 0.8  # the batch's largest |Ω| lies in another row


def test_first_update_ratio_is_one_and_weights_use_old_entropy():
    """On the first update ℓ_old is the detached current ℓ: Ω_t = A (1 − π)(ℓ + H_old)."""
    args = steer.Args()
    batch = make_batch(seed=6)
    logp = batch["logp_old"].clone().requires_grad_()
    loss, info = steer.policy_token_loss(batch, {"logp": logp}, args, {})
    assert torch.equal(info["ratio"], torch.ones_like(logp))
    pi = logp.detach().exp()
    omega = batch["adv"] * (1 - pi) * (logp.detach() + batch["entropy_old"])
    weight = steer.steer_weights(omega, batch["loss_mask"])
    torch.testing.assert_close(loss.detach(), -batch["adv"] * weight)


# ── command line ─────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--weight-min", "0"], "--weight-min"),
        (["--weight-min", "1.5"], "--weight-min"),
        (["--weight-mode", "linear", "--weight-min", "1.3", "--weight-max", "1.2"], "--weight-mode linear"),
        (["--weight-mode", "linear", "--weight-min", "-0.1"], "--weight-mode linear"),
        (["--omega-max-floor", "0"], "--omega-max-floor"),
    ],
)
def test_invalid_flags_exit_2_with_one_error_line(tmp_path, flags, message):
    proc = subprocess.run(
        [sys.executable, "steer.py", *flags, "--output-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert lines[-1].startswith(f"error: {message}") and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


ALGO_METRICS = ["algo/weight_mean", "algo/weight_min", "algo/weight_max", "algo/omega_abs_mean", "algo/omega_abs_max"]


@pytest.mark.parametrize(
    "flags, low, high",
    [
        ([], 0.8, 1.0),
        (
            [
                "--weight-stats",
                "global",
                "--weight-mode",
                "linear",
                "--omega-form",
                "first-order",
                "--num-minibatches",
                "2",
                "--micro-batch-size",
                "4",
            ],
            0.8,
            1.2,
        ),
    ],
)
def test_two_step_run_logs_finite_algo_metrics(tmp_path, flags, low, high):
    args = [
        "--total-steps",
        "2",
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
        *flags,
        "--output-dir",
        str(tmp_path),
        "--run-name",
        "steer",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "steer.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in (tmp_path / "steer" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for name in ALGO_METRICS:
            assert math.isfinite(row[name]), name
        assert low - 1e-6 <= row["algo/weight_min"] <= row["algo/weight_mean"] <= row["algo/weight_max"] <= high + 1e-6
        assert 0 <= row["algo/omega_abs_mean"] <= row["algo/omega_abs_max"]
        assert math.isfinite(row["entropy/flow_net"]) and row["train/skipped_updates"] == 0
    glossary = set(
        re.findall(r"`([a-z]+/[a-z_]+)`", (REPO / "docs" / "metrics.md").read_text().split("# Logged metrics")[1])
    )
    logged = {k for row in rows for k in row if k != "step"}
    assert logged <= glossary, f"metrics missing from the glossary docs/metrics.md: {logged - glossary}"


def test_defaults_are_the_authors_structure_and_the_weights_act(tmp_path):
    """`python steer.py` as shipped: 16 minibatch updates per rollout, |Ω| statistics per micro-batch of 8 sequences
    (the authors': 8 per GPU); every micro-batch's largest |Ω| gets λ_min = 0.8, and PPO clipping acts."""
    assert (steer.Args().num_minibatches, steer.Args().micro_batch_size) == (16, 8)
    args = [
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
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "steer.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    saved = json.loads((tmp_path / "defaults" / "args.json").read_text())
    assert (saved["num_minibatches"], saved["micro_batch_size"]) == (16, 8)
    for row in (json.loads(line) for line in (tmp_path / "defaults" / "metrics.jsonl").read_text().splitlines()):
        assert row["algo/weight_min"] == pytest.approx(0.8) and row["algo/weight_mean"] < 1
        assert row["train/clip_frac_low"] + row["train/clip_frac_high"] > 0 and row["train/ppo_kl"] != 0
