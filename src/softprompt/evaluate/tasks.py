"""The three evaluation tasks over one :class:`~softprompt.inference.Predictor` (a base model plus
an optional adapter whose prefix K/V is computed once): classification, generation, loss.

Each returns ``(metrics, rows)``: a flat dict of numbers and one dict per example.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.command_args import TaskArgs
from softprompt.config import DataArgs, GenerateArgs
from softprompt.data import Conversation, DataError, collate, tokenize_dataset, truncate_prompt
from softprompt.engine.forward import row_losses
from softprompt.evaluate.metrics import accuracy, confusion_matrix, generation_scores, macro_f1
from softprompt.evaluate.verbalizer import classify, label_token_ids
from softprompt.inference import Predictor

log = logging.getLogger("softprompt")
Result = tuple[dict[str, Any], list[dict[str, Any]]]


def split_answer(conv: Conversation) -> tuple[list[dict], str]:
    """(the turns up to the last prompt, the reference answer, stripped; "" when there is none)."""
    msgs, answer = conv.prompt_and_answer()
    return msgs, answer.strip()


def choose_labels(conversations: Sequence[Conversation], label_words: Sequence[str]) -> list[str]:
    """The label set: ``label_words`` if given, else the data's distinct answers (sorted)."""
    if label_words:
        return list(label_words)
    labels = sorted({split_answer(c)[1] for c in conversations} - {""})
    if len(labels) < 2:
        raise DataError(f"classification needs at least two distinct answers in the data, found {labels}; "
                        "pass --label_words")
    if len(labels) > 50:
        raise DataError(f"the data has {len(labels)} distinct answers: not a classification set; "
                        "pass --label_words or use --task generation")
    return labels


def run_classification(p: Predictor, convs: Sequence[Conversation], data_args: DataArgs, args: TaskArgs,
                       labels: Sequence[str], batch_size: int) -> Result:
    """Score each label word after each prompt; accuracy, macro-F1, confusion matrix, calibrated too."""
    tok = p.lm.tokenizer
    label_ids = label_token_ids(tok, labels)
    room = data_args.cutoff_len - max(len(ids) for ids in label_ids)
    asks = [split_answer(c) for c in convs]
    prompts = [truncate_prompt(p.prompt_ids(m, c.system, c.tools), room) for c, (m, _) in zip(convs, asks)]
    out = classify(p.lm.model, prompts, label_ids, p.prefix, tok.pad_token_id,
                   batch_size, args.label_score)
    golds = [gold for _, gold in asks]
    preds = [labels[i] for i in out.predictions]
    calibrated = [labels[i] for i in out.calibrated]
    unknown = sum(g not in labels for g in golds)
    if unknown:
        log.warning("%d of %d examples have an answer outside the label words %s; they count as errors",
                    unknown, len(golds), list(labels))
    metrics = {
        "accuracy": 100 * accuracy(preds, golds), "macro_f1": 100 * macro_f1(preds, golds, labels),
        "accuracy_calibrated": 100 * accuracy(calibrated, golds),
        "macro_f1_calibrated": 100 * macro_f1(calibrated, golds, labels),
        "labels": list(labels), "confusion_matrix": confusion_matrix(preds, golds, labels),
    }
    rows = [{"label": g, "predict": pr, "predict_calibrated": pc,
             "scores": {lab: round(float(s), 4) for lab, s in zip(labels, out.scores[i])}}
            for i, (g, pr, pc) in enumerate(zip(golds, preds, calibrated))]
    return metrics, rows


def run_generation(p: Predictor, convs: Sequence[Conversation], gen: GenerateArgs, bs: int) -> Result:
    """Generate an answer per prompt (batched, shared prefix), then exact match, ROUGE-L, BLEU-4."""
    tok = p.lm.tokenizer
    asks = [split_answer(c) for c in convs]
    prompts = [p.prompt_ids(m, c.system, c.tools) for c, (m, _) in zip(convs, asks)]
    p.check_context(prompts, gen.max_new_tokens, [c.origin for c in convs])  # before any example is generated
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(convs), desc="generate", unit="ex") as bar:
        for start in range(0, len(convs), bs):
            chunk = slice(start, start + bs)
            for (_, ref), ids in zip(asks[chunk], p.generate_ids(prompts[chunk], gen)):
                rows.append({"label": ref, "predict": tok.decode(ids, skip_special_tokens=True).strip()})
            bar.update(len(prompts[chunk]))
    metrics = generation_scores([r["predict"] for r in rows], [r["label"] for r in rows])
    return metrics, rows


@torch.no_grad()
def run_loss(p: Predictor, convs: Sequence[Conversation], data_args: DataArgs, bs: int) -> Result:
    """Mean next-token loss over every labelled token (the answers), and its perplexity."""
    model, tok = p.lm.model, p.lm.tokenizer
    device = next(model.parameters()).device
    examples = tokenize_dataset(convs, tok, data_args)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    per_row: dict[int, tuple[float, int]] = {}
    for start in tqdm(range(0, len(order), bs), desc="loss", unit="batch"):
        idx = order[start:start + bs]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], tok.pad_token_id).items()}
        losses = row_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"], p.prefix)
        per_row.update((i, (float(loss_sum), n)) for i, (loss_sum, n) in zip(idx, losses))
    total = sum(s for s, _ in per_row.values())
    count = sum(n for _, n in per_row.values())
    mean = total / max(count, 1)
    metrics = {"loss": mean, "perplexity": math.exp(min(mean, 700.0)), "labelled_tokens": count}
    rows = [{"loss": per_row[i][0] / max(per_row[i][1], 1), "tokens": per_row[i][1]} for i in range(len(examples))]
    return metrics, rows
