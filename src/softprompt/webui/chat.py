"""The Chat tab's engine: base models loaded once and cached, one :class:`~softprompt.inference.Predictor` per
adapter over the cached base, and answers streamed as they are generated.

The same question goes to the base model alone and to each adapter; the answers stream side by side.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING

from softprompt.config import ArgumentError, GenerateArgs

if TYPE_CHECKING:  # the engine is imported on the first question, not when the page starts
    from softprompt.inference import Predictor
    from softprompt.model import LoadedModel

MAX_COLUMNS = 4
"""Answers shown side by side: the base model and up to three adapters."""
STREAM_INTERVAL_S = 0.1
"""How often the streamed text is handed to the page."""


@dataclass
class Column:
    """One answer being written: who answers and the text so far."""

    name: str
    text: str = ""
    done: bool = False


class ChatEngine:
    """Cached base models and predictors; thread-safe (one generation at a time per engine)."""

    def __init__(self) -> None:
        self._bases: dict[tuple[str, str | None], LoadedModel] = {}
        self._predictors: dict[tuple[str, str | None, str | None, str | None], Predictor] = {}
        self._lock = threading.Lock()

    def base(self, model: str, cache_dir: str | None = None) -> LoadedModel:
        from softprompt.model import load_model

        key = (model, cache_dir)
        if key not in self._bases:
            self._bases[key] = load_model(model, cache_dir)
        return self._bases[key]

    def predictor(self, model: str, adapter: str | None, template: str | None) -> Predictor:
        """The base ``model`` with ``adapter`` (None: none), built once and kept."""
        from softprompt.inference import Predictor

        key = (model, None, adapter, template)
        if key not in self._predictors:
            self._predictors[key] = Predictor(self.base(model), adapter, template, shared_base=True)
        return self._predictors[key]

    def answer(self, model: str, adapters: Sequence[str], query: str, gen: GenerateArgs,
               system: str | None = None, template: str | None = None) -> Iterator[list[Column]]:
        """Stream the answers of the base model and of each adapter to ``query``: yields every column's text so far,
        until all are done. An ArgumentError for a missing query, too many adapters, or a context overflow."""
        if not query.strip():
            raise ArgumentError("type a message first")
        if len(adapters) > MAX_COLUMNS - 1:
            raise ArgumentError(f"at most {MAX_COLUMNS - 1} adapters side by side, got {len(adapters)}")
        with self._lock:
            predictors = [self.predictor(model, a, template) for a in (None, *adapters)]
            columns = [Column("base" if a is None else a) for a in (None, *adapters)]
            prompts = [p.prompt_ids([{"role": "user", "content": query}], system) for p in predictors]
            for p, ids in zip(predictors, prompts):
                p.check_context([ids], gen.max_new_tokens)
            yield from _stream(predictors, prompts, columns, gen)


def _stream(predictors: list[Predictor], prompts: list[list[int]], columns: list[Column],
            gen: GenerateArgs) -> Iterator[list[Column]]:
    """Generate the columns one after another in a thread; yield them every STREAM_INTERVAL_S."""
    updates: queue.Queue = queue.Queue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            for p, ids, col in zip(predictors, prompts, columns):
                _generate_into(p, ids, col, gen)
        except BaseException as exc:  # noqa: BLE001 (handed to the page's thread)
            failure.append(exc)
        finally:
            updates.put(None)

    threading.Thread(target=work, daemon=True, name="webui-chat").start()
    while True:
        try:
            finished = updates.get(timeout=STREAM_INTERVAL_S) is None
        except queue.Empty:
            finished = False
        if failure:
            raise failure[0]
        yield columns
        if finished:
            return


def _generate_into(p: Predictor, ids: list[int], column: Column, gen: GenerateArgs) -> None:
    """Generate for one prompt, decoding the text so far into ``column`` at each new token."""
    import torch

    from softprompt.engine.generate import SamplingParams

    new: list[int] = []
    tok = p.lm.tokenizer

    def on_token(row: int, token: int) -> None:
        new.append(token)
        column.text = tok.decode(new, skip_special_tokens=True)

    params = SamplingParams(gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k)
    out = p.tasks.generate([ids], p.prefix, params, torch.Generator().manual_seed(gen.seed), on_token=on_token)
    column.text = tok.decode(out[0], skip_special_tokens=True)
    column.done = True
