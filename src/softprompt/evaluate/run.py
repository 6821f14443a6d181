"""The ``softprompt eval`` job: one base model, one or more adapters (or none), one table.

The base model and the data are loaded once; each adapter gets a
:class:`~softprompt.inference.Predictor` (its prefix K/V computed once for the whole run) and
one row of the table. Results go to ``eval_results.json`` and ``eval_results.md``; with
``--save_predictions`` every example's row goes to ``eval_predictions.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softprompt.command_args import EvalArgs, TaskArgs
from softprompt.config import DataArgs, GenerateArgs, ModelArgs
from softprompt.data import Conversation, load_conversations, split_dataset
from softprompt.defaults import is_base
from softprompt.evaluate.tasks import choose_labels, run_classification, run_generation, run_loss
from softprompt.inference import Predictor
from softprompt.files import atomic_write_text
from softprompt.model import LoadedModel, load_model
from softprompt.outdir import check_writable
from softprompt.report import number

log = logging.getLogger("softprompt")

COLUMNS: dict[str, list[tuple[str, str]]] = {
    "classification": [("accuracy", "accuracy %"), ("macro_f1", "macro-F1 %"),
                       ("accuracy_calibrated", "accuracy % (calibrated)"),
                       ("macro_f1_calibrated", "macro-F1 % (calibrated)")],
    "generation": [("exact_match", "exact match %"), ("rouge_l", "ROUGE-L %"), ("bleu_4", "BLEU-4 %")],
    "loss": [("loss", "loss"), ("perplexity", "perplexity"), ("labelled_tokens", "labelled tokens")],
}


def adapter_entries(value: str | None) -> list[str | None]:
    """``--adapter_name_or_path A,B,none`` -> ``["A", "B", None]`` (None: the base model alone; ``none``
    or ``base``, :data:`~softprompt.defaults.BASE_ALIASES`)."""
    if not value:
        return [None]
    return [None if is_base(part.strip()) else part.strip() for part in value.split(",") if part.strip()]


def eval_conversations(data_args: DataArgs, seed: int) -> list[Conversation]:
    """The dataset's conversations; with ``--val_size`` only its validation part (the split training
    made with the same seed, as long as training skipped no example)."""
    data_args.require_dataset()
    conversations = load_conversations(data_args, seed)
    if data_args.val_size:
        conversations = split_dataset(conversations, data_args.val_size, seed)[1]
    return conversations


def run_task(predictor: Predictor, conversations: Sequence[Conversation], data_args: DataArgs, task: TaskArgs,
             gen: GenerateArgs, batch_size: int, labels: Sequence[str] = ()) -> tuple[dict, list[dict]]:
    """(metrics, per-example rows) of ``task.task`` for one predictor."""
    if task.task == "classification":
        return run_classification(predictor, conversations, data_args, task, labels, batch_size)
    if task.task == "generation":
        return run_generation(predictor, conversations, gen, batch_size)
    return run_loss(predictor, conversations, data_args, batch_size)


def evaluate(model_args: ModelArgs, data_args: DataArgs, task: TaskArgs, args: EvalArgs, gen: GenerateArgs,
             lm: LoadedModel | None = None) -> dict[str, Any]:
    """Evaluate the base model and/or each adapter on the dataset; write and return the results."""
    check_writable(args.output_dir)  # before any loading
    conversations = eval_conversations(data_args, gen.seed)
    labels = choose_labels(conversations, task.labels()) if task.task == "classification" else []
    lm = lm or load_model(model_args.model_name_or_path, model_args.cache_dir,
                          quantization_bit=model_args.quantization_bit)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    for adapter in adapter_entries(model_args.adapter_name_or_path):
        name = adapter or f"{lm.name} (no adapter)"
        log.info("evaluating %s on %d examples (%s)", name, len(conversations), task.task)
        start = time.time()
        predictor = Predictor(lm, adapter, data_args.template)
        metrics, rows = run_task(predictor, conversations, data_args, task, gen, args.per_device_eval_batch_size,
                                 labels)
        results.append({"model": name, "adapter": adapter, "examples": len(rows),
                        "runtime_s": round(time.time() - start, 2), **metrics})
        predictions += [{"model": name, "index": i, **row} for i, row in enumerate(rows)]
    report = {"task": task.task, "base_model": lm.name, "dataset": data_args.dataset,
              "label_score": task.label_score if task.task == "classification" else None,
              "results": results}
    atomic_write_text(out / "eval_results.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "eval_results.md", markdown_report(report))
    if args.save_predictions:
        atomic_write_text(out / "eval_predictions.jsonl",
                          "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in predictions))
    return report


def markdown_table(task: str, results: Sequence[dict[str, Any]], first: str = "model") -> str:
    """One row per result: its ``first`` field, examples, the task's metrics, seconds."""
    cols = COLUMNS[task]
    lines = [f"| {first} | examples | " + " | ".join(h for _, h in cols) + " | seconds |",
             "|---|---:|" + "---:|" * len(cols) + "---:|"]
    for r in results:
        cells = [number(r.get(k, ""), decimals=2) for k, _ in cols]
        lines.append(f"| {r[first]} | {r['examples']} | " + " | ".join(cells) + f" | {r['runtime_s']:.0f} |")
    return "\n".join(lines) + "\n"


def markdown_report(report: dict[str, Any]) -> str:
    """The table, and for classification each model's confusion matrix (rows: gold, columns: predicted)."""
    text = (f"# eval: {report['task']} on {report['dataset']} (base model {report['base_model']})\n\n"
            + markdown_table(report["task"], report["results"]))
    for r in report["results"] if report["task"] == "classification" else []:
        labels = r["labels"]
        text += f"\nconfusion matrix of {r['model']} (rows: gold, columns: predicted)\n\n"
        text += "| gold \\ predicted | " + " | ".join(labels) + " |\n|---|" + "---:|" * len(labels) + "\n"
        text += "".join(f"| {g} | " + " | ".join(map(str, row)) + " |\n"
                        for g, row in zip(labels, r["confusion_matrix"]))
    return text
