"""The two entropy baselines the entropy papers compare against: grpo.py's forking-token mask ("Beyond the 80/20
Rule", arXiv 2506.01939; --top-entropy-quantile) and the adaptive entropy coefficient of every script (Skywork-OR1,
arXiv 2505.22312; --adaptive-ent-coef). Unit checks of the rules, then two tiny runs (CPU, testbed model)."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import grpo

REPO = Path(__file__).resolve().parents[1]
TINY = ["--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "40", "--eval-every", "0"]
TINY += ["--micro-batch-size", "8", "--grader-workers", "1"]


def mask_args(rho: float, scope: str = "batch") -> grpo.Args:
    return grpo.Args(algo=grpo.Algorithm(top_entropy_quantile=rho, top_entropy_scope=scope), max_new_tokens=5)


def batch_mask(entropy, mask, rho, reduce_sum=lambda x: x):
    """The batch-scope mask: one threshold over every loss token (rows flattened into one)."""
    keep = grpo.top_quantile_mask(entropy.reshape(1, -1), mask.reshape(1, -1), mask_args(rho), reduce_sum)
    return keep.view_as(mask)


# 8 loss tokens; the padding (mask 0) has entropy 0 and never counts
ENTROPY = torch.tensor([[0.9, 0.1, 0.5, 0.0, 0.0], [0.3, 1.2, 0.7, 0.2, 0.4]])
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()


def test_mask_keeps_exactly_the_top_rho_tokens_of_the_batch():
    """k = ⌈ρN⌉ of the N = 8 loss tokens, those of largest entropy (at least one; all at ρ = 1)."""
    order = sorted(ENTROPY[MASK].tolist(), reverse=True)  # 1.2 0.9 0.7 0.5 0.4 0.3 0.2 0.1
    for rho, k in [(0.01, 1), (0.2, 2), (0.25, 2), (0.3, 3), (0.5, 4), (0.7, 6), (0.9, 8), (1.0, 8)]:
        keep = batch_mask(ENTROPY, MASK, rho)
        assert int(keep.sum()) == k, rho
        assert sorted(ENTROPY[keep].tolist(), reverse=True) == order[:k], rho
        assert not (keep & ~MASK).any()
    ten = torch.arange(1, 11, dtype=torch.float32)[None] / 10  # ρN = 0.7 · 10 is 7.000000000000001 in floats: k = 7
    assert int(batch_mask(ten, torch.ones_like(ten).bool(), 0.7).sum()) == 7


def test_mask_keeps_every_token_tied_at_the_threshold():
    """Ties at τ are all kept (≥ τ): the G responses of a prompt share their first state, so its entropy."""
    entropy = torch.tensor([[0.5, 0.5, 0.5, 0.1, 0.9]])
    keep = batch_mask(entropy, torch.ones_like(entropy).bool(), 0.4)  # k = 2: 0.9, then 0.5 three times
    assert keep.tolist() == [[True, True, True, False, True]]


def test_sequence_scope_takes_the_quantile_within_each_response():
    keep = grpo.top_quantile_mask(ENTROPY, MASK, mask_args(0.25, "sequence"))  # k = ⌈0.25·3⌉ = 1, ⌈0.25·5⌉ = 2
    assert keep.tolist() == [[True, False, False, False, False], [False, True, True, False, False]]
    empty = grpo.top_quantile_mask(ENTROPY, torch.zeros_like(MASK), mask_args(0.25, "sequence"))
    assert not empty.any()


def two_processes(fn, inputs):
    """fn(input, reduce_sum) on two simulated processes (threads) whose reduce_sum is a summing all-reduce."""
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def reduce_for(rank):
        def reduce_sum(x):
            slots[rank] = x
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

        return reduce_sum

    def work(rank):
        results[rank] = fn(inputs[rank], reduce_for(rank))

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_batch_threshold_is_over_the_tokens_of_all_processes():
    """Each process holds one row; the two masks together are the one-process mask of both rows."""
    rows = [(ENTROPY[i : i + 1], MASK[i : i + 1]) for i in range(2)]
    for rho in (0.2, 0.5, 0.7):
        local = two_processes(lambda row, reduce_sum, rho=rho: batch_mask(*row, rho, reduce_sum), rows)
        assert torch.equal(torch.cat(local), batch_mask(ENTROPY, MASK, rho)), rho


def loss_and_grad(args, mb, logp, entropy_keep=None):
    """compute_loss of one micro-batch (token-mean over its tokens) and its gradient with respect to ℓ."""
    logp = logp.clone().requires_grad_(True)
    mb = {**mb, **({"entropy_keep": entropy_keep} if entropy_keep is not None else {})}
    totals = grpo.minibatch_totals(mb["loss_mask"], lambda x: x)
    loss, _ = grpo.compute_loss(mb, {"logp": logp, "entropy": None}, args, grpo.init_algorithm_state(args), totals)
    loss.backward()
    return loss.detach(), logp.grad


def micro_batch():
    torch.manual_seed(0)
    logp = -torch.rand(2, 5) * 3
    adv = torch.tensor([[1.3], [-0.7]]).expand(2, 5)
    mb = {"adv": adv, "logp_old": logp - 0.02 * torch.randn(2, 5), "loss_mask": MASK.float(), "entropy_old": ENTROPY}
    return mb, logp


def test_rho_one_is_grpo_bit_for_bit():
    """ρ = 1 (the default) gives GRPO's loss and gradient exactly, and so does the mask's own path when it keeps
    every token (ρ = 0.95: k = ⌈7.6⌉ = 8 = N)."""
    mb, logp = micro_batch()
    args = mask_args(1.0)
    leaf = logp.clone().requires_grad_(True)  # GRPO: the dual-clip PPO loss, token-mean
    ratio = torch.exp((leaf - mb["logp_old"]).clamp(-20, 20))
    token_loss = grpo.clipped_surrogate(mb["adv"], ratio, args.clip_low, args.clip_high, args.dual_clip_c)[0]
    totals = grpo.minibatch_totals(mb["loss_mask"], lambda x: x)
    reference = (grpo.aggregation_weights(mb["loss_mask"], "token-mean", totals, 5) * token_loss).sum()
    reference.backward()
    loss, grad = loss_and_grad(args, mb, logp)
    assert torch.equal(loss, reference.detach()) and torch.equal(grad, leaf.grad)
    every = batch_mask(ENTROPY, MASK, 0.95)
    assert torch.equal(every, MASK)
    masked_loss, masked_grad = loss_and_grad(mask_args(0.95), mb, logp, every)
    assert torch.equal(masked_loss, loss) and torch.equal(masked_grad, grad)


def test_masked_tokens_have_no_gradient_and_kept_ones_grpos():
    """The mask zeroes the policy loss of the other tokens; the aggregation still counts every token (the paper's
    objective), so a kept token's gradient is its GRPO gradient. Both scopes."""
    mb, logp = micro_batch()
    _, grpo_grad = loss_and_grad(mask_args(1.0), mb, logp)
    for args in (mask_args(0.25), mask_args(0.25, "sequence")):
        if args.algo.top_entropy_scope == "batch":  # the batch scope's mask comes from algorithm_step_begin
            keep = batch_mask(ENTROPY, MASK, 0.25)
            _, grad = loss_and_grad(args, mb, logp, keep)
        else:  # the sequence scope masks from the micro-batch's own H_old
            keep = grpo.top_quantile_mask(ENTROPY, MASK, args)
            _, grad = loss_and_grad(args, mb, logp)
        assert torch.equal(grad[keep], grpo_grad[keep])
        assert not grad[~keep].any() and grad[keep].abs().min() > 0


