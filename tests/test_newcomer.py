"""Faults a newcomer hits first (issue #33), for eval_math.py and testbed/build_testbed.py: eval's --threads and its
progress bar on a terminal (the samples stay those of one generate call), an --output-dir below a file refused
before anything loads, Ctrl-C while starting or generating (one `interrupted:` line, exit status 130, no traceback),
and the testbed builder refusing an unknown task before it builds anything."""

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval_math as em  # noqa: E402

TESTBED = REPO / "testbed" / "model"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
needs_testbed = pytest.mark.skipif(not (TESTBED / "config.json").exists(), reason=f"no testbed model at {TESTBED}")


def default_sigint():
    """In the child: SIGINT's default action, even where pytest runs as a background job (which ignores SIGINT, and
    Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class TerminalRun:
    """`python eval_math.py ARGS` with stderr on a pseudo-terminal (80 columns), as in an interactive shell, and
    stdout on a pipe; `.err` collects what the terminal shows."""

    def __init__(self, args, cwd=REPO):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "eval_math.py"), *args],
            cwd=cwd,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            preexec_fn=default_sigint,
        )
        os.close(slave)
        self.master, self.chunks = master, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            self.chunks.append(data.decode(errors="replace"))

    @property
    def err(self) -> str:
        return "".join(self.chunks)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        end = time.time() + timeout
        while time.time() < end and self.proc.poll() is None:
            if re.search(pattern, self.err):
                return True
            time.sleep(0.05)
        return bool(re.search(pattern, self.err))

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        self.reader.join(timeout=10)
        os.close(self.master)
        return self.proc.returncode, out, self.err


# ─── item 1: --threads and a progress bar, the samples unchanged ───────────────────────────────────
@needs_testbed
@pytest.mark.parametrize("n,batch_size", [(3, 4), (2, 4), (4, 64)])
def test_eval_generates_in_whole_batches_so_the_samples_are_those_of_one_call(n, batch_size):
    """The progress bar advances per chunk of lcm(n, --batch-size) sequences: the batches of grpo.generate's own
    splitting, so the same seed gives the same samples as one call over all prompts (7 prompts: a ragged tail)."""
    import grpo

    tokenizer = grpo.load_pretrained(str(TESTBED), "tokenizer")
    model = grpo.load_pretrained(str(TESTBED), "model").eval()
    stop_ids = grpo.stop_token_ids(tokenizer, str(TESTBED), "plain")
    ids = [tokenizer(f"Q: Compute {i}+{2 * i}+7.\nA:", add_special_tokens=False)["input_ids"] for i in range(7)]
    args = em.Args(seed=3, batch_size=batch_size)
    chunked = em.generate_benchmark("t", {"prompt_ids": ids, "n": n}, model, None, tokenizer, args, 1.0, 20, stop_ids)
    torch.manual_seed(3)
    whole = grpo.generate(model, None, tokenizer, ids, n, 1.0, 20, stop_ids, 1.0, batch_size, seed=3)
    assert chunked == whole and len(chunked) == 7 * n


def test_eval_vllm_engine_shows_its_own_progress_bar_in_one_call(monkeypatch):
    """vLLM: one generate call (its sampling and batching untouched), with use_tqdm on a terminal only."""
    calls = []

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm=True):
            calls.append((len(prompts), use_tqdm))
            return []

    for tty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty, raising=False)
        em._WithProgressBar(FakeLLM()).generate([1, 2, 3], None, use_tqdm=False)
    assert calls == [(3, True), (3, False)]


def test_eval_threads_flag_is_checked_like_the_training_scripts():
    assert em.Args().threads == 1
    with pytest.raises(em.UsageError, match=r"--threads must be >= 0"):
        em.check_args(em.Args(threads=-1))


@needs_testbed
def test_eval_shows_a_progress_bar_on_a_terminal_and_none_in_a_log(tmp_path):
    run = TerminalRun(
        ["--limit", "6", "--n", "2", "--batch-size", "4", "--threads", "1", "--grader-workers", "1"]
        + ["--output-dir", str(tmp_path / "tty")]
    )
    rc, out, err = run.finish(timeout=300)
    assert rc == 0, out[-2000:] + err[-2000:]
    assert re.search(r"paths: +100%\|.*\| 12/12 ", err), err  # tqdm's bar: 12 responses in chunks of 4
    assert "Traceback" not in err and "wrote " in out
    proc = subprocess.run(  # a log (no terminal): no bar, and the same samples
        [sys.executable, "eval_math.py", "--limit", "6", "--n", "2", "--batch-size", "4", "--grader-workers", "1"]
        + ["--output-dir", str(tmp_path / "log")],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "12/12" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "tty" / "completions.jsonl").read_text() == (tmp_path / "log" / "completions.jsonl").read_text()


# ─── item 4: --output-dir below a regular file ───────────────────────────────────────────────────────
def test_eval_refuses_an_output_dir_below_a_file_before_loading_anything(tmp_path):
    (tmp_path / "afile").write_text("x")
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval_math.py"), "--output-dir", "afile/out"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.splitlines() == ["error: --output-dir afile/out: afile is a file, not a directory"]
    assert time.time() - start < 60 and "responses in" not in proc.stdout
    assert not (tmp_path / "eval_out").exists()


def test_check_writable_dir_refuses_files_and_dangling_links_and_accepts_new_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for path, message in [
        ("afile", "--output-dir afile: afile is a file, not a directory"),
        ("afile/out/deeper", "--output-dir afile/out/deeper: afile is a file, not a directory"),
        (
            str(tmp_path / "afile" / "x"),
            f"--output-dir {tmp_path}/afile/x: {tmp_path}/afile is a file, not a directory",
        ),
        ("dangling/out", "--output-dir dangling/out: dangling is not a directory"),
    ]:
        with pytest.raises(em.UsageError) as error:
            em.check_writable_dir(path, "--output-dir")
        assert str(error.value) == message
    for path in ("new/deep/folder", ".", "", str(tmp_path / "x"), "~/.cache/../x"):
        em.check_writable_dir(path, "--output-dir")  # creatable: nothing raised
    with pytest.raises(em.UsageError, match="--output-dir afile/out: afile is a file"):
        em.main(em.Args(output_dir="afile/out"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (test_recovery covers a ro tmpfs)")
def test_check_writable_dir_refuses_a_read_only_folder(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(em.UsageError, match=r"--output-dir .*/ro/out is not writable \(.*/ro is read-only\)"):
        em.check_writable_dir(str(tmp_path / "ro" / "out"), "--output-dir")


# ─── item 7: Ctrl-C ──────────────────────────────────────────────────────────────────────────────────
def assert_interrupted(rc: int, out: str, err: str, where: str) -> None:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert rc == 130, (rc, out[-2000:], err[-2000:])
    assert "Traceback" not in err + out and "KeyboardInterrupt" not in err, err[-3000:]
    assert lines and re.match(rf"interrupted: while {where}", lines[-1]), err[-2000:]
    assert sum(line.startswith("interrupted:") for line in lines) == 1


@needs_testbed
def test_eval_sigint_kill_while_generating_exits_130_with_one_line(tmp_path):
    """SIGINT (Ctrl-C) once the progress bar shows: one `interrupted: while generating paths ...` line, exit 130,
    no traceback, nothing written."""
    run = TerminalRun(
        ["--limit", "400", "--n", "4", "--batch-size", "4", "--grader-workers", "1"]
        + ["--output-dir", str(tmp_path / "out")]
    )
    try:
        assert run.wait_for(r"paths: +\d+%", timeout=240), run.err[-2000:]
        time.sleep(0.5)
        run.proc.send_signal(signal.SIGINT)
        rc, out, err = run.finish(timeout=120)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert_interrupted(rc, out, err, r"generating paths \(benchmark 1 of 1\); no results written")
    assert not (tmp_path / "out").exists() and "responses in" not in out


@pytest.mark.parametrize("delay", [1.0, 4.0])
def test_eval_sigint_kill_while_starting_or_loading_exits_130_with_one_line(tmp_path, delay):
    """Ctrl-C early (while torch and transformers import, or the benchmarks and the model load): the same one line.
    Not a terminal here: stderr is a pipe, the line alone."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "eval_math.py"), "--limit", "400", "--output-dir", str(tmp_path / "out")],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert_interrupted(proc.returncode, out, err, "")
    assert len(err.strip().splitlines()) == 1, err


