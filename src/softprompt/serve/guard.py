"""ASGI middleware in front of every route: the API key, then the body size limit.

- With an API key, every path but ``/health`` needs ``Authorization: Bearer KEY`` (the docs and
  unknown paths included), else 401. The key is compared in constant time (both sides hashed
  first, so not even its length leaks) and never logged or echoed.
- A body over ``max_body_bytes`` gets 413 whether it declares its length or arrives in chunks:
  the body is read here up to the limit and handed to the app whole, so a request never holds
  more than the limit in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from softprompt.serve.protocol import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
OPEN_PATHS = ("/health",)
"""Paths served without the API key."""


def _digest(text: bytes) -> bytes:
    return hashlib.sha256(text).digest()


def key_matches(authorization: bytes, api_key: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <api_key>``, in constant time."""
    scheme, _, token = authorization.partition(b" ")
    ok_scheme = scheme.lower() == b"bearer"
    return hmac.compare_digest(_digest(token.strip()), _digest(api_key.encode())) and ok_scheme


async def send_error(send: Send, status: int, message: str, type_: str, code: str) -> None:
    body = json.dumps(error_body(message, type_, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Wraps an ASGI app: API key check, then body size limit (see the module docstring)."""

    def __init__(self, app: Callable, api_key: str | None = None, max_body_bytes: int = 1 << 20):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            if not key_matches(headers.get(b"authorization", b""), self.api_key):
                await send_error(send, 401, "invalid or missing API key", "authentication_error", "invalid_api_key")
                return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send, int(declared))
            return
        body, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send, None)
                return
            body.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(body), receive), send)

    async def _too_large(self, send: Send, declared: int | None) -> None:
        what = f"request body of {declared} bytes" if declared is not None else "request body"
        await send_error(send, 413, f"{what} is over the {self.max_body_bytes}-byte limit", "invalid_request_error",
                         "request_too_large")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body once, then the client's own messages (a
    streaming response learns of a disconnect through them)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
