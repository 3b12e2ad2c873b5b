"""opefo.py: the entropy flows δ_t, the balancing λ* and the token weights by hand and on random batches (zero net
flow, the same λ* when the batch is split over processes), the loss's real gradient cancelling the first-order
entropy change of a tabular softmax, the opefo estimator's sign, the refusal of off-policy settings, and tiny runs
(one optimizer step per rollout, `algo/...` metrics logged and finite)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import opefo

REPO = Path(__file__).resolve().parents[1]
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
ALGO_METRICS = {"algo/lambda", "algo/flow_increase", "algo/flow_decrease", "algo/flow_net", "algo/flow_net_weighted"}
SIDES = ["both", "increase", "decrease"]


def random_batch(seed: int, shape=(6, 11), dtype=torch.float64):
    """adv (one value per row, some rows 0), logp ≤ 0, entropy ≥ 0, g and a mask with ragged lengths."""
    gen = torch.Generator().manual_seed(seed)
    adv = torch.randn(shape[0], 1, generator=gen, dtype=dtype).expand(shape).clone()
    adv[0] = 0.0  # an all-equal group: δ = 0, weight 1
    logp = -torch.rand(shape, generator=gen, dtype=dtype) * 4
    entropy = torch.rand(shape, generator=gen, dtype=dtype) * 2
    g = torch.randn(shape, generator=gen, dtype=dtype) * 0.1
    lengths = torch.randint(1, shape[1] + 1, (shape[0],), generator=gen)
    mask = (torch.arange(shape[1])[None] < lengths[:, None]).to(dtype)
    return adv, logp, entropy, g, mask


# ── the flows δ_t ─────────────────────────────────────────────────────────────────────────────
def test_entropy_flow_by_hand():
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    logp = torch.tensor([math.log(0.5), math.log(0.1)], dtype=torch.float64)
    entropy = torch.tensor([1.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.2, 0.05], dtype=torch.float64)
    expected_opefo = [-1.0 * 0.5**2 * (math.log(0.5) + 1.0), 2.0 * 0.9**2 * (math.log(0.1) + 0.5)]
    expected_exact = [-1.0 * (0.5 * (math.log(0.5) + 1.0) - 0.2), 2.0 * (0.1 * (math.log(0.1) + 0.5) - 0.05)]
    assert opefo.entropy_flow(adv, logp, entropy, None, "paper").tolist() == pytest.approx(expected_opefo, rel=1e-12)
    assert opefo.entropy_flow(adv, logp, entropy, g, "exact").tolist() == pytest.approx(expected_exact, rel=1e-12)
    # the quadrant rule: A > 0 on a likely token (ℓ + H > 0) lowers entropy; A < 0 on an unlikely one too
    assert expected_opefo[0] < 0 and expected_opefo[1] < 0
    with pytest.raises(ValueError, match="needs g"):
        opefo.entropy_flow(adv, logp, entropy, None, "exact")
    with pytest.raises(ValueError, match="unknown"):
        opefo.entropy_flow(adv, logp, entropy, g, "other")


def test_exact_flow_is_the_shared_first_order_entropy_change():
    adv, logp, entropy, g, _ = random_batch(0)
    torch.testing.assert_close(
        opefo.entropy_flow(adv, logp, entropy, g, "exact"), opefo.entropy_change(adv, logp, entropy, g)
    )


def test_estimator_sign_on_a_peaked_softmax_and_not_on_a_flat_one():
    """Against finite differences of a real policy-gradient step on the logits (Δz = η A (e_a − p)): the exact term
    has the sign of the entropy change everywhere; the opefo form too on a peaked (low-entropy, LLM-like) softmax,
    but not on a flat one."""

    def agreement(z, seed):
        gen = torch.Generator().manual_seed(seed)
        p = z.softmax(-1)
        tokens = torch.multinomial(p, 1, generator=gen).squeeze(1)
        adv = torch.randn(len(z), generator=gen, dtype=z.dtype)
        logp, entropy, g, _ = opefo._chunk_stats(z, tokens)
        eta = 1e-6
        step = eta * adv[:, None] * (torch.nn.functional.one_hot(tokens, z.shape[1]) - p)
        _, entropy_after, _, _ = opefo._chunk_stats(z + step, tokens)
        realised = entropy_after - entropy
        exact = opefo.entropy_flow(adv, logp, entropy, g, "exact")
        cheap = opefo.entropy_flow(adv, logp, entropy, None, "paper")
        keep = realised.abs() > 1e-14  # finite differences resolve the sign
        assert keep.float().mean() > 0.95
        return (
            ((exact > 0) == (realised > 0))[keep].double().mean().item(),
            ((cheap > 0) == (realised > 0))[keep].double().mean().item(),
            entropy.mean().item(),
        )

    gen = torch.Generator().manual_seed(0)
    n, v = 1000, 400
    peaked = torch.randn(n, v, generator=gen, dtype=torch.float64)
    peaked[torch.arange(n), torch.randint(0, v, (n,), generator=gen)] += 12.0
    exact, cheap, mean_entropy = agreement(peaked, 1)
    assert mean_entropy < 0.5 and exact == 1.0 and cheap == 1.0
    flat = torch.randn(n, v, generator=gen, dtype=torch.float64) * 6.0
    exact, cheap, mean_entropy = agreement(flat, 2)
    assert mean_entropy > 0.5 and exact == 1.0 and cheap < 0.97


# ── λ* and the weights ────────────────────────────────────────────────────────────────────────
def test_lambda_and_weights_by_hand():
    delta = torch.tensor([[0.3, -0.1, 0.0], [-0.5, 0.2, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the 9.0 is padding: not counted
    increase, decrease, n = opefo.flow_totals(delta, mask).tolist()
    assert (increase, decrease, n) == pytest.approx((0.5, 0.6, 5.0))
    weights, lam = opefo.flow_weights(delta, mask)
    assert lam == pytest.approx((0.6 - 0.5) / (0.6 + 0.5))  # λ* = (D − I) / (D + I) = 1/11
    torch.testing.assert_close(weights, torch.tensor([[1 + lam, 1 - lam, 1.0], [1 - lam, 1 + lam, 1 + lam]]))
    assert (1 + lam) * increase - (1 - lam) * decrease == pytest.approx(0.0, abs=1e-15)
    assert opefo.weighted_net_flow(increase, decrease, lam) == pytest.approx(0.0, abs=1e-15)


def test_lambda_without_flow_and_with_one_side_only():
    zero = torch.zeros(2, 3)
    weights, lam = opefo.flow_weights(zero, torch.ones(2, 3))
    assert lam == 0.0 and torch.equal(weights, torch.ones(2, 3))
    assert opefo.balancing_lambda(0.0, 0.0) == 0.0
    # only decreasing flow: λ* = 1 switches those tokens off (the only zero-net weighting)
    weights, lam = opefo.flow_weights(torch.tensor([[-0.2, 0.0, -0.1]]), torch.ones(1, 3))
    assert lam == 1.0 and weights.tolist() == [[0.0, 1.0, 0.0]]
    assert opefo.balancing_lambda(0.3, 0.0) == -1.0


def test_static_lambda_and_one_sided_weights_by_hand():
    delta = torch.tensor([0.3, -0.1, 0.0])
    assert opefo.side_weights(delta, 0.25, "both").tolist() == [1.25, 0.75, 1.0]
    assert opefo.side_weights(delta, 0.25, "increase").tolist() == [1.25, 1.0, 1.0]
    assert opefo.side_weights(delta, 0.25, "decrease").tolist() == [1.0, 0.75, 1.0]
    assert opefo.weighted_net_flow(0.3, 0.1, 0.25, "both") == pytest.approx(1.25 * 0.3 - 0.75 * 0.1)
    assert opefo.weighted_net_flow(0.3, 0.1, 0.25, "increase") == pytest.approx(1.25 * 0.3 - 0.1)
    assert opefo.weighted_net_flow(0.3, 0.1, 0.25, "decrease") == pytest.approx(0.3 - 0.75 * 0.1)


@pytest.mark.parametrize("estimator", ["paper", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_net_flow_is_zero_on_random_batches(estimator, dtype):
    for seed in range(20):
        adv, logp, entropy, g, mask = random_batch(seed, dtype=dtype)
        delta = opefo.entropy_flow(adv, logp, entropy, g, estimator)
        weights, lam = opefo.flow_weights(delta, mask)
        increase, decrease, _ = opefo.flow_totals(delta, mask).tolist()
        assert increase > 0 and decrease > 0 and -1 < lam < 1
        net = (weights.double() * delta.double() * mask).sum().item()
        assert abs(net) <= 10 * torch.finfo(dtype).eps * (increase + decrease)  # float precision of w and δ
        assert (delta * mask).sum().item() != pytest.approx(0.0, abs=1e-3 * (increase + decrease))  # it was not zero
        assert torch.all(weights[delta == 0] == 1) and torch.all(weights > 0)
        for side in SIDES:  # the one-sided ablations re-solve λ for their side: zero net flow too
            w, lam_side = opefo.flow_weights(delta, mask, side=side)
            assert abs((w.double() * delta.double() * mask).sum().item()) <= 10 * torch.finfo(dtype).eps * (
                increase + decrease
            ) and torch.all(w >= 0)
        for side in SIDES:  # the logged net flow after weighting is Σ w δ for every side and any λ
            for lam_used in (lam, 0.001, -0.3):
                w = opefo.side_weights(delta, lam_used, side)
                assert opefo.weighted_net_flow(increase, decrease, lam_used, side) == pytest.approx(
                    (w.double() * delta.double() * mask).sum().item(),
                    abs=10 * torch.finfo(dtype).eps * (increase + decrease),
                )


def test_lambda_is_that_of_the_whole_batch_when_split_over_processes():
    """Each process sees its rows; `reduce_sum` adds the other's sums before λ*: λ* and the weights are those of the
    undivided batch."""
    adv, logp, entropy, _, mask = random_batch(3, shape=(8, 7))
    delta = opefo.entropy_flow(adv, logp, entropy, None, "paper")
    full_weights, full_lam = opefo.flow_weights(delta, mask)
    shards = [(delta[:5], mask[:5]), (delta[5:], mask[5:])]
    parts = []
    for rank, (d, m) in enumerate(shards):
        other = shards[1 - rank]
        weights, lam = opefo.flow_weights(d, m, lambda x, o=other: x + opefo.flow_totals(*o))
        assert lam == pytest.approx(full_lam, rel=1e-12)
        parts.append(weights)
    torch.testing.assert_close(torch.cat(parts), full_weights)
    assert opefo.flow_weights(*shards[0])[1] != pytest.approx(full_lam, rel=1e-3)  # a local λ would differ


def test_defaults_are_the_papers_balance_equation_with_the_exact_flow():
    a = opefo.Algorithm()
    assert (a.lambda_rule, a.flow_estimator, a.lambda_side, a.static_lambda) == ("balance", "exact", "both", None)


def test_net_flow_reading_leaves_most_of_the_net_flow():
    """λ = (D − I)/N: the weighted net flow is −(D − I)(1 − mean|δ|), mean|δ| = (I + D)/N, not zero; balance's is."""
    for seed in range(5):
        adv, logp, entropy, g, mask = random_batch(seed)
        delta = opefo.entropy_flow(adv, logp, entropy, g, "exact")
        i, d, n = opefo.flow_totals(delta, mask).tolist()
        lam = opefo.balancing_lambda(i, d, "both", "net-flow", n)
        assert opefo.weighted_net_flow(i, d, lam) == pytest.approx(-(d - i) * (1 - (i + d) / n), rel=1e-9)
        assert opefo.weighted_net_flow(i, d, opefo.balancing_lambda(i, d)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "algo, warns",
    [
        ({}, False),  # balance + exact: λ ≈ 0.1–0.2 is the equation's value, not an over-correction
        ({"lambda_side": "increase"}, False),
        ({"flow_estimator": "paper"}, True),
        ({"lambda_rule": "net-flow"}, True),
        ({"static_lambda": 0.3}, True),
    ],
)
def test_high_lambda_warning_spares_the_default_reading(capsys, algo, warns):
    """λ > 0.1 for 3 steps in a row warns once, except under the default reading (balance + exact)."""
    args = opefo.Args(algo=opefo.Algorithm(**algo))
    state = opefo.init_algorithm_state(args)
    delta = torch.tensor([0.1, -0.2, -0.1])
    for _ in range(4):  # I = 0.1, D = 0.3, N = 1: balance λ = 0.5 (one side: 2), net-flow λ = 0.2
        metrics = opefo.apply_lambda(state, args, {}, delta, 0.1, 0.3, 1.0)
        assert metrics["algo/lambda"] > 0.1
    err = capsys.readouterr().err
    assert err.count("warning: λ > 0.1 for 3 steps") == int(warns), err
    assert state["high_lambda_steps"] == (4 if warns else 0)


