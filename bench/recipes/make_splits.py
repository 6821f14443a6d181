"""Write the fixed train / selection / test splits of the recipes benchmark (bench/recipes/README.md).

    python bench/recipes/make_splits.py [--shared ../shared/datasets] [--out output/recipes-data]

Reads sst2_train.jsonl, sst2_dev.jsonl and agnews_train.jsonl from --shared (never copied into the
repository) and writes six jsonl files plus a dataset_info.json into --out, so --out is a valid
softprompt `--dataset_dir`:

    sst2_train512    the first 512 rows of sst2_train after a shuffle with seed 0
    sst2_select      sst2_dev rows 0-299            (choosing among recipes)
    sst2_test        sst2_dev rows 1000-1999        (never used for choosing)
    agnews_train512  rows 0-511    of agnews_train after a shuffle with seed 0
    agnews_select    rows 512-811  of that shuffle  (choosing)
    agnews_test      rows 812-1811 of that shuffle  (never used for choosing)

A selection row whose `input` text equals a training row's, and a test row whose text equals a
training or selection row's, is dropped (AG News repeats some articles; the counts are printed and
written to splits.json), so every scored text is one training never saw and test shares none with
selection. Exits 0 with a
one-line message when --shared is absent (the datasets live only in the dev workspace).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 0
N_TRAIN = 512
SST2_SELECT = (0, 300)       # sst2_dev rows [start, stop)
SST2_TEST = (1000, 2000)
AG_SELECT = 300
AG_TEST = 1000


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a jsonl file, in file order."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def shuffled(rows: list[dict], seed: int = SEED) -> list[dict]:
    """A copy of rows in a fixed pseudo-random order (random.Random(seed).shuffle)."""
    out = list(rows)
    random.Random(seed).shuffle(out)
    return out


def drop_seen(rows: list[dict], train: list[dict]) -> tuple[list[dict], int]:
    """Rows whose `input` text is not one of train's, and how many were dropped."""
    seen = {r["input"].strip().lower() for r in train}
    kept = [r for r in rows if r["input"].strip().lower() not in seen]
    return kept, len(rows) - len(kept)


def build(shared: Path) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """The six splits by name, and the number of rows dropped from each as seen in training."""
    sst2_train = shuffled(read_jsonl(shared / "sst2_train.jsonl"))[:N_TRAIN]
    sst2_dev = read_jsonl(shared / "sst2_dev.jsonl")
    ag = shuffled(read_jsonl(shared / "agnews_train.jsonl"))
    ag_train = ag[:N_TRAIN]
    splits = {"sst2_train512": sst2_train, "agnews_train512": ag_train}
    dropped: dict[str, int] = {}
    candidates = {
        "sst2": (sst2_train, sst2_dev[slice(*SST2_SELECT)], sst2_dev[slice(*SST2_TEST)]),
        "agnews": (ag_train, ag[N_TRAIN:N_TRAIN + AG_SELECT], ag[N_TRAIN + AG_SELECT:N_TRAIN + AG_SELECT + AG_TEST]),
    }
    for ds, (train, select, test) in candidates.items():
        splits[f"{ds}_select"], dropped[f"{ds}_select"] = drop_seen(select, train)
        splits[f"{ds}_test"], dropped[f"{ds}_test"] = drop_seen(test, train + splits[f"{ds}_select"])
    return splits, dropped


def write(splits: dict[str, list[dict]], dropped: dict[str, int], out: Path) -> None:
    """The jsonl files, dataset_info.json and splits.json (row counts, label counts, drops)."""
    out.mkdir(parents=True, exist_ok=True)
    info, summary = {}, {"seed": SEED, "splits": {}}
    for name, rows in splits.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        info[name] = {"file_name": f"{name}.jsonl"}
        labels: dict[str, int] = {}
        for r in rows:
            labels[r["output"]] = labels.get(r["output"], 0) + 1
        summary["splits"][name] = {"rows": len(rows), "labels": dict(sorted(labels.items())),
                                   "dropped_as_seen_before": dropped.get(name, 0)}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "splits.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--out", type=Path, default=Path("output/recipes-data"))
    args = ap.parse_args(argv)
    if not (args.shared / "sst2_train.jsonl").is_file():
        print(f"make_splits: skipped: {args.shared} has no sst2_train.jsonl "
              "(the shared datasets exist only in the dev workspace)")
        return 0
    splits, dropped = build(args.shared)
    write(splits, dropped, args.out)
    for name, rows in splits.items():
        print(f"{name}: {len(rows)} rows (dropped as already in train/selection: {dropped.get(name, 0)})")
    print(f"wrote {args.out}/dataset_info.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
