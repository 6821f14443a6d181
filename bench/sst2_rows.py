"""SST-2-shaped training rows for ``bench/train_throughput.py``: the model's chat template, SST-2's one
instruction, a movie-review phrase as the input and the answer word as the label.

The rows of a batch share the chat template's system text and the instruction (~35 tokens with the
default model), which ``AdaptedLM(shared_prefix=True)`` runs once per batch. The real rows come from
``../shared/datasets/sst2_train.jsonl`` when that folder is there; otherwise synthetic rows of the same
shape (the same instruction, phrases of 3-15 review words) are written to a temporary folder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = "Classify the sentiment of this movie review as positive or negative."
WORDS = ("a", "the", "film", "movie", "story", "is", "with", "its", "and", "but", "not", "too", "funny", "dull",
         "charming", "flat", "moving", "clumsy", "smart", "tedious", "performances", "script", "characters",
         "never", "always", "quite", "surprisingly", "beautifully", "made", "acted", "long", "fresh", "tired")
MAX_ROWS = 2000
"""Rows read from sst2_train (its first ones): enough for any batch count the benchmark uses."""


def sst2_dataset(repo: Path, shared: str, tmp: str, seed: int) -> tuple[str, str, str]:
    """(dataset, dataset_dir, a description): ``sst2_train`` in ``repo / shared`` when it is registered there,
    else ``sst2_synthetic`` written under ``tmp``."""
    info = repo / shared / "dataset_info.json"
    if info.is_file() and "sst2_train" in json.loads(info.read_text()):
        return "sst2_train", str(repo / shared), f"sst2_train ({shared}/sst2_train.jsonl)"
    rng = random.Random(seed)
    folder = Path(tmp) / "sst2_synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": INSTRUCTION, "input": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))),
             "output": rng.choice(("positive", "negative"))} for _ in range(512)]
    (folder / "sst2_synthetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dataset_info.json").write_text(json.dumps({"sst2_synthetic": {"file_name": "sst2_synthetic.jsonl"}}))
    return "sst2_synthetic", str(folder), "synthetic SST-2-shaped rows (sst2_train.jsonl absent)"
