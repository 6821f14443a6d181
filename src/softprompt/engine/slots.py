"""A preallocated K/V cache of ``max_num_seqs`` slots, written in place: the memory under continuous batching.

Each layer holds keys and values of shape ``(max_num_seqs + 1, n_kv_heads, max_model_len, head_dim)``; the
last slot is scratch. A request owns one slot while it runs: its prefix (soft prompt and shared text) at
columns ``0..P-1``, then its prompt, then what it generates, so **a column is a position** in every row.
Each forward gets a :class:`SlotCache` whose ``update`` writes the new K/V at each row's own columns and
returns the pool's rows as views (nothing grows, nothing is copied), and a 4-D attention mask per layer
kind built from each row's positions (causal, and the sliding window where a layer has one). Rows of
different lengths therefore share a step without padding moving anything: a row's tokens are the same
alone or in any crowd.

This path needs a model whose attention takes a prepared 4-D mask (Llama, Qwen, Mistral, Gemma, Phi-3...);
:meth:`SlotRunner.probe` checks a model against a plain forward before it is used.

With grouped K/V heads (GQA), transformers' SDPA path copies every K/V head once per query head when a step
has several query tokens and a mask (``repeat_kv``): for a prefill step of many slots that copy costs more
than the matmuls. During the runner's own forwards an SDPA model uses :func:`grouped_sdpa` instead, which
stacks a group's query heads on their shared K/V head: the same attention, no copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, Cache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from softprompt.kv import PrefixKV, plain_cache
from softprompt.model import lm_logits


GROUPED_SDPA = "softprompt_grouped_sdpa"


def grouped_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for several query tokens over grouped K/V heads with a 4-D mask
    shared by the heads: query (B, H, T, d) is viewed as (B, kv, H/kv * T, d) (a group's heads stacked on
    their K/V head) and the mask repeated per group, instead of K/V (B, kv, S, d) copied to (B, H, S, d)."""
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, length, dim = query.shape
    plain = (groups == 1 or length == 1 or attention_mask is None or attention_mask.dim() != 4
             or attention_mask.shape[1] != 1 or kwargs.get("dropout") or kwargs.get("softcap") is not None
             or kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None)
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kv_heads, width = key.shape[1], attention_mask.shape[-1]
    stacked = query.reshape(batch, kv_heads, groups * length, dim)
    mask = attention_mask.expand(batch, groups, length, width).reshape(batch, 1, groups * length, width)
    out = torch.nn.functional.scaled_dot_product_attention(stacked, key, value, attn_mask=mask,
                                                           scale=kwargs.get("scaling"))
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


@contextmanager
def grouped_attention(model: PreTrainedModel) -> Iterator[None]:
    """Within the block, an SDPA ``model`` attends through :func:`grouped_sdpa` (same results); others as is."""
    configs = {id(c): c for c in (model.config, model.config.get_text_config())
               if getattr(c, "_attn_implementation", None) == "sdpa"}
    for config in configs.values():
        config._attn_implementation = GROUPED_SDPA
    try:
        yield
    finally:
        for config in configs.values():
            config._attn_implementation = "sdpa"


@dataclass
class KVPool:
    """Per layer keys and values, each ``(slots + 1, n_kv_heads, max_model_len, head_dim)``; slot ``slots``
    is scratch (rows that only fill a step write there)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @classmethod
    def allocate(cls, model: PreTrainedModel, slots: int, max_model_len: int) -> KVPool:
        """Zeroed buffers shaped after one probing token's K/V (so per-layer head counts and sizes are right)."""
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model.get_decoder()(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device),
                                      past_key_values=plain_cache(), use_cache=True)
        shapes = [(layer.keys.shape[1], layer.keys.shape[3], layer.keys.dtype) for layer in out.past_key_values.layers]
        keys = [torch.zeros(slots + 1, h, max_model_len, d, dtype=t, device=device) for h, d, t in shapes]
        values = [torch.zeros(slots + 1, h, max_model_len, d, dtype=t, device=device) for h, d, t in shapes]
        return cls(keys, values)


