"""Write a tiny GGUF file of another architecture than the default model's: a 2-layer Qwen2 (attention biases,
no q/k permutation) with random weights, the tiny byte-level BPE tokenizer of tests/tiny.py stored as GGUF
tokenizer metadata (tokens, token types, merges, special ids) and a chat template of its own.

``python tests/tiny_gguf.py OUT.gguf`` writes it; ``write_tiny_gguf(path)`` also returns the Hugging Face model
and tokenizer it was made from, for parity checks. Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from tests.tiny import SPECIALS, build_tokenizer

TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny GGUF model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML with its own default system text: a chat that shows it took the file's template."""
CONTROL, NORMAL = 3, 1  # llama.cpp's token types


def _tokenizer_metadata(writer: gguf.GGUFWriter, tok: PreTrainedTokenizerFast) -> None:
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "the vocabulary must be ids 0..n-1"
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if t in SPECIALS else NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(TEMPLATE)


def _model_metadata(writer: gguf.GGUFWriter, config: Qwen2Config) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))


def write_tiny_gguf(path: str | Path, seed: int = 0) -> tuple[Path, PreTrainedModel, PreTrainedTokenizerFast]:
    """Write the tiny Qwen2 GGUF (all tensors F32) to ``path``; return (path, HF model, HF tokenizer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(template=False)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(config).eval()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    _model_metadata(writer, config)
    _tokenizer_metadata(writer, tok)
    for key, tensor in model.state_dict().items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"no GGUF name for {key}"
        writer.add_tensor(name, tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tok.chat_template = TEMPLATE
    return path, model, tok


if __name__ == "__main__":
    print(write_tiny_gguf(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen2.gguf")[0])
