"""Build the tiny random models the unit tests use (nothing is downloaded).

``python tests/tiny.py OUT_DIR`` writes a Hugging Face folder: a 2-layer LLaMA with random
weights and a byte-level BPE tokenizer trained here on a few sentences, with a ChatML chat
template like the default model's. ``build_tiny(path, template=False)`` leaves the template
out, for base-model tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Give three tips for staying healthy. Eat well, sleep, exercise.",
    "What is the capital of France? Paris is the capital of France.",
    "Translate to French: good morning. Bonjour.",
    "This movie was great, positive. That film was awful, negative.",
    "system user assistant Human Assistant Instruction Input Response",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000, ; : ! ? ( ) [ ] { } # * - + = / \\ ' \"",
] * 4


def build_tokenizer(template: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    if template:
        fast.chat_template = CHATML
    return fast


def build_model(vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, **overrides,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def build_tiny(path: str | Path, template: bool = True, seed: int = 0) -> Path:
    path = Path(path)
    tok = build_tokenizer(template)
    model = build_model(len(tok), seed=seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build_tiny(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"))
