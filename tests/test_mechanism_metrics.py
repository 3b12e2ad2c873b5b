"""The mechanism metrics every script logs (issue #34): the entropy at the batch's forking positions and at the
rest, and on the testbed the careful-path share of the step's samples. Exact values on small batches; that a
2-step run logs them is checked by tests/test_grpo_e2e.py (EXPECTED_METRICS) and the glossary test there."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import grpo
from grpo import forking_entropy, gather_values

REPO = Path(__file__).resolve().parents[1]

ONE_PROCESS = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"), gather=lambda x: x)


def test_forking_entropy_is_the_mean_of_the_top_fifth_and_of_the_rest():
    entropy = torch.tensor([0.9, 0.1, 0.5, 0.0, 0.3, 0.0, 0.0, 0.2, 0.0, 0.1])  # the docstring's example
    forking, rest = forking_entropy(entropy)
    assert forking == pytest.approx(0.7, abs=1e-7) and rest == pytest.approx(0.0875, abs=1e-7)
    # k = ⌈N / 5⌉ (an integer ceiling): N = 11 and 15 -> k = 3; N = 1 -> k = 1 and no other tokens
    assert forking_entropy(torch.arange(11.0))[0] == pytest.approx((10 + 9 + 8) / 3)
    assert forking_entropy(torch.arange(15.0)) == pytest.approx(((14 + 13 + 12) / 3, sum(range(12)) / 12))
    forking, rest = forking_entropy(torch.tensor([0.4]))
    assert forking == pytest.approx(0.4) and math.isnan(rest)
    assert all(math.isnan(v) for v in forking_entropy(torch.tensor([])))


def test_forking_entropy_ties_do_not_depend_on_order():
    """Equal values at the boundary: the means are those of the values, whichever of the equal tokens is counted."""
    values = torch.tensor([1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])  # k = 2: one 0.5 of four is forking
    for permutation in (torch.arange(10), torch.randperm(10, generator=torch.Generator().manual_seed(0))):
        assert forking_entropy(values[permutation]) == pytest.approx((0.75, 1.5 / 8))


def batch_of(entropy_rows, loss_rows, response_rows=None):
    entropy = torch.tensor(entropy_rows)
    loss_mask = torch.tensor(loss_rows, dtype=torch.float32)
    response_mask = loss_mask if response_rows is None else torch.tensor(response_rows, dtype=torch.float32)
    return {
        "entropy_old": entropy,
        "loss_mask": loss_mask,
        "response_mask": response_mask,
        "logp_old": torch.zeros_like(entropy),
        "rollout_logp": torch.zeros_like(entropy),
        "adv": torch.zeros_like(entropy),
    }


def test_logged_forking_entropy_counts_loss_tokens_only():
    """Over the loss tokens of the batch (padding groups and masked responses out), with the old policy's entropy."""
    batch = batch_of(
        [[0.9, 0.1, 0.5, 0.0], [0.3, 0.0, 7.0, 7.0], [0.0, 0.2, 0.0, 0.1]],
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]],  # row 2's last two tokens: not in the loss (their H is 7)
        [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
    )
    metrics = grpo.Metrics()
    grpo.log_sampling_policy(metrics, batch, lambda x: x, ONE_PROCESS)
    out = metrics.reduce(ONE_PROCESS)
    assert out["entropy/forking_mean"] == pytest.approx(0.7) and out["entropy/nonforking_mean"] == pytest.approx(0.0875)
    assert out["entropy/mean"] == pytest.approx((2.1 + 14) / 12)  # entropy/mean: every response token


