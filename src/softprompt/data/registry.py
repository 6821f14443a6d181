"""Datasets named in LLaMA-Factory's ``dataset_info.json``, read from local files into rows.

An entry looks like LLaMA-Factory's::

    "my_data": {"file_name": "my_data.jsonl", "formatting": "sharegpt",
                "columns": {"messages": "conversations", "tools": "tools"},
                "tags": {"role_tag": "from", "content_tag": "value"}, "num_samples": 500}

``file_name`` is a .json (an array of objects, or one object per line), .jsonl, .csv or
.parquet file, or a folder of such files, relative to ``dataset_dir``. Every row keeps its
origin (``data/my_data.jsonl line 7``) so that later errors can name it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError, decode_utf8, json_error, one_line, type_name

SUPPORTED_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
ALPACA_COLUMNS = {
    "prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history",
}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
SHAREGPT_TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
_UNSUPPORTED_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
MAX_FILE_BYTES = 2 * 2**30
"""The largest data file (or dataset_info.json) softprompt reads: each is read whole into memory."""
MAX_UPSAMPLE = 100
"""``num_samples`` may repeat a dataset's rows up to this many times over (LLaMA-Factory upsamples; a typo such as
10**12 must not build a list of that length)."""


@dataclass
class DatasetSpec:
    """One entry of dataset_info.json, with LLaMA-Factory's defaults filled in."""

    name: str
    """The entry's key in dataset_info.json."""
    path: Path
    """``dataset_dir / file_name``: a data file or a folder of them."""
    formatting: str = "alpaca"
    """'alpaca' or 'sharegpt'."""
    columns: dict[str, str] = field(default_factory=dict)
    """Logical column -> the row's key, e.g. {'prompt': 'instruction', 'messages': 'conversations'}."""
    tags: dict[str, str] = field(default_factory=dict)
    """ShareGPT tags, e.g. {'role_tag': 'from', 'user_tag': 'human'}; empty for alpaca."""
    num_samples: int | None = None
    """Take this many rows, drawn with the seed (more than the file holds repeats rows)."""


@dataclass
class Row:
    """One raw example and where it came from."""

    data: dict[str, Any]
    """The row's fields as read from the file."""
    origin: str
    """``<file> line N`` (.jsonl, 1-based), ``<file> index N`` (.json array, 0-based) or ``<file> row N``."""


def read_dataset_info(dataset_dir: str | Path) -> dict[str, Any]:
    """The parsed ``dataset_info.json`` of ``dataset_dir`` (a mapping name -> entry)."""
    path = Path(dataset_dir) / "dataset_info.json"
    if not path.exists():
        raise DataError(f"{path}: not found; --dataset_dir must hold a LLaMA-Factory dataset_info.json")
    text = decode_utf8(read_file(path), str(path))
    try:
        info = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise json_error(str(path), exc) from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected an object mapping dataset names to entries, got {type_name(info)}")
    return info


def dataset_specs(dataset: str | None, dataset_dir: str | Path) -> list[DatasetSpec]:
    """The specs of the comma-separated dataset names in ``dataset`` (``--dataset``)."""
    info = read_dataset_info(dataset_dir)
    info_path = Path(dataset_dir) / "dataset_info.json"
    names = [n.strip() for n in (dataset or "").split(",") if n.strip()]
    if not names:
        raise DataError(f"--dataset is required; {info_path} has: {', '.join(info) or '(no datasets)'}")
    specs = []
    for name in names:
        if name not in info:
            raise DataError(f"dataset {name!r} is not in {info_path}; it has: {', '.join(info) or '(none)'}")
        specs.append(parse_spec(name, info[name], info_path))
    return specs


def dataset_files(dataset: str | None, dataset_dir: str | Path) -> dict[str, Path]:
    """Name -> file (or folder of files) of each dataset ``--dataset`` names, as far as dataset_info.json tells;
    empty when it cannot (loading the data says why)."""
    try:
        return {spec.name: spec.path for spec in dataset_specs(dataset, dataset_dir)}
    except (DataError, OSError):
        return {}


