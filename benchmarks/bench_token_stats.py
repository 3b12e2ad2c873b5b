"""Benchmark: chunked log-prob + entropy + G (grpo.token_stats) versus the naive full-vocabulary version.

Prints time, peak extra memory (beyond the logits themselves) and the largest deviation from an fp64
reference, at Qwen's vocabulary size. Targets (issue #3): peak extra memory ≤ 25% of the naive one,
time ≤ 1.2× of it, values within 1e-4 of fp64.

    python benchmarks/bench_token_stats.py                       # CPU, fp32 logits
    python benchmarks/bench_token_stats.py --device cuda --dtype bfloat16

Each method runs in a fresh subprocess so that, on CPU, its peak resident memory can be read from
`getrusage` (on CUDA, `torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def naive(logits, tokens):
    logp_all = torch.log_softmax(logits.float(), dim=-1)  # [N, V] fp32
    p = logp_all.exp()
    entropy = -(p * logp_all).sum(-1)
    g = (p.square() * (logp_all + entropy[:, None])).sum(-1)
    return logp_all.gather(1, tokens[:, None]).squeeze(1), entropy, g


def make_inputs(n, vocab, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.empty(n, vocab).normal_(0.0, 4.0, generator=gen)  # in place: no temporary raises the RSS peak
    logits = logits.to(dtype).to(device)
    tokens = torch.randint(0, vocab, (n,), generator=gen).to(device)
    return logits, tokens


def reference(logits, tokens, chunk=128):
    """fp64 ground truth, computed in small chunks."""
    outs = [[], [], []]
    for start in range(0, len(logits), chunk):
        logp_all = torch.log_softmax(logits[start : start + chunk].double(), dim=-1)
        p = logp_all.exp()
        entropy = -(p * logp_all).sum(-1)
        g = (p.square() * (logp_all + entropy[:, None])).sum(-1)
        for o, x in zip(outs, (logp_all.gather(1, tokens[start : start + chunk, None]).squeeze(1), entropy, g)):
            o.append(x)
    return [torch.cat(o) for o in outs]


def child(method, n, vocab, dtype, device, chunk, repeats):
    import grpo

    dtype = getattr(torch, dtype)
    logits, tokens = make_inputs(n, vocab, dtype, device)
    fn = (lambda: naive(logits, tokens)) if method == "naive" else (lambda: grpo.token_stats(logits, tokens, chunk))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        out = fn()  # warm-up
        sync()
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            del out
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() - base_cuda
        else:
            peak = None
    ref = reference(logits.cpu(), tokens.cpu())
    err = max((a.double().cpu() - b).abs().max().item() for a, b in zip(out, ref))
    print(
        json.dumps(
            {
                "method": method,
                "time_s": min(times),
                "peak_cuda_bytes": peak,
                "err": err,
                "rss_after_warmup_kb": base_rss,
            }
        )
    )


def measure_cpu_peak(method, args):
    """Peak RSS of a child that only allocates the inputs, versus one that also runs the method once."""
    code = (
        f"import sys, resource, torch; sys.path.insert(0, {REPO_ROOT!r});"
        f"from benchmarks.bench_token_stats import make_inputs, naive; import grpo;"
        f"l, t = make_inputs({args.tokens}, {args.vocab}, torch.{args.dtype}, 'cpu');"
        f"r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        + (
            ""
            if method == "none"
            else ("naive(l, t);" if method == "naive" else f"grpo.token_stats(l, t, {args.chunk});")
        )
        + "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tokens, args.vocab, args.dtype, args.device, args.chunk, args.repeats)
        return
    results = {}
    for method in ("naive", "chunked"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            method,
            "--tokens",
            str(args.tokens),
            "--vocab",
            str(args.vocab),
            "--dtype",
            args.dtype,
            "--device",
            args.device,
            "--chunk",
            str(args.chunk),
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        if args.device == "cpu":
            results[method]["peak_bytes"] = measure_cpu_peak(method, args)
        else:
            results[method]["peak_bytes"] = results[method]["peak_cuda_bytes"]
    logits_bytes = args.tokens * args.vocab * torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()
    print(
        f"token stats (logp, entropy, G): {args.tokens} tokens x vocab {args.vocab}, {args.dtype} logits "
        f"({logits_bytes / 2**20:.0f} MiB) on {args.device}, chunk {args.chunk}"
    )
    for method in ("naive", "chunked"):
        r = results[method]
        print(
            f"  {method:8s} time {r['time_s'] * 1e3:9.1f} ms   peak extra memory {r['peak_bytes'] / 2**20:8.1f} MiB   "
            f"max |err| vs fp64 {r['err']:.2e}"
        )
    n, c = results["naive"], results["chunked"]
    print(
        f"  chunked/naive: time {c['time_s'] / n['time_s']:.2f}x (target <= 1.2x), "
        f"peak memory {c['peak_bytes'] / max(n['peak_bytes'], 1):.1%} (target <= 25%), "
        f"error {c['err']:.1e} (target <= 1e-4)"
    )


if __name__ == "__main__":
    main()
