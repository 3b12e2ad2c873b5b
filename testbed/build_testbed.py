"""Build the CPU testbed model: a ~0.4M-parameter Llama-architecture model that partly solves a synthetic task.

Creates a character-level tokenizer (printable ASCII + newline, loadable offline with
``AutoTokenizer.from_pretrained``), a small ``LlamaForCausalLM``, and trains it by supervised
fine-tuning on worked solutions of the task until its *sampled* (temperature 1.0) accuracy on a
validation set first reaches ``--target-accuracy``. Stopping part-way is the point: RL then has signal
(some groups are mixed) and room (entropy is clearly above zero).

The default task is ``paths`` (``common.data.make_paths_problems``): "Compute a+b+c." solved along one
of 36 equivalent *pairwise* paths (which two numbers first, in which order, which separator) or the
*careful* column path ("units ..., tens ..., \\boxed{...}"). The SFT mixture writes ``--careful-share``
of its solutions in the careful format but keeps the loss on the format-choosing first token for only
enough of them that the model *chooses* it about ``--careful-choice`` of the time: a skill the model
has (practised on 30% of the data) but rarely uses (about 2% of its samples), so RL can find that using
it pays. The pairwise choices are the high-entropy "forking" positions. ``--task arith`` builds the old
model on the single-path ``arith`` task.

``--task graded`` builds the study's testbed (``common.data.make_graded_problems``): six problem families,
each with one quick path and its own careful column path, chosen at a rate of its own (``--family-choice``,
one rate per family of ``GRADED_FAMILIES``), so that RL can make several discoveries of different worth.

    python testbed/build_testbed.py            # rewrites testbed/model/ (about 6-10 minutes on 1 CPU core)
    python testbed/build_testbed.py --task graded --out-dir testbed/graded

At the end it measures the model where RL starts (``testbed/measure.py``: entropy at T = 1, the
top-20% entropy share, sampled accuracy, how often each format is used and how accurate it is), prints
the figures and records them in ``build_info.json``.

Deterministic for a given seed, torch build and thread count (the script pins 1 thread): two builds
on the same machine write byte-identical ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import tyro
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.data import (
    GRADED_FAMILIES,
    build_prompt,
    careful_format,
    load_problems,
    make_arith_problems,
    make_graded_problems,
    make_paths_problems,
)
from testbed.measure import measure

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ("paths", "graded", "arith")


@dataclass
class Args:
    out_dir: str = os.path.join(HERE, "model")
    """where the Hugging Face model folder is written"""
    task: str = "paths"
    """synthetic task: paths (the default testbed), graded (the study's six families) or arith (the old task)"""
    seed: int = 1
    """seed for initialisation, data order and evaluation sampling"""
    careful_share: float = 0.30
    """paths: share of SFT solutions written in the careful (column) format"""
    careful_choice: float = 0.015
    """paths: share of careful solutions whose format-choosing first token is trained on, expressed as the
    format frequency it targets among all solutions (the rest of the careful solutions train the steps only)"""
    family_choice: tuple[float, ...] = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08)
    """graded: --careful-choice of each family, in the order of common.data.GRADED_FAMILIES (a, b, c, d, e, f)"""
    hidden_size: int = 96
    """model width"""
    num_layers: int = 4
    """number of transformer blocks"""
    num_heads: int = 4
    """attention heads (head dim = hidden_size / num_heads)"""
    num_kv_heads: int = 2
    """key/value heads (grouped-query attention)"""
    intermediate_size: int = 256
    """MLP width"""
    batch_size: int = 64
    """SFT sequences per optimizer step"""
    learning_rate: float = 3e-3
    """peak AdamW learning rate (linear warm-up, then constant)"""
    warmup_steps: int = 50
    """linear warm-up steps"""
    max_steps: int = 3000
    """hard limit on SFT steps (the accuracy target normally stops training much earlier)"""
    eval_every: int = 50
    """evaluate sampled validation accuracy every this many steps"""
    num_eval: int = 256
    """validation problems (test split, a seed different from the benchmark's)"""
    num_measure: int = 1024
    """test problems of the final measurement (the benchmark's first ones: what RL evaluates on)"""
    target_accuracy: float = 0.27
    """stop at the first evaluation whose sampled accuracy (temperature 1.0) reaches this"""
    threads: int = 1
    """torch CPU threads (pinned: results depend on the thread count; 1 is robust to a busy machine)"""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: <pad>, <|endoftext|> (EOS), <unk>, printable ASCII and newline."""
    vocab = {"<pad>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for ch in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def encode_sft_batch(tokenizer, problems: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) with the loss on solution tokens + EOS only."""
    rows, label_rows = [], []
    for p in problems:
        prompt_ids = tokenizer(build_prompt(p["question"], "plain"), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(p["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt_ids + answer_ids)
        first = -100 if p.get("untrained_choice") else answer_ids[0]  # the format-choosing token
        label_rows.append([-100] * len(prompt_ids) + [first] + answer_ids[1:])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(r)] = 1
    return ids, mask, labels


@torch.no_grad()
def sampled_accuracy(
    model, tokenizer, problems: list[dict], seed: int, max_new_tokens: int = 64
) -> tuple[float, float, float]:
    """(accuracy, mean sampled-token entropy, share of careful-format responses) at temperature 1.0, top-p 1, top-k
    off."""
    model.eval()
    prompts = [build_prompt(p["question"], "plain") for p in problems]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
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
    completions = tokenizer.batch_decode(out.sequences[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    correct = 0
    for text, p in zip(completions, problems):
        boxed = re.findall(r"\\boxed\{(-?\d+)\}", text)
        correct += bool(boxed) and boxed[-1] == p["answer"]
    # entropy of the sampling distribution at each generated position, over positions not yet finished
    gen = out.sequences[:, enc["input_ids"].shape[1] :]
    alive = torch.ones(gen.shape[0], dtype=torch.bool)
    ent_sum, ent_n = 0.0, 0
    for t, scores in enumerate(out.scores):
        logp = torch.log_softmax(scores.float(), -1)
        ent = -(logp.exp() * logp).nan_to_num().sum(-1)
        ent_sum += ent[alive].sum().item()
        ent_n += int(alive.sum())
        alive &= gen[:, t] != tokenizer.eos_token_id
    model.train()
    careful = sum(careful_format(problems[0]["source"], t) or False for t in completions) / len(problems)
    return correct / len(problems), ent_sum / max(ent_n, 1), careful


def check_args(args: Args) -> None:
    """Refuse, before anything is built, settings that would fail later: raises ValueError (one `error:` line)."""
    if args.task not in TASKS:
        raise ValueError(f"--task {args.task}: unknown task, use one of {', '.join(TASKS)}")
    for flag in ("num_layers", "num_heads", "num_kv_heads", "batch_size", "max_steps", "eval_every", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not (0 <= args.careful_share <= 1 and 0 <= args.careful_choice < 1):
        raise ValueError("--careful-share must be in [0, 1] and --careful-choice in [0, 1)")
    if len(args.family_choice) != len(GRADED_FAMILIES) or not all(0 <= f < 1 for f in args.family_choice):
        raise ValueError(f"--family-choice needs {len(GRADED_FAMILIES)} rates in [0, 1), got {args.family_choice}")


def choice_keep_rate(careful_share: float, careful_choice: float) -> float:
    """The share k of careful solutions whose first-token loss is kept so that the model chooses the careful path
    at the rate careful_choice: k*c / ((1 - c) + k*c) = careful_choice."""
    c, f = careful_share, careful_choice
    return min(1.0, f * (1 - c) / (c * (1 - f))) if c > 0 else 1.0


def main(args: Args) -> None:
    check_args(args)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    tokenizer = build_tokenizer()
    # Llama architecture: AutoTokenizer maps model_type "qwen2" to Qwen2's byte-level BPE tokenizer,
    # which would not load this character-level tokenizer faithfully.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"testbed model: {num_params / 1e6:.3f}M parameters, vocab {len(tokenizer)}")

    if args.task == "paths":
        train = make_paths_problems(
            args.batch_size * args.max_steps, "train", seed=args.seed, careful_share=args.careful_share
        )
        keep = choice_keep_rate(args.careful_share, args.careful_choice)
        choice_rng = random.Random(f"careful-choice-{args.seed}")
        for p in train:
            p["untrained_choice"] = p["solution"].startswith("units") and choice_rng.random() >= keep
        val = make_paths_problems(args.num_eval, "test", seed=12345)
    elif args.task == "graded":
        train = make_graded_problems(
            args.batch_size * args.max_steps, "train", seed=args.seed, careful_share=args.careful_share
        )
        keep = {
            name: choice_keep_rate(args.careful_share, f)
            for (name, _, _), f in zip(GRADED_FAMILIES, args.family_choice)
        }
        choice_rng = random.Random(f"careful-choice-{args.seed}")
        for p in train:
            careful = careful_format("graded", p["solution"])
            p["untrained_choice"] = careful and choice_rng.random() >= keep[p["family"]]
        val = make_graded_problems(args.num_eval, "test", seed=12345)
    else:  # arith (check_args refused any other task)
        train = make_arith_problems(args.batch_size * args.max_steps, "train", seed=args.seed)
        val = make_arith_problems(args.num_eval, "test", seed=12345)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup_steps))

    start, history = time.time(), []
    model.train()
    for step in range(1, args.max_steps + 1):
        batch = train[(step - 1) * args.batch_size : step * args.batch_size]
        ids, mask, labels = encode_sft_batch(tokenizer, batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.eval_every == 0:
            acc, ent, careful = sampled_accuracy(model, tokenizer, val, seed=args.seed)
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "val_accuracy": acc,
                    "val_entropy": ent,
                    "val_careful_share": careful,
                }
            )
            print(
                f"step {step:5d}  loss {loss.item():.4f}  val acc@T=1 {acc:.3f}  entropy {ent:.3f}  "
                f"careful {careful:.3f}  ({time.time() - start:.0f}s)",
                flush=True,
            )
            if acc >= args.target_accuracy:
                break

    sft_seconds = time.time() - start
    model.eval()
    figures = measure(model, tokenizer, load_problems(args.task, split="test", limit=args.num_measure), seed=0)
    print(
        "measured at T=1 on",
        args.num_measure,
        f"{args.task} test problems:",
        ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()),
        flush=True,
    )
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=64,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    os.makedirs(args.out_dir, exist_ok=True)
    model.save_pretrained(args.out_dir)
    tokenizer.save_pretrained(args.out_dir)
    with open(os.path.join(args.out_dir, "build_info.json"), "w") as f:
        json.dump(
            {
                "args": {k: v for k, v in vars(args).items() if k != "out_dir"},
                "num_params": num_params,
                "steps": step,
                "sft_seconds": round(sft_seconds, 1),
                "seconds": round(time.time() - start, 1),
                "torch": torch.__version__,
                "measured": figures,
                "history": history,
            },
            f,
            indent=1,
        )
    reloaded = AutoTokenizer.from_pretrained(args.out_dir)
    probe = build_prompt(val[0]["question"], "plain") + val[0]["solution"]
    assert reloaded.decode(reloaded(probe, add_special_tokens=False)["input_ids"]) == probe, (
        "tokenizer round trip failed"
    )
    print(f"wrote {args.out_dir} after {step} steps in {time.time() - start:.0f}s")


if __name__ == "__main__":
    cli_args = tyro.cli(Args)
    try:
        check_args(cli_args)  # before the model is built
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main(cli_args)
