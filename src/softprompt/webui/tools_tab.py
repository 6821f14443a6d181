"""The Compare & sweep and Inspect tabs: ``softprompt compare`` / ``sweep`` as jobs, ``softprompt inspect``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from softprompt.config import ArgumentError
from softprompt.webui.errors import error_text
from softprompt.webui.forms import command_line
from softprompt.webui.jobs import JOBS, one_line_error, run_command, start_job
from softprompt.webui.strings import tr
from softprompt.webui.widgets import Texts, message_html

RESULTS = {"compare": ("compare.md", "compare.png"), "sweep": ("sweep_results.md", "sweep.png")}
"""The table and the plot each command writes into its output_dir."""


def build_compare_tab(L: Texts) -> dict[str, Any]:
    with gr.Row():
        command = gr.Radio(["compare", "sweep"], value="compare", label="softprompt", scale=1)
        flags = L.textbox("compare.flags", lines=2, scale=4, elem_id="compare-flags")
    start = L.button("compare.start", variant="primary")
    message = gr.HTML()
    line = L.tag(gr.Code(language="shell", label=L("msg.command"), visible=False, interactive=False), "msg.command")
    log = L.textbox("compare.log", lines=8, max_lines=8, autoscroll=True, interactive=False)
    with gr.Row():
        table = gr.Markdown()
        plot = gr.Image(visible=False, type="filepath", show_label=False)
    start.click(_start_compare, [L.lang, command, flags], [line, message])
    return {"poll": (poll_compare, [log, table, plot, message])}


def _start_compare(lang: str, command: str, flags: str) -> tuple[Any, str]:
    from softprompt.compare import parse_compare
    from softprompt.sweep import parse_sweep

    try:
        argv = shlex.split(flags or "")
        plan = (parse_compare if command == "compare" else parse_sweep)(argv)
        start_job("compare", command, argv, plan.train.output_dir)
    except RuntimeError:
        return gr.skip(), message_html(tr(lang, "msg.busy"), "note")
    except ValueError as exc:  # ArgumentError, and shlex's unbalanced quotes
        return gr.skip(), message_html(error_text(exc))
    return gr.update(value=command_line(command, argv), visible=True), message_html(tr(lang, "msg.started"), "note")


def poll_compare(lang: str) -> list[Any]:
    job = JOBS.get("compare")
    if job is None:
        return [gr.skip()] * 4
    if job.running:
        return [job.tail(), gr.skip(), gr.skip(), gr.skip()]
    if job.returncode != 0 and not (Path(job.output_dir) / RESULTS[job.command][0]).is_file():
        return [job.tail(), gr.skip(), gr.skip(), message_html(job.error_line() or tr(lang, "msg.failed"))]
    md, png = (Path(job.output_dir) / name for name in RESULTS[job.command])
    return [job.tail(), md.read_text(encoding="utf-8"),
            gr.update(value=str(png), visible=True) if png.is_file() else gr.update(visible=False),
            message_html(tr(lang, "msg.finished", where=str(md)), "ok")]


def build_inspect_tab(L: Texts) -> None:
    with gr.Row():
        adapter = L.textbox("inspect.adapter", max_lines=1, scale=3, elem_id="inspect-adapter")
        base = L.textbox("inspect.base", max_lines=1, scale=2)
        top_k = gr.Number(5, precision=0, label="top_k", scale=1)
    go = L.button("inspect.run", variant="primary")
    message = gr.HTML()
    summary = gr.Markdown()
    with gr.Row():
        tokens = gr.Dataframe(interactive=False, wrap=True, scale=3)
        norms = L.tag(gr.BarPlot(x="virtual token", y="norm", label=L("inspect.norms"), visible=False, scale=2,
                                 height=320, elem_id="inspect-norms"), "inspect.norms")
    go.click(_inspect, [adapter, base, top_k], [message, summary, tokens, norms])


def _inspect(adapter: str, base: str, top_k: float) -> list[Any]:
    argv = [adapter.strip(), "--json", "--top_k", str(int(top_k or 0))]
    if base.strip():
        argv += ["--model_name_or_path", base.strip()]
    try:
        if not adapter.strip():
            raise ArgumentError("name the adapter folder: softprompt inspect ADAPTER")
        code, output = run_command("inspect", argv)
        if code != 0:
            raise ArgumentError(one_line_error("inspect", output).split("error: ", 1)[-1])
        info = json.loads(output[output.index("{"):output.rindex("}") + 1])
    except Exception as exc:  # noqa: BLE001
        return [message_html(error_text(exc)), gr.skip(), gr.skip(), gr.skip()]
    rows = info.get("virtual_tokens", [])
    table = pd.DataFrame([{"#": r["index"], "norm": round(r["norm"], 3), "z": round(r["norm_z"], 1),
                           "nearest (cosine)": "  ".join(f"{n['token']!r} {n['cosine']:.2f}" for n in r["nearest"])}
                          for r in rows])
    norms = pd.DataFrame({"virtual token": [str(r["index"]) for r in rows], "norm": [r["norm"] for r in rows]})
    summary = (f"**{info['method']}** · {info['num_virtual_tokens']} × {info['token_dim']} · "
               f"{info['parameters']:,} parameters · base `{info['base_model_used']}`")
    return ["", summary, table, gr.update(value=norms, visible=bool(rows))]