# ── the loss and its gradient ────────────────────────────────────────────────────────────────
def test_token_loss_is_the_weighted_policy_gradient_with_ratio_one_and_no_clipping():
    args = opefo.Args()
    adv = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    weight = torch.tensor([[1.5, 0.5], [1.0, 0.5]])
    logp = torch.tensor([[-0.1, -3.0], [-0.2, -5.0]], requires_grad=True)
    mb = {"adv": adv, "logp_old": logp.detach(), "flow_weight": weight, "loss_mask": torch.ones(2, 2)}
    loss, info = opefo.policy_token_loss(mb, {"logp": logp}, args, opefo.init_algorithm_state(args))
    assert torch.equal(info["ratio"], torch.ones(2, 2))
    assert not info["clipped_low"].any() and not info["clipped_high"].any()
    torch.testing.assert_close(loss.detach(), -weight * adv)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, -weight * adv)  # ∂/∂ℓ of −w A log π


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_real_gradient_cancels_the_first_order_entropy_change(mode):
    """Tabular softmax, one state per token: with the exact flow, the aggregated loss as the script takes it (the
    step-begin hook, then `compute_loss`) has gradient Δz = −η ∇_z L whose first-order entropy change
    Σ_t ∇_z H_t · Δz_t is zero; without the weights (λ = 0) it is not."""
    torch.manual_seed(0)
    n_rows, width, vocab = 6, 9, 50
    logits = (torch.randn(n_rows * width, vocab, dtype=torch.float64) * 3).requires_grad_(True)
    tokens = torch.multinomial(logits.detach().softmax(-1), 1).squeeze(1)
    adv = torch.randn(n_rows, 1, dtype=torch.float64).expand(n_rows, width).contiguous()
    mask = (torch.arange(width)[None] < torch.tensor([9, 4, 7, 1, 9, 6])[:, None]).double()
    args = opefo.Args(algo=opefo.Algorithm(flow_estimator="exact", lambda_rule="balance"), loss_agg_mode=mode)
    state = opefo.init_algorithm_state(args)

    def entropy_change(weighted: bool) -> tuple[float, float]:
        logp, entropy, g = (x.view(n_rows, width) for x in opefo.token_stats(logits, tokens))
        batch = {
            "adv": adv,
            "loss_mask": mask,
            "logp_old": logp.detach(),
            "entropy_old": entropy.detach(),
            "g_old": g,
            "rollout_logp": logp.detach(),
        }
        metrics = opefo.algorithm_step_begin(state, args, batch, lambda x: x)
        if not weighted:
            batch["flow_weight"] = torch.ones_like(adv)
        mb = {**batch, "logp_old": logp.detach()}
        loss, _ = opefo.compute_loss(
            mb, {"logp": logp, "entropy": entropy}, args, state, opefo.minibatch_totals(mask, lambda x: x)
        )
        (grad_z,) = torch.autograd.grad(loss, logits)
        p = logits.detach().softmax(-1)
        grad_entropy = -p * (p.log() + entropy.detach().reshape(-1, 1))  # ∂H_t/∂z_t
        per_token = (grad_entropy * -grad_z).sum(-1)  # ΔH_t / η of the SGD step Δz = −η ∇_z L
        return per_token.sum().item(), per_token.abs().sum().item(), metrics

    net, scale, metrics = entropy_change(weighted=True)
    assert abs(net) < 1e-12 * scale and metrics["algo/flow_net_weighted"] == pytest.approx(0.0, abs=1e-15)
    assert -1 < metrics["algo/lambda"] < 1 and metrics["algo/lambda"] != 0
    unweighted_net, scale, _ = entropy_change(weighted=False)
    assert abs(unweighted_net) > 1e-3 * scale
    if mode == "token-mean":  # algo/flow_net is the unweighted predicted change per loss token
        assert metrics["algo/flow_net"] == pytest.approx(unweighted_net, rel=1e-9)


