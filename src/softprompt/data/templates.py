"""Chat templates: conversation -> token ids with a label mask, and the generation prompt.

The tokenizer's own chat template is used unless ``--template`` names one of ours
(``default``, ``alpaca``, ``empty``; the ``.jinja`` files next to this module) or a .jinja
file. Every template is rendered by ``tokenizer.apply_chat_template``.

Technique: the conversation is rendered incrementally. For each answer turn (assistant or
function) the prefix before it is rendered *with* the generation prompt and the prefix
through it *without*; the difference is the answer's text (content plus end-of-turn tokens
such as ``<|im_end|>``), which is labelled. Each rendered prefix must extend the previous
one, otherwise the template cannot be split into turns and a DataError says so. Segments
are tokenized separately with ``add_special_tokens=False`` (as LLaMA-Factory does), and
:func:`encode_prompt` uses the same segments, so the prompt ids seen in training and at
inference are identical.

Rendering every prefix whole costs time growing with the square of the turns (10,000 short
messages: 10 minutes). So each "prefix" is rendered as a window: the system message plus the
turn pair before the turn (:data:`CONTEXT_PAIRS`), which gives the same pieces for any template
whose turns do not depend on turns further back; the pieces must then add up to the whole
conversation rendered at once, else (a template that numbers its turns, say) the prefixes are
rendered whole after all (that template keeps the quadratic cost; the server bounds it by its
message limit).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from jinja2 import TemplateError

from ..config import ArgumentError
from .errors import DataError, one_line
from .formats import ANSWER_ROLES, PROMPT_ROLES, Conversation, check_turns

TEMPLATE_DIR = Path(__file__).parent / "templates"
BUILTIN_TEMPLATES = ("default", "alpaca", "empty")
IGNORE_INDEX = -100
"""Label of a token that carries no loss."""
_HF_ROLES = {"user": "user", "assistant": "assistant", "observation": "tool", "function": "assistant"}
_CHOOSE = "pass --template default, alpaca or empty (or a path to a .jinja file)"

Segment = tuple[str, bool]
"""A piece of rendered text and whether it belongs to an answer turn (labelled)."""
Pair = tuple[list[int], list[int]]
"""(prompt ids, answer ids) of one turn."""


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template."""

    name: str
    """'tokenizer' for the tokenizer's own, a built-in name, or the .jinja file's path."""
    source: str
    """The Jinja source handed to ``apply_chat_template``."""

    @property
    def accepts_tools(self) -> bool:
        """Whether the template renders a ``tools`` variable (else tools go into the system text)."""
        return "tools" in self.source


@functools.lru_cache(maxsize=32)
def _read_template(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def resolve_template(tokenizer: Any, template: str | ChatTemplate | None = None) -> ChatTemplate:
    """The template to render with: ``template`` (a name or .jinja path) or the tokenizer's own.

    Raises ArgumentError (one line) for an unknown name, a missing file, or a tokenizer with
    no chat template when ``template`` is None.
    """
    if isinstance(template, ChatTemplate):
        return template
    if template is None:
        if not getattr(tokenizer, "chat_template", None):
            raise ArgumentError(f"the tokenizer has no chat template; {_CHOOSE}")
        return ChatTemplate("tokenizer", tokenizer.get_chat_template())
    if template in BUILTIN_TEMPLATES:
        return ChatTemplate(template, _read_template(str(TEMPLATE_DIR / f"{template}.jinja")))
    path = Path(template).expanduser()
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise ArgumentError(f"--template {template}: file not found")
        return ChatTemplate(str(path), _read_template(str(path.resolve())))
    raise ArgumentError(
        f"unknown --template {template!r}; use one of {', '.join(BUILTIN_TEMPLATES)}, a .jinja file, "
        "or leave it unset to use the tokenizer's own chat template"
    )


def fold_tools(system: str | None, tools: str) -> str:
    """System text with the tool descriptions appended, for templates that ignore ``tools``."""
    text = f"You have access to the following tools:\n{tools}"
    return f"{system}\n\n{text}" if system else text


def _tool_list(tools: str) -> list[dict] | None:
    """``tools`` (a JSON string) as the list of schemas ``apply_chat_template`` takes, or None."""
    try:
        value = json.loads(tools)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict):
        value = [value]
    return value if isinstance(value, list) and all(isinstance(t, dict) for t in value) else None


