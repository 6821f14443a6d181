"""Batched generation after an optional prefix: greedy or sampled, left padding that moves nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from softprompt.data.collate import left_pad
from softprompt.engine.forward import positions_after
from softprompt.engine.prefix import PrefixKV


def pick_next(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Choose one token per row from ``logits`` (B, V): argmax when temperature is 0."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    prefix: PrefixKV | None = None,
    *,
    max_new_tokens: int = 128,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` per prompt; returns the new ids of each row, EOS excluded.

    The prefix (if any) is shared by all rows as expanded views; rows are left-padded and
    their positions start at the prefix length, so a row's output does not depend on the
    others. ``on_token(row, token_id)`` is called as each token is produced (streaming).
    """
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_token_id))  # (B, T)
    B = ids.shape[0]
    L = prefix.length if prefix is not None else 0
    cache = prefix.expand(B, model.config) if prefix is not None else DynamicCache(config=model.config)
    full_mask = torch.cat([torch.ones(B, L, dtype=mask.dtype, device=device), mask], dim=1)  # (B, L + T)
    positions = positions_after(mask, L)  # (B, T)
    hidden = decoder(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                     past_key_values=cache, use_cache=True).last_hidden_state
    logits = head(hidden[:, -1])  # (B, V)
    next_pos = positions[:, -1:] + 1  # (B, 1)
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(B)]
    for step in range(max_new_tokens):
        token = pick_next(logits, temperature, top_p, top_k, generator)  # (B,)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        is_eos = torch.isin(token, eos) if len(eos) else torch.zeros_like(finished)
        for row in (~finished & ~is_eos).nonzero().flatten().tolist():
            out[row].append(int(token[row]))
            if on_token is not None:
                on_token(row, int(token[row]))
        finished |= is_eos
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        full_mask = torch.cat([full_mask, torch.ones(B, 1, dtype=full_mask.dtype, device=device)], dim=1)
        hidden = decoder(input_ids=token[:, None], attention_mask=full_mask, position_ids=next_pos,
                         past_key_values=cache, use_cache=True).last_hidden_state
        logits = head(hidden[:, -1])
        next_pos = next_pos + 1
    return out
