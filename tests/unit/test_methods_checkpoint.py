"""p_tuning and prefix_tuning end to end: `softprompt train`, PEFT's format both ways with the real
peft package, PEFT's greedy generation equal to softprompt's, and mixed-task serving."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt.config import ArgumentError, GenerateArgs, MethodArgs
from softprompt.cli import main
from softprompt.engine.generate import SamplingParams
from softprompt.kv import build_prefix
from softprompt.inference import Predictor
from softprompt.methods import prefix_tuning, resolve
from softprompt.multitask import MultiTaskPredictor, Request
from tests.helpers import train_flags, train_peft_and_save, write_alpaca_dataset

QUESTIONS = ["What is the capital of France?", "Name a color."]
METHOD_FLAGS = {
    "p_tuning": {"encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 16},
    "prefix_tuning": {"prefix_projection": "true", "encoder_hidden_size": 24},
}


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory) -> dict:
    """One adapter per method, trained 2 steps by `softprompt train` on the tiny model."""
    root = tmp_path_factory.mktemp("methods")
    data = write_alpaca_dataset(root / "data")
    outs = {}
    for method, extra in METHOD_FLAGS.items():
        outs[method] = root / method
        assert main(train_flags(tiny_dir, data, outs[method], finetuning_type=method, num_virtual_tokens=5, **extra)) == 0
    return outs


def test_saved_as_peft_saves(trained):
    expected = {"p_tuning": ("P_TUNING", (5, 64)), "prefix_tuning": ("PREFIX_TUNING", (5, 2 * 2 * 32))}
    for method, (peft_type, shape) in expected.items():
        config = json.loads((trained[method] / "adapter_config.json").read_text())
        assert config["peft_type"] == peft_type and config["inference_mode"] is True
        with safe_open(str(trained[method] / "adapter_model.safetensors"), "pt") as f:
            assert list(f.keys()) == ["prompt_embeddings"]
            assert f.get_tensor("prompt_embeddings").shape == shape
    prefix = json.loads((trained["prefix_tuning"] / "adapter_config.json").read_text())
    assert (prefix["token_dim"], prefix["num_attention_heads"], prefix["prefix_projection"]) == (32, 2, True)


def _peft_greedy(peft_model, tok, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = peft_model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    theirs = out[0, len(ids):].tolist()
    return theirs[: theirs.index(tok.eos_token_id)] if tok.eos_token_id in theirs else theirs


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_peft_loads_ours_and_generates_the_same(tiny_dir, trained, method):
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(trained[method])).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    predictor = Predictor.load(str(tiny_dir), str(trained[method]))
    for question in QUESTIONS:
        ids = predictor.prompt_ids([{"role": "user", "content": question}])
        ours = predictor.generate_ids([ids], GenerateArgs(max_new_tokens=8))[0]
        assert ours == _peft_greedy(peft_model, tok, ids, 8) and len(ours) > 0


@pytest.mark.parametrize("config", [
    PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True),
], ids=["p_tuning", "prefix", "prefix_projection"])
def test_we_load_what_peft_trained_and_saved(tiny_dir, tmp_path, config):
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), config)
    train_peft_and_save(peft_model, tmp_path / "peft")  # PEFT trains it: not its initial value

    predictor = Predictor.load(str(tiny_dir), str(tmp_path / "peft"))
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    prompt = predictor.prompt_ids([{"role": "user", "content": QUESTIONS[0]}])
    ours = predictor.generate_ids([prompt], GenerateArgs(max_new_tokens=6))[0]
    assert ours == _peft_greedy(peft_model, tok, prompt, 6)


def test_mixed_method_batch_equals_each_alone(tiny_dir, trained, tmp_path):
    for method, folder in trained.items():
        (tmp_path / method).mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(folder / name, tmp_path / method / name)
    mt = MultiTaskPredictor.load(str(tiny_dir), prompts_dir=str(tmp_path))
    params = SamplingParams(max_new_tokens=6)
    requests = [Request(task, mt.chat_ids([{"role": "user", "content": q}]), params)
                for task in ("p_tuning", "prefix_tuning", "base") for q in QUESTIONS]
    together = [r.token_ids for r in mt.run(requests)]
    alone = [mt.run([r])[0].token_ids for r in requests]
    assert together == alone
    assert together[0] != together[2]  # the two tasks really differ


def test_prefix_text_init_is_the_prefill_of_the_text(tiny_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    args = MethodArgs(finetuning_type="prefix_tuning", num_virtual_tokens=7, prompt_tuning_init_text="Paris is")
    module = prefix_tuning.create(base, tok, args, torch.Generator().manual_seed(0))
    text_ids = tok("Paris is", add_special_tokens=False)["input_ids"]
    ids = (text_ids * 7)[:7]
    with torch.no_grad():
        expected = build_prefix(base, base.get_input_embeddings()(torch.tensor(ids)))
    got = module.prefix_kv()
    for k, v, ek, ev in zip(got.keys, got.values, expected.keys, expected.values):
        torch.testing.assert_close(k, ek)
        torch.testing.assert_close(v, ev)


def test_arguments_of_another_method_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        args = resolve(MethodArgs(finetuning_type="p_tuning", prompt_tuning_init_text="hello", encoder_hidden_size=8))
    assert args.prompt_tuning_init_text is None and args.prompt_tuning_init == "random"
    assert args.encoder_hidden_size == 8
    assert [r.getMessage() for r in caplog.records] == [
        "--prompt_tuning_init_text does not apply to --finetuning_type p_tuning; ignored"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        resolve(MethodArgs(finetuning_type="prompt_tuning", prefix_projection=True, encoder_dropout=0.1))
    assert [r.getMessage().split()[0] for r in caplog.records] == ["--encoder_dropout", "--prefix_projection"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        resolve(MethodArgs(finetuning_type="prefix_tuning"))  # defaults never warn
    assert not caplog.records
    with pytest.raises(ArgumentError, match="--prefix_projection"):
        resolve(MethodArgs(finetuning_type="prefix_tuning", prefix_projection=True, prompt_tuning_init_text="hi"))
