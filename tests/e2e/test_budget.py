"""Training to a budget on the tiny model: `softprompt train --max_train_seconds / --max_train_tokens` stops
cleanly (final adapter, train_results.json, the 'stopped:' line), a token-budgeted run resumes to the same
adapter, and `softprompt compare --time_budget` gives every method the same training time."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import get_scheduler

from softprompt.checkpoint import load_adapter
from softprompt.cli import main
from softprompt.methods import read_adapter
from softprompt.train.budget import RESOLUTION
from tests.e2e.test_compare import _sentiment
from tests.e2e.test_resume import interrupt_at, log_rows, same_adapter
from tests.helpers import train_flags, write_alpaca_dataset


@pytest.fixture()
def data_dir(tmp_path):
    return write_alpaca_dataset(tmp_path / "data", n=20)


def _rows(out):
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def _said(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_train_stops_at_its_time_budget(tiny_dir, data_dir, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="softprompt"):
        assert main(train_flags(tiny_dir, data_dir, out, max_steps=-1, max_train_seconds="2s", val_size=4,
                                logging_steps=1, warmup_ratio=0.1, lr_scheduler_type="cosine", plot_loss="true")) == 0
    results = json.loads((out / "train_results.json").read_text())
    steps = results["global_step"]
    assert f"stopped: time budget of 2 s reached after {steps} updates" in _said(caplog)
    assert results["max_train_seconds"] == 2 and results["budget_used"] == 1.0
    assert 2 <= results["train_seconds"] < 2 + 2  # it stops at the first update past the budget
    assert steps > 5 and results["train_tokens"] > 0 and results["eval_loss"] is not None
    rows = [r for r in _rows(out) if "loss" in r]
    assert rows[-1]["current_steps"] == steps == rows[-1]["total_steps"] and rows[-1]["percentage"] == 100.0
    lrs = [r["learning_rate"] for r in rows]
    assert lrs[0] < max(lrs) and lrs[-1] < 0.1 * max(lrs)  # warmup, then cosine to ~0 at the budget's end
    # update k's learning rate is the schedule at the progress after update k-1 (not one update behind)
    shape = get_scheduler("cosine", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                          num_warmup_steps=math.ceil(0.1 * RESOLUTION), num_training_steps=RESOLUTION).lr_lambdas[0]
    for before, row in zip(rows, rows[1:]):
        expected = 1e-2 * shape(min(RESOLUTION, round(before["train_seconds"] / 2 * RESOLUTION)))
        assert row["learning_rate"] == pytest.approx(expected, abs=1e-2 * 0.06), row
    assert (out / "training_loss.png").is_file()
    load_adapter(out)


def test_a_token_budget_resumes_to_the_same_adapter(tiny_dir, data_dir, tmp_path, caplog):
    flags = dict(max_steps=-1, max_train_tokens=1500, save_steps=2, finetuning_type="lora", lora_rank=2,
                 learning_rate=1e-2, warmup_ratio=0.2)
    a, b = tmp_path / "a", tmp_path / "b"
    with caplog.at_level("INFO", logger="softprompt"):
        assert main(train_flags(tiny_dir, data_dir, a, **flags)) == 0
    results = json.loads((a / "train_results.json").read_text())
    assert f"stopped: token budget of 1500 tokens reached after {results['global_step']} updates" in _said(caplog)
    assert 1500 <= results["train_tokens"] < 1500 + 4 * 64 and results["max_train_tokens"] == 1500
    interrupt_at(a, b, 2)
    assert main(train_flags(tiny_dir, data_dir, b, resume_from_checkpoint="true", **flags)) == 0
    assert log_rows(b) == log_rows(a)  # the schedule and the token count came back with the checkpoint
    same_adapter(b, a)
    assert json.loads((b / "train_results.json").read_text())["train_tokens"] == results["train_tokens"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--max_train_seconds", "10x"], "--max_train_seconds expects a positive duration"),
    (["train", "--max_train_tokens", "lots"], "--max_train_tokens expects a positive number of tokens"),
    (["train", "--max_train_seconds", "1m", "--warmup_steps", "3"], "--warmup_steps counts updates"),
    (["compare", "--time_budget", "soon"], "--time_budget expects a positive duration such as 600, 600s, 10m"),
    (["compare", "--time_budget", "5s", "--budget_tokens", "100"], "exclusive"),
    (["compare", "--time_budget", "5s", "--max_train_seconds", "6"], "disagree"),
])
def test_bad_budgets_are_one_line(tiny_dir, data_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    assert main([*argv, "--model_name_or_path", str(tiny_dir), "--dataset", "toy", "--dataset_dir", str(data_dir),
                 "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow  # three training processes of 5 s each, plus their start-up (~1-3 min on a shared CPU)
def test_compare_at_equal_time(tiny_dir, tmp_path, capsys):
    data = write_alpaca_dataset(tmp_path / "data", n=20)
    _sentiment(data)
    out = tmp_path / "cmp"
    methods = ["prompt_tuning", "lora", "full"]
    argv = ["compare", "--model_name_or_path", str(tiny_dir), "--dataset", "toy", "--dataset_dir", str(data),
            "--methods", ",".join(methods), "--time_budget", "5s", "--max_steps", "3", "--warmup_ratio", "0.1",
            "--per_device_train_batch_size", "4", "--val_size", "4", "--logging_steps", "5", "--save_steps", "0",
            "--num_virtual_tokens", "4", "--lora_rank", "2", "--learning_rate", "1e-2", "--eval_dataset", "senti",
            "--task", "classification", "--output_dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    assert report["equal"] == {"kind": "time", "value": 5.0, "text": "5s"}
    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == methods
    for method, r in rows.items():
        assert "error" not in r, (method, r.get("error"))
        # the budget, not --max_steps 3, stopped it; its log says so
        assert r["stopped"].startswith(f"time budget of 5 s reached after {r['steps']} updates"), r["stopped"]
        assert r["steps"] > 3 and 5 <= r["train_seconds"] < 5 + 3 and r["budget_used"] == 1.0
        assert r["train_tokens"] > 0 and r["eval_loss"] is not None and 0 <= r["metric_value"] <= 100
        assert "stopped: time budget of 5 s" in (out / "logs" / f"{method}.log").read_text()
        assert r["loss_curve_seconds"][-1][0] == r["train_seconds"]
        assert f"| {method} |" in printed
    assert len({r["steps"] for r in rows.values()}) > 1  # the same time buys each method its own number of updates
    assert "equal time budget: 5s" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 20_000
    for method in ("prompt_tuning", "lora"):  # the adapter each run saved loads
        assert read_adapter(out / method).spec.name == method
        load_adapter(out / method)
    assert (out / "full" / "config.json").is_file()
