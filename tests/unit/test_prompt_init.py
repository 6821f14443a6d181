"""prompt_tuning_init: random, sample_vocab, text (given, or the dataset's instruction), label (Lester et al.'s
class-label init: --label_words or the data's answers), and a user hook."""

from __future__ import annotations

import sys

import pytest
import torch

from softprompt.config import ArgumentError, MethodArgs
from softprompt.data import Conversation
from softprompt.methods import TaskData
from tests.tiny import build_tokenizer

TOK = build_tokenizer()


def _init(data=None, **kw):
    from softprompt.methods.prompt_tuning import initial_prompt

    emb = torch.randn(len(TOK), 16, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.1
    return initial_prompt(MethodArgs(**kw), emb, TOK, torch.Generator().manual_seed(1), data), emb


def _ids(text):
    return TOK(text, add_special_tokens=False)["input_ids"]


def _data(*rows):
    """TaskData over (user text, answer) rows; counts how often the rows were loaded."""
    loads = []

    def load():
        loads.append(1)
        return [Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in rows]

    data = TaskData(load)
    data.loads = loads
    return data


SENTIMENT = (("Classify the sentiment.\ngreat film", "positive"), ("Classify the sentiment.\ndull", " negative"),
             ("Classify the sentiment.\nfine", "positive"), ("Rate it.\nmeh", "negative"))


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
    with pytest.raises(ArgumentError, match="--prompt_tuning_init must be random, sample_vocab, text, label or"):
        MethodArgs(prompt_tuning_init="zeros")
    with pytest.raises(ArgumentError, match="--prompt_tuning_init_text is empty"):
        MethodArgs(prompt_tuning_init_text=" ")
    with pytest.raises(ArgumentError, match="--label_words needs one or more different comma-separated words"):
        MethodArgs(label_words="yes,yes")
    with pytest.raises(ArgumentError, match="--reparam_hidden_size must be at least 1"):
        MethodArgs(reparam_hidden_size=0)
    with pytest.raises(ArgumentError, match="needs --prompt_tuning_init_text"):  # no text and no data to take it from
        _init(prompt_tuning_init="text")
    from softprompt.methods import resolve

    with pytest.raises(ArgumentError, match="needs --prompt_tuning_init_text with prefix_tuning"):
        resolve(MethodArgs(finetuning_type="prefix_tuning", prompt_tuning_init="text"))


def test_text_init_without_text_takes_the_most_common_instruction(caplog):
    data = _data(*SENTIMENT)
    with caplog.at_level("INFO", logger="softprompt"):
        out, emb = _init(data, prompt_tuning_init="text")
    ids = _ids("Classify the sentiment.")
    assert torch.equal(out, emb[ids])  # its length: the instruction's tokens
    assert "took the dataset's most common instruction (3 of 4 rows): 'Classify the sentiment.'" in caplog.text
    unshared = _data(("a\nx", "1"), ("b\ny", "2"))
    with pytest.raises(ArgumentError, match="the training rows share no instruction"):
        _init(unshared, prompt_tuning_init="text")


def test_label_init_label_words_then_instruction_then_vocabulary():
    words = ["positive", "negative"]
    out, emb = _init(prompt_tuning_init="label", label_words=",".join(words), num_virtual_tokens=12,
                     prompt_tuning_init_text="Classify it")
    assert out.shape == (12, 16)
    for row, word in zip(out, words):  # one virtual token per label: the mean of its tokens' embeddings
        assert len(_ids(word)) > 1  # the tiny tokenizer splits them: the mean is tested, not one token
        torch.testing.assert_close(row, emb[_ids(word)].mean(0))
    text = _ids("Classify it")
    assert torch.equal(out[2: 2 + len(text)], emb[text])
    for row in out[2 + len(text):]:  # the rest: rows of the vocabulary
        assert (emb == row).all(-1).any()
    cut, _ = _init(prompt_tuning_init="label", label_words="positive,negative", num_virtual_tokens=1)
    torch.testing.assert_close(cut[0], emb[_ids("positive")].mean(0))


def test_label_init_reads_the_data_only_when_it_must(caplog):
    data = _data(*SENTIMENT)
    _init(data, prompt_tuning_init="label", label_words="yes,no", prompt_tuning_init_text="Say")
    assert data.loads == []  # both given: the rows are never read
    with caplog.at_level("INFO", logger="softprompt"):
        out, emb = _init(data, prompt_tuning_init="label", num_virtual_tokens=20)
    assert data.loads == [1]  # read once for the labels and the instruction
    assert "the label words are the training data's 2 answers: negative, positive" in caplog.text
    torch.testing.assert_close(out[0], emb[_ids("negative")].mean(0))  # sorted, stripped
    torch.testing.assert_close(out[1], emb[_ids("positive")].mean(0))
    ids = _ids("Classify the sentiment.")
    assert torch.equal(out[2: 2 + len(ids)], emb[ids])


def test_label_init_refuses_answers_that_are_no_label_set():
    many = _data(*[(f"Q\n{i}", f"answer {i}") for i in range(21)])
    with pytest.raises(ArgumentError, match="the training data has 21 distinct answers, not a set of label words; "
                                            "give --label_words"):
        _init(many, prompt_tuning_init="label")
    long = _data(("Q\na", "a long free text answer"), ("Q\nb", "no"))
    with pytest.raises(ArgumentError, match="answers of more than 3 words .*give --label_words"):
        _init(long, prompt_tuning_init="label")
    with pytest.raises(ArgumentError, match="--prompt_tuning_init label needs the task's label words: give "
                                            "--label_words"):
        _init(prompt_tuning_init="label")


def _sentiment_dataset(folder):
    import json

    folder.mkdir(parents=True)
    rows = [{"instruction": "Classify the sentiment.", "input": text, "output": label}
            for text, label in [("a great film", "positive"), ("dull and long", "negative"),
                                ("fine acting", "positive"), ("a mess", "negative")]]
    (folder / "senti.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"senti": {"file_name": "senti.json"}}))
    return folder


def test_training_takes_the_labels_and_the_instruction_from_its_dataset(tiny_dir, tmp_path, caplog):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from softprompt.cli import main
    from tests.helpers import train_flags

    data = _sentiment_dataset(tmp_path / "data")
    with caplog.at_level("INFO", logger="softprompt"):
        assert main(train_flags(tiny_dir, data, tmp_path / "label", dataset="senti", prompt_tuning_init="label",
                                num_virtual_tokens=12, max_steps=1)) == 0
        argv = train_flags(tiny_dir, data, tmp_path / "text", dataset="senti", prompt_tuning_init="text", max_steps=1)
        at = argv.index("--num_virtual_tokens")
        assert main(argv[:at] + argv[at + 2:]) == 0  # no length given
    assert "the label words are the training data's 2 answers: negative, positive" in caplog.text
    assert "took the dataset's most common instruction (4 of 4 rows): 'Classify the sentiment.'" in caplog.text
    with safe_open(str(tmp_path / "label" / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata()["softprompt_init"] == "label"
    ids = AutoTokenizer.from_pretrained(tiny_dir)("Classify the sentiment.", add_special_tokens=False)["input_ids"]
    config = (tmp_path / "text" / "adapter_config.json").read_text()
    assert f'"num_virtual_tokens": {len(ids)}' in config  # no length given: the instruction's