# ── arguments ────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--update-epochs", "2"], "--update-epochs 2: OPEFO is strictly on-policy"),
        (["--num-minibatches", "2"], "--num-minibatches 2: OPEFO is strictly on-policy"),
        (["--static-lambda", "1.0"], "--static-lambda 1.0: must be in (-1, 1)"),
    ],
)
def test_refuses_off_policy_and_invalid_settings(tmp_path, flags, message):
    """One `error:` line, exit status 2, nothing written."""
    proc = subprocess.run(
        [sys.executable, "opefo.py", *flags, "--output-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


def test_check_algorithm_args_accepts_the_strict_settings():
    opefo.check_algorithm_args(opefo.Args())
    opefo.check_algorithm_args(opefo.Args(algo=opefo.Algorithm(static_lambda=-0.999, lambda_side="decrease")))
    with pytest.raises(opefo.UsageError, match="--update-epochs 3"):
        opefo.check_algorithm_args(opefo.Args(update_epochs=3))
    with pytest.raises(opefo.UsageError, match="--static-lambda"):
        opefo.check_algorithm_args(opefo.Args(algo=opefo.Algorithm(static_lambda=-1.0)))


# ── runs ─────────────────────────────────────────────────────────────────────────────────────
def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_one_optimizer_step_per_rollout_and_the_real_flow_cancels(tmp_path, monkeypatch):
    """In-process, the default reading (`--lambda-rule balance --flow-estimator exact`): one optimizer step per rollout
    step, and the shared entropy flows, measured from the gradient of the loss actually taken, have zero net."""
    steps = []
    original = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    args = opefo.Args(
        output_dir=str(tmp_path),
        run_name="exact",
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=40,
        grader_workers=1,
        total_steps=2,
        micro_batch_size=5,
        algo=opefo.Algorithm(),  # the defaults: balance + exact
        eval_every=0,
        checkpoint_every=0,
    )
    rows = metrics(opefo.main(args))
    assert len(steps) == 2 and [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["entropy/flow_increase"] > 0
        assert abs(row["entropy/flow_net"]) < 1e-4 * row["entropy/flow_increase"]
        assert abs(row["algo/flow_net_weighted"]) < 1e-9 * row["algo/flow_decrease"]
        assert row["train/skipped_updates"] == 0


READINGS = {f"algo/lambda_{r}_{e}" for r in ("net_flow", "balance") for e in ("exact", "paper", "paper_expected")}


@pytest.mark.parametrize("flags", [[], ["--flow-estimator", "paper-expected", "--micro-batch-size", "16"]])
def test_two_step_run_logs_finite_algo_metrics_and_every_reading(tmp_path, flags):
    """The default reading (the balance equation with the exact flow) and balance + paper-expected (G₃ from the
    update's forward) act: λ is that reading's, every reading's λ is logged and finite, the strict update has ratio
    1, no clipping, and the default's weighted net flow is zero."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "opefo.py",
            *TINY,
            *flags,
            "--total-steps",
            "2",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "e2e",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = metrics(tmp_path / "e2e")
    assert [r["step"] for r in rows] == [1, 2]
    reading = "algo/lambda_balance_exact" if not flags else "algo/lambda_balance_paper_expected"
    for row in rows:
        assert ALGO_METRICS | READINGS <= set(row), (ALGO_METRICS | READINGS) - set(row)
        assert all(math.isfinite(row[k]) for k in ALGO_METRICS | READINGS)
        assert row["algo/lambda"] == pytest.approx(row[reading], rel=1e-9) and row["algo/lambda"] != 0
        assert row["algo/flow_increase"] >= 0 and row["algo/flow_decrease"] >= 0
        assert row["algo/flow_net"] == pytest.approx(row["algo/flow_increase"] - row["algo/flow_decrease"])
        assert row["train/ppo_kl"] == 0.0 and row["train/clip_frac_low"] == row["train/clip_frac_high"] == 0.0
        assert abs(row["algo/flow_net_weighted"]) < 1e-9 * row["algo/flow_decrease"]  # balance: zero net flow
    glossary = set(
        re.findall(r"`([a-z]+/[a-z_]+)`", (REPO / "docs" / "metrics.md").read_text().split("# Logged metrics")[1])
    )
    logged = {k for row in rows for k in row if k != "step"}
    assert logged <= glossary, f"metrics missing from the glossary docs/metrics.md: {logged - glossary}"
    state = json.loads((tmp_path / "e2e" / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["algo_state"] == {"high_lambda_steps": 0}


# ── the readings of λ* ───────────────────────────────────────────────────────────────────────
def test_lambda_under_each_reading_by_hand():
    """I = 0.5, D = 0.6, N = 5: net flow per token 0.02; balance (D − I)/(D + I) = 1/11, increasing side only
    D/I − 1 = 0.2, decreasing side only 1 − I/D = 1/6."""
    i, d, n = 0.5, 0.6, 5.0
    assert opefo.balancing_lambda(i, d, "both", "net-flow", n) == pytest.approx(0.02)
    assert opefo.balancing_lambda(i, d, "increase", "net-flow", n) == pytest.approx(0.02)
    assert opefo.balancing_lambda(i, d, "both", "balance") == pytest.approx(1 / 11)
    assert opefo.balancing_lambda(i, d, "increase", "balance") == pytest.approx(0.2)
    assert opefo.balancing_lambda(i, d, "decrease", "balance") == pytest.approx(1 / 6)
    for side in SIDES:
        assert opefo.weighted_net_flow(i, d, opefo.balancing_lambda(i, d, side), side) == pytest.approx(0, abs=1e-15)
    assert opefo.balancing_lambda(0.0, 0.3, "increase") == 0.0 and opefo.balancing_lambda(0.3, 0.0, "decrease") == 0.0
    assert opefo.lambda_metrics({"exact": [i, d, n]}, "both") == pytest.approx(
        {"algo/lambda_net_flow_exact": 0.02, "algo/lambda_balance_exact": 1 / 11}
    )


def fixed_softmax_batch(n_rows=8, width=12, vocab=64, seed=0):
    """Logits [n_rows·width, V] of a peaked softmax (LLM-like entropy), sampled tokens, group advantages."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_rows * width, vocab, generator=gen, dtype=torch.float64) * 2
    logits[torch.arange(n_rows * width), torch.randint(0, vocab, (n_rows * width,), generator=gen)] += 6.0
    tokens = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 0] * n_rows)[:n_rows]
    adv = opefo.group_advantages(rewards, 4)[:, None].expand(n_rows, width)
    return logits, tokens, adv.contiguous()


def test_paper_expected_flow_is_the_vocabulary_mean_of_the_paper_formula():
    """−A(G₃ − 2G) = E_{a∼π}[−A(1 − π_a)²(log π_a + H)], the exact first-order change sums to 0 over a ∼ π."""
    logits, tokens, adv = fixed_softmax_batch()
    logp, entropy, g, _ = opefo._chunk_stats(logits, tokens)
    g3 = opefo.g3_of_logits(logits, chunk_size=7)
    p = logits.softmax(-1)
    a = adv.reshape(-1, 1)
    paper_all = -a * (1 - p).square() * (p.log() + entropy[:, None])  # the paper's formula for every token a
    torch.testing.assert_close(
        opefo.entropy_flow(adv.reshape(-1), logp, entropy, g, "paper-expected", g3), (p * paper_all).sum(-1)
    )
    exact_all = -a * (p * (p.log() + entropy[:, None]) - g[:, None])
    torch.testing.assert_close((p * exact_all).sum(-1), torch.zeros_like(g), atol=1e-12, rtol=0)


def test_micro_batch_stats_gives_g3_of_the_update_forward():
    """`needs_g3` methods get G₃ of the same forward as ℓ, H, G (current["g3"]): on the testbed model, G₃ at each
    response position equals g3_of_logits of that position's logits / T (positions after a row's response are
    masked out of the loss, whatever they hold); absent unless asked."""
    model = opefo.load_pretrained(opefo.TESTBED_MODEL, "model").eval()
    samples = [
        {"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 10], "rollout_logp": [0.0] * 3, "truncated": False},
        {"prompt_ids": [7, 8], "response_ids": [11], "rollout_logp": [0.0], "truncated": False},
    ]
    batch = opefo.collate(samples, pad_id=0)
    rows = torch.arange(2)
    args = opefo.Args(entropy_chunk_size=3, temperature=0.7)
    with torch.no_grad():
        stats = opefo.micro_batch_stats(model, batch, rows, args, with_g3=True)
        assert "g3" not in opefo.micro_batch_stats(model, batch, rows, args)
        for i, sample in enumerate(samples):
            ids = torch.tensor([sample["prompt_ids"] + sample["response_ids"]])
            logits = model(input_ids=ids).logits[0] / 0.7  # row j predicts token j + 1
            prompt = len(sample["prompt_ids"])
            expected = opefo.g3_of_logits(logits[prompt - 1 : -1])
            torch.testing.assert_close(stats["g3"][i, : len(sample["response_ids"])], expected, rtol=1e-4, atol=1e-6)
    assert opefo.needs_g3(opefo.Args())


def test_readings_on_a_fixed_batch():
    """λ of every reading on one fixed peaked-softmax batch, as the formulas say (the testbed magnitudes are in the
    README: they depend on the model, not on this synthetic batch)."""
    logits, tokens, adv = fixed_softmax_batch()
    logp, entropy, g, _ = (x.view(adv.shape) for x in opefo._chunk_stats(logits, tokens))
    g3 = opefo.g3_of_logits(logits).view(adv.shape)
    mask = torch.ones_like(adv)
    flows = {
        e: opefo.flow_totals(opefo.entropy_flow(adv, logp, entropy, g, e, g3), mask).tolist() for e in opefo.ESTIMATORS
    }
    lam = opefo.lambda_metrics(flows, "both")
    for e, (i, d, n) in flows.items():
        key = e.replace("-", "_")
        assert lam[f"algo/lambda_net_flow_{key}"] == pytest.approx((d - i) / n)
        assert lam[f"algo/lambda_balance_{key}"] == pytest.approx((d - i) / (d + i))
    assert lam == pytest.approx(
        {
            "algo/lambda_net_flow_exact": -0.03495,
            "algo/lambda_balance_exact": -0.2243,
            "algo/lambda_net_flow_paper": -0.03447,
            "algo/lambda_balance_paper": -0.06041,
            "algo/lambda_net_flow_paper_expected": 0.02219,
            "algo/lambda_balance_paper_expected": 0.07594,
        },
        abs=1e-4,
    )


def test_paper_expected_needs_the_whole_batch_in_one_micro_batch():
    args = opefo.Args(algo=opefo.Algorithm(flow_estimator="paper-expected"))
    with pytest.raises(opefo.UsageError, match="--micro-batch-size 128"):
        opefo.check_algorithm_args(args)
    opefo.check_algorithm_args(opefo.Args(micro_batch_size=128, algo=opefo.Algorithm(flow_estimator="paper-expected")))
