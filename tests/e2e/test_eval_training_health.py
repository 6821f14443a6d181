"""Training health: a non-finite loss stops the run and keeps the last good adapter; early stopping
and --load_best_model_at_end on the validation loss."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.checkpoint import load_adapter
from softprompt.cli import main
from softprompt.engine.forward import AdaptedLM
from tests.helpers import train_flags, write_alpaca_dataset


@pytest.fixture()
def data_dir(tmp_path):
    return write_alpaca_dataset(tmp_path / "data")


def test_non_finite_loss_stops_and_keeps_the_last_good_adapter(tiny_dir, data_dir, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    forward = AdaptedLM.forward

    def nan_on_third_step(self, *args, **kwargs):
        calls["n"] += 1
        loss_sum, n = forward(self, *args, **kwargs)
        return (loss_sum * float("nan") if calls["n"] == 3 else loss_sum), n

    monkeypatch.setattr(AdaptedLM, "forward", nan_on_third_step)
    out = tmp_path / "out"
    assert main(train_flags(tiny_dir, data_dir, out, max_steps=5, save_steps=1)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line or "Traceback" in line]
    assert len(err) == 1, err
    assert "step 3: the loss or gradient became non-finite" in err[0] and "lower --learning_rate" in err[0]
    assert "after 1 updates" in err[0]
    # the adapter in output_dir is the one step 2 used (after 1 update), finite, and it loads
    _, kept, _ = load_adapter(out)
    _, ckpt1, _ = load_adapter(out / "checkpoint-1")
    _, ckpt2, _ = load_adapter(out / "checkpoint-2")
    assert torch.isfinite(kept["prompt_embeddings"]).all()
    assert torch.equal(kept["prompt_embeddings"], ckpt1["prompt_embeddings"])
    assert not torch.equal(kept["prompt_embeddings"], ckpt2["prompt_embeddings"])
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 3
    capsys.readouterr()
    assert main(["chat", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(out),
                 "--query", "hi", "--max_new_tokens", "2"]) == 0


def test_early_stopping_and_best_adapter(tiny_dir, data_dir, tmp_path, monkeypatch):
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0, 1.0])
    monkeypatch.setattr("softprompt.train.loop.evaluate_loss", lambda *a: next(losses))
    out = tmp_path / "out"
    assert main(train_flags(tiny_dir, data_dir, out, max_steps=6, save_steps=1, val_size=4, eval_steps=1,
                            early_stopping_patience=2, load_best_model_at_end="true")) == 0
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["eval_loss"] for r in rows if "eval_loss" in r] == [3.0, 2.0, 2.5, 2.6]  # stopped after step 4
    result = json.loads((out / "train_results.json").read_text())
    assert result["global_step"] == 4 and result["best_step"] == 2 and result["best_eval_loss"] == 2.0
    _, best, _ = load_adapter(out)
    _, ckpt2, _ = load_adapter(out / "checkpoint-2")
    assert torch.equal(best["prompt_embeddings"], ckpt2["prompt_embeddings"])


def test_health_flags_need_a_validation_split(tiny_dir, data_dir, tmp_path, capsys):
    assert main(train_flags(tiny_dir, data_dir, tmp_path / "a", early_stopping_patience=2)) == 2
    assert "--early_stopping_patience needs --eval_steps" in capsys.readouterr().err
    assert main(train_flags(tiny_dir, data_dir, tmp_path / "b", load_best_model_at_end="true")) == 2
    assert "--load_best_model_at_end needs a validation split: set --val_size" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
