"""PEFT's format both ways, with the real peft package: PEFT loads ours, softprompt loads PEFT's."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt.checkpoint import CheckpointError, load_adapter
from softprompt.cli import main
from softprompt.config import GenerateArgs
from softprompt.inference import Predictor
from tests.helpers import train_flags, train_peft_and_save, write_alpaca_dataset


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """A prompt trained by `softprompt train` on the tiny model (2 steps)."""
    root = tmp_path_factory.mktemp("ckpt")
    data = write_alpaca_dataset(root / "data")
    out = root / "out"
    assert main(train_flags(tiny_dir, data, out, num_virtual_tokens=6)) == 0
    return out


def test_output_holds_adapter_files_only(trained):
    names = sorted(p.name for p in trained.iterdir())
    assert names == [".softprompt_outputs.json", "adapter_config.json", "adapter_model.safetensors",
                     "train_results.json", "trainer_log.jsonl", "training_args.yaml"]  # + the manifest (issue 16)
    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "CAUSAL_LM"
    assert config["num_virtual_tokens"] == 6 and config["token_dim"] == 64
    with safe_open(str(trained / "adapter_model.safetensors"), "pt") as f:
        assert list(f.keys()) == ["prompt_embeddings"]
        assert f.get_tensor("prompt_embeddings").shape == (6, 64)


def test_peft_loads_ours_and_generates_the_same(tiny_dir, trained):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft_model = PeftModel.from_pretrained(base, str(trained)).eval()
    _, state, _ = load_adapter(trained)
    torch.testing.assert_close(peft_model.get_prompt_embedding_to_save("default"), state["prompt_embeddings"])

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    predictor = Predictor.load(str(tiny_dir), str(trained))
    gen = GenerateArgs(max_new_tokens=8)
    for question in ["What is the capital of France?", "Name a color."]:
        ids = predictor.prompt_ids([{"role": "user", "content": question}])
        ours = predictor.generate_ids([ids], gen)[0]
        with torch.no_grad():
            out = peft_model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id)
        theirs = out[0, len(ids):].tolist()
        theirs = theirs[: theirs.index(tok.eos_token_id)] if tok.eos_token_id in theirs else theirs
        assert ours == theirs and len(ours) > 0


def test_we_load_what_peft_trained_and_saved(tiny_dir, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft_model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    train_peft_and_save(peft_model, tmp_path / "peft", steps=3)  # PEFT trains it: not its initial value

    predictor = Predictor.load(str(tiny_dir), str(tmp_path / "peft"))
    torch.testing.assert_close(predictor.adapter.prompt_embeds(),
                               peft_model.get_prompt_embedding_to_save("default"))
    prompt = [5, 17, 42, 99]
    with torch.no_grad():
        peft_logits = peft_model(input_ids=torch.tensor([prompt])).logits[0, -1]
        from softprompt.engine.forward import decoder_hidden

        hidden = decoder_hidden(predictor.lm.model, torch.tensor([prompt]), torch.ones(1, 4, dtype=torch.long),
                                predictor.prefix)
        ours = predictor.lm.model.get_output_embeddings()(hidden[0, -1])
    torch.testing.assert_close(ours, peft_logits, rtol=1e-4, atol=1e-5)


def test_bad_adapter_folders_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="adapter folder not found"):
        load_adapter(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_adapter(tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_adapter(tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors"):
        load_adapter(tmp_path / "a")
