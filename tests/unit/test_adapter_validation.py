"""An adapter folder is validated completely, once, when it is read (``read_adapter``): config field types and
ranges, the config's size and nesting, tensor shapes against the config, finite values, and the path itself.
Every problem is one CheckpointError line, which the CLI turns into one line on stderr and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softprompt.checkpoint import CheckpointError, write_adapter_files
from softprompt.cli import main
from softprompt.methods import read_adapter
from tests.bad_adapters import CASES, PROMPT, write_case, write_good


@pytest.mark.parametrize("case", list(CASES))
def test_bad_folder_is_one_checkpoint_error(tmp_path, case):
    expected = write_case(case, tmp_path / case)
    with pytest.raises(CheckpointError) as exc:
        read_adapter(tmp_path / case)
    message = str(exc.value)
    assert expected in message and "\n" not in message and len(message) < 600, message


@pytest.mark.parametrize("case", ["length_is_text", "nested_100000_deep", "tensor_nan", "prefix_wrong_width"])
def test_the_cli_says_one_line_and_exits_2(tmp_path, capsys, case):
    expected = write_case(case, tmp_path / case)
    assert main(["export", "--adapter_name_or_path", str(tmp_path / case), "--output", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "x.pt").exists()


def test_bad_folder_is_refused_by_chat_too(tiny_dir, tmp_path, capsys):
    write_case("tensor_too_narrow", tmp_path / "narrow")
    assert main(["chat", "--model_name_or_path", str(tiny_dir), "--adapter_name_or_path", str(tmp_path / "narrow"),
                 "--query", "hi", "--max_new_tokens", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has shape (4, 32), expected (4, 64)" in err[-1], err


@pytest.mark.parametrize("path, expected", [
    ("a\0b", "not a usable adapter folder path"),
    ("x" * 300, "not a usable adapter folder path"),
    ("/".join(["d"] * 3000), "not a usable adapter folder path"),
    ("\udcff" * 3, "adapter folder not found"),
    ("\ud800", "not a usable adapter folder path"),
])
def test_paths_that_cannot_name_a_folder(path, expected):
    with pytest.raises(CheckpointError) as exc:
        read_adapter(path)
    assert expected in str(exc.value) and "\n" not in str(exc.value) and len(str(exc.value)) < 600


def test_a_file_or_a_missing_folder(tmp_path):
    (tmp_path / "file").write_text("hi")
    with pytest.raises(CheckpointError, match="is a file, not an adapter folder"):
        read_adapter(tmp_path / "file")
    with pytest.raises(CheckpointError, match="adapter folder not found"):
        read_adapter(tmp_path / "file" / "below")
    with pytest.raises(CheckpointError, match="adapter folder not found"):
        read_adapter(tmp_path / "nowhere")


def test_good_folders_still_load(tmp_path):
    files = read_adapter(write_good(tmp_path / "good"))
    assert files.spec.name == "prompt_tuning" and files.state["prompt_embeddings"].shape == (4, 64)
    # PEFT writes num_virtual_tokens; without it (or token_dim) the tensor gives the length
    config = {k: v for k, v in PROMPT.items() if k not in ("num_virtual_tokens", "token_dim")}
    write_adapter_files(tmp_path / "lean", {"prompt_embeddings": torch.randn(3, 64)}, config)
    assert read_adapter(tmp_path / "lean").state["prompt_embeddings"].shape == (3, 64)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_a_config_that_cannot_be_read(tmp_path):
    folder = write_good(tmp_path / "mem")
    (folder / "adapter_config.json").unlink()
    (folder / "adapter_config.json").symlink_to("/proc/self/mem")  # a regular file that fails to read
    with pytest.raises(CheckpointError, match="adapter_config.json: unreadable"):
        read_adapter(folder)
