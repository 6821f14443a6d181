"""The server under load and abuse: a burst of 200 concurrent requests against a small queue,
malformed and hostile requests, the API key on every endpoint, and a key that never reaches the logs.

One server for the module (``--max_queue 8 --max_batch_size 4``, with an API key), its output
written to a file; the last test stops it and reads that file.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import openai
import psutil
import pytest

from softprompt.cli import main
from tests.helpers import Server, train_flags, write_alpaca_dataset

SECRET = "sk-softprompt-load-test-0f9a3c7e51"
TASKS = ["base", "t1", "t2", "t3"]
AUTH = {"Authorization": f"Bearer {SECRET}"}
BURST = 200
RSS_GROWTH_LIMIT_MB = 64
"""Bound on the server's RSS growth from after warm-up to after three bursts of 200 requests."""
RSS_REPEAT_LIMIT_MB = 16
"""Bound on the growth between the first and the third burst: repeated load must not accumulate."""


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-load")
    data = write_alpaca_dataset(root / "data")
    for i, name in enumerate(TASKS[1:]):
        assert main(train_flags(tiny_dir, data, root / "prompts" / name, max_steps=1, seed=i,
                                num_virtual_tokens=2 + i, prompt_tuning_init="sample_vocab")) == 0
    server = Server(tiny_dir, root / "prompts", "--max_queue", "8", "--max_batch_size", "4",
                    api_key=SECRET, log=root / "server.log")
    yield server
    server.close()


def ask(server: Server, task: str, content: str = "Name a color.", max_tokens: int = 6) -> str:
    r = server.client(SECRET).chat.completions.create(
        model=task, messages=[{"role": "user", "content": content}], max_tokens=max_tokens)
    return r.choices[0].message.content


async def _burst(server: Server, n: int) -> list[tuple[int, float]]:
    """``n`` requests at once across the tasks (chat, completions, streams): (status, seconds) each."""
    client = server.client(SECRET, async_=True)

    async def one(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        task, kind = TASKS[i % len(TASKS)], i % 3
        try:
            if kind == 0:
                await client.chat.completions.create(
                    model=task, messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=4)
            elif kind == 1:
                await client.completions.create(model=task, prompt=f"The quick brown {i}", max_tokens=4)
            else:
                stream = await client.chat.completions.create(
                    model=task, messages=[{"role": "user", "content": f"What is {i}?"}], max_tokens=4, stream=True)
                async for _ in stream:
                    pass
            return 200, time.perf_counter() - start
        except openai.APIStatusError as exc:
            return exc.status_code, time.perf_counter() - start

    try:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=180)
    finally:
        await client.close()


def test_200_concurrent_requests_get_an_answer_or_a_fast_503(served, capsys):
    server = served
    before = {t: ask(server, t) for t in TASKS}  # warm-up: every task's prefix is cached
    proc = psutil.Process(server.proc.pid)
    rss = [proc.memory_info().rss]
    bursts = []
    for _ in range(3):
        start = time.perf_counter()
        results = asyncio.run(_burst(server, BURST))
        bursts.append((results, time.perf_counter() - start))
        rss.append(proc.memory_info().rss)
    for results, wall in bursts:
        codes = [code for code, _ in results]
        assert len(results) == BURST and set(codes) <= {200, 503}, sorted(set(codes))
        assert 200 in codes and 503 in codes
        refused = [s for code, s in results if code == 503]
        assert max(refused) < 30 and statistics.median(refused) < 10  # refused at once, not after a wait
    mb = [r / 2**20 for r in rss]
    with capsys.disabled():
        for i, (results, wall) in enumerate(bursts):
            refused = sorted(s for code, s in results if code == 503)
            print(f"\nburst {i + 1}: {sum(c == 200 for c, _ in results)} answered, {len(refused)} x 503 "
                  f"(median {statistics.median(refused):.2f} s, max {refused[-1]:.2f} s), {wall:.1f} s in all")
        print("server RSS MB: warm " + " -> ".join(f"{m:.0f}" for m in mb))
    assert mb[-1] - mb[0] < RSS_GROWTH_LIMIT_MB, mb
    assert mb[-1] - mb[1] < RSS_REPEAT_LIMIT_MB, mb
    assert {t: ask(server, t) for t in TASKS} == before  # serves normally, same answers, afterwards


