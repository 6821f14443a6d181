"""Prefix K/V in batches: one prefix expanded to a batch, or mixed tasks stacked row by row.

``PrefixKV`` and ``build_prefix`` live in :mod:`softprompt.kv` (the bottom layer, so methods can
use them); they are re-exported here.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from softprompt.kv import PrefixKV, build_prefix

__all__ = ["PrefixKV", "build_prefix", "stack_prefixes"]


def stack_prefixes(
    prefixes: list[PrefixKV | None], config=None
) -> tuple[DynamicCache | None, torch.Tensor, torch.Tensor]:
    """One cache for rows whose prefixes differ (mixed tasks): each left-padded to the longest.

    Returns the cache (B rows, ``Lmax`` columns; ``None`` when no row has a prefix), the prefix
    mask (B, Lmax) with 0 on padding columns, and each row's prefix length (B,) — where its
    real tokens' positions start. Rows sharing one PrefixKV object share its tensors as the
    source of one copy; nothing is recomputed.
    """
    lengths = torch.tensor([p.length if p is not None else 0 for p in prefixes], dtype=torch.long)
    Lmax = int(lengths.max()) if len(prefixes) else 0
    B = len(prefixes)
    if Lmax == 0:
        return None, torch.zeros(B, 0, dtype=torch.long), lengths
    ref = next(p for p in prefixes if p is not None)
    data = []
    for layer in range(len(ref.keys)):
        k0, v0 = ref.keys[layer], ref.values[layer]
        keys = k0.new_zeros(B, k0.shape[1], Lmax, k0.shape[3])  # (B, nkv, Lmax, hs)
        values = v0.new_zeros(B, v0.shape[1], Lmax, v0.shape[3])
        for row, p in enumerate(prefixes):
            if p is not None:
                keys[row, :, Lmax - p.length:] = p.keys[layer][0]
                values[row, :, Lmax - p.length:] = p.values[layer][0]
        data.append((keys, values))
    cols = torch.arange(Lmax)
    mask = (cols[None, :] >= (Lmax - lengths)[:, None]).long()  # (B, Lmax)
    return DynamicCache(ddp_cache_data=data, config=config), mask, lengths
