"""Chat templates: label masks, prompt parity with training, named templates, tools, errors."""

from __future__ import annotations

import json

import pytest

from softprompt.config import ArgumentError
from softprompt.data import (
    IGNORE_INDEX,
    Conversation,
    DataError,
    encode_conversation,
    encode_prompt,
    render_prompt,
    resolve_template,
)
from softprompt.data.templates import conversation_segments
from tests.tiny import build_tokenizer

CHAT = build_tokenizer(template=True)
BASE = build_tokenizer(template=False)
SINGLE = Conversation([{"role": "user", "content": "Translate to French:\ngood morning"},
                       {"role": "assistant", "content": "Bonjour."}])
MULTI = Conversation([{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "Paris."},
                      {"role": "user", "content": "And of Italy?"},
                      {"role": "assistant", "content": "Rome."}], system="Be brief.")
CASES = [(CHAT, None), (BASE, "default"), (BASE, "alpaca"), (BASE, "empty"), (CHAT, "default")]


def labelled(tok, ids: list[int], labels: list[int]) -> str:
    return tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])


def test_pinned_alpaca_example_with_default_template():
    """A regression pin: the exact text and label mask of one alpaca row under --template default."""
    ids, labels = encode_conversation(BASE, SINGLE, "default")
    assert len(ids) == len(labels)
    assert BASE.decode(ids) == "Human: Translate to French:\ngood morning\nAssistant:Bonjour.<|im_end|>"
    n_prompt = labels.count(IGNORE_INDEX)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert BASE.decode(ids[:n_prompt]) == "Human: Translate to French:\ngood morning\nAssistant:"
    assert BASE.decode(ids[n_prompt:]) == "Bonjour.<|im_end|>"
    assert ids[-1] == BASE.eos_token_id


def test_tokenizer_template_labels_assistant_turns_with_im_end():
    ids, labels = encode_conversation(CHAT, MULTI)
    text = CHAT.apply_chat_template([{"role": "system", "content": "Be brief."}] + MULTI.messages, tokenize=False)
    assert ids == CHAT(text, add_special_tokens=False)["input_ids"]  # parity with the tokenizer's template
    assert labelled(CHAT, ids, labels) == "Paris.<|im_end|>\nRome.<|im_end|>\n"
    im_end = CHAT.convert_tokens_to_ids("<|im_end|>")
    labelled_im_end = [lab for lab in labels if lab == im_end]
    assert len(labelled_im_end) == 2 and ids.count(im_end) == 5  # system, 2 users, 2 answers
    assert labels[0] == IGNORE_INDEX


@pytest.mark.parametrize("tok, template", CASES)
def test_train_on_prompt_labels_everything(tok, template):
    ids, labels = encode_conversation(tok, MULTI, template, train_on_prompt=True)
    assert labels == ids


@pytest.mark.parametrize("tok, template", CASES)
@pytest.mark.parametrize("conv", [SINGLE, MULTI], ids=["single", "multi"])
def test_encode_prompt_equals_prompt_part_of_training(tok, template, conv):
    ids, labels = encode_conversation(tok, conv, template)
    prompt = encode_prompt(tok, conv.messages[:-1], conv.system, conv.tools, template)
    answer = conv.messages[-1]["content"]
    assert ids[: len(prompt)] == prompt
    assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] != IGNORE_INDEX
    assert tok.decode(ids[len(prompt):]).startswith(answer)
    text = render_prompt(tok, conv.messages[:-1], conv.system, conv.tools, template)
    assert tok.decode(prompt) == text


def test_named_templates_render_llamafactory_styles():
    assert render_prompt(BASE, SINGLE.messages[:1], template="default") == (
        "Human: Translate to French:\ngood morning\nAssistant:")
    assert render_prompt(BASE, SINGLE.messages[:1], "Be kind.", template="default") == (
        "Be kind.\nHuman: Translate to French:\ngood morning\nAssistant:")
    assert render_prompt(BASE, SINGLE.messages[:1], template="alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nTranslate to French:\ngood morning\n\n### Response:\n")
    assert render_prompt(BASE, MULTI.messages[:3], MULTI.system, template="empty") == (
        "Be brief.What is the capital of France?Paris.And of Italy?")
    ids, labels = encode_conversation(BASE, MULTI, "default")
    assert BASE.decode(ids) == ("Be brief.\nHuman: What is the capital of France?\nAssistant:Paris.<|im_end|>"
                                "\nHuman: And of Italy?\nAssistant:Rome.<|im_end|>")
    assert labelled(BASE, ids, labels) == "Paris.<|im_end|>Rome.<|im_end|>"


