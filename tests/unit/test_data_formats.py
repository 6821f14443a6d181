"""Alpaca and ShareGPT rows -> Conversation, and the row-level errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.data import Conversation, DataError, Row, to_conversation
from softprompt.data.registry import parse_spec

INFO = Path("data/dataset_info.json")
ALPACA = parse_spec("a", {"file_name": "a.jsonl"}, INFO)
SHAREGPT = parse_spec("s", {"file_name": "s.json", "formatting": "sharegpt"}, INFO)
ORIGIN = "data/a.jsonl line 7"


def conv(data: dict, spec=ALPACA, require_response: bool = True) -> Conversation:
    return to_conversation(Row(data, ORIGIN), spec, require_response)


def error(data: dict, spec=ALPACA) -> str:
    with pytest.raises(DataError) as exc:
        conv(data, spec)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(ORIGIN + ":"), msg
    return msg


def test_alpaca_instruction_input_system_history():
    c = conv({"instruction": "Translate", "input": "good morning", "output": "Bonjour",
              "system": "Be brief.", "history": [["Hi", "Hello"], ["How are you?", "Fine"]]})
    assert c.system == "Be brief." and c.tools is None and c.origin == ORIGIN
    assert c.messages == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine"},
        {"role": "user", "content": "Translate\ngood morning"}, {"role": "assistant", "content": "Bonjour"},
    ]


def test_alpaca_optional_fields_and_custom_columns():
    c = conv({"instruction": "Say hi", "input": "", "output": "hi", "system": ""})
    assert c.messages[0]["content"] == "Say hi" and c.system is None
    spec = parse_spec("a", {"file_name": "a.json", "columns": {"prompt": "q", "response": "a", "history": "h"}}, INFO)
    c = conv({"q": "x", "a": "y", "h": json.dumps([["p", "r"]])}, spec)  # a CSV cell holds JSON text
    assert [m["content"] for m in c.messages] == ["p", "r", "x", "y"]


def test_alpaca_without_output_for_prediction():
    c = conv({"instruction": "q"}, require_response=False)
    assert c.messages == [{"role": "user", "content": "q"}]


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"instruction": 3, "output": "a"}, "'instruction' must be a string, got int"),
        ({"instruction": "q"}, "missing 'output'"),
        ({"input": None, "output": "a"}, "missing 'instruction'"),
        ({"instruction": "q", "output": ["a"]}, "'output' must be a string, got list"),
        ({"instruction": "q", "output": "a", "history": [["x"]]}, "'history' item 0 must be a [query, response]"),
        ({"instruction": "q", "output": "a", "history": "nope"}, "'history' must be a list of [query, response]"),
        ({"instruction": "q", "output": "a", "system": 1}, "'system' must be a string, got int"),
    ],
)
def test_alpaca_errors(data, expected):
    assert expected in error(data)


def test_sharegpt_system_turn_tools_and_roles():
    tools = [{"name": "add", "description": "Add numbers", "parameters": {}}]
    c = conv({"conversations": [
        {"from": "system", "value": "S"}, {"from": "human", "value": "2+2?"},
        {"from": "function_call", "value": '{"name": "add"}'}, {"from": "observation", "value": "4"},
        {"from": "gpt", "value": "It is 4."}], "tools": tools}, SHAREGPT)
    assert c.system == "S" and json.loads(c.tools) == tools
    assert [m["role"] for m in c.messages] == ["user", "function", "observation", "assistant"]
    c = conv({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
              "system": "col", "tools": '[{"name": "x"}]'}, SHAREGPT)
    assert c.system == "col" and c.tools == '[{"name": "x"}]'
    for empty in ("[]", " ", [], {}):  # glaive rows without tools say "[]"
        assert conv({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                     "tools": empty}, SHAREGPT).tools is None


def test_sharegpt_custom_tags():
    spec = parse_spec("o", {"file_name": "o.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                     "assistant_tag": "assistant"}}, INFO)
    c = conv({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, spec)
    assert c.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


@pytest.mark.parametrize(
    "turns, expected",
    [
        ([{"from": "gpt", "value": "a"}], "turn 1 has role 'assistant' but user or observation was expected"),
        ([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
         "turn 2 has role 'user' but assistant or function was expected"),
        ([{"from": "human", "value": "q"}], "must end with an assistant turn"),
        ([{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}], "'from' must be one of"),
        ([{"from": "human", "value": 5}], "'value' must be a string, got int"),
        ([{"from": "human", "value": "q"}, "a"], "turn 2 must be an object, got string"),
        ([{"from": "human", "value": "q"}, {"from": "system", "value": "a"}], "'from' must be one of"),
    ],
)
def test_sharegpt_errors(turns, expected):
    assert expected in error({"conversations": turns}, SHAREGPT)


def test_sharegpt_missing_or_bad_columns():
    assert "missing 'conversations'" in error({"messages": []}, SHAREGPT)
    assert "'conversations' must be a list of turns, got object" in error({"conversations": {"a": 1}}, SHAREGPT)
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert "'tools' must be a JSON string, a list or an object, got int" in error(
        {"conversations": turns, "tools": 3}, SHAREGPT)