# ─── item 9: build_testbed.py refuses an unknown task before it builds ───────────────────────────────
def test_build_testbed_refuses_an_unknown_task_before_building(tmp_path):
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(REPO / "testbed" / "build_testbed.py"), "--task", "foo", "--out-dir", str(tmp_path / "m")],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.splitlines() == ["error: --task foo: unknown task, use one of paths, graded, arith"]
    assert "testbed model" not in proc.stdout and not (tmp_path / "m").exists()  # nothing built
    assert time.time() - start < 60


def test_build_testbed_check_args_refuses_settings_that_fail_later():
    from testbed import build_testbed as bt

    bt.check_args(bt.Args())
    bt.check_args(bt.Args(task="arith"))
    for bad, message in [
        ({"task": "Paths"}, "--task Paths: unknown task"),
        ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
        ({"careful_choice": 1.0}, "--careful-choice in [0, 1)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            bt.check_args(bt.Args(**bad))
    with pytest.raises(ValueError, match="--task foo"):
        bt.main(bt.Args(task="foo"))


@pytest.mark.parametrize("flag", ["--train-data", "--eval-data"])
def test_a_missing_data_file_is_one_line_naming_its_flag_before_anything_is_written(tmp_path, flag):
    out = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "grpo.py", flag, str(tmp_path / "nope.jsonl"), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {flag} {tmp_path / 'nope.jsonl'}: no such file"]
    assert not out.exists()
