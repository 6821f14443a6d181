"""Alpaca and ShareGPT rows -> one uniform :class:`Conversation`.

Alpaca (LLaMA-Factory's column names by default)::

    {"instruction": "...", "input": "...", "output": "...", "system": "...", "history": [["q", "r"], ...]}

The user turn is ``instruction + "\\n" + input`` (either may be absent or empty), ``history``
pairs become earlier user/assistant turns, ``output`` the final assistant turn.

ShareGPT::

    {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}],
     "system": "...", "tools": "[{...}]"}

A leading system turn becomes ``system``; after it user/observation turns (1st, 3rd, ...)
and assistant/function turns (2nd, 4th, ...) must alternate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import DataError, type_name
from .registry import DatasetSpec, Row

PROMPT_ROLES = ("user", "observation")
"""Roles of the turns the model reads (odd turns, 1-based)."""
ANSWER_ROLES = ("assistant", "function")
"""Roles of the turns the model writes and is trained on (even turns, 1-based)."""


@dataclass
class Conversation:
    """One training example: alternating turns plus an optional system text and tool list."""

    messages: list[dict[str, str]]
    """Turns ``{"role": "user"|"assistant"|"observation"|"function", "content": str}``, user first."""
    system: str | None = None
    """System text; None lets the template use its default."""
    tools: str | None = None
    """Tool descriptions as a JSON string (a list of function schemas), or None."""
    origin: str = ""
    """Where the row came from (``data/foo.jsonl line 7``), for error messages."""

    def prompt_and_answer(self) -> tuple[list[dict[str, str]], str]:
        """(the turns up to the last prompt, the last answer or "" when the conversation has none)."""
        msgs = list(self.messages)
        if msgs and msgs[-1]["role"] in ANSWER_ROLES:
            return msgs[:-1], msgs[-1]["content"]
        return msgs, ""


def check_turns(messages: list[dict[str, str]], origin: str, require_response: bool = True) -> None:
    """Raise DataError unless ``messages`` alternate prompt/answer roles, user first.

    With ``require_response`` the last turn must be an assistant or function turn (training
    needs something to learn); without it, a conversation may also end on a prompt turn.
    """
    where = origin or "conversation"
    if not messages:
        raise DataError(f"{where}: the conversation has no turns")
    for i, msg in enumerate(messages):
        expected = PROMPT_ROLES if i % 2 == 0 else ANSWER_ROLES
        if msg.get("role") not in expected:
            raise DataError(
                f"{where}: turn {i + 1} has role {msg.get('role')!r} but {' or '.join(expected)} was expected "
                "(user/observation and assistant/function turns must alternate, user first)"
            )
        if not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: turn {i + 1} content must be a string, got {type_name(msg.get('content'))}")
    if require_response and messages[-1]["role"] not in ANSWER_ROLES:
        raise DataError(f"{where}: the conversation must end with an assistant turn to train on, "
                        f"got {messages[-1]['role']!r}")


def to_conversation(row: Row, spec: DatasetSpec, require_response: bool = True) -> Conversation:
    """Convert one raw row of ``spec``'s dataset (alpaca or sharegpt) into a Conversation."""
    if spec.formatting == "sharegpt":
        conv = _sharegpt(row, spec.columns, spec.tags, require_response)
    else:
        conv = _alpaca(row, spec.columns, require_response)
    check_turns(conv.messages, row.origin, require_response)
    texts = [("system", conv.system), ("tools", conv.tools)]
    texts += [(f"turn {i + 1} ({m['role']})", m["content"]) for i, m in enumerate(conv.messages)]
    for what, text in texts:
        check_unicode(text, f"{row.origin}: {what}")
    return conv


