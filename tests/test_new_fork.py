"""A new method the way the README tells a researcher to make one: copy grpo.py, change only `policy_token_loss` (here:
up-weight the high-entropy tokens, from the `current` statistics the hook receives), keep the fork in sync with
tools/sync_shared_sections.py, run it. The fork touches at most 3 places of grpo.py, and its weighting acts: a
measurable share of tokens gets a weight other than 1 (`action/changed_frac`, logged by the shared code from the
hook's info["weight"]), and the run departs from GRPO's with the same seed."""

import difflib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GRPO_LOSS = """    weight = torch.where(mb["adv"] > 0, state["pos_weight"], 1.0)
    info = {"ratio": ratio.detach(), "clipped_low": clipped_low, "clipped_high": clipped_high, "weight": weight}
"""
FORK_LOSS = """    weight = torch.where(mb["adv"] > 0, state["pos_weight"], 1.0)
    weight = weight * torch.where(current["entropy"].detach() > 0.3, 2.0, 1.0)  # the idea: forking tokens count double
    info = {"ratio": ratio.detach(), "clipped_low": clipped_low, "clipped_high": clipped_high, "weight": weight}
"""


def run(script: Path, run_dir: Path) -> list[dict]:
    command = [sys.executable, str(script), "--model", str(REPO / "testbed" / "model"), "--total-steps", "2"]
    command += [
        "--prompts-per-step",
        "4",
        "--group-size",
        "4",
        "--eval-every",
        "0",
        "--output-dir",
        str(run_dir.parent),
    ]
    command += ["--run-name", run_dir.name, "--log-completions-every", "0", "--grader-workers", "1"]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=script.parent, timeout=600)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_fork_that_changes_only_the_token_loss_acts(tmp_path):
    grpo_text = (REPO / "grpo.py").read_text()
    assert GRPO_LOSS in grpo_text, "the README's fork example no longer matches grpo.py's policy_token_loss"
    fork = tmp_path / "myidea.py"
    fork_text = grpo_text.replace(GRPO_LOSS, FORK_LOSS)
    fork.write_text(fork_text)
    hunks = [
        line
        for line in difflib.unified_diff(grpo_text.splitlines(), fork_text.splitlines(), n=0)
        if line.startswith("@@")
    ]
    assert 1 <= len(hunks) <= 3, hunks

    sync = subprocess.run(
        [sys.executable, str(REPO / "tools" / "sync_shared_sections.py"), "--check", str(fork)],
        capture_output=True,
        text=True,
    )
    assert sync.returncode == 0 and "out of sync: none" in sync.stdout, sync.stdout

    (tmp_path / "common").symlink_to(
        REPO / "common"
    )  # the fork lives beside the repository's packages, as a copy would
    fork_metrics = run(fork, tmp_path / "runs" / "fork")
    grpo_metrics = run(REPO / "grpo.py", tmp_path / "runs" / "grpo")
    # the shared code reports the size of the action from info["weight"]: share of tokens changed, mean |w − 1|
    assert all(0.05 < m["action/changed_frac"] < 0.95 for m in fork_metrics), [
        m["action/changed_frac"] for m in fork_metrics
    ]
    assert all(m["action/weight_dev_mean"] == m["action/changed_frac"] for m in fork_metrics)  # w is 2 or 1
    assert all(m["action/changed_frac"] == 0 and m["action/weight_dev_mean"] == 0 for m in grpo_metrics)
    assert fork_metrics[0]["rollout/reward"] == grpo_metrics[0]["rollout/reward"]  # same seed: the same first rollout
    assert fork_metrics[0]["train/policy_loss"] != grpo_metrics[0]["train/policy_loss"]  # the weighting acted
    assert fork_metrics[1]["entropy/mean"] != grpo_metrics[1]["entropy/mean"]  # and the next step's policy differs
