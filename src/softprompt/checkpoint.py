"""Adapters on disk in Hugging Face PEFT's format: adapter_config.json + adapter_model.safetensors.

Writes are atomic: files go to a temporary name and are renamed into place, and a whole
checkpoint folder is built beside its final name and renamed, so a crash never leaves a
half-written adapter behind.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from softprompt.files import atomic_write, atomic_write_text, one_line

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"


class CheckpointError(ValueError):
    """An adapter folder is missing, incomplete or not in PEFT's format."""


def write_adapter_files(
    folder: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write the two adapter files into ``folder`` (created if needed), each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": "pt", **(metadata or {})}
    atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata=meta))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write_text(folder / CONFIG_NAME, text)


MAX_CONFIG_BYTES = 1 << 20
"""adapter_config.json may be at most this big (PEFT writes about 1 KB)."""
MAX_CONFIG_DEPTH = 32
"""...and nest its objects and lists at most this deep (PEFT's nest 3 deep)."""


def shown_path(path: str | Path) -> str:
    """``path`` as messages show it: on one line, at most 300 characters, escaped (``repr``) when it holds a
    character that cannot be printed (a NUL, a newline, a lone surrogate)."""
    text = str(path)
    return one_line(text if text.isprintable() else repr(text), 300)


def adapter_folder(path: str | Path) -> Path:
    """``path`` as an existing folder; a one-line CheckpointError for a path that cannot name one (a NUL
    character, a name too long for the file system, a file, a missing or unreadable folder)."""
    shown = shown_path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"adapter folder not found: {shown}") from None
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, EACCES, ELOOP; NUL or an unencodable name
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CheckpointError(f"{shown}: not a usable adapter folder path ({one_line(why)})") from None
    if not stat.S_ISDIR(mode):
        raise CheckpointError(f"{shown} is a file, not an adapter folder")
    return Path(path)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _depth(value: Any) -> int:
    """How deep ``value``'s lists and objects nest (0 for a scalar), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """adapter_config.json of ``folder``: a JSON object with a ``peft_type``, within the size and nesting
    limits, with no NaN or Infinity. One-line CheckpointErrors."""
    folder = adapter_folder(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{shown_path(folder)}: no {CONFIG_NAME} (not a PEFT adapter folder)")
    where = shown_path(path)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file says its size is
    except OSError as exc:
        raise CheckpointError(f"{where}: unreadable ({one_line(exc.strerror or exc)})") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{where}: over the {MAX_CONFIG_BYTES}-byte limit")
    try:
        config = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise CheckpointError(f"{where}: not valid JSON (nested deeper than {MAX_CONFIG_DEPTH})") from None
    except ValueError as exc:  # a syntax error, bad UTF-8, NaN, a number of over 4300 digits
        raise CheckpointError(f"{where}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise CheckpointError(f"{where}: expected a JSON object with a 'peft_type'")
    if _depth(config) > MAX_CONFIG_DEPTH:
        raise CheckpointError(f"{where}: nested deeper than {MAX_CONFIG_DEPTH}")
    return config


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
            raise CheckpointError(f"{weights}: unreadable safetensors file ({one_line(exc)})") from None
    elif (folder / LEGACY_WEIGHTS_NAME).is_file():
        legacy = folder / LEGACY_WEIGHTS_NAME
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle, zip and runtime errors for a damaged file
            raise CheckpointError(f"{legacy}: unreadable ({one_line(exc)})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{legacy}: expected a state dict of tensors")
        metadata = {}
    else:
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}")
    # PEFT may prefix keys with the adapter name or "base_model.model."; keep the last part.
    state = {k.split(".")[-1] if k.endswith("prompt_embeddings") else k: v for k, v in state.items()}
    return config, state, metadata


def is_model_folder(path: str | Path) -> bool:
    """A transformers model folder (what full / freeze training writes), not a PEFT adapter."""
    path = Path(path)
    try:
        return path.is_dir() and (path / "config.json").is_file() and not (path / CONFIG_NAME).is_file()
    except (OSError, ValueError):  # a name too long or unreadable: not a model folder (read_adapter says why)
        return False