def _chat(
    messages: Sequence[dict[str, str]], system: str | None, tools: str | None, tpl: ChatTemplate
) -> tuple[list[dict[str, str]], list[dict] | None]:
    """Hugging Face chat messages (system first) and the tools argument for ``tpl``."""
    tool_list = _tool_list(tools) if tools else None
    if tool_list == []:  # "[]": no tools
        tools = tool_list = None
    if tools and (tool_list is None or not tpl.accepts_tools):
        system, tool_list = fold_tools(system, tools), None
    chat = [{"role": "system", "content": system}] if system is not None else []
    chat += [{"role": _HF_ROLES[m["role"]], "content": m["content"]} for m in messages]
    return chat, tool_list


def _render(tokenizer: Any, tpl: ChatTemplate, chat: list[dict], tools: list[dict] | None,
            generation_prompt: bool, origin: str) -> str:
    kwargs: dict[str, Any] = {"tools": tools} if tools is not None else {}
    try:
        text = tokenizer.apply_chat_template(
            chat, chat_template=tpl.source, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
        )
    except (TemplateError, ValueError, TypeError, RecursionError) as exc:
        raise DataError(f"{origin or 'conversation'}: chat template {tpl.name!r} failed ({one_line(exc)})") from None
    return text


def _extend(done: str, text: str, tpl: ChatTemplate, turn: int, origin: str) -> str:
    """The part of ``text`` after ``done``, which must be its prefix; ``turn`` (1-based) was just added."""
    if not text.startswith(done):
        raise DataError(
            f"{origin or 'conversation'}: chat template {tpl.name!r} renders the turns before turn {turn} "
            f"differently once turn {turn} is added, so prompt and answer tokens cannot be told apart; {_CHOOSE}"
        )
    return text[len(done):]


def conversation_segments(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    system: str | None = None,
    tools: str | None = None,
    template: str | ChatTemplate | None = None,
    add_generation_prompt: bool = False,
    origin: str = "",
) -> list[Segment]:
    """The rendered text split into alternating (prompt, False) and (answer, True) segments.

    With ``add_generation_prompt`` a final prompt segment holds the text up to where the
    model starts its answer. Cost is linear in the number of turns: each turn is rendered in a
    window holding the system text and the turn pair before it (:data:`CONTEXT_PAIRS`), and the
    pieces must add up to the whole conversation rendered at once; a template for which they do not
    (one that numbers its turns, say) is rendered prefix by prefix instead, as the module docstring
    says, which gives the same segments at a cost that grows with the square of the turns.
    """
    tpl = resolve_template(tokenizer, template)
    chat, tool_list = _chat(messages, system, tools, tpl)
    render = _Windows(tokenizer, tpl, chat, len(chat) - len(messages), tool_list, origin)
    try:
        segments = _segments(render, len(messages), add_generation_prompt, CONTEXT_PAIRS)
        if render.windowed and "".join(t for t, _ in segments) != render(0, len(messages), add_generation_prompt):
            segments = None
    except DataError:
        segments = None
    return segments if segments is not None else _segments(render, len(messages), add_generation_prompt, None)


CONTEXT_PAIRS = 1
"""Turn pairs rendered before a turn, as its context, when a conversation is rendered piece by piece."""


class _Windows:
    """Renders the head (system message) plus ``messages[start:stop]`` of one conversation."""

    def __init__(self, tokenizer: Any, tpl: ChatTemplate, chat: list[dict], n_head: int,
                 tools: list[dict] | None, origin: str):
        self.tokenizer, self.tpl, self.chat, self.n_head, self.tools = tokenizer, tpl, chat, n_head, tools
        self.origin = origin
        self.windowed = False
        """Whether a window started after the first message (then the pieces need checking)."""

    def __call__(self, start: int, stop: int, generation_prompt: bool) -> str:
        self.windowed |= start > 0
        window = self.chat[: self.n_head] + self.chat[self.n_head + start: self.n_head + stop]
        return _render(self.tokenizer, self.tpl, window, self.tools, generation_prompt, self.origin)


