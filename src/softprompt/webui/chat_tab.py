"""The Chat tab: one question, answered side by side by the base model and by each adapter, streamed."""

from __future__ import annotations

from typing import Any

import gradio as gr

from softprompt.config import DEFAULT_MODEL, GenerateArgs
from softprompt.webui.chat import MAX_COLUMNS, ChatEngine
from softprompt.webui.errors import error_text
from softprompt.webui.strings import tr
from softprompt.webui.widgets import Texts, message_html

ENGINE = ChatEngine()
"""The server's models: loaded on first use, kept for every page."""


def build_chat_tab(L: Texts) -> None:
    with gr.Row():
        model = L.textbox("chat.model", value=DEFAULT_MODEL, max_lines=1, elem_id="chat-model", scale=2)
        adapters = L.textbox("chat.adapters", max_lines=1, elem_id="chat-adapters", scale=3)
        template = L.textbox("chat.template", max_lines=1, scale=1)
    system = L.textbox("chat.system", max_lines=2)
    with L.accordion("chat.sampling", open=True):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature", elem_id="chat-temperature")
            top_p = gr.Slider(0.01, 1, value=1, step=0.01, label="top_p")
            top_k = gr.Slider(0, 200, value=0, step=1, label="top_k")
            max_new = gr.Slider(1, 1024, value=64, step=1, label="max_new_tokens")
            seed = gr.Number(42, precision=0, label="seed", minimum=None)
    with gr.Row():
        query = L.textbox("chat.query", lines=2, elem_id="chat-query", scale=5)
        send = L.button("chat.send", variant="primary", elem_id="chat-send", scale=1)
    message = gr.HTML(elem_id="chat-message")
    with gr.Row(equal_height=True):
        answers = [gr.Textbox(label="base", lines=8, interactive=False, visible=i == 0, elem_id=f"chat-answer-{i}",
                              buttons=["copy"]) for i in range(MAX_COLUMNS)]
    inputs = [model, adapters, template, system, query, temperature, top_p, top_k, max_new, seed]
    send.click(_answer, [L.lang, *inputs], [message, *answers])
    query.submit(_answer, [L.lang, *inputs], [message, *answers])


def _answer(lang: str, model: str, adapters: str, template: str, system: str, query: str, temperature: float, top_p: float,
            top_k: float, max_new: float, seed: float):
    """Stream (message, answer boxes) as the base model and each adapter write their answers."""
    try:
        gen = GenerateArgs(int(max_new), float(temperature), float(top_p), int(top_k), int(seed or 0))
        names = [a.strip() for a in (adapters or "").split(",") if a.strip()]
        stream = ENGINE.answer(model.strip(), names, query, gen, system.strip() or None, template.strip() or None)
        for columns in stream:
            yield [""] + _boxes(columns, lang)
    except Exception as exc:  # noqa: BLE001 (one line on the page, never a traceback)
        yield [message_html(error_text(exc))] + [gr.skip()] * MAX_COLUMNS


def _boxes(columns, lang: str) -> list[Any]:
    out = []
    for i in range(MAX_COLUMNS):
        if i < len(columns):
            label = tr(lang, "chat.base_answer") if i == 0 else tr(lang, "chat.with_adapter", name=columns[i].name)
            out.append(gr.update(value=columns[i].text, label=label, visible=True))
        else:
            out.append(gr.update(visible=False))
    return out
