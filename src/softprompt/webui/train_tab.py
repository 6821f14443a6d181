"""The Train tab: every ``softprompt train`` argument, a run as a subprocess, its progress, log and loss curve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from softprompt.webui.forms import (
    TRAIN_SECTIONS, FormField, changed_values, check_train, command_line, form_fields, load_yaml, method_only_fields,
    save_yaml, shown_for, to_argv,
)
from softprompt.webui.jobs import JOBS, abort_job, LOG_NAME, start_job, trainer_log
from softprompt.webui.preview import dataset_choices, dataset_preview
from softprompt.webui.errors import error_text
from softprompt.webui.strings import tr
from softprompt.webui.widgets import Texts, field_grid, field_input, message_html, progress_html


@dataclass
class TrainForm:
    """The train form's fields and their inputs, in one order (the order of every handler's ``*raw``)."""

    fields: list[FormField]
    inputs: list[Any]

    def index(self, name: str) -> int:
        return next(i for i, f in enumerate(self.fields) if f.name == name)

    def values(self, raw: tuple[Any, ...]) -> dict[str, Any]:
        """The changed arguments (a multi-select dataset joined with commas; other methods' fields left out)."""
        raw = tuple(",".join(v) if isinstance(v, list) else v for v in raw)
        return changed_values(self.fields, list(raw), str(raw[self.index("finetuning_type")]))


def _dataset_input(f: FormField, dataset_dir: str) -> gr.Dropdown:
    return gr.Dropdown(choices=dataset_choices(dataset_dir), value=None, multiselect=True, allow_custom_value=True,
                       label=f.name, info=f.help, elem_id=f"field-{f.name}")


def build_form(L: Texts, dataset_dir: str) -> TrainForm:
    fields, inputs = [], []
    for section, cls in TRAIN_SECTIONS:
        section_fields = form_fields(cls)
        special = {"dataset": lambda f: _dataset_input(f, dataset_dir),
                   "dataset_dir": lambda f: field_input(f, dataset_dir)}  # the page's, passed on as a flag
        with L.accordion(f"train.section.{section}", open=True):
            grid = field_grid(section_fields, special=special)
        fields += section_fields
        inputs += [grid[f.name] for f in section_fields]
    return TrainForm(fields, inputs)


def build_train_tab(L: Texts, dataset_dir: str) -> dict[str, Any]:
    """The tab's components and their events; returns what the page wires to its load and timer events."""
    form = build_form(L, dataset_dir)
    with gr.Row():
        preview_btn = L.button("train.preview_data", size="sm")
    data_preview = gr.Dataframe(visible=False, wrap=True, elem_id="train-data-preview", max_height=260)
    with gr.Row():
        config_path = L.textbox("train.config_path", value="train_config.yaml", max_lines=1, scale=3)
        save_btn = L.button("train.save", scale=1)
        load_btn = L.button("train.load", scale=1)
    with gr.Row():
        command_btn = L.button("train.command", scale=1)
        start_btn = L.button("train.start", variant="primary", scale=2, elem_id="train-start")
        abort_btn = L.button("train.abort", variant="stop", scale=1, elem_id="train-abort")
    message = gr.HTML(elem_id="train-message")
    command = L.tag(gr.Code(language="shell", label=L("msg.command"), visible=False, elem_id="train-command",
                            interactive=False), "msg.command")
    progress = gr.HTML(elem_id="train-progress")
    with gr.Row():
        log = L.textbox("train.log", lines=14, max_lines=14, autoscroll=True, interactive=False,
                        elem_id="train-log", scale=1)
        loss = L.tag(gr.LinePlot(x="step", y="loss", color="series", label=L("train.loss"), visible=False,
                                 elem_id="train-loss", height=320, scale=1), "train.loss")
    _wire(L, form, locals())
    return {"form": form, "poll": (poll, [progress, log, loss, message]),
            "load": (lambda: reattach(len(form.inputs)), form.inputs)}


def _wire(L: Texts, form: TrainForm, c: dict[str, Any]) -> None:
    method_input = form.inputs[form.index("finetuning_type")]
    specific = [i for f, i in zip(form.fields, form.inputs) if f.name in method_only_fields()]
    names = [f.name for f in form.fields if f.name in method_only_fields()]
    method_input.change(lambda m: [gr.update(visible=shown_for(m, n)) for n in names], method_input, specific)
    dir_input, data_input = form.inputs[form.index("dataset_dir")], form.inputs[form.index("dataset")]
    dir_input.blur(lambda d: gr.update(choices=dataset_choices(d)), dir_input, data_input)
    c["preview_btn"].click(_preview_data, [dir_input, data_input], [c["data_preview"], c["message"]])
    c["command_btn"].click(lambda *raw: _command(form, raw), form.inputs, [c["command"], c["message"]])
    c["save_btn"].click(lambda lang, p, *raw: _save(form, lang, p, raw), [L.lang, c["config_path"], *form.inputs],
                        c["message"])
    c["load_btn"].click(lambda lang, p: _load(form, lang, p), [L.lang, c["config_path"]], [*form.inputs, c["message"]])
    c["start_btn"].click(lambda lang, *raw: _start(form, lang, raw), [L.lang, *form.inputs], [c["command"], c["message"]])
    c["abort_btn"].click(_abort, L.lang, c["message"])


def _preview_data(dataset_dir: str, dataset: Any) -> tuple[Any, str]:
    try:
        frame = dataset_preview(dataset_dir, ",".join(dataset) if isinstance(dataset, list) else dataset)
    except Exception as exc:  # noqa: BLE001 (a user's file: any failure is a message, never a traceback)
        return gr.update(visible=False), message_html(error_text(exc))
    return gr.update(value=frame, visible=True), ""


def _command(form: TrainForm, raw: tuple[Any, ...]) -> tuple[Any, str]:
    try:
        argv = to_argv(form.values(raw))
        check_train(argv)
    except Exception as exc:  # noqa: BLE001
        return gr.update(visible=False), message_html(error_text(exc))
    return gr.update(value=command_line("train", argv), visible=True), ""


def _save(form: TrainForm, lang: str, path: str, raw: tuple[Any, ...]) -> str:
    try:
        values = form.values(raw)
        check_train(to_argv(values))
        out = save_yaml(values, path)
    except Exception as exc:  # noqa: BLE001
        return message_html(error_text(exc))
    return message_html(tr(lang, "msg.saved", where=out, n=len(values)), "ok")


def _load(form: TrainForm, lang: str, path: str) -> list[Any]:
    try:
        values = load_yaml(path, form.fields)
    except Exception as exc:  # noqa: BLE001
        return [gr.skip()] * len(form.inputs) + [message_html(error_text(exc))]
    dataset = form.index("dataset")
    values[dataset] = [d.strip() for d in values[dataset].split(",") if d.strip()]
    return values + [message_html(tr(lang, "msg.loaded", where=path), "ok")]


def _start(form: TrainForm, lang: str, raw: tuple[Any, ...]) -> tuple[Any, str]:
    try:
        argv = to_argv(form.values(raw))
        train = check_train(argv)[3]
        start_job("train", "train", argv, train.output_dir, form=list(raw))
    except RuntimeError:
        return gr.skip(), message_html(tr(lang, "msg.busy"), "note")
    except Exception as exc:  # noqa: BLE001
        return gr.skip(), message_html(error_text(exc))
    return gr.update(value=command_line("train", argv), visible=True), message_html(tr(lang, "msg.started"), "note")


def _abort(lang: str) -> str:
    if not abort_job("train"):
        return message_html(tr(lang, "msg.no_run"), "note")
    return message_html(tr(lang, "msg.aborted"), "note")


def poll(lang: str) -> list[Any]:
    """Progress, log tail, loss curve and end message of the current (or last) training run."""
    job = JOBS.get("train")
    if job is None:
        return [gr.skip()] * 4
    rows = trainer_log(job.output_dir)
    done = [r for r in rows if "current_steps" in r]
    step, total = (done[-1]["current_steps"], done[-1].get("total_steps", 0)) if done else (0, 0)
    status, message = _status(job, lang)
    frame = loss_frame(rows)
    plot = gr.update(value=frame, visible=True) if len(frame) else gr.update(visible=False)
    return [progress_html(step, total, status), job.tail(), plot, message]


def _status(job, lang: str) -> tuple[str, Any]:
    """(the status word, the message) of a training job."""
    if job.running:
        return tr(lang, "status.running"), gr.skip()
    if job.returncode == 0:
        last = job.lines[-1] if job.lines else ""
        where = f"{last} (log: {Path(job.output_dir or '') / LOG_NAME})"
        return tr(lang, "status.finished"), message_html(tr(lang, "msg.finished", where=where), "ok")
    if job.aborted:
        return tr(lang, "status.aborted"), message_html(tr(lang, "msg.aborted"), "note")
    return tr(lang, "status.failed"), message_html(job.error_line() or tr(lang, "msg.failed"))


def loss_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """(step, loss, series) of a trainer log: the training loss and the validation loss."""
    points = [(r["current_steps"], r["loss"], "train") for r in rows if "loss" in r]
    points += [(r["current_steps"], r["eval_loss"], "validation") for r in rows if "eval_loss" in r]
    return pd.DataFrame(points, columns=["step", "loss", "series"])


def reattach(n_inputs: int) -> list[Any]:
    """A new page load shows the form of the running (or last) training run."""
    job = JOBS.get("train")
    if job is None or job.form is None:
        return [gr.skip()] * n_inputs
    return list(job.form)
