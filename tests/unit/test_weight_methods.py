"""lora, freeze and full end to end on the tiny model: `softprompt train`, the saved format (PEFT's
LoRA adapter; a transformers model folder), PEFT / transformers greedy generation equal to
softprompt's, continuing training, and which weights a freeze run really changed."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt.cli import main
from softprompt.config import ArgumentError, GenerateArgs, MethodArgs
from softprompt.inference import Predictor
from softprompt.methods import freeze, resolve
from tests.helpers import train_flags, train_peft_and_save, write_alpaca_dataset
from tests.unit.test_methods_checkpoint import QUESTIONS, _peft_greedy

METHOD_FLAGS = {
    "lora": {"lora_rank": 4, "lora_target": "q_proj,v_proj,down_proj", "learning_rate": 5e-2},
    "freeze": {"freeze_trainable_layers": 1, "learning_rate": 1e-2},
    "full": {"learning_rate": 1e-2},
}


def _flags(tiny_dir, data, out, method, **extra):
    flags = train_flags(tiny_dir, data, out, finetuning_type=method, **{**METHOD_FLAGS[method], **extra})
    i = flags.index("--num_virtual_tokens")  # a prompt-method flag: these methods would warn about it
    return flags[:i] + flags[i + 2:]


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("weights")
    data = write_alpaca_dataset(root / "data")
    outs = {"data": data}
    for method in METHOD_FLAGS:
        outs[method] = root / method
        assert main(_flags(tiny_dir, data, outs[method], method)) == 0
    return outs


def test_lora_is_saved_as_peft_saves_it(trained):
    config = json.loads((trained["lora"] / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    with safe_open(str(trained["lora"] / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert len(keys) == 2 * 3 * 2  # A and B, three modules, two layers
    assert all(k.startswith("base_model.model.model.layers.") and ".lora_" in k for k in keys)
    results = json.loads((trained["lora"] / "train_results.json").read_text())
    assert results["trainable_params"] == sum(load_file(trained["lora"] / "adapter_model.safetensors")[k].numel()
                                              for k in keys)


@pytest.mark.parametrize("method", ["freeze", "full"])
def test_freeze_and_full_write_a_model_folder(trained, method):
    names = {p.name for p in trained[method].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_log.jsonl"} <= names
    assert "adapter_config.json" not in names


def test_peft_loads_our_lora_and_generates_the_same(tiny_dir, trained):
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(trained["lora"])).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    predictor = Predictor.load(str(tiny_dir), str(trained["lora"]))
    base = Predictor.load(str(tiny_dir))
    for question in QUESTIONS:
        ids = predictor.prompt_ids([{"role": "user", "content": question}])
        ours = predictor.generate_ids([ids], GenerateArgs(max_new_tokens=8))[0]
        assert ours == _peft_greedy(peft_model, tok, ids, 8) and len(ours) > 0
    ids = predictor.prompt_ids([{"role": "user", "content": QUESTIONS[0]}])
    assert predictor.generate_ids([ids], GenerateArgs(max_new_tokens=8)) != base.generate_ids(
        [ids], GenerateArgs(max_new_tokens=8))  # the adapter trained: it changes the answer


@pytest.mark.parametrize("method", ["freeze", "full"])
def test_transformers_loads_the_folder_and_generates_the_same(tiny_dir, trained, method):
    hf = AutoModelForCausalLM.from_pretrained(trained[method]).eval()
    tok = AutoTokenizer.from_pretrained(trained[method])
    as_adapter = Predictor.load(str(tiny_dir), str(trained[method]))  # --adapter_name_or_path <model folder>
    as_model = Predictor.load(str(trained[method]))
    for question in QUESTIONS:
        ids = as_model.prompt_ids([{"role": "user", "content": question}])
        ours = as_model.generate_ids([ids], GenerateArgs(max_new_tokens=8))[0]
        assert ours == _peft_greedy(hf, tok, ids, 8) == as_adapter.generate_ids([ids], GenerateArgs(max_new_tokens=8))[0]


def test_freeze_changes_only_the_chosen_layers(tiny_dir, trained):
    before = load_file(tiny_dir / "model.safetensors")
    after = load_file(trained["freeze"] / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.1.") for k in changed)  # the last of two layers
    assert any(".mlp." in k for k in changed) and any(".self_attn." in k for k in changed)


def test_freeze_arguments_pick_parameters(tiny_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    first_mlp = freeze.trainable_names(base, MethodArgs(finetuning_type="freeze", freeze_trainable_layers=-1,
                                                        freeze_trainable_modules="mlp", freeze_extra_modules="norm"))
    assert first_mlp and all(n.startswith("model.layers.0.mlp.") for n in first_mlp[:-1])
    assert first_mlp[-1] == "model.norm.weight"
    with pytest.raises(ArgumentError, match="--freeze_trainable_layers 3: the model has 2 decoder layers"):
        freeze.trainable_names(base, MethodArgs(finetuning_type="freeze", freeze_trainable_layers=3))
    with pytest.raises(ArgumentError, match="--freeze_trainable_modules 'mpl' is no module.*mlp"):
        freeze.trainable_names(base, MethodArgs(finetuning_type="freeze", freeze_trainable_modules="mpl"))


def test_we_load_a_lora_peft_trained(tiny_dir, tmp_path):
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                                LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["k_proj", "o_proj"]))
    train_peft_and_save(peft_model, tmp_path / "peft")
    predictor = Predictor.load(str(tiny_dir), str(tmp_path / "peft"))
    prompt = predictor.prompt_ids([{"role": "user", "content": QUESTIONS[1]}])
    ours = predictor.generate_ids([prompt], GenerateArgs(max_new_tokens=6))[0]
    assert ours == _peft_greedy(peft_model, AutoTokenizer.from_pretrained(tiny_dir), prompt, 6)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_continues_from_a_saved_run(tiny_dir, trained, tmp_path, method):
    out = tmp_path / "more"
    assert main(_flags(tiny_dir, trained["data"], out, method, adapter_name_or_path=trained[method])) == 0
    first = [json.loads(line) for line in (trained[method] / "trainer_log.jsonl").read_text().splitlines()]
    more = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert more[0]["loss"] < first[0]["loss"]  # it starts from the trained weights, not the base


def test_lora_arguments_warn_elsewhere_and_are_checked(caplog):
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        resolve(MethodArgs(finetuning_type="prompt_tuning", lora_rank=16, freeze_trainable_layers=4))
    assert [r.getMessage() for r in caplog.records] == [
        "--lora_rank does not apply to --finetuning_type prompt_tuning; ignored",
        "--freeze_trainable_layers does not apply to --finetuning_type prompt_tuning; ignored"]
    with pytest.raises(ArgumentError, match="--lora_rank must be at least 1"):
        MethodArgs(finetuning_type="lora", lora_rank=0)
    with pytest.raises(ArgumentError, match="--lora_dropout must be in"):
        MethodArgs(finetuning_type="lora", lora_dropout=1.5)


def test_lora_target_naming_no_module_is_one_line(tiny_dir, trained, tmp_path, capsys):
    assert main(_flags(tiny_dir, trained["data"], tmp_path / "o", "lora", lora_target="qproj")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("softprompt: error: --lora_target qproj:") or "--lora_target qproj" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_inspect_says_it_reads_prompt_adapters(trained, method, capsys):
    assert main(["inspect", str(trained[method])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "inspect looks inside prompt adapters" in err
