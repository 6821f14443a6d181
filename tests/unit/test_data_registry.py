"""dataset_info.json and data files -> rows: formats, sampling, and one-line errors."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import pytest

from softprompt.config import DataArgs
from softprompt.data import DataError, dataset_specs, load_conversations, load_rows, read_rows
from softprompt.data.registry import parse_spec

ROWS = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]


def write_dir(root: Path, info: dict, files: dict[str, str | list]) -> Path:
    """A dataset_dir with ``info`` as dataset_info.json and each file (text or rows as JSON)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_info.json").write_text(json.dumps(info))
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return root


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg
    return msg


# --------------------------------------------------------------------------------- file formats


def test_json_array_jsonl_and_json_lines(tmp_path):
    d = write_dir(tmp_path, {}, {"a.json": ROWS, "b.jsonl": jsonl(ROWS), "c.json": jsonl(ROWS)})
    for name, origin in (("a.json", "index 2"), ("b.jsonl", "line 3"), ("c.json", "line 3")):
        rows = read_rows(d / name)
        assert [r.data for r in rows] == ROWS
        assert rows[2].origin == f"{d / name} {origin}"


def test_jsonl_skips_blank_lines_and_counts_lines(tmp_path):
    d = write_dir(tmp_path, {}, {"a.jsonl": "\n" + jsonl(ROWS[:2]) + "\n\n" + jsonl(ROWS[2:3])})
    rows = read_rows(d / "a.jsonl")
    assert [r.origin.split()[-1] for r in rows] == ["2", "3", "6"]


def test_csv(tmp_path):
    path = tmp_path / "a.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ROWS)
    rows = read_rows(path)
    assert [r.data for r in rows] == ROWS
    assert rows[4].origin == f"{path} row 4"


def test_folder_reads_every_file_in_name_order(tmp_path):
    d = write_dir(tmp_path, {}, {"f/1.jsonl": jsonl(ROWS[:2]), "f/2.json": ROWS[2:], "f/.hidden": "x"})
    assert [r.data for r in read_rows(d / "f")] == ROWS


def test_parquet(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    rows = read_rows(tmp_path / "a.parquet")
    assert [r.data for r in rows] == ROWS and rows[1].origin.endswith("a.parquet row 1")


def test_parquet_through_a_stand_in_pyarrow(tmp_path, monkeypatch):
    """The parquet path itself, whether or not pyarrow is installed."""
    parquet = types.ModuleType("pyarrow.parquet")
    parquet.read_table = lambda path: types.SimpleNamespace(to_pylist=lambda: ROWS)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyarrow", types.ModuleType("pyarrow"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", parquet)
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    assert [r.data for r in read_rows(tmp_path / "a.parquet")] == ROWS


def test_parquet_without_pyarrow_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError) as exc:
        read_rows(tmp_path / "a.parquet")
    one_line_error(exc, "a.parquet", "pip install pyarrow")


