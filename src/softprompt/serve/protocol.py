"""OpenAI request/response schemas (the subset softprompt serves), as pydantic models."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from softprompt.defaults import MAX_MESSAGES, SEED_LIMIT, SEED_MIN, TEMPERATURE_MAX

DEFAULT_MAX_TOKENS = 256
"""Tokens generated for a request that gives neither ``max_tokens`` nor ``max_completion_tokens``
(the server's value since its first release; ``chat``/``predict``/``eval`` use ``defaults.MAX_NEW_TOKENS``)."""


MAX_STOP = 16
"""The most stop strings a request may give (OpenAI takes 4): each is looked for after every token."""


def max_messages_for(context: int) -> int:
    """The server's default limit on a chat request's messages: one per token of the model's context (every
    chat template spends tokens on each turn), at most :data:`MAX_MESSAGES`."""
    return max(1, min(MAX_MESSAGES, context))


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "function", "observation"]
    content: str


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=TEMPERATURE_MAX)  # the limits --temperature etc. check too
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, lt=SEED_LIMIT)  # what a torch.Generator takes

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    tools: list[dict] | None = None


class CompletionRequest(_Sampling):
    prompt: str = Field(min_length=1)


class RegisterPromptRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    path: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_response(model: str, text: str, finish: str, usage: Usage) -> dict:
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage.model_dump(),
    }


def completion_response(model: str, text: str, finish: str, usage: Usage) -> dict:
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "usage": usage.model_dump(),
    }


def chat_chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage: Usage | None = None) -> dict:
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        chunk["usage"] = usage.model_dump()
    return chunk


def completion_chunk(cid: str, model: str, text: str, finish: str | None = None) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
