"""The loss as grpo.py takes it: aggregation (invariant to batch size, micro-batching and processes; fully masked
rows left out), the exact on-policy ratio, truncated importance sampling, and entropy flows equal to the
first-order entropy change of the SGD step actually taken (autograd on a tabular softmax)."""

import math

import pytest
import torch

import grpo

MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def make_args(mode="token-mean", **loss):
    return grpo.Args(loss_agg_mode=mode, **loss, max_new_tokens=9)


def minibatch_grad(theta, features, mask, adv, mode, micro: int, world: int):
    """Gradient of one minibatch [B, T] split over `world` simulated processes (DDP averages) and micro-batches."""
    args = make_args(mode)
    state = grpo.init_algorithm_state(args)
    total = torch.zeros_like(theta)
    for shard in torch.arange(len(mask)).chunk(world):
        totals = grpo.minibatch_totals(mask, lambda x: x)  # the sum over every process
        theta.grad = None
        for rows in shard.split(micro):
            logp = (features[rows] @ theta).sin() - 2.0  # a differentiable stand-in for log π, [b, T]
            mb = {"adv": adv[rows], "logp_old": logp.detach() - 0.05, "loss_mask": mask[rows]}
            loss, _ = grpo.compute_loss(mb, {"logp": logp, "entropy": None}, args, state, totals)
            (loss * world).backward()  # × world: what update_policy does against DDP's average
        total += theta.grad / world
    return total


@pytest.mark.parametrize("mode", MODES)
def test_gradient_norm_independent_of_batch_size_micro_batches_and_processes(mode):
    """The minibatch gradient is a mean, so it is the same for 12 or 24 rows (the same rows twice), any
    micro-batch size and 1 or 2 processes (Dr.GRPO's seq-mean-token-sum-norm included)."""
    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    features = torch.randn(12, 9, 5)
    mask = (torch.rand(12, 9) < 0.7).float()
    mask[:, 0] = 1
    adv = torch.randn(12, 1).expand(12, 9)
    reference = minibatch_grad(theta, features, mask, adv, mode, micro=12, world=1)
    for micro, world in [(1, 1), (5, 1), (3, 2), (6, 2)]:
        torch.testing.assert_close(minibatch_grad(theta, features, mask, adv, mode, micro, world), reference)
    doubled = minibatch_grad(theta, features.repeat(2, 1, 1), mask.repeat(2, 1), adv.repeat(2, 1), mode, 8, 2)
    torch.testing.assert_close(doubled, reference)
    assert reference.norm() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_fully_masked_rows_are_not_counted(mode):
    """2 of 12 rows masked (dynamic-sampling padding, --mask-truncated): the gradient equals that of the 10 rows."""
    torch.manual_seed(1)
    theta = torch.randn(5, requires_grad=True)
    features = torch.randn(12, 9, 5)
    mask = (torch.rand(12, 9) < 0.7).float()
    mask[:, 0] = 1
    adv = torch.randn(12, 1).expand(12, 9)
    masked = mask.clone()
    masked[[3, 8]] = 0.0
    keep = [i for i in range(12) if i not in (3, 8)]
    with_padding = minibatch_grad(theta, features, masked, adv, mode, micro=4, world=1)
    without = minibatch_grad(theta, features[keep], mask[keep], adv[keep], mode, micro=4, world=1)
    torch.testing.assert_close(with_padding, without)


def test_aggregation_weights_by_hand():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    totals = grpo.minibatch_totals(mask, lambda x: x)
    assert totals["tokens"] == 4 and totals["seqs"] == 2  # the empty row is not a sequence
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    agg = lambda mode: (grpo.aggregation_weights(mask, mode, totals, 10.0) * loss).sum().item()  # noqa: E731
    assert agg("token-mean") == pytest.approx(10 / 4)
    assert agg("seq-mean-token-sum") == pytest.approx((6 + 4) / 2)
    assert agg("seq-mean-token-mean") == pytest.approx((2 + 4) / 2)
    assert agg("seq-mean-token-sum-norm") == pytest.approx(10 / (2 * 10))


def test_clipped_surrogate_losses_and_clip_masks_by_hand():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, -1.0])
    ratio = torch.tensor([1.1, 1.5, 0.9, 0.5, 2.0, 4.0])
    loss, low, high = grpo.clipped_surrogate(adv, ratio, 0.2, 0.28, 3.0)
    assert loss.tolist() == pytest.approx([-1.1, -1.28, 0.9, 0.8, 2.0, 3.0])  # dual clip: loss ≤ −A·c = 3
    assert high.tolist() == [False, True, False, False, False, False]
    assert low.tolist() == [False, False, False, True, False, True]  # below 1 − ε_low, or above c
    loss, low, _ = grpo.clipped_surrogate(adv, ratio, 0.2, 0.28, 0.0)  # c = 0: no dual clip
    assert loss[-1] == pytest.approx(4.0) and low.tolist() == [False, False, False, True, False, False]


