"""The Evaluate & predict tab: ``softprompt eval`` over one or several adapters, its table and confusion matrices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from softprompt.command_args import EvalArgs, TaskArgs
from softprompt.config import DataArgs, GenerateArgs, ModelArgs
from softprompt.report import pyplot
from softprompt.webui.errors import error_text
from softprompt.webui.forms import FormField, changed_values, check_command, command_line, form_fields, to_argv
from softprompt.webui.jobs import JOBS, start_job
from softprompt.webui.strings import tr
from softprompt.webui.widgets import Texts, field_grid, field_input, message_html

EVAL_CLASSES = [ModelArgs, DataArgs, TaskArgs, EvalArgs, GenerateArgs]
"""As ``softprompt eval`` parses them."""
SHOWN = {ModelArgs: ("model_name_or_path", "adapter_name_or_path"),
         DataArgs: ("dataset", "dataset_dir", "template", "cutoff_len", "max_samples"),
         GenerateArgs: ("max_new_tokens",)}
"""The fields of the shared classes the form shows (TaskArgs and EvalArgs: all of theirs)."""
ADAPTERS_HELP = "Adapter folders, comma-separated; 'none' evaluates the base model without an adapter."


def eval_fields() -> list[FormField]:
    out = []
    for cls in EVAL_CLASSES:
        for f in form_fields(cls):
            if cls in SHOWN and f.name not in SHOWN[cls]:
                continue
            if f.name == "adapter_name_or_path":
                f = FormField(f.name, f.kind, f.default, ADAPTERS_HELP)
            out.append(f)
    return out


def build_eval_tab(L: Texts, dataset_dir: str) -> dict[str, Any]:
    fields = eval_fields()
    grid = field_grid(fields, columns=4, special={"dataset_dir": lambda f: field_input(f, dataset_dir)})
    inputs = [grid[f.name] for f in fields]
    start = L.button("eval.start", variant="primary", elem_id="eval-start")
    message = gr.HTML(elem_id="eval-message")
    command = L.tag(gr.Code(language="shell", label=L("msg.command"), visible=False, interactive=False), "msg.command")
    log = L.textbox("eval.log", lines=6, max_lines=6, autoscroll=True, interactive=False)
    table = L.tag(gr.Dataframe(label=L("eval.results"), interactive=False, visible=False, elem_id="eval-results"),
                  "eval.results")
    confusion = L.tag(gr.Plot(label=L("eval.confusion"), visible=False, elem_id="eval-confusion"), "eval.confusion")
    start.click(lambda lang, *raw: _start(fields, lang, raw), [L.lang, *inputs], [command, message])
    return {"poll": (poll, [log, table, confusion, message])}


def _start(fields: list[FormField], lang: str, raw: tuple[Any, ...]) -> tuple[Any, str]:
    try:
        argv = to_argv(changed_values(fields, list(raw)))
        args = check_command("eval", argv, EVAL_CLASSES)
        start_job("eval", "eval", argv, args[3].output_dir)
    except RuntimeError:
        return gr.skip(), message_html(tr(lang, "msg.busy"), "note")
    except Exception as exc:  # noqa: BLE001
        return gr.skip(), message_html(error_text(exc))
    return gr.update(value=command_line("eval", argv), visible=True), message_html(tr(lang, "msg.started"), "note")


def poll(lang: str) -> list[Any]:
    job = JOBS.get("eval")
    if job is None:
        return [gr.skip()] * 4
    if job.running:
        return [job.tail(), gr.skip(), gr.skip(), gr.skip()]
    if job.returncode != 0:
        return [job.tail(), gr.skip(), gr.skip(), message_html(job.error_line() or tr(lang, "msg.failed"))]
    report = json.loads((Path(job.output_dir) / "eval_results.json").read_text(encoding="utf-8"))
    figure = confusion_figure(report)
    return [job.tail(), gr.update(value=results_frame(report), visible=True),
            gr.update(value=figure, visible=figure is not None),
            message_html(tr(lang, "msg.finished", where=f"{job.output_dir}/eval_results.json"), "ok")]


def results_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per model: its scalar metrics (lists such as the confusion matrix left out)."""
    rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict)) and k != "adapter"}
            for r in report["results"]]
    return pd.DataFrame(rows)


def confusion_figure(report: dict[str, Any]):
    """A heat map of each model's confusion matrix (rows: gold, columns: predicted); None for other tasks."""
    results = [r for r in report["results"] if r.get("confusion_matrix")]
    if report["task"] != "classification" or not results:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), dpi=100, squeeze=False)
    for ax, r in zip(axes[0], results):
        labels, matrix = r["labels"], r["confusion_matrix"]
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_yticks(range(len(labels)), labels)
        for i, row in enumerate(matrix):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center")
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(Path(str(r["model"])).name[:40], fontsize=9)
    fig.tight_layout()
    return fig
