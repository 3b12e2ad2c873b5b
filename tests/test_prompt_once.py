"""The training forward with each distinct prompt once (`response_logits`, `--prompt-once`, the default) against one
forward of prompt + response per row: the same log-probs, entropies, G and gradients up to float rounding, on rows
with prompts of several lengths (one of a single token, whose prefix is all padding), in any order, and log-probs
equal to a plain forward of each row alone; and why it is off under gradient checkpointing."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import grpo

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15]]
ARGS = grpo.Args(temperature=0.8, entropy_chunk_size=7)  # chunks of 7 positions: several per micro-batch


def tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=23,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def grouped_batch(n=4):
    """4 prompts of 5, 2, 3 and 1 tokens × n responses of 1 to 7 tokens, collated as the rollout does (left padded)."""
    generator = torch.Generator().manual_seed(1)
    samples = []
    for prompt in PROMPTS:
        for _ in range(n):
            length = int(torch.randint(1, 8, (1,), generator=generator))
            response = torch.randint(2, 23, (length,), generator=generator).tolist()
            samples.append({"prompt_ids": prompt, "response_ids": response, "rollout_logp": [0.0] * length})
            samples[-1]["truncated"] = False
    return grpo.collate(samples, pad_id=0), samples


def stats_and_grads(model, batch, rows, prompt_once):
    model.zero_grad()
    stats = grpo.micro_batch_stats(model, batch, rows, ARGS, with_g3=True, prompt_once=prompt_once)
    mask = batch["response_mask"][rows]
    weights = torch.linspace(-1, 1, mask.numel()).view_as(mask)  # any loss that uses every statistic
    ((stats["logp"] * weights + stats["entropy"] + 0.1 * stats["g"]) * mask).sum().backward()
    return stats, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("rows", [list(range(16)), [11, 0, 5, 6, 3, 14, 9, 1], [4, 5, 6, 7], [12, 13], [2]])
def test_prompt_once_matches_one_forward_per_row(rows):
    model = tiny_model()
    batch, samples = grouped_batch()
    rows = torch.tensor(rows)
    once, once_grads = stats_and_grads(model, batch, rows, True)
    per_row, per_row_grads = stats_and_grads(model, batch, rows, False)
    for name in ("logp", "entropy", "g", "g3"):
        assert torch.allclose(once[name], per_row[name], atol=1e-5), name
    for i, row in enumerate(rows.tolist()):  # a plain forward of the row alone, without padding: log π_T(token)
        prompt, response = samples[row]["prompt_ids"], samples[row]["response_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1] / ARGS.temperature
        expected = logits.log_softmax(-1).gather(1, torch.tensor(response)[:, None]).squeeze(1)
        assert torch.allclose(once["logp"][i, : len(response)], expected, atol=1e-5)
    for name, grad in per_row_grads.items():
        assert torch.allclose(once_grads[name], grad, atol=1e-6, rtol=1e-4), name
    assert per_row_grads["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0


def test_prompt_once_runs_each_distinct_prompt_once(monkeypatch):
    model = tiny_model()
    batch, _ = grouped_batch(n=4)
    shapes = []
    forward = model.forward

    def recording_forward(input_ids, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return forward(input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    grpo.micro_batch_stats(model, batch, torch.arange(16), ARGS, prompt_once=True)
    width = int(batch["response_mask"].sum(-1).max())
    prompt_width = batch["input_ids"].shape[1] - batch["response_mask"].shape[1]
    # the prompts but their last token, 4 distinct; then every row's last prompt token and response but its last
    assert shapes == [(4, prompt_width - 1), (16, width)]


def test_gradient_checkpointing_drops_the_cache():
    """Why update_policy runs one forward per row under --gradient-checkpointing: transformers' checkpointed layers
    set use_cache=False, so no KV cache comes back for the responses (test_every_knob_at_once_runs trains so)."""
    model = tiny_model().train()
    model.gradient_checkpointing_enable()
    with pytest.raises(AttributeError):
        grpo.micro_batch_stats(model, grouped_batch()[0], torch.arange(16), ARGS, prompt_once=True)
