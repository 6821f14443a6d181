"""Encoding a conversation costs time linear in its turns, and gives the ids the incremental rendering
(every prefix rendered whole, the reference) gives: for the tokenizer's template, ours, templates that
number their turns or refuse to be split, with and without a system text, tools and a generation prompt."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softprompt.data import Conversation, DataError, encode_conversation, encode_prompt
from softprompt.data import templates
from softprompt.data.templates import _segments, _Windows, _chat, conversation_segments, resolve_template
from tests.tiny import build_tokenizer

CHAT = build_tokenizer(template=True)
BASE = build_tokenizer(template=False)
NUMBERED = "{% for m in messages %}[{{ loop.index }}:{{ m.role }}]{{ m.content }}{% endfor %}" \
           "{% if add_generation_prompt %}[{{ messages | length + 1 }}:assistant]{% endif %}"
"""A template whose turns depend on their position: rendered piece by piece they would differ."""
LOOKS_BACK = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% if loop.index0 > 2 and " \
             "messages[loop.index0 - 3].content == 'x' %}!{% endif %}{% endfor %}" \
             "{% if add_generation_prompt %}<assistant>{% endif %}"
"""A template that looks three turns back (beyond the window of one turn pair)."""


def incremental(tok, messages, system=None, tools=None, template=None, add_generation_prompt=False):
    """The reference: every prefix rendered whole (cost grows with the square of the turns)."""
    tpl = resolve_template(tok, template)
    chat, tool_list = _chat(messages, system, tools, tpl)
    render = _Windows(tok, tpl, chat, len(chat) - len(messages), tool_list, "")
    return _segments(render, len(messages), add_generation_prompt, None)


def outcome(function, *args) -> tuple[str, object]:
    """("ok", the result) or ("error", the DataError's message)."""
    try:
        return "ok", function(*args)
    except DataError as exc:
        return "error", str(exc)


def turns(contents: list[str]) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(contents)]


def template_file(tmp_path_factory, source: str) -> str:
    path = tmp_path_factory.mktemp("tpl") / "t.jinja"
    path.write_text(source)
    return str(path)


@pytest.fixture(scope="module")
def templates_to_try(tmp_path_factory):
    return [(CHAT, None), (BASE, "default"), (BASE, "alpaca"), (BASE, "empty"),
            (BASE, template_file(tmp_path_factory, NUMBERED)), (BASE, template_file(tmp_path_factory, LOOKS_BACK))]


@settings(max_examples=60, deadline=None)
@given(contents=st.lists(st.sampled_from(["", "x", "hi", " a\nb ", "Paris.", "<|im_end|>", "{{ x }}", "\u00e9t\u00e9"]),
                         min_size=1, max_size=12),
       system=st.sampled_from([None, "", "Be brief."]), tools=st.sampled_from([None, '[{"name": "add"}]']),
       which=st.integers(0, 5), generation_prompt=st.booleans())
def test_pieces_equal_the_incremental_rendering(templates_to_try, contents, system, tools, which, generation_prompt):
    tok, template = templates_to_try[which]
    messages = turns(contents)
    args = (tok, messages, system, tools, template, generation_prompt)
    assert outcome(conversation_segments, *args) == outcome(incremental, *args)


def test_long_conversation_matches_the_tokenizer_template():
    messages = turns([f"turn {i} " + "word " * (i % 7) for i in range(301)])
    conv = Conversation(messages[:300], system="Be brief.")
    ids, _ = encode_conversation(CHAT, conv)
    text = CHAT.apply_chat_template([{"role": "system", "content": "Be brief."}] + conv.messages, tokenize=False)
    assert ids == CHAT(text, add_special_tokens=False)["input_ids"]
    prompt = encode_prompt(CHAT, messages, "Be brief.")
    text = CHAT.apply_chat_template([{"role": "system", "content": "Be brief."}] + messages, tokenize=False,
                                    add_generation_prompt=True)
    assert prompt == CHAT(text, add_special_tokens=False)["input_ids"]


def test_rendering_work_is_linear_in_the_turns(monkeypatch):
    """Count the turns rendered: about 7 per turn (the system text included), whatever the length; the
    incremental way renders about n * n / 2."""
    rendered = []
    real = templates._render

    def counting(tokenizer, tpl, chat, *args):
        rendered.append(len(chat))
        return real(tokenizer, tpl, chat, *args)

    monkeypatch.setattr(templates, "_render", counting)
    for n in (101, 1001):
        rendered.clear()
        encode_prompt(CHAT, turns(["hi"] * n), "S")
        assert sum(rendered) < 8 * n, (n, sum(rendered))


def test_10000_messages_encode_in_seconds():
    """The chat that froze the server for 9 minutes (about 600 s here before): now a few seconds."""
    messages = turns([f"m{i}" for i in range(10_001)])
    start = time.perf_counter()
    ids = encode_prompt(CHAT, messages)
    took = time.perf_counter() - start
    print(f"encode_prompt of 10,001 messages: {took:.2f} s, {len(ids)} tokens")
    assert took < 30 and CHAT.decode(ids).count("<|im_start|>") == 10_003  # system, turns, generation prompt


def test_a_template_that_cannot_be_split_still_says_which_turn(tmp_path):
    path = tmp_path / "odd.jinja"
    path.write_text("{% for m in messages %}{% if loop.last and m.role == 'assistant' %}[LAST]{% endif %}"
                    "{{ m.content }}{% endfor %}")
    conv = Conversation(turns(["a", "b", "c", "d", "e", "f"]), origin="data/x.json index 4")
    with pytest.raises(DataError, match=r"^data/x.json index 4: .* turns before turn 3"):
        encode_conversation(BASE, conv, str(path))


def test_tools_given_to_a_template_that_renders_them_once(tmp_path):
    path = tmp_path / "tools.jinja"
    path.write_text("{% if tools %}[T]{{ tools | tojson }}[/T]{% endif %}"
                    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                    "{% if add_generation_prompt %}<assistant>{% endif %}")
    tools = json.dumps([{"name": "add", "description": "Add"}])
    messages = turns(["q", "a"] * 10 + ["q"])
    ours = conversation_segments(BASE, messages, None, tools, str(path), True)
    assert ours == incremental(BASE, messages, None, tools, str(path), True)
    assert "".join(t for t, _ in ours).count("[T]") == 1