def test_template_errors_are_one_line_argument_errors(tmp_path):
    with pytest.raises(ArgumentError, match="no chat template; pass --template default, alpaca or empty"):
        encode_conversation(BASE, SINGLE)
    with pytest.raises(ArgumentError) as exc:
        resolve_template(CHAT, "llama3")
    assert "\n" not in str(exc.value) and "default, alpaca, empty" in str(exc.value)
    with pytest.raises(ArgumentError, match="not found"):
        resolve_template(CHAT, str(tmp_path / "mine.jinja"))


def test_template_from_a_jinja_file(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                    "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_prompt(BASE, SINGLE.messages[:1], template=str(path)) == (
        "<user>Translate to French:\ngood morning<assistant>")
    ids, labels = encode_conversation(BASE, SINGLE, str(path))
    assert labelled(BASE, ids, labels) == "Bonjour."


def test_tools_are_folded_into_the_system_text_when_the_template_ignores_them():
    tools = json.dumps([{"name": "add", "description": "Add two numbers"}])
    conv = Conversation([{"role": "user", "content": "2+2?"}, {"role": "function", "content": '{"name": "add"}'},
                         {"role": "observation", "content": "4"}, {"role": "assistant", "content": "4."}],
                        system="Be brief.", tools=tools)
    ids, labels = encode_conversation(CHAT, conv)
    text = CHAT.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou have access to the following tools:\n" + tools)
    assert "<|im_start|>tool\n4<|im_end|>" in text
    assert labelled(CHAT, ids, labels) == '{"name": "add"}<|im_end|>\n4.<|im_end|>\n'


def test_empty_tool_list_adds_nothing():
    assert render_prompt(CHAT, SINGLE.messages[:1], tools="[]") == render_prompt(CHAT, SINGLE.messages[:1])


def test_tools_are_passed_to_a_template_that_takes_them(tmp_path):
    path = tmp_path / "tools.jinja"
    path.write_text("{% if tools %}[T]{{ tools | tojson }}[/T]{% endif %}"
                    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                    "{% if add_generation_prompt %}<assistant>{% endif %}")
    tools = [{"name": "add", "description": "Add"}]
    text = render_prompt(BASE, [{"role": "user", "content": "hi"}], None, json.dumps(tools), str(path))
    assert text == '[T][{"name": "add", "description": "Add"}][/T]<user>hi<assistant>'


def test_openai_style_prompt_messages():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"}, {"role": "tool", "content": "r"}]
    text = render_prompt(CHAT, messages)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>tool\nr<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(DataError, match="must end with a user or observation turn"):
        encode_prompt(CHAT, messages[:3])


def test_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    path = tmp_path / "odd.jinja"
    path.write_text("{% for m in messages %}{% if loop.last and m.role == 'assistant' %}[LAST]{% endif %}"
                    "{{ m.content }}{% endfor %}")
    conv = Conversation(MULTI.messages, origin="data/x.json index 4")
    with pytest.raises(DataError) as exc:
        encode_conversation(BASE, conv, str(path))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("data/x.json index 4:") and "turns before turn 3" in msg


def test_template_exception_names_the_row(tmp_path):
    path = tmp_path / "strict.jinja"
    path.write_text("{% if messages[0].role == 'system' %}{{ raise_exception('no system please') }}{% endif %}")
    with pytest.raises(DataError, match=r"^data/x.json index 4: chat template .* failed \(no system please\)$"):
        encode_conversation(BASE, Conversation(MULTI.messages, "S", origin="data/x.json index 4"), str(path))


def test_segments_alternate_prompt_and_answer():
    segments = conversation_segments(CHAT, MULTI.messages, MULTI.system)
    assert [flag for _, flag in segments] == [False, True, False, True]
    assert segments[1][0] == "Paris.<|im_end|>\n"
