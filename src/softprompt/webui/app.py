"""The page: one tab per job, English or Chinese, a timer that shows the running jobs.

A thin shell over the jobs: training, evaluation, compare, sweep, serve, inspect and export run as the
``softprompt`` commands they are (subprocesses); chat uses the Python API with the model loaded once.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from softprompt.webui.chat_tab import build_chat_tab
from softprompt.webui.eval_tab import build_eval_tab
from softprompt.webui.serve_tab import build_serve_tab
from softprompt.webui.strings import DEFAULT_LANGUAGE, LANGUAGES
from softprompt.webui.tools_tab import build_compare_tab, build_inspect_tab
from softprompt.webui.train_tab import build_train_tab
from softprompt.webui.widgets import CSS, Texts

POLL_S = 1.0
"""How often the page reads the running jobs' logs."""
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="emerald")


def build_app(dataset_dir: str = "data", language: str = DEFAULT_LANGUAGE) -> gr.Blocks:
    """The whole page (not yet launched)."""
    L = Texts(language)
    with gr.Blocks(title="softprompt board") as demo:
        L.lang = gr.State(language)
        with gr.Row(elem_id="sp-header"):
            with gr.Column(scale=5):
                L.markdown("app.title")
            with gr.Column(scale=1, min_width=180):
                choice = L.tag(gr.Radio([(name, code) for code, name in LANGUAGES.items()], value=language,
                                        label=L("app.language"), elem_id="language"), "app.language")
        polls = []
        with L.tab("tab.train", elem_id="tab-train"):
            L.markdown("train.intro")
            train = build_train_tab(L, dataset_dir)
            polls.append(train["poll"])
        with L.tab("tab.eval", elem_id="tab-eval"):
            L.markdown("eval.intro")
            polls.append(build_eval_tab(L, dataset_dir)["poll"])
        with L.tab("tab.chat", elem_id="tab-chat"):
            L.markdown("chat.intro")
            build_chat_tab(L)
        with L.tab("tab.compare", elem_id="tab-compare"):
            L.markdown("compare.intro")
            polls.append(build_compare_tab(L)["poll"])
        with L.tab("tab.inspect", elem_id="tab-inspect"):
            L.markdown("inspect.intro")
            build_inspect_tab(L)
        with L.tab("tab.serve", elem_id="tab-serve"):
            build_serve_tab(L)
        choice.input(lambda lang: [lang, *L.updates(lang)], choice, [L.lang, *L.components()],
                     show_progress="hidden")
        timer = gr.Timer(POLL_S)
        for fn, outputs in polls:
            timer.tick(fn, L.lang, outputs, show_progress="hidden")
        reattach, inputs = train["load"]
        demo.load(reattach, None, inputs)
    return demo


def launch(host: str, port: int, dataset_dir: str, language: str, **kwargs: Any) -> None:
    """Serve the page on ``host:port`` until interrupted."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    demo = build_app(dataset_dir, language)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_error=False, theme=THEME, css=CSS,
        quiet=True, **kwargs)
