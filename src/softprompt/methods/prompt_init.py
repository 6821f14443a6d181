"""Where a soft prompt starts: ``--prompt_tuning_init`` random, sample_vocab, text, label, or a user's hook.

``label`` follows Lester et al. (2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
class-label initialisation): one virtual token per label word, the *mean* of the embeddings of the
word's tokens when it has several, then (our addition) the instruction's tokens, then embeddings of
vocabulary tokens drawn at random (their "sampled vocab" fallback) to fill the length. ``text``
without a text, and ``label`` for its instruction, take the dataset's most common instruction.
"""

from __future__ import annotations

import importlib
import logging

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.config import DEFAULT_NUM_VIRTUAL_TOKENS, ArgumentError, MethodArgs
from softprompt.files import one_line
from softprompt.methods.spec import TaskData

log = logging.getLogger("softprompt")
MAX_LABELS = 20
"""The most distinct answers the training data may have for them to be taken as the label words."""
MAX_LABEL_WORDS = 3
"""The most words an answer may have for it to be taken as a label word."""


def initial_prompt(args: MethodArgs, embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
                   generator: torch.Generator, data: TaskData | None = None) -> torch.Tensor:
    """The starting prompt, ``(L, d)``, from the vocabulary ``embeddings`` (V, d); ``data``: the training rows,
    read for the label words and the instruction when the arguments do not give them."""
    init = args.init
    emb = embeddings.detach().float()
    V, d = emb.shape
    if init == "text":
        text_ids = _ids(tokenizer, instruction(args, data, required=True), "the init text")
        L = args.num_virtual_tokens or len(text_ids)
        return emb[torch.tensor((text_ids * (L // len(text_ids) + 1))[:L])].clone()  # tiled or cut to length
    L = args.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS
    if init == "random":  # normal, scaled to the vocabulary embeddings' statistics
        return torch.randn(L, d, generator=generator) * emb.std() + emb.mean()
    if init == "sample_vocab":
        return emb[torch.randint(0, V, (L,), generator=generator)].clone()
    if init == "label":
        return _label_prompt(args, L, emb, tokenizer, generator, data)
    return _init_from_hook(init, L, emb, tokenizer)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, what: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ArgumentError(f"--prompt_tuning_init_text: {what} {one_line(text, 60)!r} tokenizes to nothing; "
                            "give some text")
    return ids


def _label_prompt(args: MethodArgs, L: int, emb: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
                  generator: torch.Generator, data: TaskData | None) -> torch.Tensor:
    """Label words (one row each, the mean of its tokens), the instruction's tokens, sampled vocabulary: (L, d)."""
    words = label_words(args, data)
    rows = [emb[torch.tensor(_ids(tokenizer, w, "label word"))].mean(0) for w in words]  # each (d,)
    if len(rows) > L:
        log.warning("--prompt_tuning_init label: %d label words, %d virtual tokens: the first %d start the prompt",
                    len(rows), L, L)
    text = instruction(args, data, required=False)
    if text is not None:
        rows += list(emb[torch.tensor(_ids(tokenizer, text, "the instruction"))])
    rows = rows[:L]
    fill = emb[torch.randint(0, emb.shape[0], (L - len(rows),), generator=generator)]  # (L - n, d)
    return torch.cat([torch.stack(rows), fill]) if rows else fill.clone()


def label_words(args: MethodArgs, data: TaskData | None) -> list[str]:
    """--label_words, or else the training data's distinct answers (sorted) when they look like a label set."""
    if args.labels():
        return args.labels()
    answers = data.answers() if data is not None else None
    if not answers:
        raise ArgumentError("--prompt_tuning_init label needs the task's label words: give --label_words "
                            "(e.g. positive,negative)" + ("" if data is None else "; the training data has no answers"))
    long = [a for a in answers if len(a.split()) > MAX_LABEL_WORDS]
    if len(answers) > MAX_LABELS or long:
        why = (f"{len(answers)} distinct answers" if len(answers) > MAX_LABELS
               else f"answers of more than {MAX_LABEL_WORDS} words (e.g. {one_line(long[0], 40)!r})")
        raise ArgumentError(f"--prompt_tuning_init label: the training data has {why}, not a set of label words; "
                            "give --label_words")
    words = sorted(answers)
    log.info("--prompt_tuning_init label: the label words are the training data's %d answers: %s", len(words),
             ", ".join(words))
    return words


def instruction(args: MethodArgs, data: TaskData | None, required: bool) -> str | None:
    """--prompt_tuning_init_text, or else the training rows' most common instruction (logged); None (or, when
    ``required``, an ArgumentError) when the rows share none."""
    if args.prompt_tuning_init_text is not None:
        return args.prompt_tuning_init_text
    counts = data.instructions() if data is not None else None
    top = counts.most_common(1)[0] if counts else None
    shared = top is not None and (top[1] > 1 or len(data.conversations) == 1)
    if not shared:
        if required:
            raise ArgumentError("--prompt_tuning_init text needs --prompt_tuning_init_text" +
                                ("" if data is None else ": the training rows share no instruction (the first line "
                                                         "of the prompt) to take instead"))
        log.info("--prompt_tuning_init %s: the training rows share no instruction; the prompt goes on with sampled "
                 "vocabulary", args.init)
        return None
    log.info("--prompt_tuning_init %s: took the dataset's most common instruction (%d of %d rows): %r", args.init,
             top[1], len(data.conversations), one_line(top[0], 200))
    return top[0]


def _init_from_hook(spec: str, L: int, emb: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The user's ``module:function`` called as fn(L, emb, tokenizer); whatever it raises (on import, a wrong
    signature, its own error) or returns that is not an (L, d) tensor is an ArgumentError naming it."""
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except Exception as exc:  # ImportError, AttributeError, and whatever the module raises as it runs
        raise ArgumentError(f"--prompt_tuning_init {spec}: cannot load it ({type(exc).__name__}: "
                            f"{one_line(exc)})") from None
    try:
        result = fn(L, emb, tokenizer)
    except Exception as exc:  # the hook's own code: a TypeError for a wrong signature, or anything it raises
        raise ArgumentError(f"--prompt_tuning_init {spec}: calling it as {fn_name}(num_virtual_tokens, "
                            f"embedding_weight, tokenizer) failed ({type(exc).__name__}: {one_line(exc)})") from None
    try:
        out = torch.as_tensor(result, dtype=torch.float32)
    except Exception:  # torch raises TypeError, ValueError or RuntimeError for what it cannot take
        out = None
    if out is None or tuple(out.shape) != (L, emb.shape[1]):
        got = f"shape {tuple(out.shape)}" if out is not None else f"a {type(result).__name__}"
        raise ArgumentError(f"--prompt_tuning_init {spec}: returned {got}, expected ({L}, {emb.shape[1]})")
    if not torch.isfinite(out).all():
        raise ArgumentError(f"--prompt_tuning_init {spec}: returned values that are not finite (nan or inf)")
    return out
