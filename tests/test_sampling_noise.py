"""Keyed sampling noise (`--sampling-noise keyed`): the noise is a function of its key only, Gumbel-max with it samples
softmax(logits / T), the recorded log-probs stay those of logits / T, greedy decoding is unchanged, and vLLM gets one
seeded request per sample from the same key (vLLM cannot run here: its API is stood in for)."""

import sys
from types import SimpleNamespace

import pytest
import torch
from test_eval_math import teacher_forced, tiny_model  # noqa: F401 (a fixture)

import grpo
import grpo as noise


def words(prompt_index, n=1, position=0, seed=1, step=3, rows=None):
    key = noise.NoiseKey(seed, step, prompt_index)
    return noise.key_words(key, rows or range(len(prompt_index) * n), n, position, "cpu")


def test_keyed_noise_is_a_function_of_the_key_only():
    """The same key gives the same draw whatever the other rows of the batch, their number and their order."""
    batch = noise.keyed_gumbel(words(list(range(50)), n=4), 11)  # 50 prompts × 4 samples
    alone = noise.keyed_gumbel(words([17], n=4), 11)  # prompt 17 in a call of its own
    assert torch.equal(alone, batch[17 * 4 : 18 * 4])
    shuffled = [31, 17, 2]  # another composition and order: rows of prompt 17 are rows 3-5 here
    assert torch.equal(noise.keyed_gumbel(words(shuffled, n=4), 11)[4:8], batch[17 * 4 : 18 * 4])
    chunk = words(list(range(50)), n=4, rows=range(70, 75))  # a chunk of the call (the HF engine's batches)
    assert torch.equal(noise.keyed_gumbel(chunk, 11), batch[70:75])
    # every part of the key changes the draw
    base = noise.keyed_gumbel(words([17], n=4), 11)
    for other in (words([18], n=4), words([17], n=4, position=1), words([17], n=4, seed=2), words([17], n=4, step=4)):
        assert not torch.isclose(noise.keyed_gumbel(other, 11), base).any()
    eval_key = noise.NoiseKey(1, 3, [17], noise.NOISE_DOMAINS["eval"])
    assert not torch.isclose(noise.keyed_gumbel(noise.key_words(eval_key, range(4), 4, 0, "cpu"), 11), base).any()
    assert torch.equal(noise.keyed_gumbel(words([17], n=4), 11), base)  # and nothing else does (no hidden state)


def test_keyed_gumbel_max_samples_the_tempered_softmax():
    """200,000 draws, one per key, on a vocabulary of 6 at T = 0.7: the frequencies are softmax(logits / T)
    (chi-square with 5 degrees of freedom below 20.5, its 0.999 quantile; every frequency within 0.004)."""
    n = 200_000
    logits = torch.tensor([1.0, 0.5, -0.3, 2.0, 0.0, -4.0])
    temperature = 0.7
    gumbel = noise.keyed_gumbel(words(list(range(n)), position=5), len(logits))
    assert gumbel.dtype == torch.float64 and torch.isfinite(gumbel).all()
    draws = (logits.double() / temperature + gumbel).argmax(1)
    freq = torch.bincount(draws, minlength=len(logits)).double() / n
    p = torch.softmax(logits.double() / temperature, 0)
    chi_square = (n * (freq - p).square() / p).sum().item()
    assert chi_square < 20.5 and (freq - p).abs().max() < 0.004, (chi_square, freq, p)
    # the noise itself: Gumbel(0, 1), mean γ = 0.5772, variance π²/6
    assert gumbel.mean().item() == pytest.approx(0.5772, abs=0.01)
    assert gumbel.var().item() == pytest.approx(torch.pi**2 / 6, abs=0.02)


