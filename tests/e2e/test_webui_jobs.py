"""The web page's handlers without a browser, over real ``softprompt`` subprocesses on a tiny model: a train job
and its log file, a failing one and its one line, eval with a confusion matrix, inspect, export, serve."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("gradio", reason="needs the webui extra (gradio)")

from softprompt.cli import main  # noqa: E402
from softprompt.webui import eval_tab, serve_tab, tools_tab  # noqa: E402
from softprompt.webui.jobs import JOBS, LOG_NAME, abort_job, start_job, trainer_log  # noqa: E402
from tests.e2e.test_eval_cli import write_sentiment  # noqa: E402
from tests.helpers import free_port, train_flags, write_alpaca_dataset  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_sentiment(write_alpaca_dataset(tmp_path_factory.mktemp("data")))


def _wait(kind: str, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while JOBS[kind].running:
        assert time.time() < deadline, JOBS[kind].tail()
        time.sleep(0.2)
    JOBS[kind].wait()
    time.sleep(0.3)  # the output thread writes the last lines


@pytest.fixture(scope="module")
def adapter(tiny_dir, data_dir, tmp_path_factory):
    """A train job started as the page starts one: its output is kept in output_dir/webui.log."""
    out = tmp_path_factory.mktemp("runs") / "senti"
    argv = train_flags(tiny_dir, data_dir, out, dataset="senti", max_steps=3)[1:]
    job = start_job("train", "train", argv, str(out))
    with pytest.raises(RuntimeError):  # one run of a kind at a time
        start_job("train", "train", argv, str(out))
    _wait("train")
    assert job.returncode == 0, job.tail()
    log = (out / LOG_NAME).read_text()
    assert log.splitlines()[-1].startswith(f"saved {out} after 3 steps")
    assert "[softprompt] dataset senti" in log  # what came before the folder existed is in the file too
    assert [r["current_steps"] for r in trainer_log(str(out))] == [1, 2, 3]
    return out


def test_a_failing_job_gives_the_cli_line_and_writes_nothing(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "nope"
    job = start_job("train-bad", "train", train_flags(tiny_dir, data_dir, out, dataset="missing")[1:], str(out))
    _wait("train-bad")
    assert job.returncode == 2
    assert job.error_line().startswith("softprompt train: error: dataset 'missing' is not in")
    assert not out.exists()


def test_eval_tab_shows_results_and_confusion(tiny_dir, data_dir, adapter, tmp_path):
    fields = eval_tab.eval_fields()
    values = {"model_name_or_path": str(tiny_dir), "adapter_name_or_path": f"none,{adapter}", "dataset": "senti",
              "dataset_dir": str(data_dir),
              "task": "classification", "output_dir": str(tmp_path / "eval")}
    raw = tuple(values.get(f.name, f.initial()) for f in fields)
    command, message = eval_tab._start(fields, "en", raw)
    assert "eval --model_name_or_path" in command["value"] and "sp-note" in message
    _wait("eval")
    log, table, confusion, message = eval_tab.poll("zh")
    assert "已完成" in message and "eval_results.json" in message
    assert table["visible"] and list(table["value"]["examples"]) == [12, 12] and "accuracy" in table["value"].columns
    assert confusion["visible"] and len(confusion["value"].axes) == 2  # one heat map per model


def test_eval_tab_bad_value_is_one_line(data_dir):
    fields = eval_tab.eval_fields()
    raw = tuple({"task": "classification", "label_words": "positive"}.get(f.name, f.initial()) for f in fields)
    _, message = eval_tab._start(fields, "en", raw)
    assert "error: --label_words needs at least two different comma-separated words" in message


def test_inspect_and_export(adapter, tmp_path):
    message, summary, table, norms = tools_tab._inspect(str(adapter), "", 3)
    assert message == "" and "PROMPT_TUNING" in summary and "4 × 64" in summary
    assert len(table) == 4 and len(norms["value"]) == 4  # one row per virtual token
    message, *_ = tools_tab._inspect(str(tmp_path), "", 3)
    assert "error:" in message and "Traceback" not in message
    ok = serve_tab._export(str(adapter), str(tmp_path / "p.safetensors"), "fp32")
    assert "sp-ok" in ok and (tmp_path / "p.safetensors").is_file()
    bad = serve_tab._export(str(adapter), str(tmp_path / "p.bin"), "fp32")
    assert "error: --output" in bad and ".safetensors or a .pt" in bad


@pytest.mark.slow
def test_serve_tab_lists_the_tasks(tiny_dir, adapter, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "senti").symlink_to(adapter, target_is_directory=True)
    port = free_port()
    serve_tab._start_serve("en", str(prompts), str(tiny_dir), port)
    try:
        deadline = time.time() + 180
        while True:
            models, metrics, log, message = serve_tab._status("en", port)
            if "sp-ok" in message:
                break
            assert time.time() < deadline and JOBS["serve"].running, log
            time.sleep(1)
        assert {m["id"] for m in models["data"]} >= {"base", "senti"}
        assert metrics.startswith("#") or "no /metrics" in metrics
    finally:
        serve_tab._stop("en")
    assert not JOBS["serve"].running


def test_webui_command_refuses_a_bad_port(capsys):
    assert main(["webui", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "softprompt webui: error: --port must be in 1..65535, got 70000"


def test_abort_stops_a_running_job_and_says_when_none_runs(tiny_dir):
    """Abort (the Train and Serve tabs' button): a running `softprompt serve` process ends; with none running it
    reports that instead of failing."""
    job = start_job("abort-test", "serve", ["--model_name_or_path", str(tiny_dir), "--port", str(free_port())], None)
    assert job.running
    assert abort_job("abort-test") is True
    assert not job.running and job.returncode is not None
    assert abort_job("abort-test") is False and abort_job("never-started") is False
