"""Adapter folders that must be refused with one line (a CheckpointError; 400 from the server, exit 2 from
the CLI), for the tiny test model (hidden size 64, 2 layers, 2 key/value heads of 32): each case writes the
folder and names a piece of the message expected."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from softprompt.checkpoint import write_adapter_files

HIDDEN = 64
PROMPT = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4, "token_dim": HIDDEN,
          "num_transformer_submodules": 1, "num_attention_heads": 4, "num_layers": 2,
          "base_model_name_or_path": None}
"""A good prompt tuning adapter_config.json for the tiny model."""
PREFIX = {**PROMPT, "peft_type": "PREFIX_TUNING", "token_dim": 32, "num_attention_heads": 2,
          "prefix_projection": False}
P_TUNING = {**PROMPT, "peft_type": "P_TUNING", "encoder_reparameterization_type": "MLP"}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# name: (config, or the raw text of adapter_config.json; the prompt_embeddings tensor; part of the message)
CASES: dict[str, tuple[dict | str, torch.Tensor, str]] = {
    "length_is_text": ({**PROMPT, "num_virtual_tokens": "abc"}, torch.randn(4, HIDDEN),
                       "'num_virtual_tokens' must be int or null, got str"),
    "length_is_list": ({**PROMPT, "num_virtual_tokens": [4]}, torch.randn(4, HIDDEN), "got list"),
    "length_is_bool": ({**PROMPT, "num_virtual_tokens": True}, torch.randn(4, HIDDEN), "got bool"),
    "length_is_zero": ({**PROMPT, "num_virtual_tokens": 0}, torch.randn(4, HIDDEN), "must be at least 1"),
    "length_is_nan": (json.dumps(PROMPT).replace('"num_virtual_tokens": 4', '"num_virtual_tokens": NaN'),
                      torch.randn(4, HIDDEN), "NaN is not a JSON number"),
    "length_is_1e400": (json.dumps(PROMPT).replace('"num_virtual_tokens": 4', '"num_virtual_tokens": 1e400'),
                        torch.randn(4, HIDDEN), "not valid JSON"),
    "length_of_5000_digits": (json.dumps(PROMPT).replace('"num_virtual_tokens": 4', '"num_virtual_tokens": '
                                                         + "9" * 5000), torch.randn(4, HIDDEN), "not valid JSON"),
    "width_is_text": ({**PROMPT, "token_dim": "64"}, torch.randn(4, HIDDEN), "'token_dim' must be int or null"),
    "base_name_is_a_list": ({**PROMPT, "base_model_name_or_path": [1]}, torch.randn(4, HIDDEN),
                            "'base_model_name_or_path' must be str or null"),
    "peft_type_is_a_list": ({**PROMPT, "peft_type": ["PROMPT_TUNING"]}, torch.randn(4, HIDDEN), "is not supported"),
    "nested_100000_deep": ('{"peft_type": "PROMPT_TUNING", "x": ' + nested(100_000) + "}", torch.randn(4, HIDDEN),
                           "nested deeper than"),
    "nested_40_deep": ('{"peft_type": "PROMPT_TUNING", "x": ' + nested(40) + "}", torch.randn(4, HIDDEN),
                       "nested deeper than 32"),
    "config_of_2_mb": ({**PROMPT, "padding": "x" * 2**21}, torch.randn(4, HIDDEN), "byte limit"),
    "tensor_too_narrow": (PROMPT, torch.randn(4, 32), "has shape (4, 32), expected (4, 64)"),
    "tensor_too_long": (PROMPT, torch.randn(5, HIDDEN), "has shape (5, 64), expected (4, 64)"),
    "tensor_3d": (PROMPT, torch.randn(4, HIDDEN, 1), "has shape (4, 64, 1)"),
    "tensor_nan": (PROMPT, torch.full((4, HIDDEN), float("nan")), "holds NaN or infinite values"),
    "tensor_inf": (PROMPT, torch.randn(4, HIDDEN).index_fill_(0, torch.tensor([2]), float("inf")),
                   "holds NaN or infinite values"),
    "tensor_of_ints": (PROMPT, torch.ones(4, HIDDEN, dtype=torch.int64), "not floating-point"),
    "two_submodules": ({**PROMPT, "num_transformer_submodules": 2}, torch.randn(4, HIDDEN), "must be 1"),
    "prefix_wrong_width": (PREFIX, torch.randn(4, 100), "has shape (4, 100), expected (4, 128)"),
    "prefix_without_layers": ({k: v for k, v in PREFIX.items() if k != "num_layers"}, torch.randn(4, 128),
                              "has no 'num_layers'"),
    "prefix_heads_do_not_divide": ({**PREFIX, "num_attention_heads": 3}, torch.randn(4, 128), "a multiple of"),
    "prefix_projection_is_text": ({**PREFIX, "prefix_projection": "yes"}, torch.randn(4, 128),
                                  "'prefix_projection' must be bool or null"),
    "p_tuning_gru": ({**P_TUNING, "encoder_reparameterization_type": "GRU"}, torch.randn(4, HIDDEN),
                     "is not MLP or LSTM"),
    "p_tuning_dropout_is_text": ({**P_TUNING, "encoder_dropout": "x"}, torch.randn(4, HIDDEN),
                                 "'encoder_dropout' must be float or null"),
}


def write_case(name: str, folder: Path) -> str:
    """Write the adapter folder of case ``name`` into ``folder``; returns the expected part of the message."""
    config, tensor, expected = CASES[name]
    write_adapter_files(folder, {"prompt_embeddings": tensor}, PROMPT)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "adapter_config.json").write_text(text)
    return expected


def write_good(folder: Path, seed: int = 0) -> Path:
    """A good prompt tuning adapter for the tiny model (random prompt of 4 tokens)."""
    write_adapter_files(folder, {"prompt_embeddings": torch.randn(4, HIDDEN, generator=torch.Generator().manual_seed(seed))},
                        PROMPT)
    return folder
