"""Bad input to chat, predict, eval, serve and train that used to crash or hang (issue 16): through the real
CLI, each is one line naming the argument or file and what was expected, exit code 2, no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from softprompt.cli import main
from tests.e2e import test_bad_input
from tests.e2e.test_bad_input import GOOD, bad_data, copy_adapter, dataset, refused
from tests.helpers import train_flags, write_alpaca_dataset

trained = test_bad_input.trained  # its fixture: an adapter trained for one step on the tiny model


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a blocking open or read is interrupted after ``seconds``."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def chat(model: Path, *flags: str) -> list[str]:
    return ["chat", "--model_name_or_path", str(model), "--query", "hi", *flags]


def predict(model: Path, data: Path, out: Path, *flags: str) -> list[str]:
    return ["predict", "--model_name_or_path", str(model), "--dataset", "toy", "--dataset_dir", str(data),
            "--output_dir", str(out), *flags]


def evaluate(model: Path, data: Path, out: Path, *flags: str) -> list[str]:
    return ["eval", "--model_name_or_path", str(model), "--dataset", "toy", "--dataset_dir", str(data),
            "--output_dir", str(out), *flags]


# ------------------------------------------------------------------------------------------- tracebacks


@pytest.mark.parametrize("content", [b"hello, not a model\n", os.urandom(4096)], ids=["text", "random"])
def test_a_file_that_is_not_a_gguf_model(tmp_path, capsys, content):
    model = tmp_path / "x.gguf"
    model.write_bytes(content)
    refused(chat(model, "--cache_dir", str(tmp_path / "cache")), capsys, str(model), "not a GGUF model")


def test_a_cache_dir_that_cannot_be_written(tmp_path, capsys):
    model = tmp_path / "x.gguf"
    model.write_bytes(b"GGUF")
    (tmp_path / "a-file").write_text("")
    refused(chat(model, "--cache_dir", str(tmp_path / "a-file" / "cache")), capsys,
            f"cannot write the converted model to {tmp_path / 'a-file' / 'cache'}", "--cache_dir")


@pytest.mark.parametrize("seed", [str(2**70), str(2**64), str(-(2**63) - 1)])
def test_a_seed_torch_cannot_take(tiny_dir, tmp_path, capsys, seed):
    refused(chat(tiny_dir, "--seed", seed), capsys, "--seed must be in [-2**63, 2**64)", seed)
    bad_data(tiny_dir, tmp_path, capsys, write_alpaca_dataset(tmp_path / "data"), "--seed must be in", seed=seed)


def test_a_query_that_is_not_utf8(tiny_dir, tmp_path, capsys):
    refused(chat(tiny_dir, "--query", "caf\udce9"), capsys, "--query is not UTF-8 text", "character 4")
    refused(chat(tiny_dir, "--system", "\ud800"), capsys, "--system is not UTF-8 text")
    config = tmp_path / "chat.yaml"
    config.write_bytes(b"query: caf\xe9\n")
    refused(["chat", str(config)], capsys, str(config), "not UTF-8 text")


def test_the_real_process_takes_a_byte_that_is_not_utf8(tiny_dir):
    proc = subprocess.run([sys.executable, "-m", "softprompt", "chat", "--model_name_or_path", str(tiny_dir),
                           "--query", b"caf\xe9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "softprompt chat: error: --query is not UTF-8 text: character 4 is a lone surrogate "
        "(a byte that is not UTF-8, or half of a pair)")


def test_interactive_chat_skips_a_line_that_is_not_utf8(tiny_dir, monkeypatch, capsys):
    lines = iter(["caf\udce9", "exit"])
    monkeypatch.setattr("builtins.input", lambda _prompt: next(lines))
    assert main(["chat", "--model_name_or_path", str(tiny_dir), "--max_new_tokens", "2"]) == 0
    assert "that line is not UTF-8 text; type it again" in capsys.readouterr().err


def two_arguments(num_virtual_tokens, embedding_weight):
    return embedding_weight[:num_virtual_tokens]


def raises(num_virtual_tokens, embedding_weight, tokenizer):
    raise RuntimeError("the hook's own bug")


def returns_text(num_virtual_tokens, embedding_weight, tokenizer):
    return "not a tensor"


def returns_nan(num_virtual_tokens, embedding_weight, tokenizer):
    return embedding_weight[:num_virtual_tokens] * float("nan")


@pytest.mark.parametrize("hook, parts", [
    ("two_arguments", ["calling it as two_arguments(num_virtual_tokens, embedding_weight, tokenizer) failed",
                       "TypeError"]),
    ("raises", ["failed (RuntimeError: the hook's own bug)"]),
    ("returns_text", ["returned a str, expected (4, 64)"]),
    ("returns_nan", ["returned values that are not finite"]),
])
def test_an_init_hook_with_the_wrong_signature_or_that_fails(tiny_dir, tmp_path, capsys, hook, parts):
    spec = f"{__name__}:{hook}"
    bad_data(tiny_dir, tmp_path, capsys, write_alpaca_dataset(tmp_path / "data"), f"--prompt_tuning_init {spec}",
             *parts, prompt_tuning_init=spec)


def test_an_init_hook_module_that_cannot_be_imported(tiny_dir, tmp_path, capsys):
    data = write_alpaca_dataset(tmp_path / "data")
    bad_data(tiny_dir, tmp_path, capsys, data, "--prompt_tuning_init :f: cannot load it", prompt_tuning_init=":f")
    (tmp_path / "broken_hook_module.py").write_text("raise RuntimeError('broken at import')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        bad_data(tiny_dir, tmp_path, capsys, data, "cannot load it (RuntimeError: broken at import)",
                 prompt_tuning_init="broken_hook_module:f")
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("damage, part", [
    ("no_weights", "adapter_model.safetensors"),
    ("garbage_weights", "adapter_model.safetensors"),
    ("config_not_json", "adapter_config.json"),
])
def test_damaged_adapter_in_chat_predict_and_eval(tiny_dir, trained, tmp_path, capsys, damage, part):
    folder = copy_adapter(trained, tmp_path / "damaged")
    if damage == "no_weights":
        (folder / "adapter_model.safetensors").unlink()
    elif damage == "garbage_weights":
        (folder / "adapter_model.safetensors").write_bytes(os.urandom(300))
    else:
        (folder / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING", "num_virtual')
    adapter = ["--adapter_name_or_path", str(folder)]
    data = write_alpaca_dataset(tmp_path / "data")
    refused(chat(tiny_dir, *adapter), capsys, str(folder), part)
    refused(predict(tiny_dir, data, tmp_path / "pred", *adapter), capsys, str(folder), part, out=tmp_path / "pred")
    refused(evaluate(tiny_dir, data, tmp_path / "ev", "--adapter_name_or_path", f"none,{folder}"), capsys,
            str(folder), part)


# ---------------------------------------------------------------------------------- hangs and memory


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_a_dataset_file_that_is_not_a_regular_file(tiny_dir, tmp_path, capsys, kind):
    data = dataset(tmp_path / "data", [GOOD], file_name="toy.json")
    path = data / "toy.json"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
        part = "not a regular file (a named pipe)"
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
        part = "not a regular file (a character device)"
    else:
        path.mkdir()
        (path / "rows.json").write_text(json.dumps([GOOD]))
        part = "a folder, not a .json file"
    with deadline(60):
        bad_data(tiny_dir, tmp_path, capsys, data, str(path), part)
        refused(predict(tiny_dir, data, tmp_path / "pred"), capsys, str(path), part)


def test_dataset_info_json_that_is_not_a_regular_file(tiny_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "dataset_info.json")
    with deadline(60):
        bad_data(tiny_dir, tmp_path, capsys, data, "dataset_info.json: not a regular file (a named pipe)")


def test_num_samples_far_beyond_the_data(tiny_dir, tmp_path, capsys):
    data = dataset(tmp_path / "data", [GOOD] * 4, num_samples=10**12)
    with deadline(60):
        bad_data(tiny_dir, tmp_path, capsys, data, "dataset 'toy': num_samples 1000000000000",
                 "more than 100 times the 4 rows", "(at most 400)")


def test_max_new_tokens_beyond_the_context(tiny_dir, trained, tmp_path, capsys):
    """The server's rule (prompt + soft prompt + max tokens within the context; the tiny model has 512)."""
    data = write_alpaca_dataset(tmp_path / "data")
    too_many = ["--max_new_tokens", "500"]
    refused(chat(tiny_dir, *too_many), capsys, "+ --max_new_tokens (500) =", "exceeds the model's context of 512")
    refused(chat(tiny_dir, "--adapter_name_or_path", str(trained), "--max_new_tokens", "480"), capsys,
            "soft prompt (4) + --max_new_tokens (480)", "context of 512")
    huge = ["--max_new_tokens", str(10**12)]  # interactive: refused before the first message
    refused(["chat", "--model_name_or_path", str(tiny_dir), *huge], capsys, "exceeds the model's context")
    out = tmp_path / "pred"
    refused(predict(tiny_dir, data, out, *too_many), capsys, f"{data / 'toy.json'} index", "context of 512", out=out)
    refused(evaluate(tiny_dir, data, tmp_path / "ev", "--task", "generation", *too_many), capsys,
            f"{data / 'toy.json'} index", "context of 512")


