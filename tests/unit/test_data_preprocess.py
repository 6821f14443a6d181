"""Tokenizing datasets: truncation, skipped examples, the validation split, the one-call loader."""

from __future__ import annotations

import json
import logging

import pytest

from softprompt.config import DataArgs
from softprompt.data import (
    IGNORE_INDEX,
    Conversation,
    DataError,
    encode_prompt,
    infer_seqlen,
    load_and_tokenize,
    split_dataset,
    tokenize_dataset,
    truncate_prompt,
)
from tests.tiny import build_tokenizer

CHAT = build_tokenizer(template=True)
BASE = build_tokenizer(template=False)
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)  # ~300 tokens


def qa(question: str, answer: str, *more: str) -> Conversation:
    turns = [question, answer, *more]
    roles = ["user", "assistant"] * len(turns)
    return Conversation([{"role": r, "content": t} for r, t in zip(roles, turns)])


def n_labelled(ex: dict) -> int:
    return sum(lab != IGNORE_INDEX for lab in ex["labels"])


def test_infer_seqlen_follows_llamafactory():
    assert infer_seqlen(100, 10, 50) == (40, 10)  # short answer kept whole
    assert infer_seqlen(10, 100, 50) == (10, 40)  # short prompt kept whole
    assert infer_seqlen(100, 100, 50) == (25, 25)  # both long: shared in proportion
    assert infer_seqlen(300, 100, 100) == (75, 25)
    assert infer_seqlen(5, 5, 50) == (5, 5)


def test_truncate_prompt_keeps_head_and_tail():
    assert truncate_prompt(list(range(10)), 4) == [0, 1, 8, 9]
    assert truncate_prompt(list(range(10)), 5) == [0, 1, 7, 8, 9]
    assert truncate_prompt([1, 2], 5) == [1, 2]


def test_cutoff_len_truncates_the_prompt_middle_and_keeps_the_answer(caplog):
    conv = qa("Translate to French: " + LONG, "Bonjour.")
    args = DataArgs(cutoff_len=100)
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        (ex,) = tokenize_dataset([conv], CHAT, args)
    assert len(ex["input_ids"]) == 100
    assert CHAT.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]) == "Bonjour.<|im_end|>\n"
    n_prompt = ex["labels"].count(IGNORE_INDEX)
    prompt = CHAT.decode(ex["input_ids"][:n_prompt])
    assert prompt.startswith("<|im_start|>system\nYou are a tiny test model.")
    assert prompt.endswith("lazy dog.<|im_end|>\n<|im_start|>assistant\n")  # the generation prompt survives
    assert "1 of 1 examples were longer than 100 tokens and were truncated" in caplog.text


def test_cutoff_len_long_answer_keeps_its_share():
    (ex,) = tokenize_dataset([qa("Hi", LONG)], CHAT, DataArgs(cutoff_len=128))
    full = encode_prompt(CHAT, [{"role": "user", "content": "Hi"}])
    assert len(ex["input_ids"]) == 128 and ex["input_ids"][: len(full)] == full
    assert n_labelled(ex) == 128 - len(full)


def test_cutoff_len_shares_what_is_left_with_later_turns_or_drops_them():
    conv = qa("What is the capital of France?", "Paris.", "And " + LONG, "Rome.")
    first = len(_encode(qa("What is the capital of France?", "Paris."))[0])
    for cutoff in (first, first + 1):  # no room for the second answer: the turn is dropped
        (ex,) = tokenize_dataset([conv], CHAT, DataArgs(cutoff_len=cutoff))
        assert len(ex["input_ids"]) == first
        assert CHAT.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]) == (
            "Paris.<|im_end|>\n")
    (ex,) = tokenize_dataset([conv], CHAT, DataArgs(cutoff_len=first + 30))  # its prompt is cut instead
    assert len(ex["input_ids"]) == first + 30
    assert CHAT.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]) == (
        "Paris.<|im_end|>\nRome.<|im_end|>\n")


