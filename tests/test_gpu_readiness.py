"""GPU-path defects a first vLLM run would hit, checked on CPU where the code runs here (issue: the first run on a real
model must not fail): the engine's context length, and the flag combinations vLLM refuses or biases. The vLLM engine
itself cannot run on this machine; `build_vllm_engine` is replaced by a recorder of what it was asked for."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import grpo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def engine_request(monkeypatch):
    asked = {}

    def record(model, seed, memory, max_model_len, sleep_mode=False, accelerator=None, dtype="bfloat16"):
        asked.update(model=model, seed=seed, max_model_len=max_model_len)
        return "engine"

    monkeypatch.setattr(grpo, "build_vllm_engine", record)
    return asked


def problems(*lengths):
    return [{"prompt_ids": [1] * n} for n in lengths]


def test_vllm_context_is_what_the_run_needs_within_what_the_model_allows(engine_request):
    accelerator = SimpleNamespace(process_index=1)
    args = grpo.Args(max_new_tokens=64, seed=3)  # testbed model: max_position_embeddings 512
    assert grpo.start_vllm(args, grpo.TESTBED_MODEL, problems(10, 40), accelerator) == "engine"
    assert engine_request == {"model": grpo.TESTBED_MODEL, "seed": 4, "max_model_len": 104}
    grpo.start_vllm(grpo.Args(max_new_tokens=600), grpo.TESTBED_MODEL, problems(40), accelerator)
    assert engine_request["max_model_len"] == 512  # capped at the model's positions (a warning says it is short)
    with pytest.raises(grpo.UsageError, match="allows 512 positions"):
        grpo.start_vllm(grpo.Args(vllm_max_model_len=4096), grpo.TESTBED_MODEL, problems(40), accelerator)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"top_p": 0.9, "rollout_is_cap": 2.0}, "--top-p 0.9: must be 1 with truncated IS"),
        ({"temperature": 2.5}, "--temperature 2.5: must be <= 2 with vLLM"),
    ],
)
def test_flag_combinations_vllm_refuses_or_biases_are_refused(flags, message):
    with pytest.raises(grpo.UsageError, match=message.replace("(", r"\(")):
        grpo.check_flag_values(grpo.Args(**flags), world=1, engine="vllm")
    grpo.check_flag_values(grpo.Args(**{**flags, "rollout_is_cap": 0.0, "temperature": 1.0}), world=1, engine="vllm")


def test_an_output_dir_under_a_regular_file_is_refused_before_anything_loads(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    command = [sys.executable, str(REPO / "grpo.py"), "--output-dir", str(afile / "runs")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --output-dir {afile / 'runs'}: {afile} is a file, not a directory"