class SlotCache(Cache):
    """One forward's view of the pool: rows ``rows`` (a slice of slots, or (B,) slot indices), new K/V written
    at ``(slot, column)``.

    ``slots`` is (B, 1) or (B, T) long (the slot each row, or each token, writes to: its own, or the scratch
    slot) and ``cols`` (B, T) the columns of its T new tokens; ``update`` returns the pool's ``rows`` up to
    ``width`` columns, shape (B, n_kv_heads, width, head_dim) (views for a slice, copies for indices).
    """

    def __init__(self, pool: KVPool, rows: slice | torch.Tensor, slots: torch.Tensor, cols: torch.Tensor, width: int):
        super().__init__(layers=[DynamicLayer() for _ in pool.keys])
        self.pool, self.rows, self.slots, self.cols, self.width = pool, rows, slots, cols, width

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        keys[self.slots, :, self.cols] = key_states.transpose(1, 2)  # (B, T, nkv, hs) at (slot, column)
        values[self.slots, :, self.cols] = value_states.transpose(1, 2)
        return keys[self.rows, :, :self.width], values[self.rows, :, :self.width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width - self.cols.shape[1]


def mask_kinds(model: PreTrainedModel) -> dict[str, int | None]:
    """Layer kind -> its sliding window (None: full causal attention), from the model's config."""
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not types:
        return {"sliding_attention" if window else "full_attention": window}
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise NotImplementedError(f"layer kinds {sorted(unknown)} have no slot cache")
    return {kind: (window if kind == "sliding_attention" else None) for kind in set(types)}


def slot_masks(positions: torch.Tensor, live: torch.Tensor, width: int, kinds: dict[str, int | None],
               dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive masks (B, 1, T, width): query at ``positions`` (B, T) sees columns at or before it (and within
    its window); a row not ``live`` (B,) sees column 0 only (its output is thrown away, and never NaN)."""
    cols = torch.arange(width, device=positions.device)
    seen = cols[None, None, :] <= positions[:, :, None]  # (B, T, width)
    masks = {}
    for kind, window in kinds.items():
        allowed = seen & (cols[None, None, :] > positions[:, :, None] - window) if window else seen
        allowed = torch.where(live[:, None, None], allowed, cols[None, None, :] == 0)
        masks[kind] = torch.zeros(allowed.shape, dtype=dtype, device=positions.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]  # (B, 1, T, width)
    return next(iter(masks.values())) if len(masks) == 1 else masks


class SlotRunner:
    """Forward passes over the slot pool: load a prefix, prefill chunks of several slots, decode a step of many."""

    def __init__(self, model: PreTrainedModel, max_num_seqs: int, max_model_len: int):
        self.model, self.decoder = model, model.get_decoder()
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        self.kinds = mask_kinds(model)
        self.pool = KVPool.allocate(model, max_num_seqs, max_model_len)
        self.device = self.pool.keys[0].device
        self.dtype = next(model.parameters()).dtype if next(model.parameters()).is_floating_point() else torch.float32
        self.decode_fn = self._forward

    def compile(self) -> None:
        """``torch.compile`` the decoder's steps (a GPU option; shapes vary, so dynamic)."""
        self.decode_fn = torch.compile(self._forward, dynamic=True)

    def load(self, slot: int, prefix: PrefixKV | None) -> int:
        """Copy ``prefix`` into columns ``0..P-1`` of ``slot``; returns P (0 for none)."""
        if prefix is None:
            return 0
        for layer, (k, v) in enumerate(zip(prefix.keys, prefix.values)):
            self.pool.keys[layer][slot, :, :k.shape[2]] = k[0]
            self.pool.values[layer][slot, :, :v.shape[2]] = v[0]
        return prefix.length

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy columns ``0..length-1`` of slot ``src`` to slot ``dst`` (a row moving down to fill a hole)."""
        for keys, values in zip(self.pool.keys, self.pool.values):
            keys[dst, :, :length] = keys[src, :, :length]
            values[dst, :, :length] = values[src, :, :length]

    @torch.no_grad()
    def prefill(self, slot: int, ids: list[int], start: int) -> torch.Tensor:
        """Run ``ids`` of ``slot`` at positions ``start..``; returns the last one's logits (V,)."""
        return self.prefill_many([slot], [ids], [start])[0]

    @torch.no_grad()
    def prefill_many(self, slots: list[int], chunks: list[list[int]], starts: list[int]) -> torch.Tensor:
        """One forward for several slots' prompt chunks: row b runs ``chunks[b]`` in ``slots[b]`` (distinct) at
        positions ``starts[b]..``. Rows are right-padded to the longest chunk (T); a padding token repeats its
        row's last token and position and writes to the scratch slot, so no real column changes and no real
        query sees it. Returns each row's last real token's logits (B, V)."""
        lengths = torch.tensor([len(c) for c in chunks], device=self.device)  # (B,)
        width = int(lengths.max())
        steps = torch.arange(width, device=self.device)[None]  # (1, T)
        positions = torch.tensor(starts, device=self.device)[:, None] + torch.minimum(steps, lengths[:, None] - 1)
        tokens = torch.tensor([c + c[-1:] * (width - len(c)) for c in chunks], dtype=torch.long,
                              device=self.device)  # (B, T)
        own = torch.tensor(slots, device=self.device)  # (B,)
        writes = torch.where(steps < lengths[:, None], own[:, None], self.max_num_seqs)  # (B, T)
        live = torch.ones(len(slots), dtype=torch.bool, device=self.device)
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        rows = slice(slots[0], slots[0] + len(slots)) if contiguous else own
        return self._forward(rows, writes, tokens, positions, live, lengths - 1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """One step for slots ``0..n-1``: ``tokens``, ``positions`` and ``live`` are (n,); a row not live
        writes to the scratch slot. Returns logits (n, V)."""
        n = tokens.shape[0]
        slots = torch.where(live, torch.arange(n, device=self.device), self.max_num_seqs)[:, None]  # (n, 1)
        return self.decode_fn(slice(0, n), slots, tokens[:, None], positions[:, None], live)

    def _forward(self, rows: slice | torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor,
                 positions: torch.Tensor, live: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` and ``positions`` (B, T); each token's K/V go to its ``slots`` row (B, 1 or T) at column =
        position. Logits (B, V) of each row's token ``last`` (B,) (default: its last, T - 1)."""
        width = int(positions[live].max()) + 1 if bool(live.any()) else 1
        cache = SlotCache(self.pool, rows, slots, positions.clamp(max=self.max_model_len - 1), width)
        mask = slot_masks(positions, live, width, self.kinds, self.dtype)
        with grouped_attention(self.model):
            hidden = self.decoder(input_ids=tokens, attention_mask=mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True).last_hidden_state  # (B, T, d)
        picked = hidden[:, -1] if last is None else hidden[torch.arange(hidden.shape[0], device=self.device), last]
        return lm_logits(self.model, picked)  # (B, V)

    @torch.no_grad()
    def probe(self) -> str | None:
        """Check this path against a plain forward of the same tokens (two prefill chunks, then three decode
        steps beside an idle slot); None when it matches, else why not."""
        try:
            vocab = self.model.get_input_embeddings().weight.shape[0]
            ids = [(7 * i + 3) % vocab for i in range(13)]
            hidden = self.decoder(input_ids=torch.tensor([ids], device=self.device),
                                  past_key_values=plain_cache(), use_cache=True).last_hidden_state
            want = lm_logits(self.model, hidden[0])  # (13, V)
            got = [self.prefill(0, ids[:6], 0), self.prefill(0, ids[6:10], 6)]
            live = torch.tensor([True, False] if self.max_num_seqs > 1 else [True], device=self.device)
            for pos in range(10, 13):
                tokens = torch.full(live.shape, ids[pos], device=self.device)
                got.append(self.decode(tokens, torch.full(live.shape, pos, device=self.device), live)[0])
            ref = torch.stack([want[5], want[9], want[10], want[11], want[12]])
            if not torch.allclose(torch.stack(got).float(), ref.float(), atol=1e-3, rtol=1e-3):
                return "its logits through the slot cache differ from a plain forward"
        except Exception as exc:  # noqa: BLE001 - any failure means: not this path
            return f"{type(exc).__name__}: {exc}"
        return None