def test_hf_generate_keyed_same_samples_whatever_the_batch(tiny_model):  # noqa: F811
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15]]
    key = lambda index: noise.NoiseKey(1, 2, index)  # noqa: E731
    full = grpo.hf_generate(tiny_model, prompts, 3, 0.7, 1.0, 6, [1], 1, 5, key([0, 1, 2, 3]))  # chunks of 5 rows
    torch.manual_seed(123)  # keyed sampling does not read torch's random stream
    part = grpo.hf_generate(tiny_model, [prompts[2], prompts[0]], 3, 0.7, 1.0, 6, [1], 1, 64, key([2, 0]))
    for mine, theirs in zip(part, full[6:9] + full[0:3]):
        assert mine["response_ids"] == theirs["response_ids"]
        assert mine["rollout_logp"] == pytest.approx(theirs["rollout_logp"], abs=1e-5)
    assert len({tuple(s["response_ids"]) for s in full}) > 6  # the samples of a prompt differ from each other
    for i, s in enumerate(full):  # the recorded log-probs are those of logits / T
        logp, _ = teacher_forced(tiny_model, prompts[i // 3], s["response_ids"], 0.7)
        assert s["rollout_logp"] == pytest.approx(logp.tolist(), abs=1e-4)
    with pytest.raises(ValueError, match="top_p = 1"):  # the HF engine's keyed noise is the full softmax's
        grpo.hf_generate(tiny_model, prompts, 1, 0.7, 0.9, 6, [1], 1, 5, key([0, 1, 2, 3]))


def test_greedy_decoding_ignores_the_key(tiny_model):  # noqa: F811
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    greedy = grpo.hf_generate(tiny_model, prompts, 1, 0, 1.0, 6, [1], 1, 4)
    assert grpo.hf_generate(tiny_model, prompts, 1, 0, 1.0, 6, [1], 1, 4, noise.NoiseKey(1, 2, [0, 1])) == greedy


def test_keyed_vllm_requests_one_seeded_request_per_sample(monkeypatch):
    """vLLM: n = 1 per sample, seeded from the key less the position (vLLM's generator then advances per token);
    `LLM.generate` takes one SamplingParams per prompt. Stream mode keeps one request per prompt with n samples.
    SamplingParams is stood in for by a namespace (copied and given its seed as vLLM's ParentRequest does)."""
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=SimpleNamespace))
    calls = []

    def fake_generate(requests, params, use_tqdm):
        calls.append((requests, params))
        logprobs = [{7: SimpleNamespace(logprob=-0.5)}, {1: SimpleNamespace(logprob=-1.0)}]
        one = SimpleNamespace(token_ids=[7, 1], logprobs=logprobs, finish_reason="stop")
        return [SimpleNamespace(outputs=[one]) for _ in requests]

    llm = SimpleNamespace(generate=fake_generate)
    key = noise.NoiseKey(1, 2, [40, 41])
    out = grpo.vllm_generate(llm, [[5, 5], [3]], 2, 1.0, 0.9, 3, [1], seed=key)
    requests, params = calls[0]
    assert requests == [{"prompt_token_ids": [5, 5]}] * 2 + [{"prompt_token_ids": [3]}] * 2 and len(out) == 4
    seeds = [p.seed for p in params]
    assert all(p.n == 1 and p.top_p == 0.9 and p.temperature == 1.0 and p.logprobs == 0 for p in params)
    assert seeds == noise.keyed_seeds(words([40, 41], n=2, position=None, step=2))
    assert len(set(seeds)) == 4 and all(0 <= s < 2**63 for s in seeds)
    # prompt 41 alone, sample 1: the same seed as in the call above
    grpo.vllm_generate(llm, [[3]], 2, 1.0, 0.9, 3, [1], seed=noise.NoiseKey(1, 2, [41]))
    assert calls[1][1][1].seed == seeds[3]
    grpo.vllm_generate(llm, [[5, 5], [3]], 2, 1.0, 1.0, 3, [1], seed=9)  # stream: as before
    assert calls[2][0] == [{"prompt_token_ids": [5, 5]}, {"prompt_token_ids": [3]}]
    assert calls[2][1].n == 2 and calls[2][1].seed == 9
    grpo.vllm_generate(llm, [[5, 5]], 2, 0.0, 1.0, 3, [1], seed=key)  # greedy: no seeds, one request
    assert calls[3][0] == [{"prompt_token_ids": [5, 5]}] and calls[3][1].seed is None


def test_sampling_noise_flag_defaults_to_stream_and_is_recorded():
    assert grpo.Args().sampling_noise == "stream"
    args = grpo.parse_args(["--sampling-noise", "keyed"])
    assert args.sampling_noise == "keyed" and grpo.flat_args(args)["sampling_noise"] == "keyed"  # args.json
    assert "sampling_noise" not in grpo.RESUMABLE  # a resume cannot change it


def test_keyed_runs_draw_the_same_tokens_whatever_the_batch_size(tmp_path):
    """Two 1-step runs, same seed, 2 and 4 prompts a step: their first prompt's samples are the same tokens (same
    policy at step 1, same key); the recorded log-probs match the trainer's; the flag is in args.json."""
    import json
    import os
    import subprocess

    common = ["--total-steps", "1", "--eval-every", "0", "--group-size", "4", "--max-new-tokens", "40"]
    common += ["--log-completions-every", "1", "--grader-workers", "1", "--sampling-noise", "keyed"]
    common += ["--output-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, prompts in (("two", "2"), ("four", "4")):
        command = [sys.executable, "grpo.py", *common, "--prompts-per-step", prompts, "--run-name", name]
        proc = subprocess.run(command, cwd=grpo.REPO_DIR, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    completions = {}
    for name in ("two", "four"):
        run_dir = tmp_path / name
        assert json.loads((run_dir / "args.json").read_text())["sampling_noise"] == "keyed"
        (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert row["rollout/logp_diff_max"] < 1e-3
        completions[name] = [json.loads(line)["response"] for line in (run_dir / "completions.jsonl").open()]
    assert completions["two"] == completions["four"] and len(completions["two"]) == 4  # prompt 0's 4 samples
