"""`softprompt compare` with all six methods on the tiny model: each trains in its own process with
the same data, steps and seed; compare.json / .md / .png hold the figures, each run is reusable."""

from __future__ import annotations

import json

from softprompt.cli import main
from tests.helpers import write_alpaca_dataset

METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning", "lora", "freeze", "full"]


def _sentiment(folder):
    rows = [{"instruction": f"Review: {text}. Sentiment?", "output": label}
            for text, label in [("a great film", "positive"), ("dull and long", "negative"), ("loved it", "positive"),
                                ("awful acting", "negative"), ("a joy", "positive"), ("a mess", "negative")]]
    (folder / "senti.json").write_text(json.dumps(rows))
    info = json.loads((folder / "dataset_info.json").read_text())
    info["senti"] = {"file_name": "senti.json"}
    (folder / "dataset_info.json").write_text(json.dumps(info))


def test_compare_six_methods(tiny_dir, tmp_path, capsys):
    data = write_alpaca_dataset(tmp_path / "data", n=20)
    _sentiment(data)
    out = tmp_path / "cmp"
    argv = ["compare", "--model_name_or_path", str(tiny_dir), "--dataset", "toy", "--dataset_dir", str(data),
            "--max_steps", "3", "--per_device_train_batch_size", "4", "--val_size", "4", "--logging_steps", "1",
            "--save_steps", "0", "--num_virtual_tokens", "4", "--lora_rank", "2", "--freeze_trainable_layers", "1",
            "--method_learning_rates", "prompt_tuning=1e-2", "--eval_dataset", "senti", "--task", "classification",
            "--output_dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == METHODS
    for method, r in rows.items():
        assert "error" not in r, (method, r.get("error"))
        assert r["steps"] == 3 and len(r["loss_curve"]) == 3 and r["eval_loss"] is not None
        assert r["trainable_params"] > 0 and r["checkpoint_bytes"] > 0 and r["peak_rss_bytes"] > 50 * 2**20
        assert r["train_tokens_per_second"] > 0 and r["switch_seconds"] > 0 and r["wall_seconds"] > 0
        assert r["metric"] == "accuracy" and 0 <= r["metric_value"] <= 100
        assert f"| {method} |" in printed
    # the same training budget, different methods: their sizes say which is which
    assert rows["prompt_tuning"]["trainable_params"] == 4 * 64
    assert rows["full"]["trainable_percent"] == 100.0
    assert rows["prompt_tuning"]["checkpoint_bytes"] < rows["lora"]["checkpoint_bytes"] < rows["full"]["checkpoint_bytes"]
    # --method_learning_rates for one method; the others train with their own recipe
    from softprompt.methods import get

    assert rows["prompt_tuning"]["learning_rate"] == 1e-2
    for method in ("lora", "full"):
        assert rows[method]["learning_rate"] == get(method).recipe.learning_rate
        first = json.loads((out / method / "trainer_log.jsonl").read_text().splitlines()[0])
        assert first["learning_rate"] == get(method).recipe.learning_rate  # what the run used
    # every run is an ordinary training output folder
    assert (out / "prefix_tuning" / "adapter_config.json").is_file()
    assert (out / "full" / "config.json").is_file() and (out / "full" / "trainer_log.jsonl").is_file()
    assert (out / "compare.md").read_text().count("\n| ") == 6 + 1
    assert (out / "compare.png").stat().st_size > 20_000


def test_compare_refuses_an_unknown_method_in_one_line(tiny_dir, tmp_path, capsys):
    data = write_alpaca_dataset(tmp_path / "data")
    assert main(["compare", "--model_name_or_path", str(tiny_dir), "--dataset", "toy", "--dataset_dir", str(data),
                 "--methods", "prompt_tuning,lorra", "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown method 'lorra'" in err
    assert not (tmp_path / "o").exists()
