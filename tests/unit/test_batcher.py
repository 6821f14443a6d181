"""The batcher: a batch that fails is re-run request by request, so only the culprit fails."""

from __future__ import annotations

import pytest

from softprompt.multitask import Request, Result
from softprompt.serve.batcher import Batcher, QueueFullError


class FakePredictor:
    """Answers each request with its task name; a batch holding task 'bad' raises."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def run(self, requests, on_text=None, cancelled=None):
        tasks = [r.task for r in requests]
        self.batches.append(tasks)
        if "bad" in tasks:
            raise RuntimeError("boom")
        return [Result(t, [], "stop", 1, 0) for t in tasks]


def test_a_failing_batch_fails_only_its_culprit():
    predictor = FakePredictor()
    batcher = Batcher(predictor, max_batch_size=4, window_s=0.5, max_queue=8)
    jobs = [batcher.submit(Request(task, [1])) for task in ("a", "bad", "c")]
    batcher.start()
    try:
        assert jobs[0].future.result(10).text == "a" and jobs[2].future.result(10).text == "c"
        with pytest.raises(RuntimeError, match="boom"):
            jobs[1].future.result(10)
    finally:
        batcher.stop()
    assert predictor.batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_full_queue_is_refused_at_once():
    batcher = Batcher(FakePredictor(), max_queue=2)
    batcher.submit(Request("a", [1]))
    assert not batcher.full()
    batcher.submit(Request("a", [1]))
    assert batcher.full()
    with pytest.raises(QueueFullError, match="2 requests are waiting"):
        batcher.submit(Request("a", [1]))
