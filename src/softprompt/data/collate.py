"""Batching token-id lists into padded tensors: right padding for training, left for generation."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .templates import IGNORE_INDEX


def collate(batch: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of ``{"input_ids", "labels"}`` examples to the longest one.

    Returns ``input_ids`` (B, T) long, padded with ``pad_token_id``; ``attention_mask``
    (B, T) long, 1 on real tokens and 0 on padding; ``labels`` (B, T) long, -100 on padding.
    """
    if not batch:
        raise ValueError("collate needs at least one example")
    width = max(len(ex["input_ids"]) for ex in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, ex in enumerate(batch):
        n = len(ex["input_ids"])
        if len(ex["labels"]) != n:
            raise ValueError(f"example {row}: {n} input_ids but {len(ex['labels'])} labels")
        input_ids[row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.as_tensor(ex["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def left_pad(seqs: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for generation, so every row's last real token sits at column T-1.

    Returns ``input_ids`` (B, T) long, padded with ``pad_token_id`` on the left, and
    ``attention_mask`` (B, T) long, 0 on the padding.
    """
    if not seqs:
        raise ValueError("left_pad needs at least one sequence")
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for row, seq in enumerate(seqs):
        if len(seq):
            input_ids[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask
