"""Classification with label words: score every label's log-likelihood after the prompt.

The soft prompt's prefix K/V is computed once for the whole run (by the caller, e.g.
:class:`~softprompt.inference.Predictor`), and so is the text every prompt starts with (the
system text, the instruction): :func:`extend_prefix` appends its K/V to the prefix once, and
each row runs only its own tokens. Each batch of prompts then runs through the model
**once**; the first label token of every label is read off the prompt's last position, and
labels of several tokens continue from the prompt's cache (repeated per label, no prompt
recompute), so a run costs one forward of each row's own tokens plus a few label tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from softprompt.data import left_pad
from softprompt.engine.forward import decoder_hidden, lm_logits
from softprompt.kv import PrefixKV, plain_cache


def label_token_ids(tokenizer, label_words: Sequence[str]) -> list[list[int]]:
    """Token ids of each label word as it is written at the start of an answer (no special tokens)."""
    ids = [list(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in label_words]
    empty = [w for w, i in zip(label_words, ids) if not i]
    if empty:
        raise ValueError(f"label word {empty[0]!r} tokenizes to nothing")
    return ids


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``prompts`` share, leaving every prompt at least one of its own."""
    if not prompts:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(max(n, 0)):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(n, 0)


@torch.no_grad()
def extend_prefix(model: PreTrainedModel, prefix: PrefixKV | None, ids: Sequence[int]) -> PrefixKV | None:
    """The prefix K/V followed by ``ids``' K/V: one batch-1 forward of ``ids`` (C tokens) after it.

    Returns a PrefixKV of length L + C (``prefix`` itself when ``ids`` is empty).
    """
    if not ids:
        return prefix
    device = next(model.parameters()).device
    row = torch.as_tensor(list(ids), device=device)[None]  # (1, C)
    _, cache, _ = decoder_hidden(model, row, torch.ones_like(row), prefix, return_cache=True)
    return PrefixKV([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers])


def _repeat_cache(cache: DynamicCache, times: int) -> DynamicCache:
    """A new cache whose row ``b * times + k`` is row ``b`` of ``cache`` (each K/V (B, nkv, S, hs))."""
    data = [(layer.keys.repeat_interleave(times, 0), layer.values.repeat_interleave(times, 0))
            for layer in cache.layers]  # (B * times, nkv, S, hs)
    return plain_cache(data)


@torch.no_grad()
def score_labels(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    prefix: PrefixKV | None = None,
    pad_token_id: int = 0,
    reduce: str = "sum",
) -> torch.Tensor:
    """Log-likelihood (B, K) of each of the K ``labels`` (token-id lists) after each of the B prompts.

    ``reduce="sum"`` adds the label tokens' log-probabilities, ``"mean"`` divides by the
    label's token count. Prompts are left-padded, so padding moves no position.
    """
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_token_id))  # (B, T)
    B, K = ids.shape[0], len(labels)
    hidden, cache, cache_mask = decoder_hidden(model, ids, mask, prefix, return_cache=True)  # (B, T, d), (B, C)
    first = F.log_softmax(lm_logits(model, hidden[:, -1]), dim=-1)  # (B, V)
    scores = first[:, [label[0] for label in labels]]  # (B, K)
    lengths = torch.tensor([len(label) for label in labels], device=device)  # (K,)
    M = int(lengths.max())
    if M > 1:
        lab = torch.zeros(K, M, dtype=torch.long, device=device)  # (K, M), right-padded
        for k, label in enumerate(labels):
            lab[k, :len(label)] = torch.as_tensor(label, device=device)
        start = cache_mask.sum(-1)  # (B,) position of the first label token: after the prefix and the prompt
        feed = lab[:, :-1].repeat(B, 1)  # (B*K, M-1): label tokens 0..M-2 predict 1..M-1
        full_mask = torch.cat([cache_mask, torch.ones(B, M - 1, dtype=cache_mask.dtype, device=device)], dim=1)
        positions = start[:, None] + torch.arange(M - 1, device=device)  # (B, M-1)
        out = model.get_decoder()(
            input_ids=feed, attention_mask=full_mask.repeat_interleave(K, 0),  # (B*K, C+M-1)
            position_ids=positions.repeat_interleave(K, 0),
            past_key_values=_repeat_cache(cache, K), use_cache=True,
        ).last_hidden_state  # (B*K, M-1, d)
        logp = F.log_softmax(lm_logits(model, out), dim=-1)  # (B*K, M-1, V)
        token_lp = logp.gather(-1, lab[:, 1:].repeat(B, 1)[..., None]).squeeze(-1)  # (B*K, M-1)
        valid = torch.arange(1, M, device=device)[None, :] < lengths[:, None]  # (K, M-1)
        scores = scores + (token_lp.view(B, K, M - 1) * valid).sum(-1)
    if reduce == "mean":
        scores = scores / lengths
    return scores


def batch_calibrate(scores: torch.Tensor) -> torch.Tensor:
    """Batch calibration (Zhou et al., 2024): normalise each row over the labels, then remove
    each label's mean log-probability over the evaluated rows. ``scores`` (N, K) -> (N, K).

    It corrects the model's prior towards some label words without a content-free input; it
    looks only at the unlabelled inputs of the run, never at their gold labels.
    """
    logp = torch.log_softmax(scores, dim=-1)  # (N, K)
    prior = torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(len(scores))))  # (K,) log mean prob
    return logp - prior


@dataclass
class ClassifyOutput:
    scores: torch.Tensor
    """(N, K) label log-likelihoods, rows in the order of the prompts."""
    predictions: list[int]
    """Index of the best label per row."""
    calibrated: list[int]
    """Index of the best label per row after :func:`batch_calibrate`."""


def classify(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    prefix: PrefixKV | None,
    pad_token_id: int,
    batch_size: int = 16,
    reduce: str = "sum",
) -> ClassifyOutput:
    """Score every prompt against every label in batches of similar length, with a progress bar.

    The tokens all prompts start with are run once, after ``prefix``, and shared by every batch.
    """
    shared = common_prefix_length(prompts)
    prefix = extend_prefix(model, prefix, prompts[0][:shared]) if prompts else prefix
    prompts = [p[shared:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # little padding per batch
    scores = torch.empty(len(prompts), len(labels))
    with tqdm(total=len(prompts), desc="classify", unit="ex") as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            scores[rows] = score_labels(model, [prompts[i] for i in rows], labels, prefix,
                                        pad_token_id, reduce).cpu()
            bar.update(len(rows))
    return ClassifyOutput(scores, scores.argmax(-1).tolist(), batch_calibrate(scores).argmax(-1).tolist())