def test_step_begin_masks_the_batch_and_logs_the_kept_share():
    args = mask_args(0.25)
    assert grpo.needs_old_policy_pass(args)  # a batch statistic before the first gradient
    assert not grpo.needs_old_policy_pass(mask_args(0.25, "sequence"))  # rows are whole in every micro-batch
    assert not grpo.needs_old_policy_pass(mask_args(1.0))  # GRPO stays strictly on-policy without the pass
    batch = {"loss_mask": MASK.float(), "entropy_old": ENTROPY}
    metrics = grpo.algorithm_step_begin(grpo.init_algorithm_state(args), args, batch, lambda x: x)
    assert torch.equal(batch["entropy_keep"], batch_mask(ENTROPY, MASK, 0.25))
    assert metrics["algo/mask_kept_frac"] == 2 / 8
    assert metrics["algo/mask_kept_entropy"] == pytest.approx((1.2 + 0.9) / 2)
    for rho in (0.0, 1.5):
        with pytest.raises(grpo.UsageError, match="top-entropy-quantile"):
            grpo.check_algorithm_args(mask_args(rho))


def ent_args(**flags) -> grpo.Args:
    return grpo.Args(adaptive_ent_coef=True, **flags)


def test_adaptive_coefficient_moves_toward_the_target_within_its_bounds():
    """α ← clip(α ± Δ): + when the step's entropy is at or below the target (the bonus then applies on the next
    step), − above it; never outside [α_min, α_max]; nothing applied at step 1 (no entropy measured yet)."""
    args = ent_args(ent_target_mode="absolute", ent_target=0.5, ent_coef_init=0.002, ent_coef_max=0.0035)
    args.ent_coef_delta = 0.001
    state = {"ent_coef": args.ent_coef_init, "applied": False, "initial_entropy": None}
    seen = []
    for entropy in [0.6, 0.4, 0.5, 0.3, 0.2, 0.9, 0.9, 0.9, 0.9]:
        batch = {"adv": torch.zeros(2, 3)}
        metrics = grpo.entropy_control_begin(state, args, batch)
        if metrics["train/ent_coef_applied"]:
            assert torch.equal(batch["ent_coef"], torch.full((2, 3), metrics["train/ent_coef"]))
        else:
            assert "ent_coef" not in batch
        seen.append((metrics["train/ent_coef"], metrics["train/ent_coef_applied"]))
        grpo.entropy_control_end(state, args, {"entropy/mean": entropy})
    expected = [(0.002, 0), (0.001, 0), (0.002, 1), (0.003, 1), (0.0035, 1), (0.0035, 1), (0.0025, 0)]
    expected += [(0.0015, 0), (0.0005, 0)]
    assert seen == [(pytest.approx(a), b) for a, b in expected]
    assert state["ent_coef"] == 0.0 and not state["applied"]  # clipped at α_min


