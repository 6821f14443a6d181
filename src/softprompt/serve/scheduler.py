"""Continuous batching: one thread owns a running batch of slots; requests join and leave at every step.

Each iteration of the loop (:meth:`Scheduler._loop`):

1. **admit**: while a slot is free, a waiting request takes it; its task's prefix K/V (soft prompt and the
   chat template's opening, :class:`~softprompt.serve.prefixes.TaskPrefixes`) is copied into the slot;
2. **prefill**: at most ``prefill_chunk`` prompt tokens run, the chunks of several requests in one forward
   (a row each, right-padded), so a long prompt never holds up the others for more than a chunk; the
   rows of similar length go together, so that padding stays under a quarter of the forward
   (:func:`plan_prefill`);
3. **sample**: every row whose prompt is in picks its next token (one vectorised call); rows that end
   (EOS, a stop string, ``max_new_tokens``, a client gone) answer and free their slot, and the highest
   rows move down into the freed slots (:meth:`Scheduler._compact`), so a step never runs dead rows;
4. **decode**: one forward for all running rows (slots ``0..n-1``), each at its own position in its own slot.

Memory is the preallocated pool of :class:`~softprompt.engine.slots.SlotRunner` (``max_num_seqs`` slots of
``max_model_len`` columns): a request that does not fit waits in the bounded queue; a full queue refuses
(the HTTP layer answers 503). A request that fails (its task gone, its prefill raising) fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from softprompt.defaults import MAX_NUM_BATCHED_TOKENS
from softprompt.engine.sampling import sample
from softprompt.engine.slots import SlotRunner
from softprompt.multitask import ContextLengthError, MultiTaskPredictor, Request, Result, TextStream
from softprompt.serve.batcher import Job, QueueFullError
from softprompt.serve.prefixes import TaskPrefixes

log = logging.getLogger("softprompt")
DEFAULT_MAX_MODEL_LEN = 1024
"""Tokens per slot when --max_model_len is not given (and the model's context is longer)."""
PADDING_WASTE = 0.25
"""At most this share of a prefill forward's tokens is padding (see :func:`plan_prefill`)."""


def plan_prefill(todo: list[int], budget: int, waste: float = PADDING_WASTE) -> tuple[list[int], int]:
    """Which waiting rows prefill in this step, and the width W of the step: ``todo`` holds each row's prompt
    tokens still to run, oldest row first. The oldest row always runs; each later row joins when the step
    still fits the budget (rows x W <= ``budget``, W = the longest chunk, a chunk = at most ``budget``
    tokens) and at most ``waste`` of it is padding; a row that would break either waits for a later step.
    Rows are never cut below their length (a cut leaves a short remainder, a row of its own later).
    Returns (the joining rows' indexes into ``todo``, W)."""
    chosen, width, real = [0], min(todo[0], budget), min(todo[0], budget)
    for i, left in enumerate(todo[1:], 1):
        w = max(width, min(left, budget))
        r = real + min(left, w)
        if (len(chosen) + 1) * w <= budget and (len(chosen) + 1) * w - r <= waste * (len(chosen) + 1) * w:
            chosen.append(i)
            width, real = w, r
    return chosen, width


class Metrics(Protocol):
    """What the scheduler reports once per decode step (``softprompt.serve.metrics`` implements it)."""

    def step(self, batch_size: int, queue_depth: int, new_tokens: int) -> None: ...


@dataclass
class _Row:
    """A request in a slot."""

    job: Job
    slot: int
    seq: int
    """Arrival order (the oldest prefills first)."""
    todo: list[int]
    """Prompt ids still to prefill."""
    length: int
    """Columns of the slot filled so far: the position of the next token to run."""
    stream: TextStream
    generator: torch.Generator | None
    out: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None
    """(V,) the next token's logits, once the prompt is in."""
    token: int = 0
    """The token to run in the next decode step."""


class Scheduler:
    """The engine behind ``softprompt serve``: submit requests, await their results."""

    def __init__(self, predictor: MultiTaskPredictor, runner: SlotRunner, max_queue: int = 64,
                 prefill_chunk: int = MAX_NUM_BATCHED_TOKENS, metrics: Metrics | None = None, prefix_cache_bytes: int = 64 * 2**20):
        self.predictor, self.runner, self.metrics = predictor, runner, metrics
        self.prefill_chunk = prefill_chunk
        self.max_model_len = runner.max_model_len
        self.prefixes = TaskPrefixes(predictor, prefix_cache_bytes)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._rows: dict[int, _Row] = {}  # slot -> row
        self._eos = set(predictor.eos_token_ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="softprompt-scheduler", daemon=True)
        self.steps = 0
        self._arrivals = 0

    # --- the API the HTTP layer uses -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running and the queued requests, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def max_queue(self) -> int:
        return self._queue.maxsize

    def full(self) -> bool:
        return self._queue.full()

    def queue_depth(self) -> int:
        """Requests waiting for a slot."""
        return self._queue.qsize()

    def running(self) -> int:
        """Requests in a slot (prefilling or decoding)."""
        return len(self._rows)

    def check(self, request: Request) -> None:
        """The predictor's checks, and the slot size: soft prompt + prompt + max_tokens <= ``max_model_len``."""
        self.predictor.check(request)
        prefix = self.predictor.registry.prefix(request.task)
        total = len(request.prompt_ids) + (prefix.length if prefix is not None else 0) + request.params.max_new_tokens
        if total > self.max_model_len:
            raise ContextLengthError(f"prompt ({len(request.prompt_ids)} tokens) + soft prompt + max_tokens "
                                     f"({request.params.max_new_tokens}) = {total} exceeds this server's "
                                     f"--max_model_len {self.max_model_len}")

    def submit(self, request: Request, on_text: Callable[[str], None] | None = None) -> Job:
        job = Job(request, on_text=on_text)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"the server is busy: {self._queue.maxsize} requests are waiting") from None
        return job

    async def result(self, job: Job) -> Result:
        return await asyncio.wrap_future(job.future)

    # --- the loop ---------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty() and not self._rows):
            self._admit(block=not self._rows)
            if not self._rows:
                continue
            self._prefill()
            ready = [row for row in self._rows.values() if row.logits is not None]
            if ready:
                self._sample(ready)
            self._compact()
            self._decode()

    def _admit(self, block: bool) -> None:
        """Give free slots to waiting requests (waiting up to 0.1 s for one when nothing runs)."""
        free = [s for s in range(self.runner.max_num_seqs) if s not in self._rows]
        while free:
            try:
                job = self._queue.get(timeout=0.1) if block else self._queue.get_nowait()
            except queue.Empty:
                return
            block = False
            if job.cancelled or not job.future.set_running_or_notify_cancel():
                continue
            try:
                self._start(job, free[0])
                free.pop(0)
            except Exception as exc:  # noqa: BLE001 - its task went away or broke: this request alone fails
                log.error("request for task %r failed: %s: %s", job.request.task, type(exc).__name__, exc)
                job.future.set_exception(exc)

    def _start(self, job: Job, slot: int) -> None:
        r = job.request
        prefix, covered = self.prefixes.get(r.task, r.prompt_ids)
        length = self.runner.load(slot, prefix)
        seed = r.params.seed
        generator = torch.Generator(self.runner.device).manual_seed(seed) if seed is not None else None
        stream = TextStream(self.predictor.lm.tokenizer, r.stop, job.emit if job.on_text is not None else None)
        self._arrivals += 1
        self._rows[slot] = _Row(job, slot, self._arrivals, list(r.prompt_ids[covered:]), length, stream, generator)

    def _prefill(self) -> None:
        """Run up to ``prefill_chunk`` prompt tokens of the waiting rows, oldest first, in one forward (a row per
        request, chosen by :func:`plan_prefill`)."""
        for row in [r for r in self._rows.values() if r.todo and r.job.cancelled]:
            self._finish(row)
        waiting = sorted((r for r in self._rows.values() if r.todo), key=lambda r: r.seq)
        if not waiting:
            return
        chosen, width = plan_prefill([len(r.todo) for r in waiting], self.prefill_chunk)
        batch = []
        for row in (waiting[i] for i in chosen):
            chunk, row.todo = row.todo[:width], row.todo[width:]
            batch.append((row, chunk))
        self._run_prefill(batch)

    def _compact(self) -> None:
        """Move the highest rows down into free slots, so the n running rows hold slots 0..n-1 (a decode step
        runs every slot up to the highest; a move copies the row's filled columns, exactly)."""
        holes = [s for s in range(len(self._rows)) if s not in self._rows]
        for hole in holes:
            top = max(self._rows)
            row = self._rows.pop(top)
            self.runner.move(top, hole, row.length)
            row.slot = hole
            self._rows[hole] = row

    def _run_prefill(self, batch: list[tuple[_Row, list[int]]]) -> None:
        """One forward for the rows' chunks; if it raises, each row alone again, so a failure fails only its own
        request."""
        try:
            logits = self.runner.prefill_many([row.slot for row, _ in batch], [chunk for _, chunk in batch],
                                              [row.length for row, _ in batch])  # (B, V)
        except Exception as exc:  # noqa: BLE001 - this request alone fails
            if len(batch) > 1:
                for item in batch:
                    self._run_prefill([item])
                return
            row = batch[0][0]
            log.error("prefill for task %r failed: %s: %s", row.job.request.task, type(exc).__name__, exc)
            self._finish(row, exc)
            return
        for (row, chunk), row_logits in zip(batch, logits):
            row.length += len(chunk)
            if not row.todo:
                row.logits = row_logits

    def _sample(self, ready: list[_Row]) -> None:
        """Next token of every ready row at once; rows that end answer and leave."""
        params = [row.job.request.params for row in ready]
        device = ready[0].logits.device
        tokens = sample(torch.stack([row.logits for row in ready]),  # (R, V)
                        torch.tensor([p.temperature for p in params], device=device),
                        torch.tensor([p.top_k for p in params], device=device),
                        torch.tensor([p.top_p for p in params], device=device),
                        [row.generator for row in ready]).tolist()
        new = 0
        for row, token in zip(ready, tokens):
            row.logits = None
            if token in self._eos:
                self._finish(row)
                continue
            row.out.append(token)
            new += 1
            try:
                stopped = row.stream.push(token)
            except Exception:  # noqa: BLE001 - the client's callback failed: it is gone
                row.job.cancelled, stopped = True, True
            if stopped or row.job.cancelled or len(row.out) >= row.job.request.params.max_new_tokens:
                self._finish(row)
            else:
                row.token = token
        self.steps += 1
        if self.metrics is not None:
            self.metrics.step(len(ready), self.queue_depth(), new)

    def _decode(self) -> None:
        """One forward for every row that has a token to run (slots 0..n-1; the others only fill the step)."""
        rows = [row for row in self._rows.values() if not row.todo and row.logits is None]
        if not rows:
            return
        n = max(row.slot for row in rows) + 1
        tokens = torch.zeros(n, dtype=torch.long)
        positions = torch.zeros(n, dtype=torch.long)
        live = torch.zeros(n, dtype=torch.bool)
        for row in rows:
            tokens[row.slot], positions[row.slot], live[row.slot] = row.token, row.length, True
        device = self.runner.device
        try:
            logits = self.runner.decode(tokens.to(device), positions.to(device), live.to(device))  # (n, V)
        except Exception as exc:  # noqa: BLE001 - a broken step fails the rows in it, not the server
            log.error("decode step of %d requests failed: %s: %s", len(rows), type(exc).__name__, exc)
            for row in rows:
                self._finish(row, exc)
            return
        for row in rows:
            row.logits, row.length = logits[row.slot], row.length + 1

    def _finish(self, row: _Row, error: Exception | None = None) -> None:
        """Answer the row's request and free its slot."""
        del self._rows[row.slot]
        if error is not None:
            row.job.future.set_exception(error)
            return
        try:
            row.stream.flush()
        except Exception:  # noqa: BLE001 - the client is gone; the result is still set
            pass
        r = row.job.request
        hit_length = len(row.out) >= r.params.max_new_tokens and not row.stream.stopped
        row.job.future.set_result(Result(row.stream.text, row.out, "length" if hit_length else "stop",
                                         len(r.prompt_ids), len(row.out)))


