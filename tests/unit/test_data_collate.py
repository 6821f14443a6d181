"""Batching: right padding for training, left padding for generation."""

from __future__ import annotations

import pytest
import torch

from softprompt.data import collate, left_pad


def test_collate_right_pads_with_masked_labels():
    batch = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    out = collate(batch, pad_token_id=0)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert all(t.shape == (2, 3) and t.dtype == torch.long for t in out.values())
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_collate_checks_lengths():
    with pytest.raises(ValueError, match="3 input_ids but 2 labels"):
        collate([{"input_ids": [1, 2, 3], "labels": [1, 2]}], 0)


def test_left_pad_for_generation():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.shape == mask.shape == (2, 3)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
