"""GET /metrics and the one log line per request, on the real server with the real `openai` client.

One server for the module (the tiny model, tasks ``t1`` and ``t2``), its output in a file. The first test
makes a known mix of requests, answered, streamed and refused, then parses /metrics with prometheus_client's
own text parser and checks every count against what the requests got back; the last stops the server and
checks the log lines against the same requests.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.bad_adapters import write_good
from tests.helpers import KEY, Server

SECRET_TEXT = "zebra-quartz-prompt"
"""A word every prompt carries: it must appear in no log line."""
LINE = re.compile(r"\[softprompt\] POST (/v1/\S+) task=(\S+) status=(\d+) (.*)$")


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-metrics")
    write_good(root / "prompts" / "t1", seed=1)
    write_good(root / "prompts" / "t2", seed=2)
    server = Server(tiny_dir, root / "prompts", log=root / "server.log")
    made: list[dict] = []  # per request: path, task, status, stream, usage when known
    yield server, made
    server.close()


def _samples(text: str) -> dict[str, list]:
    """Metric family name -> its samples, from Prometheus' text format."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: dict, family: str, sample: str, **labels) -> float:
    """The sum of ``sample``'s values whose labels include ``labels``."""
    return sum(s.value for s in samples[family] if s.name == sample and labels.items() <= s.labels.items())


