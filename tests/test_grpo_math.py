"""Unit tests of grpo.py's math: token statistics, entropy change, advantages, clipping, aggregation."""

import dataclasses
import json
import math
import re
import sys
from types import SimpleNamespace

import pytest
import torch

import grpo


def naive_stats(logits, tokens):
    logp_all = torch.log_softmax(logits.double(), -1)
    p = logp_all.exp()
    entropy = -(p * logp_all).sum(-1)
    g = (p.square() * (logp_all + entropy[:, None])).sum(-1)
    return logp_all.gather(1, tokens[:, None]).squeeze(1), entropy, g


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_token_stats_matches_naive(chunk):
    torch.manual_seed(0)
    logits = torch.randn(37, 501) * 3
    tokens = torch.randint(0, 501, (37,))
    logp, entropy, g = grpo.token_stats(logits, tokens, chunk)
    ref = naive_stats(logits, tokens)
    for got, want in zip((logp, entropy, g), ref):
        assert got.dtype == torch.float32 and got.shape == (37,)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_token_stats_bf16_logits_within_tolerance():
    torch.manual_seed(1)
    logits = (torch.randn(16, 300) * 4).bfloat16()
    tokens = torch.randint(0, 300, (16,))
    got = grpo.token_stats(logits, tokens, 5)
    want = naive_stats(logits.float(), tokens)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)


def test_token_stats_gradients_match_autograd():
    torch.manual_seed(2)
    logits = torch.randn(11, 53, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 53, (11,))
    w_logp, w_ent = torch.randn(11, dtype=torch.float64), torch.randn(11, dtype=torch.float64)
    logp, entropy, g = grpo.token_stats(logits, tokens, 4)
    assert not g.requires_grad
    ((logp * w_logp).sum() + (entropy * w_ent).sum()).backward()
    got = logits.grad.clone()
    logits.grad = None
    ref_logp, ref_ent, _ = naive_stats(logits, tokens)
    ((ref_logp * w_logp).sum() + (ref_ent * w_ent).sum()).backward()
    torch.testing.assert_close(got, logits.grad, atol=1e-10, rtol=1e-8)
    # only log-probs used: the entropy path receives no gradient
    logits.grad = None
    logp, _, _ = grpo.token_stats(logits, tokens, 3)
    logp.sum().backward()
    torch.testing.assert_close(
        logits.grad, (torch.nn.functional.one_hot(tokens, 53) - torch.softmax(logits, -1)).detach()
    )


