"""A task folder whose files change while it is served: reloaded when the change is complete,
refused (never served half-read) when it happens during the read."""

from __future__ import annotations

import os

import pytest
import torch

import softprompt.prompts as prompts_module
from softprompt.checkpoint import write_adapter_files
from softprompt.prompts import PromptRegistry, TaskUnavailableError
from softprompt.methods.prompt_tuning import peft_prompt_config
from softprompt.model import load_model


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return load_model(str(tiny_dir))


def write_prompt(folder, lm, value: float) -> None:
    d = lm.model.config.hidden_size
    config = peft_prompt_config("PROMPT_TUNING", lm.name, lm.model, 3, d)
    write_adapter_files(folder, {"prompt_embeddings": torch.full((3, d), value)}, config)


def test_changed_folder_is_reloaded(lm, tmp_path):
    write_prompt(tmp_path / "task", lm, 0.1)
    reg = PromptRegistry(lm.model, lm.name, tmp_path)
    first = reg.prefix("task")
    assert reg.prefix("task") is first and reg.stats == {"hits": 1, "computed": 1, "evicted": 0}
    write_prompt(tmp_path / "task", lm, 0.2)
    weights = tmp_path / "task" / "adapter_model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock must not hide the change
    second = reg.prefix("task")
    assert reg.stats["computed"] == 2
    assert not torch.equal(first.keys[0], second.keys[0])


def test_folder_changing_during_the_read_is_refused(lm, tmp_path, monkeypatch):
    write_prompt(tmp_path / "task", lm, 0.1)
    reg = PromptRegistry(lm.model, lm.name, tmp_path)
    real_load = prompts_module.read_adapter

    def load_while_a_writer_rewrites(folder):
        out = real_load(folder)
        write_prompt(tmp_path / "task", lm, 0.3)  # a writer replaces the files meanwhile
        weights = tmp_path / "task" / "adapter_model.safetensors"
        st = weights.stat()
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        return out

    monkeypatch.setattr(prompts_module, "read_adapter", load_while_a_writer_rewrites)
    with pytest.raises(TaskUnavailableError, match="changed while being read; retry"):
        reg.prefix("task")
    assert "task" not in reg._cache  # nothing half-read was kept
    monkeypatch.setattr(prompts_module, "read_adapter", real_load)
    assert reg.prefix("task") is not None  # the retry serves the new, complete files


def test_base_and_none_both_mean_the_bare_model(lm, tmp_path):
    from softprompt.evaluate.run import adapter_entries

    write_prompt(tmp_path / "task", lm, 0.1)
    reg = PromptRegistry(lm.model, lm.name, tmp_path)
    assert reg.prefix("base") is None and reg.prefix("none") is None
    assert reg.names() == ["base", "task"]
    assert adapter_entries("none,base,out/a") == [None, None, "out/a"]
