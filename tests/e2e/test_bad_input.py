"""Bad input through the real CLI: one line naming the file + row or the argument, exit code 2,
no traceback (unless --debug), and nothing written to output_dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softprompt.checkpoint import write_adapter_files
from softprompt.cli import main
from softprompt.methods.prompt_tuning import peft_prompt_config
from tests.helpers import train_flags, write_alpaca_dataset
from tests.tiny import build_model, build_tokenizer

GOOD = {"instruction": "What is 2 + 2?", "output": "4"}


def dataset(root: Path, content: str | bytes | list, file_name: str = "toy.jsonl", **entry) -> Path:
    """A dataset_dir whose dataset 'toy' is ``file_name`` holding ``content`` (rows -> JSON lines)."""
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(content, list):
        content = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in content)
    path = root / file_name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": file_name, **entry}}))
    return root


def refused(argv: list[str], capsys, *parts: str, out: Path | None = None) -> str:
    """Run the CLI, expect exit 2 with one error line holding every part, and no output_dir."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    for part in parts:
        assert part in lines[0], lines[0]
    if out is not None:
        assert not out.exists(), f"{out} was written before the input was validated"
    return lines[0]


def bad_data(tiny_dir, tmp_path, capsys, data_dir: Path, *parts: str, **extra) -> str:
    out = tmp_path / "out"
    return refused(train_flags(tiny_dir, data_dir, out, **extra), capsys, *parts, out=out)


# ------------------------------------------------------------------------------ datasets and files


def test_unknown_dataset_lists_the_names(tiny_dir, tmp_path, capsys):
    data = write_alpaca_dataset(tmp_path / "data")
    write_alpaca_dataset(data, name="other")
    bad_data(tiny_dir, tmp_path, capsys, data, "'nope' is not in", "dataset_info.json", "toy, other", dataset="nope")


