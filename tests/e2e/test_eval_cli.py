"""`softprompt eval / sweep / inspect` on a tiny model, through the real CLI entry point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from softprompt.cli import main
from tests.helpers import train_flags, write_alpaca_dataset

REVIEWS = [("a great and moving film", "positive"), ("dull, flat and far too long", "negative"),
           ("the best movie of the year", "positive"), ("an awful mess", "negative"),
           ("charming and funny", "positive"), ("boring", "negative")]


def write_sentiment(folder: Path, n: int = 12) -> Path:
    rows = [{"instruction": "Classify the sentiment as positive or negative.", "input": REVIEWS[i % 6][0],
             "output": REVIEWS[i % 6][1]} for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "senti.json").write_text(json.dumps(rows))
    info = folder / "dataset_info.json"
    data = json.loads(info.read_text()) if info.exists() else {}
    data["senti"] = {"file_name": "senti.json"}
    info.write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_alpaca_dataset(folder)
    return write_sentiment(folder)


@pytest.fixture(scope="module")
def adapter(tiny_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters") / "senti"
    assert main(train_flags(tiny_dir, data_dir, out, dataset="senti", max_steps=3, val_size=4)) == 0
    return out


def eval_argv(tiny_dir, data_dir, out, **flags) -> list[str]:
    argv = ["eval", "--model_name_or_path", str(tiny_dir), "--dataset_dir", str(data_dir), "--output_dir", str(out)]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return argv


def test_classification_table_with_base_and_adapters(tiny_dir, data_dir, adapter, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(eval_argv(tiny_dir, data_dir, out, dataset="senti", task="classification", save_predictions="true",
                          adapter_name_or_path=f"none,{adapter}", per_device_eval_batch_size=5)) == 0
    printed = capsys.readouterr().out
    assert "accuracy %" in printed and "(no adapter)" in printed and str(adapter) in printed
    report = json.loads((out / "eval_results.json").read_text())
    assert [r["adapter"] for r in report["results"]] == [None, str(adapter)]
    rows = [json.loads(x) for x in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    for result in report["results"]:
        assert result["labels"] == ["negative", "positive"] and result["examples"] == 12
        mine = [r for r in rows if r["model"] == result["model"]]
        assert all(r["predict"] == max(r["scores"], key=r["scores"].get) for r in mine)
        assert result["accuracy"] == pytest.approx(100 * sum(r["predict"] == r["label"] for r in mine) / 12)
        assert sum(map(sum, result["confusion_matrix"])) == 12
    assert "confusion matrix" in (out / "eval_results.md").read_text()


def test_label_words_and_mean_score(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "ev"
    assert main(eval_argv(tiny_dir, data_dir, out, dataset="senti", task="classification",
                          label_words="positive,negative,neutral", label_score="mean", max_samples=4)) == 0
    result = json.loads((out / "eval_results.json").read_text())["results"][0]
    assert result["labels"] == ["positive", "negative", "neutral"] and len(result["confusion_matrix"]) == 3


def test_loss_matches_training_validation_loss(tiny_dir, data_dir, adapter, tmp_path):
    out = tmp_path / "ev"
    assert main(eval_argv(tiny_dir, data_dir, out, dataset="senti", task="loss", val_size=4,
                          adapter_name_or_path=adapter)) == 0
    result = json.loads((out / "eval_results.json").read_text())["results"][0]
    trained = json.loads((adapter / "train_results.json").read_text())
    assert result["examples"] == 4 and result["loss"] == pytest.approx(trained["eval_loss"], abs=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_generation_metrics(tiny_dir, data_dir, adapter, tmp_path):
    out = tmp_path / "ev"
    assert main(eval_argv(tiny_dir, data_dir, out, dataset="toy", task="generation", max_samples=4,
                          max_new_tokens=3, save_predictions="true", adapter_name_or_path=adapter)) == 0
    result = json.loads((out / "eval_results.json").read_text())["results"][0]
    assert {"exact_match", "rouge_l", "bleu_4"} <= set(result) and result["examples"] == 4
    rows = [json.loads(x) for x in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert rows[0]["label"] == "Paris is the capital of France." and "predict" in rows[0]


def test_eval_errors_are_one_line(tiny_dir, data_dir, tmp_path, capsys):
    assert main(eval_argv(tiny_dir, data_dir, tmp_path / "e", dataset="senti",
                          adapter_name_or_path=tmp_path / "missing")) == 2
    assert main(eval_argv(tiny_dir, data_dir, tmp_path / "e", dataset="senti", label_words="positive")) == 2
    assert main(eval_argv(tiny_dir, data_dir, tmp_path / "e", dataset="senti", task="ranking")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("error:" in line for line in err)
    assert "--label_words needs at least two" in err[1] and "--task must be one of" in err[2]


def test_sweep_three_lengths_two_inits(tiny_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = train_flags(tiny_dir, data_dir, out, dataset="senti", max_steps=2, val_size=4, logging_steps=2)
    argv = ["sweep"] + [a for a in argv[1:]] + ["--num_virtual_tokens", "2,4,8", "--prompt_tuning_init", "random,text",
                                                "--prompt_tuning_init_text", "Classify the sentiment",
                                                "--task", "classification"]
    i = argv.index("--num_virtual_tokens")  # train_flags sets it too: the sweep's list, given last, wins
    del argv[i:i + 2]
    assert main(argv) == 0
    report = json.loads((out / "sweep_results.json").read_text())
    assert len(report["runs"]) == 6 and report["metric"] == "accuracy"
    assert {(r["num_virtual_tokens"], r["init"]) for r in report["runs"]} == {
        (n, i) for n in (2, 4, 8) for i in ("random", "text")}
    assert report["best"] in {r["run"] for r in report["runs"]}
    for r in report["runs"]:
        assert (Path(r["adapter"]) / "adapter_model.safetensors").is_file() and r["eval_loss"] > 0
        assert 0 <= r["accuracy"] <= 100
    assert (out / "sweep.png").stat().st_size > 5000
    assert "best by accuracy" in (out / "sweep_results.md").read_text() and "best by" in capsys.readouterr().out


def test_sweep_needs_a_validation_split(tiny_dir, data_dir, tmp_path, capsys):
    argv = ["sweep", "--model_name_or_path", str(tiny_dir), "--dataset", "senti", "--dataset_dir", str(data_dir),
            "--output_dir", str(tmp_path / "s"), "--num_virtual_tokens=2,x"]
    assert main(argv) == 2
    assert main(argv[:-1] + ["--num_virtual_tokens=2,4"]) == 2
    err = capsys.readouterr().err
    assert "--num_virtual_tokens expects comma-separated int values" in err and "set --val_size" in err


def test_inspect_reads_a_text_initialised_prompt(tiny_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "pt"
    assert main(train_flags(tiny_dir, data_dir, out, num_virtual_tokens=3, prompt_tuning_init="text",
                            prompt_tuning_init_text="The quick brown", learning_rate=1e-7, max_steps=1)) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json", "--top_k", "2"]) == 0  # base model taken from the adapter
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "PROMPT_TUNING" and info["num_virtual_tokens"] == 3 and info["token_dim"] == 64
    assert info["parameters"] == 3 * 64 and info["bytes_on_disk"] > 3 * 64 * 4 and info["init"] == "text"
    # barely trained: each virtual token is still its init token, the nearest at cosine 1
    from transformers import AutoTokenizer

    text_ids = AutoTokenizer.from_pretrained(tiny_dir)("The quick brown", add_special_tokens=False)["input_ids"]
    nearest = [t["nearest"][0] for t in info["virtual_tokens"]]
    assert [n["id"] for n in nearest] == text_ids[:3] and "The quick brown".startswith("".join(n["token"] for n in nearest))
    assert all(n["cosine"] == pytest.approx(1.0, abs=1e-4) for n in nearest)
    assert not any(t["off_manifold"] for t in info["virtual_tokens"])
    assert main(["inspect", str(out), "--model_name_or_path", str(tiny_dir)]) == 0
    text = capsys.readouterr().out
    assert "3 virtual tokens x 64 dims = 192 parameters" in text and "nearest vocabulary tokens" in text
    assert main(["inspect", str(tmp_path / "nope")]) == 2
