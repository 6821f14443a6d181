"""A method is one registered spec: a toy method defined here trains, saves and reloads through the same
path as the built-in ones, and every list of methods follows the registry."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import torch
from torch import nn

from softprompt import methods
from softprompt.cli import main
from softprompt.config import ArgumentError, MethodArgs
from softprompt.kv import build_prefix
from softprompt.inference import Predictor
from softprompt.methods import MethodSpec, register
from softprompt.model import load_model
from tests.helpers import train_flags, write_alpaca_dataset

TOY = "toy_scaled_prompt"
TOY_PEFT_TYPE = "TOY_SCALED_PROMPT"


class ScaledPrompt(nn.Module):
    """A soft prompt times a trained scalar gate: ``prompt_embeds()`` is ``gate * embedding`` (L, d)."""

    def __init__(self, num_virtual_tokens: int, token_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)
        self.gate = nn.Parameter(torch.ones(()))

    def prompt_embeds(self) -> torch.Tensor:
        return self.gate * self.embedding.weight

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.prompt_embeds().detach().float().cpu().contiguous()}

    def adapter_config(self, base_model_name_or_path: str, base) -> dict[str, Any]:
        L, d = self.embedding.weight.shape
        return {"peft_type": TOY_PEFT_TYPE, "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
                "num_virtual_tokens": L, "token_dim": d}

    @classmethod
    def from_checkpoint(cls, config, state, where, **_) -> ScaledPrompt:
        weight = state["prompt_embeddings"]
        module = cls(*weight.shape)
        with torch.no_grad():
            module.embedding.weight.copy_(weight)
        return module


def create(base, tokenizer, args: MethodArgs, generator: torch.Generator) -> ScaledPrompt:
    emb = base.get_input_embeddings().weight.detach()
    module = ScaledPrompt(args.num_virtual_tokens or 3, emb.shape[1])
    with torch.no_grad():
        module.embedding.weight.copy_(emb[torch.randint(0, emb.shape[0], (module.embedding.weight.shape[0],),
                                                        generator=generator)])
    return module


@pytest.fixture
def toy_method():
    spec = register(MethodSpec(name=TOY, kind="prompt", build=create, peft_type=TOY_PEFT_TYPE,
                               from_checkpoint=ScaledPrompt.from_checkpoint, arguments=("num_virtual_tokens",)))
    yield spec
    methods.spec.unregister(TOY)


def test_a_registered_method_trains_saves_and_reloads(toy_method, tiny_dir, tmp_path, caplog):
    data = write_alpaca_dataset(tmp_path / "data")
    out = tmp_path / "toy"
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        assert main(train_flags(tiny_dir, data, out, finetuning_type=TOY, num_virtual_tokens=5, lora_rank=4)) == 0
    assert "--lora_rank does not apply to --finetuning_type toy_scaled_prompt; ignored" in caplog.text
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == TOY_PEFT_TYPE and config["num_virtual_tokens"] == 5
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [row["current_steps"] for row in log if "loss" in row] == [1, 2]

    lm = load_model(str(tiny_dir))
    predictor = Predictor(lm, str(out))  # the one adapter loader finds the method by its peft_type
    assert methods.of(predictor.adapter) is toy_method and predictor.prefix.length == 5
    files = methods.read_adapter(out)
    with torch.no_grad():
        expected = build_prefix(lm.model, files.state["prompt_embeddings"])
    for got, want in zip(predictor.prefix.keys, expected.keys):
        torch.testing.assert_close(got, want)
    assert predictor.chat([{"role": "user", "content": "hi"}], _greedy(4))  # it answers with the reloaded prompt

    again = tmp_path / "again"  # a saved toy adapter continues training as the built-in ones do
    assert main(train_flags(tiny_dir, data, again, finetuning_type=TOY, adapter_name_or_path=str(out))) == 0
    assert json.loads((again / "adapter_config.json").read_text())["num_virtual_tokens"] == 5


def test_every_method_list_follows_the_registry(toy_method):
    assert list(methods.METHODS)[:6] == ["prompt_tuning", "p_tuning", "prefix_tuning", "lora", "freeze", "full"]
    assert methods.by_peft_type(TOY_PEFT_TYPE) is toy_method and toy_method.served and toy_method.exportable
    assert {s.name for s in methods.METHODS.values() if s.served} == {"prompt_tuning", "p_tuning", "prefix_tuning",
                                                                       TOY}
    assert [s.name for s in methods.METHODS.values() if s.writes_model_folder] == ["freeze", "full"]
    with pytest.raises(ArgumentError, match=f"--finetuning_type must be one of .*{TOY}; got 'nope'"):
        methods.resolve(MethodArgs(finetuning_type="nope"))
    with pytest.raises(ValueError, match="belongs to method 'prompt_tuning' already"):
        register(MethodSpec(name="other", kind="prompt", build=create, peft_type="PROMPT_TUNING"))


def _greedy(n: int):
    from softprompt.config import GenerateArgs

    return GenerateArgs(max_new_tokens=n)
