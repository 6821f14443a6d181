"""Batched forward after a prefix, and the loss computed only where a label is."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.data import IGNORE_INDEX
from softprompt.kv import PrefixKV, build_prefix, plain_cache, right_align, roll_rows, stack_prefixes
from softprompt.methods import of
from softprompt.model import lm_logits


def positions_after(attention_mask: torch.Tensor, offset: int) -> torch.Tensor:
    """Position ids that padding never moves: each row's first real token sits at ``offset``.

    ``attention_mask`` is (B, T) with 0 on padding (left or right); returns (B, T) long.
    """
    return offset + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prefix_cache(
    prefix: PrefixKV | Sequence[PrefixKV | None] | None, B: int, read_only: bool = False
) -> tuple[DynamicCache | None, torch.Tensor, torch.Tensor]:
    """(cache or None, prefix mask (B, Lmax), each row's prefix length (B,)) for one prefix shared by the
    ``B`` rows (expanded views), one per row (:func:`~softprompt.kv.stack_prefixes`), or none."""
    if isinstance(prefix, PrefixKV):
        L = prefix.length
        return prefix.expand(B, read_only=read_only), torch.ones(B, L, dtype=torch.long), torch.full((B,), L)
    return stack_prefixes(list(prefix) if prefix is not None else [None] * B, read_only)


def _to_front(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) how many padding columns stand before each row's first real token (0 for right padding)."""
    return (attention_mask.long().cumsum(-1) == 0).sum(-1)


def decoder_hidden(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefix: PrefixKV | Sequence[PrefixKV | None] | None = None,
    return_cache: bool = False,
):
    """Final hidden states (B, T, d) of ``input_ids`` (B, T) after an optional prefix.

    ``prefix`` is one PrefixKV for every row, one per row (mixed tasks) or None. A row's mask gets its
    prefix's ones in front and its positions start at its prefix length. Rows may be left- or
    right-padded: they run with their tokens right after their prefix (padding moved behind them),
    so a column distance is a position distance and no row's sliding window moves; the hidden
    states come back in the caller's layout. With ``return_cache`` it returns ``(hidden, cache,
    cache_mask)``: the filled cache with every row's columns right-aligned (:func:`right_align`, so
    generated tokens follow the row's own) and its mask (B, C).
    """
    B, T = input_ids.shape
    device = input_ids.device
    cache, prefix_mask, lengths = prefix_cache(prefix, B, read_only=not return_cache)
    lead = _to_front(attention_mask)  # (B,)
    moved = bool(lead.any())
    if moved:  # real tokens to the front of the block, right after the prefix
        input_ids, attention_mask = roll_rows(input_ids, -lead, 1), roll_rows(attention_mask, -lead, 1)
    full_mask = torch.cat([prefix_mask.to(device=device, dtype=attention_mask.dtype), attention_mask], dim=1)
    out = model.get_decoder()(
        input_ids=input_ids,
        attention_mask=full_mask,  # (B, Lmax + T)
        position_ids=positions_after(attention_mask, 0) + lengths.to(device)[:, None],  # (B, T)
        past_key_values=cache if cache is not None else (plain_cache() if return_cache else None),
        use_cache=return_cache,  # a read-only prefix cache is read all the same
    )
    hidden = roll_rows(out.last_hidden_state, lead, 1) if moved else out.last_hidden_state  # caller's layout
    if return_cache:
        return (hidden, *right_align(out.past_key_values, full_mask))
    return hidden


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer in the backward pass (torch's non-reentrant checkpoint).

    transformers drops ``past_key_values`` inside a checkpointed layer unless the layer only reads
    its cache; the rows' prefix cache is read-only (:class:`~softprompt.kv.SharedPrefixLayer`),
    so the layers may keep it, and a prefix (prompt, p-tuning or prefix tuning) still reaches
    every layer. The prompt's own batch-1 pass is not checkpointed (``build_prefix``).
    """
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True


def labelled_loss(model: PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and how many there are.

    ``hidden`` (B, T, d) predicts ``labels`` (B, T) shifted by one; the LM head runs only on
    the N positions whose next label is not ``IGNORE_INDEX`` (-100).
    """
    targets = labels[:, 1:]  # (B, T-1)
    selected = targets != IGNORE_INDEX
    h = hidden[:, :-1][selected]  # (N, d)
    logits = lm_logits(model, h)  # (N, V)
    loss_sum = F.cross_entropy(logits, targets[selected], reduction="sum")
    return loss_sum, int(selected.sum())


def batch_loss(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
    prefix: PrefixKV | None = None,
) -> tuple[torch.Tensor, int]:
    """Summed loss over the labelled tokens of a batch after an optional shared prefix, and their count.

    ``input_ids``, ``attention_mask`` and ``labels`` are (B, T); the loss is a scalar tensor (with
    grad when grad is enabled), the count an int (see :func:`labelled_loss`).
    """
    hidden = decoder_hidden(model, input_ids, attention_mask, prefix)  # (B, T, d)
    return labelled_loss(model, hidden, labels)


def row_losses(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
    prefix: PrefixKV | None = None,
) -> list[tuple[torch.Tensor, int]]:
    """:func:`batch_loss` of each row on its own: B pairs (summed loss, labelled tokens) of one forward pass.

    Inputs are (B, T); the rows run together, the LM head and the loss run row by row.
    """
    hidden = decoder_hidden(model, input_ids, attention_mask, prefix)  # (B, T, d)
    return [labelled_loss(model, hidden[row:row + 1], labels[row:row + 1]) for row in range(hidden.shape[0])]


MIN_SHARED_TOKENS = 4
"""The shortest common token prefix of a batch's rows that :class:`AdaptedLM` computes once (a shorter one
runs in every row: a separate pass would cost more than it saves)."""


def shared_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                  minimum: int = MIN_SHARED_TOKENS) -> int:
    """How many leading tokens every row of a batch shares and may run once, in front of the rows (0: none).

    ``input_ids``, ``attention_mask`` and ``labels`` are (B, T). The shared columns are real in every row
    (left padding shares nothing) and hold the same ids; they stop before any position whose hidden state
    predicts a label (a label at column ``p`` is predicted from column ``p - 1``, which stays with the
    rows) and leave every row at least one token of its own. Under ``minimum`` tokens, or with one row, 0.
    """
    B, T = input_ids.shape
    if B < 2 or T < 2:
        return 0
    same = ((input_ids == input_ids[:1]) & (attention_mask == 1)).all(0)  # (T,)
    n = int(same.long().cumprod(0).sum())
    labelled = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero()  # column i + 1 carries a label
    if len(labelled):
        n = min(n, int(labelled[0]))  # column i predicts it: the shared part ends before i
    n = min(n, int(attention_mask.sum(1).min()) - 1)
    return n if n >= minimum else 0


def prefix_of(base: PreTrainedModel, adapter, shared_ids: torch.Tensor | None = None) -> PrefixKV | None:
    """The prefix KV an adapter puts in front of every row, followed by ``shared_ids`` (S,), tokens every
    row starts with (None: without; then None for a weights method or no adapter).

    A prompt method gives ``prompt_embeds()`` (L, d): one batch-1 pass of the frozen model over the
    prompt and the shared tokens' embeddings (L + S, d). Prefix tuning's K/V are the prefix; the shared
    tokens run once after them. A weights method (lora, full, freeze) runs the shared tokens alone, with
    its adapted weights. Gradients reach the adapter through every one of these passes.
    """
    kind = of(adapter).kind if adapter is not None else None
    tokens = base.get_input_embeddings()(shared_ids) if shared_ids is not None and len(shared_ids) else None  # (S, d)
    if kind == "prompt":
        embeds = adapter.prompt_embeds()  # (L, d)
        return build_prefix(base, embeds if tokens is None else torch.cat([embeds, tokens.to(embeds.dtype)]))
    if kind == "prefix":  # prefix tuning: its parameters are the K/V (kept fp32, cast to the base's dtype)
        kv = adapter.prefix_kv()
        kv = PrefixKV([k.to(base.dtype) for k in kv.keys], [v.to(base.dtype) for v in kv.values])
        return kv if tokens is None else build_prefix(base, tokens, after=kv)
    return None if tokens is None else build_prefix(base, tokens)


def _has_dropout(model: nn.Module) -> bool:
    """Whether the base ``model`` drops anything while training (a dropout module, LoRA's included, or an attention
    dropout in its config): then rows draw their own masks, and a prefix run once would share one. (A prompt
    encoder's dropout, p-tuning's, runs once per batch either way.)"""
    config = getattr(model, "config", None)
    return (any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
            or float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0)


class AdaptedLM(nn.Module):
    """A frozen base model plus a trainable adapter; the module the training loop optimizes.

    ``forward`` builds the prefix once for the batch (with grad), runs the rows after it and
    returns ``(loss_sum, n_labelled_tokens)`` so gradient accumulation can normalise by the
    tokens of the whole accumulation window.

    ``shared_prefix``: the tokens every row of the batch starts with (:func:`shared_length`: a chat
    template's system text, a dataset's instruction) join the prefix pass, batch 1, and the rows run
    only their own suffix after it; loss and gradients equal the row-by-row pass (float rounding). Off
    while a dropout is active in training (each row would draw its own masks) and on an FSDP-sharded base.
    """

    def __init__(self, base: PreTrainedModel, adapter: nn.Module | None, shared_prefix: bool = True):
        super().__init__()
        self.base = base
        self.adapter = adapter
        self.shared_prefix = shared_prefix
        self._dropout = _has_dropout(base)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """``input_ids``, ``attention_mask``, ``labels`` (B, T) -> (summed loss, labelled tokens)."""
        S = 0
        if self.shared_prefix and not (self._dropout and self.training) and not is_sharded(self.base):
            S = shared_length(input_ids, attention_mask, labels)  # (under FSDP the embedding table is a DTensor
            # outside the base's own forward: the shared tokens stay in the rows there)
        prefix = prefix_of(self.base, self.adapter, input_ids[0, :S] if S else None)
        if S:  # the rows' own suffixes, after [prompt; shared tokens]
            input_ids, attention_mask, labels = input_ids[:, S:], attention_mask[:, S:], labels[:, S:]
        loss_sum, n = batch_loss(self.base, input_ids, attention_mask, labels, prefix)
        if prefix is not None and prefix.anchor is not None and is_sharded(self.base):
            loss_sum = loss_sum + 0.0 * prefix.anchor.float().sum()  # changes no value; see is_sharded
        return loss_sum, n


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP shards ``model``'s layers (their weights are gathered only around their forward/backward).

    FSDP gathers a layer's weights for the backward pass when the gradient reaches the layer's
    *output*. The prefix pass's K/V leave each layer through the cache instead, and the last layer's
    output is not used at all, so without help the backward would reach ``k_proj``/``v_proj`` of a
    layer whose weights are shards. A zero-weighted term on the prefix pass's final hidden states
    (``PrefixKV.anchor``) sends a gradient through every layer's output: FSDP gathers each layer
    before its prefix-pass backward, and the gradients are unchanged.
    """
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())
