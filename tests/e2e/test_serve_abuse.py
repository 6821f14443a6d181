"""Nothing a client sends stops the server or gets a 500 (issue 16): bad task folders and registration paths
are 4xx with one log line, a chat of 10,000 messages is refused at once, requests at the limits are encoded
off the event loop so /health and small requests stay fast, and random bodies and message lists (hypothesis)
get a 2xx or a 4xx in bounded time while /health answers within a second throughout.

One real server for the module (the tiny model, a good task ``t1`` and one folder per bad adapter case),
its output in a file; the last test stops it and reads that file.
"""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bad_adapters import CASES, write_case, write_good
from tests.helpers import Server

HEALTH_LIMIT_S = 1.0
"""/health must answer within this, whatever else the server is doing."""
REQUEST_LIMIT_S = 15.0
"""Any request of the property tests must be answered within this (tiny model, max_tokens <= 3)."""
CONTEXT = 512
"""The tiny model's context, hence the server's default limit on messages."""


class HealthWatch:
    """Polls /health every 50 ms on a thread; ``worst`` is the slowest answer in seconds (a failure: inf)."""

    def __init__(self, url: str):
        self.url, self.worst, self.polls = url, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    ok = client.get(self.url + "/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst = max(self.worst, time.perf_counter() - start if ok else float("inf"))
                self.polls += 1
                self._stop.wait(0.05)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-abuse")
    write_good(root / "prompts" / "t1")
    write_good(root / "prompts" / NOT_UTF8)  # a folder name no JSON answer can echo: not a task
    write_case("tensor_nan", root / NOT_UTF8)
    for case in CASES:
        write_case(case, root / "prompts" / f"bad_{case}")
    server = Server(tiny_dir, root / "prompts", api_key=None, log=root / "server.log")
    with HealthWatch(server.url) as watch:
        yield server, root, watch
    server.close()


def post(server: Server, path: str, body, timeout: float = 60) -> httpx.Response:
    """POST ``body`` as JSON with ASCII escapes (so lone surrogates travel as ``\\ud800``)."""
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return httpx.post(server.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=timeout)


def chat(model: str, messages: list[dict], **extra) -> dict:
    return {"model": model, "messages": messages, "max_tokens": 2, **extra}


HI = [{"role": "user", "content": "hi"}]
NOT_UTF8 = os.fsdecode(b"t\xff")


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_task_folder_is_400_naming_the_problem(served, case):
    server, *_ = served
    r = post(server, "/v1/chat/completions", chat(f"bad_{case}", HI))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "model" and CASES[case][2] in error["message"], error


@pytest.mark.parametrize("name", ["x" * 256, "x" * 100_000, "a\0b", "\ud800", "\udcff", "../t1", "t1/", ".", "..",
                                  "t1\n", "/etc", "prompts/t1", "", NOT_UTF8])
def test_a_task_name_that_cannot_be_a_folder_is_404(served, name):
    server, *_ = served
    r = post(server, "/v1/chat/completions", chat(name, HI))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    assert len(r.text) < 1000
    r = post(server, "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 404, r.text


def test_registration_paths_that_cannot_name_an_adapter_are_400(served):
    server, root, _ = served
    (root / "a_file").write_text("not a folder")
    paths = {"x" * 5000: "not a usable adapter folder path", "/".join(["d"] * 3000): "not a usable adapter folder",
             "a\0b": "not a usable adapter folder path", str(root / "a_file"): "is a file, not an adapter folder",
             str(root / "a_file" / "below"): "not found", str(root / "missing"): "not found",
             str(root / "prompts" / "bad_tensor_nan"): "NaN", "\ud800": "not a usable adapter folder path",
             str(root / NOT_UTF8): "adapter_model.safetensors"}  # safetensors reads UTF-8 paths only
    for path, expected in paths.items():
        r = post(server, "/v1/prompts", {"name": "reg", "path": path})
        assert r.status_code == 400 and r.json()["error"]["param"] == "path", r.text
        assert expected in r.json()["error"]["message"] and len(r.text) < 1200, r.text
    assert post(server, "/v1/prompts", {"name": "n" * 129, "path": "x"}).status_code == 400
    models = httpx.get(server.url + "/v1/models")
    ids = [m["id"] for m in models.json()["data"]]
    assert models.status_code == 200 and "t1" in ids and "bad_tensor_nan" in ids and len(ids) == len(CASES) + 2
    assert post(server, "/v1/prompts", {"name": "reg", "path": str(root / "prompts" / "t1")}).status_code == 200
    assert post(server, "/v1/chat/completions", chat("reg", HI)).status_code == 200


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("raw", [
    _deep(100_000).encode(),
    b'{"model": "t1", "messages": [{"role": "user", "content": "hi"}], "tools": [{"a": ' + _deep(900).encode() + b"}]}",
    b'{"model": "t1", "messages": [{"role": "user", "content": "hi"}], "tools": [{"a": ' + _deep(5000).encode() + b"}]}",
    b'{"model": "t1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    b'{"model": "t1", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
    b'{"model": "t1", "messages": [{"role": "user", "content": "hi"}], "seed": NaN}',
    json.dumps(chat("t1", HI, stop=["a"] * 17)).encode(),
    json.dumps(chat("t1", HI, tools=[{"name": "f", "description": "x" * 500_000}])).encode(),
], ids=["deep-body", "deep-tools-900", "deep-tools-5000", "5000-digits", "1e400", "NaN", "17-stops", "big-tools"])
def test_hostile_bodies_are_4xx_or_answered(served, raw):
    server, *_ = served
    r = post(server, "/v1/chat/completions", raw)
    assert r.status_code in (200, 400, 413), r.text[:300]


def test_10000_messages_are_refused_at_once(served):
    """The request that froze every request for 9 minutes: 10,000 short messages, 300 KB."""
    server, *_ = served
    messages = [{"role": ("user", "assistant")[i % 2], "content": f"m{i}"} for i in range(10_001)]
    start = time.perf_counter()
    r = post(server, "/v1/chat/completions", chat("t1", messages))
    assert r.status_code == 400 and r.json()["error"]["code"] == "array_above_max_length", r.text
    assert time.perf_counter() - start < 2


def _heavy_requests() -> list[tuple[str, dict, str]]:
    """Requests at the limits (about 1 MB, up to the message limit): encoded in full, then refused for length."""
    words = "lorem ipsum " * 150  # 1800 characters
    many = [{"role": ("user", "assistant")[i % 2], "content": words} for i in range(CONTEXT - 1)]
    short = [{"role": ("user", "assistant")[i % 2], "content": f"m{i}"} for i in range(CONTEXT - 1)]
    system = [{"role": "system", "content": "x" * 500_000}] + short
    return [("/v1/chat/completions", chat("t1", many), "context_length_exceeded"),
            ("/v1/chat/completions", chat("t1", system), "context_length_exceeded"),
            ("/v1/completions", {"model": "t1", "prompt": words * 500, "max_tokens": 2}, "context_length_exceeded")]


def test_health_and_small_requests_stay_fast_during_heavy_requests(served):
    server, *_ = served
    for path, body, code in _heavy_requests():
        small: list[float] = []

        def ask_small() -> None:
            time.sleep(0.1)  # while the heavy request is being encoded
            start = time.perf_counter()
            r = post(server, "/v1/completions", {"model": "t1", "prompt": "The quick", "max_tokens": 1})
            small.append(time.perf_counter() - start if r.status_code == 200 else float("inf"))

        with HealthWatch(server.url) as watch:
            thread = threading.Thread(target=ask_small)
            thread.start()
            start = time.perf_counter()
            r = post(server, path, body)
            heavy = time.perf_counter() - start
            thread.join()
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text[:300]
        print(f"{path} {len(json.dumps(body)) // 1024} KB: {heavy:.2f} s; /health at worst {watch.worst:.3f} s "
              f"({watch.polls} polls); a small request meanwhile {small[0]:.3f} s")
        assert heavy < 30 and watch.worst < HEALTH_LIMIT_S and small[0] < 1.5


# ------------------------------------------------------------------------------------------------ properties

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
TEXT = st.text(st.characters(exclude_categories=[]), max_size=40)  # lone surrogates included
ROLES = ["user", "assistant", "system", "tool", "function", "observation", "wizard", ""]
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": TEXT}) | JSON
MODELS = st.sampled_from(["t1", "base", "none", "bad_tensor_nan", "missing", "x" * 300]) | TEXT | JSON
SAMPLING = {
    "max_tokens": st.integers(1, 3) | JSON, "temperature": st.floats(0, 2) | JSON, "top_p": st.floats(0, 1) | JSON,
    "top_k": st.integers(-1, 50) | JSON, "stop": st.lists(TEXT, max_size=20) | TEXT | JSON, "seed": st.integers() | JSON,
    "stream": st.booleans() | JSON, "n": st.integers(0, 2) | JSON, "tools": st.lists(JSON, max_size=3) | JSON,
    "max_completion_tokens": st.none() | st.integers(-1, 3) | JSON,
}


@st.composite
def message_lists(draw) -> list:
    """Alternating turns, sometimes many, with random flips of role and content type."""
    n = draw(st.integers(0, 2 * CONTEXT) | st.integers(0, 6))
    content = draw(TEXT)
    messages = [{"role": ("user", "assistant")[i % 2], "content": content} for i in range(n)]
    for _ in range(draw(st.integers(0, 3))):
        if messages:
            messages[draw(st.integers(0, len(messages) - 1))] = draw(MESSAGE)
    return messages


def _check(server: Server, path: str, body) -> None:
    start = time.perf_counter()
    r = post(server, path, body, timeout=REQUEST_LIMIT_S)
    assert time.perf_counter() - start < REQUEST_LIMIT_S
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    assert "server_error" not in r.text, r.text[:500]  # also inside a stream


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])


@PROPERTY
@given(body=JSON | st.fixed_dictionaries({"model": MODELS}, optional={"messages": message_lists(), **SAMPLING}))
def test_random_chat_bodies_get_2xx_or_4xx(served, body):
    _check(served[0], "/v1/chat/completions", body)


@PROPERTY
@given(model=st.sampled_from(["t1", "base"]), messages=message_lists(), stream=st.booleans())
def test_random_message_lists_get_2xx_or_4xx(served, model, messages, stream):
    _check(served[0], "/v1/chat/completions", chat(model, messages, stream=stream))


@PROPERTY
@given(body=JSON | st.fixed_dictionaries({"model": MODELS}, optional={"prompt": TEXT | JSON, **SAMPLING}))
def test_random_completion_bodies_get_2xx_or_4xx(served, body):
    _check(served[0], "/v1/completions", body)


def test_health_answered_within_a_second_throughout_and_one_log_line_per_bad_task(served):
    """Runs last: stops the server and reads its output."""
    server, root, watch = served
    polls, worst = watch.polls, watch.worst
    assert polls > 10 and worst < HEALTH_LIMIT_S, (polls, worst)
    print(f"/health: {polls} polls over the module, the slowest {worst:.3f} s")
    server.close()
    log = server.output()
    assert "Traceback" not in log and "internal error" not in log
    for case in CASES:
        lines = [line for line in log.splitlines() if f"'bad_{case}'" in line]
        assert len(lines) == 1, (case, lines)