def _chat(client, task: str, i: int, stream: bool = False, max_tokens: int = 6) -> dict:
    messages = [{"role": "user", "content": f"{SECRET_TEXT} number {i}"}]
    if not stream:
        r = client.chat.completions.create(model=task, messages=messages, max_tokens=max_tokens)
        return {"text": r.choices[0].message.content, "usage": r.usage, "finish": r.choices[0].finish_reason}
    chunks = list(client.chat.completions.create(model=task, messages=messages, max_tokens=max_tokens, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return {"text": text, "usage": chunks[-1].usage, "finish": chunks[-1].choices[0].finish_reason}


def _complete(client, task: str, i: int) -> dict:
    r = client.completions.create(model=task, prompt=f"{SECRET_TEXT} {i}", max_tokens=5)
    return {"text": r.choices[0].text, "usage": r.usage, "finish": r.choices[0].finish_reason}


def _make_requests(server: Server, made: list[dict]) -> None:
    client = server.client()
    for i in range(3):
        made.append({"path": "/v1/chat/completions", "task": "t1", "status": 200, "stream": False,
                     **_chat(client, "t1", i)})
    made.append({"path": "/v1/chat/completions", "task": "t1", "status": 200, "stream": True,
                 **_chat(client, "t1", 9, stream=True)})
    for i in range(2):
        made.append({"path": "/v1/completions", "task": "t2", "status": 200, "stream": False, **_complete(client, "t2", i)})
    made.append({"path": "/v1/chat/completions", "task": "base", "status": 200, "stream": False,
                 **_chat(client, "base", 5, max_tokens=3)})
    with pytest.raises(openai.NotFoundError):
        _chat(client, "no_such_task", 0)
    made.append({"path": "/v1/chat/completions", "task": "(unknown)", "status": 404, "stream": False,
                 "error": "model_not_found"})
    with pytest.raises(openai.BadRequestError):  # prompt + max_tokens over the tiny model's context of 512
        _chat(client, "t2", 0, max_tokens=600)
    made.append({"path": "/v1/chat/completions", "task": "t2", "status": 400, "stream": False,
                 "error": "context_length_exceeded"})
    with pytest.raises(openai.AuthenticationError):
        _chat(server.client("wrong-key"), "t1", 0)
    made.append({"path": "/v1/chat/completions", "task": "(unknown)", "status": 401, "stream": False,
                 "error": "invalid_api_key"})
    r = httpx.post(server.url + "/v1/completions", json={"model": "t1", "prompt": 5},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    made.append({"path": "/v1/completions", "task": "(unknown)", "status": 400, "stream": False,
                 "error": "invalid_request_error"})


def test_metrics_count_the_requests_made_by_task(served):
    server, made = served
    _make_requests(server, made)
    assert httpx.get(server.url + "/metrics").status_code == 401  # the API key guards /metrics too
    r = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = _samples(r.text)

    for task in ("t1", "t2", "base", "(unknown)"):
        mine = [x for x in made if x["task"] == task]
        for status, n in Counter(str(x["status"]) for x in mine).items():
            assert _value(m, "softprompt_requests", "softprompt_requests_total", task=task, status=status) == n
        answered = [x for x in mine if x["status"] == 200]
        for reason, n in Counter(x["finish"] for x in answered).items():
            assert _value(m, "softprompt_requests", "softprompt_requests_total", task=task, outcome=reason) == n
        assert _value(m, "softprompt_requests", "softprompt_requests_total", task=task) == len(mine)
        if not answered:
            continue
        prompt = sum(x["usage"].prompt_tokens for x in answered)
        completion = sum(x["usage"].completion_tokens for x in answered)
        assert _value(m, "softprompt_prompt_tokens", "softprompt_prompt_tokens_total", task=task) == prompt
        assert _value(m, "softprompt_completion_tokens", "softprompt_completion_tokens_total", task=task) == completion
        duration = "softprompt_request_duration_seconds"
        assert _value(m, duration, duration + "_count", task=task) == len(answered)
        assert 0 < _value(m, duration, duration + "_sum", task=task) < 120
        ttft = "softprompt_time_to_first_token_seconds"
        assert _value(m, ttft, ttft + "_count", task=task) == sum(1 for x in answered if x["text"])
        assert _value(m, "softprompt_requests_running", "softprompt_requests_running", task=task) == 0

    answered = [x for x in made if x["status"] == 200]
    assert _value(m, "softprompt_generated_tokens", "softprompt_generated_tokens_total") == sum(
        x["usage"].completion_tokens for x in answered)
    # one decode step per token sampled: a step's batch counts each running row once, the row whose sampled token
    # is EOS included (it adds no completion token)
    generated = sum(x["usage"].completion_tokens for x in answered)
    assert generated <= _value(m, "softprompt_batch_size", "softprompt_batch_size_sum") <= generated + len(answered)
    assert 1 <= _value(m, "softprompt_batch_size", "softprompt_batch_size_count") <= generated + len(answered)
    assert _value(m, "softprompt_queue_depth", "softprompt_queue_depth") == 0


def test_a_stream_left_early_counts_as_499_and_running_returns_to_zero(served):
    server, made = served
    body = {"model": "t2", "messages": [{"role": "user", "content": SECRET_TEXT}], "max_tokens": 400,
            "stream": True, "stop": []}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first event (the assistant role), then the client goes away
    samples = {}
    for _ in range(300):  # the server notices at its next chunk; the row then stops
        samples = _samples(httpx.get(server.url + "/metrics", headers=headers).text)
        if _value(samples, "softprompt_requests_running", "softprompt_requests_running", task="t2") == 0:
            break
        time.sleep(0.1)
    left = _value(samples, "softprompt_requests", "softprompt_requests_total", task="t2", status="499")
    done = _value(samples, "softprompt_requests", "softprompt_requests_total", task="t2", status="200")
    assert (left, done) in ((1, 2), (0, 3))  # the two completions earlier, and this one: left (499) or finished
    assert _value(samples, "softprompt_requests_running", "softprompt_requests_running", task="t2") == 0
    made.append({"path": "/v1/chat/completions", "task": "t2", "status": 499 if left else 200, "stream": True,
                 "usage": None, "error": "client_closed"})

def test_one_log_line_per_request_without_the_prompt_or_the_key(served):
    """Runs last: stops the server and reads its output."""
    server, made = served
    server.close()
    log = server.output()
    assert SECRET_TEXT not in log and KEY not in log and "wrong-key" not in log
    lines = [LINE.search(line) for line in log.splitlines()]
    lines = [m for m in lines if m]
    assert len(lines) == len(made), "\n".join(m.group(0) for m in lines)
    for m, want in zip(lines, made):
        path, task, status, rest = m.groups()
        assert (path, task) == (want["path"], want["task"]), m.group(0)
        assert status == str(want["status"]), m.group(0)
        assert f"stream={'yes' if want['stream'] else 'no'}" in rest and re.search(r"total=\d+\.\d{3}s", rest)
        if status == "200" and want["usage"] is not None:
            usage = want["usage"]
            assert f"prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens}" in rest
            assert f"finish={want['finish']}" in rest
            assert re.search(r"ttft=\d+\.\d{3}s", rest) if want["text"] else "ttft=-" in rest
        elif status != "200":
            assert f"error={want['error']} " in rest and "finish=-" in rest and "prompt_tokens" not in rest