@pytest.mark.parametrize("method, length", [("prompt_tuning", 512), ("prefix_tuning", 10**12), ("p_tuning", 4096)])
def test_num_virtual_tokens_beyond_the_context(tiny_dir, tmp_path, capsys, method, length):
    data = write_alpaca_dataset(tmp_path / "data")
    bad_data(tiny_dir, tmp_path, capsys, data, f"--num_virtual_tokens {length} does not fit the model's context of 512",
             "below 512", finetuning_type=method, num_virtual_tokens=length)


def test_an_init_text_longer_than_the_context(tiny_dir, tmp_path, capsys):
    """Without --num_virtual_tokens the text's token count is the prompt's length."""
    argv = train_flags(tiny_dir, write_alpaca_dataset(tmp_path / "data"), tmp_path / "out",
                       prompt_tuning_init_text="word " * 600)
    at = argv.index("--num_virtual_tokens")
    del argv[at:at + 2]
    refused(argv, capsys, "(from --prompt_tuning_init_text) does not fit the model's context of 512",
            out=tmp_path / "out")


# ------------------------------------------------------------------------------------- consistent rules


@pytest.mark.parametrize("flag, value, part", [
    ("top_k", "-1", "--top_k must be at least 0 (0 = off), got -1"),
    ("temperature", "2.5", "--temperature must be in [0, 2], got 2.5"),
    ("temperature", "-0.1", "--temperature must be in [0, 2]"),
    ("top_p", "0", "--top_p must be in (0, 1]"),
    ("top_p", "1.5", "--top_p must be in (0, 1]"),
    ("max_new_tokens", "0", "--max_new_tokens must be at least 1"),
])
def test_sampling_values_the_server_refuses(tiny_dir, tmp_path, capsys, flag, value, part):
    refused(chat(tiny_dir, f"--{flag}", value), capsys, part)
    out = tmp_path / "pred"
    refused(predict(tiny_dir, write_alpaca_dataset(tmp_path / "data"), out, f"--{flag}", value), capsys, part, out=out)


