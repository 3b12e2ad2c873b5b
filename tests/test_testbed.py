"""The committed CPU testbed model: loads offline from the repo and half-solves the synthetic task."""

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "testbed" / "model"


def test_testbed_loads_offline_and_is_in_the_accuracy_band(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.data import build_prompt, load_problems
    from common.reward import score

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    assert 0.3e6 <= sum(p.numel() for p in model.parameters()) <= 5e6
    problems = load_problems("arith", split="test", limit=256)
    prompts = [build_prompt(p["question"], "plain") for p in problems]
    assert tokenizer.decode(tokenizer(prompts[0])["input_ids"]) == prompts[0]  # character-level round trip
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=64,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             output_scores=True, return_dict_in_generate=True)
    generated = out.sequences[:, enc["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    accuracy = sum(score(texts, [p["answer"] for p in problems], num_workers=1)) / len(problems)
    assert 0.20 <= accuracy <= 0.60, accuracy
    # mean entropy of the sampling distribution over generated (not yet finished) positions
    alive = torch.ones(len(problems), dtype=torch.bool)
    total, count = 0.0, 0
    for t, scores in enumerate(out.scores):
        logp = torch.log_softmax(scores.float(), -1)
        entropy = -(logp.exp() * logp).nan_to_num().sum(-1)
        total, count = total + entropy[alive].sum().item(), count + int(alive.sum())
        alive &= generated[:, t] != tokenizer.eos_token_id
    assert total / count > 0.02
