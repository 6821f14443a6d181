"""Interrupted training resumes: SIGKILL mid-run, --resume_from_checkpoint true, and the losses
logged after the resume equal an uninterrupted run's (CPU, fp32, same seed)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softprompt.cli import main
from softprompt.train.resume import STATE_FILES
from tests.helpers import train_flags, write_alpaca_dataset

FLAGS = dict(max_steps=60, save_steps=5, save_total_limit=2, per_device_train_batch_size=2,
             gradient_accumulation_steps=2, warmup_steps=3, lr_scheduler_type="cosine", logging_steps=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_alpaca_dataset(tmp_path_factory.mktemp("resume") / "data", n=24)


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    assert main(train_flags(tiny_dir, data_dir, out, **FLAGS)) == 0
    return out


def log_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("current_steps", "loss", "learning_rate", "grad_norm", "epoch")} for r in rows]


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def same_adapter(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-6, atol=1e-7)


def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tiny_dir, data_dir, uninterrupted, tmp_path):
    out = tmp_path / "out"
    argv = train_flags(tiny_dir, data_dir, out, **FLAGS)
    proc = subprocess.Popen([sys.executable, "-m", "softprompt", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint-10").exists():  # poll; the run itself is not slowed
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.01)
        time.sleep(0.1)  # somewhere between two checkpoints
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "train_results.json").exists(), "the run finished before the kill"
    killed_at = checkpoint_steps(out)
    assert killed_at and max(killed_at) < FLAGS["max_steps"]
    for step in killed_at:  # a kill leaves complete checkpoints only (the new one, or the previous ones)
        folder = out / f"checkpoint-{step}"
        assert all((folder / name).is_file() for name in STATE_FILES + ("adapter_model.safetensors",)), folder

    assert main(train_flags(tiny_dir, data_dir, out, resume_from_checkpoint="true", **FLAGS)) == 0

    resumed_from = max(killed_at)
    ours, theirs = log_rows(out), log_rows(uninterrupted)
    after = [r for r in ours if r["current_steps"] > resumed_from]
    assert [r["current_steps"] for r in after] == list(range(resumed_from + 1, FLAGS["max_steps"] + 1))
    assert after == [r for r in theirs if r["current_steps"] > resumed_from]
    assert ours == theirs  # the rows before the checkpoint were kept, the ones after it logged once
    same_adapter(out, uninterrupted)
    results = json.loads((out / "train_results.json").read_text())
    assert results["train_loss"] == json.loads((uninterrupted / "train_results.json").read_text())["train_loss"]
    # --save_total_limit 2 keeps the newest two, in both runs; no temporary folder is left
    assert checkpoint_steps(out) == checkpoint_steps(uninterrupted) == [50, 55]
    assert not list(out.glob(".checkpoint-*"))


def interrupt_at(src: Path, dst: Path, step: int) -> None:
    """``dst``: ``src`` as a run killed just after writing checkpoint-``step`` would have left it."""
    shutil.copytree(src, dst)
    for ckpt in dst.glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    for name in ("adapter_model.safetensors", "adapter_config.json", "train_results.json"):
        (dst / name).unlink(missing_ok=True)
    (dst / ".checkpoint-99.abcd").mkdir()  # a temporary folder a kill left behind


def test_resume_restores_an_encoder_and_dropout_rng(tiny_dir, data_dir, tmp_path):
    """p-tuning (its LSTM encoder is not in the saved adapter, which holds the encoded prompt) with
    dropout: the parameters and the random state come back, so the losses match exactly."""
    flags = {k: v for k, v in FLAGS.items() if k != "save_total_limit"}
    flags.update(max_steps=12, save_steps=4, finetuning_type="p_tuning", encoder_reparameterization_type="LSTM",
                 encoder_dropout=0.3, encoder_hidden_size=16)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(train_flags(tiny_dir, data_dir, a, **flags)) == 0
    interrupt_at(a, b, 4)
    (b / "checkpoint-4" / "adapter_model.safetensors").unlink()  # proves the encoder comes from the state file
    assert main(train_flags(tiny_dir, data_dir, b, resume_from_checkpoint=str(b / "checkpoint-4"), **flags)) == 0
    assert log_rows(b) == log_rows(a)
    same_adapter(b, a)
    assert checkpoint_steps(b) == [4, 8]
    assert not (b / ".checkpoint-99.abcd").exists()


def test_resume_continues_a_residual_reparameterised_prompt(tiny_dir, data_dir, tmp_path):
    """--prompt_tuning_reparam residual: the adapter holds the reparameterised prompt only; the raw prompt and the
    MLP come back from the checkpoint's training state, so the resumed run equals the uninterrupted one."""
    flags = {k: v for k, v in FLAGS.items() if k != "save_total_limit"}
    flags.update(max_steps=8, save_steps=4, prompt_tuning_reparam="residual", reparam_hidden_size=8,
                 lr_scheduler_type="constant", warmup_steps=0)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(train_flags(tiny_dir, data_dir, a, **flags)) == 0
    interrupt_at(a, b, 4)
    (b / "checkpoint-4" / "adapter_model.safetensors").unlink()  # the MLP and raw prompt come from the state file
    assert main(train_flags(tiny_dir, data_dir, b, resume_from_checkpoint=str(b / "checkpoint-4"), **flags)) == 0
    assert log_rows(b) == log_rows(a)
    same_adapter(b, a)
    params = torch.load(a / "checkpoint-4" / "trainable_state.pt", weights_only=True)["params"]
    assert "adapter.reparam.down.weight" in params and "adapter.embedding.weight" in params