def _str_map(value: Any, what: str, where: str, allowed: dict[str, str]) -> dict[str, str]:
    """``allowed`` updated by the user's mapping ``value`` (checked: known keys, string values)."""
    if value is None:
        return dict(allowed)
    if not isinstance(value, dict):
        raise DataError(f"{where}: '{what}' must be an object, got {type_name(value)}")
    out = dict(allowed)
    for key, col in value.items():
        if key not in allowed:
            raise DataError(f"{where}: unsupported {what} key {key!r} (softprompt knows: {', '.join(allowed)})")
        if not isinstance(col, str):
            raise DataError(f"{where}: {what}.{key} must be a string, got {type_name(col)}")
        out[key] = col
    return out


def parse_spec(name: str, entry: Any, info_path: Path) -> DatasetSpec:
    """Check one dataset_info.json entry and fill in LLaMA-Factory's defaults."""
    where = f"{info_path} dataset {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type_name(entry)}")
    if "file_name" not in entry:
        remote = [k for k in _UNSUPPORTED_KEYS if k in entry]
        hint = f" ({remote[0]} is not supported: softprompt reads local files only)" if remote else ""
        raise DataError(f"{where}: needs 'file_name'{hint}")
    if not isinstance(entry["file_name"], str) or not entry["file_name"]:
        raise DataError(f"{where}: 'file_name' must be a non-empty string, got {entry['file_name']!r}")
    if entry.get("ranking"):
        raise DataError(f"{where}: ranking (preference) datasets are not supported; softprompt trains on SFT data")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(f"{where}: 'formatting' must be 'alpaca' or 'sharegpt', got {formatting!r}")
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool)
                                    or num_samples < 1):
        raise DataError(f"{where}: 'num_samples' must be a positive integer, got {num_samples!r}")
    sharegpt = formatting == "sharegpt"
    columns = _str_map(entry.get("columns"), "columns", where, SHAREGPT_COLUMNS if sharegpt else ALPACA_COLUMNS)
    tags = _str_map(entry.get("tags"), "tags", where, SHAREGPT_TAGS) if sharegpt else {}
    if not sharegpt and entry.get("tags"):
        raise DataError(f"{where}: 'tags' apply to sharegpt datasets only (this one is alpaca)")
    path = info_path.parent / entry["file_name"]
    return DatasetSpec(name, path, formatting, columns, tags, num_samples)


# ---------------------------------------------------------------------------------------------
# files -> rows


def read_file(path: Path) -> bytes:
    """The bytes of ``path``, a regular file of at most :data:`MAX_FILE_BYTES`; else a DataError, raised before
    anything that could block (a FIFO) or never end (``/dev/zero``) is read."""
    try:
        _check_regular(path, path.stat())  # before opening: opening some devices does something
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, even if a FIFO took the name meanwhile
        with open(fd, "rb") as fh:
            size = _check_regular(path, os.fstat(fh.fileno()))
            raw = fh.read(size + 1)
            if len(raw) > size:  # it grew meanwhile
                raw += fh.read(MAX_FILE_BYTES + 1 - len(raw))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (file_name in dataset_info.json is relative to dataset_dir)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or one_line(exc)})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _too_big(path, len(raw))
    return raw


