"""Property test: whatever rows, JSON or bytes a dataset holds, the loader either loads it or raises
the project's own error (DataError / ArgumentError, one line), never anything else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt.config import ArgumentError, DataArgs
from softprompt.data import DataError, load_and_tokenize
from tests.tiny import build_tokenizer

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["instruction", "input", "output", "system", "history", "conversations", "messages", "tools",
        "from", "value", "role", "content"]
ROLES = ["human", "gpt", "system", "observation", "function_call", "user", "assistant", "robot", ""]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


# text that stresses the decoder and the tokenizer: any code point, lone surrogates included
# (json.dumps writes those as "\\ud800" escapes, which json.loads turns back into a str no tokenizer takes)
code_points = st.integers(0, 0x10FFFF) | st.integers(0xD800, 0xDFFF) | st.integers(0, 0x7F)
weird_text = st.text(max_size=20) | st.lists(code_points.map(chr), max_size=8).map("".join)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | weird_text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=4),
                           max_leaves=12)
turn = st.fixed_dictionaries({}, optional={"from": st.sampled_from(ROLES) | json_values,
                                           "value": weird_text | json_values})
field = st.one_of(weird_text, json_values, st.lists(turn, max_size=5),
                  st.lists(st.lists(weird_text, max_size=3), max_size=3))
# valid rows of any text reach the templates and the tokenizer; random ones test the checks
alpaca_row = st.fixed_dictionaries(
    {"instruction": weird_text, "output": weird_text},
    optional={"input": weird_text, "system": weird_text,
              "history": st.lists(st.lists(weird_text, min_size=2, max_size=2), max_size=2)})
sharegpt_row = st.fixed_dictionaries(
    {"conversations": st.lists(st.tuples(weird_text, weird_text), min_size=1, max_size=3).map(
        lambda pairs: [{"from": r, "value": t} for q, a in pairs for r, t in (("human", q), ("gpt", a))])},
    optional={"system": weird_text, "tools": weird_text})
row = alpaca_row | sharegpt_row | st.dictionaries(st.sampled_from(KEYS), field, max_size=6) | json_values
entry = st.fixed_dictionaries(
    {}, optional={"formatting": st.sampled_from(["alpaca", "sharegpt", "other"]) | json_values,
                  "columns": st.dictionaries(st.sampled_from(["prompt", "query", "response", "messages", "system",
                                                              "tools", "history", "bogus"]),
                                             st.sampled_from(KEYS) | json_values, max_size=3) | json_values,
                  "tags": st.dictionaries(st.sampled_from(["role_tag", "content_tag", "user_tag", "assistant_tag",
                                                           "system_tag", "bogus"]),
                                          st.sampled_from(["from", "value", "role", "content"] + ROLES) | json_values,
                                          max_size=3),
                  "num_samples": st.integers(-2, 5) | json_values, "ranking": st.booleans()})


def load(tokenizer, files: dict[str, bytes], info: dict | bytes, **data_args) -> None:
    """Write a dataset_dir and load dataset 'd' from it; only the project's own errors may escape."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, content in files.items():
            (root / name).write_bytes(content)
        raw = info if isinstance(info, bytes) else json.dumps(info).encode()
        (root / "dataset_info.json").write_bytes(raw)
        try:
            train, val = load_and_tokenize(DataArgs(dataset="d", dataset_dir=tmp, **data_args), tokenizer)
        except (DataError, ArgumentError) as exc:
            assert "\n" not in str(exc), str(exc)
            return
        for ex in train + val:
            assert len(ex["input_ids"]) == len(ex["labels"]) > 0
            assert any(label != -100 for label in ex["labels"])


@SETTINGS
@given(rows=st.lists(row, max_size=6), as_array=st.booleans(), sharegpt=st.booleans(),
       cutoff=st.integers(2, 64), val_size=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]))
def test_random_rows(tokenizer, rows, as_array, sharegpt, cutoff, val_size):
    name = "d.json" if as_array else "d.jsonl"
    text = json.dumps(rows) if as_array else "".join(json.dumps(r) + "\n" for r in rows)
    info = {"d": {"file_name": name, "formatting": "sharegpt" if sharegpt else "alpaca"}}
    load(tokenizer, {name: text.encode()}, info, cutoff_len=cutoff, val_size=val_size)


@SETTINGS
@given(rows=st.lists(alpaca_row, min_size=1, max_size=4), shares=st.lists(sharegpt_row, min_size=1, max_size=4))
def test_valid_rows_of_any_text(tokenizer, rows, shares):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    load(tokenizer, {"d.jsonl": text.encode()}, {"d": {"file_name": "d.jsonl"}})
    text = "".join(json.dumps(r) + "\n" for r in shares)
    load(tokenizer, {"d.jsonl": text.encode()}, {"d": {"file_name": "d.jsonl", "formatting": "sharegpt"}})


@SETTINGS
@given(value=json_values, ext=st.sampled_from([".json", ".jsonl", ".csv"]), spec=entry)
def test_random_json_and_random_entries(tokenizer, value, ext, spec):
    info = {"d": {"file_name": "d" + ext, **spec}}
    load(tokenizer, {"d" + ext: json.dumps(value).encode()}, info)


@SETTINGS
@given(data=st.binary(max_size=300), ext=st.sampled_from([".json", ".jsonl", ".csv", ".parquet", ".txt", ""]),
       info=st.binary(max_size=60) | json_values)
def test_random_bytes(tokenizer, data, ext, info):
    load(tokenizer, {"d" + ext: data}, {"d": {"file_name": "d" + ext}})
    load(tokenizer, {"d.jsonl": data}, info if isinstance(info, bytes) else {"d": info})


@SETTINGS
@given(prefix=st.sampled_from([b"[", b"", b'{"instruction": ']), depth=st.integers(1, 100_000),
       digits=st.integers(1, 10_000))
def test_deep_nesting_and_huge_numbers(tokenizer, prefix, depth, digits):
    nested = b"[" * depth + b"]" * depth
    load(tokenizer, {"d.jsonl": prefix + nested + b"\n"}, {"d": {"file_name": "d.jsonl"}})
    huge = b'{"instruction": "q", "output": "a", "input": ' + b"9" * digits + b"}\n"
    load(tokenizer, {"d.jsonl": huge}, {"d": {"file_name": "d.jsonl"}})