def test_resume_continues_the_group_by_prefix_order(tiny_dir, data_dir, tmp_path):
    """--group_by_prefix with gradient accumulation, over several epochs: the resumed run draws the batches the
    interrupted one would have (its sampler's order is a function of --seed and the epoch)."""
    flags = {k: v for k, v in FLAGS.items() if k != "save_total_limit"}
    flags.update(max_steps=16, save_steps=5, group_by_prefix="true")  # 6 updates an epoch: resumes mid-epoch 1
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(train_flags(tiny_dir, data_dir, a, **flags)) == 0
    interrupt_at(a, b, 10)
    assert main(train_flags(tiny_dir, data_dir, b, resume_from_checkpoint="true", **flags)) == 0
    assert log_rows(b) == log_rows(a)
    same_adapter(b, a)
    plain = tmp_path / "plain"
    assert main(train_flags(tiny_dir, data_dir, plain, **{**flags, "group_by_prefix": "false"})) == 0
    assert log_rows(plain) != log_rows(a)  # the grouped order is not the plain shuffle


def test_resume_errors_are_one_line(tiny_dir, data_dir, uninterrupted, tmp_path, capsys):
    def refused(*parts: str, **extra) -> None:
        assert main(train_flags(tiny_dir, data_dir, extra.pop("out", tmp_path / "out"), **{**FLAGS, **extra})) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert all(p in line for p in parts), line

    refused("--resume_from_checkpoint true: no checkpoint-N folder", resume_from_checkpoint="true")
    refused("folder not found", resume_from_checkpoint=str(tmp_path / "nowhere"))
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "broken"
    shutil.copytree(uninterrupted / "checkpoint-55", broken)
    (broken / "optimizer.pt").write_bytes(b"not a checkpoint")
    refused("optimizer.pt: unreadable", resume_from_checkpoint=str(broken))
    (broken / "optimizer.pt").unlink()
    refused("no optimizer.pt", resume_from_checkpoint=str(broken))
    refused("adapter.embedding.weight has shape (4, 64), this run's has (6, 64)", resume_from_checkpoint=str(uninterrupted / "checkpoint-55"),
            num_virtual_tokens=6)


