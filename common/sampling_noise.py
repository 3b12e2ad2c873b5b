"""Keyed sampling noise (`--sampling-noise keyed` of the training scripts).

The token at position t of sample j of the prompt at place i of the data order, at rollout step s, is the Gumbel-max
draw argmax_v (z_v / T + g_v), g_v = −log(−log u_v): exactly a draw from softmax(z / T). Each u_v is a hash of the
key (seed, domain, s, i, j, t) and of v, computed in int64 tensor ops, so it depends on the key alone: not on the
other rows of the batch, their number or their order. Two runs with the same seed therefore draw the same token
wherever their policies agree, and differ only where the policies do.

The hash: two 32-bit lanes, each absorbing one 32-bit word at a time through a bijective xor-shift-multiply mixer
(lane A: murmur3's finaliser; lane B: "lowbias32" by C. Wellons), lane B also absorbing lane A, so that two keys
collide only if both 32-bit lanes do; the vocabulary index is absorbed last, and 52 bits of the two lanes give
u = (k + 1/2) / 2^52, exact in fp64 and strictly inside (0, 1). Products are taken in 16-bit halves, so no int64
product overflows. On vLLM, whose sampler cannot take this noise, each sample is its own request seeded with a
63-bit hash of its key less the position; vLLM's per-request generator then supplies the noise token by token.
"""

import copy
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

MASK32 = 0xFFFFFFFF
LANE_A = (0x85EBCA6B, 0xC2B2AE35, 13, 0x9E3779B9)  # murmur3 fmix32: two multipliers, the middle shift; initial state
LANE_B = (0x7FEB352D, 0x846CA68B, 15, 0x632BE5AB)  # lowbias32; initial state
NOISE_DOMAINS = {"train": 0, "eval": 1}  # rollouts and evaluation draw from disjoint keys


@dataclass
class NoiseKey:
    """The key of one `generate` call's noise, less each row's sample index and position (added per row)."""

    seed: int  # the run's --seed
    step: int  # the rollout step (evaluation: the step evaluated after)
    prompt_index: list[int]  # of each prompt of the call, in the run's data order (not its place in this call)
    domain: int = NOISE_DOMAINS["train"]  # training rollouts or evaluation


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2^32 for x in [0, 2^32) (int64), in 16-bit halves so that no int64 product overflows."""
    low = (x & 0xFFFF) * c
    high = (((x >> 16) * c) & 0xFFFF) << 16
    return (low + high) & MASK32


def _mix32(x: torch.Tensor, lane: tuple) -> torch.Tensor:
    """A bijective 32-bit mixer (xor-shift-multiply): every input bit flips each output bit with probability ~1/2."""
    first, second, shift, _ = lane
    x = x ^ (x >> 16)
    x = _mul32(x, first)
    x = x ^ (x >> shift)
    x = _mul32(x, second)
    return x ^ (x >> 16)


def key_words(key: NoiseKey, rows: range, n: int, position: int | None = None, device="cpu") -> torch.Tensor:
    """[len(rows), W] int64 words in [0, 2^32) of the key of each row of a call (row r: prompt r // n, sample r % n).

    Example: NoiseKey(seed=1, step=3, prompt_index=[40, 41]), n = 2, rows 1-2, position 5 ->
        [[1, 0, 0, 3, 40, 1, 5],     seed (low, high 32 bits), domain, step, prompt index, sample, position
         [1, 0, 0, 3, 41, 0, 5]]"""
    r = torch.arange(rows.start, rows.stop, dtype=torch.int64)
    prompt = torch.tensor(key.prompt_index, dtype=torch.int64)[r // n] & MASK32
    fixed = [key.seed & MASK32, (key.seed >> 32) & MASK32, key.domain, key.step & MASK32]
    fixed_words = torch.tensor(fixed, dtype=torch.int64).expand(len(r), len(fixed))
    words = [fixed_words, prompt[:, None], (r % n)[:, None]]
    if position is not None:
        words.append(torch.full((len(r), 1), position, dtype=torch.int64))
    return torch.cat(words, dim=1).to(device)


def _absorb(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two lanes' states [b] after absorbing each row's words [b, W]."""
    a = torch.full(words.shape[:1], LANE_A[3], dtype=torch.int64, device=words.device)
    b = torch.full(words.shape[:1], LANE_B[3], dtype=torch.int64, device=words.device)
    for word in words.unbind(1):
        a = _mix32(a ^ word, LANE_A)
        b = _mix32(b ^ word ^ a, LANE_B)
    return a, b


def keyed_gumbel(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Gumbel noise [b, V] (fp64) of each row's key words [b, W] and vocabulary index: a function of (key, v) only."""
    a, b = _absorb(words)
    v = torch.arange(vocab_size, dtype=torch.int64, device=words.device)
    a = _mix32(a[:, None] ^ v, LANE_A)
    b = _mix32(b[:, None] ^ a, LANE_B)
    k = (a << 20) | (b >> 12)  # 52 random bits: k + 1/2 is exact in fp64, so 0 < u < 1
    u = (k.double() + 0.5) * 2.0**-52
    return -torch.log(-torch.log(u))


def keyed_seeds(words: torch.Tensor) -> list[int]:
    """A 63-bit generator seed per row of key words [b, W]."""
    a, b = _absorb(words)
    return ((a << 31) | (b >> 1)).tolist()


class KeyedGumbelNoise(LogitsProcessor):
    """The HF engine's keyed noise: after the processor that applies T (and records the log-probs of z / T), adds each
    row's Gumbel noise; greedy decoding (`do_sample=False`) then takes the argmax, which is the keyed sample.
    `rows`: this `generate` chunk's rows of the call; `prompt_width`: its left-padded prompt width."""

    def __init__(self, key: NoiseKey, rows: range, n: int, prompt_width: int, top_p: float = 1.0):
        if top_p != 1:
            raise ValueError("keyed sampling noise needs top_p = 1 on the HF engine")
        self.key, self.rows, self.n, self.prompt_width = key, rows, n, prompt_width

    def __call__(self, input_ids, scores):
        position = input_ids.shape[1] - self.prompt_width  # tokens generated so far
        words = key_words(self.key, self.rows, self.n, position, scores.device)
        return scores.double() + keyed_gumbel(words, scores.shape[-1])


def keyed_vllm_params(params, key: NoiseKey, n: int) -> list:
    """One vLLM SamplingParams per sample (the prompts repeated n times, n = 1 each), seeded by the sample's key less
    the position: as vLLM itself clones a request's params for its n samples (`ParentRequest`), with the seed set."""
    seeds = keyed_seeds(key_words(key, range(len(key.prompt_index) * n), n))
    clones = [copy.copy(params) for _ in seeds]
    for clone, seed in zip(clones, seeds):
        clone.n = 1
        clone.seed = seed
    return clones
