"""The committed CPU testbed model and its task ``paths``: the model loads offline from the repo, the task
grades and recognises its formats, and the model sits where RL in the entropy papers starts (broad ranges
here; the builder's 1024-problem measurement, recorded in build_info.json, is checked against the issue's
exact ranges)."""

import json
import random
from pathlib import Path

import torch

from common.data import (
    DEFAULT_TASK,
    PATHS_SEPARATORS,
    SYNTHETIC_TASKS,
    build_prompt,
    check_source,
    load_problems,
    make_paths_problems,
    paths_format,
    paths_solution,
)
from common.reward import score

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "testbed" / "model"


def test_paths_task_splits_solutions_and_formats():
    train = load_problems("paths", limit=400)
    test = load_problems("paths", split="test", limit=400)
    assert train == load_problems("paths", split="train", limit=400) == make_paths_problems(400, "train", seed=0)
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert len(load_problems("paths", split="test")) == 500 and DEFAULT_TASK == "paths" in SYNTHETIC_TASKS
    check_source("paths")
    for p in train[:50]:
        a, b, c = p["terms"]
        assert p["question"] == f"Compute {a}+{b}+{c}." and p["answer"] == str(a + b + c) and p["source"] == "paths"
    rng = random.Random(0)
    solutions, golds = [], []
    for p in train:
        for fmt in ("careful", "pairwise"):
            solutions.append(paths_solution(tuple(p["terms"]), fmt, rng))
            golds.append(p["answer"])
            assert paths_format(solutions[-1]) == fmt
            assert len(solutions[-1]) + 1 <= 64  # responses fit the scripts' 64 new tokens, EOS included
    assert list(score(solutions, golds, num_workers=0)) == [1.0] * len(solutions)
    assert paths_solution((83, 51, 39), "careful", rng) == "units 3+1=4+9=13, tens 8+5=13+3=16+1=17, \\boxed{173}"
    pairwise = {paths_solution((83, 51, 39), "pairwise", rng) for _ in range(2000)}
    assert len(pairwise) == 6 * 2 * len(PATHS_SEPARATORS)  # the 36 equivalent pairwise paths
    assert "83+51=134, 134+39=\\boxed{173}" in pairwise and "39+83=122; 51+122=\\boxed{173}" in pairwise
    assert paths_format("  hello") == "other"


def test_build_info_records_the_issue_ranges():
    """The builder's measurement (1024 test problems, T = 1) of the committed model."""
    info = json.loads((MODEL / "build_info.json").read_text())
    m = info["measured"]
    assert info["args"]["task"] == "paths" and info["num_params"] <= 1_000_000 and m["num_problems"] >= 1024
    assert 0.2 <= m["entropy"] <= 0.5 and m["top20_share"] >= 0.6
    assert 0.2 <= m["accuracy"] <= 0.4
    assert 0 < m["careful_share"] <= 0.10
    assert m["careful_forced_accuracy"] - m["pairwise_accuracy"] >= 0.20
    assert m["careful_accuracy"] - m["pairwise_accuracy"] >= 0.20


def test_testbed_loads_offline_and_starts_where_rl_in_the_papers_starts(monkeypatch):
    """A fresh 256-problem measurement: broad ranges around the recorded figures (sampling noise, other
    torch builds)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from testbed.measure import measure

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    assert 0.3e6 <= sum(p.numel() for p in model.parameters()) <= 1e6
    problems = load_problems(DEFAULT_TASK, split="test", limit=256)
    prompt = build_prompt(problems[0]["question"], "plain")
    assert tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt  # character-level round trip
    m = measure(model, tokenizer, problems, seed=0)
    assert 0.15 <= m["entropy"] <= 0.6, m
    assert m["top20_share"] >= 0.5, m  # a minority of positions carries most of the entropy
    assert 0.12 <= m["accuracy"] <= 0.5, m  # groups of 8 are mixed
    assert m["other_share"] <= 0.1, m  # the responses are in the task's formats
    assert m["careful_share"] <= 0.15, m  # the careful format is rarely chosen ...
    assert m["careful_forced_accuracy"] - m["pairwise_accuracy"] >= 0.1, m  # ... but pays when it is
    assert m["tokens_per_response"] <= 64
