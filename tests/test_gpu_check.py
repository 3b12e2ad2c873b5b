"""benchmarks/gpu_check.py, the prepared first GPU hour, in its tiny CPU configuration (`--tiny`: 2 steps, small
batch, a ~1M-parameter random Qwen2, fp32): every training script runs end to end and is one row of the printed
table, without error; eval_math.py runs on the first run. Also the metrics summary on a partial file, the check's
flags (defaults, refusals, and every training script accepting the command line it builds), gpu_check.sh (the
carried wheels installed first on PYTHONPATH, arguments and exit status passed through) and the wheel list of
fetch_gpu_wheels.sh (one pinned version each, within requirements.txt)."""

import importlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_tiny_configuration_runs_every_script(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--tiny", "--keep", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^\| \w+\.py \|", line)]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(gpu_check.SCRIPTS)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        script, model, steps, *_, compiled, error = cells
        assert model.startswith("qwen2-random-1m (1.0M params)") and steps == "2", row
        assert error == "none" and compiled == "no (eager)", row  # CPU: the kernel runs eager
        assert re.fullmatch(r"\d\.\d{3} → \d\.\d{3}", cells[7]), row  # entropy/mean first -> last
    assert "torch.cuda.is_available(): False" in proc.stdout
    assert re.search(r"eval_math\.py --model <grpo__qwen2-random-1m> .*: paths avg@1 [\d.]+", proc.stdout)
    assert "5/5 runs without error" in proc.stdout
    assert out.read_text().strip() == proc.stdout[proc.stdout.index("## GPU check") :].strip()
    assert (tmp_path / "work" / "runs" / "grpo__qwen2-random-1m" / "metrics.jsonl").is_file()


def test_summary_of_a_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": s, "time/step_s": t, "entropy/mean": e, "train/ppo_kl": k, "rollout/logp_diff_max": d}
        for s, t, e, k, d in [
            (1, 9.0, 1.5, 0.0, 1e-3),
            (2, 1.0, 1.4, -2e-3, 5e-3),
            (3, 2.0, 1.2, 1e-3, 2e-3),
            (4, 3.0, 1.1, 0.0, 1e-3),
        ]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "time/st')  # a partial last line
    summary = gpu_check.summarise(gpu_check.read_metrics(str(path)))
    assert summary == {
        "steps": 4,
        "step_s": 2.0,
        "first_step_s": 9.0,
        "entropy": (1.5, 1.1),
        "ppo_kl": 2e-3,
        "logp_diff_max": 5e-3,
        "ppo_kl_nan": 0,
        "ppo_kl_nan_filtered": 0,
    }
    assert gpu_check.summarise([])["steps"] == 0


def test_steps_without_an_update_in_the_summary():
    """clip_cov.py on a random-initialised model: DAPO's filter leaves no group, the step updates nothing and its
    train/* metrics are nan. The largest |ppo_kl| is over finite values (whatever their order) and the nan steps are
    counted, and told apart from a nan after an update."""
    rows = [
        {"step": 1, "time/step_s": 1.0, "train/ppo_kl": float("nan"), "rollout/filtered_group_frac": 1.0},
        {"step": 2, "time/step_s": 1.0, "train/ppo_kl": float("nan"), "rollout/filtered_group_frac": 1.0},
    ]
    summary = gpu_check.summarise(rows)
    assert (summary["ppo_kl"], summary["ppo_kl_nan"], summary["ppo_kl_nan_filtered"]) == (None, 2, 2)
    assert gpu_check.kl_cell(summary) == "nan (2 steps, every group filtered)"
    rows.append({"step": 3, "time/step_s": 1.0, "train/ppo_kl": -0.25, "rollout/filtered_group_frac": 0.5})
    rows.append({"step": 4, "time/step_s": 1.0, "train/ppo_kl": float("nan"), "rollout/filtered_group_frac": 0.5})
    summary = gpu_check.summarise(rows)
    assert gpu_check.kl_cell(summary) == "0.25, nan (3 steps, 2 with every group filtered)"
    assert gpu_check.kl_cell(gpu_check.summarise(rows[2:3])) == "0.25"


