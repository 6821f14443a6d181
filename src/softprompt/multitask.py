"""One base model, many tasks: the Python API behind ``softprompt serve``.

Each request names a task (an adapter folder, or ``base``); one batch may mix tasks. Every
task's prefix K/V comes from the registry (computed once, LRU by bytes), so requests never
recompute their prompt::

    mt = MultiTaskPredictor.load("smollm2-135m-instruct", prompts_dir="prompts")
    mt.chat("sentiment", [{"role": "user", "content": "I loved it"}])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from softprompt.data import encode_prompt
from softprompt.engine.generate import SamplingParams, generate
from softprompt.kv import PrefixKV
from softprompt.prompts import PromptRegistry
from softprompt.model import LoadedModel, load_model


class ContextLengthError(ValueError):
    """Prompt plus prefix plus max_new_tokens do not fit the model's context."""


@dataclass
class Request:
    task: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()


@dataclass
class Result:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


class TextStream:
    """Incremental detokenisation of one row, with stop strings; emits only text that is final.

    Each token decodes a small window of recent ids only (``prefix_offset``/``read_offset``, as vLLM and
    TGI do): the text of ``ids[prefix_offset:]`` minus that of ``ids[prefix_offset:read_offset]`` is new,
    unless it ends in half a character. Stop strings are looked for in the new text and the few characters
    before it, and text that could still begin one is held back, so a stream never shows a stop string.
    """

    def __init__(self, tokenizer, stop: Sequence[str], emit: Callable[[str], None] | None):
        self.tokenizer, self.stop, self.emit = tokenizer, [s for s in stop if s], emit
        self.ids: list[int] = []
        self.text, self.sent, self.stopped = "", 0, False
        self.prefix_offset = self.read_offset = 0
        self.hold = max((len(s) for s in self.stop), default=1) - 1

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> bool:
        """Add a token; True when a stop string ended the row."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # else: half of a multi-byte character
            old = len(self.text)
            self.text += after[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            for s in self.stop:
                at = self.text.find(s, max(0, old - len(s) + 1))
                if at >= 0:
                    self.text, self.stopped = self.text[:at], True
        safe = len(self.text) if self.stopped else max(self.sent, len(self.text) - self.hold)
        if self.emit is not None and safe > self.sent:
            self.emit(self.text[self.sent:safe])
            self.sent = safe
        return self.stopped

    def flush(self) -> None:
        if not self.stopped and self.read_offset < len(self.ids):  # a trailing half character, as decode shows it
            self.text += self._decode(self.ids[self.prefix_offset:])[len(self._decode(
                self.ids[self.prefix_offset:self.read_offset])):]
            self.read_offset = len(self.ids)
        if self.emit is not None and len(self.text) > self.sent:
            self.emit(self.text[self.sent:])
            self.sent = len(self.text)


class MultiTaskPredictor:
    """A frozen base model serving many soft prompts at once (mixed-task batches)."""

    def __init__(self, lm: LoadedModel, prompts_dir: str | None = None, max_prefix_cache_mb: float = 256,
                 template: str | None = None):
        self.lm, self.template = lm, template
        self.registry = PromptRegistry(lm.model, lm.name, prompts_dir, int(max_prefix_cache_mb * 2**20))
        self.eos_token_ids = lm.eos_token_ids
        self.max_context = int(getattr(lm.model.config.get_text_config(), "max_position_embeddings", 2048))

    @classmethod
    def load(cls, model_name_or_path: str, prompts_dir: str | None = None, max_prefix_cache_mb: float = 256,
             template: str | None = None, cache_dir: str | None = None,
             quantization_bit: int | None = None) -> MultiTaskPredictor:
        lm = load_model(model_name_or_path, cache_dir, quantization_bit=quantization_bit)
        return cls(lm, prompts_dir, max_prefix_cache_mb, template)

    def chat_ids(self, messages: Sequence[dict], tools: str | None = None, system: str | None = None) -> list[int]:
        """The prompt's token ids: the chat template (or ``template``) over the turns, ready to answer."""
        return encode_prompt(self.lm.tokenizer, messages, system, tools, self.template)

    def opening_ids(self) -> list[int]:
        """The longest token prefix every chat prompt starts with (the template's fixed opening, e.g. its system
        text): the common start of two different conversations; [] when the template gives none."""
        try:
            a = self.chat_ids([{"role": "user", "content": "Hi"}])
            b = self.chat_ids([{"role": "user", "content": "What is 2 + 2? Answer briefly."}])
        except Exception:  # noqa: BLE001 - a template that cannot render these has no opening to share
            return []
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return a[:n]

    def text_ids(self, text: str) -> list[int]:
        return self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check(self, request: Request) -> None:
        """Raise UnknownTaskError / TaskUnavailableError / ContextLengthError before queueing."""
        prefix = self.registry.prefix(request.task)
        total = self.overflow(len(request.prompt_ids), prefix, request.params.max_new_tokens)
        if not request.prompt_ids:
            raise ContextLengthError("the prompt is empty")
        if total is not None:
            raise ContextLengthError(
                f"prompt ({len(request.prompt_ids)} tokens) + soft prompt + max_tokens "
                f"({request.params.max_new_tokens}) = {total} exceeds the model's context of {self.max_context}"
            )

    def overflow(self, prompt_tokens: int, prefix: PrefixKV | None, max_new_tokens: int) -> int | None:
        """The context rule of every entry point: prompt + soft prompt + new tokens, when that exceeds the model's
        context (None when it fits)."""
        total = prompt_tokens + (prefix.length if prefix is not None else 0) + max_new_tokens
        return total if total > self.max_context else None

    def generate(self, prompts: Sequence[Sequence[int]], prefix: PrefixKV | Sequence[PrefixKV | None] | None,
                 params: SamplingParams | Sequence[SamplingParams], generator: torch.Generator | None = None,
                 on_token: Callable[[int, int], bool | None] | None = None) -> list[list[int]]:
        """:func:`~softprompt.engine.generate.generate` with this model's EOS ids and padding: new ids per prompt."""
        return generate(self.lm.model, prompts, prefix, params=params, eos_token_ids=self.eos_token_ids,
                        pad_token_id=self.lm.tokenizer.pad_token_id, generator=generator, on_token=on_token)

    def run(self, requests: Sequence[Request], on_text: Callable[[int, str], None] | None = None,
            cancelled: Callable[[int], bool] | None = None) -> list[Result]:
        """Generate for all requests in one batch; ``on_text(i, delta)`` streams final text and a
        row for which ``cancelled(i)`` turns true (its client went away) stops early."""
        prefixes = [self.registry.prefix(r.task) for r in requests]
        streams = [
            TextStream(self.lm.tokenizer, r.stop, (lambda d, i=i: on_text(i, d)) if on_text else None)
            for i, r in enumerate(requests)
        ]
        outputs = self.generate(
            [r.prompt_ids for r in requests], prefixes, [r.params for r in requests],
            on_token=lambda row, tok: streams[row].push(tok) or bool(cancelled and cancelled(row)),
        )
        results = []
        for r, ids, s in zip(requests, outputs, streams):
            s.flush()
            hit_length = len(ids) >= r.params.max_new_tokens and not s.stopped
            results.append(Result(s.text, ids, "length" if hit_length else "stop", len(r.prompt_ids), len(ids)))
        return results

    def chat(self, task: str, messages: Sequence[dict], params: SamplingParams | None = None) -> str:
        request = Request(task, self.chat_ids(messages), params or SamplingParams())
        self.check(request)
        return self.run([request])[0].text
