"""Tests for eval_math.py: pass@k against brute force, equivalence-aware maj@n, diversity, settings, the HF
generation and entropy helpers on a tiny random model, the vLLM request/output helpers with stand-in
objects, an end-to-end CPU run on the testbed model and a dry run over the six real benchmarks."""

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, needs_data  # ($RLVR_DATA_DIR; skipped without it)

import eval_math as em
from common.data import BENCHMARKS

REPO = Path(__file__).resolve().parents[1]
TESTBED = REPO / "testbed" / "model"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ─── pass@k, maj@n, diversity ───────────────────────────────────────────────────────────────────
def brute_pass_at_k(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_over_all_k_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert em.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
    assert em.pass_at_k(32, 1, 1) == pytest.approx(1 / 32)
    assert 0.0 < em.pass_at_k(1024, 3, 512) <= 1.0  # stable for large n (no giant binomials)
    with pytest.raises(ValueError):
        em.pass_at_k(4, 5, 1)


def test_pass_k_values_are_powers_of_two_and_n():
    assert em.pass_k_values(1) == [1]
    assert em.pass_k_values(32) == [1, 2, 4, 8, 16, 32]
    assert em.pass_k_values(6) == [1, 2, 4, 6]


def sample(answer, score, text=None, length=3):
    return {
        "answer": answer,
        "score": score,
        "response": text or f"so \\boxed{{{answer}}}",
        "length": length,
        "truncated": False,
        "entropy_sum": 0.3 * length,
        "entropy_count": length,
    }


def test_majority_vote_clusters_equivalent_spellings():
    # three spellings of 1/2 outnumber a more frequent single wrong string
    answers = ["3", "\\frac{1}{2}", "3", "0.5", "1/2", None]
    assert em.cluster_answers(answers) == [[0, 2], [1, 3, 4]]
    assert em.majority_vote(answers) == 1
    gold_scores = [0, 1, 0, 1, 1, 0]
    m = em.benchmark_metrics([{"id": "p", "samples": [sample(a, s) for a, s in zip(answers, gold_scores)]}], n=6)
    assert m["maj@n"] == 1.0 and m["avg@n"] == pytest.approx(0.5)
    assert m["distinct_answer_frac"] == pytest.approx(2 / 6) and m["answer_rate"] == pytest.approx(5 / 6)
    # the reverse: the wrong answer is the largest cluster
    answers = ["\\frac{1}{2}", "7", "0.5", "7", "7"]
    m = em.benchmark_metrics([{"id": "p", "samples": [sample(a, s) for a, s in zip(answers, [1, 0, 1, 0, 0])]}], n=5)
    assert em.majority_vote(answers) == 1 and m["maj@n"] == 0.0
    # a tie goes to the cluster that appears first
    assert em.majority_vote(["7", "1/2", "0.5", "7"]) == 0
    assert em.majority_vote(["1/2", "7", "7", "0.5"]) == 0
    assert em.majority_vote([None, None]) is None


def test_benchmark_metrics_aggregates():
    problems = [
        {"id": "a", "samples": [sample("1", 1, "a b c d", 4), sample("1", 1, "a b c d", 6)]},
        {"id": "b", "samples": [sample("2", 0, "x y", 2), {**sample(None, 0, "x y z", 10), "truncated": True}]},
    ]
    m = em.benchmark_metrics(problems, n=2)
    assert m["avg@n"] == pytest.approx(0.5) and m["pass@k"] == {"1": pytest.approx(0.5), "2": pytest.approx(0.5)}
    assert m["maj@n"] == pytest.approx(0.5)
    assert (m["response_length_mean"], m["response_length_median"], m["response_length_max"]) == (5.5, 5.0, 10)
    assert m["truncation_rate"] == pytest.approx(0.25) and m["answer_rate"] == pytest.approx(0.75)
    assert m["entropy_mean"] == pytest.approx(0.3)
    # distinct-1: problem a has 4 distinct of 8 words, b 3 of 5; distinct-4: a 1 of 2, b none (skipped)
    assert m["distinct_ngrams"]["1"] == pytest.approx((4 / 8 + 3 / 5) / 2)
    assert m["distinct_ngrams"]["4"] == pytest.approx(0.5)
    assert m["distinct_answer_frac"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_parse_benchmarks_and_opefo_preset():
    assert em.parse_benchmarks(None, "none", 4) == [("paths", 4)]
    assert em.parse_benchmarks(None, "opefo", 4) == [
        ("aime24", 32),
        ("aime25", 32),
        ("amc23", 32),
        ("math500", 1),
        ("minerva_math", 1),
        ("olympiadbench", 1),
    ]
    assert em.parse_benchmarks("aime24@8, math500", "opefo", 4) == [("aime24", 8), ("math500", 1)]
    assert em.parse_benchmarks("json:/x/a@b.jsonl,arith@2", "none", 3) == [("json:/x/a@b.jsonl", 3), ("arith", 2)]
    with pytest.raises(ValueError):
        em.parse_benchmarks("arith,arith", "none", 1)


def test_resolve_model_for_runs_and_checkpoints(tmp_path, monkeypatch):
    """A run folder is its newest finished checkpoint's model (a stale older model is never picked), a checkpoint
    folder its hf/, a hub id itself (the hub taken as reachable: tests/test_startup_faults.py covers it offline)."""
    import grpo

    monkeypatch.setattr(grpo, "check_hub_reachable", lambda model: None)
    run = tmp_path / "arith__grpo__1__123"
    for sub in ("checkpoints/step_000010/hf", "checkpoints/step_000020/hf", "checkpoints/step_000030.tmp/hf"):
        (run / sub).mkdir(parents=True)
        (run / sub / "config.json").write_text("{}")
    assert em.resolve_model(str(run)) == str(run / "checkpoints" / "step_000020" / "hf")
    assert em.resolve_model(str(run / "checkpoints" / "step_000010")) == str(run / "checkpoints" / "step_000010" / "hf")
    assert em.resolve_model("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert em.model_display_name(str(run / "checkpoints" / "step_000020" / "hf")) == "arith__grpo__1__123__step_000020"
    assert em.model_display_name("Qwen/Qwen2.5-Math-7B") == "Qwen2.5-Math-7B"


# ─── HF generation and entropy on a tiny random model ──────────────────────────────────────────
@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=23,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def teacher_forced(model, prompt, response, temperature):
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) + len(response) - 1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(1, torch.tensor(response)[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def test_hf_generate_records_sampled_logprobs_and_full_entropy_matches(tiny_model):
    import grpo

    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    # pad = stop token, as for models whose pad is their EOS; settings in the model's own generation_config must
    # not leak into sampling (they would change the logps)
    tiny_model.generation_config.repetition_penalty, tiny_model.generation_config.no_repeat_ngram_size = 5.0, 1
    torch.manual_seed(1)
    out = grpo.hf_generate(tiny_model, prompts, 3, 0.7, 1.0, 6, [1], 1, 4)
    assert len(out) == 9
    seqs = []
    for i, s in enumerate(out):
        prompt, r = prompts[i // 3], s["response_ids"]
        assert (
            1 <= len(r) <= 6 and s["truncated"] == (1 not in r) and (s["truncated"] or r[-1] == 1) and 1 not in r[:-1]
        )
        logp, _ = teacher_forced(tiny_model, prompt, r, 0.7)
        assert s["rollout_logp"] == pytest.approx(logp.tolist(), abs=1e-4)  # left padding does not change them
        seqs.append((prompt, r))
    ents = em.full_entropy(tiny_model, seqs, temperature=0.7, pad_id=0, batch_size=4, chunk_size=5)
    for (prompt, r), e in zip(seqs, ents):
        assert e == pytest.approx(teacher_forced(tiny_model, prompt, r, 0.7)[1].tolist(), abs=1e-4)
    torch.manual_seed(1)
    assert grpo.hf_generate(tiny_model, prompts, 3, 0.7, 1.0, 6, [1], 1, 4) == out  # fixed seed, same samples
    assert tiny_model.generation_config.repetition_penalty == 5.0  # restored afterwards


@pytest.mark.skipif(not (TESTBED / "config.json").exists(), reason=f"testbed model not built yet at {TESTBED}")
def test_evaluation_generates_exactly_as_training(tmp_path):
    """One generation path: eval_math.py's completions are grpo.generate's samples for the same seed (same stop
    tokens, truncation and decoding), and training's rollout decodes and stops the same way."""
    import grpo

    out = tmp_path / "ev"
    em.main(em.Args(limit=6, n=3, output_dir=str(out), grader_workers=1, max_new_tokens=29, seed=5))
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    tokenizer = grpo.load_pretrained(grpo.resolve_model("testbed/model"), "tokenizer")
    model = grpo.load_pretrained(grpo.resolve_model("testbed/model"), "model")
    stop_ids = grpo.stop_token_ids(tokenizer, grpo.TESTBED_MODEL, "plain")
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    torch.manual_seed(5)
    samples = grpo.generate(
        model,
        None,
        tokenizer,
        [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
        3,
        1.0,
        29,
        stop_ids,
        batch_size=64,
    )
    assert [s["text"] for s in samples] == [r["response"] for r in rows]
    assert [s["truncated"] for s in samples] == [r["truncated"] for r in rows]
    assert [len(s["response_ids"]) for s in samples] == [r["length"] for r in rows]
    assert any(r["truncated"] for r in rows) and not all(r["truncated"] for r in rows)
    for s in samples:  # a response ends at its first stop token, or is truncated at the limit
        assert (
            s["truncated"] == (s["response_ids"][-1] not in stop_ids)
            and (len(s["response_ids"]) == 29) >= s["truncated"]
        )
        assert not set(s["response_ids"][:-1]) & set(stop_ids)


# ─── CLI runs ───────────────────────────────────────────────────────────────────────────────────
@pytest.mark.skipif(not (TESTBED / "config.json").exists(), reason=f"testbed model not built yet at {TESTBED}")
def test_end_to_end_testbed_run_writes_outputs(tmp_path):
    out = tmp_path / "ev"
    proc = subprocess.run(
        [sys.executable, "eval_math.py", "--limit", "4", "--n", "2", "--output-dir", str(out), "--grader-workers", "1"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    m = results["benchmarks"]["paths"]
    assert m["num_problems"] == 4 and m["n"] == 2 and m["num_samples"] == 8
    assert 0 <= m["avg@n"] <= m["pass@k"]["2"] <= 1 and m["pass@k"]["1"] == pytest.approx(m["avg@n"])
    assert 0 <= m["maj@n"] <= 1 and 0 < m["response_length_mean"] <= 64 and m["entropy_mean"] > 0
    s = results["settings"]
    assert (s["template"], s["engine"], s["temperature"], s["top_p"], s["max_new_tokens"], s["seed"]) == (
        "plain",
        "hf",
        1.0,
        1.0,
        64,
        0,
    )
    assert s["versions"]["torch"] and s["versions"]["transformers"] and "math-verify" in s["versions"]
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["sample_index"] for r in rows} == {0, 1}
    for r in rows:
        assert r["benchmark"] == "paths" and r["prompt"].startswith("Q: Compute") and r["score"] in (0.0, 1.0)
        assert r["length"] >= 1 and isinstance(r["truncated"], bool)
        assert (r["score"] == 1.0) <= (r["extracted_answer"] is not None)
    table = (out / "results.md").read_text()
    assert "| paths | 4 | 2 |" in table and table in proc.stdout


@needs_data
@pytest.mark.skipif(
    not (TESTBED / "config.json").exists(), reason=f"testbed model (its tokenizer) not built yet at {TESTBED}"
)
def test_dry_run_loads_all_six_benchmarks():
    proc = subprocess.run(
        [
            sys.executable,
            "eval_math.py",
            "--benchmarks",
            ",".join(BENCHMARKS),
            "--template",
            "qwen-math",
            "--data-dir",
            str(DATA_DIR),
            "--dry-run",
            "--grader-workers",
            "1",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675}
    for name, count in expected.items():
        assert f"{name}: {count} problems" in proc.stdout
        assert f"against themselves: {count}/{count}" in proc.stdout, proc.stdout
    assert "1547 problems in 6 benchmarks" in proc.stdout


# ─── argument and data mistakes: one line on stderr, exit status 2, before anything is loaded ──────
def eval_cli(args, cwd=REPO, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, str(REPO / "eval_math.py"), *args],
        cwd=cwd,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "Loading weights" not in proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


MISTAKES = [
    (["--model", "./no_such_model"], ["--model ./no_such_model: no such directory"]),
    (["--model", "/no/such/dir/model"], ["no such directory"]),
    (["--n", "0"], ["--n must be >= 1, got 0"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens must be >= 1, got 0"]),
    (["--temperature", "-0.5"], ["--temperature must be >= 0"]),
    (["--top-p", "1.5"], ["--top-p must be in (0, 1]"]),
    (["--limit", "0"], ["--limit must be >= 1"]),
    (["--benchmarks", "aime2024"], ["--benchmarks: unknown data set 'aime2024'", "aime24", "owner/name"]),
    (["--benchmarks", "arith@0"], ["--benchmarks", "n must be >= 1"]),
    (["--benchmarks", "missing.jsonl"], ["--benchmarks: missing.jsonl: no such file"]),
]


FLAG_TYPES = {"n": int, "max_new_tokens": int, "limit": int, "temperature": float, "top_p": float}


@pytest.mark.parametrize("args,fragments", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_argument_mistakes_fail_at_once_with_one_line(args, fragments):
    start = time.time()
    assert_one_line_error(eval_cli(args, timeout=120), *fragments)
    assert (
        time.time() - start < 60
    )  # before any model loads: seconds (the imports alone take 30 s on a loaded 2-core machine)
    flag, value = args  # the same check when main() is called from Python
    name = flag.removeprefix("--").replace("-", "_")
    with pytest.raises(em.UsageError):
        em.main(em.Args(**{name: FLAG_TYPES.get(name, str)(value)}))


def test_run_directory_typo_is_no_such_directory_with_a_hint(tmp_path):
    """`--model runs/<name>` that does not exist is a local path (runs/ exists), not a hub id to look up."""
    (tmp_path / "runs" / "arith__grpo__1__1795417367").mkdir(parents=True)
    line = assert_one_line_error(
        eval_cli(["--model", "runs/arith__grpo__1"], cwd=tmp_path, timeout=120),
        "--model runs/arith__grpo__1: no such directory",
    )
    assert line.endswith("did you mean runs/arith__grpo__1__1795417367?")


@pytest.mark.skipif(
    not (TESTBED / "config.json").exists(), reason=f"testbed model (its tokenizer) not built yet at {TESTBED}"
)
def test_bad_data_rows_name_file_row_field_and_skip_invalid(tmp_path):
    path = tmp_path / "probs.jsonl"
    path.write_text(
        '{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": ""}\n{"problem": "3+3?", "answer": "6"}\n'
    )
    assert_one_line_error(
        eval_cli(["--benchmarks", str(path), "--dry-run"]), f"{path}:line 2: answer: empty gold", "--skip-invalid"
    )
    proc = eval_cli(["--benchmarks", str(path), "--dry-run", "--skip-invalid", "--grader-workers", "1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipped 1 invalid rows (--skip-invalid), e.g. {path}:line 2: answer: empty gold" in proc.stdout
    assert f"{path}: 2 problems" in proc.stdout


def test_missing_data_names_the_data_dir_flag_and_env_var(tmp_path):
    offline = tmp_path / "offline"  # stands in for an unreachable download source: nothing there
    offline.mkdir()
    line = assert_one_line_error(
        eval_cli(
            ["--benchmarks", "aime24", "--data-dir", str(tmp_path / "data")], env={"RLVR_DATA_MIRROR": str(offline)}
        ),
        "data set 'aime24' needs aime24/test.jsonl",
        f"not in the data dir {tmp_path / 'data'}",
        "--data-dir",
        "RLVR_DATA_DIR",
    )
    assert "data_dir=" not in line


@needs_data
@pytest.mark.skipif(
    not (TESTBED / "config.json").exists(), reason=f"testbed model (its tokenizer) not built yet at {TESTBED}"
)
def test_benchmark_is_downloaded_into_the_data_dir_on_first_use(tmp_path):
    cache = tmp_path / "cache"
    args = ["--benchmarks", "amc23", "--template", "qwen-math", "--dry-run", "--grader-workers", "1"]
    proc = eval_cli(args, env={"RLVR_DATA_DIR": str(cache), "RLVR_DATA_MIRROR": DATA_DIR.as_uri()})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"downloaded {DATA_DIR.as_uri()}/amc23/test.jsonl -> {cache / 'amc23/test.jsonl'}" in proc.stderr
    assert "amc23: 40 problems" in proc.stdout and "against themselves: 40/40" in proc.stdout
    assert (cache / "amc23/test.jsonl").read_bytes() == (DATA_DIR / "amc23/test.jsonl").read_bytes()
    (cache / "amc23/test.jsonl").write_bytes(b"{}\n")  # a damaged copy is not evaluated on
    assert_one_line_error(
        eval_cli(args, env={"RLVR_DATA_DIR": str(cache)}),
        f"{cache / 'amc23/test.jsonl'}: not the pinned amc23/test.jsonl",
        "expected 40 rows",
    )
