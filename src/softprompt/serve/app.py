"""FastAPI app: OpenAI-compatible endpoints over a MultiTaskPredictor and its engine (the continuous-batching
:class:`~softprompt.serve.scheduler.Scheduler`, or the batch-at-a-time Batcher where the slot path does not fit).

``model`` in a request is the task name (an adapter folder under ``--prompts_dir``, or ``base``).
Errors use OpenAI's JSON shape: unknown task 404, malformed body 400, prompt too long 400,
bad or missing API key 401, body over the size limit 413, full queue 503, anything unexpected 500
(logged, without the request). The API key and the size limit are checked in front of every
route by :class:`~softprompt.serve.guard.Guard` (``/metrics`` included); the number of messages
(``max_messages``) before any work. Prompts are encoded on a worker thread, never on the event loop,
so that no request holds up ``/health`` or the others; a refused task or registration path is logged
in one line. Every generation request is counted in ``GET /metrics`` and logged in one line by
:class:`~softprompt.serve.access.AccessLog`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from softprompt.data import DataError
from softprompt.data.formats import check_unicode
from softprompt.defaults import MAX_NUM_BATCHED_TOKENS
from softprompt.engine.generate import SamplingParams
from softprompt.files import one_line
from softprompt.prompts import TaskUnavailableError, UnknownTaskError
from softprompt.multitask import ContextLengthError, MultiTaskPredictor, Request as GenRequest, Result
from softprompt.serve import protocol as P
from softprompt.serve.access import AccessLog, RequestRecord, timed
from softprompt.serve.batcher import Batcher, Job, QueueFullError
from softprompt.serve.scheduler import Scheduler, make_engine
from softprompt.serve.guard import Guard
from softprompt.serve.metrics import CONTENT_TYPE, ServeMetrics

log = logging.getLogger("softprompt")
LOGGED_PARAMS = ("model", "path")
"""A refusal of a task (unknown, or its folder bad) or of a registration path is logged, in one line."""


class ServeError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def _error(exc: ServeError) -> JSONResponse:
    message = exc.message.encode("utf-8", "backslashreplace").decode()  # a lone surrogate from a name or path
    return JSONResponse(P.error_body(message, exc.type, exc.code, exc.param), status_code=exc.status)


def _validation_error(exc: RequestValidationError) -> ServeError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request")
    code = "array_above_max_length" if first.get("type") == "too_long" else None  # OpenAI's code for a long list
    return ServeError(400, message, code=code, param=param)


def _handle_errors(app: FastAPI) -> None:
    """Every error answers in OpenAI's JSON shape; an unexpected one is logged in one line, without the request."""

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        if exc.param in LOGGED_PARAMS:
            log.warning("%s %s: %d %s", request.method, request.url.path, exc.status, one_line(exc.message, 300))
        _note_error(request, exc)
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        error = _validation_error(exc)
        _note_error(request, error)
        return _error(error)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):  # unknown path, wrong method, unreadable body
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error = ServeError(exc.status_code, str(exc.detail), type_)
        _note_error(request, error)
        return _error(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(ServeError(500, "internal error; the server logged it", "server_error"))


def _note_error(request: Request, exc: ServeError) -> None:
    """Put the error's code (never its message) on the request's record, for its log line."""
    record: RequestRecord | None = getattr(request.state, "record", None)
    if record is not None:
        record.error = exc.code or exc.type


def create_app(predictor: MultiTaskPredictor, api_key: str | None = None, max_num_seqs: int = 8,
               max_model_len: int | None = None, max_queue: int = 64, max_body_bytes: int = 1 << 20,
               max_messages: int | None = None, metrics: ServeMetrics | None = None, compile: bool = False,
               prefix_cache_mb: float = 64, max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS) -> FastAPI:
    """The app over a :class:`~softprompt.serve.scheduler.Scheduler` (``max_num_seqs`` slots of ``max_model_len``
    tokens; ``metrics.step`` called once per decode step). ``max_messages`` bounds the messages of a chat request
    (None: one per token of the model's context, :func:`~softprompt.serve.protocol.max_messages_for`; never over
    ``protocol.MAX_MESSAGES``)."""
    metrics = metrics or ServeMetrics()
    batcher = make_engine(predictor, max_num_seqs, max_model_len, max_queue, metrics, compile,
                          int(prefix_cache_mb * 2**20), max_num_batched_tokens)
    max_messages = min(max_messages or P.max_messages_for(predictor.max_context), P.MAX_MESSAGES)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        gc.collect()
        gc.freeze()  # the ~400k objects of torch, transformers and the model: a full collection walked them in
        yield        # 0.3 s (seconds on a busy machine), every request stalled meanwhile
        await asyncio.to_thread(batcher.stop)  # requests in flight finish first

    app = FastAPI(title="softprompt", lifespan=lifespan)
    app.state.batcher = app.state.engine = batcher  # .queue_depth(), .running()
    app.state.predictor, app.state.metrics = predictor, metrics

    _handle_errors(app)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    app.add_middleware(AccessLog, metrics=metrics)  # added last: outside the guard, so its 401s and 413s count

    _info_routes(app, predictor, metrics)
    _generation_routes(app, Served(batcher, predictor, metrics), max_messages)
    return app


def _info_routes(app: FastAPI, predictor: MultiTaskPredictor, metrics: ServeMetrics) -> None:
    """``/health``, ``/metrics``, ``/v1/models``, ``/v1/prompts``."""

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "tasks": len(predictor.registry.names())}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "softprompt"}
                for n in predictor.registry.names()]
        return {"object": "list", "data": data}

    @app.post("/v1/prompts")
    async def register(body: P.RegisterPromptRequest) -> dict:
        try:
            await asyncio.to_thread(predictor.registry.register, body.name, body.path)
        except TaskUnavailableError as exc:
            raise ServeError(400, str(exc), param="path") from None
        return {"id": body.name, "object": "model", "created": 0, "owned_by": "softprompt"}