def test_resume_true_skips_an_incomplete_newest_checkpoint(tiny_dir, data_dir, tmp_path, caplog, capsys):
    """The newest checkpoint lacks a file: the log line names it, and the run resumes from the newest complete one."""
    flags = dict(max_steps=4, save_steps=1, per_device_train_batch_size=2, logging_steps=1)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(train_flags(tiny_dir, data_dir, a, **flags)) == 0
    interrupt_at(a, b, 3)
    (b / "checkpoint-3" / "optimizer.pt").unlink()
    with caplog.at_level("INFO", logger="softprompt"):
        assert main(train_flags(tiny_dir, data_dir, b, resume_from_checkpoint="true", **flags)) == 0
    said = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
    assert len(said) == 1 and "checkpoint-3" in said[0] and "optimizer.pt" in said[0] and "checkpoint-2" in said[0]
    assert any("resuming from" in r.getMessage() and "checkpoint-2 at step 2" in r.getMessage() for r in caplog.records)
    assert log_rows(b) == log_rows(a)
    same_adapter(b, a)
    assert all((b / "checkpoint-3" / name).is_file() for name in STATE_FILES)  # saved again, complete
    for step in (1, 2, 3):
        (b / f"checkpoint-{step}" / "rng_state.pth").unlink()
    assert main(train_flags(tiny_dir, data_dir, b, resume_from_checkpoint="true", **flags)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no complete checkpoint-N folder" in line and "checkpoint-3 has no rng_state.pth" in line, line


@pytest.mark.parametrize("edit, parts", [
    ({"global_step": "x"}, ["'global_step' must be a non-negative integer, got 'x'"]),
    ({"global_step": -1}, ["'global_step' must be a non-negative integer, got -1"]),
    ({"global_step": True}, ["'global_step' must be a non-negative integer"]),
    ({"global_step": 99}, ["'global_step' 99 is beyond this run's 4 updates"]),
    ({"losses": ["a", 1.0]}, ["'losses' must be a list of finite numbers"]),
    ({"losses": 3}, ["'losses' must be a list of finite numbers"]),
    ({"losses": [1.0]}, ["'losses' holds 1 values for 'global_step' 2"]),
    ({"pending": [None]}, ["'pending' must be a list of finite numbers"]),
    ({"eval_loss": "low"}, ["'eval_loss' must be a number or null"]),
    ({"train_tokens": -5}, ["'train_tokens' must be a non-negative integer"]),
    ({"best_step": 1.5}, ["'best_step' must be a non-negative integer"]),
    ({"args": [1]}, ["'args' must be an object"]),
    ([1, 2], ["expected a JSON object, got list"]),
    ("not json", ["not valid JSON"]),
])
def test_hand_edited_trainer_state_is_one_line(tiny_dir, data_dir, tmp_path, capsys, edit, parts):
    flags = dict(max_steps=4, save_steps=2, per_device_train_batch_size=2)
    out = tmp_path / "out"
    assert main(train_flags(tiny_dir, data_dir, out, **flags)) == 0
    state_path = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    if isinstance(edit, dict):
        state_path.write_text(json.dumps({**state, **edit}))
    else:
        state_path.write_text(edit if isinstance(edit, str) else json.dumps(edit))
    capsys.readouterr()
    for value in ("true", str(out / "checkpoint-2")):
        assert main(train_flags(tiny_dir, data_dir, out, resume_from_checkpoint=value, **flags)) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ": error: " in ln]
        assert "Traceback" not in err and len(lines) == 1, err
        assert str(state_path) in lines[0] and all(p in lines[0] for p in parts), lines[0]


def test_a_step_beyond_an_epoch_run_is_refused(tiny_dir, data_dir, tmp_path, capsys):
    """Without --max_steps the run's length is known once the data is: the step is checked then, before any
    file of output_dir changes."""
    flags = dict(max_steps=-1, num_train_epochs=1, save_steps=2, per_device_train_batch_size=4)
    out = tmp_path / "out"
    assert main(train_flags(tiny_dir, data_dir, out, **flags)) == 0  # 24 rows / 4: 6 updates
    state_path = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state.update(global_step=50, losses=[1.0] * 50)
    state_path.write_text(json.dumps(state))
    log_before = (out / "trainer_log.jsonl").read_text()
    capsys.readouterr()
    assert main(train_flags(tiny_dir, data_dir, out, resume_from_checkpoint=str(out / "checkpoint-2"), **flags)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'global_step' 50 is beyond this run's 6 updates" in line, line
    assert (out / "trainer_log.jsonl").read_text() == log_before