def test_dataset_info_missing_or_not_json(tiny_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_data(tiny_dir, tmp_path, capsys, empty, f"{empty / 'dataset_info.json'}: not found")
    (empty / "dataset_info.json").write_text('{"toy": {"file_name": "toy.json",}')
    bad_data(tiny_dir, tmp_path, capsys, empty, "dataset_info.json line 1", "not valid JSON")
    (empty / "dataset_info.json").write_text('["toy"]')
    bad_data(tiny_dir, tmp_path, capsys, empty, "dataset_info.json", "expected an object", "got list")


def test_missing_file_and_unsupported_extension(tiny_dir, tmp_path, capsys):
    data = dataset(tmp_path / "d1", [GOOD], file_name="toy.jsonl")
    (data / "toy.jsonl").unlink()
    bad_data(tiny_dir, tmp_path, capsys, data, "toy.jsonl: file not found")
    data = dataset(tmp_path / "d2", [GOOD], file_name="toy.txt")
    bad_data(tiny_dir, tmp_path, capsys, data, "toy.txt: unsupported file type '.txt'", ".jsonl")


@pytest.mark.parametrize("file_name, content, parts", [
    ("toy.json", json.dumps([GOOD, 5]), ["toy.json index 1", "expected a JSON object, got int"]),
    ("toy.jsonl", [GOOD, "[1, 2]"], ["toy.jsonl line 2", "expected a JSON object, got list"]),
    ("toy.jsonl", [GOOD, GOOD, {"output": "x"}], ["toy.jsonl line 3", "missing 'instruction'"]),
    ("toy.jsonl", [GOOD, {"instruction": 5, "output": "x"}], ["toy.jsonl line 2", "'instruction' must be a string, got int"]),
    ("toy.jsonl", [{"instruction": "q"}], ["toy.jsonl line 1", "missing 'output'"]),
    ("toy.json", json.dumps([GOOD, GOOD, {"instruction": "q", "output": ["a"]}]),
     ["toy.json index 2", "'output' must be a string, got list"]),
    ("toy.jsonl", [GOOD, '{"instruction": "q",'], ["toy.jsonl line 2", "not valid JSON"]),
    ("toy.jsonl", b'{"instruction": "q", "output": "a"}\n{"instruction": "caf\xe9", "output": "a"}\n',
     ["toy.jsonl line 2", "not UTF-8"]),
    ("toy.json", b'[{"instruction": "q", "output": "a"},\n {"instruction": "\xff", "output": "a"}]',
     ["toy.json line 2", "not UTF-8"]),
])
def test_bad_alpaca_rows_name_file_and_row(tiny_dir, tmp_path, capsys, file_name, content, parts):
    bad_data(tiny_dir, tmp_path, capsys, dataset(tmp_path / "data", content, file_name), *parts)


SHARE = {"formatting": "sharegpt"}


def turns(*pairs: tuple[str, str]) -> dict:
    return {"conversations": [{"from": role, "value": text} for role, text in pairs]}


@pytest.mark.parametrize("row, parts", [
    (turns(("gpt", "a"), ("human", "q")), ["turn 1 has role 'assistant'", "must alternate"]),
    (turns(("human", "q"), ("human", "q2")), ["turn 2 has role 'user'", "must alternate"]),
    (turns(("human", "q"), ("robot", "a")), ["turn 2", "'from' must be one of", "'robot'"]),
    ({"conversations": []}, ["'conversations' is empty"]),
    (turns(("system", "be brief")), ["the conversation has no turns"]),
    (turns(("human", "q"), ("gpt", 3)), ["turn 2", "'value' must be a string, got int"]),
    (turns(("human", "q")), ["must end with an assistant turn"]),
])
def test_bad_sharegpt_rows_name_file_and_line(tiny_dir, tmp_path, capsys, row, parts):
    good = turns(("human", "q"), ("gpt", "a"))
    data = dataset(tmp_path / "data", [good, row], **SHARE)
    bad_data(tiny_dir, tmp_path, capsys, data, "toy.jsonl line 2", *parts)


def test_every_example_truncated_away_and_val_size_too_big(tiny_dir, tmp_path, capsys):
    data = write_alpaca_dataset(tmp_path / "data")
    bad_data(tiny_dir, tmp_path, capsys, data, "no example has a labelled token left", "within 2 tokens", "--cutoff_len",
             cutoff_len=2, train_on_prompt="false")
    bad_data(tiny_dir, tmp_path, capsys, data, "--val_size 100", "of the 16 examples", val_size=100)
    bad_data(tiny_dir, tmp_path, capsys, data, "--val_size 16", "leaves none for training", val_size=16)


# ------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("flag, value, parts", [
    ("finetuning_type", "bogus", ["--finetuning_type must be one of", "prompt_tuning", "'bogus'"]),
    ("lr_scheduler_type", "bogus", ["--lr_scheduler_type must be one of", "cosine", "'bogus'"]),
    ("template", "bogus", ["unknown --template 'bogus'", "default"]),
    ("template", "missing.jinja", ["--template missing.jinja: file not found"]),
    ("num_virtual_tokens", "0", ["--num_virtual_tokens must be at least 1, got 0"]),
    ("num_virtual_tokens", "-3", ["--num_virtual_tokens must be at least 1, got -3"]),
    ("num_virtual_tokens", "2.5", ["--num_virtual_tokens expects int, got '2.5'"]),
    ("learning_rate", "0", ["--learning_rate must be positive"]),
    ("learning_rate", "-1e-3", ["--learning_rate must be positive"]),
    ("learning_rate", "nan", ["--learning_rate must be a finite number, got nan"]),
    ("learning_rate", "inf", ["--learning_rate must be a finite number, got inf"]),
    ("learning_rate", "fast", ["--learning_rate expects float, got 'fast'"]),
    ("per_device_train_batch_size", "0", ["--per_device_train_batch_size must be at least 1, got 0"]),
    ("per_device_eval_batch_size", "-1", ["--per_device_eval_batch_size must be at least 1"]),
    ("gradient_accumulation_steps", "0", ["--gradient_accumulation_steps must be at least 1"]),
    ("cutoff_len", "1", ["--cutoff_len must be at least 2"]),
    ("max_source_length", "0", ["--max_source_length must be a positive number"]),
    ("max_steps", "0", ["--max_steps must be positive or -1"]),
    ("warmup_ratio", "1.5", ["--warmup_ratio must be in [0, 1)"]),
    ("warmup_steps", "-1", ["--warmup_steps must be at least 0, got -1"]),
    ("logging_steps", "0", ["--logging_steps must be at least 1"]),
    ("save_steps", "-5", ["--save_steps must be at least 0 (0 disables), got -5"]),
    ("save_total_limit", "0", ["--save_total_limit must be at least 1, got 0"]),
    ("eval_steps", "0", ["--eval_steps must be at least 1, got 0"]),
    ("weight_decay", "-0.1", ["--weight_decay must be at least 0, got -0.1"]),
    ("max_grad_norm", "-1", ["--max_grad_norm must be at least 0 (0 disables clipping), got -1"]),
    ("adam_beta1", "1", ["--adam_beta1 must be in [0, 1), got 1"]),
    ("adam_beta2", "-0.5", ["--adam_beta2 must be in [0, 1)"]),
    ("adam_epsilon", "-1e-8", ["--adam_epsilon must be at least 0"]),
    ("val_size", "-0.5", ["--val_size must be a fraction"]),
    ("val_size", "2.5", ["--val_size must be a fraction"]),
    ("max_samples", "0", ["--max_samples must be at least 1"]),
    ("encoder_dropout", "1", ["--encoder_dropout must be in [0, 1)"]),
    ("fp16", "maybe", ["--fp16 expects true or false, got 'maybe'"]),
    ("no_such_flag", "1", ["unknown argument '--no_such_flag'"]),
])
def test_bad_arguments_name_the_argument(tiny_dir, tmp_path, capsys, flag, value, parts):
    data = write_alpaca_dataset(tmp_path / "data")
    extra = {flag: value}
    if flag == "encoder_dropout":
        extra["finetuning_type"] = "p_tuning"
    bad_data(tiny_dir, tmp_path, capsys, data, *parts, **extra)


