"""The prefix K/V of a soft prompt: per-layer keys and values shared by every row.

Under causal attention the virtual tokens at positions ``0..L-1`` attend only to each other, so
their keys and values do not depend on the row that follows. One batch-1 forward of the frozen
model over the prompt embeddings gives them; a batch then uses ``expand`` views of them.

Prefixes of different tasks are stacked row by row (``stack_prefixes``) for a mixed-task batch.

Every cache made here holds plain layers, whatever the model's config says: a sliding-window
layer (Mistral, Gemma 2/3, Qwen2, Phi-3) would keep only its last ``window - 1`` columns, cutting
the prefix short and, once rows of different lengths are padded, cutting a row's own columns by the
padding of others. The model still masks each layer to its window (from its config); the columns
must only hold each row's prefix and tokens next to each other (:func:`right_align`).

This sits at the bottom layer (next to config and checkpoint) because methods build their
prefixes with it (prefix tuning's text init) and the engine runs batches with it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer


class SharedPrefixLayer(DynamicLayer):
    """A cache layer holding a shared prefix that the new tokens attend to but never join.

    ``update`` returns prefix + new K/V without storing them: a training or scoring pass keeps
    nothing, and a gradient-checkpointed layer that replays its forward in the backward pass
    sees the same prefix again (a growing cache would hand it prefix + rows).
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@dataclass
class PrefixKV:
    """Per-layer keys and values of a prefix.

    ``keys[i]`` and ``values[i]`` are ``(1, n_kv_heads, L, head_dim)`` for layer ``i``.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    anchor: torch.Tensor | None = field(default=None, repr=False)
    """The prefix pass's final hidden states (1, L, d), when it built this prefix. With a sharded
    base (FSDP) the training loss adds ``0 * anchor.sum()`` so that the backward pass enters every
    layer through its output, where FSDP gathers the layer's weights (see engine.forward.is_sharded)."""

    @property
    def length(self) -> int:
        return self.keys[0].shape[-2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def expand(self, batch_size: int, *, read_only: bool = False) -> DynamicCache:
        """A cache holding this prefix for ``batch_size`` rows: ``expand`` views, no per-row compute.

        ``read_only``: the rows' K/V are not appended (:class:`SharedPrefixLayer`); for passes
        that do not generate after the rows (training, scoring). The layers are plain, whatever
        the model (see the module's docstring).
        """
        data = [
            (k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1))  # (B, nkv, L, hs)
            for k, v in zip(self.keys, self.values)
        ]
        return plain_cache(data, read_only)

    def detach(self) -> PrefixKV:
        return PrefixKV([k.detach() for k in self.keys], [v.detach() for v in self.values])


def build_prefix(model: PreTrainedModel, prompt_embeds: torch.Tensor, after: PrefixKV | None = None) -> PrefixKV:
    """Run the decoder once, batch 1, over ``prompt_embeds`` (L, d) at positions ``P..P+L-1``, after the
    ``P`` columns of ``after`` (a prefix these embeddings follow; none: P = 0), and return the prefix of all
    ``P + L`` columns.

    Gradients flow back to ``prompt_embeds`` and to ``after``'s tensors when grad is enabled (training). With
    ``after`` this extends a prefix by tokens every row shares (prefix tuning's K/V, then the rows' common text).
    """
    decoder = model.get_decoder()
    with _not_checkpointed(decoder):  # the prompt is one short row; its replay would refill the cache
        return _prefill(decoder, prompt_embeds, after)


