"""The Serve & export tab: ``softprompt serve`` over a folder as a subprocess, its tasks and metrics;
``softprompt export`` of a prompt."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import gradio as gr

from softprompt.command_args import ExportArgs, ServeArgs
from softprompt.config import DEFAULT_MODEL, ArgumentError, ModelArgs
from softprompt.webui.errors import error_text
from softprompt.webui.forms import check_command, command_line
from softprompt.webui.jobs import JOBS, abort_job, one_line_error, run_command, start_job
from softprompt.webui.strings import tr
from softprompt.webui.widgets import Texts, message_html

HTTP_TIMEOUT_S = 3.0


def build_serve_tab(L: Texts) -> None:
    L.markdown("serve.title")
    with gr.Row():
        prompts_dir = L.textbox("serve.prompts_dir", max_lines=1, scale=3)
        model = L.textbox("chat.model", value=DEFAULT_MODEL, max_lines=1, scale=2)
        port = gr.Number(8000, precision=0, label="port", scale=1)
    with gr.Row():
        start = L.button("serve.start", variant="primary")
        status = L.button("serve.status")
        stop = L.button("serve.stop", variant="stop")
    message = gr.HTML()
    line = L.tag(gr.Code(language="shell", label=L("msg.command"), visible=False, interactive=False), "msg.command")
    with gr.Row():
        models = L.tag(gr.JSON(label="/v1/models"), "serve.models", "label")
        metrics = L.textbox("serve.metrics", lines=10, max_lines=10, interactive=False)
    log = L.textbox("serve.log", lines=5, max_lines=5, interactive=False)
    start.click(_start_serve, [L.lang, prompts_dir, model, port], [line, message])
    status.click(_status, [L.lang, port], [models, metrics, log, message])
    stop.click(_stop, [L.lang], message)
    L.markdown("export.title")
    with gr.Row():
        adapter = L.textbox("export.adapter", max_lines=1, scale=3)
        output = L.textbox("export.output", value="prompt_embeds.safetensors", max_lines=1, scale=2)
        dtype = gr.Dropdown(["fp32", "bf16", "fp16"], value="fp32", label="dtype", scale=1)
    export = L.button("export.run", variant="primary")
    export_message = gr.HTML()
    export.click(_export, [adapter, output, dtype], export_message)


def _start_serve(lang: str, prompts_dir: str, model: str, port: float) -> tuple[Any, str]:
    argv = ["--model_name_or_path", model.strip(), "--port", str(int(port or 0))]
    if prompts_dir.strip():
        argv += ["--prompts_dir", prompts_dir.strip()]
    try:
        check_command("serve", argv, [ModelArgs, ServeArgs])
        start_job("serve", "serve", argv, None)
    except RuntimeError:
        return gr.skip(), message_html(tr(lang, "msg.busy"), "note")
    except Exception as exc:  # noqa: BLE001
        return gr.skip(), message_html(error_text(exc))
    return gr.update(value=command_line("serve", argv), visible=True), message_html(tr(lang, "msg.started"), "note")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _status(lang: str, port: float) -> list[Any]:
    job = JOBS.get("serve")
    log = job.tail(8) if job is not None else ""
    if job is None or not job.running:
        why = (job.error_line() if job is not None else None) or tr(lang, "serve.not_running")
        return [gr.skip(), gr.skip(), log, message_html(why, "note")]
    base = f"http://127.0.0.1:{int(port or 0)}"
    try:
        code, body = _get(f"{base}/v1/models")
        models = json.loads(body) if code == 200 else {"status": code}
        code, text = _get(f"{base}/metrics")
    except (OSError, ValueError):
        return [gr.skip(), gr.skip(), log, message_html(tr(lang, "serve.loading"), "note")]
    metrics = text if code == 200 else tr(lang, "serve.no_metrics", code=code)
    return [models, metrics, log, message_html(tr(lang, "serve.up", url=f"{base}/v1"), "ok")]


def _stop(lang: str) -> str:
    if not abort_job("serve"):
        return message_html(tr(lang, "serve.not_running"), "note")
    return message_html(tr(lang, "msg.aborted"), "note")


def _export(adapter: str, output: str, dtype: str) -> str:
    argv = ["--adapter_name_or_path", adapter.strip(), "--output", output.strip(), "--dtype", dtype]
    try:
        check_command("export", argv, [ExportArgs])
        code, text = run_command("export", argv)
        if code != 0:
            raise ArgumentError(one_line_error("export", text).split("error: ", 1)[-1])
    except Exception as exc:  # noqa: BLE001
        return message_html(error_text(exc))
    return message_html(text.strip().splitlines()[-1], "ok")
