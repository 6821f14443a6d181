"""What the page reads for a quick look: the datasets of a dataset_dir and a few rows of one."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from softprompt.config import ArgumentError
from softprompt.data import dataset_specs, load_rows, read_dataset_info

PREVIEW_ROWS = 3
"""Rows shown of a dataset."""
CELL_CHARS = 300
"""Characters shown of a cell."""


def dataset_choices(dataset_dir: str) -> list[str]:
    """The dataset names in ``dataset_dir/dataset_info.json`` (empty where there is none or it is bad)."""
    try:
        return sorted(read_dataset_info(dataset_dir.strip()))
    except Exception:  # noqa: BLE001 (a wrong folder while typing: the picker is just empty)
        return []


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 3] + "..."


def dataset_preview(dataset_dir: str, dataset: str | None, n: int = PREVIEW_ROWS) -> pd.DataFrame:
    """The first ``n`` rows of the first dataset named, as read from its file (DataError for a bad one)."""
    if not dataset:
        raise ArgumentError("--dataset is required: pick one from dataset_info.json in --dataset_dir")
    spec = dataset_specs(dataset, dataset_dir.strip())[0]
    rows = load_rows(spec, max_samples=n)
    return pd.DataFrame([{k: _cell(v) for k, v in row.data.items()} for row in rows])
