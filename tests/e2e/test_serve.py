"""The real server on 127.0.0.1, talked to with the real `openai` client."""

from __future__ import annotations

import json
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from softprompt.cli import main
from tests.helpers import KEY, Server, train_flags, write_alpaca_dataset


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = write_alpaca_dataset(root / "data")
    prompts = root / "prompts"
    for i, name in enumerate(["task_a", "task_b", "task_c"]):
        assert main(train_flags(tiny_dir, data, prompts / name, num_virtual_tokens=3 + 2 * i, seed=i,
                                learning_rate=1e-3, prompt_tuning_init="sample_vocab")) == 0
        for extra in ("trainer_log.jsonl", "train_results.json", "training_args.yaml"):
            (prompts / name / extra).unlink()
    # its output in a file: a log line per request would fill a pipe nobody reads
    server = Server(tiny_dir, prompts, "--max_queue", "128", "--max_batch_size", "8", log=root / "server.log")
    yield server, prompts, data, root
    server.close()


def test_models_lists_tasks(setup):
    server, *_ = setup
    ids = [m.id for m in server.client().models.list()]
    assert ids == ["base", "task_a", "task_b", "task_c"]


def test_chat_equals_softprompt_predict_for_two_tasks(setup, tiny_dir):
    server, prompts, data, root = setup
    client = server.client()
    rows = [json.loads(x) for x in (data / "toy.json").read_text().splitlines()][0][:3]
    for task in ("task_a", "task_b"):
        out = root / f"pred-{task}"
        assert main(["predict", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(prompts / task),
                     "--dataset", "toy", "--dataset_dir", str(data), "--max_samples", "3", "--output_dir", str(out),
                     "--max_new_tokens", "8"]) == 0
        expected = [json.loads(x)["predict"] for x in (out / "generated_predictions.jsonl").read_text().splitlines()]
        for row, want in zip(rows, expected):
            content = row["instruction"] + ("\n" + row["input"] if row["input"] else "")
            resp = client.chat.completions.create(model=task, messages=[{"role": "user", "content": content}],
                                                  max_tokens=8, temperature=0)
            assert resp.choices[0].message.content == want
            assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 5
    a = client.chat.completions.create(model="task_a", messages=[{"role": "user", "content": "Name a color."}], max_tokens=8)
    b = client.chat.completions.create(model="task_b", messages=[{"role": "user", "content": "Name a color."}], max_tokens=8)
    assert a.choices[0].message.content != b.choices[0].message.content


def test_streaming_and_completions(setup):
    server, *_ = setup
    client = server.client()
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    full = client.chat.completions.create(model="task_c", messages=messages, max_tokens=10).choices[0].message.content
    chunks = list(client.chat.completions.create(model="task_c", messages=messages, max_tokens=10, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = client.completions.create(model="base", prompt="The quick brown", max_tokens=5).choices[0].text
    streamed = client.completions.create(model="base", prompt="The quick brown", max_tokens=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_errors_in_openai_shape(setup):
    server, *_ = setup
    client = server.client()
    msg = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=msg)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").chat.completions.create(model="base", messages=msg)
    r = httpx.get(server.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/health").status_code == 200
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi " * 600}], max_tokens=10)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="base", messages=msg, max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="base", messages=[])
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "base", "messages": "hi"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    # the server still answers normally afterwards
    assert client.chat.completions.create(model="base", messages=msg, max_tokens=2).choices[0].message.content is not None


def test_100_concurrent_requests_across_4_tasks(setup):
    server, *_ = setup
    client = server.client()
    tasks = ["base", "task_a", "task_b", "task_c"]

    def ask(i: int) -> str:
        r = client.chat.completions.create(model=tasks[i % 4], messages=[{"role": "user", "content": f"Count {i}"}],
                                           max_tokens=4)
        return r.choices[0].message.content

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(100)))
    assert len(answers) == 100 and all(a is not None for a in answers)
    # same request alone gives the same answer as inside the crowd (mixed batches change nothing)
    assert ask(7) == answers[7] and ask(42) == answers[42]


def test_dropped_in_adapter_is_served_and_removed_one_is_gone(setup):
    server, prompts, *_ = setup
    client = server.client()
    shutil.copytree(prompts / "task_a", prompts / "task_new")
    assert "task_new" in [m.id for m in client.models.list()]
    client.chat.completions.create(model="task_new", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    shutil.rmtree(prompts / "task_new")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="task_new", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_register_by_path(setup, tmp_path):
    server, prompts, *_ = setup
    shutil.copytree(prompts / "task_b", tmp_path / "elsewhere")
    r = httpx.post(server.url + "/v1/prompts", json={"name": "reg", "path": str(tmp_path / "elsewhere")},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    client = server.client()
    same = [client.chat.completions.create(model=m, messages=[{"role": "user", "content": "Name a color."}],
                                           max_tokens=6).choices[0].message.content for m in ("reg", "task_b")]
    assert same[0] == same[1]
    r = httpx.post(server.url + "/v1/prompts", json={"name": "bad", "path": str(tmp_path / "missing")},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "not found" in r.json()["error"]["message"]


def test_full_queue_answers_503_at_once_and_sigterm_finishes_in_flight(setup, tiny_dir):
    _, prompts, _, root = setup
    server = Server(tiny_dir, prompts, "--max_queue", "1", "--max_batch_size", "1", api_key=None,
                    log=root / "server-503.log")
    try:
        client = server.client()

        def ask(_):
            try:
                client.chat.completions.create(model="task_a", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=40)
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(ask, range(12)))
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(ask, 0)
            time.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            assert pending.result() == 200
        # uvicorn re-raises the caught SIGTERM after its graceful shutdown, as a daemon should
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in server.output()
    finally:
        server.close()


def test_unsupported_adapter_type_is_refused_clearly(setup):
    server, prompts, *_ = setup
    (prompts / "a_lora").mkdir()
    (prompts / "a_lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM"}))
    (prompts / "a_lora" / "adapter_model.safetensors").write_bytes(
        (prompts / "task_a" / "adapter_model.safetensors").read_bytes())
    try:
        with pytest.raises(openai.BadRequestError) as e:
            server.client().chat.completions.create(model="a_lora", messages=[{"role": "user", "content": "hi"}])
        assert "a LORA adapter changes the base model's weights" in e.value.body["message"]
    finally:
        shutil.rmtree(prompts / "a_lora")


def test_huge_body_and_client_gone_mid_stream(setup):
    server, *_ = setup
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(server.url + "/v1/chat/completions", content=b" " * (10 * 2**20), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    body = {"model": "task_a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break  # hang up after the first chunk
    client = server.client()
    answer = client.chat.completions.create(model="task_b", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert answer.choices[0].message.content is not None
