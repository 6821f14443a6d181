"""ServeMetrics: what each call adds to the Prometheus text, bounded task labels, and one registry per app
(two apps in one process, each answering real requests through the tiny model, keep separate counts)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from softprompt.multitask import MultiTaskPredictor
from softprompt.serve.app import create_app
from softprompt.serve.metrics import OTHER_TASKS, UNKNOWN_TASK, ServeMetrics


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _get(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_each_call_shows_in_the_text_format():
    m = ServeMetrics()
    m.request_queued("a")
    m.request_queued("a")
    m.first_token("a", 0.03)
    m.step(batch_size=2, queue_depth=5, new_tokens=2)
    m.step(batch_size=2, queue_depth=3, new_tokens=2)
    m.request_done("a", prompt_tokens=10, completion_tokens=2, seconds=0.2, finish_reason="length")
    m.request_failed("a", 500, queued=True)
    m.request_failed(UNKNOWN_TASK, 404)
    s = _samples(m.render())
    assert _get(s, "softprompt_requests_total", task="a", outcome="length", status="200") == 1
    assert _get(s, "softprompt_requests_total", task="a", outcome="error", status="500") == 1
    assert _get(s, "softprompt_requests_total", task=UNKNOWN_TASK, outcome="error", status="404") == 1
    assert _get(s, "softprompt_requests_running", task="a") == 0
    assert _get(s, "softprompt_prompt_tokens_total", task="a") == 10
    assert _get(s, "softprompt_completion_tokens_total", task="a") == 2
    assert _get(s, "softprompt_generated_tokens_total") == 4
    assert _get(s, "softprompt_queue_depth") == 3
    assert _get(s, "softprompt_batch_size_count") == 2 and _get(s, "softprompt_batch_size_sum") == 4
    assert _get(s, "softprompt_batch_size_bucket", le="2.0") == 2 and _get(s, "softprompt_batch_size_bucket", le="1.0") == 0
    assert _get(s, "softprompt_time_to_first_token_seconds_bucket", task="a", le="0.05") == 1
    assert _get(s, "softprompt_time_to_first_token_seconds_bucket", task="a", le="0.025") == 0
    assert _get(s, "softprompt_request_duration_seconds_sum", task="a") == pytest.approx(0.2)


def test_task_labels_are_bounded():
    m = ServeMetrics(max_tasks=2)
    for task in ("a", "b", "c", "d", "a", UNKNOWN_TASK):
        m.request_failed(task, 400)
    s = _samples(m.render())
    tasks = {dict(labels)["task"]: v for (name, labels), v in s.items() if name == "softprompt_requests_total"}
    assert tasks == {"a": 2, "b": 1, OTHER_TASKS: 2, UNKNOWN_TASK: 1}


def test_two_apps_in_one_process_count_apart(tiny_dir):
    predictor = MultiTaskPredictor.load(str(tiny_dir))
    first, second = create_app(predictor), create_app(predictor)
    with TestClient(first) as one, TestClient(second) as two:
        body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for _ in range(2):
            assert one.post("/v1/chat/completions", json=body).status_code == 200
        assert two.post("/v1/completions", json={"model": "base", "prompt": "hi", "max_tokens": 2}).status_code == 200
        a, b = _samples(one.get("/metrics").text), _samples(two.get("/metrics").text)
    total = "softprompt_requests_total"
    assert sum(v for (name, labels), v in a.items() if name == total) == 2
    assert sum(v for (name, labels), v in b.items() if name == total) == 1
