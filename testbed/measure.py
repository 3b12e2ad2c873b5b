"""Measure the testbed model where RL starts: entropy, its concentration, accuracy and the ways of solving.

    python testbed/measure.py                      # the committed model, 1024 test problems (~10 s on 1 core)
    python testbed/measure.py --model runs/NAME/checkpoints/step_000200/hf
    python testbed/measure.py --run runs/NAME      # a finished RL run: entropy and eval curves, formats used

Samples one response per problem at temperature 1 (top-p 1, top-k off, at most 64 new tokens, the
scripts' rollout settings) and prints

* ``entropy``: mean entropy (nats) of the sampling distribution over all generated positions, pooled
  (the scripts' ``entropy/mean`` at step 1), and ``top20_share``: the share of that entropy carried by
  the 20% highest-entropy positions (arXiv 2506.01939's "forking tokens");
* ``accuracy``: share of responses graded correct by ``common.reward.score``;
* for the ``paths`` task, the share of responses in each format (``common.data.paths_format``) and the
  accuracy of each, plus ``careful_forced_accuracy``: the accuracy when the response is started with
  "units" (the careful format), a less noisy estimate of what that format is worth;
* for the ``graded`` task, the same per family (``common.data.GRADED_FAMILIES``; the forced start is the
  family's own careful word);
* ``entropy_where``: the share of the entropy at the first response position (where the way of solving is
  chosen), at the positions of ``paths``' interchangeable choices (which number first and second, the separator,
  the second step's order: none of them changes correctness), and elsewhere (steps that are right or wrong).

Deterministic for a given seed, torch build and thread count (pinned to 1).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import re

from common.data import DEFAULT_TASK, GRADED_FAMILIES, build_prompt, graded_format, load_problems, paths_format

HERE = os.path.dirname(os.path.abspath(__file__))


@torch.no_grad()
def sample(
    model,
    tokenizer,
    problems: list[dict],
    seed: int,
    prefix: str | list[str] = "",
    max_new_tokens: int = 64,
    batch_size: int = 256,
) -> tuple[list[str], list[torch.Tensor]]:
    """One response per problem at temperature 1: (texts, entropies of the sampling distribution at each
    generated position up to and including the one that produced EOS). ``prefix`` (one for all, or one per
    problem) is appended to the prompt (it is part of the returned text, not of the entropies)."""
    prefixes = [prefix] * len(problems) if isinstance(prefix, str) else prefix
    was_training = model.training
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    texts, entropies = [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        chunk_prefixes = prefixes[start : start + batch_size]
        prompts = [build_prompt(p["question"], "plain") + pre for p, pre in zip(chunk, chunk_prefixes)]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        gen = out.sequences[:, enc["input_ids"].shape[1] :]
        texts += [pre + t for pre, t in zip(chunk_prefixes, tokenizer.batch_decode(gen, skip_special_tokens=True))]
        ent = torch.stack(
            [
                -(torch.log_softmax(s.float(), -1).exp() * torch.log_softmax(s.float(), -1)).nan_to_num().sum(-1)
                for s in out.scores
            ],
            1,
        )  # [batch, steps]
        finished = (gen == tokenizer.eos_token_id).long().cumsum(1)
        alive = torch.cat([torch.zeros_like(finished[:, :1]), finished[:, :-1]], 1) == 0
        entropies += [row[mask] for row, mask in zip(ent, alive)]
    torch.random.set_rng_state(generator_state)
    model.train(was_training)
    return texts, entropies


def grade(texts: list[str], problems: list[dict]) -> list[float]:
    from common.reward import score

    return list(score(texts, [p["answer"] for p in problems], num_workers=0))


def entropy_figures(entropies: list[torch.Tensor]) -> dict:
    """Pooled mean entropy per generated token and the share carried by the top 20% of positions."""
    pooled = torch.cat(entropies).double() if entropies else torch.zeros(0, dtype=torch.double)
    total = pooled.sum().item()
    top = torch.sort(pooled, descending=True).values[: max(1, round(0.2 * len(pooled)))].sum().item()
    return {
        "entropy": total / max(len(pooled), 1),
        "top20_share": top / total if total > 0 else 0.0,
        "tokens_per_response": len(pooled) / max(len(entropies), 1),
    }


PATHS_CHOICES = re.compile(r"(\d+)\+\d+=\d+([,;.]) (\d)")  # first number, second number, separator, 2nd step


def entropy_where(texts: list[str], entropies: list[torch.Tensor], task: str) -> dict:
    """Shares of the total entropy: at the first position (the way of solving), at ``paths``' four interchangeable
    choices (found in a pairwise response: positions 0, after the first "+", the separator, the second step's first
    character; position 0 counts as interchangeable there, minus nothing: it also holds the careful choice), and
    elsewhere. One token per character (the testbed's tokenizer). ``graded`` has no interchangeable choice: each
    family's quick path has one order and one separator."""
    first = interchangeable = total = 0.0
    for text, ent in zip(texts, entropies):
        ent = ent.double()
        total += ent.sum().item()
        match = PATHS_CHOICES.match(text) if task == "paths" else None
        if match:  # a pairwise paths response
            positions = [0, len(match.group(1)) + 1, match.start(2), match.start(3)]
            interchangeable += sum(ent[i].item() for i in positions if i < len(ent))
        elif len(ent):
            first += ent[0].item()
    if total == 0:
        return {"first_position": 0.0, "interchangeable": 0.0, "elsewhere": 0.0}
    return {
        "first_position": first / total,
        "interchangeable": interchangeable / total,
        "elsewhere": 1 - (first + interchangeable) / total,
    }


def measure(model, tokenizer, problems: list[dict], seed: int = 0, forced: bool = True) -> dict:
    """The starting-point figures of ``model`` on ``problems`` (see the module docstring)."""
    texts, entropies = sample(model, tokenizer, problems, seed)
    rewards = grade(texts, problems)
    figures = {
        "num_problems": len(problems),
        **entropy_figures(entropies),
        "accuracy": sum(rewards) / max(len(rewards), 1),
    }
    source = problems[0].get("source") if problems else None
    if source in ("paths", "graded"):
        figures["entropy_where"] = entropy_where(texts, entropies, source)
    if source == "graded":
        words = {name: word for name, _, word in GRADED_FAMILIES}
        forced_texts = None
        if forced:
            forced_texts, _ = sample(
                model, tokenizer, problems, seed + 1, prefix=[words[p["family"]] for p in problems]
            )
        for name, _, _ in GRADED_FAMILIES:
            rows = [i for i, p in enumerate(problems) if p["family"] == name]
            careful = [rewards[i] for i in rows if graded_format(texts[i]) == "careful"]
            quick = [rewards[i] for i in rows if graded_format(texts[i]) == "quick"]
            family = {
                "problems": len(rows),
                "careful_share": len(careful) / max(len(rows), 1),
                "careful_accuracy": sum(careful) / len(careful) if careful else None,
                "quick_accuracy": sum(quick) / len(quick) if quick else None,
                "accuracy": sum(rewards[i] for i in rows) / max(len(rows), 1),
            }
            if forced_texts is not None:
                graded = grade([forced_texts[i] for i in rows], [problems[i] for i in rows])
                family["careful_forced_accuracy"] = sum(graded) / max(len(rows), 1)
            figures[f"family_{name}"] = family
        figures["careful_share"] = sum(graded_format(t) == "careful" for t in texts) / len(texts)
    if source == "paths":
        formats = [paths_format(t) for t in texts]
        for fmt in ("careful", "pairwise", "other"):
            picked = [r for r, f in zip(rewards, formats) if f == fmt]
            figures[f"{fmt}_share"] = len(picked) / len(texts)
            figures[f"{fmt}_accuracy"] = sum(picked) / len(picked) if picked else None
        if forced:
            forced_texts, _ = sample(model, tokenizer, problems, seed + 1, prefix="units")
            figures["careful_forced_accuracy"] = sum(grade(forced_texts, problems)) / len(problems)
    return figures


def summarise_run(run_dir: str) -> dict:
    """Entropy and evaluation accuracy at the start and end of an RL run, and the formats of its logged
    completions (first and last tenth of the logged steps)."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    train = [r for r in rows if "entropy/mean" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    out = {
        "steps": train[-1].get("step") if train else None,
        "entropy_start": train[0]["entropy/mean"] if train else None,
        "entropy_end": train[-1]["entropy/mean"] if train else None,
        "eval_start": evals[0]["eval/accuracy"] if evals else None,
        "eval_end": evals[-1]["eval/accuracy"] if evals else None,
        "eval_curve": [(r.get("step"), round(r["eval/accuracy"], 3)) for r in evals],
    }
    if train:
        out["entropy_drop"] = 1 - out["entropy_end"] / out["entropy_start"]
        k = max(1, len(train) // 10)
        out["entropy_start_avg10pct"] = sum(r["entropy/mean"] for r in train[:k]) / k
        out["entropy_end_avg10pct"] = sum(r["entropy/mean"] for r in train[-k:]) / k
    path = os.path.join(run_dir, "completions.jsonl")
    if os.path.exists(path):
        logged = [json.loads(line) for line in open(path)]
        steps = sorted({c.get("step") for c in logged if c.get("step") is not None})
        if steps:
            k = max(1, len(steps) // 10)
            for name, chosen in (("first", set(steps[:k])), ("last", set(steps[-k:]))):
                texts = [c.get("completion", c.get("response", "")) for c in logged if c.get("step") in chosen]
                out[f"careful_share_logged_{name}"] = (
                    sum(paths_format(t) == "careful" for t in texts) / len(texts) if texts else None
                )
    return out


@dataclass
class Args:
    model: str = os.path.join(HERE, "model")
    """model folder to measure"""
    task: str = DEFAULT_TASK
    """synthetic task whose test split is sampled"""
    num_problems: int = 1024
    """test problems (one sample each)"""
    seed: int = 0
    """sampling seed"""
    run: str | None = None
    """instead: summarise a finished RL run folder (runs/NAME)"""


def main(args: Args) -> None:
    if args.run:
        print(json.dumps(summarise_run(args.run), indent=1))
        return
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    problems = load_problems(args.task, split="test", limit=args.num_problems)
    figures = measure(model, tokenizer, problems, seed=args.seed)
    figures["num_params"] = sum(p.numel() for p in model.parameters())
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
