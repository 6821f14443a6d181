"""--group_by_prefix (PrefixGroupedSampler) and --shared_prefix in the training loop: batches whose rows share
their leading tokens, deterministic under --seed, and the same training losses with the shared pass on or off."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from transformers import AutoTokenizer

from softprompt.config import DataArgs, TrainArgs
from softprompt.data import PrefixGroupedSampler, collate, load_and_tokenize
from softprompt.engine.forward import shared_length
from softprompt.train.loop import _loaders
from tests.helpers import train_flags

INSTRUCTIONS = [[5, 6, 7, 8, 9, 10], [5, 6, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25]]


def rows(n: int = 60, seed: int = 0) -> list[dict]:
    """Rows of three instructions (two share their first 2 tokens), each with its own text and answer."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = INSTRUCTIONS[i % 3] + [rng.randrange(30, 90) for _ in range(rng.randint(2, 6))] + [99, 100]
        out.append({"input_ids": ids, "labels": [-100] * (len(ids) - 2) + [99, 100]})
    return out


def test_every_row_once_per_epoch_the_same_under_a_seed():
    sampler = PrefixGroupedSampler([r["input_ids"] for r in rows(61)], batch_size=4, seed=3, window=4)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(61))
    assert first != second  # each epoch draws its own order
    again = PrefixGroupedSampler([r["input_ids"] for r in rows(61)], batch_size=4, seed=3, window=4)
    assert list(again) == first and list(again) == second
    other = PrefixGroupedSampler([r["input_ids"] for r in rows(61)], batch_size=4, seed=4, window=4)
    assert list(other) != first
    batches = sampler.batches(0)
    assert [len(b) for b in batches] == [4] * 15 + [1]  # the short batch stays last: no batch straddles groups
    sampler.set_epoch(1)
    assert list(sampler) == second


def test_batches_share_more_leading_tokens_than_a_shuffle():
    data = rows(96)
    sampler = PrefixGroupedSampler([r["input_ids"] for r in data], batch_size=4, seed=0)
    shuffled = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()

    def mean_shared(order: list[int]) -> float:
        batches = [collate([data[i] for i in order[j:j + 4]], 0) for j in range(0, len(order), 4)]
        return sum(shared_length(b["input_ids"], b["attention_mask"], b["labels"]) for b in batches) / len(batches)

    grouped = mean_shared(list(sampler))
    assert grouped == 6  # every batch holds one instruction
    assert mean_shared(shuffled) < 2


def test_the_loop_batches_follow_the_sampler():
    data = rows(40)
    args = TrainArgs(per_device_train_batch_size=4, group_by_prefix=True, seed=7)
    loader, _ = _loaders(data, [], args, pad_id=0)
    expected = PrefixGroupedSampler([r["input_ids"] for r in data], 4, 7).batches(0)
    for batch, want in zip(loader, expected):
        torch.testing.assert_close(batch["input_ids"], collate([data[i] for i in want], 0)["input_ids"])


def _toy(folder: Path) -> Path:
    """Rows that share the chat template and one instruction: --shared_prefix has something to share."""
    folder.mkdir(parents=True)
    phrases = ["a fine film", "dull and long", "the best cast", "too slow", "warm and funny", "flat", "moving", "odd"]
    data = [{"instruction": "Is this review positive or negative?", "input": p, "output": ["positive", "negative"][i % 2]}
            for i, p in enumerate(phrases)]
    (folder / "toy.json").write_text(json.dumps(data))
    (folder / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": "toy.json"}}))
    return folder


@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
def test_training_losses_equal_with_the_shared_pass_on_and_off(tiny_dir, tmp_path, method):
    data = _toy(tmp_path / "data")
    examples, _ = load_and_tokenize(DataArgs(dataset="toy", dataset_dir=str(data)), AutoTokenizer.from_pretrained(tiny_dir))
    batch = collate(examples[:4], 0)
    assert shared_length(batch["input_ids"], batch["attention_mask"], batch["labels"]) >= 20  # template + instruction
    logs = {}
    for on in ("true", "false"):
        out = tmp_path / f"out-{on}"
        assert main(train_flags(tiny_dir, data, out, finetuning_type=method, max_steps=3, shared_prefix=on,
                                group_by_prefix="true", gradient_accumulation_steps=2)) == 0
        logs[on] = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert len(logs["true"]) == 3
    for a, b in zip(logs["true"], logs["false"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
