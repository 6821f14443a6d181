"""Any GGUF file the user has, not only the default alias: a tiny Qwen2 GGUF that the test writes itself
(tests/tiny_gguf.py: random weights, byte-level BPE tokenizer metadata, its own chat template) loads through
``--model_name_or_path file.gguf`` with its tokenizer and template, trains a prompt and chats."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.cli import main
from softprompt.model import load_model, resolve_source
from tests.helpers import train_flags, write_alpaca_dataset
from tests.tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """(path of the .gguf file, the HF model and tokenizer it was written from, a cache folder)."""
    root = tmp_path_factory.mktemp("gguf")
    path, model, tok = write_tiny_gguf(root / "models" / "tiny-qwen2.gguf")
    return path, model, tok, root / "cache"


def test_a_gguf_file_loads_with_its_weights_tokenizer_and_chat_template(gguf_file):
    path, hf_model, hf_tok, cache = gguf_file
    folder, source = resolve_source(str(path))
    assert folder == "" and source.file == "tiny-qwen2.gguf"
    lm = load_model(str(path), str(cache))
    assert type(lm.model).__name__ == "Qwen2ForCausalLM" and lm.gguf is not None
    text = "What is the capital of France? <|im_end|> Paris."
    ids = lm.tokenizer(text).input_ids
    assert ids == hf_tok(text).input_ids and hf_tok.convert_tokens_to_ids("<|im_end|>") in ids  # kept whole
    with torch.no_grad():
        torch.testing.assert_close(lm.model(torch.tensor([ids])).logits, hf_model(torch.tensor([ids])).logits)
    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                            add_generation_prompt=True)
    assert chat == hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                              add_generation_prompt=True)
    assert "You are a tiny GGUF model." in chat and lm.eos_token_ids == [hf_tok.eos_token_id]
    assert next(cache.glob("gguf/tiny-qwen2-*/config.json")).is_file()  # converted once, then cached


def test_train_two_steps_on_a_gguf_file_then_chat_and_predict(gguf_file, tmp_path, capsys):
    path, _, _, cache = gguf_file
    data = write_alpaca_dataset(tmp_path / "data", n=8)
    out = tmp_path / "out"
    assert main(train_flags(path, data, out, cache_dir=cache)) == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(path)
    common = ["--model_name_or_path", str(path), "--adapter_name_or_path", str(out), "--cache_dir", str(cache),
              "--max_new_tokens", "4"]
    capsys.readouterr()
    assert main(["chat", *common, "--query", "Name a color."]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["predict", *common, "--dataset", "toy", "--dataset_dir", str(data),
                 "--output_dir", str(tmp_path / "pred")]) == 0
    rows = [json.loads(r) for r in (tmp_path / "pred" / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["prompt"].startswith("<|im_start|>system\nYou are a tiny GGUF model.")
                                  for r in rows)


def test_a_gguf_file_takes_a_quantized_base_too(gguf_file, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is installed by make setup (extra 'quantization')")
    path, _, _, cache = gguf_file
    data = write_alpaca_dataset(tmp_path / "data", n=4)
    assert main(train_flags(path, data, tmp_path / "out", cache_dir=cache, quantization_bit=8)) == 0