def _segments(render: _Windows, n: int, add_generation_prompt: bool, context: int | None) -> list[Segment]:
    """Segments of messages ``0..n-1``: each answer turn ``i`` (1, 3, ...) is rendered after the turns from
    ``start`` on (``context`` turn pairs before its prompt, or all of them when ``context`` is None)."""
    segments: list[Segment] = []
    done: tuple[tuple[int, int], str] = ((0, 0), "")  # the last rendering that ends after an answer
    ends = list(range(1, n, 2)) + ([n] if add_generation_prompt else [])
    for i in ends:  # i: an answer turn, or n for the generation prompt
        after = i - 1 if i % 2 else i  # the turns before this prompt segment: 0..after-1
        start = 0 if context is None else max(0, after - 2 * context)
        before = done[1] if done[0] == (start, after) else render(start, after, False)
        prompt = render(start, i, True)
        segments.append((_extend(before, prompt, render.tpl, i, render.origin), False))
        if i < n:
            full = render(start, i + 1, False)
            segments.append((_extend(prompt, full, render.tpl, i + 1, render.origin), True))
            done = ((start, i + 1), full)
    return segments


def tokenize_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without added special tokens (a template writes its own)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode_turns_batch(
    tokenizer: Any, conversations: Sequence[Conversation], template: str | ChatTemplate | None = None
) -> list[list[Pair]]:
    """For each conversation, its (prompt ids, answer ids) pairs, one per answer turn.

    Tokenizes all segments of all conversations in one tokenizer call.
    """
    tpl = resolve_template(tokenizer, template)
    texts: list[str] = []
    for conv in conversations:
        check_turns(conv.messages, conv.origin, require_response=True)
        texts += [text for text, _ in conversation_segments(
            tokenizer, conv.messages, conv.system, conv.tools, tpl, origin=conv.origin)]
    ids = iter(tokenize_texts(tokenizer, texts))
    out = []
    for conv in conversations:
        n_pairs = sum(m["role"] in ANSWER_ROLES for m in conv.messages)
        out.append([(next(ids), next(ids)) for _ in range(n_pairs)])
    return out


def assemble(pairs: Sequence[Pair], train_on_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Concatenate (prompt, answer) pairs into ``input_ids`` and ``labels`` (both length T).

    Labels are the answer ids and IGNORE_INDEX (-100) on prompt ids, or the ids everywhere
    with ``train_on_prompt``.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for prompt, answer in pairs:
        input_ids += prompt + answer
        labels += (prompt if train_on_prompt else [IGNORE_INDEX] * len(prompt)) + answer
    return input_ids, labels


def encode_conversation(
    tokenizer: Any, conv: Conversation, template: str | ChatTemplate | None = None, train_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """``input_ids`` and ``labels`` (each length T) of a conversation ending in an answer turn.

    Every assistant/function turn is labelled, with its end-of-turn token(s); the rest is
    -100 unless ``train_on_prompt``.
    """
    return assemble(encode_turns_batch(tokenizer, [conv], template)[0], train_on_prompt)


def _prompt_messages(
    messages: Sequence[dict[str, str]], system: str | None
) -> tuple[list[dict[str, str]], str | None]:
    """Accept OpenAI-style input too: a leading system message and 'tool' for 'observation'."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0].get("role") == "system":
        head = msgs.pop(0)
        system = head.get("content") if system is None else system
    for m in msgs:
        if m.get("role") == "tool":
            m["role"] = "observation"
    check_turns(msgs, "", require_response=False)
    if msgs[-1]["role"] not in PROMPT_ROLES:
        raise DataError(f"a prompt must end with a user or observation turn, got {msgs[-1]['role']!r}")
    return msgs, system


def render_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    system: str | None = None,
    tools: str | None = None,
    template: str | ChatTemplate | None = None,
) -> str:
    """The exact text of the generation prompt (what the model reads before answering)."""
    msgs, system = _prompt_messages(messages, system)
    return "".join(t for t, _ in conversation_segments(tokenizer, msgs, system, tools, template, True))


def encode_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    system: str | None = None,
    tools: str | None = None,
    template: str | ChatTemplate | None = None,
) -> list[int]:
    """Token ids of the generation prompt, identical to the prompt ids training used.

    ``messages`` alternate user/observation and assistant/function turns and end with a user
    or observation turn; ``encode_prompt(conv.messages[:-1], ...)`` equals the part of
    ``encode_conversation(conv)`` before the last answer.
    """
    msgs, system = _prompt_messages(messages, system)
    segments = conversation_segments(tokenizer, msgs, system, tools, template, True)
    return [i for ids in tokenize_texts(tokenizer, [t for t, _ in segments]) for i in ids]
