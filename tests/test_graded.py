"""The study's testbed task `graded`: six families, each with one quick path and its own careful column path;
the scripts' per-family careful share and compare.py's per-family discovery step."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import grpo  # noqa: E402
from benchmarks import compare  # noqa: E402
from common.data import (  # noqa: E402
    GRADED_FAMILIES,
    careful_format,
    graded_family,
    graded_format,
    graded_solution,
    load_problems,
    make_graded_problems,
)
from common.reward import score  # noqa: E402


def test_every_solution_is_correct_and_names_its_family():
    problems = make_graded_problems(600, "train", seed=3, careful_share=0.5)
    assert {p["family"] for p in problems} == {name for name, _, _ in GRADED_FAMILIES}
    for p in problems:
        assert graded_family(p["question"]) == p["family"]
        widths = next(w for name, w, _ in GRADED_FAMILIES if name == p["family"])
        assert tuple(len(str(t)) for t in p["terms"]) == widths and p["answer"] == str(sum(p["terms"]))
        for fmt in ("quick", "careful"):
            text = graded_solution(tuple(p["terms"]), fmt, "w")
            assert re.search(r"\\boxed\{(\d+)\}", text).group(1) == p["answer"]
    assert all(score([p["solution"] for p in problems], [p["answer"] for p in problems], num_workers=0))


def test_careful_columns_add_one_digit_at_a_time_with_the_carry_last():
    assert graded_solution((83, 51, 9), "careful", "right") == "right 3+1=4+9=13, 8+5=13+1=14, \\boxed{143}"
    assert graded_solution((999, 77), "careful", "digits") == "digits 9+7=16, 9+7=16+1=17, 9+1=10, \\boxed{1076}"
    assert graded_solution((83, 51, 9), "quick", "right") == "83+51=134, 134+9=\\boxed{143}"
    assert graded_solution((483, 251), "quick", "cols") == "483+251=\\boxed{734}"
    with pytest.raises(ValueError, match="unknown graded format"):
        graded_solution((1, 2), "pairwise", "x")


def test_formats_families_and_splits():
    for _, _, word in GRADED_FAMILIES:
        assert graded_format(f" {word} 1+2=3, \\boxed{{3}}") == "careful" and careful_format("graded", word)
    assert graded_format("cols 1+2=3", family="f") == "careful" and graded_format("cols 1+2=3", family="a") == "other"
    assert graded_format("12+34=46") == "quick" and graded_format("I think 46") == "other"
    assert careful_format("paths", "units 1") and careful_format("gsm8k", "units") is None
    assert graded_family("Compute 1+2+3+4.") is None and graded_family("What is 2+2?") is None
    assert len({w for _, w, _ in GRADED_FAMILIES}) == len(GRADED_FAMILIES)  # each family distinct by its widths
    assert len({word[0] for _, _, word in GRADED_FAMILIES}) == len(GRADED_FAMILIES)  # and by the first token
    train = {p["question"] for p in load_problems("graded", split="train", limit=3000)}
    test = {p["question"] for p in load_problems("graded", split="test")}
    assert len(test) == 500 and not train & test


def test_the_scripts_log_each_familys_careful_share():
    problems = [{"question": "Compute 83+51."}, {"question": "Compute 483+251."}]
    texts = ["units 3+1=4, 8+5=13, \\boxed{134}", "cols 3+1=4", "cols 3+1=4", "483+251=\\boxed{734}"]
    args = grpo.Args(train_data="graded", prompts_per_step=2, group_size=2)  # prompt-major: 2 problems x 2 samples
    metrics = grpo.Metrics()
    samples = [{"text": t, "response_ids": [1]} for t in texts]
    rewards = type("Rewards", (list,), {"no_answer": 0, "timeouts": 0})([0.0] * 4)
    grpo.log_generation_batch(
        metrics, args, samples, problems, rewards, torch.zeros(2, 2), torch.zeros(2, dtype=torch.bool), 1, 1, 0, 0
    )
    one = type("One", (), {"num_processes": 1, "device": torch.device("cpu")})()
    logged = metrics.reduce(one)
    assert logged["rollout/careful_frac"] == 0.75  # any family's careful word
    assert logged["rollout/careful_frac_a"] == 0.5 and logged["rollout/careful_frac_f"] == 0.5  # its own word only
    assert logged["rollout/careful_frac_b"] != logged["rollout/careful_frac_b"]  # not sampled this step: NaN


def test_discovery_step_is_the_mean_over_families_of_a_windowed_crossing(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.2}]
    for step in range(1, 21):
        row = {"step": step, "entropy/mean": 0.2, "entropy/forking_mean": 0.8, "time/step_s": 1.0}
        row["rollout/careful_frac"] = 0.1
        row["rollout/careful_frac_a"] = 1.0 if step >= 6 else 0.0  # window of 5 passes 0.5 at step 8
        row["rollout/careful_frac_b"] = 0.9 if step == 3 else 0.1  # one noisy step: never discovered
        row["rollout/careful_frac_c"] = float("nan") if step % 2 else 1.0  # sampled on even steps: step 10
        rows.append(row)
    rows[-1]["eval/accuracy"] = 0.5
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = compare.summarise(tmp_path)
    assert summary["families_discovered"] == 2 and summary["families"] == 3
    assert summary["discovery_step"] == pytest.approx((8 + 21 + 10) / 3)


GRADED_MODEL = REPO / "testbed" / "graded"


def test_the_graded_model_records_where_it_starts():
    """The builder's measurement (1024 test problems, T = 1) of testbed/graded: accuracy 20-40%, every family's
    careful path rare (<= 10%) and worth at least 30 points when forced, no entropy at interchangeable choices. Its
    entropy (~0.10) is below the 0.2-0.5 of the paths testbed: what is left once no choice is interchangeable."""
    info = json.loads((GRADED_MODEL / "build_info.json").read_text())
    m = info["measured"]
    assert info["args"]["task"] == "graded" and info["num_params"] <= 1_000_000 and m["num_problems"] >= 1024
    assert 0.2 <= m["accuracy"] <= 0.4 and 0.05 <= m["entropy"] <= 0.5 and m["top20_share"] >= 0.6
    assert m["entropy_where"]["interchangeable"] == 0
    for name, _, _ in GRADED_FAMILIES:
        family = m[f"family_{name}"]
        assert family["careful_share"] <= 0.10 and family["careful_forced_accuracy"] - family["quick_accuracy"] >= 0.3


def test_the_graded_model_loads_and_measures_alike(monkeypatch):
    """A fresh 256-problem measurement, broad ranges around the recorded figures."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from testbed.measure import measure

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(GRADED_MODEL)
    model = AutoModelForCausalLM.from_pretrained(GRADED_MODEL).eval()
    m = measure(model, tokenizer, load_problems("graded", split="test", limit=256), seed=0, forced=False)
    assert 0.05 <= m["entropy"] <= 0.3 and 0.12 <= m["accuracy"] <= 0.5 and m["careful_share"] <= 0.15, m
    assert m["entropy_where"]["interchangeable"] == 0 and m["tokens_per_response"] <= 64, m
