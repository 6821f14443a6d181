"""Next tokens for a whole batch at once: per-row temperature, top-k and top-p as tensors.

Greedy rows take the argmax. Sampled rows share one sort and one softmax; the rows without a seed draw
together from torch's global generator, and each seeded row draws from its own ``torch.Generator``, so
a seeded request gives the same tokens alone or in any crowd.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def filtered_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities in descending order of logit, after temperature, top-k (0: off) and top-p (1: off).

    ``logits`` is (B, V), the others (B,). Returns ``(probs, order)``, both (B, V): ``order[b, j]`` is the
    token of the j-th most likely entry. top-p keeps the token that crosses ``top_p``.
    """
    scaled = logits.float() / temperature[:, None]
    sorted_logits, order = scaled.sort(-1, descending=True)  # (B, V)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = (top_k[:, None] > 0) & (ranks >= top_k[:, None])
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    drop |= probs.cumsum(-1) - probs > top_p[:, None]
    return sorted_logits.masked_fill(drop, float("-inf")).softmax(-1), order


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """The next token of each row (B,) from ``logits`` (B, V); ``temperature`` (B,) 0 means greedy;
    ``generators[b]`` is row b's own generator (a seeded request) or None."""
    token = logits.argmax(-1)
    hot = (temperature > 0).nonzero().flatten()
    if hot.numel() == 0:
        return token
    probs, order = filtered_probs(logits[hot], temperature[hot], top_k[hot], top_p[hot])
    picked = torch.empty(hot.numel(), dtype=torch.long, device=logits.device)
    seeded = [i for i, row in enumerate(hot.tolist()) if generators[row] is not None]
    for i in seeded:  # its own stream: the same draws whoever else is in the batch
        picked[i] = torch.multinomial(probs[i], 1, generator=generators[int(hot[i])])[0]
    free = [i for i in range(hot.numel()) if generators[int(hot[i])] is None]
    if free:
        picked[free] = torch.multinomial(probs[free], 1).flatten()
    token[hot] = order.gather(-1, picked[:, None]).flatten()
    return token
