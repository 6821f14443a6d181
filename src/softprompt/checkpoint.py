"""Adapters on disk in Hugging Face PEFT's format: adapter_config.json + adapter_model.safetensors.

Writes are atomic: files go to a temporary name and are renamed into place, and a whole
checkpoint folder is built beside its final name and renamed, so a crash never leaves a
half-written adapter behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"


class CheckpointError(ValueError):
    """An adapter folder is missing, incomplete or not in PEFT's format."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_adapter_files(
    folder: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write the two adapter files into ``folder`` (created if needed), each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": "pt", **(metadata or {})}
    _atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata=meta))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(text))


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise CheckpointError(f"adapter folder not found: {folder}")
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} (not a PEFT adapter folder)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({_squeeze(exc)})") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise CheckpointError(f"{path}: expected a JSON object with a 'peft_type'")
    return config


def _squeeze(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    """Read an adapter folder: (config, tensors, safetensors metadata). One-line errors."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        try:
            state = load_file(str(weights))
            with safe_open(str(weights), "pt") as f:
                metadata = dict(f.metadata() or {})
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{weights}: unreadable safetensors file ({_squeeze(exc)})") from None
    elif (folder / LEGACY_WEIGHTS_NAME).is_file():
        legacy = folder / LEGACY_WEIGHTS_NAME
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle, zip and runtime errors for a damaged file
            raise CheckpointError(f"{legacy}: unreadable ({_squeeze(exc)})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{legacy}: expected a state dict of tensors")
        metadata = {}
    else:
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}")
    # PEFT may prefix keys with the adapter name or "base_model.model."; keep the last part.
    state = {k.split(".")[-1] if k.endswith("prompt_embeddings") else k: v for k, v in state.items()}
    return config, state, metadata


def save_model_folder(folder: str | Path, write) -> Path:
    """A whole model folder (full / freeze fine-tuning): ``write(tmp)`` fills a temporary folder
    beside ``folder``, which is then renamed to ``folder``, or, when ``folder`` already exists
    (the run's output_dir, holding its logs), whose files are each renamed into it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if not folder.exists():
            os.replace(tmp, folder)
            return folder
        for item in sorted(tmp.iterdir()):
            os.replace(item, folder / item.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def is_model_folder(path: str | Path) -> bool:
    """A transformers model folder (what full / freeze training writes), not a PEFT adapter."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / CONFIG_NAME).is_file()