def _generation_routes(app: FastAPI, served: Served, max_messages: int) -> None:
    """``/v1/chat/completions`` and ``/v1/completions``; each request's record is ``request.state.record``
    (:class:`~softprompt.serve.access.AccessLog` made it)."""
    predictor = served.predictor

    @app.post("/v1/chat/completions")
    async def chat(body: P.ChatCompletionRequest, http: Request):
        record: RequestRecord = http.state.record
        record.stream = bool(body.stream)
        _refuse_if_full(served.batcher)
        if len(body.messages) > max_messages:
            raise ServeError(400, f"messages: {len(body.messages)} messages, over this server's limit of "
                             f"{max_messages}", code="array_above_max_length", param="messages")
        request = await asyncio.to_thread(_chat_request, predictor, served.batcher, body, record)  # not on the event loop
        return await _answer(served, record, body, request, chat=True)

    @app.post("/v1/completions")
    async def complete(body: P.CompletionRequest, http: Request):
        record: RequestRecord = http.state.record
        record.stream = bool(body.stream)
        _refuse_if_full(served.batcher)
        request = await asyncio.to_thread(_completion_request, predictor, served.batcher, body, record)
        return await _answer(served, record, body, request, chat=False)


def _refuse_if_full(batcher: Scheduler | Batcher) -> None:
    """503 at once, before any work, when the queue is full (submit checks again: it may fill meanwhile)."""
    if batcher.full():
        raise ServeError(503, f"the server is busy: {batcher.max_queue} requests are waiting", "server_error",
                         "overloaded")


@dataclass
class Served:
    """What answering a generation request needs: the engine, the predictor under it, the metrics."""

    batcher: Scheduler | Batcher
    predictor: MultiTaskPredictor
    metrics: ServeMetrics

    def submit(self, request: GenRequest, record: RequestRecord, on_text: Callable[[str], None] | None = None) -> Job:
        """Queue ``request`` (503 when the queue is full), its first text timed into ``record``."""
        try:
            job = self.batcher.submit(request, on_text=timed(record, self.metrics, on_text))
        except QueueFullError as exc:
            raise ServeError(503, str(exc), "server_error", "overloaded") from None
        record.queued = True
        self.metrics.request_queued(record.task)
        return job