CHAT = {"model": "t1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("field, value", [
    ("model", 5), ("model", None), ("messages", "hi"), ("messages", [{"role": "user"}]),
    ("messages", [{"role": 5, "content": "hi"}]), ("messages", [{"role": "wizard", "content": "hi"}]),
    ("messages", [{"role": "user", "content": {"text": "hi"}}]), ("messages", [5]), ("messages", []),
    ("max_tokens", "ten"), ("max_tokens", 2.5), ("max_tokens", 0), ("max_tokens", -1),
    ("temperature", "hot"), ("temperature", -1), ("temperature", 3), ("top_p", [1]), ("top_p", 0),
    ("top_k", "k"), ("top_k", -1), ("n", 2), ("stream", "maybe"), ("stop", 5), ("stop", [1, 2]),
    ("seed", "s"), ("seed", 2**70), ("tools", "x"), ("max_completion_tokens", 0),
])
def test_wrong_type_or_range_for_a_field_is_400(served, field, value):
    body = {**CHAT, field: value}
    r = httpx.post(served.url + "/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].startswith(field), error


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"model": "t1", "prompt": 5}, "prompt"),
    ("/v1/completions", {"model": "t1", "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": "t1"}, "prompt"),
    ("/v1/completions", {"model": "t1", "prompt": "hi", "max_tokens": -5}, "max_tokens"),
    ("/v1/prompts", {"name": 5, "path": "x"}, "name"),
    ("/v1/prompts", {"name": "../up", "path": "x"}, "name"),
    ("/v1/prompts", {"name": "ok", "path": ["x"]}, "path"),
])
def test_other_endpoints_check_their_fields(served, path, body, param):
    r = httpx.post(served.url + path, json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_hostile_bodies_get_4xx_and_the_next_request_works(served):
    url = served.url + "/v1/chat/completions"
    headers = {**AUTH, "Content-Type": "application/json"}
    for raw in (b"", b"[1, 2]", b'"text"', b"null", b"\xff\xfe{", b'{"model": "t1", "messages": [}'):
        r = httpx.post(url, content=raw, headers=headers)
        assert r.status_code == 400 and "error" in r.json(), (raw, r.text)
    # max_tokens beyond the context, and a lone surrogate no tokenizer can take
    r = httpx.post(url, json={**CHAT, "max_tokens": 10**6}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    raw = b'{"model": "t1", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    r = httpx.post(url, content=raw, headers=headers)
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"], r.text
    r = httpx.post(served.url + "/v1/completions", content=b'{"model": "t1", "prompt": "\\udfff"}', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    # 10 MB sent in chunks, with no Content-Length to refuse it by: the size limit still holds
    def chunks():
        for _ in range(10):
            yield b" " * 2**20
    r = httpx.post(url, content=chunks(), headers=headers, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert ask(served, "t2")


def test_streams_cut_by_the_client_are_cleaned_up(served):
    body = {"model": "t3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "stream": True}
    for _ in range(5):
        with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
            for line in resp.iter_lines():
                if '"content"' in line:
                    break
    start = time.perf_counter()
    assert ask(served, "t1", max_tokens=3)
    # the abandoned rows stopped: 5 x 400 tokens would take far longer than this on the tiny model
    assert time.perf_counter() - start < 20


ENDPOINTS = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
             ("POST", "/v1/prompts"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/redoc"),
             ("GET", "/v1/nothing-here")]


@pytest.mark.parametrize("method, path", ENDPOINTS)
@pytest.mark.parametrize("authorization", [None, "", "Bearer", f"Bearer {SECRET}x", f"Bearer {SECRET[:-1]}",
                                           f"Basic {SECRET}", SECRET, "Bearer wrong"])
def test_every_endpoint_but_health_needs_the_key(served, method, path, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    r = httpx.request(method, served.url + path, headers=headers, json=CHAT if method == "POST" else None)
    assert r.status_code == 401, (path, r.status_code)
    assert r.json()["error"]["type"] == "authentication_error"
    assert SECRET not in r.text


def test_the_key_opens_every_endpoint_and_health_needs_none(served):
    assert httpx.get(served.url + "/health").status_code == 200
    assert httpx.get(served.url + "/health", headers={"Authorization": "Bearer wrong"}).status_code == 200
    for method, path in ENDPOINTS:
        r = httpx.request(method, served.url + path, headers={"Authorization": f"bearer {SECRET}"},
                          json=CHAT if method == "POST" else None)
        assert r.status_code != 401, path


def test_the_key_never_reaches_the_logs(served):
    """Right and wrong keys (one holding the key itself), errors of every kind, then a clean stop:
    the server's whole output never shows the key. Runs last: it stops the module's server."""
    assert ask(served, "t1")
    for auth in (f"Bearer {SECRET}-but-longer", f"Token {SECRET}", "Bearer nope"):
        httpx.get(served.url + "/v1/models", headers={"Authorization": auth})
    httpx.post(served.url + "/v1/chat/completions", content=b"{oops", headers=AUTH)
    httpx.post(served.url + "/v1/chat/completions", json={**CHAT, "model": "missing"}, headers=AUTH)
    served.close()
    log = served.output()
    assert "serving" in log  # the log was captured
    assert SECRET not in log and SECRET[:12] not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("key", ["", "   ", f" {SECRET}", f"{SECRET}\n"])
def test_a_blank_or_padded_key_is_refused_without_echoing_it(key, capsys):
    assert main(["serve", "--api_key", key]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["softprompt serve: error: --api_key must be non-empty, without surrounding spaces"]
    assert SECRET not in err