def make_engine(predictor: MultiTaskPredictor, max_num_seqs: int, max_model_len: int | None, max_queue: int,
                metrics: Metrics | None = None, compile: bool = False, prefix_cache_bytes: int = 64 * 2**20,
                prefill_chunk: int = MAX_NUM_BATCHED_TOKENS):
    """A :class:`Scheduler` over a fresh slot pool; for a model the slot path does not fit (checked by
    :meth:`SlotRunner.probe`), the batch-at-a-time :class:`~softprompt.serve.batcher.Batcher`, with a warning."""
    from softprompt.serve.batcher import Batcher

    length = min(max_model_len or DEFAULT_MAX_MODEL_LEN, predictor.max_context)
    if max_model_len and max_model_len > predictor.max_context:
        log.warning("--max_model_len %d is over the model's context; using %d", max_model_len, length)
    try:
        runner = SlotRunner(predictor.lm.model, max_num_seqs, length)
        why = runner.probe()
    except Exception as exc:  # noqa: BLE001 - e.g. recurrent layers: no K/V to keep in slots
        runner, why = None, f"{type(exc).__name__}: {exc}"
    if why is not None:
        log.warning("continuous batching does not fit this model (%s); serving batch by batch", why)
        return Batcher(predictor, max_num_seqs, 0.01, max_queue, metrics)
    if compile:
        runner.compile()
    log.info("KV cache: %d slots x %d tokens, %.0f MiB", max_num_seqs, length, runner.pool.nbytes / 2**20)
    return Scheduler(predictor, runner, max_queue, prefill_chunk, metrics, prefix_cache_bytes)
