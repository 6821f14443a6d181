"""Output folders lose no data (issue 16): --overwrite_output_dir removes only what softprompt wrote, an
output folder that is (or holds) an input or the current directory is refused, a folder that cannot be
written is refused before the model is loaded, and resuming survives an incomplete or hand-edited checkpoint.
Every refusal: exit 2, one line naming the argument or file, and every file softprompt did not write unchanged."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from softprompt.cli import main
from softprompt.outdir import MANIFEST
from tests.e2e.test_bad_input import refused
from tests.helpers import train_flags, write_alpaca_dataset


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_files(folder: Path, files: dict[str, str]) -> dict[str, bytes]:
    """Write files a user keeps in ``folder`` (relative path -> text); the folder's snapshot."""
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return snapshot(folder)


def assert_unchanged(folder: Path, before: dict[str, bytes]) -> None:
    after = snapshot(folder)
    for name, content in before.items():
        assert after.get(name) == content, f"{folder / name} was removed or changed"


@pytest.fixture
def data(tmp_path) -> Path:
    return write_alpaca_dataset(tmp_path / "data")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a command loads a model: its output folder must be refused before that."""
    def refuse(*_, **__):
        raise AssertionError("the model was loaded before the output folder was checked")

    for module in ("softprompt.train.loop", "softprompt.inference", "softprompt.evaluate.run"):
        monkeypatch.setattr(f"{module}.load_model", refuse)


# ------------------------------------------------------------------------------ inputs are never output folders


def test_output_dir_is_the_dataset_folder(tiny_dir, data, capsys, no_loading):
    before = snapshot(data)
    for command in ("train", "sweep", "compare"):
        argv = train_flags(tiny_dir, data, data, overwrite_output_dir="true", val_size=4)
        refused([command, *argv[1:]], capsys, f"--output_dir {data} is the dataset folder (--dataset_dir)")
        assert_unchanged(data, before)


def test_output_dir_is_or_holds_the_model(tiny_dir, data, tmp_path, capsys, no_loading):
    model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_dir, model)
    before = snapshot(model)
    refused(train_flags(model, data, model, overwrite_output_dir="true"), capsys,
            f"--output_dir {model} is the model (--model_name_or_path)")
    refused(train_flags(model, data, tmp_path / "models", overwrite_output_dir="true"), capsys,
            "contains the model (--model_name_or_path)")
    refused(train_flags(tiny_dir, data, tmp_path, overwrite_output_dir="true"), capsys,
            f"--output_dir {tmp_path} contains the")  # holds the dataset folder (and the model copy)
    assert_unchanged(model, before)


def test_output_dir_is_the_adapter_or_holds_a_dataset_file(tiny_dir, data, tmp_path, capsys, no_loading):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    refused(train_flags(tiny_dir, data, adapter, adapter_name_or_path=adapter, overwrite_output_dir="true"), capsys,
            "is the adapter (--adapter_name_or_path)")
    out = tmp_path / "out"
    out.mkdir()
    (out / "rows.json").write_text((data / "toy.json").read_text())
    (data / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": str(out / "rows.json")}}))
    refused(train_flags(tiny_dir, data, out, overwrite_output_dir="true"), capsys,
            "contains the file of dataset 'toy'", "rows.json")
    assert (out / "rows.json").read_text() == (data / "toy.json").read_text()
    assert (adapter / "adapter_config.json").read_text() == "{}"


def test_output_dir_is_the_current_directory_with_files(tiny_dir, data, tmp_path, capsys, monkeypatch, no_loading):
    project = tmp_path / "project"
    before = user_files(project, {"README.md": "my project", "src/main.py": "print(1)"})
    monkeypatch.chdir(project)
    refused(train_flags(tiny_dir, data, Path("."), overwrite_output_dir="true"), capsys,
            "--output_dir . is the current directory", "README.md")
    refused(train_flags(tiny_dir, data, Path(".."), overwrite_output_dir="true"), capsys, "--output_dir ..")
    assert_unchanged(project, before)


# ------------------------------------------------------------------------------ overwrite removes softprompt's own only


def test_overwrite_keeps_what_softprompt_did_not_write(tiny_dir, data, tmp_path, caplog):
    out = tmp_path / "out"
    assert main(train_flags(tiny_dir, data, out, max_steps=3, save_steps=1, plot_loss="true")) == 0
    assert {"checkpoint-1", "checkpoint-2", "training_loss.png", MANIFEST} <= {p.name for p in out.iterdir()}
    (out / "notes.md").write_text("what I tried")
    (out / "extra").mkdir()
    (out / "extra" / "keep.txt").write_text("mine")
    (out / "checkpoint-1" / "my_eval.txt").write_text("0.93")  # a file of mine inside a folder softprompt wrote
    with caplog.at_level(logging.INFO, logger="softprompt"):
        assert main(train_flags(tiny_dir, data, out, max_steps=2, overwrite_output_dir="true")) == 0
    names = {p.name for p in out.iterdir()}
    assert "checkpoint-2" not in names and "training_loss.png" not in names  # the old run's outputs are gone
    assert (out / "notes.md").read_text() == "what I tried" and (out / "extra" / "keep.txt").read_text() == "mine"
    assert (out / "checkpoint-1" / "my_eval.txt").read_text() == "0.93"
    assert os.listdir(out / "checkpoint-1") == ["my_eval.txt"]
    kept = [r.getMessage() for r in caplog.records if "softprompt did not write" in r.getMessage()]
    assert len(kept) == 1 and "checkpoint-1/my_eval.txt" in kept[0] and "notes.md" in kept[0], kept
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 2


@pytest.mark.parametrize("name", ["adapter_config.json", "config.json", "checkpoint-5", "trainer_log.jsonl"])
def test_overwrite_refuses_to_replace_a_file_softprompt_did_not_write(tiny_dir, data, tmp_path, capsys, name,
                                                                      no_loading):
    """A folder another tool wrote (no manifest): the names a run would write are refused, one named."""
    out = tmp_path / "peft-run"
    out.mkdir()
    (out / name).write_text("from elsewhere") if "." in name else (out / name).mkdir()
    (out / "README.md").write_text("model card")
    before = snapshot(out)
    refused(train_flags(tiny_dir, data, out, overwrite_output_dir="true"), capsys, f"holds {name}",
            "softprompt did not write")
    assert_unchanged(out, before)
    assert (out / name).exists()


def test_sweep_overwrite_keeps_foreign_files_and_refuses_a_foreign_run_folder(tiny_dir, data, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", *train_flags(tiny_dir, data, out, max_steps=1, val_size=4)[1:], "--num_virtual_tokens", "2",
            "--task", "loss"]
    assert main(argv) == 0
    run = next(p for p in out.iterdir() if p.is_dir())
    (out / "notes.md").write_text("sweep notes")
    (run / "mine.txt").write_text("inside a run folder")
    assert main(argv + ["--overwrite_output_dir", "true"]) == 0
    assert (out / "notes.md").read_text() == "sweep notes" and (run / "mine.txt").read_text() == "inside a run folder"
    assert (run / "adapter_model.safetensors").is_file() and (out / "sweep_results.json").is_file()
    shutil.rmtree(out)
    out.mkdir()
    (out / run.name).mkdir()  # a folder of the name a sweep run writes, not softprompt's
    (out / run.name / "precious.bin").write_bytes(b"\x00\x01")
    capsys.readouterr()
    refused(argv + ["--overwrite_output_dir", "true"], capsys, f"holds {run.name}")
    assert (out / run.name / "precious.bin").read_bytes() == b"\x00\x01"


# ------------------------------------------------------------------------------ writable before any work


def _read_only(folder: Path) -> bool:
    """Make ``folder`` read-only, even for root (chattr +i); whether it worked."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                              capture_output=True).returncode:
            return False
    else:
        folder.chmod(0o555)
    return not os.access(folder, os.W_OK)


