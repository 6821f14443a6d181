"""Per task, the K/V of ``[soft prompt; the chat template's fixed opening]``: what every chat request of the
task starts with, computed once, kept in an LRU bounded by bytes.

The opening is :meth:`MultiTaskPredictor.opening_ids` (the common start of two different conversations,
e.g. the system text). A request whose prompt does not start with it (its own system message, a plain
completion) starts from the soft prompt alone. ``base`` gets the opening alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from softprompt.defaults import BASE, is_base
from softprompt.kv import PrefixKV, extend_prefix
from softprompt.multitask import MultiTaskPredictor


@dataclass
class _Entry:
    soft: PrefixKV | None
    """The registry's prefix this entry was built on (a reloaded task gets a new one, and a new entry)."""
    prefix: PrefixKV


class TaskPrefixes:
    """task -> (prefix K/V, how many prompt tokens it covers), thread-safe."""

    def __init__(self, predictor: MultiTaskPredictor, max_bytes: int, opening: list[int] | None = None):
        self.predictor, self.max_bytes = predictor, max_bytes
        self.opening = predictor.opening_ids() if opening is None else opening
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "computed": 0, "evicted": 0, "soft_only": 0}

    def get(self, task: str, prompt_ids: list[int]) -> tuple[PrefixKV | None, int]:
        """The prefix a request of ``task`` starts from, and the number of its prompt ids that prefix holds
        (the request prefills the rest). Raises the registry's errors for a task that is gone or bad."""
        soft = self.predictor.registry.prefix(task)
        n = len(self.opening)
        if n == 0 or len(prompt_ids) <= n or prompt_ids[:n] != self.opening:
            self.stats["soft_only"] += 1
            return soft, 0
        key = BASE if is_base(task) else task
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.soft is soft:
                self._cache.move_to_end(key)
                self.stats["hits"] += 1
                return entry.prefix, n
        prefix = extend_prefix(self.predictor.lm.model, soft, self.opening)
        with self._lock:
            self._cache[key] = _Entry(soft, prefix)
            self._cache.move_to_end(key)
            self.stats["computed"] += 1
            total = sum(e.prefix.nbytes for e in self._cache.values())
            while total > self.max_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                total -= old.prefix.nbytes
                self.stats["evicted"] += 1
        return prefix, n
