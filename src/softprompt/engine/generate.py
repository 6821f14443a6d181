"""Batched generation after an optional prefix: greedy or sampled, left padding that moves nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from softprompt.data.collate import left_pad
from softprompt.defaults import MAX_NEW_TOKENS
from softprompt.engine.forward import decoder_hidden, lm_logits
from softprompt.kv import PrefixKV


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


@dataclass
class SamplingParams:
    """How one row is decoded. ``temperature`` 0 means greedy; ``seed`` seeds that row alone."""

    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


def _pick_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list) -> torch.Tensor:
    """Next token per row (B,): vectorised argmax for greedy rows, per-row sampling for the rest."""
    token = logits.argmax(-1)
    for row, (p, g) in enumerate(zip(params, generators)):
        if p.temperature > 0:
            token[row] = pick_next(logits[row:row + 1], p.temperature, p.top_p, p.top_k, g)[0]
    return token


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    prefix: PrefixKV | Sequence[PrefixKV | None] | None = None,
    *,
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, int], bool | None] | None = None,
) -> list[list[int]]:
    """Generate for a batch of prompts; returns the new ids of each row, EOS excluded.

    ``prefix`` is one PrefixKV shared by all rows (expanded views), or one per row (mixed
    tasks: left-padded to the longest and masked), or None. Rows are left-padded, their
    positions start at their own prefix length and their tokens sit right after their prefix in
    the cache (:func:`~softprompt.engine.forward.decoder_hidden`), so a row's output does not
    depend on the others, sliding windows included. ``params`` is one :class:`SamplingParams` for every row or one per row (None: the
    defaults, greedy); a sampled row with a ``seed`` draws from its own generator, the others all
    from ``generator`` (shared, in row order; None: torch's global one).
    ``on_token(row, token_id)`` is called as each token is produced; returning True stops
    that row (stop strings).
    """
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    B = len(prompts)
    if params is None:
        params = SamplingParams()
    rows = [params] * B if isinstance(params, SamplingParams) else list(params)
    generators = [torch.Generator().manual_seed(p.seed) if p.seed is not None else generator for p in rows]
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_token_id))  # (B, T)
    hidden, cache, full_mask = decoder_hidden(model, ids, mask, prefix, return_cache=True)  # full_mask (B, C)
    logits = lm_logits(model, hidden[:, -1])  # (B, V): each row's last token (left padding)
    next_pos = full_mask.sum(-1, keepdim=True)  # (B, 1): prefix + prompt, the next token's position
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
    limits = torch.tensor([p.max_new_tokens for p in rows], device=device)
    finished = limits <= 0
    out: list[list[int]] = [[] for _ in range(B)]
    for step in range(int(limits.max()) if B else 0):
        token = _pick_rows(logits, rows, generators)  # (B,)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        stop = torch.isin(token, eos) if len(eos) else torch.zeros_like(finished)
        for row in (~finished & ~stop).nonzero().flatten().tolist():
            out[row].append(int(token[row]))
            if on_token is not None and on_token(row, int(token[row])):
                stop[row] = True
        finished |= stop | (limits <= step + 1)
        if bool(finished.all()):
            break
        full_mask = torch.cat([full_mask, torch.ones(B, 1, dtype=full_mask.dtype, device=device)], dim=1)
        hidden = decoder(input_ids=token[:, None], attention_mask=full_mask, position_ids=next_pos,
                         past_key_values=cache, use_cache=True).last_hidden_state
        logits = lm_logits(model, hidden[:, -1])
        next_pos = next_pos + 1
    return out
