"""prompt_tuning_init: random, sample_vocab, text (any tokenizer), and a user hook."""

from __future__ import annotations

import sys

import pytest
import torch

from softprompt.config import ArgumentError, MethodArgs
from tests.tiny import build_tokenizer

TOK = build_tokenizer()


def _init(**kw):
    from softprompt.methods.prompt_tuning import initial_prompt

    emb = torch.randn(len(TOK), 16, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.1
    return initial_prompt(MethodArgs(**kw), emb, TOK, torch.Generator().manual_seed(1)), emb


def test_random_matches_vocabulary_statistics():
    out, emb = _init(num_virtual_tokens=400)
    assert out.shape == (400, 16)
    assert abs(float(out.std()) - float(emb.std())) < 0.03 and abs(float(out.mean()) - float(emb.mean())) < 0.03


def test_sample_vocab_takes_rows_of_the_embedding_matrix():
    out, emb = _init(num_virtual_tokens=7, prompt_tuning_init="sample_vocab")
    for row in out:
        assert (emb == row).all(-1).any()


def test_text_init_tiles_cuts_and_defaults_to_its_length():
    text = "Classify the sentiment"
    ids = TOK(text, add_special_tokens=False)["input_ids"]
    out, emb = _init(prompt_tuning_init_text=text)  # no length given: the text's token count
    assert torch.equal(out, emb[ids])
    out, emb = _init(prompt_tuning_init_text=text, num_virtual_tokens=len(ids) * 2 + 1)
    assert torch.equal(out, emb[(ids * 3)[: len(ids) * 2 + 1]])
    out, emb = _init(prompt_tuning_init_text=text, num_virtual_tokens=2)
    assert torch.equal(out, emb[ids[:2]])


def my_init(n, embeddings, tokenizer):
    return torch.full((n, embeddings.shape[1]), 0.5)


def bad_init(n, embeddings, tokenizer):
    return torch.zeros(n + 1, embeddings.shape[1])


def test_user_hook(monkeypatch):
    monkeypatch.setitem(sys.modules, "my_hooks", sys.modules[__name__])
    out, _ = _init(num_virtual_tokens=3, prompt_tuning_init="my_hooks:my_init")
    assert torch.equal(out, torch.full((3, 16), 0.5))
    with pytest.raises(ArgumentError, match=r"returned shape \(4, 16\), expected \(3, 16\)"):
        _init(num_virtual_tokens=3, prompt_tuning_init="my_hooks:bad_init")
    with pytest.raises(ArgumentError, match="cannot load it"):
        _init(num_virtual_tokens=3, prompt_tuning_init="no_such_module:fn")


def test_bad_init_arguments():
    with pytest.raises(ArgumentError, match="--prompt_tuning_init must be"):
        MethodArgs(prompt_tuning_init="zeros")
    with pytest.raises(ArgumentError, match="needs --prompt_tuning_init_text"):
        MethodArgs(prompt_tuning_init="text")
