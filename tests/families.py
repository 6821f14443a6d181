"""Tiny random models of the architecture families softprompt is tested on (nothing is downloaded).

Each family is a transformers config class with the shape that matters for prompt methods: grouped-
query heads, a ``head_dim`` apart from hidden / heads, sliding windows smaller than the tests'
sequences, soft-capping, ALiBi, learned positions, multi-query K/V, an embedding narrower than the
hidden size. Two layers, hidden size 48, the byte-level tokenizer of ``tests/tiny.py``.

``python tests/families.py OUT_DIR`` writes one Hugging Face folder per family.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers as tf

from tests.tiny import build_tokenizer

WINDOW = 5
"""The sliding window of the windowed families: shorter than every test's soft prompt plus prompt."""
SMALL = {"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
GQA = {**SMALL, "num_key_value_heads": 2, "head_dim": 16}  # head_dim 16, not 48 / 4 = 12


@dataclass(frozen=True)
class Family:
    """One architecture: how to build it and what softprompt does with it."""

    config: type
    kwargs: dict = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    """method (or 'model': every method, at load) -> a phrase of the one-line refusal."""


FAMILIES: dict[str, Family] = {
    "llama": Family(tf.LlamaConfig, GQA),
    "qwen2": Family(tf.Qwen2Config, {**SMALL, "num_key_value_heads": 2, "use_sliding_window": True,
                                     "sliding_window": WINDOW, "max_window_layers": 1}),  # layer 0 full, 1 sliding
    "qwen3": Family(tf.Qwen3Config, GQA),
    "mistral": Family(tf.MistralConfig, {**GQA, "sliding_window": WINDOW}),
    "gemma2": Family(tf.Gemma2Config, {**GQA, "sliding_window": WINDOW}),  # soft-capping: attention 50, final 30
    "gemma3": Family(tf.Gemma3TextConfig, {**GQA, "sliding_window": WINDOW, "final_logit_softcapping": 30.0,
                                           "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": Family(tf.Phi3Config, {**SMALL, "num_key_value_heads": 2, "sliding_window": WINDOW}),
    "gpt2": Family(tf.GPT2Config, {"n_embd": 48, "n_layer": 2, "n_head": 4}),
    "bloom": Family(tf.BloomConfig, {"hidden_size": 48, "n_layer": 2, "n_head": 4,  # ALiBi
                                     "initializer_range": 0.2}),  # at 0.02 it only repeats its last token
    "gpt_neox": Family(tf.GPTNeoXConfig, {**SMALL, "rotary_pct": 0.5}),
    "falcon": Family(tf.FalconConfig, {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4}),
    "opt": Family(tf.OPTConfig, {"hidden_size": 48, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                 "word_embed_proj_dim": 32}),  # OPT-350m: embeddings narrower than the hidden size
    "olmo2": Family(tf.Olmo2Config, {**SMALL, "num_key_value_heads": 2}),
    "cohere": Family(tf.CohereConfig, {**SMALL, "num_key_value_heads": 2}),  # logit_scale after the head
    "granite": Family(tf.GraniteConfig, {**SMALL, "num_key_value_heads": 2, "logits_scaling": 4.0}),
    "gemma4": Family(tf.Gemma4TextConfig, {**GQA, "global_head_dim": 32, "sliding_window": WINDOW,
                                           "layer_types": ["sliding_attention", "full_attention"],
                                           "hidden_size_per_layer_input": 0},  # the 31B shape: no per-layer inputs
                     refused={"prefix_tuning": "different (heads, head_dim)"}),
    "gemma4_e2b": Family(tf.Gemma4TextConfig, {**GQA, "global_head_dim": 32, "sliding_window": WINDOW,
                                               "layer_types": ["sliding_attention", "full_attention"],
                                               "hidden_size_per_layer_input": 8},  # E2B / E4B: per-layer inputs
                         refused={"prompt_tuning": "per-layer embedding", "p_tuning": "per-layer embedding",
                                  "prefix_tuning": "different (heads, head_dim)"}),
    "mamba": Family(tf.MambaConfig, {"hidden_size": 32, "num_hidden_layers": 2, "state_size": 4},
                    refused={"model": "no key/value cache"}),
    "recurrent_gemma": Family(tf.RecurrentGemmaConfig, {**SMALL, "num_key_value_heads": 2, "lru_width": 48,
                                                        "attention_window_size": WINDOW},
                              refused={"model": "no key/value cache"}),
}
"""family name -> how to build it. Families with ``refused`` entries are refused there with one line."""


def build_family(name: str, vocab_size: int, seed: int = 0) -> tf.PreTrainedModel:
    """A 2-layer random ``name`` model, eval mode, fp32."""
    family = FAMILIES[name]
    kwargs = dict(family.kwargs)
    if kwargs.get("hidden_size_per_layer_input"):
        kwargs["vocab_size_per_layer_input"] = vocab_size
    torch.manual_seed(seed)
    config = family.config(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                           max_position_embeddings=256, **kwargs)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def write_family(name: str, path: str | Path, tokenizer=None) -> Path:
    """A Hugging Face folder of the tiny ``name`` model and the byte-level tokenizer (ChatML template)."""
    path = Path(path)
    tokenizer = tokenizer or build_tokenizer()
    model = build_family(name, len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-families")
    tok = build_tokenizer()
    for family in FAMILIES:
        print(write_family(family, out / family, tok))
