"""Tests of the recipes benchmark's splits and report (fast; no model is loaded).

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python -m pytest bench/recipes/test_recipes_bench.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_splits  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402

SHARED = HERE.parents[2] / "shared" / "datasets"


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    if not (SHARED / "sst2_train.jsonl").is_file():
        pytest.skip(f"needs the shared datasets at {SHARED} (absent outside the dev workspace)")
    out = tmp_path_factory.mktemp("recipes-data")
    assert make_splits.main(["--shared", str(SHARED), "--out", str(out)]) == 0
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_splits_are_disjoint_sized_and_registered(splits: Path) -> None:
    info = json.loads((splits / "dataset_info.json").read_text())
    assert set(info) == {f"{d}_{s}" for d in ("sst2", "agnews") for s in ("train512", "select", "test")}
    for ds in ("sst2", "agnews"):
        train = {r["input"] for r in rows(splits / f"{ds}_train512.jsonl")}
        select = {r["input"] for r in rows(splits / f"{ds}_select.jsonl")}
        test = {r["input"] for r in rows(splits / f"{ds}_test.jsonl")}
        assert len(rows(splits / f"{ds}_train512.jsonl")) == 512
        assert not train & select and not train & test and not select & test
        assert len(select) >= 290 and len(test) >= 990  # only repeated texts are dropped


def test_splits_are_reproducible(splits: Path, tmp_path: Path) -> None:
    assert make_splits.main(["--shared", str(SHARED), "--out", str(tmp_path)]) == 0
    for name in ("sst2_train512", "agnews_select", "agnews_test"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (splits / f"{name}.jsonl").read_bytes()


def test_absent_shared_folder_skips_with_a_message(tmp_path: Path, capsys) -> None:
    assert make_splits.main(["--shared", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_recipes_share_the_budget_and_text_init_is_the_instruction() -> None:
    table = run.recipes()
    assert "lora-sst2-r8-lr0.001-constant-b16" in table and "pt-sst2-lr0.1-constant-L20-text-b8" in table
    for name, recipe in table.items():
        flags = recipe["flags"] or []
        assert "--num_train_epochs" not in flags and "--max_samples" not in flags, name  # budget is COMMON's
        if "text" in name:
            assert flags[flags.index("--prompt_tuning_init_text") + 1] == run.INSTRUCTION[recipe["dataset"]]


def test_report_ranks_by_accuracy(tmp_path: Path) -> None:
    runs = {name: {"dataset": "sst2", "eval": {"select": {"accuracy": acc, "macro_f1": acc, "examples": 300}},
                   "train": {"updates": 32, "wall_s": 1.0, "cpu_s": 1.0}}
            for name, acc in (("a", 50.0), ("b", 90.0))}
    report.write_report({"runs": runs, "sessions": []}, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "SST-2, select split" in text and text.index("| b | 90.00") < text.index("| a | 50.00")


def test_two_sweeps_saving_at_once_keep_each_others_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path / "recipes.json")
    monkeypatch.setattr(run, "REPORT", tmp_path / "recipes.md")
    entry = {"dataset": "sst2", "flags": [], "eval": {"select": {"accuracy": 80.0, "macro_f1": 80.0, "examples": 3}},
             "train": {"updates": 1, "wall_s": 1.0, "cpu_s": 1.0}}
    first, second = run.load_results(), run.load_results()  # both loaded the file before either saved
    first["runs"]["a"] = entry
    run.save_results(first, "a")
    second["runs"]["b"] = dict(entry)
    run.save_results(second, "b")
    assert set(run.load_results()["runs"]) == {"a", "b"}
