"""End-to-end runs of grpo.py on the testbed model, in subprocesses (CPU)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
    "--max-new-tokens",
    "40",
    "--num-eval-problems",
    "8",
    "--micro-batch-size",
    "8",
    "--grader-workers",
    "1",
    "--log-completions-every",
    "1",
]
EXPECTED_METRICS = {
    "rollout/reward",
    "rollout/accuracy",
    "rollout/no_answer_frac",
    "rollout/filtered_group_frac",
    "rollout/all_correct_group_frac",
    "rollout/all_wrong_group_frac",
    "rollout/response_length_mean",
    "rollout/response_length_max",
    "rollout/truncated_frac",
    "rollout/logp_diff_mean",
    "rollout/logp_diff_max",
    "rollout/grader_timeouts",
    "rollout/gen_batches",
    "rollout/advantage_abs_mean",
    "entropy/mean",
    "entropy/forking_mean",
    "entropy/nonforking_mean",
    "rollout/careful_frac",
    "entropy/flow_increase",
    "entropy/flow_decrease",
    "entropy/flow_net",
    "entropy/increase_frac",
    "entropy/cov_adv_logp",
    "train/policy_loss",
    "action/changed_frac",
    "action/weight_dev_mean",
    "train/clip_frac_low",
    "train/clip_frac_high",
    "train/ppo_kl",
    "train/grad_norm",
    "train/learning_rate",
    "train/skipped_updates",
    "time/rollout_s",
    "time/grading_s",
    "time/training_s",
    "time/step_s",
    "time/tokens_per_s",
}


def run(args, cwd=REPO, launcher=(sys.executable,), timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*launcher, "grpo.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "grpo.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for flag in [
        "--total-steps",
        "--clip-high",
        "--loss-agg-mode",
        "--pos-weight-schedule",
        "--rollout-engine",
        "--resume",
    ]:
        assert flag in out.stdout


def test_two_step_run_writes_metrics_and_a_checkpoint_with_its_model(tmp_path):
    proc = run(
        [
            *TINY,
            "--total-steps",
            "2",
            "--eval-every",
            "2",
            "--measure-entropy-change",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "e2e",
        ]
    )
    run_dir = tmp_path / "e2e"
    assert f"run directory: {run_dir}" in proc.stdout
    initial, *rows = metrics(run_dir)
    assert initial["step"] == 0 and set(initial) == {
        "step",
        "eval/accuracy",
        "eval/response_length_mean",
        "eval/no_answer_frac",
    }
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert EXPECTED_METRICS <= set(row), EXPECTED_METRICS - set(row)
        assert 0.0 <= row["rollout/accuracy"] <= 1.0 and row["entropy/mean"] > 0
        assert row["rollout/logp_diff_mean"] < 1e-3  # HF engine: same weights, so only float noise
        assert row["train/ppo_kl"] == 0.0 and row["train/clip_frac_low"] == row["train/clip_frac_high"] == 0.0
        assert "entropy/realised_change" in row
    assert "eval/accuracy" in rows[1]
    glossary = set(
        re.findall(r"`([a-z]+/[A-Za-z0-9_]+)`", (REPO / "docs" / "metrics.md").read_text().split("# Logged metrics")[1])
    )
    logged = {k for row in [initial, *rows] for k in row if k != "step"}
    assert logged <= glossary, f"metrics missing from the glossary docs/metrics.md: {logged - glossary}"
    assert (run_dir / "checkpoints" / "step_000002" / "trainer_state.json").exists()
    assert (run_dir / "completions.jsonl").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "step_000002" / "hf")
    assert f"done: {run_dir}  (model: {run_dir}/checkpoints/step_000002/hf)" in proc.stdout


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    """A run stopped after its step-2 checkpoint and resumed ends with the same metrics as one that was not."""
    common = [
        *TINY,
        "--total-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
        "5",
        "--eval-every",
        "0",
        "--output-dir",
        str(tmp_path),
    ]
    run([*common, "--run-name", "full"])
    full = metrics(tmp_path / "full")
    # the interrupted run: everything after the step-2 checkpoint is lost
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_000004")
    run([*common, "--resume", str(tmp_path / "cut")])
    resumed = metrics(tmp_path / "cut")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    timing = lambda row: {k: v for k, v in row.items() if not k.startswith("time/")}  # noqa: E731
    assert [timing(r) for r in resumed] == [timing(r) for r in full]


def test_pos_weight_initial_entropy_is_measured_saved_and_kept_by_a_resume(tmp_path):
    """Entropy-guided, relative δ (the default): H₀ is step 1's entropy/mean, saved in the checkpoint; the resumed
    step 2 uses that H₀ (not its own entropy) for δ = 0.55 H₀, and λ follows the schedule."""
    import grpo

    common = [*TINY, "--pos-weight-schedule", "entropy-guided", "--eval-every", "0", "--output-dir", str(tmp_path)]
    proc = run([*common, "--total-steps", "1", "--run-name", "guided"])
    run_dir = tmp_path / "guided"
    state = lambda step: json.loads(  # noqa: E731
        (run_dir / "checkpoints" / f"step_{step:06d}" / "trainer_state.json").read_text()
    )["algo_state"]
    (row1,) = metrics(run_dir)
    h0 = row1["entropy/mean"]
    assert f"initial entropy H₀ = {h0:.4g}" in proc.stdout
    assert state(1)["initial_entropy"] == h0 and state(1)["initial_entropies"] == [h0]
    delta = 0.55 * h0
    assert state(1)["pos_weight"] == grpo.pos_weight_update(0.0, h0, delta, 0.05) == 0.05  # H₀ > 0.55 H₀: λ rises
    proc = run([*common, "--total-steps", "2", "--resume", str(run_dir)])
    assert "initial entropy" not in proc.stdout  # not measured again
    row1_again, row2 = metrics(run_dir)
    assert row1_again == row1 and row2["algo/pos_weight"] == 0.05
    assert state(2)["initial_entropy"] == h0
    assert state(2)["pos_weight"] == grpo.pos_weight_update(0.05, row2["entropy/mean"], delta, 0.05)


def test_two_process_cpu_run_through_accelerate(tmp_path):
    # on a CPU-only machine `--multi_gpu` starts 2 processes (torchrun); grpo.py then uses gloo.
    # (`accelerate launch --cpu` always starts a single process.)
    launcher = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    )
    proc = run(
        [
            *TINY,
            "--total-steps",
            "2",
            "--eval-every",
            "2",
            "--filter-groups",
            "--max-gen-batches",
            "2",
            "--output-dir",
            str(tmp_path),
        ],
        launcher=launcher,
    )
    (run_dir,) = list(tmp_path.iterdir())  # the default run name is shared by both processes
    assert (run_dir / "checkpoints" / "step_000002" / "random_states_1.pkl").exists()
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "processes: 2" in proc.stdout
    rows = rows[1:]
    assert all(EXPECTED_METRICS <= set(r) for r in rows)
    assert rows[-1]["rollout/gen_batches"] >= 1 and "eval/accuracy" in rows[-1]


def test_every_knob_at_once_runs(tmp_path):
    """KL to the reference, entropy bonus, off-policy epochs/minibatches, Dr.GRPO aggregation, dynamic
    sampling, overlong shaping, truncation masking, the entropy-guided λ and gradient checkpointing (whose layers
    drop the KV cache: the update runs one forward per row) in one short run."""
    run(
        [
            *TINY,
            "--total-steps",
            "2",
            "--eval-every",
            "0",
            "--kl-coef",
            "0.05",
            "--ent-coef",
            "0.01",
            "--update-epochs",
            "2",
            "--num-minibatches",
            "2",
            "--micro-batch-size",
            "4",
            "--scale-rewards",
            "batch",
            "--loss-agg-mode",
            "seq-mean-token-sum-norm",
            "--filter-groups",
            "--max-gen-batches",
            "2",
            "--overlong-buffer",
            "8",
            "--mask-truncated",
            "--pos-weight-schedule",
            "entropy-guided",
            "--lr-schedule",
            "cosine",
            "--lr-warmup-steps",
            "1",
            "--gradient-checkpointing",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "knobs",
        ]
    )
    rows = metrics(tmp_path / "knobs")
    assert [r["step"] for r in rows] == [1, 2]
    assert all("train/kl_ref" in r and r["train/kl_ref"] >= 0 for r in rows)
    assert rows[0]["algo/pos_weight"] == 0.0  # λ₀ = 0
    for r in rows:  # DAPO's filter drops exactly the groups whose rewards are all equal
        assert r["rollout/filtered_group_frac"] == pytest.approx(
            r["rollout/all_correct_group_frac"] + r["rollout/all_wrong_group_frac"]
        )
    assert rows[-1]["train/skipped_updates"] == 0


def test_learning_rate_logged_is_the_one_the_step_used(tmp_path):
    run(
        [
            *TINY,
            "--total-steps",
            "3",
            "--eval-every",
            "0",
            "--lr-warmup-steps",
            "2",
            "--learning-rate",
            "1e-3",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "lr",
        ]
    )
    assert [r["train/learning_rate"] for r in metrics(tmp_path / "lr")] == pytest.approx([5e-4, 1e-3, 1e-3])


def test_skipping_the_old_policy_pass_changes_nothing(tmp_path, monkeypatch):
    """Strictly on-policy, ℓ_old, H, G come from the training forward; forcing the separate no-grad pass gives the
    same metrics (to float noise: other micro-batch groupings)."""
    import grpo

    def one_run(name):
        args = grpo.Args(
            output_dir=str(tmp_path),
            run_name=name,
            prompts_per_step=4,
            group_size=4,
            max_new_tokens=40,
            grader_workers=1,
            total_steps=2,
            micro_batch_size=5,
            eval_every=0,
            checkpoint_every=0,
        )
        return metrics(Path(grpo.main(args)))

    skipped = one_run("skip")
    monkeypatch.setattr(grpo, "needs_old_policy_pass", lambda args: True)
    forced = one_run("forced")
    for a, b in zip(skipped, forced):
        for key in ("entropy/mean", "entropy/flow_net", "entropy/cov_adv_logp", "rollout/reward", "train/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-9), key


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "/nonexistent/model"], "--model /nonexistent/model: no such directory"),
        (["--group-size", "0"], "--group-size"),
        (["--group-size", "1"], "--group-size 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--micro-batch-size", "0"], "--micro-batch-size"),
        (["--learning-rate", "-1"], "--learning-rate"),
        (["--dual-clip-c", "0.5"], "--dual-clip-c"),
        (["--clip-low", "-0.1"], "--clip-low"),
        (["--num-minibatches", "3"], "--num-minibatches 3"),
        (["--resume", "runs/does-not-exist"], "--resume runs/does-not-exist"),
        (["--pos-weight", "2"], "--pos-weight"),
        (["--pos-weight-target-entropy", "0.3"], "--pos-weight-target-entropy 0.3 is the absolute δ"),
        (["--run-name", "taken"], "--run-name taken"),
        (["--max-grad-norm", "0"], "--max-grad-norm 0.0: must be > 0"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints 0: must be >= 1"),
        (["--entropy-chunk-size", "0"], "--entropy-chunk-size 0: must be >= 1"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, flags, message):
    """Checked before anything is loaded or written: one `error:` line, exit status 2, no traceback, no run dir."""
    (tmp_path / "taken").mkdir()
    proc = subprocess.run(
        [sys.executable, "grpo.py", *flags, "--output-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # nothing else created


def test_bad_data_row_names_file_row_field_and_the_flag(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"question": "1+1?", "answer": "2"}) + "\n" + json.dumps({"question": "2+2?", "answer": ""}) + "\n"
    )
    proc = subprocess.run(
        [sys.executable, "grpo.py", "--train-data", str(bad), "--output-dir", str(tmp_path / "runs")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "bad.jsonl" in line and "answer" in line and "--skip-invalid" in line
    assert not (tmp_path / "runs").exists()


def test_help_has_a_description_and_the_flags_most_runs_set():
    out = subprocess.run([sys.executable, "grpo.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert (
        out.stdout.index("GRPO / DAPO / Dr.GRPO")
        < out.stdout.index("Most runs set: --model")
        < out.stdout.index("--seed")
    )
    assert out.stdout.count("(default: 0.28)") == 1  # each default printed once
    assert "(default: testbed/model)" in out.stdout  # not an absolute path of this clone


def test_dataset_smaller_than_one_batch_is_said_and_trains(tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text(
        json.dumps({"question": "Compute 12+30.", "answer": "42"})
        + "\n"
        + json.dumps({"question": "Compute 50-8.", "answer": "42"})
        + "\n"
    )
    proc = run(
        [
            *TINY,
            "--train-data",
            str(data),
            "--total-steps",
            "2",
            "--eval-every",
            "0",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "small",
        ]
    )
    assert "note: 2 training problems, fewer than --prompts-per-step 4" in proc.stdout
    assert [r["step"] for r in metrics(tmp_path / "small")] == [1, 2]
