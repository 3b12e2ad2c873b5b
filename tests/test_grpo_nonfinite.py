"""A non-finite loss skips the optimizer step, is counted, and never reaches the weights."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import grpo


def test_nan_loss_skips_update_and_keeps_weights(tmp_path, monkeypatch):
    real_loss = grpo.policy_token_loss

    def poisoned(mb, logp, args, state):
        loss, info = real_loss(mb, logp, args, state)
        return loss * float("nan"), info

    monkeypatch.setattr(grpo, "policy_token_loss", poisoned)
    args = grpo.Args(
        output_dir=str(tmp_path),
        run_name="nan",
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=40,
        grader_workers=1,
        total_steps=1,
        eval_every=0,
        checkpoint_every=0,
    )
    run_dir = grpo.main(args)
    row = json.loads(open(f"{run_dir}/metrics.jsonl").read().splitlines()[-1])
    assert row["train/skipped_updates"] == 1
    assert math.isnan(row["train/policy_loss"])
    before = load_file(f"{grpo.TESTBED_MODEL}/model.safetensors")
    after = load_file(f"{run_dir}/checkpoints/step_000001/hf/model.safetensors")
    for name, tensor in before.items():
        assert torch.isfinite(after[name]).all()
        assert torch.equal(after[name], tensor), name  # the update was skipped entirely


def test_a_run_whose_every_update_is_skipped_stops(tmp_path, monkeypatch):
    """Three rollout steps in a row with every update skipped end the run with a RunError saying what to do."""
    real_loss = grpo.policy_token_loss
    monkeypatch.setattr(
        grpo,
        "policy_token_loss",
        lambda mb, logp, args, state: (lambda out: (out[0] * float("inf"), out[1]))(real_loss(mb, logp, args, state)),
    )
    args = grpo.Args(
        output_dir=str(tmp_path),
        run_name="inf",
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=20,
        grader_workers=1,
        total_steps=10,
        eval_every=0,
        checkpoint_every=0,
    )
    with pytest.raises(grpo.RunError, match="every update of steps 1-3 was skipped"):
        grpo.main(args)
    rows = [json.loads(line) for line in open(tmp_path / "inf" / "metrics.jsonl")]
    assert [r["train/skipped_updates"] for r in rows] == [1, 1, 1]