def check_unicode(text: str | None, where: str) -> None:
    """Raise DataError if ``text`` cannot be encoded as UTF-8 (a lone surrogate such as a JSON
    ``"\\ud800"`` escape), which no tokenizer accepts."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{where} holds a lone surrogate (U+{ord(text[exc.start]):04X} at character {exc.start}); "
                        "it is not valid Unicode text") from None


def _get_str(row: Row, key: str | None, required: bool = False) -> str | None:
    """The string in column ``key``; None when absent (or null / empty and not required)."""
    if not key or key not in row.data or row.data[key] is None:
        if required:
            raise DataError(f"{row.origin}: missing {key!r}")
        return None
    value = row.data[key]
    if not isinstance(value, str):
        raise DataError(f"{row.origin}: {key!r} must be a string, got {type_name(value)}")
    return value


def _get_list(row: Row, key: str | None, what: str) -> list | None:
    """The list in column ``key`` (a JSON string of one is accepted, as CSV cells are text)."""
    if not key or row.data.get(key) in (None, ""):
        return None
    value = row.data[key]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise DataError(f"{row.origin}: {key!r} must be {what} (or a JSON string of one), "
                            "got a string that is not JSON") from None
    if not isinstance(value, list):
        raise DataError(f"{row.origin}: {key!r} must be {what}, got {type_name(value)}")
    return value


def _alpaca(row: Row, cols: dict[str, str], require_response: bool) -> Conversation:
    instruction = _get_str(row, cols["prompt"])
    query = _get_str(row, cols["query"])
    if instruction is None and query is None:
        raise DataError(f"{row.origin}: missing {cols['prompt']!r} (alpaca rows need an instruction)")
    response = _get_str(row, cols["response"], required=require_response)
    messages: list[dict[str, str]] = []
    history = _get_list(row, cols.get("history"), "a list of [query, response] pairs")
    for i, pair in enumerate(history or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise DataError(f"{row.origin}: {cols['history']!r} item {i} must be a [query, response] "
                            f"pair of strings, got {json.dumps(pair, ensure_ascii=False)[:80]}")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = "\n".join(part for part in (instruction, query) if part)
    messages.append({"role": "user", "content": user})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    system = _get_str(row, cols.get("system")) or None
    return Conversation(messages, system, None, row.origin)


def _sharegpt(row: Row, cols: dict[str, str], tags: dict[str, str], require_response: bool) -> Conversation:
    turns = _get_list(row, cols["messages"], "a list of turns")
    if turns is None:
        raise DataError(f"{row.origin}: missing {cols['messages']!r} (sharegpt rows need a list of turns)")
    if not turns:
        raise DataError(f"{row.origin}: {cols['messages']!r} is empty (sharegpt rows need at least a user "
                        "and an assistant turn)")
    role_of = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant",
               tags["observation_tag"]: "observation", tags["function_tag"]: "function"}
    system = None
    messages = []
    for i, turn in enumerate(turns):
        where = f"{row.origin}: {cols['messages']!r} turn {i + 1}"
        if not isinstance(turn, dict):
            raise DataError(f"{where} must be an object, got {type_name(turn)}")
        role, content = turn.get(tags["role_tag"]), turn.get(tags["content_tag"])
        if not isinstance(content, str):
            raise DataError(f"{where}: {tags['content_tag']!r} must be a string, got {type_name(content)}")
        if i == 0 and role == tags["system_tag"]:
            system = content
            continue
        if not isinstance(role, str) or role not in role_of:
            known = ", ".join(repr(t) for t in role_of)
            raise DataError(f"{where}: {tags['role_tag']!r} must be one of {known} "
                            f"(or {tags['system_tag']!r} first), got {role!r}")
        messages.append({"role": role_of[role], "content": content})
    system = system or _get_str(row, cols.get("system")) or None
    return Conversation(messages, system, _get_tools(row, cols.get("tools")), row.origin)


def _get_tools(row: Row, key: str | None) -> str | None:
    """The tools column as a JSON string (a string is kept, a list or object serialised); None if empty."""
    if not key or row.data.get(key) in (None, "", []):
        return None
    value = row.data[key]
    if isinstance(value, str):
        try:
            empty = json.loads(value) in ([], {})
        except (ValueError, RecursionError):
            empty = False
        return None if empty or not value.strip() else value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False) if value else None
    raise DataError(f"{row.origin}: {key!r} must be a JSON string, a list or an object, got {type_name(value)}")
