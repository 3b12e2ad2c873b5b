"""Forking positions: the batch's highest-entropy tokens, where a response chooses its way (arXiv 2506.01939 finds
that about 20% of the tokens carry the choices). The training scripts log the entropy there and elsewhere
(`entropy/forking_mean`, `entropy/nonforking_mean`; docs/metrics.md)."""

import torch

FORKING_PERCENT = 20  # forking positions: the 20% highest-entropy loss tokens of the batch


def forking_entropy(entropy: torch.Tensor, percent: int = FORKING_PERCENT) -> tuple[float, float]:
    """(mean of the k = ⌈percent/100 · N⌉ largest of the N token entropies, mean of the other N − k); NaN for an
    empty set. Ties: a mean of the k largest values does not depend on which of equal values are counted.

    Example: entropies [0.9, 0.1, 0.5, 0, 0.3, 0, 0, 0.2, 0, 0.1] (N = 10): k = 2, forking (0.9 + 0.5) / 2 = 0.7,
    the rest (0.3 + 0.2 + 0.1 + 0.1) / 8 = 0.0875."""
    ranked = entropy.detach().double().flatten().sort(descending=True).values
    k = -(-len(ranked) * percent // 100)  # integer ceiling: 0.2 · N in floats can land just above an integer
    forking = ranked[:k].mean().item() if k else float("nan")
    rest = ranked[k:].mean().item() if len(ranked) > k else float("nan")
    return forking, rest


def gather_values(values: torch.Tensor, accelerator) -> torch.Tensor:
    """The 1-D `values` of every process, concatenated in process order (each process may hold a different number)."""
    if accelerator.num_processes == 1:
        return values
    sizes = accelerator.gather(torch.tensor([len(values)], device=values.device)).tolist()
    padded = torch.nn.functional.pad(values, (0, max(sizes) - len(values)))
    rows = accelerator.gather(padded[None])  # [world, max size]
    return torch.cat([row[:size] for row, size in zip(rows, sizes)])
