"""Datasets -> tokenized training examples: loading, truncation, the validation split.

Truncation follows LLaMA-Factory: each (prompt, answer) turn shares what is left of
``cutoff_len`` in proportion to their lengths, the answer keeping at least its share
(:func:`infer_seqlen`); turns that no longer fit are dropped. With the old names
``max_source_length`` / ``max_target_length`` each turn's prompt and answer are first cut to
those, and the budget is their sum (``cutoff_len`` when only one is given).

A prompt is cut in the **middle** (its first and last tokens kept), not at the end as in
LLaMA-Factory: the start holds the system text and the instruction, the end holds the
template's generation prompt (``<|im_start|>assistant\\n``), which the answer must follow as
it will at inference. An answer is cut at the end. An example left without any labelled
token is skipped, counted, and reported in one warning line.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Sequence

from tqdm import tqdm

from ..config import DataArgs
from .errors import DataError
from .formats import Conversation, to_conversation
from .registry import dataset_specs, load_rows
from .templates import Pair, assemble, encode_turns_batch, resolve_template

logger = logging.getLogger("softprompt")
Example = dict[str, list[int]]
"""``{"input_ids": [...], "labels": [...]}``, both of length T; labels -100 where no loss."""
_CHUNK = 256


def load_conversations(data_args: DataArgs, seed: int = 42, require_response: bool = True) -> list[Conversation]:
    """Every dataset of ``--dataset`` as Conversations, in order, each capped at ``max_samples``."""
    conversations: list[Conversation] = []
    for spec in dataset_specs(data_args.dataset, data_args.dataset_dir):
        rows = load_rows(spec, data_args.max_samples, seed)
        conversations += [to_conversation(row, spec, require_response) for row in rows]
    return conversations


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """New (source, target) lengths that fit ``cutoff_len`` (LLaMA-Factory's rule).

    A short target (under half the budget) is kept whole; else a short source is kept whole;
    else both shrink in proportion to their lengths.
    """
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * target_len / (source_len + target_len))
    new_target = min(max_target, target_len)
    new_source = min(max(cutoff_len - new_target, 0), source_len)
    return new_source, new_target


def truncate_prompt(ids: Sequence[int], max_len: int) -> list[int]:
    """``ids`` cut to ``max_len`` by removing the middle: the first half and the last half kept.

    Keeps the system text / instruction at the start and the generation prompt at the end.
    """
    ids = list(ids)
    if len(ids) <= max_len:
        return ids
    head = max_len // 2
    return ids[:head] + ids[len(ids) - (max_len - head):]


def fit_pairs(
    pairs: Sequence[Pair], budget: int, max_source: int | None = None, max_target: int | None = None
) -> tuple[list[Pair], bool]:
    """The turns cut to fit ``budget`` tokens in all, and whether anything was cut."""
    out: list[Pair] = []
    total, cut = 0, False
    for source, target in pairs:
        if max_source is not None and len(source) > max_source:
            source, cut = truncate_prompt(source, max_source), True
        if max_target is not None and len(target) > max_target:
            target, cut = target[:max_target], True
        if budget - total <= 0:
            return out, True  # no room left: drop this turn and the rest
        n_source, n_target = infer_seqlen(len(source), len(target), budget - total)
        if n_target == 0 and len(target) > 0:
            return out, True  # no room for this turn's answer
        cut = cut or n_source < len(source) or n_target < len(target)
        out.append((truncate_prompt(source, n_source), target[:n_target]))
        total += n_source + n_target
    return out, cut


def _limits(data_args: DataArgs) -> tuple[int, int | None, int | None]:
    """(total budget, per-turn prompt cap, per-turn answer cap) from cutoff_len or the old names."""
    src, tgt = data_args.max_source_length, data_args.max_target_length
    if src is not None and tgt is not None:
        return src + tgt, src, tgt
    return data_args.cutoff_len, src, tgt


def tokenize_dataset(conversations: Sequence[Conversation], tokenizer: Any, data_args: DataArgs) -> list[Example]:
    """Encode and truncate every conversation into ``{"input_ids", "labels"}`` (lists of length T).

    Examples with no labelled token left are skipped and counted in one warning; a DataError
    if none remain.
    """
    tpl = resolve_template(tokenizer, data_args.template)
    budget, max_source, max_target = _limits(data_args)
    examples: list[Example] = []
    n_empty = n_cut_away = n_truncated = 0
    with tqdm(total=len(conversations), desc="Tokenizing", unit="ex", disable=len(conversations) <= 1000) as bar:
        for start in range(0, len(conversations), _CHUNK):
            chunk = conversations[start: start + _CHUNK]
            for pairs in encode_turns_batch(tokenizer, chunk, tpl):
                fitted, cut = fit_pairs(pairs, budget, max_source, max_target)
                input_ids, labels = assemble(fitted, data_args.train_on_prompt)
                if not (any(answer for _, answer in fitted) or (data_args.train_on_prompt and input_ids)):
                    if any(answer for _, answer in pairs):
                        n_cut_away += 1
                    else:
                        n_empty += 1
                    continue
                n_truncated += cut
                examples.append({"input_ids": input_ids, "labels": labels})
            bar.update(len(chunk))
    _report(len(conversations), len(examples), n_empty, n_cut_away, n_truncated, budget)
    return examples


def _report(total: int, kept: int, n_empty: int, n_cut_away: int, n_truncated: int, budget: int) -> None:
    if n_truncated:
        logger.warning("%d of %d examples were longer than %d tokens and were truncated "
                       "(prompts lose their middle, answers their end)", n_truncated, total, budget)
    if n_empty or n_cut_away:
        reasons = []
        if n_empty:
            reasons.append(f"{n_empty} have an empty answer and the template adds no end-of-turn token")
        if n_cut_away:
            reasons.append(f"{n_cut_away} lost every answer token to truncation at {budget} tokens")
        logger.warning("skipped %d of %d examples with no labelled token: %s",
                       n_empty + n_cut_away, total, "; ".join(reasons))
    if not kept:
        raise DataError(f"no example has a labelled token left (of {total}) within {budget} tokens; check the "
                        "answers, --cutoff_len (or --max_source_length/--max_target_length) and --template")


def split_dataset(examples: Sequence[Any], val_size: float, seed: int = 42) -> tuple[list[Any], list[Any]]:
    """(train, validation): ``val_size`` is a fraction in (0, 1) or a count >= 1; 0 means no split.

    The validation rows are drawn by a shuffle seeded with ``seed``; both parts keep the
    original order.
    """
    n = len(examples)
    if not val_size:
        return list(examples), []
    if val_size < 0 or (val_size >= 1 and val_size != int(val_size)):
        raise DataError(f"--val_size must be a fraction in (0, 1) or a whole number of examples, got {val_size}")
    n_val = math.ceil(val_size * n) if val_size < 1 else int(val_size)
    if n_val >= n:
        raise DataError(f"--val_size {val_size} takes {n_val} of the {n} examples and leaves none for training")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    return train, [examples[i] for i in sorted(val_idx)]


def load_and_tokenize(data_args: DataArgs, tokenizer: Any, seed: int = 42) -> tuple[list[Example], list[Example]]:
    """Load ``--dataset``, tokenize with the chat template, truncate, split: (train, val)."""
    resolve_template(tokenizer, data_args.template)  # a template error before reading any data
    conversations = load_conversations(data_args, seed)
    examples = tokenize_dataset(conversations, tokenizer, data_args)
    train, val = split_dataset(examples, data_args.val_size, seed)
    logger.info("dataset %s: %d training and %d validation examples", data_args.dataset, len(train), len(val))
    return train, val