def test_num_train_epochs_must_be_positive(tiny_dir, tmp_path, capsys):
    data = write_alpaca_dataset(tmp_path / "data")
    bad_data(tiny_dir, tmp_path, capsys, data, "--num_train_epochs must be positive", max_steps=-1, num_train_epochs=0)


def test_debug_shows_the_traceback(tiny_dir, tmp_path):
    from softprompt.data import DataError

    data = write_alpaca_dataset(tmp_path / "data")
    with pytest.raises(DataError, match="'nope' is not in"):
        main(train_flags(tiny_dir, data, tmp_path / "out", dataset="nope") + ["--debug"])
    assert not (tmp_path / "out").exists()


def test_the_real_process_exits_2_without_traceback(tiny_dir, tmp_path):
    data = dataset(tmp_path / "data", [GOOD, "[1]"])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "softprompt", *train_flags(tiny_dir, data, out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"softprompt train: error: {data / 'toy.jsonl'} line 2: expected a JSON object, got list")
    assert not out.exists()


def test_predict_validates_data_before_writing(tiny_dir, tmp_path, capsys):
    data = dataset(tmp_path / "data", [GOOD, {"instruction": None, "output": "x"}])
    out = tmp_path / "pred"
    refused(["predict", "--model_name_or_path", str(tiny_dir), "--dataset", "toy", "--dataset_dir", str(data),
             "--output_dir", str(out)], capsys, "toy.jsonl line 2", "missing 'instruction'", out=out)


# -------------------------------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-adapter")
    data = write_alpaca_dataset(root / "data")
    assert main(train_flags(tiny_dir, data, root / "adapter", max_steps=1)) == 0
    return root / "adapter"