def test_forking_positions_are_ranked_over_all_processes():
    """With 2 processes the top 20% is taken over both processes' loss tokens, and both log the same value."""
    mine = torch.tensor([0.9, 0.1, 0.5])
    theirs = torch.tensor([0.0, 0.3, 0.0, 0.0, 0.2, 0.0, 0.1])

    def gather(x):  # the other process holds `theirs`: first its size, then its values padded as this one's
        if x.dim() == 1:
            return torch.cat([x, torch.tensor([len(theirs)])])
        return torch.cat([x, torch.nn.functional.pad(theirs, (0, x.shape[1] - len(theirs)))[None]])

    two = SimpleNamespace(num_processes=2, gather=gather)
    assert gather_values(mine, two).tolist() == pytest.approx([0.9, 0.1, 0.5, 0.0, 0.3, 0.0, 0.0, 0.2, 0.0, 0.1])
    assert forking_entropy(gather_values(mine, two)) == pytest.approx((0.7, 0.0875))


class Rewards(list):
    no_answer, timeouts = 0, 0


def careful_frac(texts, train_data="paths"):
    args = grpo.Args(train_data=train_data, prompts_per_step=1, group_size=len(texts))
    metrics = grpo.Metrics()
    samples = [{"text": t, "response_ids": [1]} for t in texts]
    correct = torch.zeros(1, len(texts))
    informative = torch.zeros(1, dtype=torch.bool)
    grpo.log_generation_batch(
        metrics,
        args,
        samples,
        [{"question": "Compute 1+2+3."}],
        Rewards([0.0] * len(texts)),
        correct,
        informative,
        1,
        1,
        0,
        0,
    )
    return metrics.reduce(ONE_PROCESS).get("rollout/careful_frac")


def test_careful_frac_is_the_share_of_careful_path_samples():
    texts = [
        "units 3+1=4+9=13, tens 8+5=13+3=16+1=17, \\boxed{173}",  # careful
        " units 2+2=4, tens 1+1=2, \\boxed{24}",  # careful (leading space)
        "83+51=134, 134+39=\\boxed{173}",  # pairwise
        "I think \\boxed{173}",  # neither
    ]
    assert careful_frac(texts) == pytest.approx(0.5)
    assert careful_frac(texts[2:]) == 0.0
    assert careful_frac(texts, train_data="gsm8k") is None  # only on the testbed task


ACTION_FLAGS = {  # each method at a setting where it acts on step 1 of a tiny run
    "grpo.py": [],
    "grpo.py --pos-weight 0.5": ["--pos-weight", "0.5"],
    "opefo.py": [],
    "steer.py": [],
    "clip_cov.py": ["--cov-stats", "global", "--clip-cov-ratio", "0.05"],
    "adaptive_clip.py": [],
}


@pytest.mark.parametrize("name", list(ACTION_FLAGS))
def test_every_method_reports_the_size_of_its_action(tmp_path, name):
    """action/changed_frac and action/weight_dev_mean, logged by the shared code from the hook's info: 0 for plain
    GRPO; λ = 0.5 on the positive-advantage tokens: |w − 1| = 0.5 on exactly the changed tokens; STEER, OPEFO and
    Clip-Cov change a share of the tokens; FEC's bounds differ from standard clipping."""
    script = name.split()[0]
    if not (REPO / script).exists():
        pytest.skip(f"{script} not present")
    flags = ["--total-steps", "1", "--prompts-per-step", "4", "--group-size", "4", "--micro-batch-size", "8"]
    flags += ["--num-minibatches", "1", "--eval-every", "0", "--log-completions-every", "0", "--grader-workers", "1"]
    flags += ["--output-dir", str(tmp_path), "--run-name", "run", *ACTION_FLAGS[name]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, script, *flags], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    changed, deviation = step["action/changed_frac"], step["action/weight_dev_mean"]
    assert 0 <= changed <= 1 and deviation >= 0
    if name == "grpo.py":
        assert changed == 0 and deviation == 0
    elif name.startswith("grpo.py --pos-weight"):
        assert 0 < changed < 1 and deviation == pytest.approx(0.5 * changed)
    elif script == "adaptive_clip.py":
        assert changed > 0.05 and deviation == 0  # a bound method: no weight
    else:
        assert changed > 0 and deviation > 0
