"""Using a trained adapter: a base model, its prompt's prefix K/V computed once, batched generation.

``Predictor`` is the Python API behind ``softprompt chat`` and ``softprompt predict``: the one-task case
of :class:`~softprompt.multitask.MultiTaskPredictor`, which it holds for prompt encoding and generation.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from softprompt.config import ArgumentError, GenerateArgs
from softprompt.data import Conversation, render_prompt
from softprompt.engine.forward import prefix_of
from softprompt.engine.generate import SamplingParams
from softprompt.files import atomic_open
from softprompt.methods import read_adapter
from softprompt.model import LoadedModel, load_model, split_model_folder
from softprompt.multitask import MultiTaskPredictor


class Predictor:
    """A frozen base model plus an optional adapter, ready to answer.

    A prompt adapter's prefix K/V is computed once here and shared by every request and row. A
    LoRA adapter goes into the base model (into a copy of it when ``shared_base``: others use
    ``lm`` too); a model folder written by full / freeze training replaces the base. Encoding and
    generation are those of a :class:`MultiTaskPredictor` over ``lm`` (``tasks``), given this prefix.
    """

    def __init__(self, lm: LoadedModel, adapter_dir: str | None = None, template: str | None = None,
                 shared_base: bool = True):
        self.lm, self.template = lm, template
        self.adapter = None
        model, adapter_dir = split_model_folder(lm.name, adapter_dir)
        if model != lm.name:
            self.lm = load_model(model, quantization_bit=lm.quantization_bit)
        elif adapter_dir:
            self.adapter, base = read_adapter(adapter_dir).module(lm.model, lm.name, copy_base=shared_base)
            self.lm = dataclasses.replace(lm, model=base)
        with torch.no_grad():
            prefix = prefix_of(self.lm.model, self.adapter)
        self.prefix = prefix.detach() if prefix is not None else None
        self.tasks = MultiTaskPredictor(self.lm, template=template)

    @classmethod
    def load(cls, model_name_or_path: str, adapter_dir: str | None = None, template: str | None = None,
             cache_dir: str | None = None, quantization_bit: int | None = None) -> Predictor:
        model_name_or_path, adapter_dir = split_model_folder(model_name_or_path, adapter_dir)
        lm = load_model(model_name_or_path, cache_dir, quantization_bit=quantization_bit)
        return cls(lm, adapter_dir, template, shared_base=False)

    def prompt_ids(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None) -> list[int]:
        return self.tasks.chat_ids(messages, tools, system)

    def check_context(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      origins: Sequence[str] | None = None) -> None:
        """The server's rule (:meth:`MultiTaskPredictor.check`) before anything is generated: each prompt, the
        soft prompt and ``max_new_tokens`` together fit the model's context; else an ArgumentError naming the
        longest prompt (by its ``origins`` entry when given)."""
        soft = self.prefix.length if self.prefix is not None else 0
        longest = max(range(len(prompts)), key=lambda i: len(prompts[i]), default=None)
        n = len(prompts[longest]) if longest is not None else 0
        if self.tasks.overflow(n, self.prefix, max_new_tokens) is not None:
            where = f"{origins[longest]}: " if origins and longest is not None else ""
            raise ArgumentError(f"{where}prompt ({n} tokens) + soft prompt ({soft}) + --max_new_tokens "
                                f"({max_new_tokens}) = {n + soft + max_new_tokens} exceeds the model's context of "
                                f"{self.tasks.max_context} tokens")

    def generate_ids(self, prompts: Sequence[Sequence[int]], gen: GenerateArgs) -> list[list[int]]:
        """New token ids for each prompt, generated together in one batch; sampled rows share one
        generator seeded with ``gen.seed``."""
        self.check_context(prompts, gen.max_new_tokens)
        params = SamplingParams(gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k)
        return self.tasks.generate(prompts, self.prefix, params, torch.Generator().manual_seed(gen.seed))

    def chat(self, messages: Sequence[dict], gen: GenerateArgs, system: str | None = None) -> str:
        ids = self.generate_ids([self.prompt_ids(messages, system)], gen)[0]
        return self.lm.tokenizer.decode(ids, skip_special_tokens=True)

    def predict(self, conversations: Sequence[Conversation], gen: GenerateArgs, batch_size: int,
                out_path: str | Path) -> list[dict]:
        """Answer each conversation's last prompt; write ``generated_predictions.jsonl`` rows
        ``{"prompt", "predict", "label"}`` where ``prompt`` is the exact text fed to the model."""
        rows: list[dict] = []
        tok = self.lm.tokenizer
        asks = [c.prompt_and_answer() for c in conversations]
        prompts = [self.prompt_ids(msgs, c.system, c.tools) for c, (msgs, _) in zip(conversations, asks)]
        self.check_context(prompts, gen.max_new_tokens, [c.origin for c in conversations])
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(out_path) as f, tqdm(total=len(conversations), desc="predict", unit="ex") as bar:
            for start in range(0, len(conversations), batch_size):
                chunk = slice(start, start + batch_size)
                for c, (msgs, label), ids in zip(conversations[chunk], asks[chunk],
                                                 self.generate_ids(prompts[chunk], gen)):
                    row = {
                        "prompt": render_prompt(tok, msgs, c.system, c.tools, self.template),
                        "predict": tok.decode(ids, skip_special_tokens=True),
                        "label": label,
                    }
                    rows.append(row)
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                bar.update(len(prompts[chunk]))
        return rows