def test_relative_target_is_a_multiple_of_the_first_steps_entropy():
    args = ent_args(ent_target=0.5)  # relative, the default
    state = {"ent_coef": 0.0, "applied": False, "initial_entropy": None}
    grpo.entropy_control_end(state, args, {"entropy/mean": 0.8})  # H₀ = 0.8: target 0.4
    assert state == {"ent_coef": 0.0, "applied": False, "initial_entropy": 0.8}
    grpo.entropy_control_end(state, args, {"entropy/mean": 0.4})
    assert state == {"ent_coef": pytest.approx(1e-4), "applied": True, "initial_entropy": 0.8}
    assert grpo.entropy_control_begin(state, grpo.Args(), {}) == {}  # off: no metrics, nothing in the batch


def test_loss_uses_the_steps_coefficient_only_when_applied():
    mb, logp = micro_batch()
    entropy = torch.rand(2, 5, requires_grad=True)
    args = ent_args()
    totals = grpo.minibatch_totals(mb["loss_mask"], lambda x: x)
    state = grpo.init_algorithm_state(args)
    plain, _ = grpo.compute_loss(mb, {"logp": logp, "entropy": entropy}, args, state, totals)
    alpha = 0.003
    with_bonus, _ = grpo.compute_loss(
        {**mb, "ent_coef": torch.full((2, 5), alpha)}, {"logp": logp, "entropy": entropy}, args, state, totals
    )
    bonus = (grpo.aggregation_weights(mb["loss_mask"], "token-mean", totals, 1) * entropy).sum()
    torch.testing.assert_close(with_bonus, plain - alpha * bonus)
    with_bonus.backward()
    torch.testing.assert_close(entropy.grad, -alpha * mb["loss_mask"] / mb["loss_mask"].sum())


def test_adaptive_flags_that_cannot_run_are_refused():
    for flags, name in [
        ({"ent_coef": 0.01}, "--ent-coef"),
        ({"ent_coef_init": 0.01}, "--ent-coef-init"),  # above --ent-coef-max 0.005
        ({"ent_coef_delta": -1e-4}, "--ent-coef-delta"),
        ({"ent_target": 0.0}, "--ent-target"),
    ]:
        with pytest.raises(grpo.UsageError, match=name):
            grpo.check_flag_values(ent_args(**flags), 1, "hf")


def run(args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "grpo.py", *TINY, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def in_glossary(rows: list[dict]) -> set:
    text = (REPO / "docs" / "metrics.md").read_text().split("# Logged metrics")[1]
    return {k for row in rows for k in row if k != "step"} - set(re.findall(r"`([a-z]+/[A-Za-z0-9_]+)`", text))


def test_two_step_run_with_the_mask_keeps_about_rho(tmp_path):
    run(["--total-steps", "2", "--top-entropy-quantile", "0.2", "--output-dir", str(tmp_path), "--run-name", "mask"])
    logged = rows(tmp_path / "mask")
    assert [r["step"] for r in logged] == [1, 2]
    for row in logged:  # k = ⌈0.2 N⌉ of N ≈ 100 tokens, plus any tied at the threshold
        assert 0.2 <= row["algo/mask_kept_frac"] < 0.25
        assert row["algo/mask_kept_entropy"] > row["entropy/mean"]
    assert not in_glossary(logged)


def test_adaptive_coefficient_acts_and_is_restored_by_a_resume(tmp_path):
    """A target above any entropy: α rises by Δ every step and the bonus applies from step 2. The checkpoint holds
    (α, gate, H₀); the resumed step 3 goes on from them (restarting would give α = 0, not applied)."""
    flags = ["--adaptive-ent-coef", "--ent-target-mode", "absolute", "--ent-target", "50", "--ent-coef-delta", "0.001"]
    run_dir = tmp_path / "ada"
    run([*flags, "--total-steps", "2", "--output-dir", str(tmp_path), "--run-name", "ada"])
    first = rows(run_dir)
    assert [(r["train/ent_coef"], r["train/ent_coef_applied"]) for r in first] == [(0.0, 0.0), (0.001, 1.0)]
    saved = json.loads((run_dir / "checkpoints" / "step_000002" / "trainer_state.json").read_text())["ent_state"]
    assert saved == {"ent_coef": 0.002, "applied": True, "initial_entropy": first[0]["entropy/mean"]}
    run(["--resume", str(run_dir), "--total-steps", "3"])
    resumed = rows(run_dir)
    assert resumed[:2] == first
    assert (resumed[2]["train/ent_coef"], resumed[2]["train/ent_coef_applied"]) == (0.002, 1.0)
    saved = json.loads((run_dir / "checkpoints" / "step_000003" / "trainer_state.json").read_text())["ent_state"]
    assert saved["ent_coef"] == pytest.approx(0.003) and saved["initial_entropy"] == first[0]["entropy/mean"]
    assert not in_glossary(resumed)
