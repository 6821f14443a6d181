"""The prompts a :class:`~softprompt.multitask.MultiTaskPredictor` serves: task name -> adapter folder
-> prefix K/V, computed once, kept in an LRU by bytes (``PromptRegistry``).

This reads and polls adapter folders, so it sits above the engine (which knows token ids and
tensors only) and next to ``multitask.py``, its one user.

Every subfolder of ``prompts_dir`` holding an ``adapter_config.json`` is a task named after it;
``base`` (or ``none``: :data:`~softprompt.defaults.BASE_ALIASES`) is the bare model. Folders are
looked up on each request, so an adapter dropped in is served at once and a removed one is gone.
A folder whose files change is reloaded; one that changes while it is being read is refused
rather than served half-read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from softprompt.checkpoint import CONFIG_NAME, CheckpointError
from softprompt.defaults import BASE, BASE_ALIASES, is_base
from softprompt.engine.forward import prefix_of
from softprompt.files import one_line
from softprompt.kv import PrefixKV
from softprompt.methods import REGISTRY, read_adapter


class UnknownTaskError(KeyError):
    """No task of that name."""


class TaskUnavailableError(RuntimeError):
    """The task exists but cannot be served (unsupported method, changing files, bad files)."""


@dataclass
class _Entry:
    prefix: PrefixKV | None
    signature: tuple
    nbytes: int


def _signature(folder: Path) -> tuple:
    """(name, size, mtime_ns) of the folder's files: changes when any file is rewritten (empty for a path that
    names no readable folder: reading it then says why)."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    except (OSError, ValueError):
        return ()


def _has_config(folder: Path) -> bool:
    """Whether ``folder`` holds an adapter_config.json (False when it cannot be looked at)."""
    try:
        return (folder / CONFIG_NAME).is_file()
    except (OSError, ValueError):
        return False


MAX_NAME_BYTES = 255
"""The longest file name (in bytes) a file system takes: no task name can be longer."""


def is_task_name(name: str) -> bool:
    """Whether ``name`` can name a task folder: one path component of UTF-8 text (so that an answer can echo
    it), no NUL, at most 255 bytes."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES
    except UnicodeEncodeError:  # a lone surrogate: a JSON "\ud800", or a file name that is not UTF-8
        return False


class PromptRegistry:
    """Thread-safe map task -> prefix K/V over one frozen base model."""

    def __init__(self, base: PreTrainedModel, base_name: str, prompts_dir: str | Path | None = None,
                 max_cache_bytes: int = 256 * 2**20):
        self.base, self.base_name = base, base_name
        self.prompts_dir = Path(prompts_dir) if prompts_dir else None
        self.max_cache_bytes = max_cache_bytes
        self._registered: dict[str, Path] = {}
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = {"hits": 0, "computed": 0, "evicted": 0}

    def folder(self, name: str) -> Path | None:
        """The adapter folder of a task (None for ``base``); UnknownTaskError if there is none."""
        if is_base(name):
            return None
        if name in self._registered:
            return self._registered[name]
        if self.prompts_dir is not None and is_task_name(name) and _has_config(self.prompts_dir / name):
            return self.prompts_dir / name
        raise UnknownTaskError(name)

    def names(self) -> list[str]:
        found = set(self._registered)
        if self.prompts_dir is not None:
            try:
                found |= {p.name for p in self.prompts_dir.iterdir() if is_task_name(p.name) and _has_config(p)}
            except OSError:  # the folder went away or cannot be read: the registered tasks only
                pass
        return [BASE] + sorted(found - set(BASE_ALIASES))

    def register(self, name: str, folder: str | Path) -> None:
        """Serve ``folder`` as task ``name``; it is loaded now so a bad adapter (or a path that cannot name
        one) fails here, with a TaskUnavailableError."""
        if not is_task_name(name) or is_base(name):
            raise TaskUnavailableError(f"invalid task name {one_line(repr(name), 100)}")
        with self._lock:
            previous = self._registered.get(name)
            self._registered[name] = Path(folder)
            self._cache.pop(name, None)
            try:
                self.prefix(name)
            except Exception:
                if previous is None:
                    self._registered.pop(name, None)
                else:
                    self._registered[name] = previous
                raise

    def prefix(self, name: str) -> PrefixKV | None:
        """The task's prefix K/V: from the LRU, or computed once (and re-computed if its files changed)."""
        folder = self.folder(name)
        if folder is None:
            return None
        signature = _signature(folder)
        with self._lock:
            entry = self._cache.get(name)
            if entry is not None and entry.signature == signature:
                self._cache.move_to_end(name)
                self.stats["hits"] += 1
                return entry.prefix
        prefix = self._compute(name, folder, signature)
        with self._lock:
            self._cache[name] = _Entry(prefix, signature, prefix.nbytes if prefix is not None else 0)
            self._cache.move_to_end(name)
            self.stats["computed"] += 1
            self._evict()
        return prefix

    def _compute(self, name: str, folder: Path, signature: tuple) -> PrefixKV | None:
        try:
            files = read_adapter(folder)
            if not files.spec.served:
                served = ", ".join(s.peft_type for s in REGISTRY.values() if s.served and s.peft_type)
                raise CheckpointError(f"{folder}: a {files.peft_type} adapter changes the base model's weights, "
                                      "so it cannot share a batch with other tasks; the server serves prompt "
                                      f"adapters ({served}). Use `softprompt chat` or `predict` for it")
            adapter, _ = files.module(self.base, self.base_name)
        except CheckpointError as exc:
            raise TaskUnavailableError(f"task {name!r}: {exc}") from None
        if _signature(folder) != signature:
            raise TaskUnavailableError(f"task {name!r}: its files changed while being read; retry")
        with torch.no_grad():
            prefix = prefix_of(self.base, adapter)
        return prefix.detach() if prefix is not None else None

    def _evict(self) -> None:
        total = sum(e.nbytes for e in self._cache.values())
        while total > self.max_cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            total -= old.nbytes
            self.stats["evicted"] += 1

    @property
    def cached_bytes(self) -> int:
        return sum(e.nbytes for e in self._cache.values())
