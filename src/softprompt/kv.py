"""The prefix K/V of a soft prompt: per-layer keys and values shared by every row.

Under causal attention the virtual tokens at positions ``0..L-1`` attend only to each other, so
their keys and values do not depend on the row that follows. One batch-1 forward of the frozen
model over the prompt embeddings gives them; a batch then uses ``expand`` views of them.

This sits at the bottom layer (next to config and checkpoint) because methods build their
prefixes with it (prefix tuning's text init) and the engine runs batches with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass
class PrefixKV:
    """Per-layer keys and values of a prefix.

    ``keys[i]`` and ``values[i]`` are ``(1, n_kv_heads, L, head_dim)`` for layer ``i``.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[-2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def expand(self, batch_size: int, config=None) -> DynamicCache:
        """A cache holding this prefix for ``batch_size`` rows: ``expand`` views, no per-row compute."""
        data = [
            (k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1))  # (B, nkv, L, hs)
            for k, v in zip(self.keys, self.values)
        ]
        return DynamicCache(ddp_cache_data=data, config=config)

    def detach(self) -> PrefixKV:
        return PrefixKV([k.detach() for k in self.keys], [v.detach() for v in self.values])


def build_prefix(model: PreTrainedModel, prompt_embeds: torch.Tensor) -> PrefixKV:
    """Run the frozen decoder once over ``prompt_embeds`` (L, d) at positions ``0..L-1``.

    Gradients flow back to ``prompt_embeds`` when grad is enabled (training).
    """
    L = prompt_embeds.shape[0]
    decoder = model.get_decoder()
    embeds = prompt_embeds.unsqueeze(0).to(decoder.dtype if hasattr(decoder, "dtype") else prompt_embeds.dtype)
    out = decoder(
        inputs_embeds=embeds,  # (1, L, d)
        attention_mask=torch.ones(1, L, dtype=torch.long, device=embeds.device),
        position_ids=torch.arange(L, device=embeds.device).unsqueeze(0),
        past_key_values=DynamicCache(config=model.config),
        use_cache=True,
    )
    cache = out.past_key_values
    return PrefixKV([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers])