def copy_adapter(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.glob("adapter_*"):
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def use_adapter(tiny_dir: Path, adapter: Path, tmp_path: Path, capsys, *parts: str) -> None:
    """Both chat and continued training refuse the adapter with one line."""
    refused(["chat", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(adapter),
             "--query", "hi", "--max_new_tokens", "2"], capsys, *parts)
    data = write_alpaca_dataset(tmp_path / "data")
    bad_data(tiny_dir, tmp_path, capsys, data, *parts, adapter_name_or_path=adapter)


def test_adapter_for_another_hidden_size(tiny_dir, tmp_path, capsys):
    tok = build_tokenizer()
    other = build_model(len(tok))
    other.config.hidden_size = 32  # only the config is read for the adapter's dimensions
    folder = tmp_path / "other-hidden"
    config = peft_prompt_config("PROMPT_TUNING", "some/other-model", other, 4, 32)
    write_adapter_files(folder, {"prompt_embeddings": torch.randn(4, 32)}, config)
    use_adapter(tiny_dir, folder, tmp_path, capsys, str(folder), "token_dim 32", "hidden size 64",
                "'some/other-model'")


def test_adapter_for_another_vocabulary(trained, tmp_path, capsys):
    tok = build_tokenizer()
    other = tmp_path / "bigger-vocab"
    model = build_model(len(tok) + 64)  # same hidden size, another vocabulary
    model.save_pretrained(other)
    tok.save_pretrained(other)
    use_adapter(other, trained, tmp_path, capsys, str(trained), "vocabulary of", str(len(tok)),
                str(len(tok) + 64))


@pytest.mark.parametrize("damage, parts", [
    ("no_weights", ["no adapter_model.safetensors"]),
    ("no_config", ["no adapter_config.json"]),
    ("truncated_weights", ["adapter_model.safetensors: unreadable safetensors file"]),
    ("garbage_weights", ["adapter_model.safetensors: unreadable safetensors file"]),
    ("config_not_json", ["adapter_config.json: not valid JSON"]),
    ("config_not_peft", ["expected a JSON object with a 'peft_type'"]),
    ("wrong_tensor", ["no 'prompt_embeddings' tensor"]),
    ("legacy_bin_garbage", ["adapter_model.bin: unreadable"]),
    ("missing_folder", ["adapter folder not found"]),
])
def test_damaged_adapter_folder(tiny_dir, trained, tmp_path, capsys, damage, parts):
    folder = copy_adapter(trained, tmp_path / "damaged")
    weights, config = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if damage == "no_weights":
        weights.unlink()
    elif damage == "no_config":
        config.unlink()
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:-40])
    elif damage == "garbage_weights":
        weights.write_bytes(b"\x00\x01garbage" * 10)
    elif damage == "config_not_json":
        config.write_text('{"peft_type": "PROMPT_TUNING",')
    elif damage == "config_not_peft":
        config.write_text("[1, 2]")
    elif damage == "wrong_tensor":
        from safetensors.torch import save_file
        save_file({"something_else": torch.zeros(4, 64)}, str(weights))
    elif damage == "legacy_bin_garbage":
        weights.unlink()
        (folder / "adapter_model.bin").write_bytes(b"not a pickle at all")
    elif damage == "missing_folder":
        folder = tmp_path / "nowhere"
    use_adapter(tiny_dir, folder, tmp_path, capsys, *parts)


@pytest.mark.parametrize("damage, parts", [
    ("truncated_weights", ["could not load the model", "SafetensorError"]),
    ("no_weights", ["model not found", "no file named model.safetensors"]),
    ("config_not_json", ["model not found", "config.json' is not a valid JSON file"]),
    ("tokenizer_not_json", ["could not load the model or its tokenizer", "JSONDecodeError"]),
])
def test_damaged_model_folder(tiny_dir, tmp_path, capsys, damage, parts):
    """A model folder (a base, or what full / freeze training writes) with a missing or damaged file."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "config_not_json":
        (folder / "config.json").write_text("{oops")
    elif damage == "tokenizer_not_json":
        (folder / "tokenizer.json").write_text("{oops")
    refused(["chat", "--model_name_or_path", str(folder), "--query", "hi"], capsys, *parts)
    refused(["chat", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(folder), "--query", "hi"],
            capsys, *parts)