# --------------------------------------------------------------------------------- file errors


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("a.jsonl", '{"instruction": "q"}\n{"instruction": \n', "a.jsonl line 2: not valid JSON"),
        ("a.json", '[\n{"instruction": "q"},\n{"instruction" "x"}\n]', "a.json line 3: not valid JSON"),
        ("a.json", '{\n"instruction": "q"\n}\n', "expected a JSON array of objects or one object per line"),
        ("a.json", '[{"instruction": "q"}, [1, 2]]', "a.json index 1: expected a JSON object, got list"),
        ("a.jsonl", '{"a": 1}\n"text"\n', "a.jsonl line 2: expected a JSON object, got string"),
        ("a.csv", "instruction,output\nq,a\nq,a,extra\n", "a.csv row 1: more fields than the header"),
        ("a.txt", "hello", "unsupported file type '.txt'"),
    ],
)
def test_bad_files_name_file_and_row(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as exc:
        read_rows(tmp_path / name)
    one_line_error(exc, expected)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(DataError) as exc:
        read_rows(tmp_path / "nope.json")
    one_line_error(exc, "nope.json", "not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        read_rows(tmp_path / "empty")
    one_line_error(exc, "empty", "no data files")


# --------------------------------------------------------------------------------- dataset_info.json


def test_dataset_info_missing_or_not_json(tmp_path):
    with pytest.raises(DataError) as exc:
        dataset_specs("x", tmp_path)
    one_line_error(exc, str(tmp_path / "dataset_info.json"), "not found")
    (tmp_path / "dataset_info.json").write_text('{"x": {"file_name": "a.json"},\n}')
    with pytest.raises(DataError) as exc:
        dataset_specs("x", tmp_path)
    one_line_error(exc, "dataset_info.json line 2", "not valid JSON")


def test_unknown_dataset_lists_the_names(tmp_path):
    write_dir(tmp_path, {"alpha": {"file_name": "a.json"}, "beta": {"file_name": "b.json"}}, {})
    with pytest.raises(DataError) as exc:
        dataset_specs("alpha,gamma", tmp_path)
    one_line_error(exc, "'gamma'", "alpha, beta")
    with pytest.raises(DataError) as exc:
        dataset_specs(None, tmp_path)
    one_line_error(exc, "--dataset is required", "alpha, beta")


def test_spec_defaults_and_overrides(tmp_path):
    info = tmp_path / "dataset_info.json"
    spec = parse_spec("a", {"file_name": "a.json"}, info)
    assert spec.formatting == "alpaca" and spec.columns["prompt"] == "instruction" and spec.tags == {}
    spec = parse_spec("s", {"file_name": "s.json", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                            "tags": {"role_tag": "role", "user_tag": "user"}}, info)
    assert spec.columns == {"messages": "msgs", "system": "system", "tools": "tools"}
    assert spec.tags["role_tag"] == "role" and spec.tags["content_tag"] == "value"
    assert spec.path == tmp_path / "s.json"


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"hf_hub_url": "org/data"}, "hf_hub_url is not supported"),
        ({"file_name": "a.json", "formatting": "openai"}, "'formatting' must be 'alpaca' or 'sharegpt'"),
        ({"file_name": "a.json", "columns": {"images": "img"}}, "unsupported columns key 'images'"),
        ({"file_name": "a.json", "ranking": True}, "ranking"),
        ({"file_name": "a.json", "num_samples": 0}, "'num_samples' must be a positive integer"),
    ],
)
def test_bad_entries(tmp_path, entry, expected):
    with pytest.raises(DataError) as exc:
        parse_spec("d", entry, tmp_path / "dataset_info.json")
    one_line_error(exc, "dataset_info.json dataset 'd'", expected)


# --------------------------------------------------------------------------------- sampling


def test_max_samples_caps_each_dataset_and_several_datasets_concatenate(tmp_path):
    other = [{"instruction": f"z{i}", "output": "b"} for i in range(3)]
    d = write_dir(tmp_path, {"a": {"file_name": "a.json"}, "b": {"file_name": "b.jsonl"}},
                  {"a.json": ROWS, "b.jsonl": jsonl(other)})
    convs = load_conversations(DataArgs(dataset="a, b", dataset_dir=str(d), max_samples=2))
    assert [c.messages[0]["content"] for c in convs] == ["q0", "q1", "z0", "z1"]
    assert convs[2].origin == f"{d / 'b.jsonl'} line 1"


def test_num_samples_is_seeded_and_may_repeat_rows(tmp_path):
    d = write_dir(tmp_path, {"a": {"file_name": "a.json", "num_samples": 3},
                             "up": {"file_name": "a.json", "num_samples": 8}}, {"a.json": ROWS})
    (spec, up) = dataset_specs("a,up", d)
    first = [r.data["instruction"] for r in load_rows(spec, seed=1)]
    assert first == [r.data["instruction"] for r in load_rows(spec, seed=1)] and len(set(first)) == 3
    assert first != [r.data["instruction"] for r in load_rows(spec, seed=2)]
    many = [r.data["instruction"] for r in load_rows(up, seed=1)]
    assert len(many) == 8 and set(many) == {r["instruction"] for r in ROWS}
    assert len(load_rows(up, max_samples=4, seed=1)) == 4


def test_empty_dataset(tmp_path):
    d = write_dir(tmp_path, {"a": {"file_name": "a.json"}, "b": {"file_name": "b.jsonl"}},
                  {"a.json": [], "b.jsonl": "\n"})
    for name in ("a", "b"):
        with pytest.raises(DataError) as exc:
            load_conversations(DataArgs(dataset=name, dataset_dir=str(d)))
        one_line_error(exc, f"dataset {name!r} has no rows")


def test_shared_datasets_load(shared_datasets):
    convs = load_conversations(DataArgs(dataset="identity,glaive_toolcall_en_demo,sst2_train",
                                        dataset_dir=str(shared_datasets), max_samples=50))
    assert len(convs) == 150
    assert all(c.messages[-1]["role"] in ("assistant", "function") for c in convs)
    assert sum(c.tools is not None for c in convs[50:100]) > 0