def test_max_source_and_target_length():
    args = DataArgs(max_source_length=60, max_target_length=8)
    (ex,) = tokenize_dataset([qa("Translate: " + LONG, LONG)], CHAT, args)
    n_prompt = ex["labels"].count(IGNORE_INDEX)
    assert n_prompt == 60 and n_labelled(ex) == 8 and len(ex["input_ids"]) == 68
    assert CHAT.decode(ex["input_ids"][:n_prompt]).endswith("<|im_start|>assistant\n")
    (short,) = tokenize_dataset([qa("Hi", "Yo")], CHAT, args)  # shorter ones untouched
    assert short == dict(zip(("input_ids", "labels"), _encode(qa("Hi", "Yo"))))


def _encode(conv):
    from softprompt.data import encode_conversation

    return encode_conversation(CHAT, conv)


def test_examples_without_labels_are_skipped_and_counted(caplog):
    convs = [qa("q1", "a1"), qa("q2", ""), qa("q3", "a3")]
    with caplog.at_level(logging.WARNING, logger="softprompt"):
        examples = tokenize_dataset(convs, BASE, DataArgs(template="empty"))
    assert len(examples) == 2 and all(n_labelled(ex) for ex in examples)
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "skipped 1 of 3 examples with no labelled token" in warnings[0] and "empty answer" in warnings[0]
    assert len(tokenize_dataset(convs, BASE, DataArgs(template="empty", train_on_prompt=True))) == 3
    with pytest.raises(DataError, match="no example has a labelled token left"):
        tokenize_dataset([qa("q2", "")], BASE, DataArgs(template="empty"))


def test_split_dataset_fraction_count_and_seed():
    items = list(range(10))
    train, val = split_dataset(items, 0.25, seed=1)
    assert len(val) == 3 and len(train) == 7 and sorted(train + val) == items
    assert train == sorted(train) and val == sorted(val)
    assert split_dataset(items, 0.25, seed=1) == (train, val)
    assert split_dataset(items, 0.25, seed=2) != (train, val)
    assert [len(p) for p in split_dataset(items, 4, seed=1)] == [6, 4]
    assert split_dataset(items, 0.0, seed=1) == (items, [])


@pytest.mark.parametrize("val_size", [10, 12, 0.999])
def test_split_dataset_refuses_to_leave_no_training_data(val_size):
    with pytest.raises(DataError, match="leaves none for training"):
        split_dataset(list(range(10)), val_size, seed=0)


def test_load_and_tokenize(tmp_path):
    rows = [{"instruction": f"Give tip {i}.", "input": "", "output": "Sleep."} for i in range(10)]
    (tmp_path / "tips.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"tips": {"file_name": "tips.json"}}))
    args = DataArgs(dataset="tips", dataset_dir=str(tmp_path), val_size=0.2, template="alpaca")
    train, val = load_and_tokenize(args, BASE, seed=0)
    assert len(train) == 8 and len(val) == 2
    assert all(set(ex) == {"input_ids", "labels"} and len(ex["input_ids"]) == len(ex["labels"]) for ex in train)
    assert BASE.decode(train[0]["input_ids"]).endswith("### Response:\nSleep.<|im_end|>")
    with pytest.raises(Exception, match="no chat template"):
        load_and_tokenize(DataArgs(dataset="tips", dataset_dir=str(tmp_path)), BASE)


def test_shared_glaive_toolcall_tokenizes_with_tools(shared_datasets):
    args = DataArgs(dataset="glaive_toolcall_en_demo", dataset_dir=str(shared_datasets), cutoff_len=4096)
    train, val = load_and_tokenize(args, CHAT, seed=0)
    assert len(train) == 300 and val == []
    text = CHAT.decode(train[0]["input_ids"])
    assert "You have access to the following tools:" in text and "<|im_start|>tool\n" in text
    answers = CHAT.decode([i for i, lab in zip(train[0]["input_ids"], train[0]["labels"]) if lab != -100])
    assert '"name": "search_recipes"' in answers and answers.count("<|im_end|>") >= 3


def test_shared_sst2_with_progress_bar(shared_datasets):
    args = DataArgs(dataset="sst2_train", dataset_dir=str(shared_datasets), max_samples=1200, val_size=100)
    train, val = load_and_tokenize(args, CHAT, seed=0)
    assert len(train) == 1100 and len(val) == 100
    labels = {CHAT.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]) for ex in train}
    assert labels == {"positive<|im_end|>\n", "negative<|im_end|>\n"}
