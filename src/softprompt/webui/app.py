"""The page: one tab per job, English or Chinese, a timer that shows the running jobs.

A thin shell over the jobs: training, evaluation, compare, sweep, serve, inspect and export run as the
``softprompt`` commands they are (subprocesses); chat uses the Python API with the model loaded once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from softprompt.webui.chat_tab import build_chat_tab
from softprompt.webui.eval_tab import build_eval_tab
from softprompt.webui.jobs import JOBS
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
            polls.append(("train", *train["poll"]))
        with L.tab("tab.eval", elem_id="tab-eval"):
            L.markdown("eval.intro")
            polls.append(("eval", *build_eval_tab(L, dataset_dir)["poll"]))
        with L.tab("tab.chat", elem_id="tab-chat"):
            L.markdown("chat.intro")
            build_chat_tab(L)
        with L.tab("tab.compare", elem_id="tab-compare"):
            L.markdown("compare.intro")
            polls.append(("compare", *build_compare_tab(L)["poll"]))
        with L.tab("tab.inspect", elem_id="tab-inspect"):
            L.markdown("inspect.intro")
            build_inspect_tab(L)
        with L.tab("tab.serve", elem_id="tab-serve"):
            build_serve_tab(L)
        choice.input(lambda lang: [lang, *L.updates(lang)], choice, [L.lang, *L.components()],
                     show_progress="hidden")
        timer = gr.Timer(POLL_S)
        for kind, fn, outputs in polls:
            shown = gr.State(None)
            timer.tick(_once_finished(kind, fn, len(outputs)), [L.lang, shown], [*outputs, shown],
                       show_progress="hidden")
        reattach, inputs = train["load"]
        demo.load(reattach, None, inputs)
    return demo


def _once_finished(kind: str, poll: Callable[[str], list[Any]], n_outputs: int) -> Callable[..., list[Any]]:
    """``poll`` of the job of ``kind`` at each tick while it runs, and once (per page and language) after it ended:
    a finished job's results are not redrawn every second, nor its message written over the user's next one."""

    def tick(language: str, shown: Any) -> list[Any]:
        job = JOBS.get(kind)
        key = None if job is None else (id(job), language)
        if job is None or (not job.running and shown == key):
            return [gr.skip()] * (n_outputs + 1)
        return [*poll(language), None if job.running else key]

    return tick


def launch(host: str, port: int, dataset_dir: str, language: str, **kwargs: Any) -> None:
    """Serve the page on ``host:port`` until interrupted."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    demo = build_app(dataset_dir, language)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_error=False, theme=THEME, css=CSS,
        quiet=True, **kwargs)