def _check_regular(path: Path, info: os.stat_result) -> int:
    """``info.st_size`` of a regular file no larger than MAX_FILE_BYTES; a DataError for anything else."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in kinds if test(info.st_mode)), "not a plain file")
        raise DataError(f"{path}: not a regular file ({kind})")
    if info.st_size > MAX_FILE_BYTES:
        raise _too_big(path, info.st_size)
    return info.st_size


def _too_big(path: Path, size: int) -> DataError:
    return DataError(f"{path}: {size / 2**30:.1f} GiB, more than the {MAX_FILE_BYTES // 2**30} GiB softprompt reads "
                     "into memory from one file; split it into several files in a folder")


def read_rows(path: Path) -> list[Row]:
    """All rows of a data file, or of every data file in a folder (sorted by name)."""
    suffix = path.suffix.lower()
    if path.is_dir() and suffix in SUPPORTED_EXTENSIONS:
        raise DataError(f"{path}: a folder, not a {suffix} file; file_name names a data file, or a folder of them "
                        "without a data-file extension")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: folder holds no data files ({', '.join(SUPPORTED_EXTENSIONS)})")
        return [row for p in files for row in read_rows(p)]
    if not path.exists():
        raise DataError(f"{path}: file not found (file_name in dataset_info.json is relative to dataset_dir)")
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use {', '.join(SUPPORTED_EXTENSIONS)}")
    raw = read_file(path)
    if suffix == ".csv":
        return _read_csv(path, raw)
    if suffix == ".parquet":
        return _read_parquet(path, raw)
    text = decode_utf8(raw, str(path))
    if text.lstrip().startswith("["):
        return _read_json_array(path, text)
    return _read_json_lines(path, text)


def _as_row(obj: Any, origin: str) -> Row:
    if not isinstance(obj, dict):
        raise DataError(f"{origin}: expected a JSON object, got {type_name(obj)}")
    return Row(obj, origin)


def _read_json_array(path: Path, text: str) -> list[Row]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise json_error(str(path), exc) from None
    return [_as_row(obj, f"{path} index {i}") for i, obj in enumerate(data)]


def _read_json_lines(path: Path, text: str) -> list[Row]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            try:  # one object spanning lines: say so rather than blame line 1
                whole = json.loads(text)
            except (ValueError, RecursionError):
                raise json_error(str(path), exc, lineno) from None
            raise DataError(
                f"{path}: expected a JSON array of objects or one object per line, got one {type_name(whole)} "
                "spanning several lines"
            ) from None
        rows.append(_as_row(obj, f"{path} line {lineno}"))
    return rows


def _read_csv(path: Path, raw: bytes) -> list[Row]:
    rows = []
    text = decode_utf8(raw, str(path))
    try:
        with io.StringIO(text, newline="") as fh:
            reader = csv.DictReader(fh)
            for i, rec in enumerate(reader):
                if None in rec:
                    raise DataError(f"{path} row {i}: more fields than the header's {len(reader.fieldnames or [])}")
                rows.append(Row({k: v for k, v in rec.items() if v is not None}, f"{path} row {i}"))
    except csv.Error as exc:
        raise DataError(f"{path}: not valid CSV ({one_line(exc)})") from None
    return rows


def _read_parquet(path: Path, raw: bytes) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet files needs pyarrow: pip install pyarrow") from None
    try:
        records = pq.read_table(io.BytesIO(raw)).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({one_line(exc)})") from None
    return [_as_row(rec, f"{path} row {i}") for i, rec in enumerate(records)]


def load_rows(spec: DatasetSpec, max_samples: int | None = None, seed: int = 42) -> list[Row]:
    """The rows of one dataset: ``num_samples`` drawn with ``seed``, then the first ``max_samples``."""
    rows = read_rows(spec.path)
    if not rows:
        raise DataError(f"{spec.path}: dataset {spec.name!r} has no rows")
    if spec.num_samples is not None:
        if spec.num_samples > MAX_UPSAMPLE * len(rows):
            raise DataError(f"dataset {spec.name!r}: num_samples {spec.num_samples} (dataset_info.json) is more "
                            f"than {MAX_UPSAMPLE} times the {len(rows)} rows of {spec.path} "
                            f"(at most {MAX_UPSAMPLE * len(rows)})")
        rng = random.Random(seed)
        order = list(range(len(rows)))
        rng.shuffle(order)
        picked = order[: spec.num_samples]
        picked += [rng.randrange(len(rows)) for _ in range(spec.num_samples - len(picked))]
        rows = [rows[i] for i in picked]
    if max_samples is not None:
        rows = rows[:max_samples]
    return rows
