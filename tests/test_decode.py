"""The HF engine's decode loop (`decode` in the SHARED rollout section) against `model.generate`.

`decode` drops a row from the batch and its KV cache once the row has stopped; the claim is that it samples the
same tokens as `model.generate` with the same settings and random stream, with the same log-probs up to the last
bits (a forward over fewer rows may round differently). The
reference below is the rollout as it was before the loop (generate with a log-prob recorder and, for keyed noise,
a Gumbel processor), kept here so that the claim stays checked."""

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

import grpo


class Recorder(LogitsProcessor):
    """Applies T and records log π_T of each sampled token (what the rollout used to do inside generate)."""

    def __init__(self, temperature):
        self.temperature = temperature
        self.previous = None
        self.recorded = []

    def __call__(self, input_ids, scores):
        if self.previous is not None:
            self.recorded.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        scores = scores / self.temperature
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores


class KeyedNoise(LogitsProcessor):
    def __init__(self, key, rows, n, prompt_width):
        self.key, self.rows, self.n, self.prompt_width = key, rows, n, prompt_width

    def __call__(self, input_ids, scores):
        words = grpo.key_words(self.key, self.rows, self.n, input_ids.shape[1] - self.prompt_width)
        return scores.double() + grpo.keyed_gumbel(words, scores.shape[-1])


def generate_reference(model, prompts, n, temperature, top_p, max_new, stop_ids, pad_id, batch_size, key=None):
    rows = [p for p in prompts for _ in range(n)]
    greedy = temperature == 0
    settings = {"do_sample": not greedy and key is None, "eos_token_id": stop_ids, "max_new_tokens": max_new}
    settings["pad_token_id"] = pad_id
    if settings["do_sample"]:
        settings.update(temperature=1.0, top_p=top_p, top_k=0)
    model.generation_config = GenerationConfig()
    samples = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in chunk])
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk])
        recorder = Recorder(1.0 if greedy else temperature)
        noise = [KeyedNoise(key, range(start, start + len(chunk)), n, width)] if key and not greedy else []
        output = model.generate(
            input_ids, attention_mask=attention, logits_processor=LogitsProcessorList([recorder, *noise]), **settings
        )
        generated = output[:, width:]
        recorder.recorded.append(recorder.previous.gather(1, generated[:, -1:]).squeeze(1))
        logps = torch.stack(recorder.recorded, dim=1)
        is_stop = torch.isin(generated, torch.tensor(stop_ids))
        for i, tokens in enumerate(generated.tolist()):
            length = int(is_stop[i].int().argmax()) + 1 if is_stop[i].any() else generated.shape[1]
            samples.append(
                {
                    "response_ids": tokens[:length],
                    "rollout_logp": logps[i, :length].tolist(),
                    "truncated": not bool(is_stop[i].any()),
                }
            )
    return samples


@pytest.fixture(scope="module")
def model():
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
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # make the stop token likely enough that rows stop at different steps
        model.lm_head.weight[1] += 0.6 * model.lm_head.weight[2:].mean(0)
    return model


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15], [16, 17, 18, 19, 20, 21, 22]]


@pytest.mark.parametrize(
    "temperature, top_p, keyed, batch_size, pad_id",
    [
        (0.7, 1.0, False, 64, 0),  # torch's stream
        (1.0, 0.8, False, 64, 0),  # top-p
        (1.3, 1.0, False, 4, 1),  # chunks of 4 rows; pad = the stop token
        (0.0, 1.0, False, 64, 0),  # greedy
        (0.7, 1.0, True, 64, 0),  # keyed noise
        (1.0, 1.0, True, 3, 0),  # keyed noise, chunks of 3 rows
    ],
)
def test_decode_samples_exactly_what_generate_samples(model, temperature, top_p, keyed, batch_size, pad_id):
    key = grpo.NoiseKey(4, 2, [3, 1, 4, 0, 2]) if keyed else None
    settings = (4, temperature, top_p, 12, [1], pad_id, batch_size, key)
    torch.manual_seed(11)
    expected = generate_reference(model, PROMPTS, *settings)
    torch.manual_seed(11)
    got = grpo.hf_generate(model, PROMPTS, *settings)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["response_ids"] == theirs["response_ids"] and mine["truncated"] == theirs["truncated"]
        assert mine["rollout_logp"] == pytest.approx(theirs["rollout_logp"], rel=1e-6, abs=1e-6)
    lengths = {len(s["response_ids"]) for s in got}
    assert len(lengths) >= 3 and any(s["truncated"] for s in got) and not all(s["truncated"] for s in got), lengths


def test_decode_runs_each_prompt_once_and_later_steps_on_the_rows_still_decoding(model, monkeypatch):
    """The prompts' forward sees each distinct prompt once, not its n rows; the later forwards see fewer rows once
    rows have stopped (what makes the loop faster than generate)."""
    rows_seen = []
    forward = model.forward

    def counting_forward(*args, **kwargs):
        rows_seen.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting_forward)
    torch.manual_seed(11)
    samples = grpo.hf_generate(model, PROMPTS, 4, 0.7, 1.0, 12, [1], 0, 64)
    assert rows_seen[0] == len(PROMPTS)  # 5 prompts × 4 samples: 5 rows in the prompts' forward
    assert rows_seen[-1] < 20 and rows_seen[1:] == sorted(rows_seen[1:], reverse=True)
    still_decoding = [sum(len(s["response_ids"]) > t for s in samples) for t in range(len(rows_seen))]
    assert rows_seen[1:] == still_decoding[1:]  # step t runs on the rows that have not stopped before it


@pytest.mark.parametrize("sharded", [False, True])
def test_decode_runs_in_inference_mode_unless_the_model_is_sharded(monkeypatch, sharded):
    """A plain model decodes in inference mode (no autograd bookkeeping); a sharded one (ZeRO-3, FSDP) under no_grad
    only, since its forward gathers parameters into tensors that the training forward reuses. The model trains
    afterwards: here one with dynamic RoPE, which recomputes a buffer (inv_freq) once generation passes its
    max_position_embeddings, so that buffer is made in inference mode."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=23,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        eos_token_id=1,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    modes = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    monkeypatch.setattr(grpo, "is_sharded", lambda m: sharded)
    grpo.hf_generate(model, PROMPTS, 2, 0.7, 1.0, 12, [], 0, 64)  # no stop token: 7 + 12 positions > 8
    assert set(modes) == {(not sharded, False)}
    assert not torch.equal(model.model.rotary_emb.inv_freq, inv_freq)  # recomputed during generation
    monkeypatch.undo()
    model.train()
    input_ids = torch.tensor([PROMPTS[-1] * 3])  # 21 positions: past max_position_embeddings again
    model(input_ids, labels=input_ids).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