def test_flags_defaults_and_refusals():
    gpu, tiny = gpu_check.parse_args([]), gpu_check.parse_args(["--tiny"])
    assert (gpu.steps, gpu.budget_s, gpu.run_timeout_s, gpu.max_gen_batches) == (20, 450.0, 240.0, 2)
    assert (tiny.steps, tiny.budget_s, tiny.run_timeout_s, tiny.max_gen_batches) == (2, 600.0, 180.0, 2)
    assert gpu.scripts == list(gpu_check.SCRIPTS)
    given = gpu_check.parse_args(["--tiny", "--steps", "3", "--max-gen-batches", "5", "--scripts", "grpo.py, steer.py"])
    assert (given.steps, given.max_gen_batches, given.scripts) == (3, 5, ["grpo.py", "steer.py"])
    flags = gpu_check.common_flags(given)
    assert flags[flags.index("--max-gen-batches") + 1] == "5" and flags[flags.index("--total-steps") + 1] == "3"
    for bad in (["--steps", "0"], ["--max-gen-batches", "0"], ["--budget-s", "-1"], ["--scripts", "nope.py"]):
        with pytest.raises(SystemExit) as e:
            gpu_check.parse_args(bad)
        assert e.value.code == 2, bad


@pytest.mark.parametrize("tiny", [True, False], ids=["tiny", "gpu"])
def test_every_script_accepts_the_flags(tiny, tmp_path):
    """The command line of each run, parsed by the script's own parser: the DAPO cap reaches clip_cov.py, which
    filters groups by default (a random-initialised model earns no reward: without the cap, 10 rounds a step)."""
    args = gpu_check.parse_args(["--tiny"] if tiny else [])
    for script in gpu_check.SCRIPTS:
        module = importlib.import_module(script.removesuffix(".py"))
        parsed = module.parse_args(gpu_check.training_flags(args, gpu_check.TESTBED, str(tmp_path), "tag"))
        assert parsed.max_gen_batches == 2 and parsed.total_steps == args.steps, script
        assert parsed.rollout_engine == "hf" and parsed.precision == ("fp32" if tiny else "bf16"), script
        assert (parsed.eval_every, parsed.checkpoint_every, parsed.run_name) == (0, 0, "tag"), script
        assert parsed.filter_groups == (script == "clip_cov.py"), script


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel: one module `<name>_gpu_check_probe` and its dist-info."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}_gpu_check_probe.py": "VALUE = 1\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
    return path


def _gpu_check_sh(args: list[str], wheels: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "WHEELS_DIR": str(wheels)}
    return subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_gpu_check_sh_installs_the_wheels_and_passes_arguments_on(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _gpu_check_sh(["--tiny"], empty)
    assert proc.returncode == 2 and "no wheels in" in proc.stderr and "fetch_gpu_wheels.sh" in proc.stderr

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "tyro", "99.0")  # shadows the environment's tyro: the carried folder comes first
    proc = _gpu_check_sh(["--help"], wheels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installed 1 wheels" in proc.stdout and "tyro 99.0 (carried)" in proc.stdout
    assert re.search(r"; torch \S+, transformers \S+,", proc.stdout)  # the environment's own, listed
    assert "usage: gpu_check.py" in proc.stdout and "--max-gen-batches" in proc.stdout
    site = re.search(r"into (\S+) \(first on PYTHONPATH\)", proc.stdout).group(1)
    assert not os.path.exists(site)  # the temporary install is removed

    proc = _gpu_check_sh(["--tiny", "--steps", "0"], wheels)  # the check's own refusal, status passed through
    assert proc.returncode == 2 and "--steps must be >= 1" in proc.stderr, proc.stdout + proc.stderr


def test_fetched_wheels_are_pinned_and_within_requirements():
    text = (REPO / "benchmarks" / "fetch_gpu_wheels.sh").read_text()
    pins = [Requirement(line.strip()) for line in text.split("WHEELS=(")[1].split(")")[0].split()]
    names = [pin.name.lower().replace("_", "-") for pin in pins]
    assert len(names) == len(set(names)) and {"tyro", "math-verify"} <= set(names)
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", pin
    required = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            required[req.name.lower()] = req.specifier
    for pin in pins:
        version = next(iter(pin.specifier)).version
        if pin.name.lower() in required:
            assert required[pin.name.lower()].contains(version), (pin, required[pin.name.lower()])
