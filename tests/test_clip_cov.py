"""clip_cov.py: the token covariance, Clip-Cov's draw and KL-Cov's top-k and penalty checked by hand and against
their formulas, exact selection across processes (two gloo processes), the loss hook in both --cov-stats modes,
refused flags, and tiny end-to-end runs of each method (with an exact kill-and-resume)."""

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
import torch.distributed as dist
import torch.multiprocessing as mp

import clip_cov as cc

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
    "--micro-batch-size",
    "8",
    "--grader-workers",
    "1",
]
ALGO_METRICS = ("algo/cov_mean", "algo/cov_selected_mean", "algo/selected_frac")


# ── token covariance ────────────────────────────────────────────────────────────────────────────
def test_token_covariance_by_hand():
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 5.0]])
    logp = torch.tensor([[-1.0, -3.0, -2.0], [-4.0, 0.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # valid tokens: A = 1, 1, 1, -2, -2 -> mean -0.2; ℓ = -1, -3, -2, -4, 0 -> mean -2
    expected = torch.tensor([[1.2 * 1.0, 1.2 * -1.0, 0.0], [-1.8 * -2.0, -1.8 * 2.0, 0.0]])
    cov = cc.token_covariance(adv, logp, mask)
    torch.testing.assert_close(cov, expected)
    assert not cov.requires_grad


def test_token_covariance_global_means_from_summed_statistics():
    """With the sums of another process added by `reduce_sum`, c_t on this shard equals c_t of the whole batch."""
    torch.manual_seed(0)
    adv, logp = torch.randn(6, 7), torch.randn(6, 7)
    mask = (torch.rand(6, 7) > 0.3).float()
    whole = cc.token_covariance(adv, logp, mask)
    a, b = slice(0, 2), slice(2, 6)
    other = torch.stack([(adv[b] * mask[b]).sum(), (logp[b] * mask[b]).sum(), mask[b].sum()])
    shard = cc.token_covariance(adv[a], logp[a], mask[a], reduce_sum=lambda x: x + other)
    torch.testing.assert_close(shard, whole[a])
    assert not torch.allclose(cc.token_covariance(adv[a], logp[a], mask[a]), whole[a])  # local means differ


# ── exact top-k ─────────────────────────────────────────────────────────────────────────────────
def test_top_k_mask_counts_ties_and_validity():
    scores = torch.tensor([[5.0, 1.0, 3.0, 3.0], [9.0, 3.0, 0.0, -1.0]])
    valid = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    chosen = cc.top_k_mask(scores, valid, 3)
    # 9 is not valid; 5 wins, then three tied 3's: the two earliest (row-major) fill the remaining 2 places
    assert chosen.tolist() == [[True, False, True, True], [False, False, False, False]]
    assert cc.top_k_mask(scores, valid, 4).sum() == 4 and cc.top_k_mask(scores, valid, 4)[1, 1]
    assert cc.top_k_mask(scores, valid, 0).sum() == 0
    assert cc.top_k_mask(scores, valid, 100).tolist() == valid.bool().tolist()  # fewer valid than k: all of them
    assert cc.top_k_mask(scores, torch.zeros_like(valid), 2).sum() == 0


def _distributed_worker(rank, world, init_file, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        reduce_sum = lambda x: (dist.all_reduce(t := x.clone()), t)[1]  # noqa: E731
        torch.manual_seed(0)
        cov = torch.randn(2 * world, 5).round(decimals=1).clamp(max=0.5)  # many ties at the top, on both processes
        mask = (torch.rand(2 * world, 5) > 0.2).float()
        rows = slice(2 * rank, 2 * rank + 2)
        assert cc.rank_and_world() == (rank, world)
        selected = cc.kl_cov_select(cov[rows], mask[rows], 0.25, reduce_sum, rank, world)
        adv = torch.arange(20.0).view(4, 5)[rows]
        local_cov = cc.token_covariance(adv, cov[rows], mask[rows], reduce_sum)
        keep = cc.clip_cov_mask(
            cov[rows],
            torch.zeros(2, 5, dtype=torch.bool),
            mask[rows],
            0.2,
            -0.45,
            0.55,
            cc.selection_generator(1, 1, 0, rank),
            reduce_sum,
            rank,
            world,
        )
        queue.put((rank, *(t.numpy() for t in (selected, local_cov, keep))))  # plain bytes, not a shared fd the exiting
        # sender must keep alive
    finally:
        dist.destroy_process_group()


def test_global_selection_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    """Two gloo processes holding 2 rows each choose exactly the tokens one process would choose on all 4 rows
    (ties: lower rank first = earlier rows), and Clip-Cov draws exactly n tokens over both, candidates only."""
    world, ctx = 2, mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distributed_worker, args=(r, world, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r: [torch.as_tensor(x) for x in rest] for r, *rest in (queue.get(timeout=300) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.manual_seed(0)
    cov = torch.randn(4, 5).round(decimals=1).clamp(max=0.5)
    mask = (torch.rand(4, 5) > 0.2).float()
    k = max(int(0.25 * mask.sum().item()), 1)
    assert ((cov == 0.5) & mask.bool()).sum() > k  # the threshold is a tie, broken by rank, then position
    selected = torch.cat([results[r][0] for r in range(2)])
    assert selected.tolist() == cc.kl_cov_select(cov, mask, 0.25).tolist()
    assert selected.sum() == k
    local_cov = torch.cat([results[r][1] for r in range(2)])
    torch.testing.assert_close(local_cov, cc.token_covariance(torch.arange(20.0).view(4, 5), cov, mask))
    drawn = torch.cat([results[r][2] for r in range(2)]) == 0
    candidates = mask.bool() & (cov > -0.45) & (cov < 0.55)
    assert drawn.sum() == min(max(int(0.2 * mask.sum().item()), 1), int(candidates.sum()))
    assert not (drawn & ~candidates).any()


# ── Clip-Cov's draw ─────────────────────────────────────────────────────────────────────────────
def _cov_grid():
    """cov values 0.0, 0.1, ..., 3.9 on a [4, 10] grid, the last row padding."""
    cov = torch.arange(40.0).view(4, 10) / 10
    mask = torch.ones(4, 10)
    mask[3] = 0
    return cov, mask


def test_clip_cov_draws_exactly_n_candidates_strictly_inside_the_bounds():
    cov, mask = _cov_grid()  # 30 valid tokens with c = 0.0 ... 2.9
    candidates = mask.bool() & (cov > 1.0) & (cov < 2.0)  # 1.1 ... 1.9: 9 tokens; 1.0 and 2.0 are excluded
    assert candidates.sum() == 9
    for frac, n in ((0.1, 3), (0.2, 6), (1e-4, 1), (0.5, 9)):  # ⌊frac·30⌋, at least 1, at most |C|
        for seed in range(5):
            keep = cc.clip_cov_mask(
                cov,
                torch.zeros_like(mask, dtype=torch.bool),
                mask,
                frac,
                1.0,
                2.0,
                cc.selection_generator(seed, 1, 0, 0),
            )
            drawn = keep == 0
            assert drawn.sum() == n, (frac, seed)
            assert not (drawn & ~candidates).any()
            assert set(keep.unique().tolist()) <= {0.0, 1.0}


def test_clip_cov_never_draws_tokens_already_clipped_by_ppo_or_padding():
    cov, mask = _cov_grid()
    cov[3] = 1.5  # padding inside the window
    clipped = torch.zeros_like(mask, dtype=torch.bool)
    clipped[1, :] = True  # c = 1.0 ... 1.9 all clipped by PPO
    for seed in range(20):
        keep = cc.clip_cov_mask(cov, clipped, mask, 0.5, 0.55, 2.25, cc.selection_generator(seed, 3, 1, 0))
        drawn = keep == 0
        # candidates: 0.6 ... 0.9 and 2.0 ... 2.2 (7 tokens) < n = 15: all of them, nothing else
        assert drawn.tolist() == (((cov > 0.55) & (cov < 2.25)) & ~clipped & mask.bool()).tolist()


def test_clip_cov_draw_is_uniform_and_seeded():
    cov, mask = _cov_grid()
    clipped = torch.zeros_like(mask, dtype=torch.bool)
    counts = torch.zeros_like(cov)
    for seed in range(3000):
        counts += cc.clip_cov_mask(cov, clipped, mask, 0.1, 0.95, 2.05, cc.selection_generator(seed, 1, 0, 0)) == 0
    inside = (cov > 0.95) & (cov < 2.05) & mask.bool()  # 11 candidates, 3 drawn each time: p = 3/11
    assert counts[~inside].sum() == 0
    p = counts[inside] / 3000  # binomial sd ≈ 0.008
    assert (p - 3 / 11).abs().max() < 0.04, p
    same = [cc.clip_cov_mask(cov, clipped, mask, 0.1, 0.95, 2.05, cc.selection_generator(7, 4, 2, 1)) for _ in range(2)]
    assert torch.equal(*same)
    others = [
        cc.clip_cov_mask(cov, clipped, mask, 0.1, 0.95, 2.05, cc.selection_generator(*s))
        for s in ((8, 4, 2, 1), (7, 5, 2, 1), (7, 4, 3, 1), (7, 4, 2, 0))
    ]
    assert sum(torch.equal(same[0], o) for o in others) <= 1  # 165 possible draws: a repeat is rare


# ── KL-Cov ──────────────────────────────────────────────────────────────────────────────────────
def test_kl_cov_selects_the_top_k_by_covariance():
    torch.manual_seed(1)
    cov = torch.randn(5, 8)
    mask = (torch.rand(5, 8) > 0.25).float()
    n = int(mask.sum())
    for frac in (1e-6, 0.1, 0.3):
        k = max(int(frac * n), 1)
        selected = cc.kl_cov_select(cov, mask, frac)
        assert selected.sum() == k
        assert not (selected & ~mask.bool()).any()
        valid_cov = cov[mask.bool()]
        assert cov[selected].min() >= valid_cov.sort(descending=True).values[k - 1]
        assert cov[mask.bool() & ~selected].max() <= cov[selected].min()
    assert cc.kl_cov_select(cov, torch.zeros_like(mask), 0.1).sum() == 0


def test_kl_cov_penalty_value_and_gradient():
    adv = torch.tensor([[1.0, 1.0, -2.0, -2.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logp = torch.tensor([[-0.8, -1.0, -0.5, -2.0]], requires_grad=True)
    mask = torch.ones(1, 4)
    cov = torch.tensor([[3.0, 0.1, 2.0, -1.0]])  # top 2 (frac 0.5): tokens 0 and 2
    loss = cc.kl_cov_loss(adv, logp, old, cov, mask, 0.5, 0.7)
    ratio = torch.exp(logp.detach() - old)
    expected = -adv * ratio + 0.7 * torch.tensor([[0.2, 0.0, 0.0, 0.0]])  # |ℓ − ℓ_old| on chosen tokens only
    torch.testing.assert_close(loss.detach(), expected)
    loss.sum().backward()
    # d/dℓ: −A r + β sign(ℓ − ℓ_old) on chosen tokens (sign(0) = 0: no penalty gradient at r = 1), −A r elsewhere
    torch.testing.assert_close(logp.grad, -adv * ratio + 0.7 * torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    none = torch.zeros(1, 4, dtype=torch.bool)
    torch.testing.assert_close(
        cc.kl_cov_loss(adv, logp.detach(), old, cov, mask, 0.5, 0.7, selected=none), -adv * ratio
    )
    assert ratio[0, 1] > 2.5 and adv[0, 1] > 0  # PPO (and Clip-Cov's clip(r, 0, 2)) would clip it; KL-Cov does not


# ── the hooks ───────────────────────────────────────────────────────────────────────────────────
def make_args(**algo):
    return cc.Args(algo=cc.Algorithm(**algo))


def toy_batch(seed=0, rows=4, width=6):
    g = torch.Generator().manual_seed(seed)
    adv = torch.tensor([1.5, -1.0, 0.8, 0.6, 1.1, -1.3, 0.4, -0.2])[:rows, None].expand(rows, width).contiguous()
    mask = torch.ones(rows, width)
    mask[1, width // 2 :] = 0  # padding
    logp_old = -torch.rand(rows, width, generator=g) * 4
    return {
        "adv": adv,
        "loss_mask": mask,
        "response_mask": mask.clone(),
        "logp_old": logp_old,
        "rollout_logp": logp_old.clone(),
    }


def test_clip_cov_loss_uses_its_own_ppo_clip_and_removes_the_drawn_tokens():
    """Default ε = 1/1 (clip(r, 0, 2)), not the shared 0.2/0.28; no dual clip; drawn tokens have no loss, no grad."""
    args = make_args(clip_cov_lb=-100.0, clip_cov_ub=100.0, clip_cov_ratio=0.2)
    state = cc.init_algorithm_state(args)
    batch = toy_batch()
    assert cc.algorithm_step_begin(state, args, batch, lambda x: x) == {}
    logp = (batch["logp_old"] + torch.linspace(-1.5, 1.0, 24).view(4, 6)).requires_grad_()
    loss, info = cc.policy_token_loss(dict(batch), {"logp": logp}, args, state)
    ratio = torch.exp(logp.detach() - batch["logp_old"])
    ppo, low, high = cc.clipped_surrogate(batch["adv"], ratio, 1.0, 1.0, 0.0)
    keep = (loss.detach() != 0) | (ppo == 0)
    n_drawn = int((~keep).sum())
    assert n_drawn == int(0.2 * batch["loss_mask"].sum())  # every non-clipped valid token is a candidate
    torch.testing.assert_close(loss.detach(), ppo * keep)
    assert torch.equal(info["clipped_low"], low) and torch.equal(info["clipped_high"], high)
    assert not (high & (ratio < 2.0)).any() and not low.any()  # ε = 1: only r > 2 clips (A > 0)
    assert (((ratio > 1.28) & (batch["adv"] > 0)) & ~high).any()  # the shared 0.28 would have clipped these
    assert not (~keep & (low | high)).any()  # already clipped tokens are never drawn
    loss.sum().backward()
    assert (logp.grad[~keep] == 0).all() and (logp.grad[keep & ~high & (batch["adv"] != 0)] != 0).all()
    assert state["calls"] == 1
    metrics = {}
    cc.algorithm_step_end(state, args, metrics)
    assert metrics["algo/selected_frac"] == pytest.approx(n_drawn / batch["loss_mask"].sum().item())
    assert json.dumps(state) and set(state) == {"step", "calls"}  # the step's sums are gone before a checkpoint
    none_args = make_args(cov_clip_low=None, cov_clip_high=None)
    assert cc.ppo_clip_bounds(none_args) == (none_args.clip_low, none_args.clip_high) == (0.2, 0.28)


def test_micro_batch_selection_depends_on_the_micro_batch_size():
    """--cov-stats micro-batch (the paper's code): k = max(⌊κ·N_mb⌋, 1) per micro-batch, so splitting the same batch
    into more micro-batches chooses more tokens; the metrics are exact sums over the loss calls of the step."""
    args = make_args(method="kl-cov", kl_cov_ratio=0.25)
    batch = toy_batch(rows=8)

    def chosen_tokens(micro):
        state = cc.init_algorithm_state(args)
        cc.algorithm_step_begin(state, args, batch, lambda x: x)
        for rows in torch.arange(8).split(micro):
            mb = {k: v[rows] for k, v in batch.items()}
            cc.policy_token_loss(mb, {"logp": mb["logp_old"].clone()}, args, state)
        metrics = {}
        cc.algorithm_step_end(state, args, metrics)
        return round(metrics["algo/selected_frac"] * batch["loss_mask"].sum().item())

    assert chosen_tokens(8) == int(0.25 * 45)  # 45 valid tokens: 11
    assert chosen_tokens(1) == 8  # 6 valid tokens per full row: ⌊1.5⌋ = 1; the half row: max(⌊0.75⌋, 1) = 1
    assert chosen_tokens(3) == 3 + 4 + 3  # micro-batches of 15, 18, 12 valid tokens


@pytest.mark.parametrize("method", ["clip-cov", "kl-cov"])
def test_global_mode_chooses_once_per_step_and_every_micro_batch_uses_it(method):
    args = make_args(method=method, cov_stats="global", clip_cov_lb=0.0, clip_cov_ratio=0.1, kl_cov_ratio=0.1)
    state = cc.init_algorithm_state(args)
    batch = toy_batch(seed=3, rows=8)
    metrics = cc.algorithm_step_begin(state, args, batch, lambda x: x)
    selected = batch["cov_selected"].bool()
    cov = cc.token_covariance(batch["adv"], batch["logp_old"], batch["loss_mask"])
    assert selected.sum() == int(0.1 * batch["loss_mask"].sum())
    assert metrics["algo/selected_frac"] == pytest.approx(selected.sum().item() / batch["loss_mask"].sum().item())
    assert metrics["algo/cov_mean"] == pytest.approx(cov[batch["loss_mask"].bool()].mean().item(), abs=1e-7)
    assert metrics["algo/cov_selected_mean"] == pytest.approx(cov[selected].mean().item())
    if method == "kl-cov":
        assert selected.tolist() == cc.kl_cov_select(cov, batch["loss_mask"], 0.1).tolist()
    else:
        assert (cov[selected] > 0).all()
    logp = (batch["logp_old"] + 0.3).requires_grad_()  # a later, off-policy update
    for rows in torch.arange(8).split(3):
        mb = {k: v[rows] for k, v in batch.items()}
        loss, _ = cc.policy_token_loss(mb, {"logp": logp[rows]}, args, state)
        ratio = torch.exp(logp[rows].detach() - mb["logp_old"])
        if method == "clip-cov":
            ppo = cc.clipped_surrogate(mb["adv"], ratio, 1.0, 1.0, 0.0)[0]
            torch.testing.assert_close(loss.detach(), ppo * ~selected[rows])
        else:
            torch.testing.assert_close(loss.detach(), -mb["adv"] * ratio + 0.3 * selected[rows])
    assert state["calls"] == 0 and json.dumps(state)
    after = {}
    cc.algorithm_step_end(state, args, after)
    assert after == {}


def test_draws_are_a_function_of_seed_step_and_call():
    args = make_args(clip_cov_lb=-100.0, clip_cov_ub=100.0, clip_cov_ratio=0.3)
    batch = toy_batch(rows=6)

    def draw(state):
        cc.algorithm_step_begin(state, args, batch, lambda x: x)
        return cc.policy_token_loss(dict(batch), {"logp": batch["logp_old"].clone()}, args, state)[0] == 0

    first = draw({"step": 4, "calls": 0})
    assert torch.equal(first, draw(json.loads(json.dumps({"step": 4, "calls": 9}))))  # as restored from a checkpoint
    assert not torch.equal(first, draw({"step": 5, "calls": 0}))


# ── the command line ────────────────────────────────────────────────────────────────────────────
def run(args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "clip_cov.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--clip-cov-ratio", "0"], "--clip-cov-ratio"),
        (["--kl-cov-ratio", "2"], "--kl-cov-ratio is a fraction"),  # 2 % written as a percent
        (["--clip-cov-lb", "5", "--clip-cov-ub", "1"], "--clip-cov-lb"),
        (["--cov-clip-low", "1.5"], "--cov-clip-low"),
        (["--kl-cov-coef", "-1"], "--kl-cov-coef"),
    ],
)
def test_invalid_flags_are_one_error_line_and_exit_2(tmp_path, flags, message):
    proc = subprocess.run(
        [sys.executable, "clip_cov.py", *flags, "--output-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}") and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "clip-cov", "--clip-cov-lb", "0"],  # a low bound that leaves candidates on the testbed
        ["--method", "kl-cov", "--cov-stats", "global", "--num-minibatches", "2"],
    ],
)
def test_two_step_run_logs_finite_algorithm_metrics(tmp_path, flags):
    run([*TINY, "--total-steps", "2", *flags, "--output-dir", str(tmp_path), "--run-name", "e2e"])
    rows = metrics(tmp_path / "e2e")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for name in ALGO_METRICS:
            assert math.isfinite(row[name]), (name, row[name])
        assert 0 < row["algo/selected_frac"] < 0.1 and row["algo/cov_selected_mean"] > 0
        assert math.isfinite(row["entropy/flow_net"]) and row["train/skipped_updates"] == 0
    glossary = set(
        re.findall(r"`([a-z]+/[a-z_]+)`", (REPO / "docs" / "metrics.md").read_text().split("# Logged metrics")[1])
    )
    logged = {k for row in rows for k in row if k != "step"}
    assert logged <= glossary, f"metrics missing from the glossary docs/metrics.md: {logged - glossary}"


@pytest.mark.parametrize("method", ["clip-cov", "kl-cov"])
def test_defaults_are_the_paper_recipe_structure_and_the_method_acts(tmp_path, method):
    """`python clip_cov.py` as shipped: 8 minibatch updates per rollout, DAPO dynamic sampling, statistics per
    micro-batch. Both methods choose tokens every step (the floor of one per micro-batch, which the script notes at
    start), and the ratio leaves 1 (KL-Cov's penalty has a gradient only there)."""
    assert (cc.Args().num_minibatches, cc.Args().filter_groups, cc.Algorithm().cov_stats) == (8, True, "micro-batch")
    proc = run(
        [
            "--method",
            method,
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
    assert ("note: a micro-batch of 16 sequences" in proc.stderr) == (method == "clip-cov")
    saved = json.loads((tmp_path / "defaults" / "args.json").read_text())
    assert (saved["num_minibatches"], saved["filter_groups"]) == (8, True)
    for row in metrics(tmp_path / "defaults"):
        assert 0 < row["algo/selected_frac"] < 0.01 and row["train/ppo_kl"] != 0
        assert row["rollout/gen_batches"] >= 1


def test_clip_cov_kill_and_resume_matches_uninterrupted_run(tmp_path):
    """The draw is seeded from the algorithm state: a run resumed from its step-2 checkpoint repeats steps 3-4."""
    common = [
        *TINY,
        "--total-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
        "5",
        "--clip-cov-lb",
        "0",
        "--micro-batch-size",
        "4",
        "--num-minibatches",
        "2",
        "--output-dir",
        str(tmp_path),
    ]
    run([*common, "--run-name", "full"])
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_000004")
    run([*common, "--resume", str(tmp_path / "cut")])
    no_time = lambda row: {k: v for k, v in row.items() if not k.startswith("time/")}  # noqa: E731
    full, resumed = metrics(tmp_path / "full"), metrics(tmp_path / "cut")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [no_time(r) for r in resumed] == [no_time(r) for r in full]
    assert all(r["algo/selected_frac"] > 0 for r in full)


def test_selection_metrics_leave_out_means_over_no_tokens():
    """A step where no token is chosen (every advantage 0: a model that earns no reward) logs no NaN: the means over
    no tokens are absent, the share chosen is 0."""
    assert cc.selection_metrics(torch.tensor([0.5, 10.0, 0.0, 0.0])) == {
        "algo/cov_mean": 0.05,
        "algo/selected_frac": 0.0,
    }
    assert cc.selection_metrics(torch.tensor([0.0, 0.0, 0.0, 0.0])) == {}