def _writable_again(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    else:
        folder.chmod(0o755)


def _commands(tiny_dir: Path, data: Path, out: Path) -> list[list[str]]:
    """train, predict and eval writing to ``out``."""
    common = ["--model_name_or_path", str(tiny_dir), "--dataset", "toy", "--dataset_dir", str(data),
              "--output_dir", str(out)]
    return [train_flags(tiny_dir, data, out), ["predict", *common], ["eval", *common, "--task", "loss"]]


def test_output_dir_under_a_file(tiny_dir, data, tmp_path, capsys, no_loading):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    for argv in _commands(tiny_dir, data, blocker / "run"):
        refused(argv, capsys, f"{blocker} is a file, not a folder")
    for argv in _commands(tiny_dir, data, blocker):
        refused(argv, capsys, f"--output_dir {blocker} exists and is not a folder")
    assert blocker.read_text() == "not a folder"


def test_output_dir_that_cannot_be_written(tiny_dir, data, tmp_path, capsys, no_loading):
    locked = tmp_path / "locked"
    if not _read_only(locked):
        pytest.skip("cannot make a read-only folder here")
    try:
        for out in (locked, locked / "run"):
            for argv in _commands(tiny_dir, data, out):
                refused(argv, capsys, f"cannot write in {locked}")
    finally:
        _writable_again(locked)


def test_predict_and_eval_write_their_files_only(tiny_dir, data, tmp_path):
    out = tmp_path / "shared-out"
    before = user_files(out, {"notes.md": "mine", "sub/x.jsonl": "{}\n"})
    _, predict, evaluate = _commands(tiny_dir, data, out)
    assert main(predict + ["--max_samples", "2", "--max_new_tokens", "2"]) == 0
    assert main(evaluate + ["--max_samples", "2"]) == 0
    assert_unchanged(out, before)
    assert set(snapshot(out)) - set(before) == {"generated_predictions.jsonl", "eval_results.json", "eval_results.md"}


def test_resuming_a_run_from_before_manifests_adopts_its_files(tiny_dir, data, tmp_path):
    """A run folder written before softprompt kept its list: resuming vouches for the names a run writes, so a
    later --overwrite_output_dir removes them; a file of another name stays."""
    out = tmp_path / "old-run"
    assert main(train_flags(tiny_dir, data, out, max_steps=3, save_steps=1)) == 0
    (out / MANIFEST).unlink()
    (out / "notes.md").write_text("mine")
    assert main(train_flags(tiny_dir, data, out, max_steps=3, save_steps=1, resume_from_checkpoint="true")) == 0
    assert main(train_flags(tiny_dir, data, out, max_steps=1, overwrite_output_dir="true")) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json", "adapter_model.safetensors", "notes.md", "train_results.json", "trainer_log.jsonl",
        "training_args.yaml"]
    assert (out / "notes.md").read_text() == "mine"