@contextlib.contextmanager
def _not_checkpointed(module: torch.nn.Module):
    """Turn gradient checkpointing off inside ``module`` for a while."""
    layers = [m for m in module.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True


def _prefill(decoder, prompt_embeds: torch.Tensor, after: PrefixKV | None) -> PrefixKV:
    embeds = prompt_embeds.unsqueeze(0).to(decoder.dtype if hasattr(decoder, "dtype") else prompt_embeds.dtype)
    P, L, device = after.length if after is not None else 0, prompt_embeds.shape[0], embeds.device
    past = list(zip(after.keys, after.values)) if after is not None else None  # per layer (1, nkv, P, hs)
    out = decoder(
        inputs_embeds=embeds,  # (1, L, d)
        attention_mask=torch.ones(1, P + L, dtype=torch.long, device=device),
        position_ids=torch.arange(P, P + L, device=device).unsqueeze(0),
        past_key_values=plain_cache(past),  # all P + L columns in every layer, sliding or not
        use_cache=True,
    )
    cache = out.past_key_values
    return PrefixKV([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers],
                    anchor=out.last_hidden_state)


def plain_cache(data=None, read_only: bool = False) -> DynamicCache:
    """A cache of plain layers (no sliding-window trimming), filled with ``data`` (per layer (K, V),
    each (B, nkv, S, hs)) when given; ``read_only``: layers that never keep what the rows add."""
    cache = DynamicCache(ddp_cache_data=data) if data is not None else DynamicCache()
    if read_only:
        for layer in cache.layers:
            layer.__class__ = SharedPrefixLayer
    return cache


def roll_rows(x: torch.Tensor, shift: torch.Tensor, dim: int) -> torch.Tensor:
    """Each row ``b`` of ``x`` rotated right by ``shift[b]`` along ``dim`` (what leaves the end comes back in front).

    ``x`` is (B, ...) and ``shift`` (B,) long; the result has ``x``'s shape.
    """
    n = x.shape[dim]
    index = (torch.arange(n, device=x.device)[None, :] - shift.to(x.device)[:, None]) % n  # (B, n)
    shape = [1] * x.dim()
    shape[0], shape[dim] = x.shape[0], n
    return x.gather(dim, index.view(shape).expand_as(x))


def right_align(cache: DynamicCache, mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """Move each row's columns right until its last real column is the cache's last one.

    ``mask`` (B, C) marks each row's real columns (a prefix and its tokens, next to each other, with
    padding before and after them). Afterwards all padding is in front, so the tokens generated next
    come right after each row's own: a column distance is a position distance, as the model's
    index-based masks (causal, sliding window) assume. Returns the cache (changed in place) and the
    moved mask (B, C).
    """
    C = mask.shape[1]
    last = C - 1 - mask.flip(1).long().argmax(1)  # (B,) each row's last real column
    shift = (C - 1 - last).where(mask.any(1), torch.zeros_like(last))  # (B,)
    if not bool(shift.any()):
        return cache, mask
    for layer in cache.layers:
        layer.keys = roll_rows(layer.keys, shift, dim=2)  # (B, nkv, C, hs)
        layer.values = roll_rows(layer.values, shift, dim=2)
    return cache, roll_rows(mask, shift, dim=1)


def stack_prefixes(
    prefixes: list[PrefixKV | None], read_only: bool = False
) -> tuple[DynamicCache | None, torch.Tensor, torch.Tensor]:
    """One cache for rows whose prefixes differ (mixed tasks): each left-padded to the longest.

    Returns the cache (B rows, ``Lmax`` columns; ``None`` when no row has a prefix), the prefix
    mask (B, Lmax) with 0 on padding columns, and each row's prefix length (B,) — where its
    real tokens' positions start. Rows sharing one PrefixKV object share its tensors as the
    source of one copy; nothing is recomputed. ``read_only`` as for :meth:`PrefixKV.expand`.
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
    return plain_cache(data, read_only), mask, lengths


def extend_prefix(model: PreTrainedModel, prefix: PrefixKV | None, ids: list[int]) -> PrefixKV:
    """The prefix K/V of ``[prefix; ids]``: ``ids`` run once after ``prefix`` (None: at position 0), e.g. a chat
    template's fixed opening after a soft prompt. Each layer (1, n_kv_heads, L + len(ids), head_dim)."""
    start = prefix.length if prefix is not None else 0
    device = next(model.parameters()).device
    cache = prefix.expand(1) if prefix is not None else plain_cache()  # plain layers: every column kept
    with torch.no_grad():
        out = model.get_decoder()(
            input_ids=torch.tensor([ids], dtype=torch.long, device=device),  # (1, T)
            attention_mask=torch.ones(1, start + len(ids), dtype=torch.long, device=device),
            position_ids=torch.arange(start, start + len(ids), device=device)[None],
            past_key_values=cache, use_cache=True,
        )
    layers = out.past_key_values.layers
    return PrefixKV([layer.keys for layer in layers], [layer.values for layer in layers])