@pytest.mark.parametrize("server_field, flag, values", [
    ("temperature", "temperature", [-0.5, 0.0, 1.0, 2.0, 2.0001, 7.0]),
    ("top_p", "top_p", [-0.1, 0.0, 1e-9, 0.5, 1.0, 1.0001]),
    ("top_k", "top_k", [-5, -1, 0, 1, 50]),
    ("max_tokens", "max_new_tokens", [-1, 0, 1, 4096]),
    ("seed", "seed", [-(2**63) - 1, -(2**63), 0, 2**64 - 1, 2**64, 2**70]),
])
def test_the_cli_and_the_server_refuse_the_same_sampling_values(server_field, flag, values):
    from pydantic import ValidationError

    from softprompt.config import ArgumentError, GenerateArgs
    from softprompt.serve.protocol import CompletionRequest

    for value in values:
        try:
            CompletionRequest(model="base", prompt="hi", **{server_field: value})
            server_takes = True
        except ValidationError:
            server_takes = False
        try:
            GenerateArgs(**{flag: value})
            cli_takes = True
        except ArgumentError:
            cli_takes = False
        assert cli_takes == server_takes, f"--{flag} {value}: the CLI {'takes' if cli_takes else 'refuses'} it"


@pytest.mark.parametrize("words", ["pos,pos", "pos, pos ,pos", "pos,neg,pos"])
def test_label_words_must_be_two_different_words(tiny_dir, tmp_path, capsys, words):
    refused(evaluate(tiny_dir, write_alpaca_dataset(tmp_path / "data"), tmp_path / "ev", "--task", "classification",
                     "--label_words", words), capsys, "--label_words needs at least two different", repr(words))


def test_serve_refuses_an_adapter_flag(tiny_dir, trained, capsys):
    refused(["serve", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(trained)], capsys,
            "serve does not take --adapter_name_or_path", "--prompts_dir")


def test_serve_on_a_port_in_use_fails_before_loading_the_model(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the model does not exist: the port is checked first, so the line is about the port
        line = refused(["serve", "--model_name_or_path", str(tmp_path / "no-model"), "--port", str(port)], capsys,
                       f"--port {port}: cannot listen on 127.0.0.1:{port}", "already in use")
    assert "model" not in line


@pytest.mark.parametrize("key", ["clé-secrète", "key\x00with-nul", "key\twith-tab", "key\x7f"])
def test_an_api_key_http_clients_cannot_send(key, capsys):
    line = refused(["serve", "--api_key", key], capsys, "--api_key must be printable ASCII")
    assert key not in line and "secr" not in line
