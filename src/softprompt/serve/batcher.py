"""Collects concurrent requests into mixed-task batches on one worker thread: the fallback of
:mod:`~softprompt.serve.scheduler` for models its slot cache does not fit (e.g. ALiBi, recurrent layers).

A request waits at most ``window_s`` for others to join (up to ``max_batch_size``); the queue
is bounded, and a full queue refuses at once (the HTTP layer answers 503).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from softprompt.multitask import MultiTaskPredictor, Request, Result

log = logging.getLogger("softprompt")


class QueueFullError(RuntimeError):
    """Too many requests are waiting."""


@dataclass
class Job:
    request: Request
    future: Future = field(default_factory=Future)
    on_text: Callable[[str], None] | None = None
    cancelled: bool = False
    streamed: bool = False
    """Some text was already sent to the client (so a failed batch cannot simply re-run this job)."""

    def emit(self, delta: str) -> None:
        if self.on_text is not None:
            self.streamed = True
            self.on_text(delta)


class Batcher:
    def __init__(self, predictor: MultiTaskPredictor, max_batch_size: int = 8, window_s: float = 0.01,
                 max_queue: int = 64, metrics=None):
        """``metrics.step(batch_size, queue_depth, new_tokens)`` is called once per batch run (when given)."""
        self.predictor, self.max_batch_size, self.window_s = predictor, max_batch_size, window_s
        self.metrics = metrics
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="softprompt-batcher", daemon=True)
        self.batches_run = 0
        self._running = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already taken, then stop; queued jobs still run before the thread exits."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def max_queue(self) -> int:
        return self._queue.maxsize

    def full(self) -> bool:
        """Whether a request submitted now would be refused."""
        return self._queue.full()

    def queue_depth(self) -> int:
        """Requests waiting."""
        return self._queue.qsize()

    def running(self) -> int:
        """Requests in the batch being generated."""
        return self._running

    def check(self, request: Request) -> None:
        self.predictor.check(request)

    def submit(self, request: Request, on_text: Callable[[str], None] | None = None) -> Job:
        job = Job(request, on_text=on_text)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"the server is busy: {self._queue.maxsize} requests are waiting") from None
        return job

    async def result(self, job: Job) -> Result:
        return await asyncio.wrap_future(job.future)

    def _collect(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        jobs, deadline = [first], time.monotonic() + self.window_s
        while len(jobs) < self.max_batch_size:
            left = deadline - time.monotonic()
            try:
                jobs.append(self._queue.get(timeout=max(left, 0)) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return [j for j in jobs if not j.cancelled and j.future.set_running_or_notify_cancel()]

    def _loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            jobs = self._collect()
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        """Run one batch; if it fails, run its jobs one by one so that only the culprit fails."""
        self._running = len(jobs)
        try:
            results = self.predictor.run(
                [j.request for j in jobs],
                on_text=lambda i, delta: jobs[i].emit(delta),
                cancelled=lambda i: jobs[i].cancelled,
            )
        except Exception as exc:  # one bad request must not kill the server, nor its batch
            if len(jobs) > 1:
                log.warning("batch of %d failed (%s: %s); running its requests one by one", len(jobs),
                            type(exc).__name__, exc)
                for j in jobs:
                    if j.streamed:
                        j.future.set_exception(exc)
                    else:
                        self._run([j])
                return
            log.error("request for task %r failed: %s: %s", jobs[0].request.task, type(exc).__name__, exc)
            jobs[0].future.set_exception(exc)
            return
        self.batches_run += 1
        self._running = 0
        if self.metrics is not None:
            self.metrics.step(len(jobs), self.queue_depth(), sum(r.completion_tokens for r in results))
        for j, r in zip(jobs, results):
            j.future.set_result(r)
