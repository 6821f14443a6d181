"""`softprompt train / predict / chat` on a tiny model, through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from softprompt.checkpoint import load_adapter
from softprompt.cli import main
from tests.helpers import train_flags, write_alpaca_dataset


@pytest.fixture()
def data_dir(tmp_path):
    return write_alpaca_dataset(tmp_path / "data")


def test_train_writes_log_plot_checkpoints_and_validation(tiny_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = train_flags(tiny_dir, data_dir, out, max_steps=4, save_steps=2, val_size=0.25, eval_steps=2,
                       plot_loss="true", gradient_accumulation_steps=2, lr_scheduler_type="cosine", warmup_steps=1)
    assert main(argv) == 0
    assert "validation loss" in capsys.readouterr().out
    assert (out / "training_loss.png").stat().st_size > 1000
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoint-4").exists()  # the final adapter sits in output_dir itself
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["current_steps"] for r in train_rows] == [1, 2, 3, 4]
    for key in ("learning_rate", "grad_norm", "tokens_per_second", "epoch"):
        assert all(key in r for r in train_rows)
    assert train_rows[0]["learning_rate"] < train_rows[1]["learning_rate"]  # warmup then cosine decay
    assert train_rows[-1]["learning_rate"] < train_rows[1]["learning_rate"]
    assert [r["current_steps"] for r in rows if "eval_loss" in r] == [2, 4]
    load_adapter(out / "checkpoint-2")


def test_refuses_non_empty_output_dir_and_keeps_it(tiny_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(train_flags(tiny_dir, data_dir, out)) == 2
    err = capsys.readouterr().err
    assert "is not empty; pass --overwrite_output_dir" in err and "Traceback" not in err
    assert (out / "precious.txt").read_text() == "keep me"
    assert main(train_flags(tiny_dir, data_dir, out, overwrite_output_dir="true")) == 0
    # issue 16: --overwrite_output_dir replaces softprompt's own outputs only; a file it did not write stays
    assert (out / "precious.txt").read_text() == "keep me" and (out / "adapter_config.json").is_file()


def test_bad_data_writes_nothing(tiny_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_flags(tiny_dir, data_dir, out, dataset="nope")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "toy" in err[0]
    assert not out.exists()


def test_missing_model_is_one_line(tmp_path, data_dir, capsys):
    assert main(train_flags(tmp_path / "no-model", data_dir, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model not found" in err[0] and "never downloads" in err[0]


def test_yaml_config_with_flag_override(tiny_dir, data_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_dir), "dataset": "toy", "dataset_dir": str(data_dir),
        "finetuning_type": "prompt_tuning", "num_virtual_tokens": 3, "output_dir": str(tmp_path / "a"),
        "max_steps": 1, "plot_loss": False,
    }))
    assert main(["train", str(config), "--num_virtual_tokens", "5", "--output_dir", str(tmp_path / "b")]) == 0
    config_out, state, _ = load_adapter(tmp_path / "b")
    assert config_out["num_virtual_tokens"] == 5 and state["prompt_embeddings"].shape[0] == 5
    assert not (tmp_path / "a").exists()
    saved = yaml.safe_load((tmp_path / "b" / "training_args.yaml").read_text())
    assert saved["num_virtual_tokens"] == 5 and saved["max_steps"] == 1


def test_unknown_argument_and_bad_value(tiny_dir, data_dir, tmp_path, capsys):
    assert main(train_flags(tiny_dir, data_dir, tmp_path / "o", lora_rnk=8)) == 2
    assert "unknown argument '--lora_rnk'" in capsys.readouterr().err
    assert main(train_flags(tiny_dir, data_dir, tmp_path / "o", learning_rate="fast")) == 2
    assert "--learning_rate expects float, got 'fast'" in capsys.readouterr().err
    assert main(train_flags(tiny_dir, data_dir, tmp_path / "o", lr_scheduler_type="cosine_restarts")) == 2
    assert "--lr_scheduler_type must be one of cosine, linear" in capsys.readouterr().err


def test_fp16_on_cpu_gives_a_notice_not_a_crash(tiny_dir, data_dir, tmp_path, caplog):
    assert main(train_flags(tiny_dir, data_dir, tmp_path / "p") + ["--fp16"]) == 0
    assert "--fp16 needs a GPU; on the cpu training runs in fp32 instead" in caplog.text


def test_help_lists_every_argument():
    out = subprocess.run([sys.executable, "-m", "softprompt", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("--model_name_or_path", "--dataset_dir", "--finetuning_type", "--num_virtual_tokens",
                 "--prompt_tuning_init_text", "--cutoff_len", "--max_source_length", "--val_size",
                 "--gradient_accumulation_steps", "--lr_scheduler_type", "--save_steps", "--fp16", "--plot_loss"):
        assert name in out.stdout
    assert "Length of the soft prompt" in out.stdout


def test_predict_batched_equals_unbatched_and_chat(tiny_dir, data_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    assert main(train_flags(tiny_dir, data_dir, adapter)) == 0
    outs = {}
    for bs in (1, 5):
        folder = tmp_path / f"pred{bs}"
        assert main(["predict", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(adapter),
                     "--dataset", "toy", "--dataset_dir", str(data_dir), "--output_dir", str(folder),
                     "--per_device_eval_batch_size", str(bs), "--max_new_tokens", "6"]) == 0
        outs[bs] = [json.loads(x) for x in (folder / "generated_predictions.jsonl").read_text().splitlines()]
    assert outs[1] == outs[5] and len(outs[1]) == 16
    first = outs[1][0]
    assert first["prompt"].startswith("<|im_start|>system") and first["prompt"].endswith("<|im_start|>assistant\n")
    assert first["label"] == "Paris is the capital of France."
    capsys.readouterr()
    assert main(["chat", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(adapter),
                 "--query", "Give three tips for staying healthy.", "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == outs[1][1]["predict"]


def test_continue_training_from_an_adapter(tiny_dir, data_dir, tmp_path):
    assert main(train_flags(tiny_dir, data_dir, tmp_path / "a", num_virtual_tokens=3)) == 0
    _, first, _ = load_adapter(tmp_path / "a")
    assert main(train_flags(tiny_dir, data_dir, tmp_path / "b", adapter_name_or_path=tmp_path / "a",
                            max_steps=1, learning_rate=1e-6)) == 0
    _, second, _ = load_adapter(tmp_path / "b")
    assert second["prompt_embeddings"].shape == (3, 64)  # its length, not --num_virtual_tokens 4
    assert (second["prompt_embeddings"] - first["prompt_embeddings"]).abs().max() < 1e-4


def test_interactive_chat_reads_stdin(tiny_dir):
    out = subprocess.run([sys.executable, "-m", "softprompt", "chat", "--model_name_or_path", str(tiny_dir),
                          "--max_new_tokens", "3"], input="hello\nclear\nhi again\nexit\n",
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Assistant:") == 2


def test_base_model_without_chat_template_needs_template(tiny_base_dir, data_dir, tmp_path, capsys):
    assert main(train_flags(tiny_base_dir, data_dir, tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--template" in err[0]
    assert not (tmp_path / "o").exists()
    assert main(train_flags(tiny_base_dir, data_dir, tmp_path / "o", template="default")) == 0
    assert main(["predict", "--model_name_or_path", str(tiny_base_dir), "--adapter_name_or_path", str(tmp_path / "o"),
                 "--dataset", "toy", "--dataset_dir", str(data_dir), "--template", "default", "--max_samples", "1",
                 "--output_dir", str(tmp_path / "p"), "--max_new_tokens", "2"]) == 0
    row = json.loads((tmp_path / "p" / "generated_predictions.jsonl").read_text())
    assert row["prompt"] == "Human: What is the capital of France?\nextra input\nAssistant:"


def test_every_example_config_parses():
    from pathlib import Path

    from softprompt.arguments import parse_args
    from softprompt.command_args import CompareArgs, TaskArgs
    from softprompt.config import DataArgs, MethodArgs, ModelArgs, TrainArgs
    from softprompt.methods import METHODS

    root = Path(__file__).resolve().parents[2] / "examples"
    examples = sorted(root.glob("*.yaml"))
    assert {p.stem for p in examples} >= set(METHODS)  # one commented config per method
    for path in examples:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and "softprompt" in first  # the launch command on top
        (model, data, method, train), _ = parse_args([str(path)], [ModelArgs, DataArgs, MethodArgs, TrainArgs])
        assert method.finetuning_type == (path.stem if path.stem in METHODS else "prompt_tuning") and train.output_dir
    for path in sorted((root / "compare").glob("*.yaml")):
        assert path.read_text().startswith("# softprompt compare ")
        *_, compare = parse_args([str(path)], [ModelArgs, DataArgs, MethodArgs, TrainArgs, TaskArgs, CompareArgs])[0]
        assert len(compare.method_list()) == 6