def entropy_of(z):
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("scale,vocab", [(8.0, 3000), (0.3, 2000)])  # peaked (LLM-like) and flat distributions
def test_entropy_delta_matches_finite_difference(scale, vocab):
    """ΔH_t = −A r [π(ℓ+H) − G] predicts H(z + η A r (e_a − p)) − H(z) to first order."""
    torch.manual_seed(3)
    eta, rows = 1e-3, 64
    z = torch.randn(rows, vocab, dtype=torch.float64) * scale
    p = torch.softmax(z, -1)
    tokens = torch.multinomial(p, 1).squeeze(1)  # on-policy samples
    adv = torch.where(torch.rand(rows) < 0.5, -1.0, 1.0).double() * torch.rand(rows, dtype=torch.float64).add(0.5)
    ratio = torch.rand(rows, dtype=torch.float64) * 0.4 + 0.8
    logp, entropy, g = grpo.token_stats(z, tokens, 16)
    predicted = eta * grpo.entropy_change(adv * ratio, logp.double(), entropy.double(), g.double())
    step = eta * (adv * ratio)[:, None] * (torch.nn.functional.one_hot(tokens, vocab) - p)
    realised = entropy_of(z + step) - entropy_of(z)
    big = realised.abs() > 1e-9
    assert (torch.sign(predicted[big]) == torch.sign(realised[big])).all()
    rel = ((predicted - realised).abs() / realised.abs().clamp(min=1e-12))[big]
    assert rel.median() < 1e-2 and rel.max() < 0.2


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = grpo.group_advantages(rewards, 4, "group")
    std = torch.tensor([1.0, 0, 0, 0]).std()  # unbiased: 0.5
    assert torch.allclose(adv[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-6))
    assert torch.allclose(adv[4:], torch.zeros(4))  # all-equal group carries no signal
    assert torch.allclose(grpo.group_advantages(rewards, 4, "none")[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    batch = grpo.group_advantages(rewards, 4, "batch")
    assert torch.allclose(batch[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (rewards.std() + 1e-6))


def test_overlong_penalty():
    pen = grpo.overlong_penalty(torch.tensor([10, 12, 16, 20]), max_len=20, buffer=8, factor=1.0)
    assert torch.allclose(pen, torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert torch.all(grpo.overlong_penalty(torch.tensor([20]), 20, 0, 1.0) == 0)


def test_clipped_surrogate_by_hand():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 2.0])
    ratio = torch.tensor([1.1, 1.5, 0.9, 0.5, 20.0, 0.5])
    loss, low, high = grpo.clipped_surrogate(adv, ratio, 0.2, 0.28, 10.0)
    # max(−A r, −A clip(r)): 1) inside → −1.1; 2) clipped above → −1.28; 3) inside → 0.9;
    # 4) A<0, r<0.8 → max(0.5, 0.8) = 0.8; 5) dual clip: min(max(20, 1.28), 10) = 10; 6) A>0, r<1 → −A r = −1
    assert torch.allclose(loss, torch.tensor([-1.1, -1.28, 0.9, 0.8, 10.0, -1.0]))
    assert high.tolist() == [False, True, False, False, False, False]
    assert low.tolist() == [False, False, False, True, True, False]
    # the gradient vanishes exactly where the indicators say so
    r = ratio.clone().requires_grad_(True)
    grpo.clipped_surrogate(adv, r, 0.2, 0.28, 10.0)[0].sum().backward()
    assert ((r.grad == 0) == (low | high)).all()


def test_k3_kl_nonnegative_zero_at_equality_and_added_to_the_loss():
    """compute_loss's k3 term π_ref/π − log(π_ref/π) − 1: ≥ 0, 0 where π = π_ref, and β·KL added to each token."""
    args = grpo.Args(kl_coef=0.5)
    logp, logp_ref = torch.randn(1, 100), torch.randn(1, 100)
    logp_ref[0, :10] = logp[0, :10]
    mb = {
        "adv": torch.zeros(1, 100),
        "loss_mask": torch.ones(1, 100),
        "logp_old": logp,
        "rollout_logp": logp,
        "logp_ref": logp_ref,
    }
    totals = grpo.minibatch_totals(mb["loss_mask"], lambda x: x)
    _, info = grpo.compute_loss(mb, {"logp": logp}, args, grpo.init_algorithm_state(args), totals)
    kl = info["kl_ref"]
    assert torch.all(kl >= 0) and torch.all(kl[0, 10:] > 0) and torch.equal(kl[0, :10], torch.zeros(10))
    torch.testing.assert_close(kl, (logp_ref - logp).exp() - (logp_ref - logp) - 1)
    torch.testing.assert_close(info["token_loss"], 0.5 * kl)  # A = 0: the PPO term is 0


def test_pos_weight_schedule():
    assert grpo.pos_weight_update(0.0, entropy=0.1, target=0.2, step=0.05) == 0.0
    assert grpo.pos_weight_update(0.0, entropy=0.3, target=0.2, step=0.05) == pytest.approx(0.05)
    assert grpo.pos_weight_update(1.0, entropy=0.3, target=0.2, step=0.05) == 1.0
    assert grpo.pos_weight_update(0.5, entropy=0.1, target=0.2, step=0.05) == pytest.approx(0.45)
    args = grpo.Args(algo=grpo.Algorithm(pos_weight=0.3))
    state = grpo.init_algorithm_state(args)
    mb = {"logp_old": torch.zeros(2, 2), "adv": torch.tensor([[1.0, 1.0], [-1.0, -1.0]])}
    loss, _ = grpo.policy_token_loss(mb, {"logp": torch.zeros(2, 2)}, args, state)
    assert torch.allclose(loss, torch.tensor([[-0.3, -0.3], [1.0, 1.0]]))  # λ on A>0 tokens only


def guided(**flags):
    return grpo.Args(algo=grpo.Algorithm(pos_weight_schedule="entropy-guided", **flags))


def test_pos_weight_relative_target_is_ratio_times_the_measured_initial_entropy():
    """Relative δ (the default): H₀ = the first step's entropy/mean, δ = 0.55 H₀; λ moves from that step on."""
    args = guided()
    state = grpo.init_algorithm_state(args)
    assert state == {"pos_weight": 0.0, "initial_entropy": None, "initial_entropies": []}
    grpo.algorithm_step_end(state, args, {"entropy/mean": 0.2})  # H₀ = 0.2, δ = 0.11: 0.2 is above it
    assert state["initial_entropy"] == 0.2 and grpo.pos_weight_target(args, 0.2) == pytest.approx(0.55 * 0.2)
    assert state["pos_weight"] == pytest.approx(0.05)
    grpo.algorithm_step_end(state, args, {"entropy/mean": 0.1})  # below δ = 0.11: λ falls; H₀ is not re-measured
    assert state["initial_entropy"] == 0.2 and state["pos_weight"] == pytest.approx(0.0)
    # the paper's absolute δ = 0.2 at the same entropies: 0.2 is not below it, 0.1 is
    absolute = guided(pos_weight_target="absolute")
    state = grpo.init_algorithm_state(absolute)
    for entropy, expected in ((0.2, 0.05), (0.1, 0.0)):
        grpo.algorithm_step_end(state, absolute, {"entropy/mean": entropy})
        assert state["pos_weight"] == pytest.approx(expected)
    assert grpo.pos_weight_target(absolute, None) == 0.2 and state["initial_entropy"] == 0.2


def test_pos_weight_initial_entropy_over_several_steps_survives_a_resume():
    """H₀ = mean of the first 3 steps' entropy/mean, λ held at λ₀ until then; the state goes through the checkpoint's
    JSON at every step and the resumed sequence of λ equals the uninterrupted one."""
    args = guided(pos_weight_initial_steps=3, pos_weight_init=0.5, pos_weight_target_ratio=0.5)
    entropies = [0.30, 0.26, 0.22, 0.10, 0.20, 0.05]

    def run(state, values, checkpoint=False):
        weights = []
        for entropy in values:
            grpo.algorithm_step_end(state, args, {"entropy/mean": entropy})
            state = json.loads(json.dumps(state)) if checkpoint else state  # trainer_state.json
            weights.append(state["pos_weight"])
        return state, weights

    full_state, full = run(grpo.init_algorithm_state(args), entropies)
    assert full[:2] == [0.5, 0.5]  # H₀ not known yet: λ₀
    assert full_state["initial_entropy"] == pytest.approx(0.26)  # (0.30 + 0.26 + 0.22) / 3; δ = 0.13
    assert full[2:] == pytest.approx([0.55, 0.50, 0.55, 0.50])  # 0.22 > δ, 0.10 < δ, 0.20 > δ, 0.05 < δ
    for cut in (1, 2, 3, 4):  # a checkpoint after step `cut` (inside or after the H₀ window), then a resume
        saved, first = run(grpo.init_algorithm_state(args), entropies[:cut], checkpoint=True)
        _, rest = run(saved, entropies[cut:], checkpoint=True)
        assert first + rest == pytest.approx(full)


@pytest.mark.parametrize("entropy, warns", [(0.22, True), (0.2, True), (0.4, False)])
def test_absolute_target_near_the_initial_entropy_warns(capsys, entropy, warns):
    """The absolute δ = 0.2 at 0.8 H₀ or more (the testbed starts at 0.22) holds λ near 0: one warning; the relative
    target announces H₀ and δ instead."""
    args = guided(pos_weight_target="absolute")
    state = grpo.init_algorithm_state(args)
    for _ in range(2):
        grpo.algorithm_step_end(state, args, {"entropy/mean": entropy})
    assert capsys.readouterr().err.count("warning: --pos-weight-target-entropy 0.2 is") == int(warns)
    relative = guided()
    grpo.algorithm_step_end(grpo.init_algorithm_state(relative), relative, {"entropy/mean": entropy})
    out = capsys.readouterr()
    assert f"initial entropy H₀ = {entropy:.4g}" in out.out and f"= {0.55 * entropy:.4g}" in out.out and not out.err


def test_constant_schedule_state_and_step_end_are_unchanged():
    """The default (constant λ = 1, plain GRPO) keeps the state it always had and never changes it."""
    args = grpo.Args()
    state = grpo.init_algorithm_state(args)
    assert state == {"pos_weight": 1.0}
    grpo.algorithm_step_end(state, args, {"entropy/mean": 0.01})
    assert state == {"pos_weight": 1.0}


def test_pos_weight_target_flags_are_checked(tmp_path):
    grpo.check_algorithm_args(guided())
    grpo.check_algorithm_args(guided(pos_weight_target="absolute", pos_weight_target_entropy=0.3))
    grpo.check_algorithm_args(guided(pos_weight_target_ratio=0.4, pos_weight_initial_steps=3))
    for flags, message in (
        ({"pos_weight_target_entropy": 0.3}, "--pos-weight-target-entropy 0.3 is the absolute δ"),
        ({"pos_weight_target": "absolute", "pos_weight_target_ratio": 0.4}, "--pos-weight-target-ratio 0.4 is"),
        ({"pos_weight_target_ratio": 0.0}, "--pos-weight-target-ratio must be > 0"),
        ({"pos_weight_initial_steps": 0}, "--pos-weight-initial-steps at least 1"),
    ):
        with pytest.raises(grpo.UsageError, match=re.escape(message)):
            grpo.check_algorithm_args(guided(**flags))
    # a run made before --pos-weight-target (its δ was absolute) continues only with the absolute target
    (tmp_path / "args.json").write_text(json.dumps({"script": "grpo.py", "pos_weight_schedule": "entropy-guided"}))
    with pytest.raises(grpo.UsageError, match="continue it with --pos-weight-target absolute"):
        grpo.check_algorithm_args(dataclasses.replace(guided(), resume=str(tmp_path)))
    grpo.check_algorithm_args(dataclasses.replace(guided(pos_weight_target="absolute"), resume=str(tmp_path)))


def test_collate():
    batch = grpo.collate(
        [
            {"prompt_ids": [3, 4], "response_ids": [7, 1], "rollout_logp": [-0.1, -0.2], "truncated": False},
            {"prompt_ids": [5], "response_ids": [8, 9, 9], "rollout_logp": [-1.0, -2.0, -3.0], "truncated": True},
        ],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[3, 4, 7, 1, 0], [0, 5, 8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert batch["response_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["response_ids"].tolist() == [[7, 1, 0], [8, 9, 9]]
    torch.testing.assert_close(batch["rollout_logp"], torch.tensor([[-0.1, -0.2, 0.0], [-1.0, -2.0, -3.0]]))
    assert batch["truncated"].tolist() == [False, True]
    assert [batch[k].dtype for k in ("input_ids", "attention_mask", "response_mask", "rollout_logp")] == [
        torch.long,
        torch.long,
        torch.float32,
        torch.float32,
    ]


def test_rollout_totals_add_up_over_dapo_generation_batches(monkeypatch):
    """With DAPO's filter a step samples until its groups are informative or `max_gen_batches` is spent; the step's
    totals (generation batches, tokens, grader timeouts) sum over every batch, and all-equal groups pad the step."""
    calls = []

    def fake_sample(model, llm, accelerator, args, problems, n, temperature, tokenizer, stop_ids, noise_key=None):
        calls.append(len(problems))
        return [{"response_ids": [1] * (len(calls) + 2), "text": ""} for _ in range(len(problems) * n)]

    class Rewards(list):
        no_answer, timeouts = 0, 1

    monkeypatch.setattr(grpo, "sample", fake_sample)
    monkeypatch.setattr(grpo, "grade", lambda samples, problems, args, n: Rewards([1.0] * len(samples)))  # all correct
    args = grpo.Args(filter_groups=True, max_gen_batches=3, prompts_per_step=2, group_size=2)
    one_process = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"), gather=lambda x: x)
    metrics = grpo.Metrics()
    samples, data_pos = grpo.rollout_and_grade(
        None, None, one_process, args, [{"question": "q", "answer": "1"}] * 5, 0, None, None, metrics
    )
    out = metrics.reduce(one_process)
    assert calls == [2, 2, 2] and data_pos == 6
    assert out["rollout/gen_batches"] == 3 and out["rollout/grader_timeouts"] == 3
    assert out["time/tokens_per_s"] == 4 * (3 + 4 + 5)  # every batch's tokens (main divides by the step's seconds)
    assert out["rollout/filtered_group_frac"] == 1.0 and out["time/rollout_s"] >= 0
    assert len(samples) == 4 and all(s["is_padding"] for s in samples)


def test_vllm_request_building_and_output_parsing(monkeypatch):
    """The vLLM block's request and parsing (vLLM cannot run here): `vllm.SamplingParams` is stood in for by dict, the
    engine by an object whose outputs are shaped like vLLM 0.33's RequestOutput / CompletionOutput / Logprob."""
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=dict))

    def completion(tokens, finish):
        logprobs = [
            {t: SimpleNamespace(logprob=-0.5 * (i + 1)), 99: SimpleNamespace(logprob=-9.0)}
            for i, t in enumerate(tokens)
        ]
        return SimpleNamespace(token_ids=tokens, logprobs=logprobs, finish_reason=finish)

    outputs = [
        SimpleNamespace(outputs=[completion([7, 1], "stop"), completion([7, 8, 9], "length")]),
        SimpleNamespace(outputs=[completion([6, 6, 4], "stop"), completion([2], "abort")]),
    ]
    calls = []
    llm = SimpleNamespace(generate=lambda requests, params, use_tqdm: calls.append((requests, params)) or outputs)
    parsed = grpo.vllm_generate(llm, [[5, 5], [3]], n=2, temperature=1.0, top_p=1.0, max_new_tokens=3, stop_ids=[1, 4])
    assert calls == [
        (
            [{"prompt_token_ids": [5, 5]}, {"prompt_token_ids": [3]}],
            {
                "n": 2,
                "temperature": 1.0,
                "top_p": 1.0,
                "top_k": 0,
                "min_p": 0.0,
                "repetition_penalty": 1.0,
                "max_tokens": 3,
                "logprobs": 0,
                "stop_token_ids": [1, 4],
                "skip_special_tokens": True,
                "seed": None,
            },
        )
    ]
    assert [p["response_ids"] for p in parsed] == [[7, 1], [7, 8, 9], [6, 6, 4], [2]]  # stop tokens kept as sampled
    assert [p["truncated"] for p in parsed] == [False, True, False, True]
    assert parsed[0]["rollout_logp"] == [-0.5, -1.0]  # the sampled token's entry, not the other one


def test_token_stats_full_precision_under_autocast_and_input_untouched():
    torch.manual_seed(5)
    logits = torch.randn(40, 700) * 3
    before = logits.clone()
    tokens = torch.randint(0, 700, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = grpo.token_stats(logits, tokens, 16)
    assert torch.equal(logits, before)
    for a, b in zip(got, naive_stats(logits, tokens)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the torch.compile path of token_stats)")
def test_compiled_token_stats_on_cuda_match_naive():
    torch.manual_seed(6)
    logits = (torch.randn(300, 5000, device="cuda") * 3).bfloat16().requires_grad_(True)
    tokens = torch.randint(0, 5000, (300,), device="cuda")
    w = torch.randn(300, device="cuda")
    logp, entropy, g = grpo.token_stats(logits, tokens, 128)  # compiled by default on CUDA
    ((logp + entropy) * w).sum().backward()
    got_grad = logits.grad.float().clone()
    ref = naive_stats(logits.detach().float(), tokens)
    for a, b in zip((logp, entropy, g), ref):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)
    z = logits.detach().float().requires_grad_(True)
    ref_logp, ref_entropy, _ = naive_stats(z, tokens)
    ((ref_logp + ref_entropy) * w.double()).sum().backward()
    torch.testing.assert_close(got_grad, z.grad.float(), atol=2e-2, rtol=2e-2)  # bf16 gradient


def test_weight_sync_streams_every_parameter_once_by_layer_in_bf16():
    """The unsharded path of the vLLM weight sync on the real testbed model: one chunk per decoder layer (plus the
    embedding and final norm alone), every parameter exactly once in bf16, the tied lm_head never sent."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(grpo.TESTBED_MODEL)
    assert model.config.tie_word_embeddings
    chunks = list(grpo.full_parameter_chunks(model, Accelerator(cpu=True)))
    names = [n for chunk in chunks for n, _ in chunk]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters()) and len(set(names)) == len(names)
    assert "lm_head.weight" not in names
    assert len(chunks) == model.config.num_hidden_layers + 2  # layers, embedding, final norm
    for chunk in chunks:
        assert len({n.split(".layers.")[1].split(".")[0] if ".layers." in n else n for n, _ in chunk}) == 1
        assert all(t.dtype == torch.bfloat16 for _, t in chunk)
    params = dict(model.named_parameters())
    for n, t in (pair for chunk in chunks for pair in chunk):
        assert torch.equal(t, params[n].detach().to(torch.bfloat16))


def test_metrics_means_extremes_and_empty():
    """Metrics.reduce: Σ sum / Σ count per name (nan without a count), maxima, minima for `_min` names, {} if empty."""
    one_process = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    assert grpo.Metrics().reduce(one_process) == {}
    metrics = grpo.Metrics()
    metrics.add("a", 3.0, 2)
    metrics.add("a", torch.tensor(1.0))
    metrics.mean("b", torch.tensor([1.0, 5.0, 9.0]), torch.tensor([1.0, 1.0, 0.0]))
    metrics.add("c", 0.0, 0)
    for value in (5.0, 2.0, 7.0):
        metrics.min("x_min", value)
        metrics.max("y_max", value)
    out = metrics.reduce(one_process)
    assert {k: v for k, v in out.items() if k != "c"} == {"a": 4 / 3, "b": 3.0, "x_min": 2.0, "y_max": 7.0}
    assert math.isnan(out["c"])