def tabular_batch(seed=2, b=6, t=7, vocab=40, scale=3.0):
    """Each token has its own logits (a tabular softmax per state), as in the first-order analysis."""
    torch.manual_seed(seed)
    z = (torch.randn(b, t, vocab, dtype=torch.float64) * scale).requires_grad_(True)
    tokens = torch.multinomial(torch.softmax(z.detach().view(-1, vocab), -1), 1).view(b, t)
    mask = torch.ones(b, t, dtype=torch.float64)
    for i in range(b):
        mask[i, 2 + i % (t - 2) :] = 0.0  # ragged lengths
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.7, -0.3], dtype=torch.float64)[:b, None].expand(b, t)
    return z, tokens, mask, adv


def entropy_of(z):
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extra", [{}, {"kl_coef": 0.3}, {"pos_weight": 0.4}])
def test_entropy_flows_equal_first_order_change_of_the_sgd_step(mode, extra):
    """flow_t · η / N (what update_policy logs) equals H(z − η ∂L/∂z) − H(z) per token to first order, with the
    ratio off 1 (some tokens clipped), any aggregation mode, the KL term and a method weight."""
    z, tokens, mask, adv = tabular_batch()
    b, t, vocab = z.shape
    pos_weight = extra.pop("pos_weight", 1.0)
    args = grpo.Args(loss_agg_mode=mode, **extra, max_new_tokens=t, algo=grpo.Algorithm(pos_weight=pos_weight))
    state = grpo.init_algorithm_state(args)
    logp, entropy, g = (x.view(b, t) for x in grpo.token_stats(z.view(-1, vocab), tokens.view(-1), 8))
    torch.manual_seed(3)
    mb = {
        "adv": adv,
        "loss_mask": mask,
        "logp_old": logp.detach() + 0.3 * torch.randn(b, t, dtype=torch.float64),
        "logp_ref": logp.detach() - 0.2,
    }
    totals = grpo.minibatch_totals(mask, lambda x: x)
    grads = []
    logp.register_hook(grads.append)
    loss, info = grpo.compute_loss(mb, {"logp": logp, "entropy": entropy}, args, state, totals)
    loss.backward()
    assert (info["clipped_low"] | info["clipped_high"]).any()  # the test covers clipped tokens
    coef = -grads[0] * totals["tokens"]
    flow = grpo.entropy_change(coef, logp.detach(), entropy.detach(), g) * mask
    eta = 1e-4
    realised = (entropy_of(z.detach() - eta * z.grad) - entropy_of(z.detach())) * mask
    predicted = eta * flow / totals["tokens"]
    big = realised.abs() > 1e-12
    assert big.sum() > 10
    assert (torch.sign(predicted[big]) == torch.sign(realised[big])).all()
    torch.testing.assert_close(predicted, realised, atol=1e-10, rtol=2e-3)


def test_on_policy_first_update_has_ratio_exactly_one():
    """policy_token_loss with ℓ_old = sg(ℓ) (what update_policy passes on the first update) has r ≡ 1: no clipping
    and the gradient of plain −A·ℓ."""
    z, tokens, mask, adv = tabular_batch(seed=4)
    b, t, vocab = z.shape
    args = make_args()
    logp = grpo.token_stats(z.view(-1, vocab).float(), tokens.view(-1), 8)[0].view(b, t) * 1.0001  # any values
    mb = {"adv": adv.float(), "loss_mask": mask.float(), "logp_old": logp.detach()}
    loss, info = grpo.policy_token_loss(mb, {"logp": logp}, args, grpo.init_algorithm_state(args))
    assert torch.equal(info["ratio"], torch.ones_like(logp))
    assert not (info["clipped_low"] | info["clipped_high"]).any()


def test_truncated_importance_weight():
    """min(exp(ℓ_old − ℓ_rollout), C) multiplies each token's loss, detached; capped tokens are flagged."""
    args = make_args()
    args.rollout_is_cap = 2.0
    state = grpo.init_algorithm_state(args)
    logp = torch.zeros(1, 3, requires_grad=True)
    mb = {
        "adv": torch.ones(1, 3),
        "loss_mask": torch.ones(1, 3),
        "logp_old": torch.zeros(1, 3),
        "rollout_logp": torch.tensor([[0.0, -0.5, -3.0]]),
    }
    loss, info = grpo.compute_loss(mb, {"logp": logp}, args, state, grpo.minibatch_totals(mb["loss_mask"], lambda x: x))
    torch.testing.assert_close(info["is_weight"], torch.tensor([[1.0, math.exp(0.5), 2.0]]))
    assert info["is_capped"].tolist() == [[False, False, True]]
    loss.backward()
    torch.testing.assert_close(logp.grad, -info["is_weight"] / 3)
