"""Dead ends a newcomer met at the start of a run (issue: no dead end, third pass): a model that fails to load leaves
no half-made run behind, a resume with another process count is refused with the launch command to use, a template
under which the grader never finds an answer is named in a warning, and Ctrl-C at any point is one line, exit 130."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--prompts-per-step", "4", "--group-size", "2", "--eval-every", "0", "--max-new-tokens", "16"]
TINY += ["--grader-workers", "1", "--log-completions-every", "0"]


def grpo(*flags, timeout=600):
    command = [sys.executable, str(REPO / "grpo.py"), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_a_model_that_fails_to_load_leaves_nothing_and_the_same_command_works_after(tmp_path):
    broken = tmp_path / "broken_model"
    shutil.copytree(REPO / "testbed" / "model", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated weights: the tokenizer loads, the model does not
    out = tmp_path / "runs"
    failed = grpo("--model", str(broken), "--output-dir", str(out), "--run-name", "first", "--total-steps", "1", *TINY)
    assert failed.returncode == 2 and failed.stderr.strip().startswith("error: --model"), failed.stderr
    assert not (out / "first").exists()  # no run folder, no .lock: nothing says "exists" or "not a run" afterwards
    works = grpo("--output-dir", str(out), "--run-name", "first", "--total-steps", "1", *TINY)
    assert works.returncode == 0, works.stderr
    assert (out / "first" / "metrics.jsonl").exists()


def test_continuing_with_another_process_count_is_refused_with_the_launch_command(tmp_path):
    out = tmp_path / "runs"
    made = grpo("--output-dir", str(out), "--run-name", "two", "--total-steps", "1", *TINY)
    assert made.returncode == 0, made.stderr
    checkpoint = next((out / "two" / "checkpoints").iterdir())
    shutil.copy(checkpoint / "random_states_0.pkl", checkpoint / "random_states_1.pkl")  # as a 2-process run saves
    resumed = grpo("--resume", str(out / "two"), "--total-steps", "2")
    assert resumed.returncode == 2
    line = resumed.stderr.strip()
    assert len(line.splitlines()) == 1 and "made with 2 processes, this launch has 1" in line, line
    assert f"accelerate launch --multi_gpu --num_processes 2 {REPO / 'grpo.py'} --resume {out / 'two'}" in line, line


def test_a_hub_id_without_network_is_one_line_within_seconds(tmp_path):
    """No local folder, not cached, hub unreachable (here: a closed loopback port as the hub): one error line that
    says how to use a local folder, before the hub client would retry for a minute."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    code = "import time, grpo; t = time.time()\ntry: grpo.resolve_model('Qwen/Qwen2.5-0.5B')\n"
    code += "except grpo.UsageError as e: print(round(time.time() - t, 1), e)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    seconds, message = result.stdout.split(" ", 1)
    assert float(seconds) < 20, result.stdout  # the hub client retries for about a minute
    assert "cannot be reached" in message and "--model PATH" in message and "HF_HUB_OFFLINE=1" in message


def test_a_launch_that_starts_fewer_processes_than_asked_is_reported(tmp_path):
    """`accelerate launch --num_processes 2 grpo.py` on CPU without --multi_gpu starts one process, with these set."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    command = [sys.executable, str(REPO / "grpo.py"), "--output-dir", str(tmp_path), "--total-steps", "0"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert "asked for several processes but started one" in result.stderr and "--multi_gpu" in result.stderr


def test_a_template_under_which_no_answer_is_ever_found_warns_once(tmp_path):
    result = grpo("--template", "qwen-math", "--output-dir", str(tmp_path), "--total-steps", "6", *TINY)
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (next(tmp_path.iterdir()) / "metrics.jsonl").read_text().splitlines()]
    assert all(m["rollout/no_answer_frac"] == 1 for m in metrics[:5])
    assert result.stderr.count("warning: no response of the first 5 steps had an answer") == 1
    assert "--template qwen-math" in result.stderr and "--template plain" in result.stderr


def interrupt(command: list[str], when: str | float, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `command`, send Ctrl-C (SIGINT to its process group, as a terminal does) after `when` seconds or once a
    line of its output contains `when`; return its exit status and output."""
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if isinstance(when, float) and time.time() > deadline - 300 + when:
                break
            if isinstance(when, str) and when in log.read_text():
                break
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, log.read_text(), stderr)


def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path):
    result = interrupt([sys.executable, str(REPO / "grpo.py"), "--output-dir", str(tmp_path)], 0.5, tmp_path)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().startswith("interrupted:"), result.stderr


def test_ctrl_c_during_training_is_one_line_with_the_command_to_continue(tmp_path):
    command = [sys.executable, str(REPO / "grpo.py"), "--output-dir", str(tmp_path), "--run-name", "r", *TINY]
    result = interrupt(command + ["--checkpoint-every", "1"], "step    2", tmp_path)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "continue with: python" in result.stderr and "--resume" in result.stderr, result.stderr
