"""Gradio building blocks shared by the tabs: translated labels, and a form made from argument dataclasses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from softprompt.webui.forms import FormField
from softprompt.webui.strings import DEFAULT_LANGUAGE, STRINGS


class Texts:
    """Every translated text on the page: (component, string key, attribute), so that a language switch
    updates them all (:meth:`updates`)."""

    def __init__(self, language: str = DEFAULT_LANGUAGE):
        self.language = language
        self.items: list[tuple[Any, str, str]] = []
        self.lang: Any = None
        """The page's language, a ``gr.State`` (set by the app inside its Blocks); handlers that write text take it."""

    def __call__(self, key: str) -> str:
        return STRINGS[self.language][key]

    def tag(self, component: Any, key: str, attr: str = "label") -> Any:
        self.items.append((component, key, attr))
        return component

    def button(self, key: str, **kwargs: Any) -> gr.Button:
        return self.tag(gr.Button(self(key), **kwargs), key, "value")

    def markdown(self, key: str, **kwargs: Any) -> gr.Markdown:
        return self.tag(gr.Markdown(self(key), **kwargs), key, "value")

    def textbox(self, key: str, **kwargs: Any) -> gr.Textbox:
        return self.tag(gr.Textbox(label=self(key), **kwargs), key)

    @contextmanager
    def tab(self, key: str, **kwargs: Any) -> Iterator[gr.Tab]:
        with gr.Tab(self(key), **kwargs) as tab:
            yield tab
        self.tag(tab, key)

    @contextmanager
    def accordion(self, key: str, **kwargs: Any) -> Iterator[gr.Accordion]:
        with gr.Accordion(self(key), **kwargs) as box:
            yield box
        self.tag(box, key)

    def components(self) -> list[Any]:
        return [c for c, _, _ in self.items]

    def updates(self, language: str) -> list[Any]:
        """One update per tagged component, its text in ``language``."""
        return [gr.update(**{attr: STRINGS[language][key]}) for _, key, attr in self.items]


def field_input(f: FormField, value: Any = None, **kwargs: Any) -> Any:
    """The Gradio input of one form field: labelled with the argument's name, its docstring as the help; it shows
    ``value`` when given, else the default (a value other than the default is passed on as a flag)."""
    common = dict(label=f.name, info=f.help, elem_id=f"field-{f.name}", **kwargs)
    value = f.initial() if value is None else value
    if f.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if f.kind == "choice":
        unset = [("(unset)", "")] if f.default is None else []  # e.g. lr_scheduler_type: unset = the method's recipe
        return gr.Dropdown(choices=unset + list(f.choices), value=value, **common)
    return gr.Textbox(value=value, placeholder="(unset)" if f.default is None else None, max_lines=1, **common)


def field_grid(fields: list[FormField], columns: int = 3, special: dict[str, Any] | None = None) -> dict[str, Any]:
    """Inputs for ``fields`` laid out ``columns`` to a row; ``special`` maps a name to a ready-made input maker
    (``lambda f: component``). Returns {name: component}."""
    special = special or {}
    out: dict[str, Any] = {}
    for start in range(0, len(fields), columns):
        with gr.Row(equal_height=False):
            for f in fields[start:start + columns]:
                with gr.Column(min_width=220):
                    out[f.name] = special[f.name](f) if f.name in special else field_input(f)
    return out


def message_html(text: str | None, kind: str = "error") -> str:
    """A one-line message box (``kind``: error, ok, note); empty for no message."""
    if not text:
        return ""
    from html import escape

    return f'<div class="sp-msg sp-{kind}" role="status">{escape(text)}</div>'


def progress_html(step: int, total: int, status: str) -> str:
    """A progress bar with 'step / total' and the status word."""
    pct = 100.0 * step / total if total else 0.0
    return (f'<div class="sp-progress"><div class="sp-bar" style="width:{pct:.1f}%"></div></div>'
            f'<div class="sp-progress-text">{status} · {step} / {total or "?"} ({pct:.0f}%)</div>')


CSS = """
.sp-msg {padding: 8px 12px; border-radius: 6px; font-family: var(--font-mono); font-size: 0.9em;}
.sp-error {background: #fde8e8; color: #9b1c1c; border: 1px solid #f8b4b4;}
.sp-ok {background: #def7ec; color: #03543f; border: 1px solid #84e1bc;}
.sp-note {background: #e1effe; color: #1e429f; border: 1px solid #a4cafe;}
.sp-progress {height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden;}
.sp-bar {height: 100%; background: linear-gradient(90deg, #6366f1, #22c55e); transition: width .5s;}
.sp-progress-text {font-size: 0.9em; margin-top: 4px; color: #374151;}
#sp-header h1 {margin-bottom: 0;}
"""