def _chat_request(predictor: MultiTaskPredictor, engine: Scheduler | Batcher, body: P.ChatCompletionRequest,
                  record: RequestRecord) -> GenRequest:
    """The generation request of a chat body: its messages through the chat template (on a worker thread)."""
    messages = [m.model_dump() for m in body.messages]
    try:
        tools = json.dumps(body.tools) if body.tools else None
        for i, m in enumerate(messages):
            check_unicode(m["content"], f"messages.{i}.content")
        check_unicode(tools, "tools")
        ids = predictor.chat_ids(messages, tools)
    except RecursionError:
        raise ServeError(400, "tools: nested too deeply", param="tools") from None
    except DataError as exc:
        raise ServeError(400, str(exc), param="messages") from None
    return _request(engine, body, ids, record)


def _completion_request(predictor: MultiTaskPredictor, engine: Scheduler | Batcher, body: P.CompletionRequest,
                        record: RequestRecord) -> GenRequest:
    try:
        check_unicode(body.prompt, "prompt")
    except DataError as exc:
        raise ServeError(400, str(exc), param="prompt") from None
    return _request(engine, body, predictor.text_ids(body.prompt), record)


def _request(engine: Scheduler | Batcher, body: P._Sampling, ids: list[int], record: RequestRecord) -> GenRequest:
    """The generation request; ``record.task`` is set once the task is known to exist."""
    max_tokens = body.max_completion_tokens or body.max_tokens or P.DEFAULT_MAX_TOKENS
    params = SamplingParams(max_tokens, body.temperature, body.top_p, body.top_k, body.seed)
    request = GenRequest(body.model, ids, params, body.stop_list())
    try:
        engine.check(request)
    except UnknownTaskError:
        raise ServeError(404, f"the model (task) {one_line(repr(body.model), 100)} does not exist; GET /v1/models "
                         "lists them", code="model_not_found", param="model") from None
    except TaskUnavailableError as exc:
        raise ServeError(400, str(exc), param="model") from None
    except ContextLengthError as exc:
        record.task = body.model
        raise ServeError(400, str(exc), code="context_length_exceeded", param="messages") from None
    record.task = body.model
    return request


def _usage(result: Result) -> P.Usage:
    return P.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                   total_tokens=result.prompt_tokens + result.completion_tokens)


async def _answer(served: Served, record: RequestRecord, body: P._Sampling, request: GenRequest, chat: bool):
    if body.stream:
        return StreamingResponse(_stream(served, record, request, body.model, chat), media_type="text/event-stream")
    job = served.submit(request, record)
    result: Result = await served.batcher.result(job)
    record.answered(result)
    make = P.chat_response if chat else P.completion_response
    return make(body.model, result.text, result.finish_reason, _usage(result))


def _stream(served: Served, record: RequestRecord, request: GenRequest, model: str, chat: bool) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of final text, then the finish chunk and [DONE]."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[str | None] = asyncio.Queue()
    job = served.submit(request, record, on_text=lambda d: loop.call_soon_threadsafe(deltas.put_nowait, d))
    job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(deltas.put_nowait, None))
    cid = P.new_id("chatcmpl" if chat else "cmpl")

    async def events() -> AsyncIterator[str]:
        try:
            if chat:
                yield _sse(P.chat_chunk(cid, model, {"role": "assistant", "content": ""}))
            while (delta := await deltas.get()) is not None:
                chunk = P.chat_chunk(cid, model, {"content": delta}) if chat else P.completion_chunk(cid, model, delta)
                yield _sse(chunk)
            result: Result = job.future.result()
            record.answered(result)
            final = (P.chat_chunk(cid, model, {}, result.finish_reason, _usage(result)) if chat
                     else P.completion_chunk(cid, model, "", result.finish_reason))
            yield _sse(final)
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the stream has begun: report in-band, OpenAI style
            record.error = "server_error"
            yield _sse(P.error_body(str(exc), "server_error"))
        finally:
            job.cancelled = True

    return events()


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
