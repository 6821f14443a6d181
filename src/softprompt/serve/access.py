"""One record per generation request: its metrics and its one log line.

- :class:`AccessLog`, ASGI middleware outside every other, gives each request to a generation route a
  :class:`RequestRecord` (``request.state.record``), which the route fills in (task, tokens, finish
  reason); when the response has ended, the last chunk of a stream included, it hands the record to
  :class:`~softprompt.serve.metrics.ServeMetrics` and logs one line (logger ``softprompt``). Requests the
  guard refuses (401, 413) are counted and logged too, as task ``(unknown)``.
- :func:`timed` wraps a request's text callback so that its first text (streamed or not) is timed; the
  engine itself reports each decode step to ``ServeMetrics.step``.

The line never holds the prompt, the answer or the API key, e.g.::

    POST /v1/chat/completions task=task_a status=200 prompt_tokens=31 completion_tokens=8 ttft=0.052s total=0.180s finish=stop stream=no
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from softprompt.multitask import Result
from softprompt.serve.metrics import UNKNOWN_TASK, ServeMetrics

log = logging.getLogger("softprompt")
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
"""The routes that generate: each request to them gets a record, a metrics entry and a log line."""
CLIENT_CLOSED = 499
"""The status counted for a stream whose client went away before its end (nginx's code for it)."""
ERROR_CODES = {401: "invalid_api_key", 413: "request_too_large", CLIENT_CLOSED: "client_closed"}
"""The log's error code of a status no route gave a code for (the guard's refusals, a client gone)."""


@dataclass
class RequestRecord:
    """What one generation request did (seconds from its arrival, ``time.perf_counter`` clock)."""

    start: float
    """When the request arrived."""
    task: str = UNKNOWN_TASK
    """The task, once the request named an existing one."""
    stream: bool = False
    queued: bool = False
    """Admitted to the batcher's queue (so counted in ``requests_running``)."""
    first_text_s: float | None = None
    """Seconds to the request's first text; None while (or if) it has none."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    """Set when the whole answer was produced (and, for a stream, sent)."""
    status: int | None = None
    """The HTTP status sent; None if the app raised before answering (a 500)."""
    error: str | None = None
    """The error's code or type (``model_not_found``, ``server_error``, ...), never its message."""

    def answered(self, result: Result) -> None:
        self.prompt_tokens, self.completion_tokens = result.prompt_tokens, result.completion_tokens
        self.finish_reason = result.finish_reason


class AccessLog:
    """ASGI middleware: a :class:`RequestRecord` per generation request, then its metrics and log line."""

    def __init__(self, app: Callable, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        record = RequestRecord(time.perf_counter())
        scope.setdefault("state", {})["record"] = record

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.finish(scope, record, time.perf_counter() - record.start)

    def finish(self, scope: dict[str, Any], record: RequestRecord, seconds: float) -> None:
        status = record.status or 500
        if status == 200 and record.finish_reason is None:  # a stream that did not reach its end
            status = 500 if record.error else CLIENT_CLOSED
        if status == 200:
            self.metrics.request_done(record.task, record.prompt_tokens or 0, record.completion_tokens or 0,
                                      seconds, record.finish_reason)
        else:
            self.metrics.request_failed(record.task, status, queued=record.queued)
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s",
                access_line(scope.get("method", ""), scope["path"], record, status, seconds))


def access_line(method: str, path: str, record: RequestRecord, status: int, seconds: float) -> str:
    """The request's log line: task, status, tokens, time to first text, total time, finish reason, stream."""
    parts = [f"{method} {path} task={record.task} status={status}"]
    if record.error or status >= 400:
        parts.append(f"error={record.error or ERROR_CODES.get(status, '-')}")
    if record.prompt_tokens is not None:
        parts.append(f"prompt_tokens={record.prompt_tokens} completion_tokens={record.completion_tokens}")
    ttft = f"{record.first_text_s:.3f}s" if record.first_text_s is not None else "-"
    parts.append(f"ttft={ttft} total={seconds:.3f}s finish={record.finish_reason or '-'} "
                 f"stream={'yes' if record.stream else 'no'}")
    return " ".join(parts)


def timed(record: RequestRecord, metrics: ServeMetrics,
          on_text: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """The engine's text callback for one request: its first text timed into ``record`` (and
    ``metrics.first_token``), every piece passed on to ``on_text`` (a stream's) when there is one."""

    def text(delta: str) -> None:
        if record.first_text_s is None:
            record.first_text_s = time.perf_counter() - record.start
            metrics.first_token(record.task, record.first_text_s)
        if on_text is not None:
            on_text(delta)

    return text
